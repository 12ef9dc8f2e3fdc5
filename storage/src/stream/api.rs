//! The `Store` calls for streams: append, read, retention, stored consumer offsets.

use std::sync::atomic::Ordering::SeqCst;

use super::{ReadOutcome, StreamItem, StreamReader, StreamRecord, StreamStart, StreamStats};
use crate::codec::MessageParts;
use crate::keys::{self, STREAM_OFFSET};
use crate::{be, Result, Store, StoredMessage};

impl Store {
    /// Appends a message to stream `id` (the queue id of a stream queue), published at `ts_ms`,
    /// with its filter value. Returns (its offset, the ticket to wait for before confirming).
    /// Segments are cut at `max_segment_bytes`.
    pub fn stream_append(
        &self,
        id: u32,
        ts_ms: u64,
        filter: Option<&[u8]>,
        msg: &StoredMessage,
        max_segment_bytes: u64,
    ) -> Result<(u64, u64)> {
        self.stream_append_parts(id, ts_ms, filter, &MessageParts::of(msg), max_segment_bytes)
    }

    /// `stream_append` with the message's parts borrowed (no `StoredMessage` to build).
    pub fn stream_append_parts(
        &self,
        id: u32,
        ts_ms: u64,
        filter: Option<&[u8]>,
        msg: &MessageParts<'_>,
        max_segment_bytes: u64,
    ) -> Result<(u64, u64)> {
        let (offset, n) = self
            .sh()
            .streams
            .append(id, ts_ms, filter, msg, max_segment_bytes)?;
        self.sh().messages_appended.fetch_add(1, SeqCst);
        Ok((offset, self.sh().bump(n)))
    }

    /// A reader of stream `id` placed at `start`.
    pub fn stream_reader(&self, id: u32, start: StreamStart) -> Result<StreamReader> {
        self.sh().streams.reader(id, start)
    }

    /// Reads up to `max` messages whose filter value `accept` takes, from the reader's position on;
    /// stops after scanning `scan_max` bytes (`more`). Never blocks on the stream's writers.
    pub fn stream_read(
        &self,
        r: &mut StreamReader,
        max: usize,
        scan_max: usize,
        accept: &mut dyn FnMut(Option<&[u8]>) -> bool,
        out: &mut Vec<StreamItem>,
    ) -> Result<ReadOutcome> {
        self.sh().streams.read(r, max, scan_max, accept, out)
    }

    /// `stream_read`, handing each message to `emit` borrowed from the reader's buffer (no copy, no
    /// allocation per message in the store).
    pub fn stream_read_with(
        &self,
        r: &mut StreamReader,
        max: usize,
        scan_max: usize,
        accept: &mut dyn FnMut(Option<&[u8]>) -> bool,
        emit: &mut dyn FnMut(StreamRecord<'_>),
    ) -> Result<ReadOutcome> {
        self.sh().streams.read_with(r, max, scan_max, accept, emit)
    }

    pub fn stream_stats(&self, id: u32) -> StreamStats {
        self.sh().streams.stats(id)
    }

    /// Retention: drops whole oldest segments while the stream holds more than `max_bytes`, or while
    /// its oldest segment's newest message is older than `min_ts_ms`. The segment being written is
    /// kept. Returns the number of segments dropped (their removal is durable after the next round).
    pub fn stream_retain(&self, id: u32, max_bytes: Option<u64>, min_ts_ms: Option<u64>) -> Result<usize> {
        let n = self.sh().streams.retain(id, max_bytes, min_ts_ms)?;
        if n > 0 {
            self.sh().bump(0);
        }
        Ok(n)
    }

    /// Server-side offset tracking: records `offset` as consumer `tag`'s last acked offset in
    /// stream `id`. Durable after the returned ticket.
    pub fn stream_store_offset(&self, id: u32, tag: &str, offset: u64) -> Result<u64> {
        self.put_raw(offset_key(id, tag), offset.to_be_bytes().to_vec())
    }

    /// Consumer `tag`'s stored offset in stream `id`.
    pub fn stream_offset(&self, id: u32, tag: &str) -> Result<Option<u64>> {
        let k = offset_key(id, tag);
        let v = self.sh().sled.read(|db| db.get(&k))?;
        Ok(v.and_then(|v| be::exact_u64(&v)))
    }

    /// Deletes a stream queue: its record, its segments and its stored offsets. Returns the ticket
    /// that makes the removal of the record durable.
    pub fn delete_stream(&self, vhost: &str, name: &str, id: u32) -> Result<u64> {
        self.delete_queue(vhost, name, id)?;
        self.sh().streams.remove(id)?;
        self.remove_prefix(&keys::queue_prefix(STREAM_OFFSET, id))?;
        Ok(self.sh().bump(0))
    }
}

fn offset_key(id: u32, tag: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + tag.len());
    k.extend_from_slice(&keys::queue_prefix(STREAM_OFFSET, id));
    k.extend_from_slice(tag.as_bytes());
    k
}
