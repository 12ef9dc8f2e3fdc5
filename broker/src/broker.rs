//! The broker's shared state: settings, users, virtual hosts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use anyhow::Context;
use storage::{Store, StoreOptions};

use crate::config::Config;
use crate::conns::Conns;
use crate::flow::Flow;
use crate::users::{UserInfo, Users};
use crate::vhost::VHost;

/// How often the queue timer runs (ms): the resolution of TTLs and retry delays.
pub const TIMER_MS: u64 = 10;

pub struct Broker {
    pub config: Config,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// Users, password hashes, tags and permissions (`users.rs`).
    pub users: Arc<Users>,
    /// The open connections, for the management API.
    pub conns: Conns,
    /// Vhost descriptions, tags and default queue types (management API metadata), by vhost.
    vhost_meta: RwLock<HashMap<String, storage::VhostMetaRecord>>,
    /// The addresses the AMQP and HTTP listeners were bound to (set once by `Server::bind`).
    pub bound: std::sync::OnceLock<(Vec<std::net::SocketAddr>, Vec<std::net::SocketAddr>)>,
    next_conn_id: AtomicU64,
    /// Connections past connection.open (for --max-connections).
    open_connections: AtomicU64,
    pub store: Store,
    /// Alarms, flow-control counters and the memory/disk monitor.
    pub flow: Arc<Flow>,
    /// The connections' message counters (the metrics).
    pub stats: crate::stats::StatsRegistry,
    /// Message tracing's recorder (`trace/`), shared by the vhosts.
    pub tracer: Arc<crate::trace::Recorder>,
    /// Operator tasks (message moves, `redrive_task.rs`).
    pub tasks: crate::tasks::Tasks,
    /// The management API's rate samples (`http/rates.rs`).
    pub rates: crate::stats::Rates,
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
        let users = Users::load(store.clone(), config.loopback_users.clone())
            .context("cannot load users from the store")?;
        let tracer = crate::trace::Recorder::new(config.trace);
        let broker = Broker {
            config,
            vhosts: RwLock::new(HashMap::new()),
            users: Arc::new(users),
            conns: Conns::default(),
            bound: std::sync::OnceLock::new(),
            vhost_meta: RwLock::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
            open_connections: AtomicU64::new(0),
            store,
            flow: Arc::new(Flow::default()),
            stats: Default::default(),
            tracer,
            tasks: Default::default(),
            rates: Default::default(),
        };
        crate::flow::set_queue_bound(broker.config.queue_bound);
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
        let policies = self.store.policies()?;
        for m in self.store.vhost_metas()? {
            self.vhost_meta.write().insert(m.name.clone(), m);
        }
        let traced = self.store.traced_vhosts()?;
        for name in names {
            let vhost = VHost::new(&name, self.store.clone());
            self.attach_tracing(&vhost, traced.contains(&name));
            vhost.recover(&exchanges, &queues, &bindings, clean)?;
            for p in policies.iter().filter(|p| p.vhost == name) {
                match policy_from_record(p) {
                    Ok(p) => vhost.put_policy(p),
                    Err(e) => {
                        tracing::warn!(vhost = name, policy = p.name, error = %e, "skipping stored policy")
                    }
                }
            }

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

    /// Creates a vhost (durable on return); false if it existed. Its exchanges are the standard ones.
    pub fn add_vhost(&self, name: &str) -> Result<bool, storage::StoreError> {
        if self.vhosts.read().contains_key(name) {
            return Ok(false);
        }
        self.store
            .put_vhost(&storage::VhostRecord { name: name.into() })?;
        let vhost = VHost::new(name, self.store.clone());
        self.attach_tracing(&vhost, false);
        self.vhosts.write().entry(name.to_string()).or_insert(vhost);
        Ok(true)
    }

    /// Deletes a vhost: its connections are closed, its queues (with their messages), exchanges, bindings
    /// and permissions removed. False if there was no such vhost.
    pub fn delete_vhost(&self, name: &str) -> Result<bool, storage::StoreError> {
        let Some(vhost) = self.vhosts.write().remove(name) else {
            return Ok(false);
        };
        self.conns
            .close_vhost(name, &format!("vhost '{name}' is deleted"));
        for q in vhost.queues() {
            vhost.delete_queue(&q);
        }
        let exchanges: Vec<String> = vhost
            .router
            .read()
            .exchanges()
            .filter(|x| !x.name.is_empty() && !x.name.starts_with("amq."))
            .map(|x| x.name.to_string())
            .collect();
        for x in exchanges {
            if let Err(e) = vhost.delete_exchange(&x, false) {
                tracing::warn!(exchange = x, error = %e, "deleting a vhost's exchange");
            }
        }
        for p in vhost.policies() {
            if let Err(e) = self.store.delete_policy(name, &p.name) {
                tracing::error!(vhost = name, error = %e, "removing a deleted vhost's policy");
            }
        }
        if let Err(e) = self.users.clear_vhost(name) {
            tracing::error!(vhost = name, error = %e, "removing a deleted vhost's permissions");
        }
        if self.vhost_meta.write().remove(name).is_some() {
            self.store.delete_vhost_meta(name)?;
        }
        if vhost.trace.on() {
            self.store.set_vhost_tracing(name, false)?;
        }
        self.store.delete_vhost(name)?;
        Ok(true)
    }

    /// A vhost's description, tags and default queue type (empty when never set).
    pub fn vhost_meta(&self, name: &str) -> storage::VhostMetaRecord {
        self.vhost_meta
            .read()
            .get(name)
            .cloned()
            .unwrap_or_else(|| storage::VhostMetaRecord {
                name: name.into(),
                default_queue_type: "classic".into(),
                ..Default::default()
            })
    }

    /// Sets a vhost's metadata (durable on return).
    pub fn set_vhost_meta(&self, m: storage::VhostMetaRecord) -> Result<(), storage::StoreError> {
        if self.vhost_meta(&m.name) == m {
            return Ok(());
        }
        self.store.put_vhost_meta(&m)?;
        self.vhost_meta.write().insert(m.name.clone(), m);
        Ok(())
    }

    /// Sets a policy (durable on return) and applies it to the vhost's live queues.
    pub fn put_policy(&self, p: crate::policy::Policy) -> Result<(), storage::StoreError> {
        let Some(vhost) = self.vhost(&p.vhost) else {
            return Ok(());
        };
        self.store.put_policy(&storage::PolicyRecord {
            vhost: p.vhost.clone(),
            name: p.name.clone(),
            pattern: p.pattern.clone(),
            apply_to: p.apply_to.clone(),
            priority: p.priority,
            definition: serde_json::Value::Object(p.definition.clone()).to_string(),
        })?;
        vhost.put_policy(p);
        Ok(())
    }

    /// Deletes a policy (durable on return); false if there was none.
    pub fn delete_policy(&self, vhost: &str, name: &str) -> Result<bool, storage::StoreError> {
        let Some(vh) = self.vhost(vhost) else {
            return Ok(false);
        };
        if !vh.policies().iter().any(|p| p.name == name) {
            return Ok(false);
        }
        self.store.delete_policy(vhost, name)?;
        Ok(vh.delete_policy(name))
    }

    pub fn login(&self, name: &str, password: &str, peer: IpAddr) -> Result<UserInfo, LoginError> {
        let user = self
            .users
            .authenticate(name, password)
            .ok_or(LoginError::BadCredentials)?;
        if self.users.loopback_only(name) && !peer.is_loopback() {
            return Err(LoginError::LoopbackOnly);
        }
        Ok(user)
    }

    /// SASL EXTERNAL (a verified client certificate's CN): the user must exist; no password is checked, as
    /// rabbit_auth_backend_internal's passwordless login. `loopback_users` still applies.
    pub fn login_external(&self, name: &str, peer: IpAddr) -> Result<UserInfo, LoginError> {
        let user = self.users.user(name).ok_or(LoginError::BadCredentials)?;
        if self.users.loopback_only(name) && !peer.is_loopback() {
            return Err(LoginError::LoopbackOnly);
        }
        Ok(user)
    }

    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<storage::Durability> {
        self.store.durable_watch()
    }

    /// Runs the queue timer (TTL, retry delays, x-expires) until the broker is dropped.
    pub fn spawn_timer(self: &Arc<Self>) {
        // Delayed messages are released by a thread of their own (it reads buckets from the store).
        if let Err(e) =
            crate::delayed::spawn_release(Arc::downgrade(self), Broker::vhosts, self.store.delayed_waker())
        {
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
        for vhost in self.vhosts() {
            for q in vhost.queues() {
                q.settle_delivered_mark();
            }
        }
        if let Err(e) = self.store.mark_clean_shutdown() {
            tracing::error!(error = %e, "final store flush failed");
        }
    }

    /// Starts the memory and disk alarm monitor (a thread; it stops with the broker).
    pub fn spawn_monitor(&self) {
        let c = &self.config;
        crate::flow::set_paging_ratio(c.memory_paging_ratio);
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

fn policy_from_record(r: &storage::PolicyRecord) -> Result<crate::policy::Policy, String> {
    let definition = match serde_json::from_str::<serde_json::Value>(&r.definition) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err("definition is not a JSON object".into()),
    };
    crate::policy::Policy::new(&r.vhost, &r.name, &r.pattern, &r.apply_to, r.priority, definition)
        .map_err(|e| e.to_string())
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
        broker
            .users
            .put_user("app", crate::users::hash_password("pw"), vec![])
            .unwrap();
        assert!(broker.login("app", "pw", remote).is_ok());
    }
}
