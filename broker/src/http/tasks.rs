//! Message moves as tasks (a Mailroom addition, SQS's StartMessageMoveTask / ListMessageMoveTasks /
//! CancelMessageMoveTask under RabbitMQ's API conventions): `POST /api/queues/{vhost}/{name}/redrive`
//! starts one, `GET /api/tasks[/{id}]` shows progress, `DELETE /api/tasks/{id}` cancels. The work is
//! `redrive_task.rs`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::users::parse_body_or_empty;
use super::AppState;
use crate::redrive_task::MoveRequest;
use crate::tasks::{TaskRecord, TaskSlot, TaskState};
use crate::users::{Perm, Res};

fn opt_u64(v: &Value, key: &str) -> Result<Option<u64>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
    }
}

/// Waits until the task is no longer running (or `within` passed); its record then.
async fn settle(slot: &TaskSlot, within: Duration) -> TaskRecord {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = slot.snapshot();
        if r.state != TaskState::Running || tokio::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /api/queues/{vhost}/{name}/redrive` with `{"to"?, "count"?, "message_ids"?, "rate"?, "wait"?}`:
/// 201 with the task (and `Location: /api/tasks/{id}`); with `"wait": true`, 200 with the finished task
/// (`moved`, `kept`), as the synchronous redrive answered. Read permission on the source, write on `to`.
pub async fn create(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let v = parse_body_or_empty(&body)?;
    let (vh, source) = super::queues::find(&broker, &user, &vhost, &name)?;
    user.require_perm(&broker, &vhost, Perm::Read, Res::Queue, &name)?;
    let to = match v.get("to") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_request("to must be a queue name")),
    };
    let count = opt_u64(&v, "count")?;
    let rate = opt_u64(&v, "rate")?;
    if rate == Some(0) {
        return Err(ApiError::bad_request(
            "rate must be at least 1 message per second",
        ));
    }
    let message_ids = match v.get("message_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| ApiError::bad_request("message_ids must be a list of strings"))?,
        ),
        Some(_) => return Err(ApiError::bad_request("message_ids must be a list of strings")),
    };
    let wait = match v.get("wait") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("wait must be true or false")),
    };
    if let Some(t) = &to {
        if vh.queue(t).is_none() {
            return Err(ApiError::not_found());
        }
        user.require_perm(&broker, &vhost, Perm::Write, Res::Queue, t)?;
    }
    if source.stream_bounds().is_some() {
        return Err(ApiError::bad_request(
            "a stream's messages cannot be moved (a stream keeps its messages)",
        ));
    }
    let req = MoveRequest {
        to,
        count,
        message_ids,
        rate,
    };
    let b = broker.clone();
    let slot = tokio::task::spawn_blocking(move || crate::redrive_task::start(&b, &vhost, &source, req))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot store the task: {e}")))?;
    if wait {
        let r = settle(&slot, Duration::from_secs(3600)).await;
        return Ok(axum::Json(r.to_json()).into_response());
    }
    let r = slot.snapshot();
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/tasks/{}", r.id))],
        axum::Json(r.to_json()),
    )
        .into_response())
}

fn visible(broker: &AppState, user: &AuthUser, id: &str) -> Result<std::sync::Arc<TaskSlot>, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::not_found())?;
    let slot = broker.tasks.get(id).ok_or_else(ApiError::not_found)?;
    let vhost = slot.snapshot().vhost;
    if !user.can_access(broker, &vhost) {
        return Err(ApiError::not_found());
    }
    Ok(slot)
}

/// `GET /api/tasks`: the tasks of the vhosts the user may see, oldest first.
pub async fn list(State(broker): State<AppState>, user: AuthUser) -> ApiResult<Response> {
    let list: Vec<Value> = broker
        .tasks
        .list()
        .into_iter()
        .filter(|r| user.can_access(&broker, &r.vhost))
        .map(|r| r.to_json())
        .collect();
    Ok(axum::Json(Value::Array(list)).into_response())
}

pub async fn show(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let slot = visible(&broker, &user, &id)?;
    Ok(axum::Json(slot.snapshot().to_json()).into_response())
}

/// `DELETE /api/tasks/{id}`: cancels a running task; 200 with its record once it stopped (`cancelled`:
/// what it moved stays moved, the rest stays in the source). A task that is not running: 400.
pub async fn cancel(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let slot = visible(&broker, &user, &id)?;
    let r = slot.snapshot();
    user.require_perm(&broker, &r.vhost, Perm::Read, Res::Queue, &r.source)?;
    if r.state != TaskState::Running {
        return Err(ApiError::bad_request(format!(
            "task {} is not running (state {})",
            r.id,
            serde_json::to_value(r.state)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
        )));
    }
    slot.request_cancel();
    let r = settle(&slot, Duration::from_secs(60)).await;
    Ok(axum::Json(r.to_json()).into_response())
}
