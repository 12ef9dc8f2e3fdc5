//! `POST /api/exchanges/{vhost}/{name}/route`: which queues a message with this routing key (and these
//! headers) would reach, asked of the vhost's router without publishing anything. RabbitMQ's API has no
//! such endpoint (the web console's "test route" box uses it); it follows exchange-to-exchange bindings,
//! alternate exchanges and the `CC`/`BCC` headers exactly as a publish does.
//!
//! Body: `{"routing_key": "k", "headers": {...}?, "properties": {"message_id", "correlation_id",
//! "timestamp"}?}`. Answer: `{"routed": bool, "queues": [names, sorted], "used_alternate": bool}`.
//! Needs access to the vhost (as reading its bindings does); nothing changes in the broker.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::json::json_to_table;
use super::users::parse_body;
use super::AppState;

/// The `CC` and `BCC` keys of the headers (sender-selected distribution), as a publish reads them.
fn extra_keys(headers: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for k in ["CC", "BCC"] {
        match headers.get(k) {
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str).map(str::to_string)),
            Some(Value::String(s)) => out.push(s.clone()),
            _ => {}
        }
    }
    out
}

pub async fn route(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let v = parse_body(&body)?;
    let vh = broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(&broker, &vhost)?;
    let name = if name == "amq.default" {
        String::new()
    } else {
        name
    };
    let routing_key = match v.get("routing_key") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(ApiError::bad_request("routing_key must be a string")),
    };
    let headers_json = v.get("headers").cloned().unwrap_or(Value::Null);
    let headers = match &headers_json {
        Value::Null => None,
        h => Some(crate::args::to_router_args(
            &json_to_table(h).map_err(ApiError::bad_request)?,
        )),
    };
    let extra = extra_keys(&headers_json);
    let props = v.get("properties").cloned().unwrap_or(Value::Null);
    if !props.is_null() && !props.is_object() {
        return Err(ApiError::bad_request("properties must be an object"));
    }
    let msg_props = router::MsgProps {
        message_id: props.get("message_id").and_then(Value::as_str),
        correlation_id: props.get("correlation_id").and_then(Value::as_str),
        timestamp: props.get("timestamp").and_then(Value::as_u64),
    };
    let mut queues = Vec::new();
    let routed = {
        let router = vh.router.read();
        if router.exchange(&name).is_none() {
            return Err(ApiError::not_found());
        }
        router
            .route_msg(
                &name,
                routing_key,
                &extra,
                headers.as_ref(),
                &msg_props,
                &mut queues,
            )
            .map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    let mut names: Vec<&str> = queues.iter().map(|q| &**q).collect();
    names.sort_unstable();
    Ok(axum::Json(json!({
        "routed": routed.matched,
        "queues": names,
        "used_alternate": routed.used_alternate,
    }))
    .into_response())
}
