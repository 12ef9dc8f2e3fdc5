//! Errors as RabbitMQ's management plugin sends them: a status and `{"error": ..., "reason": ...}`
//! (`rabbit_mgmt_util:halt_response`, `rabbit_web_dispatch_access_control`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::AmqpError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
}

impl ApiError {
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
        }
    }

    /// 404 as RabbitMQ: `{"error":"Object Not Found","reason":"Not Found"}`.
    pub fn not_found() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
        }
    }

    /// 401 for a user who lacks a tag or vhost access (RabbitMQ's `not_authorised`).
    pub fn not_authorised(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised",
            reason: reason.into(),
        }
    }

    /// 401 without or with wrong credentials (RabbitMQ's `not_authenticated`).
    pub fn not_authenticated() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorized",
            reason: "Not_Authorized".into(),
        }
    }

    pub fn internal(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_server_error",
            reason: reason.into(),
        }
    }

    pub fn precondition_failed(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::PRECONDITION_FAILED,
            error: "precondition_failed",
            reason: reason.into(),
        }
    }
}

impl From<AmqpError> for ApiError {
    /// What RabbitMQ's `rabbit_mgmt_util:with_channel` makes of a channel error: 404 for not_found, 401 for
    /// access_refused, 400 for the rest, with the AMQP explanation as the reason.
    fn from(e: AmqpError) -> ApiError {
        let reason = e
            .text
            .split_once(" - ")
            .map(|(_, r)| r.to_string())
            .unwrap_or(e.text.clone());
        match e.code {
            protocol::reply::NOT_FOUND => ApiError {
                status: StatusCode::NOT_FOUND,
                error: "not_found",
                reason,
            },
            protocol::reply::ACCESS_REFUSED => ApiError::not_authorised("Access refused."),
            protocol::reply::INTERNAL_ERROR => ApiError::internal(reason),
            _ => ApiError::bad_request(reason),
        }
    }
}

impl From<storage::StoreError> for ApiError {
    fn from(e: storage::StoreError) -> ApiError {
        tracing::error!(error = %e, "management API: store write failed");
        ApiError::internal(format!("could not store the change: {e}"))
    }
}

impl From<crate::users::UsersError> for ApiError {
    fn from(e: crate::users::UsersError) -> ApiError {
        match e {
            crate::users::UsersError::BadRegex(..) => ApiError::bad_request(e.to_string()),
            crate::users::UsersError::Store(s) => s.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "reason": self.reason});
        (self.status, axum::Json(body)).into_response()
    }
}

impl ApiError {
    /// The response with a Basic challenge (`WWW-Authenticate`), which RabbitMQ sends only to a request
    /// without credentials (`rabbit_web_dispatch_access_control:is_authorized1`, `no_credentials`): wrong
    /// credentials get a plain 401, so a browser page that sends its own `Authorization` never gets the
    /// browser's login dialog.
    pub fn challenge(self) -> Response {
        let mut resp = self.into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
        );
        resp
    }
}

pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        error: "method_not_allowed",
        reason: "Method Not Allowed".into(),
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
