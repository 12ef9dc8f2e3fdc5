//! HTTP Basic auth against the broker's users, and the tag/vhost checks of RabbitMQ's
//! `rabbit_web_dispatch_access_control` (all 401 with RabbitMQ's reasons).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::error::ApiError;
use super::AppState;
use crate::users::UserInfo;

/// The authenticated user of a request (any management tag).
pub struct AuthUser(pub UserInfo);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, broker: &AppState) -> Result<Self, Self::Rejection> {
        // No (readable) Basic credentials: a 401 with the challenge; wrong ones: a plain 401.
        let credentials = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Basic ").or_else(|| h.strip_prefix("basic ")))
            .and_then(|e| base64::engine::general_purpose::STANDARD.decode(e.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let Some(decoded) = credentials else {
            return Err(ApiError::not_authenticated().challenge());
        };
        let Some((name, password)) = decoded.split_once(':') else {
            return Err(ApiError::not_authenticated().challenge());
        };
        let user = broker
            .users
            .authenticate(name, password)
            .ok_or_else(|| ApiError::not_authenticated().into_response())?;
        if broker.users.loopback_only(name) {
            let peer = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            if !peer.is_some_and(|ip| ip.is_loopback()) {
                return Err(ApiError::not_authorised("User can only log in via localhost").into_response());
            }
        }
        if !user.is_management() {
            return Err(ApiError::not_authorised("Not management user").into_response());
        }
        Ok(AuthUser(user))
    }
}

impl AuthUser {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    pub fn require_monitor(&self) -> Result<(), ApiError> {
        if self.0.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not monitor user"))
        }
    }

    /// Whether the user sees everything (administrator or monitoring) or only the vhosts they may use.
    pub fn sees_all(&self) -> bool {
        self.0.is_monitor()
    }

    /// May the user see/use `vhost` (administrators and monitors see all; others need permissions there).
    pub fn can_access(&self, broker: &AppState, vhost: &str) -> bool {
        self.0.is_monitor() || broker.users.vhost_access(&self.0.name, vhost)
    }

    pub fn require_vhost(&self, broker: &AppState, vhost: &str) -> Result<(), ApiError> {
        if self.0.is_admin() || broker.users.vhost_access(&self.0.name, vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorised(
                "User not authorised to access virtual host",
            ))
        }
    }

    /// A vhost that must exist (404 otherwise) and that the user may access (401 otherwise).
    pub fn require_known_vhost(&self, broker: &AppState, vhost: &str) -> Result<(), ApiError> {
        if broker.vhost(vhost).is_none() {
            return Err(ApiError::not_found());
        }
        self.require_vhost(broker, vhost)
    }

    /// A resource operation as the user (configure/write/read regexes), 401 "Access refused." if denied.
    pub fn require_perm(
        &self,
        broker: &AppState,
        vhost: &str,
        perm: crate::users::Perm,
        res: crate::users::Res,
        name: &str,
    ) -> Result<(), ApiError> {
        broker
            .users
            .check(&self.0.name, vhost, perm, res, name)
            .map_err(|_| ApiError::not_authorised("Access refused."))
    }
}
