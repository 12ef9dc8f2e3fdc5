//! `/api/users[/{name}]`, `/api/users/{name}/permissions`, `/api/permissions[/{vhost}/{user}]`,
//! `/api/vhosts/{vhost}/permissions`. Administrators only, as in RabbitMQ.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::{blocking, paging, AppState};
use crate::users::{decode_hash, encode_hash, hash_algorithm, hash_password, Permission, UserInfo};

pub fn user_json(u: &UserInfo) -> Value {
    json!({
        "name": u.name,
        "password_hash": encode_hash(&u.password_hash),
        "hashing_algorithm": hash_algorithm(&u.password_hash),
        "tags": u.tags,
        "limits": {},
    })
}

pub fn permission_json(vhost: &str, user: &str, p: &Permission) -> Value {
    json!({"user": user, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read})
}

pub async fn list(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let items = broker.users.list().iter().map(user_json).collect();
    paging::respond(items, &q, &["name"])
}

pub async fn without_permissions(State(broker): State<AppState>, user: AuthUser) -> ApiResult<Response> {
    user.require_admin()?;
    let perms = broker.users.permissions();
    let items: Vec<Value> = broker
        .users
        .list()
        .iter()
        .filter(|u| !perms.iter().any(|(_, pu, _)| *pu == u.name))
        .map(user_json)
        .collect();
    Ok(axum::Json(Value::Array(items)).into_response())
}

pub async fn show(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let u = broker.users.user(&name).ok_or_else(ApiError::not_found)?;
    Ok(paging::respond_one(user_json(&u), &q))
}

/// Tags as RabbitMQ accepts them: a comma-separated string or a list.
fn parse_tags(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| ApiError::bad_request("tags must be strings"))
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request("tags must be a string or a list")),
    }
}

pub fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

/// [`parse_body`], with an empty body read as `{}` (for endpoints whose body is optional).
pub fn parse_body_or_empty(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        Ok(Value::Object(Default::default()))
    } else {
        parse_body(body)
    }
}

/// The hash a user body asks for: `password` (hashed here), `password_hash` (+ `hashing_algorithm`),
/// or neither (a user without a password, who cannot log in with one).
pub fn hash_from_body(v: &Value) -> Result<Option<Vec<u8>>, ApiError> {
    if let Some(p) = v.get("password") {
        let p = p
            .as_str()
            .ok_or_else(|| ApiError::bad_request("password must be a string"))?;
        return Ok(Some(hash_password(p)));
    }
    if let Some(h) = v.get("password_hash") {
        let h = h
            .as_str()
            .ok_or_else(|| ApiError::bad_request("password_hash must be a string"))?;
        let alg = v.get("hashing_algorithm").and_then(Value::as_str);
        return decode_hash(h, alg).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "password_hash is not a base64 {} hash",
                alg.unwrap_or(crate::users::SHA256)
            ))
        });
    }
    Ok(None)
}

pub async fn put(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let v = parse_body(&body)?;
    let tags = parse_tags(v.get("tags"))?;
    let existing = broker.users.user(&name);
    let hash = match hash_from_body(&v)? {
        Some(h) => h,
        None => match &existing {
            // RabbitMQ: updating a user without a password keeps the password.
            Some(u) => u.password_hash.clone(),
            None => Vec::new(),
        },
    };
    if name.is_empty() {
        return Err(ApiError::bad_request("user name must not be empty"));
    }
    let b = broker.clone();
    let n = name.clone();
    blocking(move || b.users.put_user(&n, hash, tags)).await??;
    Ok(if existing.is_some() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    }
    .into_response())
}

pub async fn delete(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = broker.clone();
    if !blocking(move || b.users.delete_user(&name)).await?? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn perms_json(list: Vec<(String, String, Permission)>, f: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    list.iter()
        .filter(|(v, u, _)| f(v, u))
        .map(|(v, u, p)| permission_json(v, u, p))
        .collect()
}

pub async fn all_permissions(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    user.require_admin()?;
    paging::respond(
        perms_json(broker.users.permissions(), |_, _| true),
        &q,
        &["vhost", "user"],
    )
}

pub async fn user_permissions(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if broker.users.user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let items = perms_json(broker.users.permissions(), |_, u| u == name);
    Ok(axum::Json(Value::Array(items)).into_response())
}

pub async fn vhost_permissions(
    State(broker): State<AppState>,
    user: AuthUser,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    user.require_admin()?;
    if broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    let items = perms_json(broker.users.permissions(), |v, _| v == vhost);
    Ok(axum::Json(Value::Array(items)).into_response())
}

pub async fn show_permission(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let p = broker
        .users
        .permission(&vhost, &name)
        .ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(permission_json(&vhost, &name, &p)).into_response())
}

pub async fn put_permission(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    user.require_admin()?;
    let v = parse_body(&body)?;
    if broker.vhost(&vhost).is_none() || broker.users.user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let field = |k: &str| -> Result<String, ApiError> {
        match v.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::bad_request(format!("{k} must be a string"))),
            None => Err(ApiError::bad_request(format!("[{{key_missing,{k}}}]"))),
        }
    };
    let (c, w, r) = (field("configure")?, field("write")?, field("read")?);
    let existed = broker.users.permission(&vhost, &name).is_some();
    let b = broker.clone();
    blocking(move || b.users.set_permission(&vhost, &name, &c, &w, &r)).await??;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    }
    .into_response())
}

pub async fn delete_permission(
    State(broker): State<AppState>,
    user: AuthUser,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    user.require_admin()?;
    let b = broker.clone();
    if !blocking(move || b.users.clear_permission(&vhost, &name)).await?? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
