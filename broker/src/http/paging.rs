//! RabbitMQ's list query parameters (`rabbit_mgmt_util:filter_and_paginate`, `columns`): `name` with
//! `use_regex`, `sort` and `sort_reverse`, `page` and `page_size` (the paged shape), `columns`.

use std::collections::HashMap;

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::ApiError;

const MAX_PAGE_SIZE: usize = 500;

/// Sorts, filters, pages and trims a list as the query asks. Without `page`, a plain JSON array.
pub fn respond(
    mut items: Vec<Value>,
    q: &HashMap<String, String>,
    default_sort: &[&str],
) -> Result<Response, ApiError> {
    let sort_keys: Vec<String> = match q.get("sort").filter(|s| !s.is_empty()) {
        Some(s) => vec![s.clone()],
        None => default_sort.iter().map(|s| s.to_string()).collect(),
    };
    items.sort_by(|a, b| {
        for k in &sort_keys {
            let o = cmp_values(pick(a, k), pick(b, k));
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    if q.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
    let total = items.len();
    let paged = q.get("page").is_some();
    let mut filtered = items;
    if let Some(name) = q.get("name").filter(|n| !n.is_empty()) {
        let use_regex = q.get("use_regex").is_some_and(|v| v == "true");
        if use_regex {
            let re = regex::Regex::new(name)
                .map_err(|e| ApiError::bad_request(format!("invalid regular expression '{name}': {e}")))?;
            filtered.retain(|v| {
                v.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| re.is_match(n))
            });
        } else {
            let needle = name.to_lowercase();
            filtered.retain(|v| {
                v.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.to_lowercase().contains(&needle))
            });
        }
    }
    let columns: Option<Vec<String>> = q
        .get("columns")
        .filter(|c| !c.is_empty())
        .map(|c| c.split(',').map(|s| s.trim().to_string()).collect());
    let trim = |v: Value| match &columns {
        Some(cols) => select_columns(&v, cols),
        None => v,
    };
    if !paged {
        let out: Vec<Value> = filtered.into_iter().map(trim).collect();
        return Ok(Json(Value::Array(out)).into_response());
    }
    let page: usize = parse_positive(q.get("page"), "page")?.unwrap_or(1);
    let page_size: usize = parse_positive(q.get("page_size"), "page_size")?.unwrap_or(100);
    if page_size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(format!(
            "Invalid page size {page_size}, must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    let filtered_count = filtered.len();
    let page_count = filtered_count.div_ceil(page_size).max(1);
    if page > page_count && filtered_count > 0 {
        return Err(ApiError::bad_request(format!(
            "Page out of range, page: {page} page size: {page_size}, len: {filtered_count}"
        )));
    }
    let out: Vec<Value> = filtered
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(trim)
        .collect();
    Ok(Json(json!({
        "filtered_count": filtered_count,
        "item_count": out.len(),
        "items": out,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
    .into_response())
}

/// One object trimmed to `columns` (a single object's `columns=` as on list endpoints).
pub fn respond_one(v: Value, q: &HashMap<String, String>) -> Response {
    match q.get("columns").filter(|c| !c.is_empty()) {
        Some(c) => {
            let cols: Vec<String> = c.split(',').map(|s| s.trim().to_string()).collect();
            Json(select_columns(&v, &cols)).into_response()
        }
        None => Json(v).into_response(),
    }
}

fn parse_positive(v: Option<&String>, what: &str) -> Result<Option<usize>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "{what} must be a positive integer, got '{s}'"
            ))),
        },
    }
}

/// `a.b` reaches into nested objects.
fn pick<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn cmp_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

fn select_columns(v: &Value, cols: &[String]) -> Value {
    let mut out = Map::new();
    for c in cols {
        if let Some(x) = pick(v, c) {
            insert_path(&mut out, c, x.clone());
        }
    }
    Value::Object(out)
}

fn insert_path(out: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            out.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = out
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = entry {
                insert_path(m, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_keep_nested_paths() {
        let v = json!({"name": "q", "messages": 3, "message_stats": {"publish": 5, "ack": 1}});
        let cols = vec!["name".to_string(), "message_stats.publish".to_string()];
        assert_eq!(
            select_columns(&v, &cols),
            json!({"name": "q", "message_stats": {"publish": 5}})
        );
    }
}
