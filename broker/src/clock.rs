//! The broker's clock: wall-clock milliseconds since the Unix epoch, the unit of every TTL, expiry, retry
//! delay and `x-death` time. Queues never read the clock themselves: callers pass `now`, so tests can drive
//! time by hand.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2020_and_monotone_enough() {
        let a = super::now_ms();
        let b = super::now_ms();
        assert!(a > 1_577_836_800_000, "{a}");
        assert!(b >= a);
    }
}
