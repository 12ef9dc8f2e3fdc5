//! Length limits (`x-max-length`, `x-max-length-bytes`) and what happens at the limit (`x-overflow`):
//! drop-head makes room by dead-lettering the oldest messages (reason `maxlen`); reject-publish refuses the
//! new message (the publisher gets a nack); reject-publish-dlx refuses it and dead-letters it.
//!
//! This is also where the flow-control issue adds its per-queue bounds (memory held, messages in flight):
//! a bound is a limit checked at publish, with an action when it is reached.

use crate::queue_args::{Overflow, QueueArgs};

/// What a publish meets at the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AtLimit {
    /// Room enough (or drop-head: the new message goes in and the head makes room after).
    Admit,
    /// reject-publish: refused.
    Reject,
    /// reject-publish-dlx: refused and dead-lettered.
    RejectAndDeadLetter,
}

pub(super) struct Limits {
    max_length: Option<u64>,
    max_length_bytes: Option<u64>,
    overflow: Overflow,
}

impl Limits {
    pub fn new(args: &QueueArgs) -> Limits {
        Limits {
            max_length: args.max_length,
            max_length_bytes: args.max_length_bytes,
            overflow: args.overflow,
        }
    }

    /// Whether the queue has a length limit at all (the common case has none and checks nothing).
    pub fn is_bounded(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }

    /// A publish of `adding` body bytes into a queue holding `count` messages and `bytes` ready body bytes.
    pub fn on_publish(&self, count: u64, bytes: u64, adding: u64) -> AtLimit {
        if !self.is_bounded() || self.overflow == Overflow::DropHead {
            return AtLimit::Admit;
        }
        let full = self.max_length.is_some_and(|m| count >= m)
            || self.max_length_bytes.is_some_and(|m| bytes + adding > m);
        match (full, self.overflow) {
            (false, _) => AtLimit::Admit,
            (true, Overflow::RejectPublishDlx) => AtLimit::RejectAndDeadLetter,
            (true, _) => AtLimit::Reject,
        }
    }

    /// Over the limit (drop-head drops the head while this holds).
    pub fn is_over(&self, count: u64, bytes: u64) -> bool {
        self.max_length.is_some_and(|m| count > m) || self.max_length_bytes.is_some_and(|m| bytes > m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{FieldTable, FieldValue, LongStr};

    fn limits(len: Option<i64>, bytes: Option<i64>, overflow: Option<&str>) -> Limits {
        let mut t = FieldTable::new();
        if let Some(n) = len {
            t.insert("x-max-length", FieldValue::I64(n));
        }
        if let Some(n) = bytes {
            t.insert("x-max-length-bytes", FieldValue::I64(n));
        }
        if let Some(o) = overflow {
            t.insert("x-overflow", FieldValue::LongStr(LongStr::from(o)));
        }
        Limits::new(&QueueArgs::parse(&t))
    }

    #[test]
    fn unbounded_admits_everything() {
        let l = limits(None, None, Some("reject-publish"));
        assert!(!l.is_bounded());
        assert_eq!(l.on_publish(u64::MAX, u64::MAX / 2, 1), AtLimit::Admit);
        assert!(!l.is_over(u64::MAX, u64::MAX));
    }

    #[test]
    fn drop_head_admits_then_is_over() {
        let l = limits(Some(2), None, None);
        assert_eq!(l.on_publish(2, 0, 10), AtLimit::Admit);
        assert!(!l.is_over(2, 0));
        assert!(l.is_over(3, 0));
    }

    #[test]
    fn reject_publish_at_count_or_bytes() {
        let l = limits(Some(2), Some(100), Some("reject-publish"));
        assert_eq!(l.on_publish(1, 50, 50), AtLimit::Admit);
        assert_eq!(l.on_publish(2, 0, 1), AtLimit::Reject);
        assert_eq!(l.on_publish(1, 50, 51), AtLimit::Reject);
        let dlx = limits(Some(1), None, Some("reject-publish-dlx"));
        assert_eq!(dlx.on_publish(1, 0, 0), AtLimit::RejectAndDeadLetter);
    }

    #[test]
    fn bytes_limit_alone() {
        let l = limits(None, Some(10), None);
        assert!(l.is_bounded());
        assert!(!l.is_over(1000, 10));
        assert!(l.is_over(0, 11));
    }
}
