//! basic.publish: checks, one shared `Message`, routing under the vhost's router read lock, enqueueing on
//! every queue the route reached, mandatory returns, and the confirm it owes (`confirm.rs`). In a
//! transaction the publish is routed now and enqueued at commit (`tx.rs`).

use std::sync::Arc;

use bytes::Bytes;
use protocol::{reply, BasicPublish, ContentHeader, Method, ShortStr};

use super::{Channel, Ctx};
use crate::dedup::Seen;
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::queue::{DeadLetters, Queue, Rejected};
use crate::session::Session;
use crate::stats::MessageCounters;
use crate::users::{Perm, Res};

impl Channel {
    pub(super) fn basic_publish(
        &mut self,
        p: BasicPublish,
        header: ContentHeader,
        body: Bytes,
        ctx: &mut Ctx,
    ) -> AmqpResult<()> {
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        ctx.session.check_message_size(body.len() as u64)?;
        self.permit(ctx.session, Perm::Write, Res::Exchange, p.exchange.as_str())?;
        if let Some(uid) = header.properties.user_id() {
            if uid != ctx.session.user.as_str() {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    ctx.session.user
                )));
            }
        }
        crate::message::validate_expiration(&header.properties).map_err(AmqpError::precondition_failed)?;
        // A request with reply_to = amq.rabbitmq.reply-to gets this channel's reply name.
        let properties = self.request_reply_to(header.properties)?;
        let msg = Arc::new(
            Message::published(p.exchange.clone(), p.routing_key.clone(), properties, body)
                .map_err(AmqpError::precondition_failed)?,
        );
        ctx.session.stats.messages.published(msg.body.len() as u64);
        // The route buffer is the session's, reused by every publish: taken here, given back once below.
        let mut dests = std::mem::take(&mut ctx.session.route_scratch);
        let r = self.route_and_enqueue(p, msg, &mut dests, ctx);
        ctx.session.route_scratch = dests;
        r
    }

    fn route_and_enqueue(
        &mut self,
        p: BasicPublish,
        msg: Arc<Message>,
        dests: &mut Vec<router::Name>,
        ctx: &mut Ctx,
    ) -> AmqpResult<()> {
        // Deduplication before routing (an `x-message-deduplication` exchange, or one declared with the
        // argument): a duplicate is dropped and confirmed with an ack (docs/event-streams.md).
        let mut dedup_ticket = 0;
        let dedup = if !ctx.session.vhost.dedup.has_any(false) {
            None
        } else {
            let now = ctx.session.now_ms();
            ctx.session
                .vhost
                .dedup
                .check(false, p.exchange.as_str(), &msg.properties, now)
        };
        let vhost = &ctx.session.vhost;
        match dedup {
            Some(Seen::Duplicate(t)) if self.tx.is_none() => {
                if p.mandatory {
                    // The plugin's exchange routes a duplicate nowhere: a mandatory one comes back.
                    self.return_unroutable(&p, &msg, ctx);
                }
                self.confirms.record(t, true);
                return Ok(());
            }
            Some(Seen::Duplicate(_)) => return Ok(()),
            Some(Seen::New(t)) => dedup_ticket = t,
            None => {}
        }
        // An `x-delayed-message` exchange holds a message with a positive `x-delay` until it is due; its
        // confirm waits for the store (delayed.rs). Mandatory does not apply to a held message (as the plugin).
        if let Some(delay) = crate::delayed::delay_of(&msg.properties) {
            if vhost.holds(p.exchange.as_str()) {
                let t = vhost.hold_delayed(&msg, delay)?;
                self.confirms.record(t.max(dedup_ticket), true);
                return Ok(());
            }
        }
        // Sender-selected distribution: the CC and BCC keys route too (only messages that carry them). The
        // headers are decoded only if the route reaches an exchange that reads them (a headers exchange with
        // bindings, a consistent-hash exchange with `hash-header`): a deduplication id costs no decode.
        if let Some(tx) = self.tx.as_mut() {
            vhost.route_message(p.exchange.as_str(), p.routing_key.as_str(), &msg, dests)?;
            // Routed now, as RabbitMQ does (errors surface at once); enqueued at commit.
            tx.publishes.push((p, msg, dests.clone()));
            return Ok(());
        }
        // The same exchange and key as this connection's last publish, and no exchange, binding or queue
        // changed since: the same queues (`session::RouteCache`). The epoch is read before routing, so a
        // route computed while the topology changes is not kept past this publish.
        let session = &mut *ctx.session;
        session
            .route_cache
            .route(&session.vhost, &p.exchange, &p.routing_key, &msg, dests)?;
        let queues = std::mem::take(&mut ctx.session.route_cache.queues);
        self.enqueue_to(&p, msg, &queues, dedup_ticket, ctx);
        ctx.session.route_cache.queues = queues;
        Ok(())
    }

    /// Enqueues one routed message on every queue it reached, returns it if mandatory and unroutable, and
    /// records its confirm (no earlier than `ticket`, a deduplication entry's). Returns the store ticket its
    /// writes need (0: none).
    pub(super) fn enqueue(
        &mut self,
        p: &BasicPublish,
        msg: Arc<Message>,
        dests: &[router::Name],
        ticket: u64,
        ctx: &mut Ctx,
    ) -> u64 {
        let mut queues = Vec::with_capacity(dests.len());
        ctx.session.vhost.with_queues(dests, |q| queues.push(q.clone()));
        self.enqueue_to(p, msg, &queues, ticket, ctx)
    }

    /// `enqueue` to queues already looked up.
    fn enqueue_to(
        &mut self,
        p: &BasicPublish,
        msg: Arc<Message>,
        queues: &[Arc<Queue>],
        mut ticket: u64,
        ctx: &mut Ctx,
    ) -> u64 {
        if ctx.session.vhost.trace.on() {
            self.trace_publish(p, &msg, queues, ctx.session);
        }
        let now = ctx.session.now_ms();
        let Session {
            vhost,
            flow_queues,
            flow_dirty,
            published,
            ..
        } = &mut *ctx.session;
        *published = true;
        let mut enqueued = 0usize;
        let mut failed = false;
        let mut dead = DeadLetters::new();
        let dedup_queues = vhost.dedup.has_any(true);
        // Dead letters (drop-head, TTL 0) are routed once every queue has taken the message.
        let mut deferred: Vec<(Arc<Queue>, DeadLetters)> = Vec::new();
        for q in queues {
            if dedup_queues {
                // A deduplicating queue drops a duplicate (routed, so no return) and acks its confirm.
                match vhost.dedup.check(true, q.name(), &msg.properties, now) {
                    Some(Seen::Duplicate(t)) => {
                        enqueued += 1;
                        ticket = ticket.max(t);
                        continue;
                    }
                    Some(Seen::New(t)) => ticket = ticket.max(t),
                    None => {}
                }
            }
            match q.publish(msg.clone(), now, &mut dead) {
                Ok(t) => {
                    enqueued += 1;
                    ticket = ticket.max(t);
                }
                Err(Rejected::Store | Rejected::Full) => failed = true,
                Err(Rejected::Deleted) => {}
            }
            if !dead.is_empty() {
                deferred.push((q.clone(), dead.take()));
            }
            // Flow control: the queue is over its bound; the connection stops reading after this frame.
            if q.flow_over() && !flow_queues.iter().any(|f| Arc::ptr_eq(f, q)) {
                flow_queues.push(q.clone());
                *flow_dirty = true;
            }
        }
        for (q, mut d) in deferred {
            vhost.dead_letter(&q, &mut d, now);
        }
        if p.exchange.is_empty() {
            // Direct replies: keys that name a requester's amq.rabbitmq.reply-to.* go straight to it.
            enqueued += Self::send_replies(&msg, ctx.session);
        }
        let counters = &ctx.session.stats.messages;
        if self.confirms.is_enabled() {
            MessageCounters::add(&counters.received_confirm, 1);
        }
        if enqueued > 0 {
            MessageCounters::add(&counters.routed, 1);
        } else if p.mandatory {
            MessageCounters::add(&counters.unroutable_returned, 1);
        } else {
            MessageCounters::add(&counters.unroutable_dropped, 1);
        }
        if enqueued == 0 && p.mandatory {
            self.return_unroutable(p, &msg, ctx);
        }
        self.confirms.record(ticket, !failed);
        ticket
    }

    /// basic.return 312 NO_ROUTE of a mandatory message.
    pub(super) fn return_unroutable(&mut self, p: &BasicPublish, msg: &Message, ctx: &mut Ctx) {
        let m = Method::BasicReturn(protocol::BasicReturn {
            reply_code: reply::NO_ROUTE,
            reply_text: ShortStr::from_static("NO_ROUTE"),
            exchange: p.exchange.clone(),
            routing_key: p.routing_key.clone(),
        });
        ctx.out.method(self.id, &m);
        ctx.out.content(self.id, &msg.properties, &msg.body);
    }
}
