//! The management HTTP API: RabbitMQ's management plugin API (`deps/rabbitmq_management`), its paths, JSON
//! shapes, statuses and error bodies, so `rabbitmqadmin`, dashboards and scripts work unchanged. Served by
//! axum on `--http-listen`. One file per endpoint group; the table in docs/ARCHITECTURE.md maps each
//! endpoint to its file, docs/http-api.md says what is covered.
//!
//! The handlers call the broker the way channels do (vhost, queues, router, users) and never hold a lock
//! across an `.await`; writes that the store makes durable are durable before the response leaves.

mod auth;
mod bindings;
mod browse;
mod connections;
mod console;
mod definitions;
mod error;
mod exchanges;
pub mod https;
pub mod json;
mod messages;
mod overview;
mod paging;
mod phash2;
mod policies;
mod queues;
mod rates;
mod route;
mod tasks;
mod trace;
mod users;
mod vhosts;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;

pub use auth::AuthUser;
pub use definitions::import_file;
pub use error::ApiError;

pub type AppState = Arc<Broker>;

/// Largest request body accepted (RabbitMQ's default `management.http.max_body_size`).
pub const MAX_BODY: usize = 20 << 20;

/// Every route of the API.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/api/overview", get(overview::overview))
        .route("/api/trace", get(trace::trace))
        .route("/api/whoami", get(overview::whoami))
        .route("/api/extensions", get(overview::extensions))
        .route("/api/nodes", get(overview::nodes))
        .route("/api/vhosts", get(vhosts::list))
        .route(
            "/api/vhosts/{vhost}",
            get(vhosts::show).put(vhosts::put).delete(vhosts::delete),
        )
        .route("/api/vhosts/{vhost}/permissions", get(users::vhost_permissions))
        .route("/api/users", get(users::list))
        .route("/api/users/without-permissions", get(users::without_permissions))
        .route(
            "/api/users/{name}",
            get(users::show).put(users::put).delete(users::delete),
        )
        .route("/api/users/{name}/permissions", get(users::user_permissions))
        .route("/api/permissions", get(users::all_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(users::show_permission)
                .put(users::put_permission)
                .delete(users::delete_permission),
        )
        .route("/api/exchanges", get(exchanges::list))
        .route("/api/exchanges/{vhost}", get(exchanges::list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchanges::show).put(exchanges::put).delete(exchanges::delete),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(messages::publish))
        .route("/api/exchanges/{vhost}/{name}/route", post(route::route))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(bindings::exchange_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(bindings::exchange_destination),
        )
        .route("/api/queues", get(queues::list))
        .route("/api/queues/{vhost}", get(queues::list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queues::show).put(queues::put).delete(queues::delete),
        )
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(bindings::queue_bindings),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(queues::purge),
        )
        .route("/api/queues/{vhost}/{name}/get", post(messages::get))
        .route(
            "/api/queues/{vhost}/{name}/browse",
            get(browse::get).post(browse::post),
        )
        .route("/api/queues/{vhost}/{name}/redrive", post(tasks::create))
        .route("/api/tasks", get(tasks::list))
        .route("/api/tasks/{id}", get(tasks::show).delete(tasks::cancel))
        .route("/api/queues/{vhost}/{name}/actions", post(queues::actions))
        .route("/api/bindings", get(bindings::list))
        .route("/api/bindings/{vhost}", get(bindings::list_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/q/{dest}",
            get(bindings::list_between_q).post(bindings::create_q),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/e/{dest}",
            get(bindings::list_between_e).post(bindings::create_e),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/q/{dest}/{props}",
            get(bindings::show_q).delete(bindings::delete_q),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/e/{dest}/{props}",
            get(bindings::show_e).delete(bindings::delete_e),
        )
        .route("/api/connections", get(connections::list))
        .route(
            "/api/connections/{name}",
            get(connections::show).delete(connections::delete),
        )
        .route(
            "/api/connections/{name}/channels",
            get(connections::conn_channels),
        )
        .route(
            "/api/vhosts/{vhost}/connections",
            get(connections::vhost_connections),
        )
        .route("/api/vhosts/{vhost}/channels", get(connections::vhost_channels))
        .route("/api/channels", get(connections::channels))
        .route("/api/channels/{name}", get(connections::channel))
        .route("/api/consumers", get(connections::consumers))
        .route("/api/consumers/{vhost}", get(connections::consumers_vhost))
        .route(
            "/api/definitions",
            get(definitions::export).post(definitions::import),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .route("/api/aliveness-test/{vhost}", get(overview::aliveness))
        .route("/api/health/checks/alarms", get(overview::health_alarms))
        .route("/api/health/checks/virtual-hosts", get(overview::health_ok))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(overview::health_ok),
        )
        .route("/api/policies", get(policies::list))
        .route("/api/policies/{vhost}", get(policies::list_vhost))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policies::show).put(policies::put).delete(policies::delete),
        )
        .route("/api/operator-policies", get(overview::empty_list))
        .route("/api/parameters", get(overview::empty_list))
        .route("/api/global-parameters", get(overview::empty_list))
        .route("/api/feature-flags", get(overview::empty_list))
        .route("/api/vhost-limits", get(overview::empty_list))
        .route("/api/user-limits", get(overview::empty_list))
        .route("/api/topic-permissions", get(overview::empty_list))
        .route("/api/rebalance/queues", put(overview::not_applicable))
        .merge(console::routes())
        // RabbitMQ's management.http.max_body_size (20 MiB): large definitions files and publishes fit.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .with_state(broker)
}

/// Binds the management listeners. An address of the built-in default that cannot be bound (no IPv6, or
/// the port taken) is skipped with a warning; an address given by the operator must bind.
pub async fn bind(addrs: &[SocketAddr], defaults: bool) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for &addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(l) => out.push(l),
            Err(e) if defaults => {
                tracing::warn!(%addr, error = %e, "management API: cannot listen on a default address, skipped");
            }
            Err(e) => anyhow::bail!("cannot listen on {addr} (management API): {e}"),
        }
    }
    Ok(out)
}

/// Serves the API on `listeners` until `shutdown`.
pub fn spawn(
    broker: Arc<Broker>,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    rates::spawn_sampler(broker.clone(), shutdown.clone());
    let app = router(broker);
    listeners
        .into_iter()
        .map(|l| {
            let app = app.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let r = axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "management API listener failed");
                }
            })
        })
        .collect()
}

/// Waits until the store settled `ticket` (0: nothing to wait for); a failed flush is a 500 and the
/// caller undoes nothing more (the broker already logged it; the change stays in memory, as over AMQP
/// where the connection is closed with 541).
pub async fn durable(broker: &Broker, ticket: u64) -> Result<(), ApiError> {
    if ticket == 0 {
        return Ok(());
    }
    let mut watch = broker.durable_watch();
    broker.store.request_flush();
    loop {
        match watch.borrow_and_update().state(ticket) {
            storage::TicketState::Durable => return Ok(()),
            storage::TicketState::Failed => {
                return Err(ApiError::internal(broker.store.not_durable(ticket).to_string()))
            }
            storage::TicketState::Pending => {}
        }
        if watch.changed().await.is_err() {
            return Err(ApiError::internal("the store stopped"));
        }
    }
}

/// Runs a blocking store call (user, vhost and permission writes flush before they return) off the
/// async workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("task failed: {e}")))
}
