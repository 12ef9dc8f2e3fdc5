//! `/api/bindings[/{vhost}]`, `/api/bindings/{vhost}/e/{source}/q|e/{dest}[/{props}]`,
//! `/api/exchanges/{vhost}/{name}/bindings/source|destination`, `/api/queues/{vhost}/{name}/bindings`.
//!
//! A binding is named in URLs by its `properties_key` (RabbitMQ's `rabbit_mgmt_format:pack_binding_props`):
//! the routing key quoted (`~` when empty and without arguments), and with arguments `~` and RabbitMQ's
//! hash of them (`phash2.rs`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use router::{Binding, Destination};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::json::{args_to_json, json_to_table};
use super::users::parse_body_or_empty;
use super::{durable, paging, AppState};
use crate::users::{Perm, Res};
use crate::vhost::VHost;

/// RabbitMQ's `rabbit_http_util:quote_plus/1`: letters, digits and `.-~_` stay, a space is `+`, every
/// other byte is `%XX`.
fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'~' | b'_' => out.push(c as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{c:02X}")),
        }
    }
    out
}

/// `rabbit_mgmt_format:quote_binding/1`: `quote_plus`, then `~` as `%7E`.
fn quote_binding(s: &str) -> String {
    quote_plus(s).replace('~', "%7E")
}

/// A binding's `properties_key` as RabbitMQ's `rabbit_mgmt_format:pack_binding_props/2` makes it: `~` for
/// an empty routing key without arguments; the quoted routing key; with arguments, the quoted key, `~`
/// and `args_hash/1` of them: `base64url(<<(erlang:phash2(Args, 1 bsl 32)):32>>)` over the arguments as
/// RabbitMQ holds them (`phash2.rs`).
pub fn properties_key(routing_key: &str, args: &router::Args) -> String {
    if args.is_empty() {
        if routing_key.is_empty() {
            return "~".to_string();
        }
        return quote_binding(routing_key);
    }
    let hash = super::phash2::phash2(&super::phash2::args_term(args));
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.to_be_bytes());
    format!("{}~{}", quote_binding(routing_key), quote_binding(&enc))
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
    let v = parse_body_or_empty(&body)?;
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
            && props_match(props, &properties_key(&b.routing_key, &b.arguments))
    })
}

/// A path's `{props}` names the binding whose `properties_key` is `key`: as sent (`a.%23`, which the path
/// decoding turned into `a.#`) or percent-encoded once more by the client (`a.%2523`, decoded to `a.%23`).
fn props_match(props: &str, key: &str) -> bool {
    props == key || unquote_plus(key) == props || unquote_plus(key) == unquote_plus(props)
}

/// `quote_plus` undone: `%XX` to its byte, `+` to a space.
fn unquote_plus(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
