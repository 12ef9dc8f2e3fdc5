//! The queue arguments that change a queue's behaviour, parsed once at declare time.

use std::sync::Arc;

use protocol::{FieldTable, FieldValue};

/// What happens when a length limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// LavinMQ's `x-delayed-retry-*`: how long a returned message waits before it is deliverable again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub min_ms: u64,
    /// None: linear (min × n); 1: constant; ≥ 2: exponential (min × mult^(n−1)).
    pub multiplier: Option<u64>,
    pub max_ms: Option<u64>,
}

/// Delivery limit applied when retry is on and no `x-delivery-limit` is given.
pub const DEFAULT_RETRY_DELIVERY_LIMIT: u32 = 20;

impl Retry {
    /// Delay before the `n`-th redelivery (n ≥ 1).
    pub fn delay_ms(&self, n: u32) -> u64 {
        let n = n.max(1) as u64;
        let d = match self.multiplier {
            None | Some(0) => self.min_ms.saturating_mul(n),
            Some(1) => self.min_ms,
            Some(m) => {
                let exp = (n - 1).min(63) as u32;
                self.min_ms.saturating_mul(m.saturating_pow(exp))
            }
        };
        match self.max_ms {
            Some(max) => d.min(max),
            None => d,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct QueueArgs {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<Arc<str>>,
    pub dead_letter_routing_key: Option<Arc<str>>,
    pub delivery_limit: Option<u32>,
    pub retry: Option<Retry>,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    /// `x-consumer-timeout` (ms): how long a delivery from this queue may stay unacknowledged before its
    /// channel is closed; overrides `--consumer-timeout`, 0 turns it off for this queue.
    pub consumer_timeout: Option<u64>,
}

fn int(t: &FieldTable, k: &str) -> Option<u64> {
    t.get(k).and_then(|v| v.as_i64()).map(|v| v.max(0) as u64)
}

fn string(t: &FieldTable, k: &str) -> Option<Arc<str>> {
    t.get(k).and_then(|v| v.as_str()).map(Arc::from)
}

impl QueueArgs {
    /// Reads the arguments (already validated by `args::validate_queue_args`).
    pub fn parse(t: &FieldTable) -> QueueArgs {
        let retry = int(t, "x-delayed-retry-min")
            .filter(|m| *m > 0)
            .map(|min_ms| Retry {
                min_ms,
                multiplier: int(t, "x-delayed-retry-multiplier"),
                max_ms: int(t, "x-delayed-retry-max"),
            });
        let delivery_limit = int(t, "x-delivery-limit")
            .map(|n| n.min(u32::MAX as u64) as u32)
            .or(retry.map(|_| DEFAULT_RETRY_DELIVERY_LIMIT));
        QueueArgs {
            message_ttl: int(t, "x-message-ttl"),
            expires: int(t, "x-expires"),
            max_length: int(t, "x-max-length"),
            max_length_bytes: int(t, "x-max-length-bytes"),
            overflow: match t.get("x-overflow").and_then(|v| v.as_str()) {
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            },
            dead_letter_exchange: string(t, "x-dead-letter-exchange"),
            dead_letter_routing_key: string(t, "x-dead-letter-routing-key"),
            delivery_limit,
            retry,
            max_priority: int(t, "x-max-priority").map(|p| p.min(255) as u8),
            single_active_consumer: matches!(t.get("x-single-active-consumer"), Some(FieldValue::Bool(true))),
            consumer_timeout: int(t, "x-consumer-timeout"),
        }
    }

    /// The acknowledgement timeout of deliveries from this queue (ms), given the broker's default.
    pub fn ack_timeout(&self, default: Option<u64>) -> Option<u64> {
        match self.consumer_timeout {
            Some(0) => None,
            Some(ms) => Some(ms),
            None => default,
        }
    }

    /// Whether the queue needs the timer (TTL, expiry, retry delays).
    pub fn timed(&self) -> bool {
        self.message_ttl.is_some() || self.expires.is_some() || self.retry.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_timeout_queue_argument_overrides_the_default_and_zero_turns_it_off() {
        let mut t = FieldTable::new();
        assert_eq!(QueueArgs::parse(&t).ack_timeout(Some(1_800_000)), Some(1_800_000));
        assert_eq!(QueueArgs::parse(&t).ack_timeout(None), None);
        t.insert("x-consumer-timeout", FieldValue::I64(5000));
        assert_eq!(QueueArgs::parse(&t).ack_timeout(Some(1_800_000)), Some(5000));
        assert_eq!(QueueArgs::parse(&t).ack_timeout(None), Some(5000));
        t.insert("x-consumer-timeout", FieldValue::I64(0));
        assert_eq!(QueueArgs::parse(&t).ack_timeout(Some(1_800_000)), None);
    }

    #[test]
    fn retry_delays() {
        let lin = Retry {
            min_ms: 100,
            multiplier: None,
            max_ms: None,
        };
        assert_eq!([1, 2, 3].map(|n| lin.delay_ms(n)), [100, 200, 300]);
        let constant = Retry {
            min_ms: 100,
            multiplier: Some(1),
            max_ms: None,
        };
        assert_eq!([1, 2, 3].map(|n| constant.delay_ms(n)), [100, 100, 100]);
        let exp = Retry {
            min_ms: 100,
            multiplier: Some(2),
            max_ms: Some(500),
        };
        assert_eq!([1, 2, 3, 4].map(|n| exp.delay_ms(n)), [100, 200, 400, 500]);
        assert_eq!(exp.delay_ms(1000), 500);
    }

    #[test]
    fn retry_defaults_delivery_limit() {
        let mut t = FieldTable::new();
        t.insert("x-delayed-retry-min", FieldValue::I32(10));
        assert_eq!(
            QueueArgs::parse(&t).delivery_limit,
            Some(DEFAULT_RETRY_DELIVERY_LIMIT)
        );
        t.insert("x-delivery-limit", FieldValue::I32(3));
        assert_eq!(QueueArgs::parse(&t).delivery_limit, Some(3));
    }
}
