//! Settling deliveries: basic.ack, basic.nack, basic.reject, basic.recover and basic.recover-async. A
//! settled delivery gives its consumer (and channel) credit back, which schedules another pull.

use std::sync::Arc;

use protocol::Method;

use super::{requeue_grouped, Channel, Ctx, Unacked};
use crate::clock::now_ms;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::DeadLetters;
use crate::session::Session;
use crate::trace::Kind;
use crate::vhost::VHost;

/// An ack or a reject, as a transaction holds it until commit.
#[derive(Clone, Copy)]
pub(super) enum Settle {
    Ack { tag: u64, multiple: bool },
    Reject { tag: u64, multiple: bool, requeue: bool },
}

impl Channel {
    pub(super) fn basic_ack(&mut self, a: protocol::BasicAck, ctx: &mut Ctx) -> AmqpResult<()> {
        if ctx.session.vhost.trace.on() {
            self.trace_settle(Kind::Acked, a.delivery_tag, a.multiple, false, ctx.session);
        }
        // The usual consumer's ack, one per message, of the oldest delivery, outside a transaction: taken off
        // `unacked` now (a second ack of it is 406 at once), settled with the rest of its run.
        if !a.multiple && self.tx.is_none() && self.unacked.front().is_some_and(|u| u.tag == a.delivery_tag) {
            self.acked_run.extend(self.unacked.pop_front());
            ctx.session.acks_deferred = true;
            return Ok(());
        }
        self.settle(
            Settle::Ack {
                tag: a.delivery_tag,
                multiple: a.multiple,
            },
            ctx,
        )
    }

    pub(super) fn basic_reject(&mut self, r: protocol::BasicReject, ctx: &mut Ctx) -> AmqpResult<()> {
        if ctx.session.vhost.trace.on() {
            self.trace_settle(Kind::Rejected, r.delivery_tag, false, r.requeue, ctx.session);
        }
        self.settle(
            Settle::Reject {
                tag: r.delivery_tag,
                multiple: false,
                requeue: r.requeue,
            },
            ctx,
        )
    }

    pub(super) fn basic_nack(&mut self, n: protocol::BasicNack, ctx: &mut Ctx) -> AmqpResult<()> {
        if ctx.session.vhost.trace.on() {
            self.trace_settle(Kind::Nacked, n.delivery_tag, n.multiple, n.requeue, ctx.session);
        }
        self.settle(
            Settle::Reject {
                tag: n.delivery_tag,
                multiple: n.multiple,
                requeue: n.requeue,
            },
            ctx,
        )
    }

    /// basic.recover(-async): every unacked delivery of the channel goes back to its queue.
    pub(super) fn basic_recover(&mut self, requeue: bool, reply: bool, ctx: &mut Ctx) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let unacked: Vec<Unacked> = self.unacked.drain(..).collect();
        self.consumer_unacked = 0;
        self.after_settle(&unacked, ctx.session);
        requeue_grouped(&ctx.session.vhost, unacked, now_ms());
        if reply {
            ctx.out
                .method(self.id, &Method::BasicRecoverOk(protocol::BasicRecoverOk));
        }
        Ok(())
    }

    fn settle(&mut self, s: Settle, ctx: &mut Ctx) -> AmqpResult<()> {
        if let Some(tx) = self.tx.as_mut() {
            tx.settles.push(s);
            return Ok(());
        }
        self.apply_settle(s, ctx)
    }

    pub(super) fn apply_settle(&mut self, s: Settle, ctx: &mut Ctx) -> AmqpResult<()> {
        let mut taken = std::mem::take(&mut self.settle_scratch);
        let (tag, multiple, requeue) = match s {
            Settle::Ack { tag, multiple } => (tag, multiple, false),
            Settle::Reject {
                tag,
                multiple,
                requeue,
            } => (tag, multiple, requeue),
        };
        if let Err(e) = self.take_unacked(tag, multiple, &mut taken) {
            self.settle_scratch = taken;
            return Err(e);
        }
        self.after_settle(&taken, ctx.session);
        let vhost = &ctx.session.vhost;
        match s {
            _ if requeue => requeue_grouped(vhost, std::mem::take(&mut taken), now_ms()),
            Settle::Ack { .. } => {
                settle_acked(ctx.session, &taken);
                taken.clear();
            }
            Settle::Reject { .. } => reject_grouped(vhost, std::mem::take(&mut taken), now_ms()),
        }
        self.settle_scratch = taken;
        Ok(())
    }

    /// Removes the unacked deliveries named by an ack/nack/reject, RabbitMQ's way: `multiple` takes every
    /// tag up to and including `tag` (0 = all); an unknown tag is 406 and nothing is taken.
    /// Moves the deliveries into `out` (a reused buffer, so a single ack allocates nothing).
    fn take_unacked(&mut self, tag: u64, multiple: bool, out: &mut Vec<Unacked>) -> AmqpResult<()> {
        if multiple && tag == 0 {
            out.extend(self.unacked.drain(..));
            return Ok(());
        }
        // The usual single ack is of the oldest delivery: no search.
        if !multiple && self.unacked.front().is_some_and(|u| u.tag == tag) {
            out.extend(self.unacked.pop_front());
            return Ok(());
        }
        let pos = self.unacked.binary_search_by_key(&tag, |u| u.tag);
        match pos {
            Ok(i) if multiple => out.extend(self.unacked.drain(..=i)),
            Ok(i) => out.extend(self.unacked.remove(i)),
            Err(_) => {
                return Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                )))
            }
        }
        Ok(())
    }

    /// Settles the single acks `basic_ack` took since the last call, together: one credit update per
    /// consumer and one queue update per run of the same queue instead of one each per ack. Called before
    /// the channel's next frame that is not basic.ack, by the connection before its pulls
    /// (`Session::acks_deferred`), and when the channel is released.
    pub fn settle_acked_run(&mut self, session: &mut Session) {
        if self.acked_run.is_empty() {
            return;
        }
        let run = std::mem::take(&mut self.acked_run);
        self.after_settle(&run, session);
        settle_acked(session, &run);
        self.acked_run = run;
        self.acked_run.clear();
    }

    /// Gives credit back to the consumers (and channel) whose deliveries were settled.
    fn after_settle(&mut self, taken: &[Unacked], session: &mut Session) {
        let mut from_consumers = 0u32;
        // Runs of the same consumer (the usual case) cost one lookup.
        let mut i = 0;
        while i < taken.len() {
            let Some(cid) = taken[i].consumer else {
                i += 1;
                continue;
            };
            let mut n = 1;
            while taken.get(i + n).is_some_and(|u| u.consumer == Some(cid)) {
                n += 1;
            }
            i += n;
            from_consumers += n as u32;
            if let Some(c) = session.consumers.get_mut(&cid) {
                c.unacked = c.unacked.saturating_sub(n as u32);
            }
            session.schedule_pull(cid);
        }
        self.consumer_unacked = self.consumer_unacked.saturating_sub(from_consumers);
        if from_consumers > 0 && self.channel_prefetch > 0 {
            self.schedule_consumers(session);
        }
    }

    /// Schedules a pull for every consumer of the channel (its shared limit changed), without allocating.
    pub(super) fn schedule_consumers(&self, session: &mut Session) {
        for &id in self.consumers.values() {
            session.schedule_pull(id);
        }
    }
}

/// Rejects deliveries without requeue: dead-lettered or dropped.
fn reject_grouped(vhost: &VHost, unacked: Vec<Unacked>, now: u64) {
    let mut dead = DeadLetters::new();
    for (q, entries) in super::group_by_queue(unacked) {
        q.reject(entries, &mut dead);
        vhost.dead_letter(&q, &mut dead, now);
    }
}

/// Acked deliveries settled for good: counted, and one store delete per run of the same queue.
fn settle_acked(session: &Session, taken: &[Unacked]) {
    crate::stats::MessageCounters::add(&session.stats.messages.acknowledged, taken.len() as u64);
    settle_grouped(taken);
}

/// Settles deliveries for good (ack): one store delete per run of the same queue.
fn settle_grouped(taken: &[Unacked]) {
    let mut i = 0;
    while i < taken.len() {
        let q = &taken[i].queue;
        let mut j = i + 1;
        while j < taken.len() && Arc::ptr_eq(&taken[j].queue, q) {
            j += 1;
        }
        q.settle_acked(taken[i..j].iter().map(|u| (&u.entry, u.consumer)));
        i = j;
    }
}
