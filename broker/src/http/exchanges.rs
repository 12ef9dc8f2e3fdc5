//! `/api/exchanges[/{vhost}[/{name}]]`: list, show, declare (PUT), delete.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::json::{args_to_json, json_to_table};
use super::users::parse_body;
use super::{durable, paging, AppState};
use crate::users::{Perm, Res};

pub fn exchange_json(vhost: &str, x: &router::ExchangeDef) -> Value {
    json!({
        "name": &*x.name,
        "vhost": vhost,
        "type": x.kind.as_str(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": args_to_json(&x.arguments),
        "user_who_performed_action": "rmq-internal",
        "policy": null,
        "message_stats": {},
    })
}

fn collect(broker: &AppState, user: &AuthUser, only: Option<&str>) -> Vec<Value> {
    let mut items = Vec::new();
    for vh in broker.vhosts() {
        if only.is_some_and(|o| o != &*vh.name) || !user.can_access(broker, &vh.name) {
            continue;
        }
        let router = vh.router.read();
        items.extend(router.exchanges().map(|x| exchange_json(&vh.name, x)));
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

pub async fn show(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vh = broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(&broker, &vhost)?;
    let name = if name == "amq.default" {
        String::new()
    } else {
        name
    };
    let router = vh.router.read();
    let x = router.exchange(&name).ok_or_else(ApiError::not_found)?;
    Ok(paging::respond_one(exchange_json(&vhost, x), &q))
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
    user.require_perm(&broker, &vhost, Perm::Configure, Res::Exchange, &name)?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,type}]"))?;
    let kind = router::ExchangeKind::parse(kind).map_err(|e| ApiError::bad_request(e.text))?;
    let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
    let arguments =
        json_to_table(v.get("arguments").unwrap_or(&Value::Null)).map_err(ApiError::bad_request)?;
    let def = router::ExchangeDef {
        name: name.as_str().into(),
        kind,
        durable: flag("durable", true),
        auto_delete: flag("auto_delete", false),
        internal: flag("internal", false),
        arguments: crate::args::to_router_args(&arguments),
    };
    let (declared, ticket) = vh.declare_exchange_durably(def)?;
    durable(&broker, ticket).await?;
    Ok(match declared {
        router::Declared::Created => StatusCode::CREATED,
        _ => StatusCode::NO_CONTENT,
    }
    .into_response())
}

pub async fn delete(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let vh = broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    user.require_vhost(&broker, &vhost)?;
    if vh.router.read().exchange(&name).is_none() {
        return Err(ApiError::not_found());
    }
    user.require_perm(&broker, &vhost, Perm::Configure, Res::Exchange, &name)?;
    let if_unused = q.get("if-unused").is_some_and(|v| v == "true");
    let ticket = vh.delete_exchange_durably(&name, if_unused)?;
    durable(&broker, ticket).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
