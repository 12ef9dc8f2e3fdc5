//! Mailroom's durable store: a narrow API over sled 0.34 and an append-only message log.
//!
//! * Definitions (vhosts, users, exchanges, queues, bindings) and small per-message state live in
//!   one sled tree under hand-encoded big-endian keys; values are postcard.
//! * Messages live in per-queue append-only segment files (`seglog`); acks are appended to a side
//!   file per segment and a segment is deleted once all of its messages are acked, which gives the
//!   disk space back. Layout: docs/storage-format.md.
//! * Every write is applied at once (sled in memory, the log to an in-process buffer) and returns
//!   a *ticket*. One flusher thread per store writes out the log buffers, `sync_data`s every file
//!   written since its last round, flushes sled if it was written, and then publishes the highest
//!   ticket it covered on a `tokio::sync::watch` channel (group commit): a write is durable once
//!   `*durable_watch().borrow() >= ticket`.
//! * The data directory is locked for the lifetime of the store (`LOCK`, `File::try_lock`).
//!
//! The crate knows nothing about AMQP: argument tables and message properties are opaque bytes.

mod be;
mod codec;
mod delayed;
mod entity_state;
mod fault;
mod flusher;
mod keys;
mod latency;
mod open;
mod records;
mod seglog;
mod sled_worker;
mod sleddb;
pub mod spill;
mod store;
mod stream;
mod sync_pool;
mod trace;

use std::path::{Path, PathBuf};

pub use codec::MessageParts;
pub use delayed::{DelayedLog, DelayedStats, DelayedWaker, DueMessage};
pub use entity_state::{StateKind, StateOp};
pub use fault::{FaultOp, Faults, FileKind};
pub use flusher::{Durability, TicketState};
pub use latency::{LatencyHistogram, LatencySnapshot, LATENCY_BUCKETS};
pub use open::{Attached, LostQueue, LOST_FOUND};
pub use records::{
    BindingRecord, ExchangeRecord, MessageState, PermissionRecord, PolicyRecord, QueueRecord, StoreOptions,
    StoreStats, StoredMessage, UserRecord, VhostMetaRecord, VhostRecord,
};
pub use store::{dir_allocated_bytes, Store};
pub use stream::{ReadOutcome, StreamItem, StreamReader, StreamRecord, StreamStart, StreamStats};
pub use trace::{id_hash, TraceBatch, TraceIndex, EXACT_IDS};

/// The on-disk schema this build reads and writes. Stored under `\x00schema_version`.
/// 2: messages moved from sled (`0x10` keys) to the segment log under `messages/`.
/// 3: stream records may carry the round mark (`stream/format.rs`); a store of version 2 is opened and
/// marked 3 (nothing else changes), and builds of version 2 refuse it from then on.
pub const SCHEMA_VERSION: u32 = 3;

/// sled's log segment size. It is persisted by sled in `sled/conf` at creation and sled refuses
/// to open a store with a different value, so it is a constant, not an option.
/// See docs/storage-format.md for why this value.
pub const SLED_SEGMENT_SIZE: usize = 512 * 1024;

/// Default maximum size of a message segment file (`StoreOptions::segment_bytes`).
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {} is locked: another broker (or another open store in this process) \
         is using it; stop that one or choose a different data directory",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error("storage I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "the store has schema version {found} but this build only understands version {expected}; \
         refusing to open it (use a matching broker version or migrate the data)"
    )]
    SchemaVersion { found: u32, expected: u32 },
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
    #[error("storage engine (sled) error: {0}")]
    Engine(String),
    #[error(
        "message seq {seq} appended to queue {queue_id} after seq {last}: seqs must increase \
         per queue"
    )]
    OutOfOrder { queue_id: u32, seq: u64, last: u64 },
    #[error(
        "the definitions store {}/sled is {state} but {queues} queue directories under {}/messages \
         hold messages or queue definitions; refusing to start so that nothing is lost. Start with \
         --force-recovery to restore the queues from the definition copies beside their messages \
         and move whatever cannot be accounted for to {}/lost+found (exchanges, bindings, users and \
         vhosts cannot be restored this way); see docs/failure-handling.md",
        dir.display(), dir.display(), dir.display()
    )]
    DefinitionsLost {
        dir: PathBuf,
        state: String,
        queues: usize,
    },
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the write could not be made durable: {cause}")]
    NotDurable { ticket: u64, cause: String },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Engine(other.to_string()),
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_durability;
