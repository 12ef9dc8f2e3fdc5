//! `/api/connections[/{name}]` (DELETE closes one), `/api/channels[/{name}]`, `/api/consumers[/{vhost}]`,
//! `/api/vhosts/{vhost}/connections|channels`, `/api/connections/{name}/channels`. Channels and consumers
//! come from a snapshot each connection task takes when asked (`conns.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::json::table_to_json;
use super::{paging, AppState};
use crate::broker::Broker;
use crate::conns::{ChannelSnapshot, ConnInfo, ConnSnapshot};

fn conn_json(c: &ConnInfo, channels: usize) -> Value {
    json!({
        "name": c.name,
        "node": super::overview::node_name(),
        "vhost": c.vhost,
        "user": c.user,
        "user_who_performed_action": c.user,
        "state": "running",
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": c.auth_mechanism,
        "ssl": false,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.ip().to_string(),
        "port": c.local.port(),
        "connected_at": c.connected_at_ms,
        "timeout": c.heartbeat,
        "frame_max": c.frame_max,
        "channel_max": c.channel_max,
        "channels": channels,
        "client_properties": table_to_json(&c.client_properties),
        "recv_oct": 0, "send_oct": 0, "recv_cnt": 0, "send_cnt": 0,
    })
}

fn channel_name(c: &ConnInfo, number: u16) -> String {
    format!("{} ({number})", c.name)
}

fn channel_json(broker: &Broker, c: &ConnInfo, ch: &ChannelSnapshot, channels: usize) -> Value {
    let stats = if channels == 1 {
        super::rates::conn_stats(broker, c.id)
    } else {
        json!({})
    };
    json!({
        "name": channel_name(c, ch.number),
        "number": ch.number,
        "node": super::overview::node_name(),
        "vhost": c.vhost,
        "user": c.user,
        "user_who_performed_action": c.user,
        "state": "running",
        "connection_details": {"name": c.name, "peer_host": c.peer.ip().to_string(), "peer_port": c.peer.port()},
        "consumer_count": ch.consumer_count,
        "messages_unacknowledged": ch.messages_unacknowledged,
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "prefetch_count": ch.prefetch_count,
        "global_prefetch_count": ch.global_prefetch_count,
        "confirm": ch.confirm,
        "transactional": ch.transactional,
        "pending_raft_commands": 0,
        "message_stats": stats,
    })
}

/// The connections the user may see: all for administrators and monitors, else their own.
fn visible(broker: &AppState, user: &AuthUser, vhost: Option<&str>) -> Vec<Arc<ConnInfo>> {
    broker
        .conns
        .list()
        .into_iter()
        .filter(|c| user.sees_all() || c.user == user.name())
        .filter(|c| vhost.is_none_or(|v| c.vhost == v))
        .collect()
}

/// Every connection's snapshot, asked of all of them at once (each answers from its own task).
async fn snapshots(conns: &[Arc<ConnInfo>]) -> Vec<ConnSnapshot> {
    futures::future::join_all(conns.iter().map(|c| c.snapshot())).await
}

async fn list_conns(
    broker: &AppState,
    user: &AuthUser,
    vhost: Option<&str>,
    q: &HashMap<String, String>,
) -> ApiResult<Response> {
    let conns = visible(broker, user, vhost);
    let snaps = snapshots(&conns).await;
    let items = conns
        .iter()
        .zip(&snaps)
        .map(|(c, s)| conn_json(c, s.channels.len()))
        .collect();
    paging::respond(items, q, &["name"])
}

pub async fn list(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    list_conns(&broker, &user, None, &q).await
}

pub async fn vhost_connections(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    user.require_known_vhost(&broker, &vhost)?;
    list_conns(&broker, &user, Some(&vhost), &q).await
}

fn find(broker: &AppState, user: &AuthUser, name: &str) -> Result<Arc<ConnInfo>, ApiError> {
    broker
        .conns
        .by_name(name)
        .filter(|c| user.sees_all() || c.user == user.name())
        .ok_or_else(ApiError::not_found)
}

pub async fn show(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let c = find(&broker, &user, &name)?;
    let s = c.snapshot().await;
    Ok(axum::Json(conn_json(&c, s.channels.len())).into_response())
}

/// Closes a connection with 320 CONNECTION_FORCED; the reason is the `X-Reason` header (RabbitMQ's
/// default text otherwise). Administrators close any; others their own.
pub async fn delete(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let c = find(&broker, &user, &name)?;
    if !user.0.is_admin() && c.user != user.name() {
        return Err(ApiError::not_authorised("User not authorised to access object"));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    broker.conns.close(&c, reason);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn channel_items(broker: &Broker, conns: &[Arc<ConnInfo>]) -> Vec<Value> {
    let snaps = snapshots(conns).await;
    conns
        .iter()
        .zip(&snaps)
        .flat_map(|(c, s)| {
            let n = s.channels.len();
            s.channels.iter().map(move |ch| channel_json(broker, c, ch, n))
        })
        .collect()
}

pub async fn channels(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let conns = visible(&broker, &user, None);
    paging::respond(channel_items(&broker, &conns).await, &q, &["name"])
}

pub async fn vhost_channels(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    user.require_known_vhost(&broker, &vhost)?;
    let conns = visible(&broker, &user, Some(&vhost));
    paging::respond(channel_items(&broker, &conns).await, &q, &["name"])
}

pub async fn conn_channels(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let c = find(&broker, &user, &name)?;
    paging::respond(channel_items(&broker, &[c]).await, &q, &["name"])
}

pub async fn channel(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let conns = visible(&broker, &user, None);
    let item = channel_items(&broker, &conns)
        .await
        .into_iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name.as_str()))
        .ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(item).into_response())
}

async fn consumer_items(conns: &[Arc<ConnInfo>]) -> Vec<Value> {
    let snaps = snapshots(conns).await;
    let node = super::overview::node_name();
    let mut items = Vec::new();
    for (c, s) in conns.iter().zip(&snaps) {
        for k in &s.consumers {
            items.push(json!({
                "arguments": {},
                "ack_required": k.ack_required,
                "active": true,
                "activity_status": "up",
                "consumer_tag": k.tag,
                "exclusive": k.exclusive,
                "prefetch_count": k.prefetch_count,
                "consumer_timeout": 1_800_000,
                "queue": {"name": &*k.queue, "vhost": c.vhost},
                "channel_details": {
                    "name": channel_name(c, k.channel),
                    "number": k.channel,
                    "connection_name": c.name,
                    "peer_host": c.peer.ip().to_string(),
                    "peer_port": c.peer.port(),
                    "user": c.user,
                    "node": node,
                },
            }));
        }
    }
    items
}

pub async fn consumers(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let conns = visible(&broker, &user, None);
    paging::respond(consumer_items(&conns).await, &q, &["consumer_tag"])
}

pub async fn consumers_vhost(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    user.require_known_vhost(&broker, &vhost)?;
    let conns = visible(&broker, &user, Some(&vhost));
    paging::respond(consumer_items(&conns).await, &q, &["consumer_tag"])
}
