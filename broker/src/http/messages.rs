//! `POST /api/exchanges/{vhost}/{name}/publish` and `POST /api/queues/{vhost}/{name}/get`, with RabbitMQ's
//! bodies (`rabbit_mgmt_wm_exchange_publish`, `rabbit_mgmt_wm_queue_get`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use protocol::{BasicProperties, RawProperties, ShortStr};
use serde_json::{json, Map, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::json::{json_to_table, table_to_json};
use super::users::parse_body;
use super::AppState;
use crate::message::Message;
use crate::queue::DeadLetters;
use crate::users::{Perm, Res};

fn short(v: &Value, k: &str) -> Result<Option<ShortStr>, ApiError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => ShortStr::try_from_str(s)
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("property {k} is longer than 255 bytes"))),
        Some(_) => Err(ApiError::bad_request(format!("property {k} must be a string"))),
    }
}

fn properties_from_json(v: &Value) -> Result<BasicProperties, ApiError> {
    if !v.is_object() && !v.is_null() {
        return Err(ApiError::bad_request("properties must be an object"));
    }
    let int = |k: &str| v.get(k).and_then(Value::as_u64);
    Ok(BasicProperties {
        content_type: short(v, "content_type")?,
        content_encoding: short(v, "content_encoding")?,
        headers: match v.get("headers") {
            None | Some(Value::Null) => None,
            Some(h) => Some(json_to_table(h).map_err(ApiError::bad_request)?),
        },
        delivery_mode: int("delivery_mode").map(|d| d as u8),
        priority: int("priority").map(|p| p.min(255) as u8),
        correlation_id: short(v, "correlation_id")?,
        reply_to: short(v, "reply_to")?,
        expiration: short(v, "expiration")?,
        message_id: short(v, "message_id")?,
        timestamp: int("timestamp"),
        kind: short(v, "type")?,
        user_id: short(v, "user_id")?,
        app_id: short(v, "app_id")?,
        cluster_id: short(v, "cluster_id")?,
    })
}

pub(super) fn properties_to_json(p: &RawProperties) -> Value {
    let Ok(p) = p.decode() else { return json!({}) };
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    let s = |x: &Option<ShortStr>| x.as_ref().map(|s| Value::String(s.as_str().to_string()));
    put("content_type", s(&p.content_type));
    put("content_encoding", s(&p.content_encoding));
    put("headers", p.headers.as_ref().map(table_to_json));
    put("delivery_mode", p.delivery_mode.map(|d| d.into()));
    put("priority", p.priority.map(|d| d.into()));
    put("correlation_id", s(&p.correlation_id));
    put("reply_to", s(&p.reply_to));
    put("expiration", s(&p.expiration));
    put("message_id", s(&p.message_id));
    put("timestamp", p.timestamp.map(|d| d.into()));
    put("type", s(&p.kind));
    put("user_id", s(&p.user_id));
    put("app_id", s(&p.app_id));
    put("cluster_id", s(&p.cluster_id));
    Value::Object(m)
}

/// Publishes one message; `{"routed": true}` when it reached a queue. Write permission on the exchange.
pub async fn publish(
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
    if vh.router.read().exchange(&name).is_none() {
        return Err(ApiError::not_found());
    }
    user.require_perm(&broker, &vhost, Perm::Write, Res::Exchange, &name)?;
    let routing_key = v
        .get("routing_key")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,routing_key}]"))?;
    let payload = v
        .get("payload")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,payload}]"))?;
    let body = match v
        .get("payload_encoding")
        .and_then(Value::as_str)
        .unwrap_or("string")
    {
        "string" => Bytes::copy_from_slice(payload.as_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be 'string' or 'base64', got '{other}'"
            )))
        }
    };
    if body.len() as u64 > broker.config.max_message_size {
        return Err(ApiError::bad_request("message too large"));
    }
    let mut props = properties_from_json(v.get("properties").unwrap_or(&Value::Null))?;
    if let Some(uid) = &props.user_id {
        if uid.as_str() != user.name() {
            return Err(ApiError::bad_request(format!(
                "user_id property set to '{uid}' but authenticated user was '{}'",
                user.name()
            )));
        }
    }
    if props.delivery_mode.is_none() {
        props.delivery_mode = None;
    }
    let raw = RawProperties::from_properties(&props);
    crate::message::validate_expiration(&raw).map_err(ApiError::bad_request)?;
    let exchange =
        ShortStr::try_from_str(&name).map_err(|_| ApiError::bad_request("exchange name too long"))?;
    let rk = ShortStr::try_from_str(routing_key)
        .map_err(|_| ApiError::bad_request("routing_key is longer than 255 bytes"))?;
    let msg = Arc::new(Message::published(exchange, rk, raw, body).map_err(ApiError::bad_request)?);
    let headers = crate::args::message_headers(&msg.properties);
    let mut dests = Vec::new();
    vh.router
        .read()
        .route_multi(
            &name,
            routing_key,
            msg.extra_routing_keys(),
            headers.as_ref(),
            &mut dests,
        )
        .map_err(crate::error::AmqpError::from)?;
    let now = crate::clock::now_ms();
    let mut routed = 0usize;
    let mut ticket = 0u64;
    let mut deferred = Vec::new();
    vh.with_queues(&dests, |q| {
        let mut dead = DeadLetters::new();
        if let Ok(t) = q.publish(msg.clone(), now, &mut dead) {
            routed += 1;
            ticket = ticket.max(t);
        }
        if !dead.is_empty() {
            deferred.push((q.clone(), dead));
        }
    });
    for (q, mut d) in deferred {
        vh.dead_letter(&q, &mut d, now);
    }
    // As a confirm would: the response leaves once a persistent message is on disk.
    super::durable(&broker, ticket).await?;
    Ok(axum::Json(json!({"routed": routed > 0})).into_response())
}

/// Gets up to `count` messages: `ackmode` `ack_requeue_true` / `reject_requeue_true` put them back
/// (redelivered), `ack_requeue_false` removes them, `reject_requeue_false` dead-letters them. Read
/// permission on the queue, as basic.get.
pub async fn get(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let v = parse_body(&body)?;
    let (vh, q) = super::queues::find(&broker, &user, &vhost, &name)?;
    user.require_perm(&broker, &vhost, Perm::Read, Res::Queue, &name)?;
    let count = v
        .get("count")
        .and_then(|c| c.as_u64().or_else(|| c.as_str().and_then(|s| s.parse().ok())))
        .ok_or_else(|| ApiError::bad_request("[{key_missing,count}]"))?;
    let ackmode = v
        .get("ackmode")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,ackmode}]"))?;
    let (requeue, reject) = match ackmode {
        "ack_requeue_true" => (true, false),
        "reject_requeue_true" => (true, true),
        "ack_requeue_false" => (false, false),
        "reject_requeue_false" => (false, true),
        other => return Err(ApiError::bad_request(format!("Unknown ackmode: {other}"))),
    };
    let encoding = v.get("encoding").and_then(Value::as_str).unwrap_or("auto");
    if encoding != "auto" && encoding != "base64" {
        return Err(ApiError::bad_request(format!("Unsupported encoding: {encoding}")));
    }
    let truncate = v
        .get("truncate")
        .and_then(|t| t.as_u64().or_else(|| t.as_str().and_then(|s| s.parse().ok())))
        .map(|t| t as usize);
    let now = crate::clock::now_ms();
    let mut dead = DeadLetters::new();
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        let ack = requeue || reject;
        let Some((entry, remaining)) = q.get(ack, now, &mut dead) else {
            break;
        };
        let body = &entry.msg.body;
        let shown = match truncate {
            Some(t) if body.len() > t => &body[..t],
            _ => &body[..],
        };
        let (payload, enc) = match (encoding, std::str::from_utf8(shown)) {
            ("auto", Ok(s)) => (s.to_string(), "string"),
            _ => (base64::engine::general_purpose::STANDARD.encode(shown), "base64"),
        };
        out.push(json!({
            "payload_bytes": body.len(),
            "redelivered": entry.redelivered,
            "exchange": entry.msg.exchange.as_str(),
            "routing_key": entry.msg.routing_key.as_str(),
            "message_count": remaining,
            "properties": properties_to_json(&entry.msg.properties),
            "payload": payload,
            "payload_encoding": enc,
        }));
        if ack {
            taken.push(entry);
        } else {
            q.forget(std::slice::from_ref(&entry));
        }
    }
    if requeue {
        q.requeue(taken, now, &mut dead);
    } else if reject {
        q.reject(taken, &mut dead);
    }
    vh.dead_letter(&q, &mut dead, now);
    Ok(axum::Json(Value::Array(out)).into_response())
}
