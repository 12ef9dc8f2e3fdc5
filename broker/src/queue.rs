//! A queue: its ready messages in order, its consumers, and the consumers waiting for a message; plus what
//! happens to messages that fail: delivery counts, delayed retries, TTLs, length limits and dead-lettering.
//!
//! Queues are the unit of concurrency: each has its own lock, held only for short, non-async sections.
//! Delivery is pull-based: a connection task takes up to its consumer's credit from the queue under the lock
//! and writes the deliveries itself. A queue wakes a waiting consumer (through its connection's signal) only
//! when a message arrives for a consumer that found the queue empty, so a busy queue costs no wake-ups.
//!
//! Messages that die (rejected, expired, over a length limit, over the delivery limit) are collected under the
//! lock and dead-lettered after it is released, through the vhost (see `deadletter.rs`), so no queue lock is
//! ever held while another queue is locked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use protocol::{FieldTable, ShortStr};

use crate::error::AmqpError;
use crate::message::Message;
use crate::queue_args::{Overflow, QueueArgs};
use crate::signal::ConnSignal;
pub use crate::signal::{next_consumer_id, ConsumerId};
use crate::store::QueueStore;
use crate::vhost::VHost;

/// Ready messages a durable queue keeps in memory; beyond this, persistent messages stay on disk only and
/// are read back in batches as the head advances (long queues live on disk, not in RAM).
pub const MEM_MAX: usize = 4096;
/// How long a TTL-0 message handed to a waiting consumer may wait for that consumer's pull.
const TTL_ZERO_GRACE_MS: u64 = 100;
/// Messages read from disk per refill.
const REFILL: usize = 1024;

/// A message sitting in a queue (ready) or delivered and not yet acked (held by a channel).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue; requeued messages go back to their original position.
    pub seq: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
    /// How many times this message was returned to the queue.
    pub delivery_count: u32,
    /// When it expires (ms since the epoch): the smaller of the queue's TTL and the message's expiration.
    pub expires_at: Option<u64>,
    /// Not deliverable before this time (delayed retry).
    pub not_before: Option<u64>,
}

impl Entry {
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Why a message was dead-lettered, as RabbitMQ names it in `x-death`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message leaving its queue for the dead-letter exchange (or for nowhere).
#[derive(Debug)]
pub struct Dead {
    pub entry: Entry,
    pub reason: DeathReason,
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
    priority: i32,
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

/// Ready messages by priority level (one level unless `x-max-priority`), each level ordered by seq.
struct Ready {
    levels: Vec<VecDeque<Entry>>,
    len: usize,
    bytes: u64,
}

impl Ready {
    fn new(max_priority: Option<u8>) -> Ready {
        let n = max_priority.map_or(1, |p| p as usize + 1);
        Ready {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
        }
    }

    fn level(&self, e: &Entry) -> usize {
        if self.levels.len() == 1 {
            return 0;
        }
        (e.msg.priority as usize).min(self.levels.len() - 1)
    }

    fn push_back(&mut self, e: Entry) {
        let l = self.level(&e);
        self.len += 1;
        self.bytes += e.msg.size();
        self.levels[l].push_back(e);
    }

    fn insert_by_seq(&mut self, e: Entry) {
        let l = self.level(&e);
        self.len += 1;
        self.bytes += e.msg.size();
        let level = &mut self.levels[l];
        let pos = level.partition_point(|x| x.seq < e.seq);
        level.insert(pos, e);
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let level = self.levels.iter_mut().rev().find(|l| !l.is_empty())?;
        let e = level.pop_front()?;
        self.len -= 1;
        self.bytes -= e.msg.size();
        Some(e)
    }

    /// Removes expired messages from the head of every level.
    fn drop_expired_heads(&mut self, now: u64, out: &mut Vec<Dead>) {
        for level in &mut self.levels {
            while level.front().is_some_and(|e| e.is_expired(now)) {
                let e = level.pop_front().expect("front");
                self.len -= 1;
                self.bytes -= e.msg.size();
                out.push(Dead {
                    entry: e,
                    reason: DeathReason::Expired,
                });
            }
        }
    }

    fn drain(&mut self) -> Vec<Entry> {
        self.len = 0;
        self.bytes = 0;
        self.levels.iter_mut().flat_map(|l| l.drain(..)).collect()
    }
}

struct Inner {
    /// The in-memory head of the queue.
    ready: Ready,
    paged: Option<Paged>,
    /// Returned messages waiting out their retry delay, by (due time, seq).
    delayed: BTreeMap<(u64, u64), Entry>,
    unacked: u64,
    next_seq: u64,
    consumers: Vec<ConsumerReg>,
    waiters: VecDeque<ConsumerId>,
    /// Single active consumer: the one consumer allowed to take messages.
    active: Option<ConsumerId>,
    had_consumer: bool,
    deleted: bool,
    /// Last time the queue was used (consume, get, declare), for `x-expires`.
    last_used: u64,
    /// Some message carries a per-message expiration: the timer must look at the heads.
    has_expiring: bool,
    /// Highest seq recorded in the store as possibly delivered.
    delivered_mark: Option<u64>,
}

/// Why a publish did not enter the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Deleted,
    /// The store could not take the message (the publisher gets a nack).
    Store,
    /// `x-overflow: reject-publish(-dlx)` and the queue is full (the publisher gets a nack).
    Full,
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
    pub args: QueueArgs,
    /// Where persistent messages of a durable queue are kept (None for non-durable queues).
    store: Option<QueueStore>,
    /// Where dead letters go (the vhost routes them).
    vhost: Weak<VHost>,
    inner: Mutex<Inner>,
}

/// What a removed consumer leaves behind.
pub struct ConsumerRemoved {
    /// The queue is auto-delete and its last consumer just went.
    pub auto_delete_now: bool,
}

/// What the timer found.
#[derive(Default)]
pub struct Tick {
    /// The queue was unused for its `x-expires`: delete it.
    pub expired: bool,
}

impl Queue {
    pub fn new(spec: QueueSpec, vhost: Weak<VHost>, now: u64) -> Queue {
        Self::build(spec, None, None, vhost, now)
    }

    /// A durable queue whose persistent messages go to `store`. `recovered` describes what the store
    /// already holds for it (after a restart): those messages are read back lazily, in order.
    pub fn with_store(
        spec: QueueSpec,
        store: QueueStore,
        recovered: Option<Recovered>,
        vhost: Weak<VHost>,
        now: u64,
    ) -> Queue {
        Self::build(spec, Some(store), recovered, vhost, now)
    }

    fn build(
        spec: QueueSpec,
        store: Option<QueueStore>,
        recovered: Option<Recovered>,
        vhost: Weak<VHost>,
        now: u64,
    ) -> Queue {
        let args = QueueArgs::parse(&spec.arguments);
        let mut inner = Inner {
            ready: Ready::new(args.max_priority),
            paged: None,
            delayed: BTreeMap::new(),
            unacked: 0,
            next_seq: 0,
            consumers: Vec::new(),
            waiters: VecDeque::new(),
            active: None,
            had_consumer: false,
            deleted: false,
            last_used: now,
            has_expiring: false,
            delivered_mark: store.as_ref().and_then(|s| s.delivered_mark()),
        };
        if let Some(r) = recovered {
            inner.next_seq = r.last_seq + 1;
            if r.count > 0 {
                inner.paged = Some(Paged {
                    next_disk_seq: r.first_seq,
                    on_disk: r.count,
                    transient: VecDeque::new(),
                });
                inner.has_expiring = true;
            }
        }
        if let Some(mark) = inner.delivered_mark {
            // Never reuse a seq at or below the delivered mark: a new message would read as redelivered.
            inner.next_seq = inner.next_seq.max(mark + 1);
        }
        Queue {
            spec,
            args,
            store,
            vhost,
            inner: Mutex::new(inner),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.spec.name
    }

    /// When an entry published now expires.
    fn expiry_for(&self, msg: &Message, now: u64) -> Option<u64> {
        let q = self.args.message_ttl.map(|t| now.saturating_add(t));
        let m = msg.expiration_ms.map(|t| now.saturating_add(t));
        match (q, m) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Appends a message at the tail and wakes one waiting consumer. Returns the store ticket that must be
    /// durable before the publish is confirmed (0 when nothing was written).
    pub fn publish(&self, msg: Arc<Message>, now: u64) -> Result<u64, Rejected> {
        let mut dead = Vec::new();
        let r = self.publish_locked(msg, now, &mut dead);
        self.dead_letter(dead, now);
        r
    }

    fn publish_locked(&self, msg: Arc<Message>, now: u64, dead: &mut Vec<Dead>) -> Result<u64, Rejected> {
        let mut q = self.inner.lock();
        if q.deleted {
            return Err(Rejected::Deleted);
        }
        let mut expires_at = self.expiry_for(&msg, now);
        if expires_at.is_some_and(|t| t <= now) && q.consumers.iter().any(|c| c.waiting) {
            // TTL 0: a consumer that can take it now gets it; if it does not within a moment, it expires.
            expires_at = Some(now + TTL_ZERO_GRACE_MS);
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        let entry = Entry {
            seq,
            msg,
            redelivered: false,
            delivery_count: 0,
            expires_at,
            not_before: None,
        };
        if expires_at.is_some_and(|t| t <= now) {
            // x-message-ttl 0 (or an expiration of 0) with nobody to take it now: it dies at once.
            dead.push(Dead {
                entry,
                reason: DeathReason::Expired,
            });
            return Ok(0);
        }
        if (self.args.max_length.is_some() || self.args.max_length_bytes.is_some())
            && self.args.overflow != Overflow::DropHead
            && self.is_full(&q, entry.msg.size())
        {
            if self.args.overflow == Overflow::RejectPublishDlx {
                dead.push(Dead {
                    entry,
                    reason: DeathReason::Maxlen,
                });
            }
            return Err(Rejected::Full);
        }
        let mut ticket = 0;
        let persist = entry.msg.persistent && self.store.is_some();
        if persist {
            let store = self.store.as_ref().expect("checked");
            match store.append(seq, &entry.msg, expires_at) {
                Ok(t) => ticket = t,
                Err(e) => {
                    tracing::error!(queue = %self.spec.name, error = %e, "store append failed");
                    return Err(Rejected::Store);
                }
            }
        }
        if expires_at.is_some() {
            q.has_expiring = true;
        }
        let prioritised = self.args.max_priority.is_some();
        let inner = &mut *q;
        match &mut inner.paged {
            Some(p) if persist => p.on_disk += 1,
            Some(p) => p.transient.push_back(entry),
            None if persist && !prioritised && inner.ready.len >= MEM_MAX => {
                inner.paged = Some(Paged {
                    next_disk_seq: seq,
                    on_disk: 1,
                    transient: VecDeque::new(),
                });
            }
            None => inner.ready.push_back(entry),
        }
        if self.args.max_length.is_some() || self.args.max_length_bytes.is_some() {
            // drop-head: the oldest messages make room.
            while self.over_limit(&q) {
                if q.ready.len == 0 {
                    self.refill(&mut q, now);
                }
                match q.ready.pop_front() {
                    Some(e) => dead.push(Dead {
                        entry: e,
                        reason: DeathReason::Maxlen,
                    }),
                    None => break,
                }
            }
        }
        q.wake_waiters(1);
        Ok(ticket)
    }

    fn is_full(&self, q: &Inner, adding: u64) -> bool {
        let count = q.ready_count() as u64;
        self.args.max_length.is_some_and(|m| count >= m)
            || self
                .args
                .max_length_bytes
                .is_some_and(|m| q.ready.bytes + adding > m)
    }

    fn over_limit(&self, q: &Inner) -> bool {
        let count = q.ready_count() as u64;
        self.args.max_length.is_some_and(|m| count > m)
            || self.args.max_length_bytes.is_some_and(|m| q.ready.bytes > m)
    }

    /// Moves the next batch of paged-out messages back into memory.
    fn refill(&self, q: &mut Inner, now: u64) {
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
                (Some(d), Some(t)) => t.seq > upto || d.seq < t.seq,
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
            match e.not_before {
                Some(t) if t > now => {
                    q.delayed.insert((t, e.seq), e);
                }
                _ => q.ready.push_back(e),
            }
        }
    }

    /// Moves delayed messages whose time has come back to their positions.
    fn release_due(&self, q: &mut Inner, now: u64) -> usize {
        let mut n = 0;
        while let Some(entry) = q.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let mut e = entry.remove();
            e.not_before = None;
            q.ready.insert_by_seq(e);
            n += 1;
        }
        n
    }

    /// Takes up to `max` ready messages for consumer `id`. With `ack`, they count as unacked until acked or
    /// requeued. If the queue ran dry before `max`, the consumer is remembered as waiting and is woken
    /// through its connection signal when a message arrives. Expired messages met on the way are
    /// dead-lettered, never delivered.
    pub fn pull(&self, id: ConsumerId, max: usize, ack: bool, now: u64, out: &mut Vec<Entry>) -> usize {
        let mut dead = Vec::new();
        let n = self.pull_locked(id, max, ack, now, out, &mut dead);
        self.dead_letter(dead, now);
        n
    }

    fn pull_locked(
        &self,
        id: ConsumerId,
        max: usize,
        ack: bool,
        now: u64,
        out: &mut Vec<Entry>,
        dead: &mut Vec<Dead>,
    ) -> usize {
        let mut q = self.inner.lock();
        let inner = &mut *q;
        if inner.active.is_some_and(|a| a != id) {
            // Single active consumer: only the active one takes messages.
            return 0;
        }
        let Some(me) = inner.consumers.iter().position(|c| c.id == id) else {
            return 0;
        };
        // Consumer priorities: a waiting consumer of higher priority goes first.
        let my_priority = inner.consumers[me].priority;
        if let Some(better) = inner
            .consumers
            .iter()
            .filter(|c| c.waiting && c.priority > my_priority && c.id != id)
            .max_by_key(|c| c.priority)
            .map(|c| c.id)
        {
            if inner.ready.len > 0 || inner.paged.is_some() {
                inner.wake(better);
                inner.register_waiter(id);
                return 0;
            }
        }
        if !inner.delayed.is_empty() {
            self.release_due(inner, now);
        }
        let mut n = 0;
        while n < max {
            if inner.ready.len == 0 {
                if inner.paged.is_none() {
                    break;
                }
                self.refill(inner, now);
                if inner.ready.len == 0 {
                    break;
                }
            }
            let e = inner.ready.pop_front().expect("non-empty");
            if e.is_expired(now) {
                dead.push(Dead {
                    entry: e,
                    reason: DeathReason::Expired,
                });
                continue;
            }
            out.push(e);
            n += 1;
        }
        if ack {
            inner.unacked += n as u64;
            if let Some(store) = &self.store {
                // Remember how far deliveries went, so that a crash brings these back redelivered.
                let top = out[out.len() - n..]
                    .iter()
                    .filter(|e| e.msg.persistent)
                    .map(|e| e.seq)
                    .max();
                if let Some(top) = top {
                    if inner.delivered_mark.is_none_or(|m| top > m) {
                        inner.delivered_mark = Some(top);
                        store.mark_delivered(top);
                    }
                }
            }
        }
        if n < max {
            inner.register_waiter(id);
        }
        n
    }

    /// basic.get: takes the head message, if any, and the number of ready messages left.
    pub fn get(&self, ack: bool, now: u64) -> Option<(Entry, u32)> {
        let mut dead = Vec::new();
        let r = {
            let mut q = self.inner.lock();
            q.last_used = now;
            if !q.delayed.is_empty() {
                self.release_due(&mut q, now);
            }
            loop {
                if q.ready.len == 0 && q.paged.is_some() {
                    self.refill(&mut q, now);
                }
                let Some(e) = q.ready.pop_front() else { break None };
                if e.is_expired(now) {
                    dead.push(Dead {
                        entry: e,
                        reason: DeathReason::Expired,
                    });
                    continue;
                }
                if ack {
                    q.unacked += 1;
                    if let (Some(store), true) = (&self.store, e.msg.persistent) {
                        if q.delivered_mark.is_none_or(|m| e.seq > m) {
                            q.delivered_mark = Some(e.seq);
                            store.mark_delivered(e.seq);
                        }
                    }
                }
                break Some((e, q.ready_count()));
            }
        };
        self.dead_letter(dead, now);
        r
    }

    /// Settles unacked messages for good (ack): they leave the store.
    pub fn settle<'a>(&self, entries: impl ExactSizeIterator<Item = &'a Entry> + Clone) {
        {
            let mut q = self.inner.lock();
            q.unacked = q.unacked.saturating_sub(entries.len() as u64);
        }
        self.delete_stored(entries);
    }

    /// Rejected without requeue: dead-lettered (reason `rejected`) or dropped.
    pub fn reject(&self, entries: Vec<Entry>, now: u64) {
        {
            let mut q = self.inner.lock();
            q.unacked = q.unacked.saturating_sub(entries.len() as u64);
        }
        let dead = entries
            .into_iter()
            .map(|entry| Dead {
                entry,
                reason: DeathReason::Rejected,
            })
            .collect();
        self.dead_letter(dead, now);
    }

    /// Removes delivered messages from the store (no-ack deliveries, settled messages).
    pub fn forget(&self, entries: &[Entry]) {
        self.delete_stored(entries.iter());
    }

    fn delete_stored<'a>(&self, entries: impl Iterator<Item = &'a Entry>) {
        if let Some(store) = &self.store {
            store.delete(entries.filter(|e| e.msg.persistent).map(|e| e.seq));
        }
    }

    /// Whether pulled messages must be removed from the store when delivered without ack.
    pub fn is_stored(&self) -> bool {
        self.store.is_some()
    }

    /// Puts unacked messages back at their original positions, marked redelivered, with their delivery count
    /// raised. Over the delivery limit they are dead-lettered instead; with retry they wait out their delay.
    pub fn requeue(&self, entries: impl IntoIterator<Item = Entry>, now: u64) {
        let mut dead = Vec::new();
        {
            let mut q = self.inner.lock();
            let mut n = 0usize;
            let mut back = 0usize;
            for mut e in entries {
                n += 1;
                if q.deleted {
                    continue;
                }
                e.redelivered = true;
                e.delivery_count = e.delivery_count.saturating_add(1);
                if self
                    .args
                    .delivery_limit
                    .is_some_and(|limit| e.delivery_count > limit)
                {
                    dead.push(Dead {
                        entry: e,
                        reason: DeathReason::DeliveryLimit,
                    });
                    continue;
                }
                e.not_before = self
                    .args
                    .retry
                    .map(|r| now.saturating_add(r.delay_ms(e.delivery_count)));
                if let (Some(store), true) = (&self.store, e.msg.persistent) {
                    store.set_state(e.seq, e.delivery_count, true, e.not_before);
                }
                match e.not_before {
                    Some(t) => {
                        q.delayed.insert((t, e.seq), e);
                    }
                    None => {
                        q.ready.insert_by_seq(e);
                        back += 1;
                    }
                }
            }
            q.unacked = q.unacked.saturating_sub(n as u64);
            q.wake_waiters(back);
        }
        self.dead_letter(dead, now);
    }

    /// Registers a consumer. Exclusive consumers need an idle queue; nobody joins an exclusive consumer.
    #[allow(clippy::too_many_arguments)]
    pub fn add_consumer(
        &self,
        id: ConsumerId,
        tag: ShortStr,
        exclusive: bool,
        priority: i32,
        signal: Arc<ConnSignal>,
        vhost: &str,
        now: u64,
    ) -> Result<(), AmqpError> {
        let mut q = self.inner.lock();
        if q.consumers.iter().any(|c| c.exclusive) || (exclusive && !q.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.spec.name, vhost
            )));
        }
        q.had_consumer = true;
        q.last_used = now;
        if self.args.single_active_consumer && q.active.is_none() {
            q.active = Some(id);
        }
        q.consumers.push(ConsumerReg {
            id,
            tag,
            exclusive,
            priority,
            signal,
            waiting: false,
        });
        Ok(())
    }

    pub fn remove_consumer(&self, id: ConsumerId, now: u64) -> ConsumerRemoved {
        let mut q = self.inner.lock();
        q.consumers.retain(|c| c.id != id);
        q.waiters.retain(|w| *w != id);
        q.last_used = now;
        if q.active == Some(id) {
            // Single active consumer: the next one in line takes over.
            q.active = q.consumers.first().map(|c| c.id);
            if let Some(next) = q.active {
                q.wake(next);
            }
        }
        ConsumerRemoved {
            auto_delete_now: self.spec.auto_delete && q.had_consumer && q.consumers.is_empty() && !q.deleted,
        }
    }

    /// Marks the queue used (a redeclare), for `x-expires`.
    pub fn touch(&self, now: u64) {
        self.inner.lock().last_used = now;
    }

    /// (ready messages, consumers), as declare-ok reports them.
    pub fn counts(&self) -> (u32, u32) {
        let q = self.inner.lock();
        (q.ready_count(), q.consumers.len() as u32)
    }

    /// Messages delivered and not yet settled.
    pub fn unacked_count(&self) -> u64 {
        self.inner.lock().unacked
    }

    /// The timer: expires messages at the heads, releases due retries, reports an unused `x-expires` queue.
    pub fn tick(&self, now: u64) -> Tick {
        let mut dead = Vec::new();
        let mut tick = Tick::default();
        {
            let mut q = self.inner.lock();
            if q.deleted {
                return tick;
            }
            if !q.delayed.is_empty() {
                let n = self.release_due(&mut q, now);
                q.wake_waiters(n);
            }
            if q.has_expiring || self.args.message_ttl.is_some() {
                if q.ready.len == 0 && q.paged.is_some() {
                    self.refill(&mut q, now);
                }
                q.ready.drop_expired_heads(now, &mut dead);
            }
            if let Some(ttl) = self.args.expires {
                if q.consumers.is_empty() && now.saturating_sub(q.last_used) >= ttl {
                    tick.expired = true;
                }
            }
        }
        self.dead_letter(dead, now);
        tick
    }

    /// Whether the timer has anything to look at for this queue.
    pub fn needs_tick(&self) -> bool {
        if self.args.timed() {
            return true;
        }
        let q = self.inner.lock();
        q.has_expiring || !q.delayed.is_empty()
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut q = self.inner.lock();
        let n = q.ready_count();

        let mut gone = q.ready.drain();
        gone.extend(std::mem::take(&mut q.delayed).into_values());
        let paged = q.paged.take();
        drop(q);
        if let Some(store) = &self.store {
            if let Some(p) = paged {
                // Everything not yet read back goes; unacked messages stay until settled.
                store.delete_from(p.next_disk_seq);
            }
            store.delete(gone.iter().filter(|e| e.msg.persistent).map(|e| e.seq));
        }
        n
    }

    /// Takes up to `max` ready messages out of the queue for good (redrive); the caller forgets them from
    /// the store once they are safely elsewhere.
    pub fn take(&self, max: usize, now: u64) -> Vec<Entry> {
        let mut q = self.inner.lock();
        if !q.delayed.is_empty() {
            self.release_due(&mut q, now);
        }
        let mut out = Vec::new();
        while out.len() < max {
            if q.ready.len == 0 && q.paged.is_some() {
                self.refill(&mut q, now);
            }
            match q.ready.pop_front() {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }

    /// Puts back messages that `take` returned and that could not go anywhere.
    pub fn untake(&self, entries: Vec<Entry>) {
        let mut q = self.inner.lock();
        let n = entries.len();
        for e in entries {
            q.ready.insert_by_seq(e);
        }
        q.wake_waiters(n);
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
        q.delayed.clear();
        if let Some(store) = &self.store {
            store.delete_queue();
        }
        q.ready.drain();
        for c in q.consumers.drain(..) {
            c.signal.consumer_cancelled(c.id, c.tag.clone());
        }
        q.waiters.clear();
        q.active = None;
        n
    }

    /// Sends dead messages to the dead-letter exchange, or drops them when there is none. Called with no
    /// queue lock held.
    fn dead_letter(&self, dead: Vec<Dead>, now: u64) {
        if dead.is_empty() {
            return;
        }
        match (self.args.dead_letter_exchange.as_ref(), self.vhost.upgrade()) {
            (Some(_), Some(vhost)) => vhost.dead_letter(self, &dead, now),
            _ => {
                tracing::debug!(queue = %self.spec.name, n = dead.len(), "dropping dead messages (no dead-letter exchange)");
            }
        }
        let entries: Vec<Entry> = dead.into_iter().map(|d| d.entry).collect();
        self.forget(&entries);
    }
}

impl Inner {
    /// Messages ready for delivery, in memory, on disk or waiting out a retry delay.
    fn ready_count(&self) -> u32 {
        let paged = self
            .paged
            .as_ref()
            .map_or(0, |p| p.on_disk + p.transient.len() as u64);
        (self.ready.len as u64 + paged + self.delayed.len() as u64).min(u32::MAX as u64) as u32
    }

    fn register_waiter(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == id) {
            if !c.waiting {
                c.waiting = true;
                self.waiters.push_back(id);
            }
        }
    }

    fn wake(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.iter_mut().find(|c| c.id == id) {
            c.waiting = false;
            c.signal.consumer_ready(id);
        }
        self.waiters.retain(|w| *w != id);
    }

    /// Wakes up to `n` consumers that were waiting for messages: the active one under single active
    /// consumer, else highest consumer priority first, then longest waiting.
    fn wake_waiters(&mut self, mut n: usize) {
        if let Some(active) = self.active {
            if n > 0 && self.consumers.iter().any(|c| c.id == active && c.waiting) {
                self.wake(active);
            }
            return;
        }
        while n > 0 && !self.waiters.is_empty() {
            let best = self
                .waiters
                .iter()
                .enumerate()
                .filter_map(|(i, id)| {
                    self.consumers
                        .iter()
                        .find(|c| c.id == *id)
                        .map(|c| (i, c.priority))
                })
                .max_by_key(|(i, p)| (*p, std::cmp::Reverse(*i)));
            match best {
                Some((i, _)) => {
                    let id = self.waiters.remove(i).expect("index");
                    if let Some(c) = self.consumers.iter_mut().find(|c| c.id == id) {
                        c.waiting = false;
                        c.signal.consumer_ready(id);
                    }
                    n -= 1;
                }
                None => {
                    self.waiters.clear();
                }
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
        Queue::new(
            QueueSpec {
                name: "q".into(),
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: FieldTable::new(),
            },
            Weak::new(),
            0,
        )
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
            q.publish(m(b), 0).unwrap();
        }
        let sig = Arc::new(ConnSignal::new());
        q.add_consumer(1, ShortStr::from_static("t"), false, 0, sig, "/", 0)
            .unwrap();
        let mut out = vec![];
        q.pull(1, 2, true, 0, &mut out);
        assert_eq!(out.len(), 2);
        let second = out.pop().unwrap();
        q.requeue([second], 0);
        q.requeue(out, 0);
        let mut again = vec![];
        q.pull(1, 10, true, 0, &mut again);
        let bodies: Vec<_> = again.iter().map(|e| e.msg.body.clone()).collect();
        assert_eq!(bodies, vec!["a", "b", "c"]);
        assert!(again[0].redelivered && again[1].redelivered && !again[2].redelivered);
        assert_eq!(again[0].delivery_count, 1);
    }

    #[test]
    fn waiting_consumer_is_woken_once() {
        let q = q();
        let sig = Arc::new(ConnSignal::new());
        q.add_consumer(7, ShortStr::from_static("t"), false, 0, sig.clone(), "/", 0)
            .unwrap();
        let mut out = vec![];
        assert_eq!(q.pull(7, 10, true, 0, &mut out), 0);
        q.publish(m("x"), 0).unwrap();
        q.publish(m("y"), 0).unwrap();
        let mut ready = Vec::new();
        sig.take_ready(&mut ready);
        assert_eq!(ready, vec![7]);
        assert!(q
            .add_consumer(8, ShortStr::from_static("u"), true, 0, sig, "/", 0)
            .is_err());
    }
}
