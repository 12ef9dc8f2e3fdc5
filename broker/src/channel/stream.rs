//! What the channel does differently for stream queues (`queue/stream/`): the checks RabbitMQ makes on
//! basic.consume (a prefetch, manual acks, no global qos; the consumer arguments) and the methods a stream
//! refuses (basic.get, queue.purge), with RabbitMQ's texts (rabbit_stream_queue.erl, rabbit_channel.erl).

use std::sync::Arc;

use protocol::{BasicDeliver, FieldTable, Method, ShortStr};

use super::{Channel, Ctx, Unacked};
use crate::clock::now_ms;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::stream::{self, ConsumeSpec};
use crate::queue::{ConsumerId, Entry, Queue, QueueKind};
use crate::stats::{MessageCounters, QueueStats};
use crate::stream_store::{stream_message, write_delivery};

fn rs(q: &Queue, vhost: &str) -> String {
    format!("queue '{}' in vhost '{vhost}'", q.spec.name)
}

impl Channel {
    /// A consumer of stream `q`: RabbitMQ's checks in its order (consumer arguments, then
    /// rabbit_stream_queue:consume/3's clauses), and how it reads.
    pub(super) fn stream_consume_spec(
        &self,
        q: &Queue,
        args: &FieldTable,
        no_ack: bool,
        tag: &ShortStr,
        vhost: &str,
    ) -> AmqpResult<ConsumeSpec> {
        let spec = stream::spec::parse(args, tag, now_ms()).map_err(|why| {
            AmqpError::precondition_failed(format!(
                "invalid arg 'x-stream-offset' for {}: {why}",
                rs(q, vhost)
            ))
        })?;
        if self.consumer_prefetch == 0 {
            return Err(AmqpError::precondition_failed(format!(
                "consumer prefetch count is not set for stream {}",
                rs(q, vhost)
            )));
        }
        if no_ack {
            return Err(AmqpError::not_implemented(format!(
                "automatic acknowledgement not supported by stream {}",
                rs(q, vhost)
            )));
        }
        if self.channel_prefetch > 0 {
            return Err(AmqpError::not_implemented(format!(
                "{} does not support global qos",
                rs(q, vhost)
            )));
        }
        Ok(spec)
    }

    /// basic.get and queue.purge are not for streams (540, as RabbitMQ).
    pub(super) fn refuse_on_stream(&self, q: &Queue, method: &str, vhost: &str) -> AmqpResult<()> {
        if q.kind != QueueKind::Stream {
            return Ok(());
        }
        Err(AmqpError::not_implemented(format!(
            "{method} not supported by stream queues {}",
            rs(q, vhost)
        )))
    }

    /// Up to `credit` deliveries of stream consumer `id`, written straight from its reader's block into the
    /// output (`stream_store::write_delivery`): no message is built per delivery, nothing is allocated. Each
    /// unacked delivery holds the stream's placeholder message (an ack or reject of a stream needs only the
    /// offset; nothing is requeued or dead-lettered). `deliver` takes this path unless tracing is on (a
    /// traced delivery records the message's ids). Returns whether it took all `credit`.
    pub(super) fn deliver_stream(&mut self, id: ConsumerId, credit: usize, ctx: &mut Ctx) -> bool {
        let session = &mut *ctx.session;
        let Some(c) = session.consumers.get(&id) else {
            return false;
        };
        let (tag, queue) = (c.tag.clone(), c.queue.clone());
        let Some(s) = queue.stream() else {
            return false;
        };
        let placeholder = s.unacked_placeholder();
        let now = now_ms();
        let channel = self.id;
        let (unacked, next_tag, out) = (&mut self.unacked, &mut self.next_tag, &mut *ctx.out);
        let n = s.pull_with(id, credit, &mut |rec| {
            let delivery_tag = *next_tag;
            *next_tag += 1;
            let (buf, frame_max) = out.buf_mut();
            let msg = if write_delivery(buf, frame_max, channel, &tag, delivery_tag, &rec) {
                placeholder.clone()
            } else {
                // a publisher's own `x-stream-offset`, or properties the splice does not take: built in full
                let m = Arc::new(stream_message(rec));
                let deliver = BasicDeliver {
                    consumer_tag: tag.clone(),
                    delivery_tag,
                    redelivered: false,
                    exchange: m.exchange.clone(),
                    routing_key: m.routing_key.clone(),
                };
                out.method(channel, &Method::BasicDeliver(deliver));
                out.content(channel, &m.properties, &m.body);
                m
            };
            unacked.push_back(Unacked {
                tag: delivery_tag,
                queue: queue.clone(),
                entry: Entry {
                    seq: rec.offset,
                    msg,
                    redelivered: false,
                    delivery_count: 0,
                    expires_at: None,
                    not_before: None,
                },
                consumer: Some(id),
                delivered_at: now,
            });
        });
        if n == 0 {
            return false;
        }
        QueueStats::add(&queue.stats.delivered, n as u64);
        self.note_ack_timeout(&queue, session.consumer_timeout);
        MessageCounters::add(&session.stats.messages.delivered_consume_manual_ack, n as u64);
        self.consumer_unacked += n as u32;
        if let Some(c) = session.consumers.get_mut(&id) {
            c.unacked += n as u32;
        }
        n == credit
    }
}
