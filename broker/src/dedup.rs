//! Message deduplication with the rabbitmq-message-deduplication plugin's names (which LavinMQ also uses):
//!
//! - an exchange of type `x-message-deduplication` (routes as fanout), or any exchange declared with
//!   `x-message-deduplication: true`, drops a message before routing when its `x-deduplication-header`
//!   value was seen within the window; arguments `x-cache-size` (entries; required for the plugin's
//!   exchange type) and `x-cache-ttl` (ms, optional);
//! - a queue declared with `x-message-deduplication: true` (and optionally `x-cache-size`, `x-cache-ttl`)
//!   drops such a message instead of enqueueing it. (The plugin's queues forget a value when its message
//!   leaves the queue; here, as LavinMQ, a queue's window is the cache's size and TTL, like an exchange's:
//!   a publisher that retries after a lost confirm is safe even if the first copy was consumed.)
//! - a message's own `x-cache-ttl` header (ms) overrides the window for its value;
//! - messages without the header are never checked.
//!
//! A dropped duplicate is confirmed with an ack (not a nack), no earlier than the first copy's entry is
//! durable, and counted (`Registry::stats`, for the management API). The windows of durable exchanges and
//! queues are written to the store (`storage::StateKind::{Exchange,Queue}Dedup`, one sled key per entry,
//! removed when evicted) and loaded at recovery, so they survive a restart and a crash.

use std::collections::VecDeque;

use ahash::AHashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use protocol::{FieldTable, FieldValue, RawProperties};
use storage::{StateKind, StateOp, Store};

use crate::error::{AmqpError, AmqpResult};

/// The header holding a message's deduplication value.
pub const HEADER: &str = "x-deduplication-header";
/// The per-message window override (ms).
pub const TTL_HEADER: &str = "x-cache-ttl";
/// A queue's or a non-plugin-type exchange's window size when `x-cache-size` is not given.
pub const DEFAULT_CACHE_SIZE: u64 = 100_000;

/// A window's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub size: u64,
    pub ttl_ms: Option<u64>,
}

fn positive_int(v: &FieldValue) -> Option<u64> {
    match v {
        FieldValue::LongStr(s) => s.to_string_lossy().parse::<u64>().ok().filter(|n| *n > 0),
        FieldValue::Timestamp(_) => None,
        v => v.as_i64().filter(|n| *n > 0).map(|n| n as u64),
    }
}

fn enabled(args: &FieldTable) -> bool {
    matches!(args.get("x-message-deduplication"), Some(FieldValue::Bool(true)))
}

/// Validates a window's arguments as the plugin's `validate/1` does (its texts); `size_required` for the
/// `x-message-deduplication` exchange type. Returns the window, or None when the entity does not dedup.
pub fn config(args: &FieldTable, plugin_type: bool) -> AmqpResult<Option<Config>> {
    if let Some(v) = args.get("x-message-deduplication") {
        if !matches!(v, FieldValue::Bool(_)) {
            return Err(AmqpError::precondition_failed(
                "Invalid argument, 'x-message-deduplication' must be a boolean",
            ));
        }
    }
    if !plugin_type && !enabled(args) {
        return Ok(None);
    }
    let size = match args.get("x-cache-size") {
        Some(v) => Some(positive_int(v).ok_or_else(|| {
            AmqpError::precondition_failed(
                "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
            )
        })?),
        None if plugin_type => {
            return Err(AmqpError::precondition_failed(
                "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
            ))
        }
        None => None,
    };
    let ttl_ms = match args.get("x-cache-ttl") {
        Some(v) => Some(positive_int(v).ok_or_else(|| {
            AmqpError::precondition_failed(
                "Invalid argument, 'x-cache-ttl' must be an integer greater than 0",
            )
        })?),
        None => None,
    };
    if let Some(v) = args.get("x-cache-persistence") {
        let ok = matches!(v, FieldValue::LongStr(s) if matches!(&*s.to_string_lossy(), "disk" | "memory"));
        if !ok {
            return Err(AmqpError::precondition_failed(
                "Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'",
            ));
        }
    }
    Ok(Some(Config {
        size: size.unwrap_or(DEFAULT_CACHE_SIZE),
        ttl_ms,
    }))
}

/// A message's deduplication value — the header's raw value with its AMQP type code in front, so `1` and
/// `"1"` differ (and so do integers of different widths) — and its `x-cache-ttl` override. None when it
/// has no such header. Read from the raw properties without decoding the table (no allocation).
pub fn message_key(props: &RawProperties) -> Option<(u8, &[u8], Option<u64>)> {
    // One walk over the table finds both (the first of each, as raw_header would).
    let mut key = None;
    let mut ttl = None;
    for (k, code, v) in props.raw_headers() {
        if k == HEADER.as_bytes() {
            if key.is_none() {
                key = Some((code, v));
            }
        } else if k == TTL_HEADER.as_bytes() && ttl.is_none() {
            ttl = Some(raw_positive_int(code, v));
        }
    }
    let (code, v) = key?;
    Some((code, v, ttl.flatten()))
}

/// A positive integer from a raw header value (any integer width, or a decimal string).
fn raw_positive_int(code: u8, b: &[u8]) -> Option<u64> {
    let n: i64 = match (code, b.len()) {
        (b'b', 1) => b[0] as i8 as i64,
        (b'B', 1) => b[0] as i64,
        (b's', 2) => i16::from_be_bytes([b[0], b[1]]) as i64,
        (b'u', 2) => u16::from_be_bytes([b[0], b[1]]) as i64,
        (b'I', 4) => i32::from_be_bytes(b.try_into().ok()?) as i64,
        (b'i', 4) => u32::from_be_bytes(b.try_into().ok()?) as i64,
        (b'l', 8) => i64::from_be_bytes(b.try_into().ok()?),
        (b'L', 8) => i64::try_from(u64::from_be_bytes(b.try_into().ok()?)).ok()?,
        (b'S', _) => std::str::from_utf8(b).ok()?.parse().ok()?,
        _ => return None,
    };
    (n > 0).then_some(n as u64)
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time in the window: recorded; the store ticket of the entry (0: not persisted).
    New(u64),
    /// A duplicate: drop it; confirm it no earlier than this ticket (the first copy's entry).
    Duplicate(u64),
}

/// A value as the window keeps it: inline when short (every usual id: a UUID string with its type code is
/// 37 bytes), so that recording a value allocates nothing.
#[derive(Clone)]
enum Key {
    Inline { len: u8, data: [u8; KEY_INLINE] },
    Heap(Box<[u8]>),
}

const KEY_INLINE: usize = 38;

/// Dead slots a ring may hold beyond twice its live entries before it is compacted.
const COMPACT_SLACK: usize = 16;

/// Entries a window makes room for when created (all of them when its size is smaller).
const PREALLOCATE: usize = 16_384;

impl Key {
    fn new(k: &[u8]) -> Key {
        if k.len() <= KEY_INLINE {
            let mut data = [0u8; KEY_INLINE];
            data[..k.len()].copy_from_slice(k);
            Key::Inline {
                len: k.len() as u8,
                data,
            }
        } else {
            Key::Heap(k.into())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, data } => &data[..*len as usize],
            Key::Heap(b) => b,
        }
    }
}

/// One recorded value, in recording order.
struct Slot {
    key: Key,
    hash: u64,
    expires_at: u64,
    ticket: u64,
    /// False once the value was recorded again later (its newer slot is the live one) or expired.
    live: bool,
}

/// Where a durable window is kept.
struct Persist {
    store: Store,
    kind: StateKind,
    vhost: Arc<str>,
    name: Arc<str>,
}

/// One entity's window: at most `size` entries, oldest evicted first; entries expire after their TTL.
///
/// The values live once, in `slots` (recording order, oldest first); `index` maps a value's hash to its
/// slot's stamp (`base` is the stamp of `slots[0]`). A check hashes the value once (ahash) and allocates
/// nothing for values up to `KEY_INLINE` bytes.
pub struct Window {
    config: Config,
    index: hashbrown::HashTable<u64>,
    slots: VecDeque<Slot>,
    base: u64,
    live: usize,
    hasher: ahash::RandomState,
    persist: Option<Persist>,
    dropped: AtomicU64,
}

impl Window {
    fn new(config: Config, persist: Option<Persist>) -> Window {
        // Room for the whole window up front when it is small, else for its first PREALLOCATE entries
        // (a declared window of the default 100,000 entries does not take ~7 MB before it is used);
        // once full, checks allocate nothing (the ring and the table keep their size).
        let cap = config.size.min(PREALLOCATE as u64) as usize;
        Window {
            config,
            index: hashbrown::HashTable::with_capacity(cap),
            slots: VecDeque::with_capacity(cap),
            base: 0,
            live: 0,
            hasher: ahash::RandomState::new(),
            persist,
            dropped: AtomicU64::new(0),
        }
    }

    /// Checks `key` at `now`; records it if new (evicting the oldest entry when full).
    pub fn check(&mut self, key: &[u8], ttl_override: Option<u64>, now: u64) -> Seen {
        let hash = self.hasher.hash_one(key);
        let (slots, base) = (&mut self.slots, self.base);
        if let Ok(found) = self
            .index
            .find_entry(hash, |&s| slots[(s - base) as usize].key.bytes() == key)
        {
            let slot = &mut slots[(*found.get() - base) as usize];
            if slot.expires_at > now {
                self.dropped.fetch_add(1, Relaxed);
                return Seen::Duplicate(slot.ticket);
            }
            // expired: recorded again below, as a new entry
            slot.live = false;
            found.remove();
            self.live -= 1;
        }
        let ttl = ttl_override.or(self.config.ttl_ms);
        let expires_at = ttl.map_or(u64::MAX, |t| now.saturating_add(t));
        let evicted = self.record(key, hash, expires_at);
        let mut ticket = 0;
        if let Some(p) = &self.persist {
            let mut ops: Vec<StateOp> = evicted.iter().map(|k| StateOp::Remove(k.bytes())).collect();
            ops.push(StateOp::Put(key, expires_at.to_be_bytes().to_vec()));
            match p.store.apply_entity_state(p.kind, &p.vhost, &p.name, &ops) {
                Ok(t) => ticket = t,
                Err(e) => {
                    tracing::error!(error = %e, entity = %p.name, "could not store a deduplication entry")
                }
            }
        }
        if ticket > 0 {
            if let Some(s) = self.slots.back_mut() {
                s.ticket = ticket;
            }
        }
        Seen::New(ticket)
    }

    /// Records a value known not to be live, evicts the oldest while over size; returns the evicted values
    /// when the window is durable (to remove them from the store), else nothing (no allocation).
    fn record(&mut self, key: &[u8], hash: u64, expires_at: u64) -> Vec<Key> {
        let stamp = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot {
            key: Key::new(key),
            hash,
            expires_at,
            ticket: 0,
            live: true,
        });
        let (slots, base) = (&self.slots, self.base);
        self.index
            .insert_unique(hash, stamp, |&s| slots[(s - base) as usize].hash);
        self.live += 1;
        let mut evicted = Vec::new();
        while self.live as u64 > self.config.size {
            let Some(old) = self.pop_front() else { break };
            if old.live {
                let stamp = self.base - 1;
                if let Ok(e) = self.index.find_entry(old.hash, |&s| s == stamp) {
                    e.remove();
                }
                self.live -= 1;
                if self.persist.is_some() {
                    evicted.push(old.key);
                }
            }
        }
        // Values recorded again later, or expired, are dropped as they reach the front.
        while self.slots.front().is_some_and(|s| !s.live) {
            self.pop_front();
        }
        // Dead slots behind a live front (values recorded again after their TTL while an older one stays)
        // would grow the ring without bound: past twice the live entries, drop them all at once (amortized
        // O(1) per check; the index is rebuilt from the stored hashes).
        if self.slots.len() > 2 * self.live + COMPACT_SLACK {
            self.compact();
        }
        evicted
    }

    /// Drops the dead slots and renumbers the live ones from 0.
    fn compact(&mut self) {
        self.slots.retain(|s| s.live);
        self.base = 0;
        self.index.clear();
        let (slots, index) = (&self.slots, &mut self.index);
        for (i, s) in slots.iter().enumerate() {
            index.insert_unique(s.hash, i as u64, |&st| slots[st as usize].hash);
        }
    }

    fn pop_front(&mut self) -> Option<Slot> {
        let s = self.slots.pop_front()?;
        self.base += 1;
        Some(s)
    }

    /// Loads a durable window at recovery (expired entries are dropped from the store).
    fn load(&mut self, now: u64) {
        let Some(p) = &self.persist else { return };
        let items = match p.store.entity_state(p.kind, &p.vhost, &p.name) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, entity = %p.name, "could not read a deduplication window");
                return;
            }
        };
        self.load_items(items, now);
    }

    fn load_items(&mut self, items: Vec<(Vec<u8>, Vec<u8>)>, now: u64) {
        let mut expired: Vec<Vec<u8>> = Vec::new();
        let mut evicted: Vec<Key> = Vec::new();
        for (k, v) in items {
            let expires_at = v.get(..8).map_or(u64::MAX, |b| {
                u64::from_be_bytes(b.try_into().unwrap_or([0xff; 8]))
            });
            if expires_at <= now {
                expired.push(k);
                continue;
            }
            let hash = self.hasher.hash_one(&k[..]);
            evicted.extend(self.record(&k, hash, expires_at));
        }
        expired.extend(evicted.iter().map(|k| k.bytes().to_vec()));
        let Some(p) = &self.persist else { return };
        if !expired.is_empty() {
            let ops: Vec<StateOp> = expired.iter().map(|k| StateOp::Remove(k)).collect();
            if let Err(e) = p.store.apply_entity_state(p.kind, &p.vhost, &p.name, &ops) {
                tracing::warn!(error = %e, "could not remove expired deduplication entries");
            }
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// One entity's counters, for the management API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub name: Arc<str>,
    pub is_queue: bool,
    pub entries: usize,
    pub dropped: u64,
}

type Windows = RwLock<AHashMap<Arc<str>, Arc<Mutex<Window>>>>;

/// A vhost's deduplication windows, by exchange and by queue name.
#[derive(Default)]
pub struct Registry {
    exchanges: Windows,
    queues: Windows,
    /// How many exchange and queue windows exist (publishes skip the lookups when none).
    exchange_count: AtomicU64,
    queue_count: AtomicU64,
    /// Duplicates dropped in this vhost since the start, windows since deleted included.
    dropped_total: AtomicU64,
}

impl Registry {
    fn count(&self, is_queue: bool) -> &AtomicU64 {
        if is_queue {
            &self.queue_count
        } else {
            &self.exchange_count
        }
    }

    fn map(&self, is_queue: bool) -> &Windows {
        if is_queue {
            &self.queues
        } else {
            &self.exchanges
        }
    }

    /// Adds a window for a new exchange or queue (`store` for durable ones); loads it from the store when
    /// `recovering`.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &self,
        is_queue: bool,
        vhost: &Arc<str>,
        name: &Arc<str>,
        config: Config,
        store: Option<&Store>,
        recovering: bool,
        now: u64,
    ) {
        let persist = store.map(|s| Persist {
            store: s.clone(),
            kind: if is_queue {
                StateKind::QueueDedup
            } else {
                StateKind::ExchangeDedup
            },
            vhost: vhost.clone(),
            name: name.clone(),
        });
        let mut w = Window::new(config, persist);
        if recovering {
            w.load(now);
            tracing::debug!(entity = %name, is_queue, entries = w.len(), "recovered a deduplication window");
        } else if let Some(p) = &w.persist {
            // A new entity of an old name starts with an empty window.
            let _ = p.store.delete_entity_state(p.kind, &p.vhost, &p.name);
        }
        if self
            .map(is_queue)
            .write()
            .insert(name.clone(), Arc::new(Mutex::new(w)))
            .is_none()
        {
            self.count(is_queue).fetch_add(1, Relaxed);
        }
    }

    /// Removes a deleted entity's window (and its stored entries).
    pub fn remove(&self, is_queue: bool, name: &str) {
        let Some(w) = self.map(is_queue).write().remove(name) else {
            return;
        };
        self.count(is_queue).fetch_sub(1, Relaxed);
        let w = w.lock();
        if let Some(p) = &w.persist {
            if let Err(e) = p.store.delete_entity_state(p.kind, &p.vhost, &p.name) {
                tracing::warn!(error = %e, entity = name, "could not remove a deduplication window");
            }
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        !self.has_any(false) && !self.has_any(true)
    }

    /// Whether any queue (`is_queue`) or exchange window exists.
    #[inline]
    pub fn has_any(&self, is_queue: bool) -> bool {
        self.count(is_queue).load(Relaxed) != 0
    }

    /// Checks a message against the window of exchange or queue `name`; None if it has none or the
    /// message carries no deduplication header.
    pub fn check(&self, is_queue: bool, name: &str, props: &RawProperties, now: u64) -> Option<Seen> {
        if !self.has_any(is_queue) || !props.has_headers() {
            return None;
        }
        // The window first (most entities have none), then the key; the map's read lock is held only
        // for the check (no await), so no reference count is touched.
        let map = self.map(is_queue).read();
        let w = map.get(name)?;
        let (code, value, ttl) = message_key(props)?;
        // The key: the type code, then the value (a small stack buffer for the usual short values).
        let mut small = [0u8; 64];
        let seen = if value.len() < small.len() {
            small[0] = code;
            small[1..=value.len()].copy_from_slice(value);
            w.lock().check(&small[..=value.len()], ttl, now)
        } else {
            let mut key = Vec::with_capacity(value.len() + 1);
            key.push(code);
            key.extend_from_slice(value);
            w.lock().check(&key, ttl, now)
        };
        drop(map);
        if matches!(seen, Seen::Duplicate(_)) {
            self.dropped_total.fetch_add(1, Relaxed);
            tracing::debug!(entity = name, is_queue, "duplicate message dropped");
        }
        Some(seen)
    }

    /// Whether queue or exchange `name` has a window.
    pub fn has(&self, is_queue: bool, name: &str) -> bool {
        self.has_any(is_queue) && self.map(is_queue).read().contains_key(name)
    }

    /// Every window's counters.
    pub fn stats(&self) -> Vec<Stats> {
        let mut out = Vec::new();
        for is_queue in [false, true] {
            for (n, w) in self.map(is_queue).read().iter() {
                let w = w.lock();
                out.push(Stats {
                    name: n.clone(),
                    is_queue,
                    entries: w.len(),
                    dropped: w.dropped(),
                });
            }
        }
        out
    }

    /// Duplicates dropped in this vhost since the broker started.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(size: u64, ttl: Option<u64>) -> Config {
        Config { size, ttl_ms: ttl }
    }

    #[test]
    fn window_drops_duplicates_until_ttl_and_evicts_oldest() {
        let mut w = Window::new(cfg(2, Some(1000)), None);
        assert_eq!(w.check(b"a", None, 0), Seen::New(0));
        assert_eq!(w.check(b"a", None, 999), Seen::Duplicate(0));
        assert_eq!(w.check(b"a", None, 1000), Seen::New(0), "expired");
        assert_eq!(w.check(b"b", Some(10), 1000), Seen::New(0));
        assert_eq!(w.check(b"b", None, 1011), Seen::New(0), "the per-message ttl won");
        assert_eq!(w.check(b"c", None, 1011), Seen::New(0));
        // size 2: "a" (oldest) was evicted
        assert_eq!(w.len(), 2);
        assert_eq!(w.check(b"a", None, 1012), Seen::New(0));
        assert_eq!(w.dropped(), 1);
    }

    /// A value recorded again and again after its own short TTL, behind an older value that stays: the
    /// ring is compacted instead of growing, and both values keep their answers.
    #[test]
    fn dead_slots_behind_a_live_front_are_compacted() {
        let mut w = Window::new(cfg(100, None), None);
        assert_eq!(w.check(b"front", None, 0), Seen::New(0));
        for i in 0..1000u64 {
            let now = 1 + 2 * i;
            assert_eq!(w.check(b"x", Some(1), now), Seen::New(0), "x expired at {now}");
            assert_eq!(w.check(b"x", None, now), Seen::Duplicate(0));
            assert!(
                w.slots.len() <= 2 * w.len() + COMPACT_SLACK,
                "{} slots",
                w.slots.len()
            );
        }
        assert_eq!(w.check(b"front", None, 5000), Seen::Duplicate(0));
        assert_eq!(w.len(), 2);
    }

    /// Against a reference model: a list of (key, expiry) in insertion order, capped at size.
    #[test]
    fn window_matches_a_reference_model() {
        let mut rng = 0x1234_5678u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // one-byte values (inline) and 60-byte ones (on the heap)
        for (size, key_len) in [(1u64, 1usize), (3, 1), (10, 1), (3, 60), (10, 60)] {
            let mut w = Window::new(cfg(size, Some(50)), None);
            let mut model: Vec<(u8, u64)> = Vec::new();
            let mut now = 0;
            for _ in 0..5000 {
                now += next() % 7;
                let k = (next() % 12) as u8;
                let dup = model.iter().any(|(mk, exp)| *mk == k && *exp > now);
                let got = w.check(&vec![k; key_len], None, now);
                assert_eq!(
                    matches!(got, Seen::Duplicate(_)),
                    dup,
                    "size {size} key {k} at {now}"
                );
                if !dup {
                    model.retain(|(mk, _)| *mk != k);
                    model.push((k, now + 50));
                    while model.len() as u64 > size {
                        model.remove(0);
                    }
                }
                assert_eq!(w.len(), model.len(), "size {size}: live entries");
            }
        }
    }

    #[test]
    fn arguments_are_validated_with_the_plugins_texts() {
        let t = |pairs: &[(&str, FieldValue)]| {
            let mut f = FieldTable::new();
            for (k, v) in pairs {
                f.insert(*k, v.clone());
            }
            f
        };
        let err = |r: AmqpResult<Option<Config>>| r.unwrap_err().text;
        assert!(err(config(&t(&[]), true)).contains("'x-cache-size' must be an integer greater than 0"));
        assert_eq!(
            config(&t(&[("x-cache-size", FieldValue::I32(5))]), true).unwrap(),
            Some(cfg(5, None))
        );
        assert!(err(config(&t(&[("x-cache-size", FieldValue::I32(0))]), true)).contains("x-cache-size"));
        assert!(err(config(
            &t(&[
                ("x-cache-size", FieldValue::I32(5)),
                ("x-cache-ttl", FieldValue::I32(-1))
            ]),
            true
        ))
        .contains("'x-cache-ttl' must be an integer greater than 0"));
        assert_eq!(
            config(&t(&[("x-cache-size", FieldValue::I32(5))]), false).unwrap(),
            None
        );
        assert_eq!(
            config(&t(&[("x-message-deduplication", FieldValue::Bool(true))]), false).unwrap(),
            Some(cfg(DEFAULT_CACHE_SIZE, None))
        );
    }
}

/// The window against a simple reference model (a list of (value, expiry) in recording order, capped at
/// the size), with per-message TTL overrides, values inline and on the heap, and for durable windows the
/// window reloaded from the store agreeing with the model.
#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Op {
        key: u8,
        long: bool,
        ttl: Option<u64>,
        advance: u64,
    }

    fn op() -> impl Strategy<Value = Op> {
        (
            0u8..16,
            any::<bool>(),
            proptest::option::weighted(0.2, 1u64..80),
            0u64..15,
        )
            .prop_map(|(key, long, ttl, advance)| Op {
                key,
                long,
                ttl,
                advance,
            })
    }

    fn value(o: &Op) -> Vec<u8> {
        // A long value is over KEY_INLINE bytes (kept on the heap); it differs from the short one.
        let len = if o.long { KEY_INLINE + 10 } else { 3 };
        let mut v = vec![b'S'; len];
        v[1] = o.key;
        v
    }

    /// The model's answer, and its update.
    fn model_check(m: &mut Vec<(Vec<u8>, u64)>, c: Config, key: &[u8], ttl: Option<u64>, now: u64) -> bool {
        if m.iter().any(|(k, exp)| k == key && *exp > now) {
            return true;
        }
        m.retain(|(k, _)| k != key);
        let exp = ttl.or(c.ttl_ms).map_or(u64::MAX, |t| now + t);
        m.push((key.to_vec(), exp));
        while m.len() as u64 > c.size {
            m.remove(0);
        }
        false
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn window_matches_the_model(
            size in 1u64..10,
            ttl in proptest::option::of(1u64..60),
            ops in proptest::collection::vec(op(), 1..300),
            durable in proptest::bool::weighted(0.15),
        ) {
            let c = Config { size, ttl_ms: ttl };
            let dir = tempfile::tempdir().unwrap();
            let store = durable.then(|| Store::open(dir.path(), Default::default()).unwrap());
            let persist = |store: &Option<Store>| {
                store.as_ref().map(|s| Persist {
                    store: s.clone(),
                    kind: StateKind::QueueDedup,
                    vhost: "/".into(),
                    name: "q".into(),
                })
            };
            let mut w = Window::new(c, persist(&store));
            let mut m: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut now = 1;
            let mut dropped = 0;
            for o in &ops {
                now += o.advance;
                let v = value(o);
                let want = model_check(&mut m, c, &v, o.ttl, now);
                let got = w.check(&v, o.ttl, now);
                prop_assert_eq!(matches!(got, Seen::Duplicate(_)), want, "{:?} at {}", o, now);
                dropped += want as u64;
                prop_assert_eq!(w.len(), m.len());
                prop_assert!(w.slots.len() <= 2 * w.len() + COMPACT_SLACK, "the ring stays bounded");
            }
            prop_assert_eq!(w.dropped(), dropped);
            if let Some(s) = &store {
                // Reloaded (as at recovery, at the same time): the same values are duplicates.
                s.wait_durable_blocking(s.current_ticket()).unwrap();
                let mut again = Window::new(c, persist(&store));
                again.load(now);
                for o in &ops {
                    let v = value(o);
                    let live = m.iter().any(|(k, exp)| *k == v && *exp > now);
                    let seen = again.index.find(again.hasher.hash_one(&v[..]), |&st| {
                        again.slots[(st - again.base) as usize].key.bytes() == &v[..]
                    });
                    let seen = seen.is_some_and(|&st| again.slots[(st - again.base) as usize].expires_at > now);
                    prop_assert_eq!(seen, live, "{:?} after reload", o);
                }
            }
        }
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;

    #[test]
    fn a_durable_window_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (v, n): (Arc<str>, Arc<str>) = ("/".into(), "x".into());
        {
            let store = Store::open(dir.path(), Default::default()).unwrap();
            let r = Registry::default();
            r.add(
                false,
                &v,
                &n,
                Config {
                    size: 10,
                    ttl_ms: None,
                },
                Some(&store),
                false,
                0,
            );
            let w = r.exchanges.read().get("x").cloned().unwrap();
            let mut t = 0;
            for k in [b"Sa", b"Sb", b"Sa"] {
                if let Seen::New(x) = w.lock().check(k, None, 1) {
                    t = x;
                }
            }
            store.wait_durable_blocking(t).unwrap();
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let r = Registry::default();
        r.add(
            false,
            &v,
            &n,
            Config {
                size: 10,
                ttl_ms: None,
            },
            Some(&store),
            true,
            5,
        );
        let w = r.exchanges.read().get("x").cloned().unwrap();
        assert!(matches!(w.lock().check(b"Sa", None, 6), Seen::Duplicate(_)));
        assert!(matches!(w.lock().check(b"Sb", None, 6), Seen::Duplicate(_)));
        assert!(matches!(w.lock().check(b"Sc", None, 6), Seen::New(_)));
    }
}
