//! `/api/queues[/{vhost}[/{name}]]`: list, show, declare (PUT), delete (with `if-empty`/`if-unused`),
//! purge (`DELETE .../contents`), actions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::json::{json_to_table, table_to_json};
use super::users::parse_body;
use super::{durable, paging, AppState};
use crate::queue::{Queue, QueueSpec};
use crate::users::{Perm, Res};

pub fn queue_json(broker: &crate::broker::Broker, vh: &crate::vhost::VHost, q: &Queue) -> Value {
    let vhost: &str = &vh.name;
    let policy = vh.policy_for(q.name());
    let (ready, consumers) = q.counts();
    let unacked = q.unacked_count();
    let ready = ready as u64;
    json!({
        "name": &**q.name(),
        "vhost": vhost,
        "type": "classic",
        "durable": q.spec.durable,
        "auto_delete": q.spec.auto_delete,
        "exclusive": q.spec.exclusive_owner.is_some(),
        "arguments": table_to_json(&q.spec.arguments),
        "node": super::overview::node_name(),
        "state": "running",
        "consumers": consumers,
        "consumer_capacity": if consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if consumers > 0 { 1.0 } else { 0.0 },
        "exclusive_consumer_tag": null,
        "single_active_consumer_tag": null,
        "messages": ready + unacked,
        "messages_details": {"rate": 0.0},
        "messages_ready": ready,
        "messages_ready_details": {"rate": 0.0},
        "messages_unacknowledged": unacked,
        "messages_unacknowledged_details": {"rate": 0.0},
        "policy": policy.as_ref().map(|p| p.name.clone()),
        "operator_policy": null,
        "effective_policy_definition": crate::policy::effective_definition(policy.as_deref()),
        "message_stats": super::rates::queue_stats(broker, vhost, q),
        "storage_version": 2,
    })
}

fn collect(broker: &AppState, user: &AuthUser, only: Option<&str>) -> Vec<Value> {
    let mut items = Vec::new();
    for vh in broker.vhosts() {
        if only.is_some_and(|o| o != &*vh.name) || !user.can_access(broker, &vh.name) {
            continue;
        }
        items.extend(vh.queues().iter().map(|q| queue_json(broker, &vh, q)));
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

/// The vhost and queue of a path, after the vhost access check.
pub fn find(
    broker: &AppState,
    user: &AuthUser,
    vhost: &str,
    name: &str,
) -> Result<(Arc<crate::vhost::VHost>, Arc<Queue>), ApiError> {
    let vh = broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(broker, vhost)?;
    let q = vh.queue(name).ok_or_else(ApiError::not_found)?;
    Ok((vh, q))
}

pub async fn show(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (vh, queue) = find(&broker, &user, &vhost, &name)?;
    Ok(paging::respond_one(queue_json(&broker, &vh, &queue), &q))
}

pub async fn put(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let v = parse_body(&body)?;
    let vh = broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(&broker, &vhost)?;
    user.require_perm(&broker, &vhost, Perm::Configure, Res::Queue, &name)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("queue name must not be empty"));
    }
    if name.len() > 255 {
        return Err(ApiError::bad_request("queue name is longer than 255 bytes"));
    }
    let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
    let arguments =
        json_to_table(v.get("arguments").unwrap_or(&Value::Null)).map_err(ApiError::bad_request)?;
    let (durable_flag, auto_delete) = (flag("durable", true), flag("auto_delete", false));
    if let Some(existing) = vh.queue(&name) {
        // RabbitMQ's assert_equivalence, as a 400.
        if existing.spec.durable != durable_flag || existing.spec.auto_delete != auto_delete {
            return Err(ApiError::bad_request(format!(
                "inequivalent arg 'durable' or 'auto_delete' for queue '{name}' in vhost '{vhost}'"
            )));
        }
        crate::args::check_equivalent_args(&existing.spec.arguments, &arguments, &name, &vhost)?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if name.starts_with("amq.") {
        return Err(ApiError::bad_request(format!(
            "queue name '{name}' contains reserved prefix 'amq.*'"
        )));
    }
    crate::args::validate_queue_args(&arguments, &name, &vhost)?;
    let spec = QueueSpec {
        name: name.as_str().into(),
        durable: durable_flag,
        exclusive_owner: None,
        auto_delete,
        arguments,
    };
    let (_, created, ticket) = vh.declare_queue_durably(spec)?;
    durable(&broker, ticket).await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
    .into_response())
}

pub async fn delete(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (vh, queue) = find(&broker, &user, &vhost, &name)?;
    user.require_perm(&broker, &vhost, Perm::Configure, Res::Queue, &name)?;
    let (messages, consumers) = queue.counts();
    if q.get("if-unused").is_some_and(|v| v == "true") && consumers > 0 {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' in use"
        )));
    }
    if q.get("if-empty").is_some_and(|v| v == "true") && messages > 0 {
        return Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' not empty"
        )));
    }
    let (_, ticket) = vh.delete_queue_durably(&queue);
    durable(&broker, ticket).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/queues/{vhost}/{name}/contents`: purge (read permission, as queue.purge).
pub async fn purge(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (_, queue) = find(&broker, &user, &vhost, &name)?;
    user.require_perm(&broker, &vhost, Perm::Read, Res::Queue, &name)?;
    queue.purge();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/queues/{vhost}/{name}/actions`: RabbitMQ's `sync`/`cancel_sync` are for mirrored queues,
/// which Mailroom has not; they are accepted and do nothing, as on a non-mirrored RabbitMQ queue.
pub async fn actions(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    find(&broker, &user, &vhost, &name)?;
    let v = parse_body(&body)?;
    match v.get("action").and_then(Value::as_str) {
        Some("sync") | Some("cancel_sync") => Ok(StatusCode::NO_CONTENT.into_response()),
        _ => Err(ApiError::bad_request("unknown action")),
    }
}
