//! `/api/bindings[/{vhost}]`, `/api/bindings/{vhost}/e/{source}/q|e/{dest}[/{props}]`,
//! `/api/exchanges/{vhost}/{name}/bindings/source|destination`, `/api/queues/{vhost}/{name}/bindings`.
//!
//! A binding is named in URLs by its `properties_key` (RabbitMQ's `rabbit_mgmt_format:pack_binding_props`):
//! the routing key (`~` when empty, `~` in it escaped as `%7E`), and with arguments `~` and a hash of them.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use router::{Binding, Destination};
use serde_json::{json, Value};
use sha2::Digest;

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::json::{args_to_json, json_to_table};
use super::users::parse_body;
use super::{durable, paging, AppState};
use crate::users::{Perm, Res};
use crate::vhost::VHost;

pub fn properties_key(routing_key: &str, args: &router::Args) -> String {
    let key = if routing_key.is_empty() {
        "~".to_string()
    } else {
        routing_key.replace('~', "%7E")
    };
    if args.is_empty() {
        return key;
    }
    let canonical = serde_json::to_string(&args_to_json(args)).unwrap_or_default();
    let digest = sha2::Sha256::digest(canonical.as_bytes());
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..4]);
    if routing_key.is_empty() {
        format!("~{hash}")
    } else {
        format!("{key}~{hash}")
    }
}

pub fn binding_json(vhost: &str, b: &Binding) -> Value {
    let (dest, dtype) = match &b.destination {
        Destination::Queue(q) => (&**q, "queue"),
        Destination::Exchange(x) => (&**x, "exchange"),
    };
    json!({
        "source": &*b.source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": dtype,
        "routing_key": &*b.routing_key,
        "arguments": args_to_json(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

/// Every binding of a vhost, with the default exchange's implicit ones first (as RabbitMQ lists them).
fn vhost_bindings(vh: &VHost) -> Vec<Binding> {
    let mut queues: Vec<_> = vh.queues().iter().map(|q| q.name().clone()).collect();
    queues.sort();
    let mut out: Vec<Binding> = queues
        .into_iter()
        .map(|q| Binding {
            source: "".into(),
            routing_key: q.clone(),
            destination: Destination::Queue(q),
            arguments: router::Args::new(),
        })
        .collect();
    out.extend(vh.router.read().bindings());
    out
}

fn collect(
    broker: &AppState,
    user: &AuthUser,
    only: Option<&str>,
    f: impl Fn(&Binding) -> bool,
) -> Vec<Value> {
    let mut items = Vec::new();
    for vh in broker.vhosts() {
        if only.is_some_and(|o| o != &*vh.name) || !user.can_access(broker, &vh.name) {
            continue;
        }
        items.extend(
            vhost_bindings(&vh)
                .iter()
                .filter(|b| f(b))
                .map(|b| binding_json(&vh.name, b)),
        );
    }
    items
}

fn json_list(items: Vec<Value>) -> ApiResult<Response> {
    Ok(axum::Json(Value::Array(items)).into_response())
}

pub async fn list(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    paging::respond(collect(&broker, &user, None, |_| true), &q, &[])
}

fn vhost_checked(broker: &AppState, user: &AuthUser, vhost: &str) -> Result<std::sync::Arc<VHost>, ApiError> {
    let vh = broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(broker, vhost)?;
    Ok(vh)
}

pub async fn list_vhost(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    vhost_checked(&broker, &user, &vhost)?;
    paging::respond(collect(&broker, &user, Some(&vhost), |_| true), &q, &[])
}

fn is_dest(b: &Binding, queue: bool, name: &str) -> bool {
    match &b.destination {
        Destination::Queue(q) => queue && &**q == name,
        Destination::Exchange(x) => !queue && &**x == name,
    }
}

fn exists(vh: &VHost, queue: bool, name: &str) -> bool {
    if queue {
        vh.queue(name).is_some()
    } else {
        vh.router.read().exchange(name).is_some()
    }
}

pub async fn exchange_source(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = vhost_checked(&broker, &user, &vhost)?;
    if !exists(&vh, false, &name) {
        return Err(ApiError::not_found());
    }
    json_list(collect(&broker, &user, Some(&vhost), |b| *b.source == *name))
}

pub async fn exchange_destination(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = vhost_checked(&broker, &user, &vhost)?;
    if !exists(&vh, false, &name) {
        return Err(ApiError::not_found());
    }
    json_list(collect(&broker, &user, Some(&vhost), |b| {
        is_dest(b, false, &name)
    }))
}

pub async fn queue_bindings(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let vh = vhost_checked(&broker, &user, &vhost)?;
    if !exists(&vh, true, &name) {
        return Err(ApiError::not_found());
    }
    json_list(collect(&broker, &user, Some(&vhost), |b| is_dest(b, true, &name)))
}

async fn between(
    broker: AppState,
    user: AuthUser,
    vhost: String,
    source: String,
    dest: String,
    queue: bool,
) -> ApiResult<Response> {
    let vh = vhost_checked(&broker, &user, &vhost)?;
    if !exists(&vh, false, &source) || !exists(&vh, queue, &dest) {
        return Err(ApiError::not_found());
    }
    json_list(collect(&broker, &user, Some(&vhost), |b| {
        *b.source == *source && is_dest(b, queue, &dest)
    }))
}

pub async fn list_between_q(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, source, dest)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    between(broker, user, vhost, source, dest, true).await
}

pub async fn list_between_e(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, source, dest)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    between(broker, user, vhost, source, dest, false).await
}

/// POST: creates the binding (201, `Location` names it by its properties key). Write on the destination
/// and read on the source, as queue.bind.
async fn create(
    broker: AppState,
    user: AuthUser,
    vhost: String,
    source: String,
    dest: String,
    queue: bool,
    body: Bytes,
) -> ApiResult<Response> {
    let v = if body.is_empty() {
        json!({})
    } else {
        parse_body(&body)?
    };
    let vh = vhost_checked(&broker, &user, &vhost)?;
    if !exists(&vh, false, &source) || !exists(&vh, queue, &dest) {
        return Err(ApiError::not_found());
    }
    let dres = if queue { Res::Queue } else { Res::Exchange };
    user.require_perm(&broker, &vhost, Perm::Write, dres, &dest)?;
    user.require_perm(&broker, &vhost, Perm::Read, Res::Exchange, &source)?;
    if source.is_empty() {
        return Err(ApiError::bad_request(
            "operation not permitted on the default exchange",
        ));
    }
    let routing_key = match v.get("routing_key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::bad_request("routing_key must be a string")),
    };
    let arguments =
        json_to_table(v.get("arguments").unwrap_or(&Value::Null)).map_err(ApiError::bad_request)?;
    let binding = Binding {
        source: source.as_str().into(),
        destination: if queue {
            Destination::Queue(dest.as_str().into())
        } else {
            Destination::Exchange(dest.as_str().into())
        },
        routing_key: routing_key.as_str().into(),
        arguments: crate::args::to_router_args(&arguments),
    };
    let key = properties_key(&binding.routing_key, &binding.arguments);
    let ticket = vh.bind_durably(binding)?;
    let source = if source.is_empty() {
        "amq.default".to_string()
    } else {
        source
    };
    durable(&broker, ticket).await?;
    let location = format!(
        "/api/bindings/{}/e/{}/{}/{}/{}",
        percent_encode_segment(&vhost),
        percent_encode_segment(&source),
        if queue { "q" } else { "e" },
        percent_encode_segment(&dest),
        percent_encode_segment(&key)
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub async fn create_q(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, source, dest)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    create(broker, user, vhost, source, dest, true, body).await
}

pub async fn create_e(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, source, dest)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    create(broker, user, vhost, source, dest, false, body).await
}

fn find_binding(vh: &VHost, source: &str, dest: &str, queue: bool, props: &str) -> Option<Binding> {
    vhost_bindings(vh).into_iter().find(|b| {
        *b.source == *source
            && is_dest(b, queue, dest)
            && properties_key(&b.routing_key, &b.arguments) == props
    })
}

async fn show(
    broker: AppState,
    user: AuthUser,
    vhost: String,
    source: String,
    dest: String,
    props: String,
    queue: bool,
) -> ApiResult<Response> {
    let vh = vhost_checked(&broker, &user, &vhost)?;
    let b = find_binding(&vh, &source, &dest, queue, &props).ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(binding_json(&vhost, &b)).into_response())
}

pub async fn show_q(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, source, dest, props)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    show(broker, user, vhost, source, dest, props, true).await
}

pub async fn show_e(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, source, dest, props)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    show(broker, user, vhost, source, dest, props, false).await
}

async fn delete(
    broker: AppState,
    user: AuthUser,
    vhost: String,
    source: String,
    dest: String,
    props: String,
    queue: bool,
) -> ApiResult<Response> {
    let vh = vhost_checked(&broker, &user, &vhost)?;
    let b = find_binding(&vh, &source, &dest, queue, &props).ok_or_else(ApiError::not_found)?;
    let dres = if queue { Res::Queue } else { Res::Exchange };
    user.require_perm(&broker, &vhost, Perm::Write, dres, &dest)?;
    user.require_perm(&broker, &vhost, Perm::Read, Res::Exchange, &source)?;
    if source.is_empty() {
        return Err(ApiError::bad_request(
            "operation not permitted on the default exchange",
        ));
    }
    let ticket = vh.unbind_durably(&b)?;
    durable(&broker, ticket).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn delete_q(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, source, dest, props)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    delete(broker, user, vhost, source, dest, props, true).await
}

pub async fn delete_e(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, source, dest, props)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    delete(broker, user, vhost, source, dest, props, false).await
}
