//! `/api/overview`, `/api/whoami`, `/api/nodes`, `/api/extensions`, health checks and the aliveness test.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::{paging, AppState};

/// The version RabbitMQ-aware tools see: the management API's shapes follow RabbitMQ 4.x.
pub const RABBITMQ_VERSION: &str = "4.0.0";

/// RabbitMQ-style node name, `mailroom@<host>`.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("mailroom@{host}")
}

/// (queues, messages ready, unacked, consumers) over the vhosts the user may see.
fn queue_totals(broker: &AppState, user: &AuthUser) -> (usize, u64, u64, u64) {
    let mut t = (0usize, 0u64, 0u64, 0u64);
    for vh in broker.vhosts() {
        if !user.can_access(broker, &vh.name) {
            continue;
        }
        for q in vh.queues() {
            let (ready, consumers) = q.counts();
            t.0 += 1;
            t.1 += ready as u64;
            t.2 += q.unacked_count();
            t.3 += consumers as u64;
        }
    }
    t
}

pub async fn overview(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let (queues, ready, unacked, consumers) = queue_totals(&broker, &user);
    let exchanges: usize = broker
        .vhosts()
        .iter()
        .filter(|v| user.can_access(&broker, &v.name))
        .map(|v| v.router.read().exchanges().count())
        .sum();
    let conns: Vec<_> = broker
        .conns
        .list()
        .into_iter()
        .filter(|c| user.sees_all() || c.user == user.name())
        .collect();
    let channels: usize = futures::future::join_all(conns.iter().map(|c| c.snapshot()))
        .await
        .iter()
        .map(|s| s.channels.len())
        .sum();
    let node = node_name();
    let (amqp, http) = broker.bound.get().cloned().unwrap_or_default();
    let mut listeners = Vec::new();
    for a in &amqp {
        listeners.push(json!({"node": node, "protocol": "amqp", "ip_address": a.ip().to_string(), "port": a.port(), "socket_opts": {}}));
    }
    let mut contexts = Vec::new();
    for a in &http {
        contexts.push(json!({"node": node, "description": "RabbitMQ Management", "path": "/", "ip": a.ip().to_string(), "port": a.port().to_string()}));
    }
    let counters = &broker.flow.counters;
    let body = json!({
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600], "detailed": [600]},
        "exchange_types": exchange_types(),
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Mailroom",
        "rabbitmq_version": RABBITMQ_VERSION,
        "cluster_name": "mailroom",
        "erlang_version": "n/a",
        "erlang_full_version": "n/a (Mailroom is written in Rust)",
        "release_series_support_status": "supported",
        "disable_stats": false,
        "is_op_policy_updating_enabled": true,
        "enable_queue_totals": true,
        "message_stats": super::rates::overview_stats(&broker),
        "churn_rates": {
            "channel_closed": 0, "channel_closed_details": {"rate": 0.0},
            "channel_created": 0, "channel_created_details": {"rate": 0.0},
            "connection_closed": 0, "connection_closed_details": {"rate": 0.0},
            "connection_created": 0, "connection_created_details": {"rate": 0.0},
            "queue_created": 0, "queue_created_details": {"rate": 0.0},
            "queue_declared": 0, "queue_declared_details": {"rate": 0.0},
            "queue_deleted": 0, "queue_deleted_details": {"rate": 0.0}
        },
        "queue_totals": {
            "messages": ready + unacked, "messages_details": {"rate": 0.0},
            "messages_ready": ready, "messages_ready_details": {"rate": 0.0},
            "messages_unacknowledged": unacked, "messages_unacknowledged_details": {"rate": 0.0}
        },
        "object_totals": {
            "channels": channels,
            "connections": conns.len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues
        },
        "statistics_db_event_queue": 0,
        "node": node,
        "listeners": listeners,
        "contexts": contexts,
        "mailroom": {
            "refused_connections": counters.refused_connections.load(Ordering::Relaxed),
            "alarm_blocks": counters.alarm_blocks.load(Ordering::Relaxed)
        }
    });
    Ok(paging::respond_one(body, &q))
}

pub fn exchange_types() -> Value {
    json!([
        {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
        {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
        {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
        {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true}
    ])
}

pub async fn whoami(user: AuthUser) -> Json<Value> {
    Json(json!({"name": user.0.name, "tags": user.0.tags, "is_internal_user": true}))
}

pub async fn extensions(_user: AuthUser) -> Json<Value> {
    Json(json!([]))
}

pub async fn nodes(State(broker): State<AppState>, user: AuthUser) -> ApiResult<Json<Value>> {
    user.require_monitor()?;
    let alarm = *broker.flow.subscribe().borrow();
    Ok(Json(json!([{
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "mem_alarm": alarm.memory,
        "disk_free_alarm": alarm.disk,
        "uptime": 0,
        "os_pid": std::process::id().to_string(),
        "applications": [],
        "exchange_types": exchange_types(),
        "auth_mechanisms": [{"name": "PLAIN", "enabled": true}, {"name": "AMQPLAIN", "enabled": true}]
    }])))
}

/// `/api/aliveness-test/{vhost}`: declares a queue, publishes to it and gets the message back.
pub async fn aliveness(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require_vhost(&broker, &vhost)?;
    let vh = broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let spec = crate::queue::QueueSpec {
        name: "aliveness-test".into(),
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: Default::default(),
    };
    let (q, _) = vh.declare_queue(spec)?;
    let msg = std::sync::Arc::new(crate::message::Message::new(
        protocol::ShortStr::from(""),
        protocol::ShortStr::from("aliveness-test"),
        Default::default(),
        bytes::Bytes::from_static(b"test_message"),
    ));
    let now = crate::clock::now_ms();
    let mut dead = crate::queue::DeadLetters::new();
    let _ = q.publish(msg, now, &mut dead);
    let got = q.get(false, now, &mut dead);
    if let Some((entry, _)) = &got {
        q.forget(std::slice::from_ref(entry));
    }
    vh.dead_letter(&q, &mut dead, now);
    match got {
        Some(_) => Ok(Json(json!({"status": "ok"}))),
        None => Err(ApiError::internal("aliveness test failed")),
    }
}

pub async fn health_alarms(State(broker): State<AppState>, _user: AuthUser) -> Response {
    let alarm = *broker.flow.subscribe().borrow();
    if alarm.any() {
        let body =
            json!({"status": "failed", "reason": "resource alarm(s) in effect", "alarms": [alarm.reason()]});
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

pub async fn health_ok(_user: AuthUser) -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Lists of things Mailroom has none of (parameters, limits, feature flags, topic permissions).
pub async fn empty_list(_user: AuthUser, Query(q): Query<HashMap<String, String>>) -> ApiResult<Response> {
    paging::respond(Vec::new(), &q, &["name"])
}

pub async fn not_applicable(_user: AuthUser) -> ApiResult<Json<Value>> {
    Ok(Json(json!({})))
}

use axum::response::IntoResponse;
