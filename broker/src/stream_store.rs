//! The store adapter of stream queues: a stream's log in the store (append, readers, retention, stored
//! consumer offsets) and the conversion of what a reader returns into a delivery's message, with its offset
//! in the `x-stream-offset` header as RabbitMQ delivers it.

use std::sync::Arc;

use protocol::{FieldValue, RawProperties, ShortStr};
use storage::{
    ReadOutcome, Store, StoreError, StoredMessage, StreamItem, StreamReader, StreamStart, StreamStats,
};

use crate::message::Message;

/// A stream queue's log in the store.
#[derive(Clone)]
pub struct StreamStore {
    store: Store,
    id: u32,
    vhost: Arc<str>,
    name: Arc<str>,
}

impl StreamStore {
    pub fn new(store: Store, id: u32, vhost: Arc<str>, name: Arc<str>) -> StreamStore {
        StreamStore {
            store,
            id,
            vhost,
            name,
        }
    }

    /// Appends a message published at `now`; returns (its offset, the ticket its confirm waits for).
    pub fn append(
        &self,
        msg: &Message,
        now: u64,
        filter: Option<&[u8]>,
        max_segment_bytes: u64,
    ) -> Result<(u64, u64), StoreError> {
        let record = StoredMessage {
            exchange: msg.exchange.as_str().to_owned(),
            routing_key: msg.routing_key.as_str().to_owned(),
            // as delivered (without BCC, RabbitMQ's sender-selected distribution): a stream is never re-routed
            properties: msg.properties.to_bytes(),
            body: msg.body.clone(),
            delivery_count: 0,
            published_at_ms: now,
            expires_at_ms: None,
            not_before_ms: None,
        };
        self.store
            .stream_append(self.id, now, filter, &record, max_segment_bytes)
    }

    pub fn reader(&self, start: StreamStart) -> Result<StreamReader, StoreError> {
        self.store.stream_reader(self.id, start)
    }

    pub fn read(
        &self,
        r: &mut StreamReader,
        max: usize,
        scan_max: usize,
        accept: &mut dyn FnMut(Option<&[u8]>) -> bool,
        out: &mut Vec<StreamItem>,
    ) -> Result<ReadOutcome, StoreError> {
        self.store.stream_read(r, max, scan_max, accept, out)
    }

    pub fn stats(&self) -> StreamStats {
        self.store.stream_stats(self.id)
    }

    pub fn retain(&self, max_bytes: Option<u64>, min_ts: Option<u64>) {
        match self.store.stream_retain(self.id, max_bytes, min_ts) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(stream = %self.name, segments = n, "retention dropped segments"),
            Err(e) => tracing::error!(stream = %self.name, error = %e, "stream retention failed"),
        }
    }

    /// Server-side offset tracking: consumer `tag` acked up to `offset` (durable after the next round).
    pub fn store_offset(&self, tag: &str, offset: u64) {
        if let Err(e) = self.store.stream_store_offset(self.id, tag, offset) {
            tracing::error!(stream = %self.name, error = %e, "storing a consumer offset failed");
        }
    }

    pub fn stored_offset(&self, tag: &str) -> Option<u64> {
        match self.store.stream_offset(self.id, tag) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(stream = %self.name, error = %e, "reading a consumer offset failed");
                None
            }
        }
    }

    /// Removes the stream's record, log and offsets.
    pub fn delete(&self) {
        if let Err(e) = self.store.delete_stream(&self.vhost, &self.name, self.id) {
            tracing::error!(stream = %self.name, error = %e, "store stream delete failed");
        }
    }
}

/// The message a stream delivers: as published, with `x-stream-offset` (a long, as RabbitMQ) in its
/// headers.
pub fn stream_message(item: StreamItem) -> Message {
    let m = item.message;
    let exchange = ShortStr::try_from_str(&m.exchange).unwrap_or_default();
    let routing_key = ShortStr::try_from_str(&m.routing_key).unwrap_or_default();
    let raw = RawProperties::from_bytes(m.properties);
    let mut headers = raw.headers().ok().flatten().unwrap_or_default();
    headers.insert("x-stream-offset", FieldValue::I64(item.offset as i64));
    let props = raw.with_headers(headers).unwrap_or(raw);
    Message::new(exchange, routing_key, props, m.body)
}
