//! Expiry: message TTLs (`x-message-ttl` and the `expiration` property, the smaller wins) and the queue's own
//! `x-expires` (deleted after that long unused: no consumer and no basic.get or redeclare).
//!
//! Expired messages are removed at the head (the timer, a pull, a get), as RabbitMQ does, and dead-lettered
//! with reason `expired`; they are never delivered.

use crate::message::Message;
use crate::queue_args::QueueArgs;

/// How long a TTL-0 message handed to a waiting consumer may wait for that consumer's pull.
pub(super) const TTL_ZERO_GRACE_MS: u64 = 100;

pub(super) struct Expiry {
    message_ttl: Option<u64>,
    expires: Option<u64>,
    /// Last time the queue was used (consume, get, declare), for `x-expires`.
    last_used: u64,
    /// Some message carries a per-message expiration: the timer must look at the heads.
    has_expiring: bool,
}

impl Expiry {
    pub fn new(args: &QueueArgs, now: u64) -> Expiry {
        Expiry {
            message_ttl: args.message_ttl,
            expires: args.expires,
            last_used: now,
            has_expiring: false,
        }
    }

    /// A policy changed the queue's TTL or `expires` (messages already in the queue keep their expiry).
    pub fn set_ttls(&mut self, message_ttl: Option<u64>, expires: Option<u64>) {
        self.message_ttl = message_ttl;
        self.expires = expires;
    }

    /// When a message published now expires. A message that would expire at once (TTL 0) but that a
    /// waiting consumer can take now gets a short grace instead (`consumer_waiting` is asked only then).
    pub fn at_publish(
        &self,
        msg: &Message,
        now: u64,
        consumer_waiting: impl FnOnce() -> bool,
    ) -> Option<u64> {
        let q = self.message_ttl.map(|t| now.saturating_add(t));
        let m = msg.expiration_ms.map(|t| now.saturating_add(t));
        let at = match (q, m) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if at.is_some_and(|t| t <= now) && consumer_waiting() {
            return Some(now + TTL_ZERO_GRACE_MS);
        }
        at
    }

    /// A message with an expiry entered the queue (or may have: messages read back after a restart).
    pub fn note_expiring(&mut self) {
        self.has_expiring = true;
    }

    /// The queue was used now (consumer added or removed, basic.get, redeclare).
    pub fn touch(&mut self, now: u64) {
        self.last_used = now;
    }

    /// Whether the heads must be checked for expired messages.
    pub fn heads_may_expire(&self) -> bool {
        self.has_expiring || self.message_ttl.is_some()
    }

    /// Whether some message carries its own expiration (the timer must visit the queue).
    pub fn has_expiring(&self) -> bool {
        self.has_expiring
    }

    /// `x-expires`: unused (no consumers) for at least that long.
    pub fn unused_too_long(&self, now: u64, has_consumers: bool) -> bool {
        self.expires
            .is_some_and(|ttl| !has_consumers && now.saturating_sub(self.last_used) >= ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use protocol::{BasicProperties, FieldTable, FieldValue, RawProperties, ShortStr};

    fn args(pairs: &[(&str, i64)]) -> QueueArgs {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(*k, FieldValue::I64(*v));
        }
        QueueArgs::parse(&t)
    }

    fn msg(expiration: Option<&str>) -> Message {
        let props = BasicProperties {
            expiration: expiration.map(ShortStr::from),
            ..Default::default()
        };
        Message::new(
            ShortStr::from_static(""),
            ShortStr::from_static("q"),
            RawProperties::from_properties(&props),
            Bytes::new(),
        )
    }

    #[test]
    fn the_smaller_of_queue_ttl_and_expiration_wins() {
        let e = Expiry::new(&args(&[("x-message-ttl", 500)]), 0);
        assert_eq!(e.at_publish(&msg(None), 1000, || false), Some(1500));
        assert_eq!(e.at_publish(&msg(Some("200")), 1000, || false), Some(1200));
        assert_eq!(e.at_publish(&msg(Some("900")), 1000, || false), Some(1500));
        let none = Expiry::new(&args(&[]), 0);
        assert_eq!(none.at_publish(&msg(None), 1000, || unreachable!()), None);
        assert_eq!(none.at_publish(&msg(Some("7")), 1000, || false), Some(1007));
    }

    #[test]
    fn ttl_zero_gets_a_grace_only_with_a_waiting_consumer() {
        let e = Expiry::new(&args(&[("x-message-ttl", 0)]), 0);
        assert_eq!(e.at_publish(&msg(None), 1000, || false), Some(1000));
        assert_eq!(
            e.at_publish(&msg(None), 1000, || true),
            Some(1000 + TTL_ZERO_GRACE_MS)
        );
    }

    #[test]
    fn x_expires_counts_from_last_use_and_only_without_consumers() {
        let mut e = Expiry::new(&args(&[("x-expires", 100)]), 0);
        assert!(!e.unused_too_long(99, false));
        assert!(e.unused_too_long(100, false));
        assert!(!e.unused_too_long(100, true));
        e.touch(100);
        assert!(!e.unused_too_long(150, false));
        assert!(e.unused_too_long(200, false));
        assert!(!Expiry::new(&args(&[]), 0).unused_too_long(u64::MAX, false));
    }

    #[test]
    fn heads_are_checked_with_a_queue_ttl_or_once_a_message_expires() {
        let mut e = Expiry::new(&args(&[]), 0);
        assert!(!e.heads_may_expire() && !e.has_expiring());
        e.note_expiring();
        assert!(e.heads_may_expire() && e.has_expiring());
        assert!(Expiry::new(&args(&[("x-message-ttl", 5)]), 0).heads_may_expire());
    }
}
