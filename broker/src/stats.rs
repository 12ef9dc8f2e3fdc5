//! Counters for the operators' metrics (`prometheus.rs` reads them at scrape time).
//!
//! Cheap on the hot path: a connection's message counters are plain atomics in its own [`ConnStats`], which
//! only that connection's task writes (an add is a relaxed load and store, no locked read-modify-write, to a
//! cache line no other core writes); a queue's are in
//! its [`QueueStats`], written by whoever holds the queue for the operation anyway. No lock and no
//! allocation per message. The connections' counters are found at scrape time through the [`StatsRegistry`]
//! (one lock per connection open/close, not per message); a closed connection's counts are folded into the
//! registry's totals so the sums never go backwards. Rare events (queues declared, channels opened) are
//! process-wide atomics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

/// Message size buckets, bytes: rabbit_msg_size_metrics' (RabbitMQ 4.1), so the RabbitMQ-Overview
/// dashboard's "Message Size Distribution" panel finds its `le` values.
pub const SIZE_BUCKETS: [f64; 8] = [
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    50_000_000.0,
    100_000_000.0,
];

/// Every message counter of a connection (RabbitMQ's global counters, per connection here).
#[derive(Default)]
pub struct MessageCounters {
    /// basic.publish received (RabbitMQ `messages_received`).
    pub received: AtomicU64,
    /// ... on a channel in confirm mode (`messages_received_confirm`).
    pub received_confirm: AtomicU64,
    /// Routed to at least one queue (`messages_routed`).
    pub routed: AtomicU64,
    pub unroutable_dropped: AtomicU64,
    pub unroutable_returned: AtomicU64,
    /// Publisher confirms sent (acks).
    pub confirmed: AtomicU64,
    pub delivered_consume_manual_ack: AtomicU64,
    pub delivered_consume_auto_ack: AtomicU64,
    pub delivered_get_manual_ack: AtomicU64,
    pub delivered_get_auto_ack: AtomicU64,
    pub get_empty: AtomicU64,
    pub redelivered: AtomicU64,
    /// Acknowledged by the client (basic.ack; a multiple ack counts each message).
    pub acknowledged: AtomicU64,
    /// Published body sizes: counts per bucket of [`SIZE_BUCKETS`] (not cumulative), the last is +Inf.
    pub size_buckets: [AtomicU64; SIZE_BUCKETS.len() + 1],
    pub size_sum: AtomicU64,
}

/// A plain snapshot of [`MessageCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessageTotals {
    pub received: u64,
    pub received_confirm: u64,
    pub routed: u64,
    pub unroutable_dropped: u64,
    pub unroutable_returned: u64,
    pub confirmed: u64,
    pub delivered_consume_manual_ack: u64,
    pub delivered_consume_auto_ack: u64,
    pub delivered_get_manual_ack: u64,
    pub delivered_get_auto_ack: u64,
    pub get_empty: u64,
    pub redelivered: u64,
    pub acknowledged: u64,
    pub size_buckets: [u64; SIZE_BUCKETS.len() + 1],
    pub size_sum: u64,
}

macro_rules! each_counter {
    ($m:ident) => {
        $m!(
            received,
            received_confirm,
            routed,
            unroutable_dropped,
            unroutable_returned,
            confirmed,
            delivered_consume_manual_ack,
            delivered_consume_auto_ack,
            delivered_get_manual_ack,
            delivered_get_auto_ack,
            get_empty,
            redelivered,
            acknowledged,
            size_sum
        )
    };
}

/// [`SIZE_BUCKETS`] as integers: a bucket is found with integer compares, not float conversions.
const SIZE_BUCKET_BYTES: [u64; SIZE_BUCKETS.len()] = {
    let mut b = [0u64; SIZE_BUCKETS.len()];
    let mut i = 0;
    while i < b.len() {
        b[i] = SIZE_BUCKETS[i] as u64;
        i += 1;
    }
    b
};

impl MessageCounters {
    /// Adds `n` to one of a connection's counters. Only the connection's own task writes them, so an add
    /// is a load and a store: no locked read-modify-write (about 20 cycles each on x86, several per
    /// message). A reader at scrape time sees each counter as it was after some add.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// One published message of `size` body bytes.
    #[inline]
    pub fn published(&self, size: u64) {
        Self::add(&self.received, 1);
        Self::add(&self.size_sum, size);
        let i = SIZE_BUCKET_BYTES
            .iter()
            .position(|&b| size <= b)
            .unwrap_or(SIZE_BUCKET_BYTES.len());
        Self::add(&self.size_buckets[i], 1);
    }

    /// Adds this connection's counts to `t`.
    pub fn add_to(&self, t: &mut MessageTotals) {
        macro_rules! sum {
            ($($f:ident),*) => { $( t.$f += self.$f.load(Relaxed); )* };
        }
        each_counter!(sum);
        for (a, b) in t.size_buckets.iter_mut().zip(&self.size_buckets) {
            *a += b.load(Relaxed);
        }
    }

    /// Adds a snapshot into these counters (a closed connection's counts into the totals).
    fn absorb(&self, t: &MessageTotals) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f.fetch_add(t.$f, Relaxed); )* };
        }
        each_counter!(add);
        for (a, b) in self.size_buckets.iter().zip(&t.size_buckets) {
            a.fetch_add(*b, Relaxed);
        }
    }
}

/// One connection's counters and gauges, written by its task only.
#[derive(Default)]
pub struct ConnStats {
    pub messages: MessageCounters,
    /// Channels open on the connection now.
    pub channels: AtomicU64,
    /// The connection has published (RabbitMQ's `publishers` counts publishing channels; we count
    /// connections).
    pub publishing: AtomicU64,
}

/// Process-wide counters of rare events (RabbitMQ's connection churn metrics).
pub static CHANNELS_OPENED: AtomicU64 = AtomicU64::new(0);
pub static CONNECTIONS_OPENED: AtomicU64 = AtomicU64::new(0);
pub static QUEUES_DECLARED: AtomicU64 = AtomicU64::new(0);
pub static QUEUES_CREATED: AtomicU64 = AtomicU64::new(0);
pub static QUEUES_DELETED: AtomicU64 = AtomicU64::new(0);
/// Connections paused now by a queue over its flow bound, and blocked now by an alarm.
pub static THROTTLED_NOW: AtomicU64 = AtomicU64::new(0);
pub static BLOCKED_NOW: AtomicU64 = AtomicU64::new(0);

/// The open connections' counters, and the sums of the closed ones.
#[derive(Default)]
pub struct StatsRegistry {
    open: Mutex<HashMap<u64, Arc<ConnStats>>>,
    closed: MessageCounters,
}

/// What a scrape reads of the connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnTotals {
    pub messages: MessageTotals,
    pub connections: u64,
    pub channels: u64,
    pub publishers: u64,
}

impl StatsRegistry {
    /// A connection reached connection.open.
    pub fn register(&self, id: u64, stats: Arc<ConnStats>) {
        CONNECTIONS_OPENED.fetch_add(1, Relaxed);
        self.open.lock().insert(id, stats);
    }

    /// The connection is gone: its counts move to the closed sums. Under the lock of the open set, so
    /// that a scrape (`totals`) sees the connection in one of the two, never in neither (a scrape that
    /// read the closed sums just before and the open set just after counted none of its messages).
    pub fn unregister(&self, id: u64) {
        let mut open = self.open.lock();
        let Some(stats) = open.remove(&id) else {
            return;
        };
        let mut t = MessageTotals::default();
        stats.messages.add_to(&mut t);
        self.closed.absorb(&t);
    }

    /// Sums over every connection, open or closed.
    pub fn totals(&self) -> ConnTotals {
        let mut t = ConnTotals::default();
        let open = self.open.lock();
        self.closed.add_to(&mut t.messages);
        t.connections = open.len() as u64;
        for c in open.values() {
            c.messages.add_to(&mut t.messages);
            t.channels += c.channels.load(Relaxed);
            t.publishers += c.publishing.load(Relaxed);
        }
        t
    }
}

impl StatsRegistry {
    /// An open connection's counters.
    pub fn conn(&self, id: u64) -> Option<Arc<ConnStats>> {
        self.open.lock().get(&id).cloned()
    }

    /// The ids of the open connections.
    pub fn open_ids(&self) -> Vec<u64> {
        self.open.lock().keys().copied().collect()
    }
}

/// How often the management API samples the counters for its rates (RabbitMQ's
/// `collect_statistics_interval`, 5000 ms).
pub const RATE_INTERVAL_MS: u64 = 5000;

/// Counters of one object at one time (which counter is which is the sampler's business).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    pub v: [u64; 12],
}

impl Sample {
    /// Per-second rate of counter `i` from `earlier` to `self` (0 without time between them, or if the
    /// counter went down: a queue deleted and declared again).
    pub fn rate_since(&self, earlier: &Sample, i: usize) -> f64 {
        let dt = self.at_ms.saturating_sub(earlier.at_ms);
        if dt == 0 {
            return 0.0;
        }
        self.v[i].saturating_sub(earlier.v[i]) as f64 * 1000.0 / dt as f64
    }
}

/// The last two samples of every object the management API shows rates for: a rate is the change over
/// the last sample interval, as RabbitMQ's management agent computes `*_details.rate`. Written by one
/// sampler every [`RATE_INTERVAL_MS`], read by the API; nothing on the message path touches it.
#[derive(Default)]
pub struct Rates {
    by_key: Mutex<HashMap<String, (Sample, Sample)>>,
}

impl Rates {
    /// A new round of samples: each key's latest becomes its previous; keys not sampled are dropped.
    pub fn record(&self, samples: HashMap<String, Sample>) {
        let mut map = self.by_key.lock();
        let mut next = HashMap::with_capacity(samples.len());
        for (k, s) in samples {
            let prev = map.remove(&k).map_or(s, |(_, last)| last);
            next.insert(k, (prev, s));
        }
        *map = next;
    }

    /// (previous, latest) samples of `key`.
    pub fn get(&self, key: &str) -> Option<(Sample, Sample)> {
        self.by_key.lock().get(key).copied()
    }
}

/// A queue's counters (RabbitMQ's per-queue metrics of `/metrics/per-object`).
#[derive(Default, Debug)]
pub struct QueueStats {
    /// Messages that entered the queue.
    pub published: AtomicU64,
    /// Messages handed to consumers or basic.get.
    pub delivered: AtomicU64,
    /// Messages acknowledged by clients.
    pub acked: AtomicU64,
    /// Messages dead-lettered to the queue's dead-letter exchange.
    pub dead_lettered: AtomicU64,
}

impl QueueStats {
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer bucket search puts every size where the float bounds (the metric's `le` labels) say.
    #[test]
    fn integer_size_buckets_agree_with_the_float_bounds() {
        let float_bucket = |size: u64| {
            SIZE_BUCKETS
                .iter()
                .position(|&b| size as f64 <= b)
                .unwrap_or(SIZE_BUCKETS.len())
        };
        let mut sizes = vec![0, 1, u64::MAX];
        for b in SIZE_BUCKET_BYTES {
            sizes.extend([b - 1, b, b + 1]);
        }
        for size in sizes {
            let c = MessageCounters::default();
            c.published(size);
            let i = float_bucket(size);
            assert_eq!(c.size_buckets[i].load(Relaxed), 1, "size {size}");
            assert_eq!(c.received.load(Relaxed), 1);
        }
    }

    #[test]
    fn a_rate_is_the_change_over_the_last_sample_interval() {
        let rates = Rates::default();
        let at = |ms, n| {
            let mut s = Sample {
                at_ms: ms,
                ..Sample::default()
            };
            s.v[0] = n;
            s
        };
        rates.record(HashMap::from([("q".to_string(), at(0, 10))]));
        let (p, l) = rates.get("q").unwrap();
        assert_eq!(l.rate_since(&p, 0), 0.0);
        rates.record(HashMap::from([("q".to_string(), at(5000, 60))]));
        let (p, l) = rates.get("q").unwrap();
        assert_eq!(l.rate_since(&p, 0), 10.0);
        rates.record(HashMap::from([("q".to_string(), at(10000, 5))]));
        let (p, l) = rates.get("q").unwrap();
        assert_eq!(
            l.rate_since(&p, 0),
            0.0,
            "a counter that went down (queue redeclared)"
        );
        rates.record(HashMap::new());
        assert!(rates.get("q").is_none());
    }

    #[test]
    fn closed_connections_keep_counting_in_the_totals() {
        let reg = StatsRegistry::default();
        let a = Arc::new(ConnStats::default());
        reg.register(1, a.clone());
        a.messages.published(50);
        a.messages.published(5_000);
        a.messages.published(500_000_000);
        MessageCounters::add(&a.messages.acknowledged, 2);
        a.channels.store(3, Relaxed);
        let t = reg.totals();
        assert_eq!((t.connections, t.channels), (1, 3));
        assert_eq!(t.messages.received, 3);
        assert_eq!(t.messages.size_buckets[0], 1);
        assert_eq!(t.messages.size_buckets[2], 1);
        assert_eq!(t.messages.size_buckets[SIZE_BUCKETS.len()], 1);
        assert_eq!(t.messages.size_sum, 500_005_050);
        reg.unregister(1);
        let t = reg.totals();
        assert_eq!((t.connections, t.channels), (0, 0));
        assert_eq!(t.messages.received, 3);
        assert_eq!(t.messages.acknowledged, 2);
        assert_eq!(t.messages.size_buckets[0], 1);
    }

    /// A scrape during closes: a closing connection's counts move from the open set to the closed sums,
    /// and no scrape may see them in neither (the totals would dip: a `rabbitmq_global_messages_received_total`
    /// of 0 right after the last connection closed, as `tests/metrics.rs` once saw).
    #[test]
    fn a_scrape_during_closes_never_misses_a_connection() {
        const N: u64 = 3_000;
        let reg = Arc::new(StatsRegistry::default());
        for id in 0..N {
            let c = Arc::new(ConnStats::default());
            c.messages.published(10);
            reg.register(id, c);
        }
        let closer = {
            let reg = reg.clone();
            std::thread::spawn(move || {
                for id in 0..N {
                    reg.unregister(id);
                }
            })
        };
        let mut scrapes = 0u64;
        loop {
            let t = reg.totals();
            assert_eq!(
                t.messages.received, N,
                "after {scrapes} scrapes, {} open",
                t.connections
            );
            scrapes += 1;
            if t.connections == 0 {
                break;
            }
        }
        closer.join().unwrap();
    }
}
