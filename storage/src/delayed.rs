//! Delayed messages (the `x-delayed-message` exchange): a durable log ordered by due time, kept in the
//! segment log in time *buckets*.
//!
//! A bucket holds the messages due in `[start, start + width)` of one vhost; it is a segment-log "queue"
//! of its own (id from the queue-id counter, directory `messages/<id>/`, its definition copy in
//! `queue.def`), recorded in sled under `[0x21][id u32 BE]`. The width grows with the distance to the due
//! time (about 1/16 of it, from ~1 s to ~70 min), so a few dozen buckets cover any spread of due times
//! and memory is per bucket, not per message: a bucket that is not loaded costs one small entry here.
//!
//! A bucket is *loaded* its width (at least `LOOKAHEAD_MS`) before its start: its messages are read back
//! once; a bucket at most `HEAP_WIDTH_MS` wide goes into an in-memory heap ordered by due time, a wider
//! one is written again into finer buckets ("cascaded"), like a hierarchical timing wheel. So the heap
//! holds only what falls due in the next few seconds, and a burst of messages due together is in memory
//! before it is due. The caller takes
//! due messages (`take_due`), routes them, and reports the store ticket of their enqueues (`released`);
//! a message's record is acked in its bucket only once that ticket is durable (a cascaded one once its
//! copy is), so a crash at any moment loses nothing — at worst a message is released twice. A loaded
//! bucket whose messages are all acked is removed, giving its disk space back.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::{Condvar, Mutex};

use crate::flusher::TicketState;
use crate::records::{QueueRecord, StoredMessage};
use crate::{codec, keys, Result, Store, StoreError};

/// The vhost field of a bucket's queue record (not a valid vhost name: the broker never sees it).
pub const BUCKET_VHOST: &str = "\u{0}delayed";
/// Finest bucket width (ms).
pub const MIN_WIDTH_MS: u64 = 1 << 10;
/// Coarsest bucket width (ms, ~70 min).
pub const MAX_WIDTH_MS: u64 = 1 << 22;
/// A bucket is loaded this long before its start, or its width before, whichever is longer.
pub const LOOKAHEAD_MS: u64 = 1_000;
/// A loaded bucket at most this wide goes into memory whole; a wider one is cascaded into finer buckets.
pub const HEAP_WIDTH_MS: u64 = 1 << 13;

/// When a bucket is loaded: its width (at least `LOOKAHEAD_MS`) before its start, so that reading it and
/// cascading it are done before its first message is due.
fn load_at(start: u64, width: u64) -> u64 {
    start.saturating_sub(width.max(LOOKAHEAD_MS))
}

/// The bucket width for a message due `distance` ms from now: about 1/16 of the distance.
pub fn width_for(distance: u64) -> u64 {
    let mut w = MIN_WIDTH_MS;
    while w.saturating_mul(16) < distance && w < MAX_WIDTH_MS {
        w *= 2;
    }
    w
}

fn bucket_key(id: u32) -> [u8; 5] {
    keys::queue_prefix(keys::DELAYED_BUCKET, id)
}

/// A bucket's identity, kept in its record's `arguments`: `[start u64 BE][width u64 BE][vhost utf-8]`.
fn bucket_record(id: u32, vhost: &str, start: u64, width: u64) -> QueueRecord {
    let mut arguments = Vec::with_capacity(16 + vhost.len());
    arguments.extend_from_slice(&start.to_be_bytes());
    arguments.extend_from_slice(&width.to_be_bytes());
    arguments.extend_from_slice(vhost.as_bytes());
    QueueRecord {
        id,
        vhost: BUCKET_VHOST.into(),
        name: format!("bucket-{id}"),
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments,
    }
}

/// (vhost, start, width) of a bucket record.
fn parse_bucket(r: &QueueRecord) -> Option<(String, u64, u64)> {
    let a = &r.arguments;
    if a.len() < 16 {
        return None;
    }
    let start = crate::be::u64_at(a, 0);
    let width = crate::be::u64_at(a, 8);
    Some((String::from_utf8_lossy(&a[16..]).into_owned(), start, width))
}

/// The bucket records of the store (all vhosts), for `Store::open`'s list of known message directories.
pub(crate) fn bucket_records(db: &sled::Db) -> Result<Vec<QueueRecord>> {
    crate::store::list_records(db, keys::DELAYED_BUCKET, "delayed bucket")
}

pub(crate) fn is_bucket(r: &QueueRecord) -> bool {
    r.vhost == BUCKET_VHOST
}

pub(crate) fn bucket_record_key(id: u32) -> Vec<u8> {
    bucket_key(id).to_vec()
}

/// A message taken from the log when due.
#[derive(Debug, Clone)]
pub struct DueMessage {
    pub due_ms: u64,
    pub msg: StoredMessage,
    bucket: u32,
    seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct HeapKey {
    due: u64,
    bucket: u32,
    seq: u64,
}

struct Bucket {
    start: u64,
    width: u64,
    next_seq: u64,
    loaded: bool,
    /// Records not yet acked.
    live: u64,
}

#[derive(Default)]
struct Inner {
    buckets: HashMap<u32, Bucket>,
    /// Buckets not loaded yet, by load time (`load_at`).
    unloaded: BTreeMap<(u64, u32), ()>,
    /// Open for appends: (start, width) -> id.
    by_span: HashMap<(u64, u64), u32>,
    heap: BinaryHeap<Reverse<HeapKey>>,
    held: HashMap<(u32, u64), StoredMessage>,
    /// Records to ack once the ticket is durable: (ticket, bucket, seq).
    pending_acks: Vec<(u64, u32, u64)>,
}

/// How soon after releasing messages the release looks again to ack their records (ms).
pub const ACK_LOOK_MS: u64 = 5;

/// Wakes the release (`DelayedWaker::sleep_until`) when a message is held for earlier than it planned
/// to look again. One per store: every vhost's log shares it, as one thread releases them all.
#[derive(Default)]
pub(crate) struct DelayedWake {
    st: Mutex<WakeState>,
    cv: Condvar,
}

#[derive(Default)]
struct WakeState {
    /// The earliest due time held since the release last woke.
    earliest: Option<u64>,
    /// While the release sleeps: when it will wake.
    sleeping_until: Option<u64>,
    /// The store is closing: the release does not sleep any more.
    closed: bool,
}

/// The release thread's handle on its store's `DelayedWake` (`Store::delayed_waker`); it does not keep the
/// store open.
#[derive(Clone)]
pub struct DelayedWaker(pub(crate) std::sync::Arc<DelayedWake>);

impl DelayedWaker {
    /// Sleeps until `until` (wall-clock ms, as `now` reads it), or less if a `DelayedLog::hold` since this
    /// call last returned is due earlier, or until the store closes. `DelayedLog::next_wake` tells `until`.
    pub fn sleep_until(&self, until: u64, now: impl Fn() -> u64) {
        self.0.sleep_until(until, now)
    }
}

impl DelayedWake {
    /// A message was held until `due`.
    pub(crate) fn held(&self, due: u64) {
        let mut s = self.st.lock();
        if s.earliest.is_some_and(|e| e <= due) {
            return;
        }
        s.earliest = Some(due);
        if s.sleeping_until.is_some_and(|t| due < t) {
            self.cv.notify_all();
        }
    }

    /// Sleeps until `until` (ms on `now`'s clock), or until the earliest message held since the last
    /// return, if that is earlier. Holds are recorded from one return to the next, so one made while the
    /// caller looked at the logs (after it computed `until`) is not missed.
    pub(crate) fn sleep_until(&self, until: u64, now: impl Fn() -> u64) {
        use std::time::{Duration, Instant};
        let mut s = self.st.lock();
        // Also bounded by the monotonic clock: a wall clock set back does not stretch the sleep (acks of
        // released records, bucket loads would wait for it).
        let deadline = Instant::now() + Duration::from_millis(until.saturating_sub(now()));
        while !s.closed {
            let target = s.earliest.map_or(until, |e| e.min(until));
            let t = now();
            let left = deadline.saturating_duration_since(Instant::now());
            if t >= target || left.is_zero() {
                break;
            }
            s.sleeping_until = Some(target);
            self.cv
                .wait_for(&mut s, Duration::from_millis(target - t).min(left));
        }
        s.sleeping_until = None;
        s.earliest = None;
    }

    pub(crate) fn close(&self) {
        self.st.lock().closed = true;
        self.cv.notify_all();
    }
}

/// Counters of a vhost's delayed log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DelayedStats {
    /// Messages held (not released yet).
    pub held: u64,
    /// Buckets on disk.
    pub buckets: u64,
    /// Messages in the in-memory heap (due within the look-ahead).
    pub in_memory: u64,
    /// Messages released since start.
    pub released: u64,
    /// Messages written again into a finer bucket since start.
    pub cascaded: u64,
}

/// One vhost's delayed messages.
pub struct DelayedLog {
    store: Store,
    vhost: String,
    inner: Mutex<Inner>,
    released: AtomicU64,
    cascaded: AtomicU64,
}

impl DelayedLog {
    /// Opens the delayed log of `vhost` (its buckets from the store: O(buckets), nothing is read).
    pub fn open(store: &Store, vhost: &str) -> Result<DelayedLog> {
        let records = store.sh().sled.read(|db| Ok(bucket_records(db)))??;
        let mut inner = Inner::default();
        for r in records {
            let Some((v, start, width)) = parse_bucket(&r) else {
                tracing::error!(bucket = r.id, "malformed delayed bucket record: ignored");
                continue;
            };
            if v != vhost {
                continue;
            }
            let live = store.count_messages(r.id)?;
            let next_seq = store.queue_bounds(r.id)?.map_or(1, |(_, last)| last + 1);
            inner.buckets.insert(
                r.id,
                Bucket {
                    start,
                    width,
                    next_seq,
                    loaded: false,
                    live,
                },
            );
            inner.unloaded.insert((load_at(start, width), r.id), ());
            inner.by_span.insert((start, width), r.id);
        }
        Ok(DelayedLog {
            store: store.clone(),
            vhost: vhost.to_string(),
            inner: Mutex::new(inner),
            released: AtomicU64::new(0),
            cascaded: AtomicU64::new(0),
        })
    }

    /// Holds `msg` until `due_ms` (its `not_before_ms` is set to it). Returns the store ticket: the publish
    /// is confirmed once it is durable.
    pub fn hold(&self, msg: StoredMessage, due_ms: u64, now: u64) -> Result<u64> {
        let mut inner = self.inner.lock();
        let t = self.append_locked(&mut inner, msg, due_ms, now)?;
        // its bucket may have to be loaded before it is due
        let wake = inner
            .unloaded
            .keys()
            .next()
            .map_or(due_ms, |&(at, _)| at.min(due_ms));
        drop(inner);
        self.store.sh().delayed_wake.held(wake);
        Ok(t)
    }

    fn append_locked(&self, inner: &mut Inner, mut msg: StoredMessage, due: u64, now: u64) -> Result<u64> {
        msg.not_before_ms = Some(due);
        let width = width_for(due.saturating_sub(now));
        let start = due - due % width;
        let id = match inner.by_span.get(&(start, width)) {
            Some(&id) => id,
            None => {
                let id = self.store.next_queue_id()?;
                let rec = bucket_record(id, &self.vhost, start, width);
                self.store.put_raw(bucket_record_key(id), codec::encode(&rec)?)?;
                self.store.sh().log.set_def(&rec)?;
                inner.buckets.insert(
                    id,
                    Bucket {
                        start,
                        width,
                        next_seq: 1,
                        loaded: false,
                        live: 0,
                    },
                );
                inner.unloaded.insert((load_at(start, width), id), ());
                inner.by_span.insert((start, width), id);
                id
            }
        };
        let b = inner
            .buckets
            .get_mut(&id)
            .ok_or_else(|| StoreError::Corrupt("delayed bucket vanished".into()))?;
        let seq = b.next_seq;
        let ticket = self.store.append_message(id, seq, &msg)?;
        b.next_seq += 1;
        b.live += 1;
        if b.loaded {
            inner.heap.push(Reverse(HeapKey { due, bucket: id, seq }));
            inner.held.insert((id, seq), msg);
        }
        Ok(ticket)
    }

    /// Loads the buckets that start within the look-ahead (cascading what is not due soon into finer
    /// buckets) and acks the records whose release or copy is durable. Call it often (every few ms).
    pub fn poll(&self, now: u64) -> Result<()> {
        let mut inner = self.inner.lock();
        self.settle_acks(&mut inner)?;
        while let Some((&(at, id), _)) = inner.unloaded.iter().next() {
            if at > now {
                break;
            }
            inner.unloaded.remove(&(at, id));
            let Some(b) = inner.buckets.get_mut(&id) else {
                continue;
            };
            b.loaded = true;
            let (start, width, next_seq) = (b.start, b.width, b.next_seq);
            // No more appends to a loaded bucket's span once it is being read: new ones go to the heap
            // through `loaded`; keep it in `by_span` so they land here, in order.
            let msgs = if next_seq > 1 {
                self.store.read_messages(id, 0, usize::MAX)?
            } else {
                Vec::new()
            };
            for (seq, msg) in msgs {
                let due = msg.not_before_ms.unwrap_or(start);
                if width <= HEAP_WIDTH_MS {
                    inner.heap.push(Reverse(HeapKey { due, bucket: id, seq }));
                    inner.held.insert((id, seq), msg);
                } else {
                    // Into a finer bucket; this record is acked once the copy is durable.
                    let t = self.append_locked(&mut inner, msg, due, now)?;
                    inner.pending_acks.push((t, id, seq));
                    self.cascaded.fetch_add(1, Relaxed);
                }
            }
            self.drop_if_done(&mut inner, id)?;
        }
        Ok(())
    }

    /// Up to `limit` messages due at `now`, earliest first (ties in arrival order).
    pub fn take_due(&self, now: u64, limit: usize, out: &mut Vec<DueMessage>) {
        let mut inner = self.inner.lock();
        while out.len() < limit {
            match inner.heap.peek() {
                Some(Reverse(k)) if k.due <= now => {}
                _ => break,
            }
            let Some(Reverse(k)) = inner.heap.pop() else { break };
            if let Some(msg) = inner.held.remove(&(k.bucket, k.seq)) {
                out.push(DueMessage {
                    due_ms: k.due,
                    msg,
                    bucket: k.bucket,
                    seq: k.seq,
                });
            }
        }
    }

    /// When `poll` and `take_due` have work next after `now` (ms): the earliest due time in memory, the
    /// earliest load time of a bucket on disk, and `ACK_LOOK_MS` after `now` while released records wait
    /// for their acks. None: nothing held (a `hold` wakes the release: `DelayedWaker`).
    pub fn next_wake(&self, now: u64) -> Option<u64> {
        let inner = self.inner.lock();
        let due = inner.heap.peek().map(|Reverse(k)| k.due);
        let load = inner.unloaded.keys().next().map(|&(at, _)| at);
        let acks = (!inner.pending_acks.is_empty()).then(|| now + ACK_LOOK_MS);
        [due, load, acks].into_iter().flatten().min()
    }

    /// Reports released messages: their records are acked once `ticket` (of their enqueues; 0: nothing
    /// to wait for) is durable.
    pub fn released(&self, msgs: &[DueMessage], ticket: u64) -> Result<()> {
        let mut inner = self.inner.lock();
        self.released.fetch_add(msgs.len() as u64, Relaxed);
        for m in msgs {
            inner.pending_acks.push((ticket, m.bucket, m.seq));
        }
        self.settle_acks(&mut inner)
    }

    fn settle_acks(&self, inner: &mut Inner) -> Result<()> {
        if inner.pending_acks.is_empty() {
            return Ok(());
        }
        let mut ready: Vec<(u32, u64)> = Vec::new();
        inner.pending_acks.retain(|&(t, b, s)| {
            let state = if t == 0 {
                TicketState::Durable
            } else {
                self.store.ticket_state(t)
            };
            if state == TicketState::Durable {
                ready.push((b, s));
            }
            // A failed ticket keeps its record (the message comes back after a restart: at least once).
            state == TicketState::Pending
        });
        ready.sort_unstable();
        let mut i = 0;
        while i < ready.len() {
            let b = ready[i].0;
            let mut seqs = Vec::new();
            while i < ready.len() && ready[i].0 == b {
                seqs.push(ready[i].1);
                i += 1;
            }
            self.store.delete_messages(b, &seqs)?;
            if let Some(bk) = inner.buckets.get_mut(&b) {
                bk.live = bk.live.saturating_sub(seqs.len() as u64);
            }
            self.drop_if_done(inner, b)?;
        }
        Ok(())
    }

    /// Removes a loaded bucket without live records (its directory and record).
    fn drop_if_done(&self, inner: &mut Inner, id: u32) -> Result<()> {
        let done = inner.buckets.get(&id).is_some_and(|b| b.loaded && b.live == 0);
        if !done {
            return Ok(());
        }
        if let Some(b) = inner.buckets.remove(&id) {
            inner.by_span.remove(&(b.start, b.width));
        }
        self.store.sh().log.remove_queue(id)?;
        let k = bucket_record_key(id);
        let n = k.len();
        self.store.sh().sled.write(|db| db.remove(k))?;
        self.store.sh().bump(n);
        Ok(())
    }

    pub fn stats(&self) -> DelayedStats {
        let inner = self.inner.lock();
        DelayedStats {
            held: inner
                .buckets
                .values()
                .map(|b| b.live)
                .sum::<u64>()
                .saturating_sub(inner.pending_acks.len() as u64),
            buckets: inner.buckets.len() as u64,
            in_memory: inner.held.len() as u64,
            released: self.released.load(Relaxed),
            cascaded: self.cascaded.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn msg(body: &str) -> StoredMessage {
        StoredMessage {
            exchange: "dx".into(),
            routing_key: "rk".into(),
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            ..Default::default()
        }
    }

    /// Runs the log to `until` in steps, releasing everything due; returns (due, body) in release order.
    fn run(log: &DelayedLog, from: u64, until: u64, step: u64) -> Vec<(u64, u64, String)> {
        let mut out = Vec::new();
        let mut now = from;
        let mut buf = Vec::new();
        while now <= until {
            log.poll(now).unwrap();

            buf.clear();
            log.take_due(now, usize::MAX, &mut buf);
            for m in &buf {
                assert!(m.due_ms <= now);
                out.push((m.due_ms, now, String::from_utf8_lossy(&m.msg.body).into_owned()));
            }
            log.released(&buf, 0).unwrap();
            now += step;
        }
        out
    }

    #[test]
    fn widths_grow_with_distance() {
        assert_eq!(width_for(0), MIN_WIDTH_MS);
        assert_eq!(width_for(16 * 1024), MIN_WIDTH_MS);
        assert_eq!(width_for(3_600_000), 1 << 18);
        assert_eq!(width_for(u64::MAX), MAX_WIDTH_MS);
    }

    #[test]
    fn releases_in_due_order_on_time_and_cascades_far_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let log = DelayedLog::open(&store, "/").unwrap();
        let now = 1_000_000;
        // Pseudo-random delays up to 2 hours, published in scrambled order.
        const N: u64 = 3000;
        const SPAN: u64 = 7_200_000;
        let mut x = 12345u64;
        let mut want = Vec::new();
        for i in 0..N {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let delay = (x >> 33) % SPAN;
            log.hold(msg(&format!("m{i}")), now + delay, now).unwrap();
            want.push((now + delay, format!("m{i}")));
        }
        let s = log.stats();
        assert_eq!(s.held, N);
        assert!(s.buckets < 200, "buckets: {}", s.buckets);
        assert_eq!(s.in_memory, 0, "nothing is loaded before the first poll");
        let got = run(&log, now, now + SPAN + 100_000, 250);
        assert_eq!(got.len() as u64, N);
        for w in got.windows(2) {
            assert!(w[0].0 <= w[1].0, "due order: {:?} then {:?}", w[0], w[1]);
        }
        for (due, at, _) in &got {
            assert!(at - due < 250, "released {at} for due {due}");
        }
        want.sort();
        let mut g: Vec<(u64, String)> = got.into_iter().map(|(d, _, b)| (d, b)).collect();
        g.sort();
        assert_eq!(g, want);
        // The last cascades' acks wait for their copies to be durable.
        store.flush_blocking().unwrap();
        log.poll(now + SPAN + 200_000).unwrap();
        let s = log.stats();
        assert_eq!((s.held, s.buckets), (0, 0), "every bucket removed");
        assert!(s.cascaded > 0);
    }

    #[test]
    fn a_burst_due_together_is_in_memory_before_it_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let log = DelayedLog::open(&store, "/").unwrap();
        let (now, due) = (10_000_000, 10_060_000);
        for i in 0..5000 {
            log.hold(msg(&format!("m{i}")), due, now).unwrap();
        }
        log.poll(now).unwrap();
        assert_eq!(log.stats().in_memory, 0, "a minute ahead: on disk only");
        log.poll(due - 1).unwrap();
        assert_eq!(log.stats().in_memory, 5000, "loaded ahead of the due time");
        let mut out = Vec::new();
        log.take_due(due - 1, usize::MAX, &mut out);
        assert!(out.is_empty());
        log.take_due(due, usize::MAX, &mut out);
        assert_eq!(out.len(), 5000);
        let bodies: Vec<String> = out
            .iter()
            .map(|m| String::from_utf8_lossy(&m.msg.body).into_owned())
            .collect();
        let want: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
        assert_eq!(bodies, want, "equal due times: publish order");
    }

    #[test]
    fn survives_a_reopen_with_due_times() {
        let dir = tempfile::tempdir().unwrap();
        let now = 5_000_000;
        {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            let log = DelayedLog::open(&store, "/").unwrap();
            let other = DelayedLog::open(&store, "/other").unwrap();
            let mut t = 0;
            for i in 0..200u64 {
                t = log
                    .hold(msg(&format!("m{i}")), now + (i * 7919) % 100_000, now)
                    .unwrap();
            }
            other.hold(msg("x"), now + 10, now).unwrap();
            // Release what is due in the first 20 s, then "crash" (drop without acks of the rest).
            let got = run(&log, now, now + 20_000, 100);
            assert!(!got.is_empty());
            store.wait_durable_blocking(t).unwrap();
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let log = DelayedLog::open(&store, "/").unwrap();
        let got = run(&log, now + 20_000, now + 200_000, 100);
        // Everything due after 20 s comes back (and maybe a few of the last released: at least once).
        let bodies: std::collections::HashSet<String> = got.iter().map(|g| g.2.clone()).collect();
        for i in 0..200u64 {
            if (i * 7919) % 100_000 > 20_000 {
                assert!(bodies.contains(&format!("m{i}")), "m{i} lost");
            }
        }
        for w in got.windows(2) {
            assert!(w[0].0 <= w[1].0);
        }
        assert!(!bodies.contains("x"), "another vhost's messages stay there");
        assert_eq!(DelayedLog::open(&store, "/other").unwrap().stats().held, 1);
    }

    /// Runs the log as the release thread does: it looks only when `next_wake` says so (a simulated
    /// clock that jumps there) and must find every message due then, none late.
    #[test]
    fn looking_only_at_next_wake_releases_every_message_on_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let log = DelayedLog::open(&store, "/").unwrap();
        let now = 5_000_000;
        assert_eq!(log.next_wake(now), None, "nothing held: nothing to look for");
        const N: u64 = 2000;
        const SPAN: u64 = 3_600_000;
        let mut x = 99u64;
        for i in 0..N {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            log.hold(msg(&format!("m{i}")), now + 1 + (x >> 33) % SPAN, now)
                .unwrap();
        }
        let mut t = now;
        let (mut released, mut looks) = (0u64, 0u64);
        let mut buf = Vec::new();
        loop {
            looks += 1;
            log.poll(t).unwrap();
            buf.clear();
            log.take_due(t, usize::MAX, &mut buf);
            for m in &buf {
                assert_eq!(m.due_ms, t, "released at {t}, due at {}", m.due_ms);
            }
            released += buf.len() as u64;
            log.released(&buf, 0).unwrap();
            match log.next_wake(t) {
                None => break,
                Some(w) => {
                    assert!(w > t, "next look {w} at {t}");
                    t = w;
                }
            }
        }
        // (the loop ends only once nothing is held and every record is acked: `next_wake` is None)
        assert_eq!(released, N);
        assert_eq!(log.stats().held, 0);
        assert!(looks > 1);
    }

    #[test]
    fn the_release_sleeps_until_a_hold_due_sooner_wakes_it() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        let clock = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let w = Arc::new(DelayedWake::default());
        // nothing held: it sleeps until `until`
        let t0 = Instant::now();
        w.sleep_until(clock() + 30, clock);
        assert!(t0.elapsed() >= Duration::from_millis(29));
        // a hold made while the release looked (between two sleeps) is not missed
        w.held(clock());
        let t0 = Instant::now();
        w.sleep_until(clock() + 600_000, clock);
        assert!(t0.elapsed() < Duration::from_secs(60));
        // a hold due sooner wakes a sleeping release; one due later does not shorten its sleep
        let w2 = w.clone();
        let sleeper = std::thread::spawn(move || {
            let t0 = Instant::now();
            w2.sleep_until(clock() + 600_000, clock);
            t0.elapsed()
        });
        while w.st.lock().sleeping_until.is_none() {
            std::thread::yield_now();
        }
        w.held(clock() + 900_000);
        assert!(
            w.st.lock().sleeping_until.is_some(),
            "a later hold leaves it asleep"
        );
        w.held(clock() + 20);
        let slept = sleeper.join().unwrap();
        assert!(slept < Duration::from_secs(60), "slept {slept:?}");
        // a wall clock set back an hour does not stretch a sleep past what was planned in real time
        let back = move || clock() - 3_600_000;
        let planned = clock() + 50;
        let t0 = Instant::now();
        let first = std::cell::Cell::new(true);
        w.sleep_until(planned, || if first.replace(false) { clock() } else { back() });
        let slept = t0.elapsed();
        assert!(
            slept >= Duration::from_millis(45) && slept < Duration::from_secs(30),
            "slept {slept:?}"
        );
        // a closing store ends every sleep
        w.close();
        let t0 = Instant::now();
        w.sleep_until(clock() + 600_000, clock);
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
}
