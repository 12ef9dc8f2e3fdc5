//! Stream queues (`x-queue-type: stream`), RabbitMQ's semantics over AMQP 0-9-1: an append-only log in the
//! store that any number of consumers read independently, each from its own offset. Acks only give the
//! consumer credit back (and, with server-side offset tracking, record how far it got); nothing is removed
//! but by retention, which drops whole oldest segments.
//!
//! Nothing is kept in memory per message: a publish appends to the store and wakes the consumers that
//! caught up; a pull reads the consumer's next messages from the store through its own reader
//! (`storage::StreamReader`), outside the queue's lock.
//!
//! - `spec.rs`: the consumer's arguments (`x-stream-offset`, filters, offset tracking) and their errors;
//! - `args.rs`: the stream's own queue arguments (retention, segment size) and their checks at declare.

pub mod args;
pub mod spec;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::{FieldTable, ShortStr};
use storage::{StreamReader, StreamStart};

use super::{Entry, Rejected};
use crate::message::Message;
use crate::signal::{ConnSignal, ConsumerId};
use crate::stream_store::{stream_message, StreamStore};
pub use args::StreamArgs;
pub use spec::{ConsumeSpec, Filter};

/// A pull scans at most this many bytes of records a consumer's filter skips, then yields (the consumer
/// stays scheduled), so one consumer with a narrow filter cannot hold its connection for long.
const SCAN_MAX: usize = 4 << 20;

/// Size retention is checked after this many bytes were appended (or a quarter segment, if less).
const RETAIN_EVERY: u64 = 1 << 20;

/// A consumer's reader and what it needs to read.
struct ReaderState {
    reader: StreamReader,
    filter: Option<Filter>,
    /// Server-side offset tracking: acked offsets are stored under this tag.
    tracking: Option<ShortStr>,
    acked: Option<u64>,
}

struct Reg {
    tag: ShortStr,
    signal: Arc<ConnSignal>,
    state: Arc<Mutex<ReaderState>>,
}

struct Inner {
    /// The offset the next message will get.
    tail: u64,
    consumers: HashMap<ConsumerId, Reg>,
    /// Consumers that read up to `tail`: woken by the next publish.
    waiters: Vec<ConsumerId>,
    appended_since_retain: u64,
    deleted: bool,
}

pub struct StreamQueue {
    store: StreamStore,
    args: StreamArgs,
    inner: Mutex<Inner>,
    /// See `unacked_placeholder`.
    placeholder: Arc<Message>,
}

impl StreamQueue {
    pub fn new(store: StreamStore, arguments: &FieldTable) -> StreamQueue {
        let tail = store.stats().next;
        StreamQueue {
            store,
            args: StreamArgs::parse(arguments),
            inner: Mutex::new(Inner {
                tail,
                consumers: HashMap::new(),
                waiters: Vec::new(),
                appended_since_retain: 0,
                deleted: false,
            }),
            placeholder: Arc::new(Message::new(
                ShortStr::default(),
                ShortStr::default(),
                protocol::RawProperties::empty(),
                bytes::Bytes::new(),
            )),
        }
    }

    /// Appends the message; returns the ticket its confirm waits for. Every consumer that had caught up is
    /// woken.
    pub fn publish(&self, msg: &Message, now: u64) -> Result<u64, Rejected> {
        let mut q = self.inner.lock();
        if q.deleted {
            return Err(Rejected::Deleted);
        }
        let filter = filter_value(msg);
        let (offset, ticket) = self
            .store
            .append(msg, now, filter, self.args.max_segment_bytes)
            .map_err(|e| {
                tracing::error!(error = %e, "stream append failed");
                Rejected::Store
            })?;
        q.tail = offset + 1;
        q.appended_since_retain += msg.size();
        let every = RETAIN_EVERY.min(self.args.max_segment_bytes / 4).max(4096);
        if self.args.max_bytes.is_some() && q.appended_since_retain >= every {
            q.appended_since_retain = 0;
            self.store.retain(self.args.max_bytes, None);
        }
        let q = &mut *q;
        for id in q.waiters.drain(..) {
            if let Some(c) = q.consumers.get(&id) {
                c.signal.consumer_ready(id);
            }
        }
        Ok(ticket)
    }

    /// Registers consumer `id`, reading from where `spec` says (its stored offset first, with tracking).
    pub fn add_consumer(
        &self,
        id: ConsumerId,
        tag: ShortStr,
        signal: Arc<ConnSignal>,
        spec: ConsumeSpec,
    ) -> Result<(), storage::StoreError> {
        let start = match spec
            .tracking
            .as_ref()
            .and_then(|t| self.store.stored_offset(t.as_str()))
        {
            Some(o) => StreamStart::Offset(o + 1),
            None => spec.start,
        };
        let reader = self.store.reader(start)?;
        let state = ReaderState {
            reader,
            filter: spec.filter,
            tracking: spec.tracking,
            acked: None,
        };
        let mut q = self.inner.lock();
        q.consumers.insert(
            id,
            Reg {
                tag,
                signal,
                state: Arc::new(Mutex::new(state)),
            },
        );
        Ok(())
    }

    pub fn remove_consumer(&self, id: ConsumerId) {
        let mut q = self.inner.lock();
        q.consumers.remove(&id);
        q.waiters.retain(|w| *w != id);
    }

    /// Reads up to `max` messages for consumer `id` into `out` (entries whose seq is the offset). One that
    /// caught up waits for the next publish; one that stopped at its scan limit is woken again at once.
    pub fn pull(&self, id: ConsumerId, max: usize, out: &mut Vec<Entry>) -> usize {
        self.pull_with(id, max, &mut |rec| {
            out.push(Entry {
                seq: rec.offset,
                msg: Arc::new(stream_message(rec)),
                redelivered: false,
                delivery_count: 0,
                expires_at: None,
                not_before: None,
            })
        })
    }

    /// `pull`, handing each message to `emit` as the reader finds it (borrowed from its read block: the
    /// channel writes the delivery from it, `crate::stream_store::write_delivery`).
    pub fn pull_with(
        &self,
        id: ConsumerId,
        max: usize,
        emit: &mut dyn FnMut(storage::StreamRecord<'_>),
    ) -> usize {
        let state = {
            let q = self.inner.lock();
            if q.deleted {
                return 0;
            }
            match q.consumers.get(&id) {
                Some(c) => c.state.clone(),
                None => return 0,
            }
        };
        let mut st = state.lock();
        let st = &mut *st;
        let filter = &st.filter;
        let mut accept = |v: Option<&[u8]>| filter.as_ref().is_none_or(|f| f.accepts(v));
        let res = self.store.read(&mut st.reader, max, SCAN_MAX, &mut accept, emit);
        let (n, more, failed) = match res {
            Ok(r) => (r.taken, r.more, false),
            Err(e) => {
                tracing::error!(error = %e, "reading a stream failed; retried at the next publish");
                (0, false, true)
            }
        };
        let pos = st.reader.next_offset();
        if n < max {
            let mut q = self.inner.lock();
            if let Some(c) = q.consumers.get(&id) {
                if !failed && (more || pos < q.tail) {
                    c.signal.consumer_ready(id);
                } else if !q.waiters.contains(&id) {
                    q.waiters.push(id);
                }
            }
        }
        n
    }

    /// The message that stands for every delivery written by `pull_with` in its channel's unacked list:
    /// a stream's ack and reject need only the offset, and nothing is requeued or dead-lettered.
    pub fn unacked_placeholder(&self) -> Arc<Message> {
        self.placeholder.clone()
    }

    /// (first offset held, offset of the next message); the first is the next when nothing is held.
    pub fn bounds(&self) -> (u64, u64) {
        let st = self.store.stats();
        (st.first.unwrap_or(st.next), st.next)
    }

    /// Up to `max` messages from `offset` on (the first held if it is gone), read through a reader of its
    /// own: nothing changes for the consumers (a browse). Entries' seqs are their offsets.
    pub fn browse(&self, offset: u64, max: usize) -> Result<Vec<Entry>, storage::StoreError> {
        let mut reader = self.store.reader(StreamStart::Offset(offset))?;
        let mut out = Vec::new();
        let mut accept = |_: Option<&[u8]>| true;
        while out.len() < max {
            let before = out.len();
            let mut emit = |rec: storage::StreamRecord<'_>| {
                out.push(Entry {
                    seq: rec.offset,
                    msg: Arc::new(stream_message(rec)),
                    redelivered: false,
                    delivery_count: 0,
                    expires_at: None,
                    not_before: None,
                })
            };
            let r = self
                .store
                .read(&mut reader, max - before, SCAN_MAX, &mut accept, &mut emit)?;
            if out.len() == before && !r.more {
                break;
            }
        }
        Ok(out)
    }

    /// Acks: with offset tracking, the consumer's highest acked offset is stored (durable after the next
    /// flush round). Nothing is removed.
    pub fn acked(&self, items: impl Iterator<Item = (u64, Option<ConsumerId>)>) {
        let mut top: Option<(ConsumerId, u64)> = None;
        let flush = |c: ConsumerId, off: u64| {
            let state = self.inner.lock().consumers.get(&c).map(|r| r.state.clone());
            let Some(state) = state else { return };
            let mut st = state.lock();
            let Some(tag) = st.tracking.clone() else { return };
            if st.acked.is_none_or(|a| off > a) {
                st.acked = Some(off);
                self.store.store_offset(tag.as_str(), off);
            }
        };
        for (offset, consumer) in items {
            let Some(c) = consumer else { continue };
            match top {
                Some((tc, to)) if tc == c => top = Some((c, to.max(offset))),
                Some((tc, to)) => {
                    flush(tc, to);
                    top = Some((c, offset));
                }
                None => top = Some((c, offset)),
            }
        }
        if let Some((c, o)) = top {
            flush(c, o);
        }
    }

    /// (messages held, consumers).
    pub fn counts(&self) -> (u32, u32) {
        let stats = self.store.stats();
        let held = stats.first.map_or(0, |f| stats.next.saturating_sub(f));
        let consumers = self.inner.lock().consumers.len();
        (held.min(u32::MAX as u64) as u32, consumers as u32)
    }

    /// The timer: age retention.
    pub fn tick(&self, now: u64) {
        if self.inner.lock().deleted {
            return;
        }
        if let Some(age) = self.args.max_age_ms {
            self.store
                .retain(self.args.max_bytes, Some(now.saturating_sub(age)));
        }
    }

    pub fn needs_tick(&self) -> bool {
        self.args.max_age_ms.is_some()
    }

    /// The queue is deleted: consumers are told, the log and its offsets go.
    pub fn mark_deleted(&self) -> u32 {
        let (held, _) = self.counts();
        let mut q = self.inner.lock();
        if q.deleted {
            return 0;
        }
        q.deleted = true;
        for (id, c) in q.consumers.drain() {
            c.signal.consumer_cancelled(id, c.tag.clone());
        }
        q.waiters.clear();
        drop(q);
        self.store.delete();
        held
    }
}

/// The publisher's `x-stream-filter-value` header (a long string), read from the raw headers (nothing
/// decoded, nothing allocated).
fn filter_value(msg: &Message) -> Option<&[u8]> {
    match msg.properties.raw_header("x-stream-filter-value")? {
        (b'S', v) => Some(v),
        _ => None,
    }
}
