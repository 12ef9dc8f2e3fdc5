//! A queue: its ready messages in order, its consumers, and what happens to messages that fail. The `Queue`
//! type coordinates; each policy is a small part beside it with its own tests:
//!
//! - `ready.rs`: ready messages by priority level, in seq order;
//! - `paging.rs`: the message store part of a durable queue (long queues live on disk, read back in batches);
//! - `retry.rs`: returned messages waiting out their retry delay;
//! - `expiry.rs`: message TTLs and the queue's own `x-expires`;
//! - `limits.rs`: length limits and overflow (and, later, flow control's per-queue bounds);
//! - `consumers.rs`: consumer selection (waiters, priorities, single active consumer, exclusive);
//! - `entry.rs`: entries and the dead letters an operation hands back.
//!
//! Queues are the unit of concurrency: each has its own lock, held only for short, non-async sections.
//! Delivery is pull-based: a connection task takes up to its consumer's credit from the queue under the lock
//! and writes the deliveries itself.
//!
//! Messages that die (rejected, expired, over a length limit, over the delivery limit) are collected under the
//! lock into the caller's `DeadLetters`; the caller hands them to `VHost::dead_letter` after the lock is
//! released. A queue never reaches up to its vhost, so no queue lock is ever held while another queue is
//! locked, and the queue module depends on nothing above it.

mod browse;
mod consumers;
mod entry;
mod expiry;
mod limits;
mod paging;
mod ready;
mod retry;
pub mod stream;
pub mod transient;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::{FieldTable, ShortStr};

use crate::error::AmqpError;
use crate::flow::QueueBound;
use crate::message::Message;
use crate::queue_args::QueueArgs;
use crate::signal::ConnSignal;
pub use crate::signal::{next_consumer_id, ConsumerId};
use crate::stats::QueueStats;
use crate::store::QueueStore;

pub use browse::{BrowseFrom, Browsed};
use consumers::Consumers;
pub use entry::{Dead, DeadLetters, DeathReason, Entry};
use expiry::Expiry;
use limits::{AtLimit, Limits};
use paging::Paged;
pub use paging::{MEM_MAX, PRESSURE_KEEP};
use ready::Ready;
use retry::Delayed;
use stream::StreamQueue;

/// What kind of queue this is: where its behaviour differs, the queue dispatches on its kind. A `quorum`
/// `x-queue-type` is accepted and served as classic; `stream` is a stream queue (`stream/`): an
/// append-only log that consumers replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Classic,
    Stream,
}

impl QueueKind {
    pub fn of(args: &FieldTable) -> QueueKind {
        match args.get("x-queue-type").and_then(protocol::FieldValue::as_str) {
            Some("stream") => QueueKind::Stream,
            _ => QueueKind::Classic,
        }
    }
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

/// How far ahead of the deliveries the stored delivered mark is written (`delivered_with_ack`).
const MARK_AHEAD: u64 = 1 << 16;

struct Inner {
    /// The in-memory head of the queue.
    ready: Ready,
    paged: Option<Paged>,
    delayed: Delayed,
    consumers: Consumers,
    expiry: Expiry,
    unacked: u64,
    next_seq: u64,
    deleted: bool,
    /// Highest seq recorded in the store as possibly delivered: written `MARK_AHEAD` ahead of the
    /// deliveries, so that the store is written once per `MARK_AHEAD` seqs, not once per delivery batch.
    delivered_mark: Option<u64>,
    /// Highest seq possibly delivered (the mark loaded at start counts): what a clean stop writes.
    delivered_top: Option<u64>,
    /// Connections throttled by this queue's flow bound, woken when it is under its low-water mark.
    flow_waiters: Vec<Arc<ConnSignal>>,
    /// Length limits in force: the arguments', or a policy's (`apply_args`).
    limits: Limits,
    /// The arguments in force (declared, merged with the queue's policy): delivery limit, retry, dead-letter
    /// target. `Queue::args` keeps what was declared.
    eff: QueueArgs,
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
    pub kind: QueueKind,
    /// A policy gave the queue a TTL, `expires` or retry (the timer must visit it).
    policy_timed: AtomicBool,
    /// Flow control: the bound on ready messages in memory while the queue has consumers.
    bound: QueueBound,
    /// Over the bound and not yet back under the low-water mark: publishers to it are throttled. Read
    /// without the lock by publishers; written under it.
    flow_over: AtomicBool,
    /// Where persistent messages of a durable queue are kept (None for non-durable queues and streams).
    store: Option<QueueStore>,
    /// A stream queue's log and consumers (`QueueKind::Stream`).
    stream: Option<StreamQueue>,
    /// Message counters for the metrics (relaxed atomics, no lock).
    pub stats: QueueStats,
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
    pub fn new(spec: QueueSpec, now: u64) -> Queue {
        Self::build(spec, None, None, now)
    }

    /// A durable queue whose persistent messages go to `store`. `recovered` describes what the store
    /// already holds for it (after a restart): those messages are read back lazily, in order.
    pub fn with_store(spec: QueueSpec, store: QueueStore, recovered: Option<Recovered>, now: u64) -> Queue {
        Self::build(spec, Some(store), recovered, now)
    }

    fn build(spec: QueueSpec, store: Option<QueueStore>, recovered: Option<Recovered>, now: u64) -> Queue {
        let args = QueueArgs::parse(&spec.arguments);
        let mut inner = Inner {
            ready: Ready::new(args.max_priority),
            paged: None,
            delayed: Delayed::default(),
            consumers: Consumers::new(args.single_active_consumer),
            expiry: Expiry::new(&args, now),
            unacked: 0,
            next_seq: 0,
            deleted: false,
            delivered_mark: store.as_ref().and_then(|s| s.delivered_mark()),
            delivered_top: store.as_ref().and_then(|s| s.delivered_mark()),
            flow_waiters: Vec::new(),
            limits: Limits::new(&args),
            eff: args.clone(),
        };
        if let Some(r) = recovered {
            inner.next_seq = r.last_seq + 1;
            if r.count > 0 {
                inner.paged = Some(Paged::recovered(r.first_seq, r.count));
                inner.expiry.note_expiring();
            }
        }
        if let Some(mark) = inner.delivered_mark {
            // Never reuse a seq at or below the delivered mark: a new message would read as redelivered.
            inner.next_seq = inner.next_seq.max(mark + 1);
        }
        let (kind, stream, store) = match (QueueKind::of(&spec.arguments), store) {
            (QueueKind::Stream, Some(qs)) => {
                let s = StreamQueue::new(qs.stream_store(), &spec.arguments);
                (QueueKind::Stream, Some(s), None)
            }
            (_, store) => (QueueKind::Classic, None, store),
        };
        Queue {
            kind,
            stream,
            policy_timed: AtomicBool::new(false),
            bound: crate::flow::queue_bound(),
            flow_over: AtomicBool::new(false),
            spec,
            args,
            store,
            stats: QueueStats::default(),
            inner: Mutex::new(inner),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.spec.name
    }

    /// Appends a message at the tail and wakes one waiting consumer. Returns the store ticket that must be
    /// durable before the publish is confirmed (0 when nothing was written). Messages that die on the way
    /// (TTL 0, reject-publish-dlx, drop-head) go to `dead`.
    pub fn publish(&self, msg: Arc<Message>, now: u64, dead: &mut DeadLetters) -> Result<u64, Rejected> {
        if let Some(s) = &self.stream {
            let r = s.publish(&msg, now);
            if r.is_ok() {
                QueueStats::add(&self.stats.published, 1);
            }
            return r;
        }
        let mut guard = self.inner.lock();
        let q = &mut *guard;
        if q.deleted {
            return Err(Rejected::Deleted);
        }
        let expires_at = q.expiry.at_publish(&msg, now, || q.consumers.any_waiting());
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
        QueueStats::add(&self.stats.published, 1);
        if entry.is_expired(now) {
            // x-message-ttl 0 (or an expiration of 0) with nobody to take it now: it dies at once.
            dead.push(entry, DeathReason::Expired);
            return Ok(0);
        }
        if q.limits.is_bounded() {
            match q
                .limits
                .on_publish(q.ready_count() as u64, q.ready.bytes(), entry.msg.size())
            {
                AtLimit::Admit => {}
                AtLimit::Reject => return Err(Rejected::Full),
                AtLimit::RejectAndDeadLetter => {
                    dead.push(entry, DeathReason::Maxlen);
                    return Err(Rejected::Full);
                }
            }
        }
        let mut ticket = 0;
        let persist = match &self.store {
            Some(store) if entry.msg.persistent => {
                match store.append(seq, &entry.msg, expires_at) {
                    Ok(t) => ticket = t,
                    Err(e) => {
                        tracing::error!(queue = %self.spec.name, error = %e, "store append failed");
                        return Err(Rejected::Store);
                    }
                }
                true
            }
            _ => false,
        };
        if expires_at.is_some() {
            q.expiry.note_expiring();
        }
        let prioritised = self.args.max_priority.is_some();
        match &mut q.paged {
            Some(p) => p.admit(entry, persist, &self.spec.name),
            None if persist && !prioritised && q.ready.len() >= Self::persistent_page_at() => {
                q.paged = Some(Paged::starting_with(seq));
            }
            // Transient messages page too (to the queue's spill, never recovered): a long queue of them
            // costs memory per spill file, not per message. With consumers, the flow bound keeps the
            // backlog in memory small already: paging starts only past it.
            None if !prioritised
                && q.ready.len() >= self.transient_page_at(&q.consumers)
                && transient::spills() =>
            {
                let mut p = Paged::starting_transient(seq);
                p.admit(entry, false, &self.spec.name);
                q.paged = Some(p);
            }
            None => q.ready.push_back(entry),
        }
        if q.limits.is_bounded() {
            // drop-head: the oldest messages make room.
            while q.limits.is_over(q.ready_count() as u64, q.ready.bytes()) {
                match self.next_ready(q, now) {
                    Some(e) => dead.push(e, DeathReason::Maxlen),
                    None => break,
                }
            }
        }
        q.consumers.wake_waiters(1);
        // Flow control: ready messages beyond what the consumers take, counted wherever they are (in memory
        // or paged to disk: a queue that pages would otherwise never reach its bound; the bytes are those in
        // memory). A queue without consumers is not bounded here (a batch producer filling a queue for later
        // is not throttled forever): paging and the memory alarm bound it.
        if !q.consumers.is_empty()
            && !self.flow_over.load(Ordering::Relaxed)
            && self.bound.exceeded(q.ready_count() as u64, q.ready.bytes())
        {
            self.flow_over.store(true, Ordering::Relaxed);
        }
        Ok(ticket)
    }

    /// Ready messages in memory past which persistent messages stay on disk only: `MEM_MAX`, or
    /// `PRESSURE_KEEP` while memory is near the watermark (`flow::memory_pressure`).
    fn persistent_page_at() -> usize {
        if crate::flow::memory_pressure() {
            PRESSURE_KEEP
        } else {
            MEM_MAX
        }
    }

    /// Ready messages in memory past which transient messages page to disk: `PRESSURE_KEEP` while memory
    /// is near the watermark; else `MEM_MAX` without consumers, and with consumers twice the flow bound.
    /// With consumers the flow bound throttles publishers first; the queue goes a little past it before
    /// they stop (one message per publishing connection), and paging there would send every later message
    /// through the spill until the publisher pauses long enough for the consumers to read the spill empty
    /// (a write and a read per message: S2 lost a quarter of its rate to it before this margin).
    fn transient_page_at(&self, consumers: &Consumers) -> usize {
        if crate::flow::memory_pressure() {
            PRESSURE_KEEP
        } else if consumers.is_empty() {
            MEM_MAX
        } else {
            let bound = self.bound.max_messages.min(usize::MAX as u64 / 2) as usize;
            MEM_MAX.max(bound * 2)
        }
    }

    /// Whether publishers to this queue are throttled (over its bound, not yet under its low-water mark).
    pub fn flow_over(&self) -> bool {
        self.flow_over.load(Ordering::Relaxed)
    }

    /// A connection throttled by this queue waits for it: `signal` is woken (`flow_released`) once the queue
    /// is under its low-water mark. Returns false if it is not throttling now (nothing to wait for).
    pub fn flow_wait(&self, signal: &Arc<ConnSignal>) -> bool {
        let mut q = self.inner.lock();
        self.flow_check(&mut q);
        if !self.flow_over.load(Ordering::Relaxed) {
            return false;
        }
        if !q.flow_waiters.iter().any(|s| Arc::ptr_eq(s, signal)) {
            q.flow_waiters.push(signal.clone());
        }
        true
    }

    /// Releases the throttled publishers once the queue is under its low-water mark, has no consumers left
    /// or is deleted. Called under the lock wherever ready messages leave.
    fn flow_check(&self, q: &mut Inner) {
        if !self.flow_over.load(Ordering::Relaxed) {
            return;
        }
        if q.deleted
            || q.consumers.is_empty()
            || self
                .bound
                .below_low_water(q.ready_count() as u64, q.ready.bytes())
        {
            self.flow_over.store(false, Ordering::Relaxed);
            for s in q.flow_waiters.drain(..) {
                s.flow_released();
            }
        }
    }

    /// The next ready message, read back from the store first if the in-memory head ran dry.
    fn next_ready(&self, q: &mut Inner, now: u64) -> Option<Entry> {
        if q.ready.is_empty() && q.paged.is_some() {
            self.refill(q, now);
        }
        q.ready.pop_front()
    }

    /// Moves the next batch of paged-out messages back into memory (or into the retry scheduler, for those
    /// still waiting out a delay).
    fn refill(&self, q: &mut Inner, now: u64) {
        let Some(p) = q.paged.as_mut() else {
            return;
        };
        let Some(batch) = p.read_back(self.store.as_ref(), &self.spec.name) else {
            return;
        };
        if p.is_done() {
            q.paged = None;
        }
        for e in batch {
            match e.not_before {
                Some(t) if t > now => q.delayed.insert(t, e),
                _ => q.ready.push_back(e),
            }
        }
    }

    /// Hands up to `max` ready messages to `take`, dead-lettering the expired ones met on the way (never
    /// delivered). Returns how many were taken.
    fn take_live(
        &self,
        q: &mut Inner,
        max: usize,
        now: u64,
        dead: &mut DeadLetters,
        mut take: impl FnMut(Entry),
    ) -> usize {
        if !q.delayed.is_empty() {
            q.delayed.release_due(now, &mut q.ready);
        }
        let mut n = 0;
        while n < max {
            let Some(e) = self.next_ready(q, now) else { break };
            if e.is_expired(now) {
                dead.push(e, DeathReason::Expired);
                continue;
            }
            take(e);
            n += 1;
        }
        n
    }

    /// Counts `taken` as unacked and remembers in the store how far deliveries may have gone, so that a crash
    /// brings them back redelivered. The mark is written `MARK_AHEAD` seqs ahead of the deliveries: one store
    /// write per `MARK_AHEAD` seqs (each write made the flusher's round sync the definitions store too,
    /// about a third of the persistent path's cost). The write is durable after the flusher's next round, and
    /// the delivery does not wait for it: after a crash, start-up flags every recovered message
    /// (`QueueStore::raise_delivered_mark_after_crash`), as RabbitMQ does. A clean stop writes the exact mark
    /// (`settle_delivered_mark`).
    fn delivered_with_ack(&self, q: &mut Inner, taken: &[Entry]) {
        q.unacked += taken.len() as u64;
        let Some(store) = &self.store else { return };
        let top = taken.iter().filter(|e| e.msg.persistent).map(|e| e.seq).max();
        if let Some(top) = top {
            if q.delivered_top.is_none_or(|t| top > t) {
                q.delivered_top = Some(top);
            }
            if q.delivered_mark.is_none_or(|m| top > m) {
                let mark = top.saturating_add(MARK_AHEAD);
                q.delivered_mark = Some(mark);
                store.mark_delivered(mark);
            }
        }
    }

    /// On a clean stop (no delivery can follow): the stored mark becomes the highest seq possibly delivered,
    /// so that messages that never left do not come back flagged redelivered.
    pub fn settle_delivered_mark(&self) {
        let Some(store) = &self.store else { return };
        let mut q = self.inner.lock();
        if q.delivered_mark.is_some() && q.delivered_mark != q.delivered_top {
            if let Some(top) = q.delivered_top {
                store.mark_delivered(top);
            }
            q.delivered_mark = q.delivered_top;
        }
    }

    /// Takes up to `max` ready messages for consumer `id`. With `ack`, they count as unacked until acked or
    /// requeued. If the queue ran dry before `max`, the consumer is remembered as waiting and is woken
    /// through its connection signal when a message arrives. Expired messages met on the way go to `dead`.
    pub fn pull(
        &self,
        id: ConsumerId,
        max: usize,
        ack: bool,
        now: u64,
        out: &mut Vec<Entry>,
        dead: &mut DeadLetters,
    ) -> usize {
        if let Some(s) = &self.stream {
            let n = s.pull(id, max, out);
            QueueStats::add(&self.stats.delivered, n as u64);
            return n;
        }
        let mut guard = self.inner.lock();
        let q = &mut *guard;
        if !q.consumers.may_take(id) {
            // Single active consumer: only the active one takes messages.
            return 0;
        }
        let Some(my_priority) = q.consumers.priority(id) else {
            return 0;
        };
        // Consumer priorities: a waiting consumer of higher priority goes first.
        if let Some(better) = q.consumers.better_waiting(id, my_priority) {
            if !q.ready.is_empty() || q.paged.is_some() {
                q.consumers.wake(better);
                q.consumers.register_waiter(id);
                return 0;
            }
        }
        let n = self.take_live(q, max, now, dead, |e| out.push(e));
        QueueStats::add(&self.stats.delivered, n as u64);
        if ack {
            self.delivered_with_ack(q, &out[out.len() - n..]);
        }
        self.flow_check(q);
        if n < max {
            q.consumers.register_waiter(id);
        } else {
            q.consumers.unregister_waiter(id);
        }
        n
    }

    /// Consumer `id` was scheduled to pull but has no credit (its window, or its channel's shared one, is
    /// full): it stops waiting, and if messages are ready the wake-up it may have been given goes to the
    /// next waiting consumer instead of being lost. It is scheduled again when its credit comes back.
    pub fn decline(&self, id: ConsumerId) {
        if self.stream.is_some() {
            return;
        }
        let mut q = self.inner.lock();
        q.consumers.unregister_waiter(id);
        if q.ready_count() > 0 {
            q.consumers.wake_waiters(1);
        }
    }

    /// A stream queue's log and consumers (None for other queues): the channel writes stream deliveries
    /// straight from its reader (`channel/stream.rs`).
    pub fn stream(&self) -> Option<&StreamQueue> {
        self.stream.as_ref()
    }

    /// basic.get: takes the head message, if any, and the number of ready messages left.
    pub fn get(&self, ack: bool, now: u64, dead: &mut DeadLetters) -> Option<(Entry, u32)> {
        if self.stream.is_some() {
            return None; // refused by the channel (basic.get is not for streams)
        }
        let mut guard = self.inner.lock();
        let q = &mut *guard;
        q.expiry.touch(now);
        let mut got = None;
        self.take_live(q, 1, now, dead, |e| got = Some(e));
        self.flow_check(q);
        let e = got?;
        QueueStats::add(&self.stats.delivered, 1);
        if ack {
            self.delivered_with_ack(q, std::slice::from_ref(&e));
        }
        Some((e, q.ready_count()))
    }

    /// Settles unacked messages for good (ack): they leave the store.
    pub fn settle<'a>(&self, entries: impl ExactSizeIterator<Item = &'a Entry> + Clone) {
        self.settle_acked(entries.map(|e| (e, None)));
    }

    /// `settle`, knowing which consumer each delivery went to: a stream keeps its messages and records the
    /// consumer's offset if it tracks one.
    pub fn settle_acked<'a>(
        &self,
        acked: impl ExactSizeIterator<Item = (&'a Entry, Option<ConsumerId>)> + Clone,
    ) {
        if let Some(s) = &self.stream {
            QueueStats::add(&self.stats.acked, acked.len() as u64);
            s.acked(acked.map(|(e, c)| (e.seq, c)));
            return;
        }
        let entries = acked.map(|(e, _)| e);
        {
            let mut q = self.inner.lock();
            q.unacked = q.unacked.saturating_sub(entries.len() as u64);
        }
        QueueStats::add(&self.stats.acked, entries.len() as u64);
        self.delete_stored(entries);
    }

    /// Rejected without requeue: they go to `dead` (reason `rejected`), to be dead-lettered or dropped.
    pub fn reject(&self, entries: Vec<Entry>, dead: &mut DeadLetters) {
        if self.stream.is_some() {
            return; // a stream keeps its messages: a reject only gives credit back
        }
        {
            let mut q = self.inner.lock();
            q.unacked = q.unacked.saturating_sub(entries.len() as u64);
        }
        for entry in entries {
            dead.push(entry, DeathReason::Rejected);
        }
    }

    /// Removes delivered messages from the store (no-ack deliveries, settled and dead-lettered messages).
    pub fn forget<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) {
        self.delete_stored(entries.into_iter());
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
    /// raised. Over the delivery limit they go to `dead` instead; with retry they wait out their delay.
    pub fn requeue(&self, entries: impl IntoIterator<Item = Entry>, now: u64, dead: &mut DeadLetters) {
        if self.stream.is_some() {
            return; // nothing left a stream: nothing goes back
        }
        let mut guard = self.inner.lock();
        let q = &mut *guard;
        let mut n = 0usize;
        let mut back = 0usize;
        for mut e in entries {
            n += 1;
            if q.deleted {
                continue;
            }
            e.redelivered = true;
            e.delivery_count = e.delivery_count.saturating_add(1);
            if q.eff.delivery_limit.is_some_and(|limit| e.delivery_count > limit) {
                dead.push(e, DeathReason::DeliveryLimit);
                continue;
            }
            e.not_before = q
                .eff
                .retry
                .map(|r| now.saturating_add(r.delay_ms(e.delivery_count)));
            if let (Some(store), true) = (&self.store, e.msg.persistent) {
                store.set_state(e.seq, e.delivery_count, true, e.not_before);
            }
            match e.not_before {
                Some(t) => q.delayed.insert(t, e),
                None => {
                    q.ready.insert_by_seq(e);
                    back += 1;
                }
            }
        }
        q.unacked = q.unacked.saturating_sub(n as u64);
        q.consumers.wake_waiters(back);
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
        q.consumers
            .add(id, tag, exclusive, priority, signal)
            .map_err(|_| {
                AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.spec.name, vhost
                ))
            })?;
        q.expiry.touch(now);
        Ok(())
    }

    /// Registers a stream consumer reading from where `spec` says.
    pub fn add_stream_consumer(
        &self,
        id: ConsumerId,
        tag: ShortStr,
        signal: Arc<ConnSignal>,
        spec: stream::ConsumeSpec,
    ) -> Result<(), AmqpError> {
        let Some(s) = &self.stream else {
            return Err(AmqpError::internal("not a stream"));
        };
        s.add_consumer(id, tag, signal, spec)
            .map_err(|e| AmqpError::internal(format!("stream reader: {e}")))
    }

    pub fn remove_consumer(&self, id: ConsumerId, now: u64) -> ConsumerRemoved {
        if let Some(s) = &self.stream {
            s.remove_consumer(id);
            return ConsumerRemoved {
                auto_delete_now: false,
            };
        }
        let mut q = self.inner.lock();
        q.consumers.remove(id);
        // The consumer may have been woken for messages it will never take (a requeue just before it left):
        // whoever waits gets a chance at them.
        let ready = q.ready_count() as usize;
        if ready > 0 {
            q.consumers.wake_waiters(ready);
        }
        q.expiry.touch(now);
        self.flow_check(&mut q);
        ConsumerRemoved {
            auto_delete_now: self.spec.auto_delete
                && q.consumers.had_consumer()
                && q.consumers.is_empty()
                && !q.deleted,
        }
    }

    /// Marks the queue used (a redeclare), for `x-expires`.
    pub fn touch(&self, now: u64) {
        self.inner.lock().expiry.touch(now);
    }

    /// (ready messages, consumers), as declare-ok reports them.
    pub fn counts(&self) -> (u32, u32) {
        if let Some(s) = &self.stream {
            return s.counts();
        }
        let q = self.inner.lock();
        (q.ready_count(), q.consumers.len() as u32)
    }

    /// (ready, unacked, consumers) under one lock, for the metrics.
    pub fn depth(&self) -> (u32, u64, u32) {
        let q = self.inner.lock();
        (q.ready_count(), q.unacked, q.consumers.len() as u32)
    }

    /// Messages delivered and not yet settled.
    pub fn unacked_count(&self) -> u64 {
        self.inner.lock().unacked
    }

    /// The timer: expires messages at the heads (into `dead`), releases due retries, reports an unused
    /// `x-expires` queue.
    pub fn tick(&self, now: u64, dead: &mut DeadLetters) -> Tick {
        if let Some(s) = &self.stream {
            s.tick(now);
            return Tick::default();
        }
        let mut guard = self.inner.lock();
        let q = &mut *guard;
        if q.deleted {
            return Tick::default();
        }
        if !q.delayed.is_empty() {
            let n = q.delayed.release_due(now, &mut q.ready);
            q.consumers.wake_waiters(n);
        }
        if q.expiry.heads_may_expire() {
            if q.ready.is_empty() && q.paged.is_some() {
                self.refill(q, now);
            }
            q.ready.drop_expired_heads(now, dead);
        }
        self.flow_check(q);
        Tick {
            expired: q.expiry.unused_too_long(now, !q.consumers.is_empty()),
        }
    }

    /// Whether the timer has anything to look at for this queue.
    pub fn needs_tick(&self) -> bool {
        if let Some(s) = &self.stream {
            return s.needs_tick();
        }
        if self.args.timed() || self.policy_timed.load(Ordering::Relaxed) {
            return true;
        }
        let q = self.inner.lock();
        q.expiry.has_expiring() || !q.delayed.is_empty()
    }

    /// The dead-letter exchange and routing key in force (declared, or from a policy).
    pub fn dead_letter_target(&self) -> (Option<Arc<str>>, Option<Arc<str>>) {
        let q = self.inner.lock();
        (
            q.eff.dead_letter_exchange.clone(),
            q.eff.dead_letter_routing_key.clone(),
        )
    }

    /// A policy changed what is in force: `eff` is the declared arguments merged with the policy
    /// (`policy.rs`). Length limits, TTL, `expires`, delivery limit, retry and dead-lettering change at once;
    /// a queue over its new length limit drops (drop-head) its oldest messages into `dead`, as RabbitMQ does
    /// when a max-length policy lands. Priorities and single active consumer stay as declared.
    pub fn apply_args(&self, eff: QueueArgs, now: u64, dead: &mut DeadLetters) {
        let mut guard = self.inner.lock();
        let q = &mut *guard;
        self.policy_timed.store(eff.timed(), Ordering::Relaxed);
        q.limits = Limits::new(&eff);
        q.expiry.set_ttls(eff.message_ttl, eff.expires);
        q.eff = eff;
        if q.limits.is_bounded() && !q.deleted && q.eff.overflow == crate::queue_args::Overflow::DropHead {
            while q.limits.is_over(q.ready_count() as u64, q.ready.bytes()) {
                match self.next_ready(q, now) {
                    Some(e) => dead.push(e, DeathReason::Maxlen),
                    None => break,
                }
            }
        }
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut q = self.inner.lock();
        let n = q.ready_count();
        let mut gone = q.ready.drain();
        gone.extend(q.delayed.take_all());
        let paged = q.paged.take();
        self.flow_check(&mut q);
        drop(q);
        if let Some(store) = &self.store {
            if let Some(p) = paged {
                // Everything not yet read back goes; unacked messages stay until settled.
                store.delete_from(p.next_disk_seq());
            }
            store.delete(gone.iter().filter(|e| e.msg.persistent).map(|e| e.seq));
        }
        n
    }

    /// Takes up to `max` ready messages out of the queue for good (redrive), expired or not; the caller
    /// forgets them from the store once they are safely elsewhere.
    pub fn take(&self, max: usize, now: u64) -> Vec<Entry> {
        if self.stream.is_some() {
            return Vec::new(); // a stream's messages are not moved out (retention drops them)
        }
        let mut guard = self.inner.lock();
        let q = &mut *guard;
        if !q.delayed.is_empty() {
            q.delayed.release_due(now, &mut q.ready);
        }
        let mut out = Vec::new();
        while out.len() < max {
            match self.next_ready(q, now) {
                Some(e) => out.push(e),
                None => break,
            }
        }
        self.flow_check(q);
        out
    }

    /// Puts back messages that `take` returned and that could not go anywhere.
    pub fn untake(&self, entries: Vec<Entry>) {
        let mut q = self.inner.lock();
        let n = entries.len();
        for e in entries {
            q.ready.insert_by_seq(e);
        }
        q.consumers.wake_waiters(n);
    }

    /// Marks the queue deleted and tells every consumer's connection that its consumer is gone.
    /// Returns the number of ready messages it held.
    pub fn mark_deleted(&self) -> u32 {
        if let Some(s) = &self.stream {
            return s.mark_deleted();
        }
        let mut guard = self.inner.lock();
        let q = &mut *guard;
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
        q.consumers.cancel_all();
        self.flow_check(q);
        n
    }
}

impl Inner {
    /// Messages ready for delivery, in memory, on disk or waiting out a retry delay.
    fn ready_count(&self) -> u32 {
        let paged = self.paged.as_ref().map_or(0, |p| p.count());
        (self.ready.len() as u64 + paged + self.delayed.len() as u64).min(u32::MAX as u64) as u32
    }
}

#[cfg(test)]
mod test_support {
    use std::sync::Arc;

    use bytes::Bytes;
    use protocol::{BasicProperties, RawProperties, ShortStr};

    use super::Entry;
    use crate::message::Message;

    /// A ready entry with `seq`, priority property `priority` and `body`.
    pub fn entry(seq: u64, priority: u8, body: &'static str) -> Entry {
        let props = BasicProperties {
            priority: (priority > 0).then_some(priority),
            ..Default::default()
        };
        Entry {
            seq,
            msg: Arc::new(Message::new(
                ShortStr::from_static(""),
                ShortStr::from_static("q"),
                RawProperties::from_properties(&props),
                Bytes::from_static(body.as_bytes()),
            )),
            redelivered: false,
            delivery_count: 0,
            expires_at: None,
            not_before: None,
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
        let mut dead = DeadLetters::new();
        for b in ["a", "b", "c"] {
            q.publish(m(b), 0, &mut dead).unwrap();
        }
        let sig = Arc::new(ConnSignal::new());
        q.add_consumer(1, ShortStr::from_static("t"), false, 0, sig, "/", 0)
            .unwrap();
        let mut out = vec![];
        q.pull(1, 2, true, 0, &mut out, &mut dead);
        assert_eq!(out.len(), 2);
        let second = out.pop().unwrap();
        q.requeue([second], 0, &mut dead);
        q.requeue(out, 0, &mut dead);
        let mut again = vec![];
        q.pull(1, 10, true, 0, &mut again, &mut dead);
        let bodies: Vec<_> = again.iter().map(|e| e.msg.body.clone()).collect();
        assert_eq!(bodies, vec!["a", "b", "c"]);
        assert!(again[0].redelivered && again[1].redelivered && !again[2].redelivered);
        assert_eq!(again[0].delivery_count, 1);
        assert!(dead.is_empty());
    }

    #[test]
    fn waiting_consumer_is_woken_once() {
        let q = q();
        let mut dead = DeadLetters::new();
        let sig = Arc::new(ConnSignal::new());
        q.add_consumer(7, ShortStr::from_static("t"), false, 0, sig.clone(), "/", 0)
            .unwrap();
        let mut out = vec![];
        assert_eq!(q.pull(7, 10, true, 0, &mut out, &mut dead), 0);
        q.publish(m("x"), 0, &mut dead).unwrap();
        q.publish(m("y"), 0, &mut dead).unwrap();
        let mut ready = Vec::new();
        sig.take_ready(&mut ready);
        assert_eq!(ready, vec![7]);
        assert!(q
            .add_consumer(8, ShortStr::from_static("u"), true, 0, sig, "/", 0)
            .is_err());
    }
}
