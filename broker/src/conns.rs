//! The open connections, for the management API: who is connected, from where, to which vhost, and a way
//! to ask a connection (through its `ConnSignal`, never by touching it) for its channels and consumers, or
//! to close it. A connection registers at connection.open and leaves in `Drop for Conn`; nothing on the
//! message path reads this.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::FieldTable;

use crate::signal::{ConnEvent, ConnSignal};

/// What the management API shows of a connection; fixed at connection.open.
pub struct ConnInfo {
    pub id: u64,
    /// RabbitMQ's connection name: `"127.0.0.1:50000 -> 127.0.0.1:5672"`.
    pub name: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub vhost: String,
    pub connected_at_ms: u64,
    pub client_properties: FieldTable,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub auth_mechanism: String,
    pub signal: Arc<ConnSignal>,
}

/// A channel, as its connection reports it.
#[derive(Debug, Clone)]
pub struct ChannelSnapshot {
    pub number: u16,
    pub prefetch_count: u16,
    pub global_prefetch_count: u16,
    pub messages_unacknowledged: u64,
    pub confirm: bool,
    pub transactional: bool,
    pub consumer_count: u32,
}

/// A consumer, as its connection reports it.
#[derive(Debug, Clone)]
pub struct ConsumerSnapshot {
    pub channel: u16,
    pub tag: String,
    pub queue: Arc<str>,
    pub ack_required: bool,
    pub prefetch_count: u16,
    pub exclusive: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ConnSnapshot {
    pub channels: Vec<ChannelSnapshot>,
    pub consumers: Vec<ConsumerSnapshot>,
}

#[derive(Default)]
pub struct Conns {
    map: Mutex<BTreeMap<u64, Arc<ConnInfo>>>,
}

impl Conns {
    pub fn register(&self, info: ConnInfo) {
        self.map.lock().insert(info.id, Arc::new(info));
    }

    pub fn unregister(&self, id: u64) {
        self.map.lock().remove(&id);
    }

    pub fn list(&self) -> Vec<Arc<ConnInfo>> {
        self.map.lock().values().cloned().collect()
    }

    pub fn by_name(&self, name: &str) -> Option<Arc<ConnInfo>> {
        self.map.lock().values().find(|c| c.name == name).cloned()
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.lock().is_empty()
    }

    /// Asks a connection to close with 320 CONNECTION_FORCED and `reason`.
    pub fn close(&self, info: &ConnInfo, reason: &str) {
        info.signal.push_event(ConnEvent::ForceClose(reason.to_string()));
    }

    /// Closes every connection to `vhost` (the vhost is being deleted).
    pub fn close_vhost(&self, vhost: &str, reason: &str) {
        for c in self.list().iter().filter(|c| c.vhost == vhost) {
            self.close(c, reason);
        }
    }
}

impl ConnInfo {
    /// Asks the connection task for its channels and consumers; an empty snapshot if it is gone or
    /// does not answer within a second.
    pub async fn snapshot(&self) -> ConnSnapshot {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.signal.push_event(ConnEvent::Snapshot(tx));
        match tokio::time::timeout(std::time::Duration::from_secs(1), rx).await {
            Ok(Ok(s)) => s,
            _ => ConnSnapshot::default(),
        }
    }
}
