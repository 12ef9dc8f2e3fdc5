//! The store adapter: a durable queue's handle on its messages, and the conversions between broker values and
//! storage records. It maps queue operations to `storage::Store` calls and back, and builds no queue values
//! (the queue turns a `StoredEntry` into its own entry). The broker never touches sled; everything goes
//! through `storage::Store`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use protocol::{FieldTable, RawProperties, ShortStr};
use storage::{MessageState, Store, StoredMessage};

use crate::clock::now_ms;
use crate::message::Message;

/// A message read back from the store: the message and what the store recorded about it. The queue turns it
/// into one of its entries.
#[derive(Debug)]
pub struct StoredEntry {
    pub seq: u64,
    pub msg: Message,
    pub delivery_count: u32,
    /// Returned to the queue before, or possibly delivered before a crash.
    pub redelivered: bool,
    pub expires_at: Option<u64>,
    pub not_before: Option<u64>,
}

/// A durable queue's messages in the store.
#[derive(Clone)]
pub struct QueueStore {
    store: Store,
    id: u32,
    /// Messages up to this seq may have been delivered before a crash: they come back redelivered.
    delivered_mark: Option<u64>,
    vhost: Arc<str>,
    name: Arc<str>,
}

impl QueueStore {
    pub fn new(store: Store, id: u32, vhost: Arc<str>, name: Arc<str>) -> QueueStore {
        QueueStore {
            store,
            id,
            vhost,
            name,
            delivered_mark: None,
        }
    }

    /// After a restart: messages up to the stored mark may have been delivered before it.
    pub fn load_delivered_mark(&mut self) -> Result<(), storage::StoreError> {
        self.delivered_mark = self.store.delivered_mark(self.id)?;
        Ok(())
    }

    pub fn delivered_mark(&self) -> Option<u64> {
        self.delivered_mark
    }

    /// After a crash (no clean-stop record): every message recovered up to `last_seq` may have been
    /// delivered, and comes back flagged redelivered, as RabbitMQ's dirty recovery does
    /// (rabbit_variable_queue.erl: "On dirty recovery the redeliver_seq_id variable becomes the seq_id
    /// of the most recent message in the queue"). The stored mark alone is not enough: it is written
    /// ahead of the deliveries but made durable by the flusher's next round, and a delivery can leave
    /// before that round ends. The raised mark is stored, so that a clean stop and restart that follow
    /// still flag these messages.
    pub fn raise_delivered_mark_after_crash(&mut self, last_seq: u64) {
        if self.delivered_mark.is_none_or(|m| m < last_seq) {
            self.delivered_mark = Some(last_seq);
            self.mark_delivered(last_seq);
        }
    }

    /// Records that messages up to `seq` may have been delivered (one write per delivery batch).
    pub fn mark_delivered(&self, seq: u64) {
        if let Err(e) = self.store.set_delivered_mark(self.id, seq) {
            tracing::error!(queue = %self.name, error = %e, "store mark write failed");
        }
    }

    /// Writes a persistent message; returns the ticket to wait for before confirming.
    pub fn append(
        &self,
        seq: u64,
        msg: &Message,
        expires_at: Option<u64>,
    ) -> Result<u64, storage::StoreError> {
        // Borrowed from the message: no copy of its names, no reference count taken per append.
        let parts = storage::MessageParts {
            exchange: msg.exchange.as_str(),
            routing_key: msg.routing_key.as_str(),
            // As published (a BCC header included): the keys come back with the message after a restart.
            properties: msg.stored_properties().as_bytes(),
            body: &msg.body,
            delivery_count: 0,
            published_at_ms: now_ms(),
            expires_at_ms: expires_at,
            not_before_ms: None,
        };
        self.store.append_message_parts(self.id, seq, parts)
    }

    /// Reads up to `limit` messages from `from_seq` on, with what the store knows of each.
    pub fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEntry>, storage::StoreError> {
        let rows = self.store.read_messages_with_state(self.id, from_seq, limit)?;
        Ok(rows
            .into_iter()
            .map(|(seq, m, state)| StoredEntry {
                seq,
                // Returned before (its state says so), or possibly delivered before a crash (under the mark).
                redelivered: state.as_ref().is_some_and(|s| s.redelivered)
                    || self.delivered_mark.is_some_and(|mark| seq <= mark),
                delivery_count: m.delivery_count,
                expires_at: m.expires_at_ms,
                not_before: m.not_before_ms,
                msg: message_from_record(m),
            })
            .collect())
    }

    pub fn delete(&self, seqs: impl Iterator<Item = u64>) {
        // In chunks from a stack buffer: acks of one message (the common case) allocate nothing here.
        let mut buf = [0u64; 128];
        let mut n = 0;
        for s in seqs {
            buf[n] = s;
            n += 1;
            if n == buf.len() {
                self.delete_chunk(&buf);
                n = 0;
            }
        }
        if n > 0 {
            self.delete_chunk(&buf[..n]);
        }
    }

    fn delete_chunk(&self, seqs: &[u64]) {
        if let Err(e) = self.store.delete_messages(self.id, seqs) {
            tracing::error!(queue = %self.name, error = %e, "store delete failed");
        }
    }

    /// Deletes every stored message with seq >= `from`.
    pub fn delete_from(&self, from: u64) {
        match self.store.message_seqs(self.id) {
            Ok(seqs) => self.delete(seqs.into_iter().filter(|s| *s >= from)),
            Err(e) => tracing::error!(queue = %self.name, error = %e, "store scan failed"),
        }
    }

    pub fn set_state(&self, seq: u64, delivery_count: u32, redelivered: bool, not_before_ms: Option<u64>) {
        let state = MessageState {
            delivery_count,
            redelivered,
            not_before_ms,
        };
        if let Err(e) = self.store.set_message_state(self.id, seq, &state) {
            tracing::error!(queue = %self.name, error = %e, "store state write failed");
        }
    }

    /// The same queue's log, when it is a stream queue.
    pub fn stream_store(&self) -> crate::stream_store::StreamStore {
        crate::stream_store::StreamStore::new(
            self.store.clone(),
            self.id,
            self.vhost.clone(),
            self.name.clone(),
        )
    }

    /// Removes the queue's record and all its messages.
    pub fn delete_queue(&self) {
        if let Err(e) = self.store.delete_queue(&self.vhost, &self.name, self.id) {
            tracing::error!(queue = %self.name, error = %e, "store queue delete failed");
        }
    }
}

pub fn message_from_record(m: StoredMessage) -> Message {
    // The decoded strings become the message's own (`Bytes` takes over an exactly sized `String`'s
    // buffer: no copy, no allocation per message read back).
    let short = |s: String| ShortStr::from_utf8(bytes::Bytes::from(s.into_bytes())).unwrap_or_default();
    let exchange = short(m.exchange);
    let routing_key = short(m.routing_key);
    Message::new(
        exchange,
        routing_key,
        RawProperties::from_bytes(m.properties),
        m.body,
    )
}

/// Argument tables are stored in their AMQP encoding.
pub fn encode_table(t: &FieldTable) -> Vec<u8> {
    let mut b = BytesMut::new();
    t.encode(&mut b);
    b.to_vec()
}

pub fn decode_table(bytes: &[u8]) -> FieldTable {
    if bytes.is_empty() {
        return FieldTable::new();
    }
    let mut b = Bytes::copy_from_slice(bytes);
    FieldTable::decode(&mut b).unwrap_or_default()
}
