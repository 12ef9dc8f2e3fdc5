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
use crate::tls::TlsConfig;

pub struct Server {
    pub broker: Arc<Broker>,
    listeners: Vec<TcpListener>,
    /// The management API's listeners (`http/`).
    http_listeners: Vec<TcpListener>,
    /// AMQPS listeners and their (reloadable) TLS configuration.
    tls_listeners: Vec<TcpListener>,
    pub tls: Option<Arc<TlsConfig>>,
    /// The Prometheus endpoint's listeners.
    prometheus_listeners: Vec<TcpListener>,
    /// The management API's HTTPS listeners (`http/https.rs`).
    https_listeners: Vec<TcpListener>,
}

/// Binds `addrs`; of defaults, an address the host lacks (`[::1]` without IPv6) is skipped with a warning,
/// and with `optional` (the Prometheus default) a taken port too.
async fn bind_all(
    addrs: &[SocketAddr],
    is_default: bool,
    optional: bool,
    what: &str,
) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for &addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) if is_default && addr.is_ipv6() && e.kind() == std::io::ErrorKind::AddrNotAvailable => {
                warn!(%addr, error = %e, "no IPv6 loopback on this host: not listening on it");
            }
            Err(e) if is_default && optional => {
                warn!(%addr, error = %e, "cannot listen on the default {what} address: {what} is off");
            }
            Err(e) => anyhow::bail!("cannot listen on {addr} ({what}): {e}"),
        }
    }
    Ok(listeners)
}

impl Server {
    /// Binds every listening socket. Fails with a clear error if an address is taken; of the built-in
    /// defaults, an address the host lacks (`[::1]` without IPv6) is skipped with a warning.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        // The certificate first: a bad one is a clear error before the store is opened.
        let tls = match &config.tls {
            Some(files) => Some(TlsConfig::load(files.clone())?),
            None => None,
        };
        let broker = Broker::open(config)?;
        if let Some(path) = broker.config.definitions.clone() {
            let b = broker.clone();
            tokio::task::spawn_blocking(move || crate::http::import_file(&b, &path)).await??;
        }
        // Message-move tasks that were running resume (their batch in doubt settled) before anyone connects.
        let b = broker.clone();
        let resumed = tokio::task::spawn_blocking(move || crate::redrive_task::resume_all(&b)).await??;
        if resumed > 0 {
            info!(resumed, "message-move tasks resumed");
        }
        let c = &broker.config;
        let listeners = bind_all(&c.listen, c.listen_is_default, false, "AMQP").await?;
        if listeners.is_empty() {
            anyhow::bail!("no address to listen on");
        }
        let tls_listeners = bind_all(&c.tls_listen, c.tls_listen_is_default, false, "AMQPS").await?;
        let prometheus_listeners = bind_all(
            &c.prometheus_listen,
            c.prometheus_listen_is_default,
            true,
            "Prometheus",
        )
        .await?;
        let http_listeners = crate::http::bind(&c.http_listen, c.http_listen_is_default).await?;
        let https_listeners = crate::http::bind(&c.https_listen, false).await?;
        if let Some(tls) = &tls {
            let weak = Arc::downgrade(tls);
            crate::watchdog::on_reload(move || {
                let Some(tls) = weak.upgrade() else { return };
                match tls.reload() {
                    Ok(()) => info!(cert = %tls.files().cert.display(), "TLS certificates reloaded"),
                    Err(e) => error!(error = %e, "TLS reload failed: keeping the previous certificates"),
                }
            });
        }
        let server = Server {
            broker,
            listeners,
            http_listeners,
            tls_listeners,
            tls,
            prometheus_listeners,
            https_listeners,
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

    /// Every address the broker accepts AMQPS connections on.
    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.tls_listeners
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
        let mut http = crate::http::spawn(self.broker.clone(), self.http_listeners, shutdown.clone());
        if let Some(tls) = &self.tls {
            for l in &self.https_listeners {
                let addr = l.local_addr().expect("bound socket has an address");
                info!(%addr, "accepting HTTPS connections");
            }
            http.extend(crate::http::https::spawn(
                self.broker.clone(),
                tls.clone(),
                self.https_listeners,
                shutdown.clone(),
            ));
        }
        let mut acceptors = Vec::new();
        for listener in self.prometheus_listeners {
            let addr = listener.local_addr().expect("bound socket has an address");
            info!(%addr, "serving Prometheus metrics");
            tokio::spawn(crate::prometheus::serve(
                listener,
                self.broker.clone(),
                shutdown.clone(),
            ));
        }
        // Prometheus and AMQPS before AMQP: the tests' harness reads the startup log up to the first "accepting AMQP" line.
        if let Some(tls) = &self.tls {
            for listener in self.tls_listeners {
                let addr = listener.local_addr().expect("bound socket has an address");
                info!(%addr, client_certificates = tls.verifies_clients(), "accepting AMQPS connections");
                acceptors.push(tokio::spawn(accept_loop(
                    listener,
                    self.broker.clone(),
                    Some(tls.clone()),
                    tracker.clone(),
                    shutdown.clone(),
                )));
            }
        }
        for listener in self.listeners {
            let addr = listener.local_addr().expect("bound socket has an address");
            info!(%addr, "accepting AMQP connections");
            acceptors.push(tokio::spawn(accept_loop(
                listener,
                self.broker.clone(),
                None,
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
    tls: Option<Arc<TlsConfig>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => match &tls {
                    None => {
                        tracker.spawn(crate::connection::serve(broker.clone(), socket, peer, shutdown.clone()));
                    }
                    // The configuration current now: a SIGHUP reload affects later connections only.
                    Some(tls) => {
                        tracker.spawn(crate::connection::serve_tls(
                            broker.clone(), socket, peer, tls.acceptor(), shutdown.clone(),
                        ));
                    }
                },
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}
