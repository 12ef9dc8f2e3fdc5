//! Direct reply-to (https://www.rabbitmq.com/docs/direct-reply-to): RPC replies without a reply queue.
//!
//! A requester consumes from the pseudo-queue `amq.rabbitmq.reply-to` in no-ack mode and publishes requests
//! with `reply_to = amq.rabbitmq.reply-to`; the broker rewrites that to the channel's own
//! `amq.rabbitmq.reply-to.<token>` name; a reply published to that name on the default exchange goes straight
//! to the requester's channel and is delivered to its consumer, with no queue in between (at most once).
//!
//! RabbitMQ's rules (rabbit_channel.erl 4.x: the `basic.consume` clause for `amq.rabbitmq.reply-to`,
//! `maybe_set_fast_reply_to`/`override_reply_to`, the `queue.declare` clause for `amq.rabbitmq.reply-to*`,
//! `deliver_reply`; rabbit_volatile_queue.erl in 4.2):
//! - consuming without no-ack is 406 "reply consumer cannot acknowledge"; a second reply consumer on the
//!   channel is 406 "reply consumer already set";
//! - a request with that `reply_to` on a channel without a reply consumer is 406 "fast reply consumer does
//!   not exist";
//! - `queue.declare` (passive or not) of `amq.rabbitmq.reply-to` or of a live reply name answers declare-ok
//!   with 0 messages and 1 consumer, of any other reply name 404;
//! - a reply to a requester that went away is dropped; published with mandatory it comes back as
//!   basic.return 312 NO_ROUTE (RabbitMQ ≤ 4.1 treats the reply name as "not a queue" for mandatory;
//!   4.2 no longer checks the requester at routing time; Mailroom, on one node, knows and returns it).

use std::sync::Arc;

use protocol::{BasicDeliver, Method, RawProperties, ShortStr};

use super::{Channel, Ctx};
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::output::Output;
use crate::reply_to::{is_reply_name, PSEUDO_QUEUE};
use crate::session::Session;
use crate::signal::Reply;

/// This channel's reply consumer.
pub(super) struct ReplyConsumer {
    tag: ShortStr,
    /// `amq.rabbitmq.reply-to.<token>`: the `reply_to` its requests carry.
    name: Arc<str>,
}

impl Channel {
    /// basic.consume from `amq.rabbitmq.reply-to`.
    pub(super) fn reply_consume(&mut self, c: protocol::BasicConsume, ctx: &mut Ctx) -> AmqpResult<()> {
        if self.consumers.contains_key(&c.consumer_tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{}'",
                c.consumer_tag
            )));
        }
        if !c.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let tag = if c.consumer_tag.is_empty() {
            ShortStr::from(crate::names::consumer_tag())
        } else {
            c.consumer_tag
        };
        let name = ctx
            .session
            .vhost
            .reply_to
            .register(ctx.session.signal.clone(), self.id);
        self.reply = Some(ReplyConsumer {
            tag: tag.clone(),
            name,
        });
        if !c.no_wait {
            ctx.out.method(
                self.id,
                &Method::BasicConsumeOk(protocol::BasicConsumeOk { consumer_tag: tag }),
            );
        }
        Ok(())
    }

    /// basic.cancel of the reply consumer: true if `tag` was it.
    pub(super) fn reply_cancel(&mut self, tag: &ShortStr, session: &Session) -> bool {
        match &self.reply {
            Some(r) if &r.tag == tag => {
                self.release_reply(session);
                true
            }
            _ => false,
        }
    }

    /// The channel goes: its reply name stops existing (replies to it are dropped, or returned).
    pub(super) fn release_reply(&mut self, session: &Session) {
        if let Some(r) = self.reply.take() {
            session.vhost.reply_to.unregister(&r.name);
        }
    }

    /// Whether `tag` is this channel's reply consumer's (consumer tags are unique per channel).
    pub(super) fn is_reply_tag(&self, tag: &ShortStr) -> bool {
        self.reply.as_ref().is_some_and(|r| &r.tag == tag)
    }

    /// queue.declare of `amq.rabbitmq.reply-to` or a name under it: never creates anything.
    pub(super) fn reply_declare(&mut self, d: &protocol::QueueDeclare, ctx: &mut Ctx) -> AmqpResult<()> {
        // As RabbitMQ's strip_cr_lf.
        let name: String = d
            .queue
            .as_str()
            .chars()
            .filter(|c| !matches!(c, '\r' | '\n'))
            .collect();
        if name != PSEUDO_QUEUE && !ctx.session.vhost.reply_to.exists(&name) {
            return Err(ctx.session.vhost.no_queue(&name));
        }
        self.last_queue = Some(name.as_str().into());
        if !d.no_wait {
            ctx.out.method(
                self.id,
                &Method::QueueDeclareOk(protocol::QueueDeclareOk {
                    queue: ShortStr::from(name.as_str()),
                    message_count: 0,
                    consumer_count: 1,
                }),
            );
        }
        Ok(())
    }

    /// A request naming `amq.rabbitmq.reply-to` gets this channel's reply name instead. Only publishes whose
    /// reply-to flag is set look further.
    pub(super) fn request_reply_to(&self, props: RawProperties) -> AmqpResult<RawProperties> {
        if !props.has_reply_to() || props.reply_to() != Some(PSEUDO_QUEUE) {
            return Ok(props);
        }
        let Some(r) = &self.reply else {
            return Err(AmqpError::precondition_failed(
                "fast reply consumer does not exist",
            ));
        };
        props
            .with_reply_to(&ShortStr::from(&*r.name))
            .map_err(AmqpError::from)
    }

    /// A reply to `amq.rabbitmq.reply-to.*` names among the message's routing keys (a publish on the default
    /// exchange): each requester still there gets it. Returns how many did.
    pub(super) fn send_replies(msg: &Arc<Message>, session: &Session) -> usize {
        let targets = &session.vhost.reply_to;
        let mut n = 0;
        if is_reply_name(&msg.routing_key) && targets.deliver(&msg.routing_key, msg) {
            n += 1;
        }
        for key in msg.extra_routing_keys() {
            if is_reply_name(key) && **key != *msg.routing_key && targets.deliver(key, msg) {
                n += 1;
            }
        }
        n
    }

    /// A direct reply for this channel (from `Conn::on_signal`): delivered to the reply consumer, if it is
    /// still the one the reply was addressed to; else dropped.
    pub fn deliver_reply(&mut self, reply: Reply, out: &mut Output) {
        let Some(r) = &self.reply else { return };
        if self.closing || r.name != reply.name {
            return;
        }
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        out.method(
            self.id,
            &Method::BasicDeliver(BasicDeliver {
                consumer_tag: r.tag.clone(),
                delivery_tag,
                redelivered: false,
                exchange: reply.msg.exchange.clone(),
                routing_key: reply.msg.routing_key.clone(),
            }),
        );
        out.content(self.id, &reply.msg.properties, &reply.msg.body);
    }
}
