//! Message stamps (what every body starts with) and per-producer sequence tracking.

/// Bits of the stamp word that hold the sequence number; the top 16 hold the producer id.
pub const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// Wall clock in nanoseconds since the Unix epoch (agrees across tasks and processes on a host).
#[inline]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Monotonic nanoseconds since the first call in this process (never 0 after that call:
/// it starts at 1). Used for timestamps shared between tasks through atomics.
#[inline]
pub fn mono_ns() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(std::time::Instant::now);
    base.elapsed().as_nanos() as u64 + 1
}

/// Writes producer id, sequence and send time into the first 16 bytes of `body`.
#[inline]
pub fn stamp(body: &mut [u8], producer: u16, seq: u64, ts_ns: u64) {
    let word = (u64::from(producer) << SEQ_BITS) | (seq & SEQ_MASK);
    body[..8].copy_from_slice(&word.to_be_bytes());
    body[8..16].copy_from_slice(&ts_ns.to_be_bytes());
}

/// Reads (producer id, sequence, send time) back; None if the body is too short.
#[inline]
pub fn parse_stamp(body: &[u8]) -> Option<(u16, u64, u64)> {
    if body.len() < 16 {
        return None;
    }
    let word = u64::from_be_bytes(body[..8].try_into().ok()?);
    let ts = u64::from_be_bytes(body[8..16].try_into().ok()?);
    Some(((word >> SEQ_BITS) as u16, word & SEQ_MASK, ts))
}

/// What a delivery turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time, and no higher sequence from this producer was seen before.
    InOrder,
    /// First time, but a higher sequence was already seen.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// The sequences of one producer seen by one consumer.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    bits: Vec<u64>,
    distinct: u64,
    /// One past the highest sequence seen.
    next: u64,
    /// Sequences that arrived with the redelivered flag (rare; used to classify
    /// duplicates found when merging consumers of one queue).
    redelivered: Vec<u64>,
}

impl SeqTracker {
    /// Records sequence `seq`.
    #[inline]
    pub fn observe(&mut self, seq: u64, redelivered: bool) -> Seen {
        let w = (seq / 64) as usize;
        if w >= self.bits.len() {
            let want = (w + 1).max(self.bits.len() * 2).max(1024);
            self.bits.resize(want, 0);
        }
        let m = 1u64 << (seq % 64);
        if redelivered {
            self.redelivered.push(seq);
        }
        if self.bits[w] & m != 0 {
            return Seen::Duplicate;
        }
        self.bits[w] |= m;
        self.distinct += 1;
        if seq + 1 > self.next {
            self.next = seq + 1;
            Seen::InOrder
        } else {
            Seen::OutOfOrder
        }
    }

    /// Number of distinct sequences seen.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Whether `seq` was seen.
    pub fn contains(&self, seq: u64) -> bool {
        self.bits
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Distinct sequences seen below `limit`.
    pub fn count_below(&self, limit: u64) -> u64 {
        let full = (limit / 64) as usize;
        let mut n: u64 = self
            .bits
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if let Some(w) = self.bits.get(full) {
            let rem = limit % 64;
            if rem > 0 {
                n += u64::from((w & ((1u64 << rem) - 1)).count_ones());
            }
        }
        n
    }

    /// Folds `other` (another consumer of the same queue) into `self`. Returns the
    /// duplicates found across the two as (plain, redelivered): a sequence both saw is a
    /// redelivered duplicate if either saw it with the redelivered flag.
    pub fn merge(&mut self, other: &SeqTracker) -> (u64, u64) {
        if self.bits.len() < other.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        let (mut plain, mut redelivered) = (0, 0);
        for (i, (a, b)) in self.bits.iter_mut().zip(other.bits.iter()).enumerate() {
            let both = *a & *b;
            if both != 0 {
                for bit in 0..64 {
                    if both & (1 << bit) != 0 {
                        let seq = i as u64 * 64 + bit;
                        if self.redelivered.contains(&seq) || other.redelivered.contains(&seq) {
                            redelivered += 1;
                        } else {
                            plain += 1;
                        }
                    }
                }
            }
            let new = *b & !*a;
            self.distinct += u64::from(new.count_ones());
            *a |= *b;
        }
        self.next = self.next.max(other.next);
        self.redelivered.extend_from_slice(&other.redelivered);
        (plain, redelivered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_roundtrip() {
        let mut b = [0u8; 20];
        stamp(&mut b, 513, (1 << 40) + 7, 1_700_000_000_123_456_789);
        assert_eq!(
            parse_stamp(&b),
            Some((513, (1 << 40) + 7, 1_700_000_000_123_456_789))
        );
        assert_eq!(parse_stamp(&b[..15]), None);
    }

    #[test]
    fn observe_classifies() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0, false), Seen::InOrder);
        assert_eq!(t.observe(2, false), Seen::InOrder);
        assert_eq!(t.observe(1, false), Seen::OutOfOrder);
        assert_eq!(t.observe(2, false), Seen::Duplicate);
        assert_eq!(t.observe(100_000, false), Seen::InOrder);
        assert_eq!(t.distinct(), 4);
        assert_eq!(t.count_below(3), 3);
        assert_eq!(t.count_below(100_000), 3);
        assert_eq!(t.count_below(100_001), 4);
        assert!(t.contains(1) && !t.contains(3));
    }

    #[test]
    fn merge_counts_cross_duplicates() {
        let mut a = SeqTracker::default();
        let mut b = SeqTracker::default();
        for s in [0, 1, 2, 5] {
            a.observe(s, false);
        }
        for s in [3, 4, 5] {
            b.observe(s, false);
        }
        b.observe(2, true);
        assert_eq!(a.merge(&b), (1, 1)); // 5 plain, 2 redelivered
        assert_eq!(a.distinct(), 6);
        assert_eq!(a.count_below(6), 6);
    }
}
