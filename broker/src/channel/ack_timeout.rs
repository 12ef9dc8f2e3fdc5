//! The consumer acknowledgement timeout (`--consumer-timeout`, default 30 minutes, and the queue argument
//! `x-consumer-timeout`): a channel that holds a delivery unacknowledged for longer is closed with 406, and
//! closing it requeues every delivery it held, as RabbitMQ does (rabbit_channel.erl
//! `handle_consumer_timed_out/5`: the same warning and reply text). RabbitMQ 4.3 applies the queue argument
//! to quorum queues only; Mailroom applies it to every queue.
//!
//! The connection calls [`Channel::check_ack_timeout`] about once a second while the channel holds
//! unacknowledged deliveries. Deliveries are kept in delivery order, so the check reads from the oldest and
//! stops at the first one younger than the smallest timeout that applies on this channel.

use std::sync::Arc;

use super::{Channel, Ctx};
use crate::error::AmqpError;
use crate::queue::{ConsumerId, Queue};

impl Channel {
    /// Notes that a delivery from `queue` is now unacknowledged on this channel (once per delivered batch).
    pub(super) fn note_ack_timeout(&mut self, queue: &Queue, default: Option<u64>) {
        if let Some(t) = queue.args.ack_timeout(default) {
            self.ack_timeout_floor = self.ack_timeout_floor.min(t);
        }
    }

    /// True when the channel holds deliveries the consumer timeout applies to.
    pub fn watches_ack_timeout(&self) -> bool {
        !self.closing && !self.unacked.is_empty() && self.ack_timeout_floor != u64::MAX
    }

    /// Closes the channel (406, RabbitMQ's text) if one of its deliveries has waited for its
    /// acknowledgement longer than its queue's timeout at `now` (ms). Returns true if it did.
    pub fn check_ack_timeout(&mut self, now: u64, ctx: &mut Ctx) -> bool {
        if !self.watches_ack_timeout() {
            return false;
        }
        let default = ctx.session.consumer_timeout;
        let mut timed_out: Option<(u64, Option<ConsumerId>, Arc<Queue>, u64)> = None;
        for u in &self.unacked {
            let age = now.saturating_sub(u.delivered_at);
            if age < self.ack_timeout_floor {
                break;
            }
            if let Some(t) = u.queue.args.ack_timeout(default) {
                if age >= t {
                    timed_out = Some((u.tag, u.consumer, u.queue.clone(), t));
                    break;
                }
            }
        }
        let Some((tag, consumer, queue, timeout)) = timed_out else {
            return false;
        };
        let consumer = consumer
            .and_then(|id| ctx.session.consumers.get(&id))
            .map(|c| c.tag.to_string())
            .unwrap_or_default();
        tracing::warn!(
            conn = ctx.session.id,
            channel = self.id,
            queue = %queue.name(),
            consumer_tag = %consumer,
            delivery_tag = tag,
            timeout_ms = timeout,
            "Consumer '{consumer}' on channel {} and queue '{}' has timed out waiting for a consumer \
             acknowledgement of a delivery with delivery tag {tag}. Timeout used: {timeout} ms",
            self.id,
            queue.name()
        );
        self.close_with(
            AmqpError::precondition_failed(format!(
                "delivery acknowledgement on channel {} timed out. Timeout value used: {timeout} ms. This \
                 timeout value can be configured, see consumers doc guide to learn more",
                self.id
            )),
            ctx,
        );
        true
    }
}
