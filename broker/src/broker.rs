//! The broker's shared state: settings, users, virtual hosts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::Config;
use crate::vhost::VHost;

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
    /// Highest store ticket known durable; connections holding confirms wait on it.
    durable: tokio::sync::watch::Receiver<u64>,
    _durable_tx: tokio::sync::watch::Sender<u64>,
}

/// Why a login failed.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    BadCredentials,
    LoopbackOnly,
}

impl Broker {
    pub fn new(config: Config) -> Arc<Broker> {
        let (durable_tx, durable) = tokio::sync::watch::channel(0);
        let broker = Broker {
            config,
            durable,
            _durable_tx: durable_tx,
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            next_conn_id: AtomicU64::new(1),
        };
        broker
            .vhosts
            .write()
            .insert("/".into(), Arc::new(VHost::new("/")));
        broker.users.write().insert(
            "guest".into(),
            User {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
            },
        );
        Arc::new(broker)
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

    pub fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Called once every connection has closed.
    pub fn shutdown(&self) {}

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}
