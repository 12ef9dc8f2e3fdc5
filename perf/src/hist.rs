//! A log-linear latency histogram (HDR-style, ~1.6 % relative error, fixed 30 KiB).
//!
//! Values below 128 are exact; above, each power of two is split into 64 linear
//! sub-buckets. Recording is a couple of shifts and one increment.

const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS; // 64
const LINEAR: usize = 2 * SUB; // values < 128 are stored exactly
const BUCKETS: usize = LINEAR + (64 - (SUB_BITS as usize + 1)) * SUB;

/// Counts of values (nanoseconds, or any u64) in log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
    min: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("p50", &self.percentile(50.0))
            .field("max", &self.max)
            .finish()
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 7
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR + (e as usize - (SUB_BITS as usize + 1)) * SUB + sub
}

/// The highest value that maps to bucket `i`.
fn upper(i: usize) -> u64 {
    if i < LINEAR {
        return i as u64;
    }
    let k = i - LINEAR;
    let e = (k / SUB) as u32 + SUB_BITS + 1;
    let sub = (k % SUB) as u64;
    let low = (1u64 << e) | (sub << (e - SUB_BITS));
    low + ((1u64 << (e - SUB_BITS)) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0u64; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
            min: u64::MAX,
            sum: 0,
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.sum += v as u128;
        if v > self.max {
            self.max = v;
        }
        if v < self.min {
            self.min = v;
        }
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest recorded value (0 if empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Smallest recorded value (0 if empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// Mean of the recorded values (0 if empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at percentile `p` (0–100): the upper bound of the bucket holding it,
    /// capped by the exact max. 0 if empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max).max(self.min());
            }
        }
        self.max
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
        self.min = self.min.min(other.min);
    }

    /// Empties the histogram.
    pub fn reset(&mut self) {
        if self.total == 0 {
            return;
        }
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
        self.sum = 0;
        self.max = 0;
        self.min = u64::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_u64() {
        let mut last = 0;
        for i in 1..BUCKETS {
            assert!(upper(i) > upper(i - 1), "bucket {i}");
            last = upper(i);
        }
        assert_eq!(last, u64::MAX);
        for v in [0u64, 1, 127, 128, 129, 1000, 123_456_789, u64::MAX / 3, u64::MAX] {
            let i = index(v);
            assert!(upper(i) >= v, "{v}");
            if i > 0 {
                assert!(upper(i - 1) < v, "{v}");
            }
        }
    }

    #[test]
    fn percentiles_within_relative_error() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (p, want) in [(50.0, 50_000_000f64), (99.0, 99_000_000.0), (100.0, 1e8)] {
            let got = h.percentile(p) as f64;
            assert!((got - want).abs() / want < 0.02, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000_000);
        assert_eq!(h.min(), 1000);
        let mut m = Histogram::new();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count(), 200_000);
        assert_eq!(m.percentile(50.0), h.percentile(50.0));
        m.reset();
        assert_eq!(m.count(), 0);
        assert_eq!(m.percentile(99.0), 0);
    }
}
