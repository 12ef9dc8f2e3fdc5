//! `/api/policies[/{vhost}[/{name}]]`: RabbitMQ's policies (name, pattern, apply-to, priority,
//! definition), applied to live queues at once (`vhost_policy.rs`). Writing needs the `policymaker` (or
//! `administrator`) tag and access to the vhost, as in RabbitMQ.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::users::parse_body;
use super::{blocking, paging, AppState};
use crate::policy::Policy;

pub fn policy_json(p: &Policy) -> Value {
    json!({
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to,
        "definition": p.definition,
        "priority": p.priority,
    })
}

fn collect(broker: &AppState, user: &AuthUser, only: Option<&str>) -> Vec<Value> {
    let mut items = Vec::new();
    for vh in broker.vhosts() {
        if only.is_some_and(|o| o != &*vh.name) || !user.can_access(broker, &vh.name) {
            continue;
        }
        items.extend(vh.policies().iter().map(|p| policy_json(p)));
    }
    items
}

pub async fn list(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    paging::respond(collect(&broker, &user, None), &q, &["vhost", "name"])
}

pub async fn list_vhost(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    user.require_known_vhost(&broker, &vhost)?;
    paging::respond(collect(&broker, &user, Some(&vhost)), &q, &["name"])
}

pub async fn show(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(&broker, &vhost)?;
    let p = vh
        .policies()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(policy_json(&p)).into_response())
}

/// A policy from RabbitMQ's body (`pattern`, `definition`, optional `priority` and `apply-to`).
pub fn policy_from_json(vhost: &str, name: &str, v: &Value) -> Result<Policy, ApiError> {
    let pattern = v
        .get("pattern")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,pattern}]"))?;
    let definition = match v.get("definition") {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ApiError::bad_request("definition must be an object")),
        None => return Err(ApiError::bad_request("[{key_missing,definition}]")),
    };
    let priority = match v.get("priority") {
        None | Some(Value::Null) => 0,
        Some(p) => p
            .as_i64()
            .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| ApiError::bad_request("priority must be an integer"))?,
    };
    let apply_to = v.get("apply-to").and_then(Value::as_str).unwrap_or("all");
    Policy::new(vhost, name, pattern, apply_to, priority, definition)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

pub async fn put(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    if !user.0.is_policymaker() {
        return Err(ApiError::not_authorised("Not policymaker user"));
    }
    let v = parse_body(&body)?;
    let vh = broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(&broker, &vhost)?;
    let policy = policy_from_json(&vhost, &name, &v)?;
    let existed = vh.policies().iter().any(|p| p.name == name);
    let b = broker.clone();
    blocking(move || b.put_policy(policy)).await??;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    }
    .into_response())
}

pub async fn delete(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    if !user.0.is_policymaker() {
        return Err(ApiError::not_authorised("Not policymaker user"));
    }
    user.require_known_vhost(&broker, &vhost)?;
    let b = broker.clone();
    if !blocking(move || b.delete_policy(&vhost, &name)).await?? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
