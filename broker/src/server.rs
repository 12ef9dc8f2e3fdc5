//! The listeners: accept connections, and on shutdown stop accepting, ask every connection to close
//! (connection.close 320 CONNECTION_FORCED) and wait for them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::config::Config;

pub struct Server {
    pub broker: Arc<Broker>,
    listeners: Vec<TcpListener>,
    /// The management API's listeners (`http/`).
    http_listeners: Vec<TcpListener>,
}

impl Server {
    /// Binds every listening socket. Fails with a clear error if an address is taken; of the built-in
    /// defaults, an address the host lacks (`[::1]` without IPv6) is skipped with a warning.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let broker = Broker::open(config)?;
        if let Some(path) = broker.config.definitions.clone() {
            let b = broker.clone();
            tokio::task::spawn_blocking(move || crate::http::import_file(&b, &path)).await??;
        }
        let http_listeners =
            crate::http::bind(&broker.config.http_listen, broker.config.http_listen_is_default).await?;
        let mut listeners = Vec::new();
        for &addr in &broker.config.listen {
            match TcpListener::bind(addr).await {
                Ok(l) => listeners.push(l),
                Err(e)
                    if broker.config.listen_is_default
                        && addr.is_ipv6()
                        && e.kind() == std::io::ErrorKind::AddrNotAvailable =>
                {
                    warn!(%addr, error = %e, "no IPv6 loopback on this host: not listening on it");
                }
                Err(e) => anyhow::bail!("cannot listen on {addr}: {e}"),
            }
        }
        if listeners.is_empty() {
            anyhow::bail!("no address to listen on");
        }
        let server = Server {
            broker,
            listeners,
            http_listeners,
        };
        let _ = server
            .broker
            .bound
            .set((server.local_addrs(), server.http_addrs()));
        Ok(server)
    }

    /// The first listener's address (the tests' port-0 listener).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addrs()[0]
    }

    /// Every address the broker accepts connections on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().expect("bound socket has an address"))
            .collect()
    }

    /// The management API's addresses.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http_listeners
            .iter()
            .map(|l| l.local_addr().expect("bound socket has an address"))
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then closes every connection and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        self.broker.spawn_timer();
        self.broker.spawn_monitor();
        for addr in self.http_addrs() {
            info!(%addr, "accepting HTTP connections");
        }
        let http = crate::http::spawn(self.broker.clone(), self.http_listeners, shutdown.clone());
        let mut acceptors = Vec::new();
        for listener in self.listeners {
            let addr = listener.local_addr().expect("bound socket has an address");
            info!(%addr, "accepting AMQP connections");
            acceptors.push(tokio::spawn(accept_loop(
                listener,
                self.broker.clone(),
                tracker.clone(),
                shutdown.clone(),
            )));
        }
        for a in acceptors {
            let _ = a.await;
        }
        for h in http {
            let _ = h.await;
        }
        tracker.close();
        info!(connections = tracker.len(), "shutting down: closing connections");
        tracker.wait().await;
        self.broker.shutdown();
        info!("stopped");
    }
}

/// Accepts on one listener until `shutdown`; the listener is closed when this returns.
async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    tracker.spawn(crate::connection::serve(broker.clone(), socket, peer, shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}
