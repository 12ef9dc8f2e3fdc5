//! What the channel does differently for stream queues (`queue/stream/`): the checks RabbitMQ makes on
//! basic.consume (a prefetch, manual acks, no global qos; the consumer arguments) and the methods a stream
//! refuses (basic.get, queue.purge), with RabbitMQ's texts (rabbit_stream_queue.erl, rabbit_channel.erl).

use protocol::{FieldTable, ShortStr};

use super::Channel;
use crate::clock::now_ms;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::stream::{self, ConsumeSpec};
use crate::queue::{Queue, QueueKind};

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
}
