//! The management API over HTTPS (`--https-listen`, RabbitMQ's management TLS port is 15671): the same
//! axum router as plain HTTP, behind a rustls handshake (tokio-rustls) with the broker's certificate
//! (`--tls-cert`/`--tls-key`, [`TlsConfig`]). Each connection takes the configuration current at its
//! accept, so a SIGHUP reload reaches new connections and leaves open ones alone, as for AMQPS. Served by
//! hyper's HTTP/1.1 connection driver (hyper-util bridges the router), not `axum::serve`, which only takes
//! plain listeners: docs/decisions.md.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::broker::Broker;
use crate::tls::TlsConfig;

/// Serves the API on `listeners` over TLS until `shutdown`.
pub fn spawn(
    broker: Arc<Broker>,
    tls: Arc<TlsConfig>,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let app = super::router(broker.clone());
    listeners
        .into_iter()
        .map(|l| {
            let (app, tls, shutdown) = (app.clone(), tls.clone(), shutdown.clone());
            let handshake_timeout = broker.config.handshake_timeout;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        accepted = l.accept() => match accepted {
                            Ok((socket, peer)) => {
                                tokio::spawn(serve_one(
                                    app.clone(), tls.clone(), socket, peer, handshake_timeout, shutdown.clone(),
                                ));
                            }
                            Err(e) => {
                                // Out of file descriptors and the like: wait a little rather than spin.
                                tracing::error!(error = %e, "HTTPS accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// One connection: the TLS handshake (bounded by the handshake timeout), then HTTP/1.1 until the client
/// closes or the broker shuts down. A client that speaks plain HTTP (or anything not TLS) fails the
/// handshake and its socket is closed; nothing else is affected.
async fn serve_one(
    app: Router,
    tls: Arc<TlsConfig>,
    socket: TcpStream,
    peer: SocketAddr,
    handshake_timeout: std::time::Duration,
    shutdown: CancellationToken,
) {
    // The configuration current now: a SIGHUP reload affects later connections only.
    let acceptor = tls.acceptor();
    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "HTTPS: TLS handshake failed: connection closed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "HTTPS: no TLS handshake before the handshake timeout: connection closed");
            return;
        }
    };
    // The peer address for the loopback-only users check, as `into_make_service_with_connect_info` gives
    // the plain listener.
    let service = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
