//! The broker's shared state: settings, users, virtual hosts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use anyhow::Context;
use storage::{Store, StoreOptions};

use crate::config::Config;
use crate::flow::Flow;
use crate::vhost::VHost;

/// How often the queue timer runs (ms): the resolution of TTLs and retry delays.
pub const TIMER_MS: u64 = 10;

/// A user allowed to connect.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    /// RabbitMQ's `loopback_users`: such a user may only connect from a loopback address.
    pub loopback_only: bool,
}

pub struct Broker {
    pub config: Config,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    users: RwLock<HashMap<String, User>>,
    next_conn_id: AtomicU64,
    /// Connections past connection.open (for --max-connections).
    open_connections: AtomicU64,
    pub store: Store,
    /// Alarms, flow-control counters and the memory/disk monitor.
    pub flow: Arc<Flow>,
    /// The connections' message counters (the metrics).
    pub stats: crate::stats::StatsRegistry,
}

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    BadCredentials,
    LoopbackOnly,
}

impl Broker {
    /// Opens the store in the data dir (locking it) and rebuilds durable definitions from it.
    pub fn open(config: Config) -> anyhow::Result<Arc<Broker>> {
        let store = Store::open(
            &config.data_dir,
            StoreOptions {
                cache_capacity_bytes: config.store_cache_bytes,
                force_recovery: config.force_recovery,
                ..StoreOptions::default()
            },
        )
        .with_context(|| format!("cannot open the data directory {}", config.data_dir.display()))?;
        // Transient messages paged out by the previous run are gone by definition: empty their directory
        // (under the store's lock), then page this run's there.
        storage::spill::clear_spill_root(&config.data_dir)
            .with_context(|| "cannot empty the spill directory of transient messages")?;
        crate::queue::transient::set_spill_root(config.data_dir.join(storage::spill::SPILL_DIR));
        let broker = Broker {
            config,
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
            open_connections: AtomicU64::new(0),
            store,
            flow: Arc::new(Flow::default()),
            stats: Default::default(),
        };
        crate::flow::set_queue_bound(broker.config.queue_bound);
        broker.users.write().insert(
            "guest".into(),
            User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            },
        );
        broker
            .recover()
            .context("cannot recover definitions from the store")?;
        Ok(Arc::new(broker))
    }

    fn recover(&self) -> Result<(), storage::StoreError> {
        let started = std::time::Instant::now();
        let mut names: Vec<String> = self.store.vhosts()?.into_iter().map(|v| v.name).collect();
        if !names.iter().any(|n| n == "/") {
            self.store.put_vhost(&storage::VhostRecord { name: "/".into() })?;
            names.push("/".into());
        }
        let (exchanges, queues, bindings) = (
            self.store.exchanges()?,
            self.store.queues()?,
            self.store.bindings()?,
        );
        let clean = self.store.take_clean_shutdown()?;
        for name in names {
            let vhost = VHost::new(&name, self.store.clone());
            vhost.recover(&exchanges, &queues, &bindings, clean)?;

            self.vhosts.write().insert(name, vhost);
        }
        tracing::info!(
            clean,
            exchanges = exchanges.len(),
            queues = queues.len(),
            bindings = bindings.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered definitions"
        );
        Ok(())
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    pub fn add_user(&self, user: User) {
        self.users.write().insert(user.name.clone(), user);
    }

    pub fn login(&self, name: &str, password: &str, peer: IpAddr) -> Result<User, LoginError> {
        let users = self.users.read();
        let user = users.get(name).ok_or(LoginError::BadCredentials)?;
        if user.password != password {
            return Err(LoginError::BadCredentials);
        }
        if user.loopback_only && !peer.is_loopback() {
            return Err(LoginError::LoopbackOnly);
        }
        Ok(user.clone())
    }

    /// SASL EXTERNAL (a verified client certificate's CN): the user must exist; no password is checked, as
    /// rabbit_auth_backend_internal's passwordless login. `loopback_users` still applies.
    pub fn login_external(&self, name: &str, peer: IpAddr) -> Result<User, LoginError> {
        let users = self.users.read();
        let user = users.get(name).ok_or(LoginError::BadCredentials)?;
        if user.loopback_only && !peer.is_loopback() {
            return Err(LoginError::LoopbackOnly);
        }
        Ok(user.clone())
    }

    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<storage::Durability> {
        self.store.durable_watch()
    }

    /// Runs the queue timer (TTL, retry delays, x-expires) until the broker is dropped.
    pub fn spawn_timer(self: &Arc<Self>) {
        // Delayed messages are released by a thread of their own (it reads buckets from the store).
        if let Err(e) = crate::delayed::spawn_release(Arc::downgrade(self), Broker::vhosts) {
            tracing::error!(error = %e, "cannot start the delayed-message release thread");
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(TIMER_MS));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(broker) = weak.upgrade() else { break };
                let now = crate::clock::now_ms();
                for vhost in broker.vhosts() {
                    vhost.tick(now);
                }
            }
        });
    }

    /// Called once every connection has closed: makes every write durable.
    pub fn shutdown(&self) {
        // Seals the queues' write segments (their footers make the next open quick) and flushes.
        self.flow.stop();
        if let Err(e) = self.store.mark_clean_shutdown() {
            tracing::error!(error = %e, "final store flush failed");
        }
    }

    /// Starts the memory and disk alarm monitor (a thread; it stops with the broker).
    pub fn spawn_monitor(&self) {
        let c = &self.config;
        self.flow
            .spawn_monitor(c.memory_high_watermark, c.disk_free_limit, c.data_dir.clone());
    }

    /// A connection reached connection.open: counts it, unless --max-connections open ones exist already
    /// (then returns the limit, as RabbitMQ's `is_over_node_connection_limit`).
    pub fn try_open_connection(&self) -> Result<(), u32> {
        let n = self.open_connections.fetch_add(1, Ordering::AcqRel);
        match self.config.max_connections {
            Some(limit) if n >= limit as u64 => {
                self.open_connections.fetch_sub(1, Ordering::AcqRel);
                self.flow
                    .counters
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                Err(limit)
            }
            _ => Ok(()),
        }
    }

    /// An open connection closed.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_may_only_log_in_from_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let broker = Broker::open(config).unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(broker.login("guest", "guest", lo).is_ok());
        assert_eq!(
            broker.login("guest", "guest", remote).unwrap_err(),
            LoginError::LoopbackOnly
        );
        assert_eq!(
            broker.login("guest", "nope", lo).unwrap_err(),
            LoginError::BadCredentials
        );
        assert_eq!(
            broker.login("nobody", "guest", lo).unwrap_err(),
            LoginError::BadCredentials
        );
        broker.add_user(User {
            name: "app".into(),
            password: "pw".into(),
            loopback_only: false,
        });
        assert!(broker.login("app", "pw", remote).is_ok());
    }
}
