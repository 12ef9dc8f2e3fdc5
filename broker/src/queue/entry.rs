//! What a queue holds: entries (a shared message plus its place and history in this queue), and the dead
//! letters a queue operation hands back to its caller.

use std::sync::Arc;

use crate::message::Message;

/// A message sitting in a queue (ready) or delivered and not yet acked (held by a channel).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue; requeued messages go back to their original position.
    pub seq: u64,
    pub msg: Arc<Message>,
    pub redelivered: bool,
    /// How many times this message was returned to the queue.
    pub delivery_count: u32,
    /// When it expires (ms since the epoch): the smaller of the queue's TTL and the message's expiration.
    pub expires_at: Option<u64>,
    /// Not deliverable before this time (delayed retry).
    pub not_before: Option<u64>,
}

impl Entry {
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Why a message was dead-lettered, as RabbitMQ names it in `x-death`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message leaving its queue for the dead-letter exchange (or for nowhere).
#[derive(Debug)]
pub struct Dead {
    pub entry: Entry,
    pub reason: DeathReason,
}

/// Messages that died in a queue operation (rejected, expired, over a length or delivery limit), collected
/// under the queue's lock and handed back to the caller. The caller passes them to `VHost::dead_letter` once
/// it holds no queue lock: the queue never reaches up to its vhost. Empty costs nothing (no allocation), and
/// a drained value can be reused.
#[derive(Debug, Default)]
pub struct DeadLetters(Vec<Dead>);

impl DeadLetters {
    pub fn new() -> DeadLetters {
        DeadLetters(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn push(&mut self, entry: Entry, reason: DeathReason) {
        self.0.push(Dead { entry, reason });
    }

    pub fn iter(&self) -> impl Iterator<Item = &Dead> {
        self.0.iter()
    }

    /// Takes every dead letter out, leaving this empty (its buffer is kept).
    pub fn drain(&mut self) -> std::vec::Drain<'_, Dead> {
        self.0.drain(..)
    }

    /// Forgets every dead letter, keeping the buffer.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Moves the dead letters out (for handling after a lock is released), leaving this empty.
    pub fn take(&mut self) -> DeadLetters {
        DeadLetters(std::mem::take(&mut self.0))
    }
}
