//! The listener: accepts connections, and on shutdown stops accepting, asks every connection to close
//! (connection.close 320 CONNECTION_FORCED) and waits for them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::broker::Broker;
use crate::config::Config;

pub struct Server {
    pub broker: Arc<Broker>,
    listener: TcpListener,
}

impl Server {
    /// Binds the listening socket. Fails with a clear error if the address is taken.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let broker = Broker::open(config)?;
        let listen = broker.config.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        Ok(Server { broker, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket has an address")
    }

    /// Serves until `shutdown` is cancelled, then closes every connection and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        self.broker.spawn_timer();
        info!(addr = %self.local_addr(), "accepting AMQP connections");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let broker = self.broker.clone();
                        let token = shutdown.clone();
                        tracker.spawn(crate::connection::serve(broker, socket, peer, token));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        error!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }
        drop(self.listener);
        tracker.close();
        info!(connections = tracker.len(), "shutting down: closing connections");
        tracker.wait().await;
        self.broker.shutdown();
        info!("stopped");
    }
}
