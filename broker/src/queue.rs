//! A queue: its ready messages in order, its consumers, and the consumers waiting for a message.
//!
//! Queues are the unit of concurrency: each has its own lock, held only for short, non-async sections.
//! Delivery is pull-based: a connection task takes up to its consumer's credit from the queue under the lock
//! and writes the deliveries itself. A queue wakes a waiting consumer (through its connection's signal) only
//! when a message arrives for a consumer that found the queue empty, so a busy queue costs no wake-ups.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::{FieldTable, ShortStr};

use crate::error::AmqpError;
use crate::message::Message;
use crate::signal::ConnSignal;
use crate::store::QueueStore;

/// Ready messages a durable queue keeps in memory; beyond this, persistent messages stay on disk only and
/// are read back in batches as the head advances (long queues live on disk, not in RAM).
pub const MEM_MAX: usize = 4096;
/// Messages read from disk per refill.
const REFILL: usize = 1024;

pub type ConsumerId = u64;

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique consumer id.
pub fn next_consumer_id() -> ConsumerId {
    NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed)
}

/// A message sitting in a queue (ready) or delivered and not yet acked (held by a channel).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue; requeued messages go back to their original position.
    pub seq: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
    /// How many times this message was returned to the queue.
    pub delivery_count: u32,
}

/// The declared shape of a queue, fixed at declare time.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: Arc<str>,
    pub durable: bool,
    /// Connection id of the owner of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// A consumer as the queue sees it.
struct ConsumerReg {
    id: ConsumerId,
    tag: ShortStr,
    exclusive: bool,
    signal: Arc<ConnSignal>,
    /// Has credit and found the queue empty: wake it when a message arrives.
    waiting: bool,
}

/// The part of a long durable queue that is not in memory.
#[derive(Default)]
struct Paged {
    /// First seq not yet read back from disk.
    next_disk_seq: u64,
    /// Persistent messages on disk and not in memory.
    on_disk: u64,
    /// Transient messages published while paged (kept in memory, merged back by seq).
    transient: VecDeque<Entry>,
}

#[derive(Default)]
struct Inner {
    /// The in-memory head of the queue, ordered by seq.
    ready: VecDeque<Entry>,
    paged: Option<Paged>,
    ready_bytes: u64,
    unacked: u64,
    next_seq: u64,
    consumers: Vec<ConsumerReg>,
    waiters: VecDeque<ConsumerId>,
    had_consumer: bool,
    deleted: bool,
}

/// Why a publish did not enter the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Deleted,
    /// The store could not take the message (the publisher gets a nack).
    Store,
}

/// What the store holds for a queue at recovery.
#[derive(Debug, Clone, Copy)]
pub struct Recovered {
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
}

pub struct Queue {
    pub spec: QueueSpec,
    /// Where persistent messages of a durable queue are kept (None for non-durable queues).
    store: Option<QueueStore>,
    inner: Mutex<Inner>,
}

/// What a removed consumer leaves behind.
pub struct ConsumerRemoved {
    /// The queue is auto-delete and its last consumer just went.
    pub auto_delete_now: bool,
}

impl Queue {
    pub fn new(spec: QueueSpec) -> Queue {
        Queue {
            spec,
            store: None,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A durable queue whose persistent messages go to `store`. `recovered` describes what the store
    /// already holds for it (after a restart): those messages are read back lazily, in order.
    pub fn with_store(spec: QueueSpec, store: QueueStore, recovered: Option<Recovered>) -> Queue {
        let mut inner = Inner::default();
        if let Some(r) = recovered {
            inner.next_seq = r.last_seq + 1;
            if r.count > 0 {
                inner.paged = Some(Paged {
                    next_disk_seq: r.first_seq,
                    on_disk: r.count,
                    transient: VecDeque::new(),
                });
            }
        }
        Queue {
            spec,
            store: Some(store),
            inner: Mutex::new(inner),
        }
    }

    pub fn store_id(&self) -> Option<u32> {
        self.store.as_ref().map(|s| s.id())
    }

    pub fn name(&self) -> &Arc<str> {
        &self.spec.name
    }

    /// Appends a message at the tail and wakes one waiting consumer. Returns the store ticket that must be
    /// durable before the publish is confirmed (0 when nothing was written).
    pub fn publish(&self, msg: Arc<Message>) -> Result<u64, Rejected> {
        let mut q = self.inner.lock();
        if q.deleted {
            return Err(Rejected::Deleted);
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        let mut ticket = 0;
        let persist = msg.persistent && self.store.is_some();
        if persist {
            let store = self.store.as_ref().expect("checked");
            match store.append(seq, &msg) {
                Ok(t) => ticket = t,
                Err(e) => {
                    tracing::error!(queue = %self.spec.name, error = %e, "store append failed");
                    return Err(Rejected::Store);
                }
            }
        }
        let entry = Entry {
            seq,
            msg,
            redelivered: false,
            delivery_count: 0,
        };
        let inner = &mut *q;
        match &mut inner.paged {
            Some(p) if persist => p.on_disk += 1,
            Some(p) => p.transient.push_back(entry),
            None if persist && inner.ready.len() >= MEM_MAX => {
                inner.paged = Some(Paged {
                    next_disk_seq: seq,
                    on_disk: 1,
                    transient: VecDeque::new(),
                });
            }
            None => {
                inner.ready_bytes += entry.msg.size();
                inner.ready.push_back(entry);
            }
        }
        q.wake_waiters(1);
        Ok(ticket)
    }

    /// Moves the next batch of paged-out messages back into memory.
    fn refill(&self, q: &mut Inner) {
        let (Some(store), Some(p)) = (self.store.as_ref(), q.paged.as_mut()) else {
            return;
        };
        let loaded = if p.on_disk > 0 {
            match store.read(p.next_disk_seq, REFILL) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(queue = %self.spec.name, error = %e, "store read failed");
                    return;
                }
            }
        } else {
            Vec::new()
        };
        let disk_done = loaded.len() < REFILL;
        let upto = if disk_done {
            u64::MAX
        } else {
            loaded.last().map_or(u64::MAX, |e| e.seq)
        };
        if let Some(last) = loaded.last() {
            p.next_disk_seq = last.seq + 1;
        }
        p.on_disk = if disk_done {
            0
        } else {
            p.on_disk.saturating_sub(loaded.len() as u64)
        };
        let mut disk = loaded.into_iter().peekable();
        let mut merged = Vec::new();
        loop {
            let take_disk = match (disk.peek(), p.transient.front()) {
                (Some(d), Some(t)) => {
                    if t.seq > upto {
                        true
                    } else {
                        d.seq < t.seq
                    }
                }
                (Some(_), None) => true,
                (None, Some(t)) if t.seq <= upto => false,
                _ => break,
            };
            if take_disk {
                merged.push(disk.next().expect("peeked"));
            } else {
                merged.push(p.transient.pop_front().expect("front"));
            }
        }
        if p.on_disk == 0 && p.transient.is_empty() {
            q.paged = None;
        }
        for e in merged {
            q.ready_bytes += e.msg.size();
            q.ready.push_back(e);
        }
    }

    /// Takes up to `max` ready messages for consumer `id`. With `ack`, they count as unacked until acked or
    /// requeued. If the queue ran dry before `max`, the consumer is remembered as waiting and is woken
    /// through its connection signal when a message arrives.
    pub fn pull(&self, id: ConsumerId, max: usize, ack: bool, out: &mut Vec<Entry>) -> usize {
        let mut q = self.inner.lock();
        if q.ready.len() < max && q.paged.is_some() {
            self.refill(&mut q);
        }
        let n = max.min(q.ready.len());
        for _ in 0..n {
            let e = q.ready.pop_front().expect("counted");
            q.ready_bytes -= e.msg.size();
            out.push(e);
        }
        if ack {
            q.unacked += n as u64;
        }
        if n < max {
            let inner = &mut *q;
            if let Some(c) = inner.consumers.iter_mut().find(|c| c.id == id) {
                if !c.waiting {
                    c.waiting = true;
                    inner.waiters.push_back(id);
                }
            }
        }
        n
    }

    /// basic.get: takes the head message, if any, and the number of ready messages left.
    pub fn get(&self, ack: bool) -> Option<(Entry, u32)> {
        let mut q = self.inner.lock();
        if q.ready.is_empty() && q.paged.is_some() {
            self.refill(&mut q);
        }
        let e = q.ready.pop_front()?;
        q.ready_bytes -= e.msg.size();
        if ack {
            q.unacked += 1;
        }
        let left = q.ready_count();
        Some((e, left))
    }

    /// Settles unacked messages for good (ack, or reject without requeue): they leave the store.
    pub fn settle(&self, entries: &[Entry]) {
        {
            let mut q = self.inner.lock();
            q.unacked = q.unacked.saturating_sub(entries.len() as u64);
        }
        self.forget(entries);
    }

    /// Removes delivered messages from the store (no-ack deliveries, settled messages).
    pub fn forget(&self, entries: &[Entry]) {
        if let Some(store) = &self.store {
            store.delete(entries.iter().filter(|e| e.msg.persistent).map(|e| e.seq));
        }
    }

    /// Whether pulled messages must be removed from the store when delivered without ack.
    pub fn is_stored(&self) -> bool {
        self.store.is_some()
    }

    /// Puts unacked messages back at their original positions, marked redelivered, and wakes waiters.
    pub fn requeue(&self, entries: impl IntoIterator<Item = Entry>) {
        let mut q = self.inner.lock();
        if q.deleted {
            return;
        }
        let mut n = 0usize;
        for mut e in entries {
            n += 1;
            e.redelivered = true;
            e.delivery_count = e.delivery_count.saturating_add(1);
            if let (Some(store), true) = (&self.store, e.msg.persistent) {
                store.set_state(e.seq, e.delivery_count, true);
            }
            q.ready_bytes += e.msg.size();
            // Requeued messages usually belong near the head: search from the front.
            let pos = q.ready.partition_point(|x| x.seq < e.seq);
            q.ready.insert(pos, e);
        }
        q.unacked = q.unacked.saturating_sub(n as u64);
        q.wake_waiters(n);
    }

    /// Registers a consumer. Exclusive consumers need an idle queue; nobody joins an exclusive consumer.
    pub fn add_consumer(
        &self,
        id: ConsumerId,
        tag: ShortStr,
        exclusive: bool,
        signal: Arc<ConnSignal>,
        vhost: &str,
    ) -> Result<(), AmqpError> {
        let mut q = self.inner.lock();
        if q.consumers.iter().any(|c| c.exclusive) || (exclusive && !q.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.spec.name, vhost
            )));
        }
        q.had_consumer = true;
        q.consumers.push(ConsumerReg {
            id,
            tag,
            exclusive,
            signal,
            waiting: false,
        });
        Ok(())
    }

    pub fn remove_consumer(&self, id: ConsumerId) -> ConsumerRemoved {
        let mut q = self.inner.lock();
        q.consumers.retain(|c| c.id != id);
        q.waiters.retain(|w| *w != id);
        ConsumerRemoved {
            auto_delete_now: self.spec.auto_delete && q.had_consumer && q.consumers.is_empty() && !q.deleted,
        }
    }

    /// (ready messages, consumers), as declare-ok reports them.
    pub fn counts(&self) -> (u32, u32) {
        let q = self.inner.lock();
        (q.ready_count(), q.consumers.len() as u32)
    }

    pub fn consumer_count(&self) -> usize {
        self.inner.lock().consumers.len()
    }

    pub fn is_deleted(&self) -> bool {
        self.inner.lock().deleted
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut q = self.inner.lock();
        let n = q.ready_count();
        let persistent: Vec<u64> = q
            .ready
            .iter()
            .filter(|e| e.msg.persistent)
            .map(|e| e.seq)
            .collect();
        let paged = q.paged.take();
        q.ready.clear();
        q.ready_bytes = 0;
        if let Some(store) = &self.store {
            if paged.is_some() {
                // Everything not delivered goes; unacked messages stay until settled.
                let from = paged.as_ref().map_or(u64::MAX, |p| p.next_disk_seq);
                store.delete_from(from);
            }
            store.delete(persistent.into_iter());
        }
        n
    }

    /// Marks the queue deleted and tells every consumer's connection that its consumer is gone.
    /// Returns the number of ready messages it held.
    pub fn mark_deleted(&self) -> u32 {
        let mut q = self.inner.lock();
        if q.deleted {
            return 0;
        }
        q.deleted = true;
        let n = q.ready_count();
        q.paged = None;
        if let Some(store) = &self.store {
            store.delete_queue();
        }
        q.ready.clear();
        q.ready_bytes = 0;
        for c in q.consumers.drain(..) {
            c.signal.consumer_cancelled(c.id, c.tag.clone());
        }
        q.waiters.clear();
        n
    }
}

impl Inner {
    /// Messages ready for delivery, in memory or on disk.
    fn ready_count(&self) -> u32 {
        let paged = self
            .paged
            .as_ref()
            .map_or(0, |p| p.on_disk + p.transient.len() as u64);
        (self.ready.len() as u64 + paged).min(u32::MAX as u64) as u32
    }

    /// Wakes up to `n` consumers that were waiting for messages.
    fn wake_waiters(&mut self, mut n: usize) {
        while n > 0 {
            let Some(id) = self.waiters.pop_front() else {
                break;
            };
            if let Some(c) = self.consumers.iter_mut().find(|c| c.id == id) {
                c.waiting = false;
                c.signal.consumer_ready(id);
                n -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use protocol::RawProperties;

    fn q() -> Queue {
        Queue::new(QueueSpec {
            name: "q".into(),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::new(),
        })
    }
    fn m(body: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            ShortStr::from_static(""),
            ShortStr::from_static("q"),
            RawProperties::empty(),
            Bytes::from_static(body.as_bytes()),
        ))
    }

    #[test]
    fn requeue_restores_original_position() {
        let q = q();
        for b in ["a", "b", "c"] {
            q.publish(m(b)).unwrap();
        }
        let mut out = vec![];
        q.pull(1, 2, true, &mut out);
        assert_eq!(out.len(), 2);
        let second = out.pop().unwrap();
        q.requeue([second]);
        q.requeue(out);
        let mut again = vec![];
        q.pull(1, 10, true, &mut again);
        let bodies: Vec<_> = again.iter().map(|e| e.msg.body.clone()).collect();
        assert_eq!(bodies, vec!["a", "b", "c"]);
        assert!(again[0].redelivered && again[1].redelivered && !again[2].redelivered);
        assert_eq!(again[0].delivery_count, 1);
    }

    #[test]
    fn waiting_consumer_is_woken_once() {
        let q = q();
        let sig = Arc::new(ConnSignal::new());
        q.add_consumer(7, ShortStr::from_static("t"), false, sig.clone(), "/")
            .unwrap();
        let mut out = vec![];
        assert_eq!(q.pull(7, 10, true, &mut out), 0);
        q.publish(m("x")).unwrap();
        q.publish(m("y")).unwrap();
        assert_eq!(sig.take_ready(), vec![7]);
        assert!(q
            .add_consumer(8, ShortStr::from_static("u"), true, sig, "/")
            .is_err());
    }
}
