//! A fixed-bucket latency histogram of atomics: observed by the flusher once per flush round, read by the
//! broker's metrics. No lock, no allocation on observe.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the buckets, seconds (100 µs to 10 s); a last, implicit bucket is +Inf.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0, 10.0,
];

#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A snapshot: cumulative counts per bound of [`LATENCY_BUCKETS`] (then +Inf = `count`), sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    pub cumulative: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum_secs: f64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = [0u64; LATENCY_BUCKETS.len()];
        let mut running = 0;
        for (i, c) in cumulative.iter_mut().enumerate() {
            running += self.counts[i].load(Relaxed);
            *c = running;
        }
        let count = running + self.counts[LATENCY_BUCKETS.len()].load(Relaxed);
        LatencySnapshot {
            cumulative,
            count,
            sum_secs: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[4], 1); // <= 2.5 ms
        assert_eq!(s.cumulative[5], 2); // <= 5 ms
        assert_eq!(s.cumulative[LATENCY_BUCKETS.len() - 1], 2);
        assert!((s.sum_secs - 20.00305).abs() < 1e-9);
    }
}
