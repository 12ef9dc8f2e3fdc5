//! `GET /api/trace?correlation_id=X` (or `message_id=X`): the recorded timeline of the messages with that
//! id, in recording order, across vhosts, queues and hops (an addition; docs/http-api.md). Events of vhosts
//! the user may not see (administrators and monitoring users see all, management users the vhosts they have
//! permissions in) are left out. `limit` caps the number of events (default 10,000).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::AuthUser;
use super::error::{ApiError, ApiResult};
use super::{blocking, AppState};
use crate::trace::batch::{timeline, Match};

const DEFAULT_LIMIT: usize = 10_000;

pub async fn trace(
    State(broker): State<AppState>,
    user: AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let (by_message_id, id) = match (q.get("correlation_id"), q.get("message_id")) {
        (Some(c), None) => (false, c.clone()),
        (None, Some(m)) => (true, m.clone()),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of the query parameters correlation_id and message_id",
            ))
        }
    };
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| ApiError::bad_request("limit must be a positive integer"))?,
    };
    let store = broker.store.clone();
    let records = blocking(move || {
        let want = if by_message_id {
            Match::MessageId(&id)
        } else {
            Match::CorrelationId(&id)
        };
        timeline(&store, want, limit)
    })
    .await?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut events = Vec::with_capacity(records.len());
    for v in records {
        let vhost = v.get("vhost").and_then(Value::as_str).unwrap_or_default();
        if user.can_access(&broker, vhost) {
            events.push(v);
        }
    }
    Ok(Json(json!({ "events": events })))
}
