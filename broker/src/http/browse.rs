//! `GET /api/queues/{vhost}/{name}/browse` (and `POST` with the same fields in a JSON body), a Mailroom
//! addition: pages through a queue's messages without consuming them. RabbitMQ's "get messages" takes
//! them off the queue (or requeues them, redelivered and reordered) and refuses streams; a browse copies a
//! page out and leaves every message in place, ready, unacked and in order (`Queue::browse`), and reads a
//! stream from any offset through a reader of its own (consumers are not affected).
//!
//! Query: `from` (a position, 0 = the head; or the `next` cursor of a previous page; for a stream, an
//! offset), `count` (1..=500, default 20), `truncate` (payload preview bytes, default 1024), `encoding`
//! (`auto`/`base64`, as RabbitMQ's get). Read permission on the queue, as a get.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::messages::properties_to_json;
use super::users::parse_body_or_empty;
use super::AppState;
use crate::queue::{BrowseFrom, Entry};
use crate::users::{Perm, Res};

/// Largest page.
pub const MAX_COUNT: u64 = 500;

pub async fn get(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let params: Map<String, Value> = q.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    browse(broker, user, vhost, name, Value::Object(params)).await
}

pub async fn post(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let v = parse_body_or_empty(&body)?;
    browse(broker, user, vhost, name, v).await
}

/// A number given as a JSON number or a string.
fn number(v: &Value, key: &str) -> Result<Option<u64>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
        Some(_) => Err(ApiError::bad_request(format!(
            "{key} must be a non-negative integer"
        ))),
    }
}

/// A classic queue's cursor: `b<band>.<seq>` (opaque to clients).
fn parse_from(v: &Value) -> Result<BrowseFrom, ApiError> {
    let bad = || ApiError::bad_request("from must be a position (0 = the head) or a cursor returned as next");
    match v.get("from") {
        None | Some(Value::Null) => Ok(BrowseFrom::Position(0)),
        Some(Value::Number(n)) => n.as_u64().map(BrowseFrom::Position).ok_or_else(bad),
        Some(Value::String(s)) => {
            if let Ok(n) = s.parse() {
                return Ok(BrowseFrom::Position(n));
            }
            let (band, seq) = s
                .strip_prefix('b')
                .and_then(|r| r.split_once('.'))
                .ok_or_else(bad)?;
            Ok(BrowseFrom::Key {
                band: band.parse().map_err(|_| bad())?,
                seq: seq.parse().map_err(|_| bad())?,
            })
        }
        Some(_) => Err(bad()),
    }
}

async fn browse(
    broker: AppState,
    user: AuthUser,
    vhost: String,
    name: String,
    v: Value,
) -> ApiResult<Response> {
    let (_, q) = super::queues::find(&broker, &user, &vhost, &name)?;
    user.require_perm(&broker, &vhost, Perm::Read, Res::Queue, &name)?;
    let count = number(&v, "count")?.unwrap_or(20);
    if count == 0 || count > MAX_COUNT {
        return Err(ApiError::bad_request(format!(
            "count must be between 1 and {MAX_COUNT}"
        )));
    }
    let truncate = number(&v, "truncate")?.unwrap_or(1024) as usize;
    let encoding = v
        .get("encoding")
        .and_then(Value::as_str)
        .unwrap_or("auto")
        .to_owned();
    if encoding != "auto" && encoding != "base64" {
        return Err(ApiError::bad_request(format!("Unsupported encoding: {encoding}")));
    }
    let count = count as usize;
    let show = move |e: &Entry, pos: Value| message_json(e, pos, truncate, &encoding);
    if q.stream_bounds().is_some() {
        let from = match v.get("from") {
            None | Some(Value::Null) => None,
            Some(_) => Some(
                number(&v, "from")
                    .map_err(|_| {
                        ApiError::bad_request("from must be a stream offset (a non-negative integer)")
                    })?
                    .unwrap_or(0),
            ),
        };
        let q2 = q.clone();
        let (first, next_offset) = q.stream_bounds().unwrap_or((0, 0));
        let start = from.unwrap_or(first).max(first);
        let read = tokio::task::spawn_blocking(move || q2.browse_stream(start, count))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .unwrap_or_else(|| Ok(Vec::new()))
            .map_err(|e| ApiError::internal(format!("stream read failed: {e}")))?;
        let next = read.last().map_or(start, |e| e.seq + 1);
        let messages: Vec<Value> = read
            .iter()
            .map(|e| {
                let mut m = show(e, json!(e.seq));
                m["offset"] = json!(e.seq);
                m
            })
            .collect();
        return Ok(axum::Json(json!({
            "queue": name,
            "vhost": vhost,
            "type": "stream",
            "from": start,
            "count": messages.len(),
            "first_offset": first,
            "next_offset": next_offset,
            "messages": messages,
            "next": (next < next_offset).then(|| next.to_string()),
        }))
        .into_response());
    }
    let from = parse_from(&v)?;
    let q2 = q.clone();
    let page = tokio::task::spawn_blocking(move || q2.browse(from, count))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("store read failed: {e}")))?;
    let base = match from {
        BrowseFrom::Position(n) => Some(n),
        BrowseFrom::Key { .. } => None,
    };
    let messages: Vec<Value> = page
        .entries
        .iter()
        .enumerate()
        .map(|(i, (_, e))| show(e, base.map_or(Value::Null, |b| json!(b + i as u64))))
        .collect();
    // More after this page? Only if the page is full (the next call answers an empty page otherwise).
    let next = (page.entries.len() == count)
        .then(|| {
            page.entries
                .last()
                .map(|(band, e)| format!("b{band}.{}", e.seq + 1))
        })
        .flatten();
    Ok(axum::Json(json!({
        "queue": name,
        "vhost": vhost,
        "type": "classic",
        "from": base.map_or_else(|| v.get("from").cloned().unwrap_or(Value::Null), |b| json!(b)),
        "count": messages.len(),
        "message_count": page.total,
        "messages": messages,
        "next": next,
        "next_position": base.map(|b| b + page.entries.len() as u64),
    }))
    .into_response())
}

/// One message as a browse shows it: RabbitMQ's get fields, plus its headers, an `x_death` summary and its
/// delivery count.
fn message_json(e: &Entry, position: Value, truncate: usize, encoding: &str) -> Value {
    let body = &e.msg.body;
    let shown = if body.len() > truncate {
        &body[..truncate]
    } else {
        &body[..]
    };
    let (payload, enc) = match (encoding, std::str::from_utf8(shown)) {
        ("auto", Ok(s)) => (s.to_string(), "string"),
        _ => (base64::engine::general_purpose::STANDARD.encode(shown), "base64"),
    };
    let properties = properties_to_json(&e.msg.properties);
    let headers = properties.get("headers").cloned().unwrap_or_else(|| json!({}));
    let x_death: Vec<Value> = headers
        .get("x-death")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|d| {
                    json!({
                        "queue": d.get("queue").cloned().unwrap_or(Value::Null),
                        "reason": d.get("reason").cloned().unwrap_or(Value::Null),
                        "count": d.get("count").cloned().unwrap_or(Value::Null),
                        "exchange": d.get("exchange").cloned().unwrap_or(Value::Null),
                        "routing_keys": d.get("routing-keys").cloned().unwrap_or_else(|| json!([])),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "position": position,
        "exchange": e.msg.exchange.as_str(),
        "routing_key": e.msg.routing_key.as_str(),
        "redelivered": e.redelivered,
        "delivery_count": e.delivery_count,
        "properties": properties,
        "headers": headers,
        "x_death": x_death,
        "payload": payload,
        "payload_bytes": body.len(),
        "payload_encoding": enc,
        "payload_truncated": shown.len() < body.len(),
    })
}
