//! Consumers: basic.qos, basic.consume, basic.cancel, and a consumer cancelled by the server (its queue was
//! deleted), which the client hears about as basic.cancel when it asked to.

use crate::users::{Perm, Res};
use protocol::{Method, ShortStr};

use super::{Channel, Ctx};
use crate::clock::now_ms;
use crate::error::{AmqpError, AmqpResult};
use crate::output::Output;
use crate::queue::{next_consumer_id, QueueKind};
use crate::session::ConsumerState;

impl Channel {
    pub(super) fn basic_qos(&mut self, q: protocol::BasicQos, ctx: &mut Ctx) -> AmqpResult<()> {
        if q.prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format!(
                "prefetch_size!=0 ({})",
                q.prefetch_size
            )));
        }
        if q.global {
            self.channel_prefetch = q.prefetch_count;
        } else {
            self.consumer_prefetch = q.prefetch_count;
        }
        // A raised limit may let consumers take more.
        self.schedule_consumers(ctx.session);
        ctx.out.method(self.id, &Method::BasicQosOk(protocol::BasicQosOk));
        Ok(())
    }

    pub(super) fn basic_consume(&mut self, c: protocol::BasicConsume, ctx: &mut Ctx) -> AmqpResult<()> {
        if c.queue.as_str() == crate::reply_to::PSEUDO_QUEUE {
            return self.reply_consume(c, ctx);
        }
        let name = self.queue_name(&c.queue)?;
        self.permit(ctx.session, Perm::Read, Res::Queue, &name)?;
        let q = self.usable_queue(&c.queue, ctx.session)?;
        let tag = if c.consumer_tag.is_empty() {
            ShortStr::from(crate::names::consumer_tag())
        } else {
            c.consumer_tag.clone()
        };
        if self.consumers.contains_key(&tag) || self.is_reply_tag(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let id = next_consumer_id();
        let priority = match c.arguments.get("x-priority") {
            None => 0,
            Some(v) => v
                .as_i64()
                .map(|p| p.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                .ok_or_else(|| {
                    AmqpError::precondition_failed(format!(
                        "invalid arg 'x-priority' for consumer: {{unacceptable_type,{}}}",
                        v.type_code() as char
                    ))
                })?,
        };
        let session = &mut *ctx.session;
        if q.kind == QueueKind::Stream {
            let spec = self.stream_consume_spec(&q, &c.arguments, c.no_ack, &tag, &session.vhost.name)?;
            q.add_stream_consumer(id, tag.clone(), session.signal.clone(), spec)?;
        } else {
            q.add_consumer(
                id,
                tag.clone(),
                c.exclusive,
                priority,
                session.signal.clone(),
                &session.vhost.name,
                now_ms(),
            )?;
        }
        self.consumers.insert(tag.clone(), id);
        session.consumers.insert(
            id,
            ConsumerState {
                id,
                channel: self.id,
                tag: tag.clone(),
                queue: q,
                no_ack: c.no_ack,
                limit: self.consumer_prefetch,
                unacked: 0,
                scheduled: false,
                delivery_bytes: 0,
            },
        );
        if !c.no_wait {
            ctx.out.method(
                self.id,
                &Method::BasicConsumeOk(protocol::BasicConsumeOk { consumer_tag: tag }),
            );
        }
        session.schedule_pull(id);
        Ok(())
    }

    pub(super) fn basic_cancel(&mut self, c: protocol::BasicCancel, ctx: &mut Ctx) -> AmqpResult<()> {
        if let Some(id) = self.consumers.remove(&c.consumer_tag) {
            ctx.session.remove_consumer(id);
        } else {
            self.reply_cancel(&c.consumer_tag, ctx.session);
        }
        if !c.no_wait {
            ctx.out.method(
                self.id,
                &Method::BasicCancelOk(protocol::BasicCancelOk {
                    consumer_tag: c.consumer_tag,
                }),
            );
        }
        Ok(())
    }

    /// The consumer `tag`'s queue was deleted (the session already forgot the consumer): forget it here too
    /// and tell the client if it asked to know.
    pub fn cancelled_by_server(&mut self, tag: ShortStr, notify: bool, out: &mut Output) {
        self.consumers.remove(&tag);
        if !self.closing && notify {
            out.method(
                self.id,
                &Method::BasicCancel(protocol::BasicCancel {
                    consumer_tag: tag,
                    no_wait: true,
                }),
            );
        }
    }
}
