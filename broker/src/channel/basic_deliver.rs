//! Deliveries: what a consumer may take now (its credit under its own and the channel's prefetch), pulled
//! from its queue in one batch and written as basic.deliver + content; and basic.get.

use crate::users::{Perm, Res};
use std::borrow::Cow;

use protocol::{Method, RawProperties};

use super::{Channel, Ctx, Unacked};
use crate::clock::now_ms;
use crate::error::AmqpResult;
use crate::output::{WHOLE_WINDOW_MAX, WRITE_QUANTUM};
use crate::queue::{ConsumerId, DeadLetters, Entry};
use crate::stats::MessageCounters;

/// Most messages pulled for one consumer in one go.
const PULL_BATCH: usize = 128;

impl Channel {
    /// Delivers what consumer `id` (one of this channel's) may take now. Returns true if it took a full
    /// batch (more may be waiting: the connection keeps it scheduled).
    pub fn deliver(&mut self, id: ConsumerId, ctx: &mut Ctx) -> bool {
        if self.closing {
            return false;
        }
        let session = &mut *ctx.session;
        let Some(c) = session.consumers.get(&id) else {
            return false;
        };
        let mut credit = PULL_BATCH;
        if !c.no_ack {
            if c.limit > 0 {
                credit = credit.min((c.limit as u32).saturating_sub(c.unacked) as usize);
            }
            if self.channel_prefetch > 0 {
                credit =
                    credit.min((self.channel_prefetch as u32).saturating_sub(self.consumer_unacked) as usize);
            }
        }
        // About one write's worth (`WRITE_QUANTUM`) by the size of this consumer's last deliveries: a
        // prefetch window of large messages goes out in several writes, the first before the rest is built.
        // A window of at most `WHOLE_WINDOW_MAX` bytes goes out whole.
        let per = c.delivery_bytes as usize;
        if per > 0 && (c.no_ack || c.limit == 0 || c.limit as usize * per > WHOLE_WINDOW_MAX) {
            credit = credit.min((WRITE_QUANTUM / per).max(1));
        }
        if credit == 0 {
            // A consumer waits on its queue only with credit of its own left (`Queue::pull`), but the
            // channel's shared window (basic.qos global) can be filled by another consumer of the channel
            // meanwhile: a wake-up it was given goes on to the next waiting consumer instead of being lost.
            if self.channel_prefetch > 0 && self.consumer_unacked >= self.channel_prefetch as u32 {
                c.queue.decline(id);
            }
            return false;
        }
        if c.queue.stream().is_some() && !session.vhost.trace.on() {
            return self.deliver_stream(id, credit, ctx);
        }
        let mut batch = std::mem::take(&mut session.pull_scratch);
        let now = now_ms();
        let mut dead = DeadLetters::new();
        let n = c.queue.pull(id, credit, !c.no_ack, now, &mut batch, &mut dead);
        if !dead.is_empty() {
            session.vhost.dead_letter(&c.queue, &mut dead, now);
        }
        if n == 0 {
            session.pull_scratch = batch;
            return false;
        }
        let (no_ack, tag, queue) = (c.no_ack, c.tag.clone(), c.queue.clone());
        if !no_ack {
            self.note_ack_timeout(&queue, session.consumer_timeout);
        }
        if no_ack && queue.is_stored() {
            queue.forget(&batch);
        }
        let counters = &session.stats.messages;
        MessageCounters::add(
            if no_ack {
                &counters.delivered_consume_auto_ack
            } else {
                &counters.delivered_consume_manual_ack
            },
            n as u64,
        );
        let traced = session.vhost.trace.on();
        let start = ctx.out.pending().len();
        for entry in batch.drain(..) {
            if traced {
                self.trace_deliver(session, &queue, Some(&tag), &entry);
            }
            if entry.redelivered {
                MessageCounters::add(&counters.redelivered, 1);
            }
            let delivery_tag = self.next_tag;
            self.next_tag += 1;
            // The same bytes as a `Method::BasicDeliver` written out, from borrowed parts (no clone and
            // drop of three shared strings per delivery).
            protocol::write_basic_deliver(
                ctx.out.buf_mut().0,
                self.id,
                tag.as_bytes(),
                delivery_tag,
                entry.redelivered,
                entry.msg.exchange.as_bytes(),
                entry.msg.routing_key.as_bytes(),
            );
            let props = delivery_properties(&entry);
            ctx.out.content(self.id, &props, &entry.msg.body);
            if !no_ack {
                self.unacked.push_back(Unacked {
                    tag: delivery_tag,
                    queue: queue.clone(),
                    entry,
                    consumer: Some(id),
                    delivered_at: now,
                });
            }
        }
        session.pull_scratch = batch;
        let per_delivery = ((ctx.out.pending().len() - start) / n).min(u32::MAX as usize) as u32;
        if let Some(c) = session.consumers.get_mut(&id) {
            c.delivery_bytes = per_delivery;
            if !no_ack {
                c.unacked += n as u32;
                session.window_closed |= c.limit > 0 && c.unacked >= c.limit as u32;
            }
        }
        if !no_ack {
            self.consumer_unacked += n as u32;
            session.window_closed |=
                self.channel_prefetch > 0 && self.consumer_unacked >= self.channel_prefetch as u32;
        }
        n == credit
    }

    pub(super) fn basic_get(&mut self, g: protocol::BasicGet, ctx: &mut Ctx) -> AmqpResult<()> {
        let name = self.queue_name(&g.queue)?;
        self.permit(ctx.session, Perm::Read, Res::Queue, &name)?;
        let q = self.usable_queue(&g.queue, ctx.session)?;
        self.refuse_on_stream(&q, "basic.get", &ctx.session.vhost.name)?;
        let now = now_ms();
        let mut dead = DeadLetters::new();
        let got = q.get(!g.no_ack, now, &mut dead);
        ctx.session.vhost.dead_letter(&q, &mut dead, now);
        let counters = &ctx.session.stats.messages;
        let Some((entry, remaining)) = got else {
            MessageCounters::add(&counters.get_empty, 1);
            ctx.out
                .method(self.id, &Method::BasicGetEmpty(protocol::BasicGetEmpty));
            return Ok(());
        };
        MessageCounters::add(
            if g.no_ack {
                &counters.delivered_get_auto_ack
            } else {
                &counters.delivered_get_manual_ack
            },
            1,
        );
        if entry.redelivered {
            MessageCounters::add(&counters.redelivered, 1);
        }
        if ctx.session.vhost.trace.on() {
            self.trace_deliver(ctx.session, &q, None, &entry);
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let m = Method::BasicGetOk(protocol::BasicGetOk {
            delivery_tag: tag,
            redelivered: entry.redelivered,
            exchange: entry.msg.exchange.clone(),
            routing_key: entry.msg.routing_key.clone(),
            message_count: remaining,
        });
        ctx.out.method(self.id, &m);
        let props = delivery_properties(&entry);
        ctx.out.content(self.id, &props, &entry.msg.body);
        drop(props);
        if g.no_ack {
            q.forget(std::slice::from_ref(&entry));
        } else {
            self.note_ack_timeout(&q, ctx.session.consumer_timeout);
            self.unacked.push_back(Unacked {
                tag,
                queue: q,
                entry,
                consumer: None,
                delivered_at: now,
            });
        }
        Ok(())
    }
}

/// The properties a delivery carries: as published, plus `x-delivery-count` once the message was returned.
fn delivery_properties(entry: &Entry) -> Cow<'_, RawProperties> {
    if entry.delivery_count == 0 {
        return Cow::Borrowed(&entry.msg.properties);
    }
    let mut headers = entry.msg.properties.headers().ok().flatten().unwrap_or_default();
    headers.insert(
        "x-delivery-count",
        protocol::FieldValue::I64(entry.delivery_count as i64),
    );
    match entry.msg.properties.with_headers(headers) {
        Ok(p) => Cow::Owned(p),
        Err(_) => Cow::Borrowed(&entry.msg.properties),
    }
}
