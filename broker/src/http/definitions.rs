//! `/api/definitions[/{vhost}]`: export (GET) and import (POST) in RabbitMQ's definitions format, and
//! `--definitions FILE` at boot ([`import_file`]). An import is validated whole before anything changes;
//! importing the same file again changes nothing.

use std::path::Path as FsPath;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::json::{args_to_json, json_to_table, table_to_json};
use super::{blocking, AppState};
use crate::broker::Broker;
use crate::queue::QueueSpec;
use crate::users::{decode_hash, encode_hash, hash_algorithm, Permission};

fn export_json(broker: &Broker, only: Option<&str>) -> Value {
    let mut users = Vec::new();
    let mut vhosts = Vec::new();
    let mut permissions = Vec::new();
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    let mut policies = Vec::new();
    if only.is_none() {
        for u in broker.users.list() {
            users.push(json!({
                "name": u.name,
                "password_hash": encode_hash(&u.password_hash),
                "hashing_algorithm": hash_algorithm(&u.password_hash),
                "tags": u.tags,
                "limits": {},
            }));
        }
        for (v, u, p) in broker.users.permissions() {
            permissions.push(
                json!({"user": u, "vhost": v, "configure": p.configure, "write": p.write, "read": p.read}),
            );
        }
    }
    let mut vhs = broker.vhosts();
    vhs.sort_by(|a, b| a.name.cmp(&b.name));
    for vh in vhs {
        if only.is_some_and(|o| o != &*vh.name) {
            continue;
        }
        let name = |v: &str| if only.is_some() { None } else { Some(v.to_string()) };
        let meta = broker.vhost_meta(&vh.name);
        vhosts.push(json!({"name": &*vh.name, "description": meta.description, "tags": meta.tags,
            "default_queue_type": meta.default_queue_type,
            "metadata": {"description": meta.description, "tags": meta.tags, "default_queue_type": meta.default_queue_type}}));
        for p in vh.policies() {
            let mut o = super::policies::policy_json(&p);
            if only.is_some() {
                o.as_object_mut().map(|m| m.remove("vhost"));
            }
            policies.push(o);
        }
        let mut qs = vh.queues();
        qs.sort_by(|a, b| a.name().cmp(b.name()));
        for q in qs.iter().filter(|q| q.spec.exclusive_owner.is_none()) {
            let mut o = json!({
                "name": &**q.name(),
                "durable": q.spec.durable,
                "auto_delete": q.spec.auto_delete,
                "arguments": table_to_json(&q.spec.arguments),
            });
            if let Some(v) = name(&vh.name) {
                o["vhost"] = v.into();
            }
            queues.push(o);
        }
        let router = vh.router.read();
        for x in router
            .exchanges()
            .filter(|x| !x.name.is_empty() && !x.name.starts_with("amq."))
        {
            let mut o = json!({
                "name": &*x.name,
                "type": x.kind.as_str(),
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": args_to_json(&x.arguments),
            });
            if let Some(v) = name(&vh.name) {
                o["vhost"] = v.into();
            }
            exchanges.push(o);
        }
        let mut bs: Vec<router::Binding> = router.bindings().collect();
        bs.sort_by(|a, b| {
            let key = |b: &router::Binding| {
                let (d, q) = match &b.destination {
                    router::Destination::Queue(q) => (q.clone(), true),
                    router::Destination::Exchange(x) => (x.clone(), false),
                };
                (b.source.clone(), q, d, b.routing_key.clone())
            };
            key(a).cmp(&key(b))
        });
        for b in bs {
            let (dest, dtype) = match &b.destination {
                router::Destination::Queue(q) => (q.to_string(), "queue"),
                router::Destination::Exchange(x) => (x.to_string(), "exchange"),
            };
            let mut o = json!({
                "source": &*b.source,
                "destination": dest,
                "destination_type": dtype,
                "routing_key": &*b.routing_key,
                "arguments": args_to_json(&b.arguments),
            });
            if let Some(v) = name(&vh.name) {
                o["vhost"] = v.into();
            }
            bindings.push(o);
        }
    }
    let mut out = json!({
        "rabbit_version": super::overview::RABBITMQ_VERSION,
        "rabbitmq_version": super::overview::RABBITMQ_VERSION,
        "product_name": "Mailroom",
        "product_version": env!("CARGO_PKG_VERSION"),
        "policies": policies,
        "parameters": [],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    });
    if only.is_none() {
        out["users"] = users.into();
        out["vhosts"] = vhosts.into();
        out["permissions"] = permissions.into();
        out["topic_permissions"] = json!([]);
        out["global_parameters"] = json!([]);
    }
    out
}

pub async fn export(State(broker): State<AppState>, user: AuthUser) -> ApiResult<Response> {
    user.require_admin()?;
    Ok(axum::Json(export_json(&broker, None)).into_response())
}

pub async fn export_vhost(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(axum::Json(export_json(&broker, Some(&vhost))).into_response())
}

/// A validated definitions file, ready to apply.
#[derive(Default)]
struct Plan {
    users: Vec<(String, Vec<u8>, Vec<String>)>,
    vhosts: Vec<String>,
    vhost_metas: Vec<storage::VhostMetaRecord>,
    permissions: Vec<(String, String, String, String, String)>,
    queues: Vec<(String, QueueSpec)>,
    exchanges: Vec<(String, router::ExchangeDef)>,
    bindings: Vec<(String, router::Binding)>,
    policies: Vec<crate::policy::Policy>,
}

fn list<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ApiError::bad_request(format!("'{key}' must be a list"))),
    }
}

fn text<'a>(o: &'a Value, key: &str, what: &str) -> Result<&'a str, ApiError> {
    o.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request(format!("{what}: '{key}' is missing or not a string")))
}

fn flag(o: &Value, key: &str, default: bool) -> bool {
    o.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn plan(v: &Value, vhost: Option<&str>) -> Result<Plan, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request("definitions must be a JSON object"));
    }
    let mut p = Plan::default();
    let vhost_of = |o: &Value, what: &str| -> Result<String, ApiError> {
        match vhost {
            Some(v) => Ok(v.to_string()),
            None => text(o, "vhost", what).map(str::to_string),
        }
    };
    if vhost.is_none() {
        for u in list(v, "users")? {
            let name = text(u, "name", "user")?;
            let alg = u.get("hashing_algorithm").and_then(Value::as_str);
            let hash = match u.get("password_hash").and_then(Value::as_str) {
                Some(h) => decode_hash(h, alg).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "user '{name}': unusable password_hash for {}",
                        alg.unwrap_or(crate::users::SHA256)
                    ))
                })?,
                None => match u.get("password").and_then(Value::as_str) {
                    Some(pw) => crate::users::hash_password(pw),
                    None => Vec::new(),
                },
            };
            let tags = match u.get("tags") {
                Some(Value::String(s)) => s
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
                Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
                _ => Vec::new(),
            };
            p.users.push((name.to_string(), hash, tags));
        }
        for vh in list(v, "vhosts")? {
            let name = text(vh, "name", "vhost")?.to_string();
            let field = |k: &str| vh.get(k).or_else(|| vh.get("metadata").and_then(|m| m.get(k)));
            let tags = match field("tags") {
                Some(Value::Array(a)) => a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
                Some(Value::String(s)) => s
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
                _ => Vec::new(),
            };
            p.vhost_metas.push(storage::VhostMetaRecord {
                name: name.clone(),
                description: field("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                tags,
                default_queue_type: field("default_queue_type")
                    .and_then(Value::as_str)
                    .unwrap_or("classic")
                    .to_string(),
            });
            p.vhosts.push(name);
        }
        for perm in list(v, "permissions")? {
            let (user, vh) = (
                text(perm, "user", "permission")?,
                text(perm, "vhost", "permission")?,
            );
            let (c, w, r) = (
                text(perm, "configure", "permission")?,
                text(perm, "write", "permission")?,
                text(perm, "read", "permission")?,
            );
            Permission::new(c, w, r)?;
            p.permissions
                .push((vh.into(), user.into(), c.into(), w.into(), r.into()));
        }
    }
    for pol in list(v, "policies")? {
        let vh = vhost_of(pol, "policy")?;
        let name = text(pol, "name", "policy")?;
        p.policies
            .push(super::policies::policy_from_json(&vh, name, pol)?);
    }
    for q in list(v, "queues")? {
        let name = text(q, "name", "queue")?;
        let vh = vhost_of(q, "queue")?;
        let arguments =
            json_to_table(q.get("arguments").unwrap_or(&Value::Null)).map_err(ApiError::bad_request)?;
        crate::args::validate_queue_args(&arguments, name, &vh)?;
        p.queues.push((
            vh,
            QueueSpec {
                name: name.into(),
                durable: flag(q, "durable", true),
                exclusive_owner: None,
                auto_delete: flag(q, "auto_delete", false),
                arguments,
            },
        ));
    }
    for x in list(v, "exchanges")? {
        let name = text(x, "name", "exchange")?;
        let vh = vhost_of(x, "exchange")?;
        let kind = router::ExchangeKind::parse(text(x, "type", "exchange")?)
            .map_err(|e| ApiError::bad_request(e.text))?;
        let arguments =
            json_to_table(x.get("arguments").unwrap_or(&Value::Null)).map_err(ApiError::bad_request)?;
        p.exchanges.push((
            vh,
            router::ExchangeDef {
                name: name.into(),
                kind,
                durable: flag(x, "durable", true),
                auto_delete: flag(x, "auto_delete", false),
                internal: flag(x, "internal", false),
                arguments: crate::args::to_router_args(&arguments),
            },
        ));
    }
    for b in list(v, "bindings")? {
        let vh = vhost_of(b, "binding")?;
        let source = text(b, "source", "binding")?;
        let dest = text(b, "destination", "binding")?;
        let destination = match text(b, "destination_type", "binding")? {
            "queue" => router::Destination::Queue(dest.into()),
            "exchange" => router::Destination::Exchange(dest.into()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "binding: unknown destination_type '{other}'"
                )))
            }
        };
        let arguments =
            json_to_table(b.get("arguments").unwrap_or(&Value::Null)).map_err(ApiError::bad_request)?;
        p.bindings.push((
            vh,
            router::Binding {
                source: source.into(),
                destination,
                routing_key: b.get("routing_key").and_then(Value::as_str).unwrap_or("").into(),
                arguments: crate::args::to_router_args(&arguments),
            },
        ));
    }
    Ok(p)
}

/// Applies a definitions document (blocking: store writes flush). Items that already exist as defined are
/// left alone, so a second import changes nothing.
pub fn apply(broker: &Broker, v: &Value, vhost: Option<&str>) -> Result<(), ApiError> {
    let p = plan(v, vhost)?;
    // Every vhost named must exist or be created by this import.
    let known = |name: &str| broker.vhost(name).is_some() || p.vhosts.iter().any(|v| v == name);
    for vh in p
        .queues
        .iter()
        .map(|(v, _)| v)
        .chain(p.exchanges.iter().map(|(v, _)| v))
        .chain(p.bindings.iter().map(|(v, _)| v))
        .chain(p.permissions.iter().map(|(v, ..)| v))
        .chain(p.policies.iter().map(|x| &x.vhost))
    {
        if !known(vh) {
            return Err(ApiError::bad_request(format!("vhost '{vh}' does not exist")));
        }
    }
    for (name, hash, tags) in p.users {
        let same = broker
            .users
            .user(&name)
            .is_some_and(|u| u.password_hash == hash && u.tags == tags);
        if !same {
            broker.users.put_user(&name, hash, tags)?;
        }
    }
    for vh in &p.vhosts {
        broker.add_vhost(vh)?;
    }
    for m in p.vhost_metas {
        broker.set_vhost_meta(m)?;
    }
    for (vh, user, c, w, r) in p.permissions {
        let same = broker
            .users
            .permission(&vh, &user)
            .is_some_and(|x| x.configure == c && x.write == w && x.read == r);
        if !same {
            broker.users.set_permission(&vh, &user, &c, &w, &r)?;
        }
    }
    let vhost = |name: &str| broker.vhost(name).ok_or_else(ApiError::not_found);
    for (vh, spec) in p.queues {
        let vh = vhost(&vh)?;
        if let Some(existing) = vh.queue(&spec.name) {
            crate::args::check_equivalent_args(
                &existing.spec.arguments,
                &spec.arguments,
                &spec.name,
                &vh.name,
            )?;
            continue;
        }
        vh.declare_queue_durably(spec)?;
    }
    for (vh, def) in p.exchanges {
        vhost(&vh)?.declare_exchange_durably(def)?;
    }
    for (vh, b) in p.bindings {
        vhost(&vh)?.bind_durably(b)?;
    }
    for pol in p.policies {
        let same = vhost(&pol.vhost)?.policies().iter().any(|x| {
            x.name == pol.name
                && x.pattern == pol.pattern
                && x.apply_to == pol.apply_to
                && x.priority == pol.priority
                && x.definition == pol.definition
        });
        if !same {
            broker.put_policy(pol)?;
        }
    }
    broker.store.flush_blocking()?;
    Ok(())
}

async fn import_doc(
    broker: AppState,
    user: AuthUser,
    vhost: Option<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(vh) = &vhost {
        if broker.vhost(vh).is_none() {
            return Err(ApiError::not_found());
        }
    }
    let b = Arc::clone(&broker);
    blocking(move || apply(&b, &v, vhost.as_deref())).await??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn import(State(broker): State<AppState>, user: AuthUser, body: Bytes) -> ApiResult<Response> {
    import_doc(broker, user, None, body).await
}

pub async fn import_vhost(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    import_doc(broker, user, Some(vhost), body).await
}

/// `--definitions FILE` at boot.
pub fn import_file(broker: &Broker, path: &FsPath) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read definitions file {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("definitions file {} is not JSON: {e}", path.display()))?;
    apply(broker, &v, None)
        .map_err(|e| anyhow::anyhow!("cannot import definitions file {}: {}", path.display(), e.reason))?;
    tracing::info!(file = %path.display(), "imported definitions");
    Ok(())
}
