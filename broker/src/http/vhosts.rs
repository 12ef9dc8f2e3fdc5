//! `/api/vhosts[/{vhost}]`: list, show, create (PUT), delete.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::{blocking, paging, AppState};
use crate::vhost::VHost;

pub fn vhost_json(broker: &AppState, vh: &VHost) -> Value {
    let meta = broker.vhost_meta(&vh.name);
    let (mut ready, mut unacked) = (0u64, 0u64);
    for q in vh.queues() {
        ready += q.counts().0 as u64;
        unacked += q.unacked_count();
    }
    json!({
        "name": &*vh.name,
        "description": meta.description,
        "tags": meta.tags,
        "default_queue_type": meta.default_queue_type,
        "metadata": {"description": meta.description, "tags": meta.tags, "default_queue_type": meta.default_queue_type},
        "tracing": vh.trace.on(),
        "protected_from_deletion": false,
        "cluster_state": {super::overview::node_name(): "running"},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

pub async fn list(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let items: Vec<Value> = broker
        .vhosts()
        .iter()
        .filter(|v| user.can_access(&broker, &v.name))
        .map(|v| vhost_json(&broker, v))
        .collect();
    paging::respond(items, &q, &["name"])
}

pub async fn show(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vh = broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(&broker, &vhost)?;
    Ok(paging::respond_one(vhost_json(&broker, &vh), &q))
}

/// PUT creates the vhost (201) or leaves an existing one as it is (204). The body is optional
/// (`description`, `tags`, `default_queue_type`, kept as metadata; `tracing` switches message tracing, as
/// RabbitMQ's `rabbit_vhost:update_tracing`).
pub async fn put(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let tracing = match v.get("tracing") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::bad_request("tracing must be true or false")),
    };
    let existing = broker.vhost_meta(&vhost);
    let text = |k: &str, d: &str| -> Result<String, ApiError> {
        match v.get(k).or_else(|| v.get("metadata").and_then(|m| m.get(k))) {
            None | Some(Value::Null) => Ok(d.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::bad_request(format!("{k} must be a string"))),
        }
    };
    let tags = match v
        .get("tags")
        .or_else(|| v.get("metadata").and_then(|m| m.get("tags")))
    {
        None | Some(Value::Null) => existing.tags.clone(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        Some(_) => return Err(ApiError::bad_request("tags must be a string or a list")),
    };
    let meta = storage::VhostMetaRecord {
        name: vhost.clone(),
        description: text("description", &existing.description)?,
        tags,
        default_queue_type: text("default_queue_type", &existing.default_queue_type)?,
    };
    if !matches!(meta.default_queue_type.as_str(), "classic" | "quorum" | "stream") {
        return Err(ApiError::bad_request(format!(
            "default_queue_type must be classic, quorum or stream, got '{}'",
            meta.default_queue_type
        )));
    }
    if vhost.is_empty() {
        return Err(ApiError::bad_request("vhost name must not be empty"));
    }
    let b = broker.clone();
    let name = vhost.clone();
    let created = blocking(move || -> Result<bool, storage::StoreError> {
        let created = b.add_vhost(&name)?;
        b.set_vhost_meta(meta)?;
        if let Some(on) = tracing {
            b.set_tracing(&name, on)?;
        }
        Ok(created)
    })
    .await??;
    if created {
        // As RabbitMQ: the creating user gets full permissions on the new vhost.
        let (b, name, u) = (broker.clone(), vhost.clone(), user.name().to_string());
        blocking(move || b.users.set_permission(&name, &u, ".*", ".*", ".*")).await??;
        Ok(StatusCode::CREATED.into_response())
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

pub async fn delete(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    let b = broker.clone();
    blocking(move || b.delete_vhost(&vhost)).await??;
    Ok(StatusCode::NO_CONTENT.into_response())
}
