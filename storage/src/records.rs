//! The store's public value types: definition records, stored messages and their state, options
//! and statistics. Definition records are postcard-encoded in sled (field order is the format: any
//! change is a schema version bump, see docs/storage-format.md).

use serde::{Deserialize, Serialize};

use crate::DEFAULT_SEGMENT_BYTES;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// sled's page cache size.
    pub cache_capacity_bytes: u64,
    /// sled's own background flush every N ms. `None` (the default): off, the store's flusher
    /// thread flushes whenever there are unflushed writes.
    pub flush_interval_ms: Option<u64>,
    /// A message segment file is closed and a new one started when the next record would take it
    /// past this size (a larger record gets a segment of its own). Default 8 MiB.
    pub segment_bytes: u64,
    /// Open even if the definitions store is empty or unreadable while message data exists:
    /// restore queues from their definition copies and move the rest to `lost+found`
    /// (the broker's `--force-recovery`). Off by default: such a store is refused.
    pub force_recovery: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_interval_ms: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            force_recovery: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VhostRecord {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub password_hash: Vec<u8>,
    pub tags: Vec<String>,
}

/// A user's configure/write/read regular expressions in one vhost (RabbitMQ's permissions).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PermissionRecord {
    pub vhost: String,
    pub user: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A vhost's description, tags and default queue type (the management API's vhost metadata).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VhostMetaRecord {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub default_queue_type: String,
}

/// An operator policy (RabbitMQ's model); `definition` is its JSON text, opaque here.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    pub apply_to: String,
    pub priority: i64,
    pub definition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExchangeRecord {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueRecord {
    pub id: u32,
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Vec<u8>,
}

/// A binding's identity is all of its fields, arguments included (as in RabbitMQ).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BindingRecord {
    pub vhost: String,
    pub source: String,
    pub destination: String,
    pub destination_is_queue: bool,
    pub routing_key: String,
    pub arguments: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredMessage {
    pub exchange: String,
    pub routing_key: String,
    /// Raw AMQP content-header property bytes (opaque here).
    pub properties: bytes::Bytes,
    pub body: bytes::Bytes,
    pub delivery_count: u32,
    pub published_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Retry due time.
    pub not_before_ms: Option<u64>,
}

/// The small mutable part of a message, kept under its own key so a redelivery does not rewrite
/// the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageState {
    pub delivery_count: u32,
    pub redelivered: bool,
    pub not_before_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Write operations (= the current ticket). A batch counts once.
    pub writes: u64,
    /// Completed flush rounds (group commits), flusher and `flush_blocking`.
    pub flushes: u64,
    /// fsync calls made by the flush rounds: `sync_data` of segment and ack files, directory
    /// syncs, `sled::Db::flush` calls.
    pub fsyncs: u64,
    /// Message record bytes plus key + value bytes handed to sled (logical, before sled's own
    /// framing).
    pub bytes_written: u64,
    pub messages_appended: u64,
    /// Messages removed by `delete_messages` (requested, whether or not they existed), purge and
    /// delete_queue.
    pub messages_deleted: u64,
    /// Highest durable ticket published.
    pub durable: u64,
    /// Flushes that failed (the flusher retries; `durable` does not advance meanwhile).
    pub flush_errors: u64,
}
