//! Channels: per-channel state and the methods of the channel, exchange, queue, basic, confirm and tx classes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use protocol::{
    reply, Assembled, BasicDeliver, BasicPublish, ContentAssembler, ContentHeader, Frame, Method, ShortStr,
};

use crate::clock::now_ms;
use crate::connection::{truncate_text, Conn};
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::queue::{next_consumer_id, ConsumerId, DeadLetters, Entry, Queue, QueueSpec};
use crate::vhost::VHost;

/// Most messages pulled for one consumer in one go.
const PULL_BATCH: usize = 128;
/// Largest message body accepted (RabbitMQ's default max_message_size).
pub const MAX_MESSAGE_SIZE: u64 = 128 << 20;

/// A delivery the client has not acked yet.
pub struct Unacked {
    pub tag: u64,
    pub queue: Arc<Queue>,
    pub entry: Entry,
    /// None for basic.get.
    pub consumer: Option<ConsumerId>,
}

/// A publish waiting for its confirm.
struct PendingConfirm {
    tag: u64,
    /// Store ticket that must be durable first (0 = none).
    ticket: u64,
    ack: bool,
}

/// What a transaction holds until commit.
#[derive(Default)]
struct TxState {
    /// Publishes routed at publish time (as RabbitMQ), enqueued at commit.
    publishes: Vec<(BasicPublish, Arc<Message>, Vec<router::Name>)>,
    settles: Vec<Settle>,
}

#[derive(Clone, Copy)]
enum Settle {
    Ack { tag: u64, multiple: bool },
    Reject { tag: u64, multiple: bool, requeue: bool },
}

pub struct Channel {
    pub id: u16,
    /// We sent channel.close and wait for close-ok: drop everything else.
    pub closing: bool,
    assembler: ContentAssembler,
    consumers: HashMap<ShortStr, ConsumerId>,
    unacked: VecDeque<Unacked>,
    next_tag: u64,
    /// basic.qos global=false: the limit new consumers on this channel get.
    consumer_prefetch: u16,
    /// basic.qos global=true: limit over all consumers of the channel.
    channel_prefetch: u16,
    /// Deliveries to consumers not yet acked (what the channel limit counts).
    consumer_unacked: u32,
    confirm: bool,
    next_publish_tag: u64,
    confirms: VecDeque<PendingConfirm>,
    tx: Option<TxState>,
    last_queue: Option<Arc<str>>,
}

/// A consumer as its connection sees it.
pub struct ConsumerState {
    pub id: ConsumerId,
    pub channel: u16,
    pub tag: ShortStr,
    pub queue: Arc<Queue>,
    pub no_ack: bool,
    /// Prefetch limit of this consumer (0 = none).
    pub limit: u16,
    pub unacked: u32,
    /// Already in the connection's pull list.
    pub scheduled: bool,
}

impl Channel {
    fn new(id: u16) -> Channel {
        Channel {
            id,
            closing: false,
            assembler: ContentAssembler::new(),
            consumers: HashMap::new(),
            unacked: VecDeque::new(),
            next_tag: 1,
            consumer_prefetch: 0,
            channel_prefetch: 0,
            consumer_unacked: 0,
            confirm: false,
            next_publish_tag: 1,
            confirms: VecDeque::new(),
            tx: None,
            last_queue: None,
        }
    }

    /// Removes the unacked deliveries named by an ack/nack/reject, RabbitMQ's way: `multiple` takes every
    /// tag up to and including `tag` (0 = all); an unknown tag is 406 and nothing is taken.
    /// Moves the deliveries into `out` (a reused buffer, so a single ack allocates nothing).
    fn take_unacked(&mut self, tag: u64, multiple: bool, out: &mut Vec<Unacked>) -> AmqpResult<()> {
        if multiple && tag == 0 {
            out.extend(self.unacked.drain(..));
            return Ok(());
        }
        let pos = self.unacked.binary_search_by_key(&tag, |u| u.tag);
        match pos {
            Ok(i) if multiple => out.extend(self.unacked.drain(..=i)),
            Ok(i) => out.push(self.unacked.remove(i).expect("found")),
            Err(_) => {
                return Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                )))
            }
        }
        Ok(())
    }
}

impl Conn {
    pub fn on_channel_frame(&mut self, ch: u16, frame: Frame) -> AmqpResult<()> {
        if ch > self.channel_max {
            return Err(AmqpError::not_allowed(format!(
                "channel number {ch} is higher than the negotiated channel_max ({})",
                self.channel_max
            )));
        }
        let Some(channel) = self.channels.get_mut(&ch) else {
            return match frame {
                Frame::Method(_, Method::ChannelOpen(_)) => {
                    self.channels.insert(ch, Channel::new(ch));
                    self.send_method(ch, &Method::ChannelOpenOk(protocol::ChannelOpenOk));
                    Ok(())
                }
                Frame::Method(_, m) => Err(AmqpError::channel_error("expected 'channel.open'")
                    .on_method(m.class_id(), m.method_id())),
                _ => Err(AmqpError::channel_error("expected 'channel.open'")),
            };
        };
        if channel.closing {
            match frame {
                Frame::Method(_, Method::ChannelCloseOk(_)) => {
                    self.channels.remove(&ch);
                }
                Frame::Method(_, Method::ChannelClose(_)) => {
                    self.send_method(ch, &Method::ChannelCloseOk(protocol::ChannelCloseOk));
                    self.channels.remove(&ch);
                }
                _ => {}
            }
            return Ok(());
        }
        let assembled = match frame {
            Frame::Method(_, m) => channel.assembler.push_method(m),
            Frame::Header(_, h) => channel.assembler.push_header(h),
            Frame::Body(_, b) => channel.assembler.push_body(b),
            Frame::Heartbeat(_) => Ok(None),
        };
        let assembled = match assembled {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(e) => return Err(AmqpError::from(e)),
        };
        let (class_id, method_id) = match &assembled {
            Assembled::Method(m) | Assembled::Content { method: m, .. } => (m.class_id(), m.method_id()),
        };
        let result = match assembled {
            Assembled::Method(m) => self.on_channel_method(ch, m),
            Assembled::Content { method, header, body } => match method {
                Method::BasicPublish(p) => self.on_publish(ch, p, header, body),
                other => Err(AmqpError::command_invalid(format!(
                    "method '{}' does not carry content",
                    other.name()
                ))),
            },
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = e.on_method(class_id, method_id);
                if e.closes_connection() {
                    Err(e)
                } else {
                    self.close_channel_with(ch, e);
                    Ok(())
                }
            }
        }
    }

    /// A channel error: send channel.close, release what the channel holds, drop its frames until close-ok.
    fn close_channel_with(&mut self, ch: u16, e: AmqpError) {
        tracing::debug!(peer = %self.peer, channel = ch, code = e.code, text = e.text, "closing channel");
        self.release_channel(ch);
        if let Some(c) = self.channels.get_mut(&ch) {
            c.closing = true;
        }
        self.send_method(
            ch,
            &Method::ChannelClose(protocol::ChannelClose {
                reply_code: e.code,
                reply_text: ShortStr::from(truncate_text(&e.text)),
                class_id: e.class_id,
                method_id: e.method_id,
            }),
        );
    }

    /// Requeues the channel's unacked messages (in order) and cancels its consumers.
    pub fn release_channel(&mut self, ch: u16) {
        let Some(channel) = self.channels.get_mut(&ch) else {
            return;
        };
        let consumers: Vec<ConsumerId> = channel.consumers.drain().map(|(_, id)| id).collect();
        let unacked: Vec<Unacked> = channel.unacked.drain(..).collect();
        channel.consumer_unacked = 0;
        channel.confirms.clear();
        channel.tx = None;
        channel.assembler.reset();
        for id in consumers {
            self.remove_consumer(id);
        }
        if let Some(vhost) = &self.vhost {
            requeue_grouped(vhost, unacked, now_ms());
        }
    }

    fn remove_consumer(&mut self, id: ConsumerId) {
        if let Some(c) = self.consumers.remove(&id) {
            let r = c.queue.remove_consumer(id, now_ms());
            if r.auto_delete_now {
                if let Some(vhost) = &self.vhost {
                    vhost.delete_queue(&c.queue);
                }
            }
        }
    }

    /// The consumer's queue was deleted: forget the consumer and tell the client if it asked to know.
    pub fn server_cancel(&mut self, id: ConsumerId, tag: ShortStr) {
        let Some(c) = self.consumers.remove(&id) else {
            return;
        };
        if let Some(channel) = self.channels.get_mut(&c.channel) {
            channel.consumers.remove(&c.tag);
            if !channel.closing && self.caps.consumer_cancel_notify {
                let ch = channel.id;
                self.send_method(
                    ch,
                    &Method::BasicCancel(protocol::BasicCancel {
                        consumer_tag: tag,
                        no_wait: true,
                    }),
                );
            }
        }
    }

    fn channel(&mut self, ch: u16) -> &mut Channel {
        self.channels.get_mut(&ch).expect("channel exists")
    }

    fn on_channel_method(&mut self, ch: u16, m: Method) -> AmqpResult<()> {
        match m {
            Method::ChannelOpen(_) => Err(AmqpError::channel_error("second 'channel.open' seen")),
            Method::ChannelClose(_) => {
                self.release_channel(ch);
                self.channels.remove(&ch);
                self.send_method(ch, &Method::ChannelCloseOk(protocol::ChannelCloseOk));
                Ok(())
            }
            Method::ChannelCloseOk(_) => Ok(()),
            Method::ChannelFlow(f) => {
                if !f.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                self.send_method(
                    ch,
                    &Method::ChannelFlowOk(protocol::ChannelFlowOk { active: true }),
                );
                Ok(())
            }
            Method::ExchangeDeclare(d) => self.exchange_declare(ch, d),
            Method::ExchangeDelete(d) => self.exchange_delete(ch, d),
            Method::ExchangeBind(b) => self.exchange_bind(ch, b),
            Method::ExchangeUnbind(b) => self.exchange_unbind(ch, b),
            Method::QueueDeclare(d) => self.queue_declare(ch, d),
            Method::QueueBind(b) => self.queue_bind(ch, b),
            Method::QueueUnbind(b) => self.queue_unbind(ch, b),
            Method::QueuePurge(p) => self.queue_purge(ch, p),
            Method::QueueDelete(d) => self.queue_delete(ch, d),
            Method::BasicQos(q) => self.basic_qos(ch, q),
            Method::BasicConsume(c) => self.basic_consume(ch, c),
            Method::BasicCancel(c) => self.basic_cancel(ch, c),
            Method::BasicGet(g) => self.basic_get(ch, g),
            Method::BasicAck(a) => self.settle(
                ch,
                Settle::Ack {
                    tag: a.delivery_tag,
                    multiple: a.multiple,
                },
            ),
            Method::BasicReject(r) => self.settle(
                ch,
                Settle::Reject {
                    tag: r.delivery_tag,
                    multiple: false,
                    requeue: r.requeue,
                },
            ),
            Method::BasicNack(n) => self.settle(
                ch,
                Settle::Reject {
                    tag: n.delivery_tag,
                    multiple: n.multiple,
                    requeue: n.requeue,
                },
            ),
            Method::BasicRecover(r) => self.basic_recover(ch, r.requeue, true),
            Method::BasicRecoverAsync(r) => self.basic_recover(ch, r.requeue, false),
            Method::ConfirmSelect(c) => {
                let channel = self.channel(ch);
                if channel.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                channel.confirm = true;
                if !c.no_wait {
                    self.send_method(ch, &Method::ConfirmSelectOk(protocol::ConfirmSelectOk));
                }
                Ok(())
            }
            Method::TxSelect(_) => {
                let channel = self.channel(ch);
                if channel.confirm {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if channel.tx.is_none() {
                    channel.tx = Some(TxState::default());
                }
                self.send_method(ch, &Method::TxSelectOk(protocol::TxSelectOk));
                Ok(())
            }
            Method::TxCommit(_) => self.tx_commit(ch),
            Method::TxRollback(_) => {
                let channel = self.channel(ch);
                let Some(tx) = channel.tx.as_mut() else {
                    return Err(AmqpError::precondition_failed("channel is not transactional"));
                };
                *tx = TxState::default();
                self.send_method(ch, &Method::TxRollbackOk(protocol::TxRollbackOk));
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "unexpected method '{}' from the client",
                other.name()
            ))),
        }
    }

    // ---------------------------------------------------------------- exchanges

    fn exchange_declare(&mut self, ch: u16, d: protocol::ExchangeDeclare) -> AmqpResult<()> {
        let vhost = self.vhost().clone();
        if d.passive {
            vhost
                .router
                .read()
                .declare_exchange_passive(d.exchange.as_str())?;
        } else {
            let kind = router::ExchangeKind::parse(d.kind.as_str())?;
            if let Some(v) = d.arguments.get("alternate-exchange") {
                if !matches!(v, protocol::FieldValue::LongStr(_)) {
                    return Err(AmqpError::precondition_failed(format!(
                        "invalid type '{}' for arg 'alternate-exchange' in exchange '{}' in vhost '{}'",
                        crate::args::type_name(v),
                        d.exchange,
                        vhost.name
                    )));
                }
            }
            let def = router::ExchangeDef {
                name: d.exchange.as_str().into(),
                kind,
                durable: d.durable,
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: crate::args::to_router_args(&d.arguments),
            };
            vhost.declare_exchange(def)?;
        }
        if !d.no_wait {
            self.send_method(ch, &Method::ExchangeDeclareOk(protocol::ExchangeDeclareOk));
        }
        Ok(())
    }

    fn exchange_delete(&mut self, ch: u16, d: protocol::ExchangeDelete) -> AmqpResult<()> {
        let vhost = self.vhost().clone();
        vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
        if !d.no_wait {
            self.send_method(ch, &Method::ExchangeDeleteOk(protocol::ExchangeDeleteOk));
        }
        Ok(())
    }

    fn exchange_bind(&mut self, ch: u16, b: protocol::ExchangeBind) -> AmqpResult<()> {
        let binding = router::Binding {
            source: b.source.as_str().into(),
            destination: router::Destination::Exchange(b.destination.as_str().into()),
            routing_key: b.routing_key.as_str().into(),
            arguments: crate::args::to_router_args(&b.arguments),
        };
        self.vhost().clone().bind(binding)?;
        if !b.no_wait {
            self.send_method(ch, &Method::ExchangeBindOk(protocol::ExchangeBindOk));
        }
        Ok(())
    }

    fn exchange_unbind(&mut self, ch: u16, b: protocol::ExchangeUnbind) -> AmqpResult<()> {
        let binding = router::Binding {
            source: b.source.as_str().into(),
            destination: router::Destination::Exchange(b.destination.as_str().into()),
            routing_key: b.routing_key.as_str().into(),
            arguments: crate::args::to_router_args(&b.arguments),
        };
        self.vhost().clone().unbind(&binding)?;
        if !b.no_wait {
            self.send_method(ch, &Method::ExchangeUnbindOk(protocol::ExchangeUnbindOk));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- queues

    /// The queue a method names: empty means the last queue declared on this channel.
    fn queue_name(&mut self, ch: u16, name: &ShortStr) -> AmqpResult<Arc<str>> {
        if name.is_empty() {
            return self
                .channel(ch)
                .last_queue
                .clone()
                .ok_or_else(|| AmqpError::not_found("no previously declared queue"));
        }
        Ok(name.as_str().into())
    }

    /// Looks a queue up and checks that this connection may use it (exclusive queues belong to their owner).
    fn usable_queue(&mut self, ch: u16, name: &ShortStr) -> AmqpResult<Arc<Queue>> {
        let name = self.queue_name(ch, name)?;
        let q = self.vhost().queue_or_404(&name)?;
        self.check_exclusive(&q)?;
        Ok(q)
    }

    fn check_exclusive(&self, q: &Queue) -> AmqpResult<()> {
        match q.spec.exclusive_owner {
            Some(owner) if owner != self.id => Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                q.spec.name,
                self.vhost().name
            ))),
            _ => Ok(()),
        }
    }

    fn queue_declare(&mut self, ch: u16, d: protocol::QueueDeclare) -> AmqpResult<()> {
        let vhost = self.vhost().clone();
        let name: Arc<str> = if d.queue.is_empty() {
            if d.passive {
                self.queue_name(ch, &d.queue)?
            } else {
                crate::names::queue_name().into()
            }
        } else {
            d.queue.as_str().into()
        };
        let q = if d.passive {
            let q = vhost.queue_or_404(&name)?;
            self.check_exclusive(&q)?;
            q
        } else {
            if name.starts_with("amq.") && !d.queue.is_empty() {
                if let Some(existing) = vhost.queue(&name) {
                    // Redeclaring an existing server-named queue is allowed.
                    self.check_exclusive(&existing)?;
                } else {
                    return Err(AmqpError::access_refused(format!(
                        "queue name '{name}' contains reserved prefix 'amq.*'"
                    )));
                }
            }
            crate::args::validate_queue_args(&d.arguments, &name, &vhost.name)?;
            let spec = QueueSpec {
                name: name.clone(),
                durable: d.durable,
                exclusive_owner: d.exclusive.then_some(self.id),
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
            };
            let (q, created) = vhost.declare_queue(spec)?;
            if created {
                if d.exclusive {
                    self.exclusive_queues.push(q.clone());
                }
            } else {
                self.check_exclusive(&q)?;
                check_equivalent(&q, &d, &vhost.name)?;
                q.touch(now_ms());
            }
            q
        };
        self.channel(ch).last_queue = Some(name.clone());
        if !d.no_wait {
            let (messages, consumers) = q.counts();
            self.send_method(
                ch,
                &Method::QueueDeclareOk(protocol::QueueDeclareOk {
                    queue: ShortStr::from(&*name),
                    message_count: messages,
                    consumer_count: consumers,
                }),
            );
        }
        Ok(())
    }

    /// RabbitMQ's order of checks for queue.bind/unbind: the default exchange (403), then the exchange (404).
    fn check_bind_source(&self, exchange: &str) -> AmqpResult<()> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let vhost = self.vhost();
        if vhost.router.read().exchange(exchange).is_none() {
            return Err(AmqpError::not_found(format!(
                "no exchange '{exchange}' in vhost '{}'",
                vhost.name
            )));
        }
        Ok(())
    }

    /// RabbitMQ's shortcut: an empty queue name and an empty routing key bind with the last declared queue's
    /// name as the key.
    fn binding_key(&mut self, ch: u16, queue: &ShortStr, key: &ShortStr) -> AmqpResult<Arc<str>> {
        if queue.is_empty() && key.is_empty() {
            return self.queue_name(ch, queue);
        }
        Ok(key.as_str().into())
    }

    fn queue_bind(&mut self, ch: u16, b: protocol::QueueBind) -> AmqpResult<()> {
        self.check_bind_source(b.exchange.as_str())?;
        let q = self.usable_queue(ch, &b.queue)?;
        let routing_key = self.binding_key(ch, &b.queue, &b.routing_key)?;
        let binding = router::Binding {
            source: b.exchange.as_str().into(),
            destination: router::Destination::Queue(q.name().clone()),
            routing_key,

            arguments: crate::args::to_router_args(&b.arguments),
        };
        self.vhost().clone().bind(binding)?;
        if !b.no_wait {
            self.send_method(ch, &Method::QueueBindOk(protocol::QueueBindOk));
        }
        Ok(())
    }

    fn queue_unbind(&mut self, ch: u16, b: protocol::QueueUnbind) -> AmqpResult<()> {
        if b.exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let name = self.queue_name(ch, &b.queue)?;
        if let Some(q) = self.vhost().queue(&name) {
            self.check_exclusive(&q)?;
        }
        let routing_key = self.binding_key(ch, &b.queue, &b.routing_key)?;
        let binding = router::Binding {
            source: b.exchange.as_str().into(),
            destination: router::Destination::Queue(name),
            routing_key,

            arguments: crate::args::to_router_args(&b.arguments),
        };
        self.vhost().clone().unbind(&binding)?;
        self.send_method(ch, &Method::QueueUnbindOk(protocol::QueueUnbindOk));
        Ok(())
    }

    fn queue_purge(&mut self, ch: u16, p: protocol::QueuePurge) -> AmqpResult<()> {
        let q = self.usable_queue(ch, &p.queue)?;
        let n = q.purge();
        if !p.no_wait {
            self.send_method(
                ch,
                &Method::QueuePurgeOk(protocol::QueuePurgeOk { message_count: n }),
            );
        }
        Ok(())
    }

    fn queue_delete(&mut self, ch: u16, d: protocol::QueueDelete) -> AmqpResult<()> {
        let name = self.queue_name(ch, &d.queue)?;
        let vhost = self.vhost().clone();
        let mut n = 0;
        if let Some(q) = vhost.queue(&name) {
            self.check_exclusive(&q)?;
            let (messages, consumers) = q.counts();
            if d.if_unused && consumers > 0 {
                return Err(AmqpError::precondition_failed(format!(
                    "queue '{name}' in vhost '{}' in use",
                    vhost.name
                )));
            }
            if d.if_empty && messages > 0 {
                return Err(AmqpError::precondition_failed(format!(
                    "queue '{name}' in vhost '{}' not empty",
                    vhost.name
                )));
            }
            n = vhost.delete_queue(&q);
            self.exclusive_queues.retain(|x| !Arc::ptr_eq(x, &q));
        }
        if !d.no_wait {
            self.send_method(
                ch,
                &Method::QueueDeleteOk(protocol::QueueDeleteOk { message_count: n }),
            );
        }
        Ok(())
    }

    // ---------------------------------------------------------------- basic

    fn basic_qos(&mut self, ch: u16, q: protocol::BasicQos) -> AmqpResult<()> {
        if q.prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format!(
                "prefetch_size!=0 ({})",
                q.prefetch_size
            )));
        }
        let channel = self.channel(ch);
        if q.global {
            channel.channel_prefetch = q.prefetch_count;
        } else {
            channel.consumer_prefetch = q.prefetch_count;
        }
        // A raised limit may let consumers take more.
        self.schedule_channel(ch);
        self.send_method(ch, &Method::BasicQosOk(protocol::BasicQosOk));
        Ok(())
    }

    fn basic_consume(&mut self, ch: u16, c: protocol::BasicConsume) -> AmqpResult<()> {
        let q = self.usable_queue(ch, &c.queue)?;
        let tag = if c.consumer_tag.is_empty() {
            ShortStr::from(crate::names::consumer_tag())
        } else {
            c.consumer_tag.clone()
        };
        if self.channel(ch).consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let id = next_consumer_id();
        let vhost_name = self.vhost().name.clone();
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
        q.add_consumer(
            id,
            tag.clone(),
            c.exclusive,
            priority,
            self.signal.clone(),
            &vhost_name,
            now_ms(),
        )?;
        let channel = self.channel(ch);
        channel.consumers.insert(tag.clone(), id);
        let limit = channel.consumer_prefetch;
        self.consumers.insert(
            id,
            ConsumerState {
                id,
                channel: ch,
                tag: tag.clone(),
                queue: q,
                no_ack: c.no_ack,
                limit,
                unacked: 0,
                scheduled: false,
            },
        );
        if !c.no_wait {
            self.send_method(
                ch,
                &Method::BasicConsumeOk(protocol::BasicConsumeOk { consumer_tag: tag }),
            );
        }
        self.schedule_pull(id);
        Ok(())
    }

    fn basic_cancel(&mut self, ch: u16, c: protocol::BasicCancel) -> AmqpResult<()> {
        if let Some(id) = self.channel(ch).consumers.remove(&c.consumer_tag) {
            self.remove_consumer(id);
        }
        if !c.no_wait {
            self.send_method(
                ch,
                &Method::BasicCancelOk(protocol::BasicCancelOk {
                    consumer_tag: c.consumer_tag,
                }),
            );
        }
        Ok(())
    }

    fn basic_get(&mut self, ch: u16, g: protocol::BasicGet) -> AmqpResult<()> {
        let q = self.usable_queue(ch, &g.queue)?;
        let now = now_ms();
        let mut dead = DeadLetters::new();
        let got = q.get(!g.no_ack, now, &mut dead);
        self.vhost().dead_letter(&q, &mut dead, now);
        match got {
            None => self.send_method(ch, &Method::BasicGetEmpty(protocol::BasicGetEmpty)),
            Some((entry, remaining)) => {
                let frame_max = self.frame_max;
                let channel = self.channels.get_mut(&ch).expect("channel exists");
                let tag = channel.next_tag;
                channel.next_tag += 1;
                let m = Method::BasicGetOk(protocol::BasicGetOk {
                    delivery_tag: tag,
                    redelivered: entry.redelivered,
                    exchange: entry.msg.exchange.clone(),
                    routing_key: entry.msg.routing_key.clone(),
                    message_count: remaining,
                });
                protocol::write_method(&mut self.out, ch, &m);
                let props = delivery_properties(&entry);
                protocol::write_content(
                    &mut self.out,
                    ch,
                    protocol::CLASS_BASIC,
                    &props,
                    &entry.msg.body,
                    frame_max,
                );
                drop(props);
                if g.no_ack {
                    q.forget(std::slice::from_ref(&entry));
                } else {
                    channel.unacked.push_back(Unacked {
                        tag,
                        queue: q,
                        entry,
                        consumer: None,
                    });
                }
            }
        }
        Ok(())
    }

    fn basic_recover(&mut self, ch: u16, requeue: bool, reply: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let channel = self.channel(ch);
        let unacked: Vec<Unacked> = channel.unacked.drain(..).collect();
        channel.consumer_unacked = 0;
        self.after_settle(ch, &unacked);
        requeue_grouped(self.vhost(), unacked, now_ms());
        if reply {
            self.send_method(ch, &Method::BasicRecoverOk(protocol::BasicRecoverOk));
        }
        Ok(())
    }

    fn settle(&mut self, ch: u16, s: Settle) -> AmqpResult<()> {
        let channel = self.channel(ch);
        if let Some(tx) = channel.tx.as_mut() {
            tx.settles.push(s);
            return Ok(());
        }
        self.apply_settle(ch, s)
    }

    fn apply_settle(&mut self, ch: u16, s: Settle) -> AmqpResult<()> {
        let mut taken = std::mem::take(&mut self.settle_scratch);
        let channel = self.channels.get_mut(&ch).expect("channel exists");
        let (r, requeue) = match s {
            Settle::Ack { tag, multiple } => (channel.take_unacked(tag, multiple, &mut taken), false),
            Settle::Reject {
                tag,
                multiple,
                requeue,
            } => (channel.take_unacked(tag, multiple, &mut taken), requeue),
        };
        if let Err(e) = r {
            self.settle_scratch = taken;
            return Err(e);
        }
        self.after_settle(ch, &taken);
        match s {
            _ if requeue => requeue_grouped(self.vhost(), std::mem::take(&mut taken), now_ms()),
            Settle::Ack { .. } => {
                settle_grouped(&taken);
                taken.clear();
            }
            Settle::Reject { .. } => reject_grouped(self.vhost(), std::mem::take(&mut taken), now_ms()),
        }
        self.settle_scratch = taken;
        Ok(())
    }

    /// Gives credit back to the consumers (and channel) whose deliveries were settled.
    fn after_settle(&mut self, ch: u16, taken: &[Unacked]) {
        let mut from_consumers = 0u32;
        for u in taken {
            if let Some(cid) = u.consumer {
                from_consumers += 1;
                if let Some(c) = self.consumers.get_mut(&cid) {
                    c.unacked = c.unacked.saturating_sub(1);
                }
                self.schedule_pull(cid);
            }
        }
        let channel = self.channel(ch);
        channel.consumer_unacked = channel.consumer_unacked.saturating_sub(from_consumers);
        if from_consumers > 0 && channel.channel_prefetch > 0 {
            self.schedule_channel(ch);
        }
    }

    /// Schedules a pull for every consumer of the channel (its shared limit changed), without allocating.
    fn schedule_channel(&mut self, ch: u16) {
        let Some(channel) = self.channels.get(&ch) else {
            return;
        };
        for id in channel.consumers.values() {
            if let Some(c) = self.consumers.get_mut(id) {
                if !c.scheduled {
                    c.scheduled = true;
                    self.pull_list.push(*id);
                }
            }
        }
    }

    fn on_publish(&mut self, ch: u16, p: BasicPublish, header: ContentHeader, body: Bytes) -> AmqpResult<()> {
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        if body.len() as u64 > MAX_MESSAGE_SIZE {
            return Err(AmqpError::precondition_failed(format!(
                "message size {} is larger than configured max size {MAX_MESSAGE_SIZE}",
                body.len()
            )));
        }
        if let Some(uid) = header.properties.user_id() {
            if uid != self.user.as_str() {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    self.user
                )));
            }
        }
        crate::message::validate_expiration(&header.properties).map_err(AmqpError::precondition_failed)?;
        let msg = Arc::new(Message::new(
            p.exchange.clone(),
            p.routing_key.clone(),
            header.properties,
            body,
        ));
        let mut dests = std::mem::take(&mut self.route_scratch);
        if let Err(e) = self.route(&p, &msg, &mut dests) {
            self.route_scratch = dests;
            return Err(e);
        }
        if let Some(tx) = self.channel(ch).tx.as_mut() {
            // Routed now, as RabbitMQ does (errors surface at once); enqueued at commit.
            tx.publishes.push((p, msg, dests.clone()));
            self.route_scratch = dests;
            return Ok(());
        }
        self.enqueue(ch, &p, msg, &dests);
        self.route_scratch = dests;
        Ok(())
    }

    /// The queues a message goes to.
    fn route(&self, p: &BasicPublish, msg: &Message, dests: &mut Vec<router::Name>) -> AmqpResult<()> {
        let vhost = self.vhost();
        let headers = crate::args::message_headers(&msg.properties);
        vhost.router.read().route(
            p.exchange.as_str(),
            p.routing_key.as_str(),
            headers.as_ref(),
            dests,
        )?;
        Ok(())
    }

    /// Enqueues one routed message on every queue it reached, returns it if mandatory and unroutable, and
    /// records its confirm.
    fn enqueue(&mut self, ch: u16, p: &BasicPublish, msg: Arc<Message>, dests: &[router::Name]) {
        let vhost = self.vhost().clone();
        let now = now_ms();
        let mut enqueued = 0usize;
        let mut failed = false;
        let mut ticket = 0u64;
        let mut dead = DeadLetters::new();
        // Dead letters (drop-head, TTL 0) are routed after the queue map's lock is released.
        let mut deferred: Vec<(Arc<Queue>, DeadLetters)> = Vec::new();
        vhost.with_queues(dests, |q| {
            match q.publish(msg.clone(), now, &mut dead) {
                Ok(t) => {
                    enqueued += 1;
                    ticket = ticket.max(t);
                }
                Err(crate::queue::Rejected::Store | crate::queue::Rejected::Full) => failed = true,
                Err(crate::queue::Rejected::Deleted) => {}
            }
            if !dead.is_empty() {
                deferred.push((q.clone(), dead.take()));
            }
        });
        for (q, mut d) in deferred {
            vhost.dead_letter(&q, &mut d, now);
        }
        if enqueued == 0 && p.mandatory {
            let frame_max = self.frame_max;
            let m = Method::BasicReturn(protocol::BasicReturn {
                reply_code: reply::NO_ROUTE,
                reply_text: ShortStr::from_static("NO_ROUTE"),
                exchange: p.exchange.clone(),
                routing_key: p.routing_key.clone(),
            });
            protocol::write_method(&mut self.out, ch, &m);
            protocol::write_content(
                &mut self.out,
                ch,
                protocol::CLASS_BASIC,
                &msg.properties,
                &msg.body,
                frame_max,
            );
        }
        let channel = self.channel(ch);
        if channel.confirm {
            let tag = channel.next_publish_tag;
            channel.next_publish_tag += 1;
            channel.confirms.push_back(PendingConfirm {
                tag,
                ticket,
                ack: !failed,
            });
        }
    }

    fn tx_commit(&mut self, ch: u16) -> AmqpResult<()> {
        let channel = self.channel(ch);
        let Some(tx) = channel.tx.as_mut() else {
            return Err(AmqpError::precondition_failed("channel is not transactional"));
        };
        let TxState { publishes, settles } = std::mem::take(tx);
        for (p, msg, dests) in publishes {
            self.enqueue(ch, &p, msg, &dests);
        }

        for s in settles {
            self.apply_settle(ch, s)?;
        }
        self.send_method(ch, &Method::TxCommitOk(protocol::TxCommitOk));
        Ok(())
    }

    // ---------------------------------------------------------------- deliveries and confirms

    /// Pulls deliveries for every scheduled consumer until the write buffer is full enough.
    pub fn run_pulls(&mut self) {
        let mut i = 0;
        while i < self.pull_list.len() {
            if self.out.len() >= crate::connection::WRITE_HIGH_WATER {
                break;
            }
            let id = self.pull_list[i];
            i += 1;
            let again = self.pull_for(id);
            if again {
                // A full batch: there may be more. Keep it scheduled for the next round.
                self.pull_list.push(id);
            } else if let Some(c) = self.consumers.get_mut(&id) {
                c.scheduled = false;
            }
        }
        self.pull_list.drain(..i);
    }

    /// Delivers what one consumer may take now. Returns true if it took a full batch (more may be waiting).
    fn pull_for(&mut self, id: ConsumerId) -> bool {
        let Some(c) = self.consumers.get(&id) else {
            return false;
        };
        let Some(channel) = self.channels.get(&c.channel) else {
            return false;
        };
        if channel.closing {
            return false;
        }
        let mut credit = PULL_BATCH;
        if !c.no_ack {
            if c.limit > 0 {
                credit = credit.min((c.limit as u32).saturating_sub(c.unacked) as usize);
            }
            if channel.channel_prefetch > 0 {
                credit = credit
                    .min((channel.channel_prefetch as u32).saturating_sub(channel.consumer_unacked) as usize);
            }
        }
        if credit == 0 {
            return false;
        }
        let mut batch = std::mem::take(&mut self.pull_scratch);
        let now = now_ms();
        let mut dead = DeadLetters::new();
        let n = c.queue.pull(id, credit, !c.no_ack, now, &mut batch, &mut dead);
        if !dead.is_empty() {
            self.vhost().dead_letter(&c.queue, &mut dead, now);
        }
        if n == 0 {
            self.pull_scratch = batch;
            return false;
        }
        let (ch, no_ack, tag, queue) = (c.channel, c.no_ack, c.tag.clone(), c.queue.clone());
        if no_ack && queue.is_stored() {
            queue.forget(&batch);
        }
        let frame_max = self.frame_max;
        let channel = self.channels.get_mut(&ch).expect("checked");
        for entry in batch.drain(..) {
            let delivery_tag = channel.next_tag;
            channel.next_tag += 1;
            let m = Method::BasicDeliver(BasicDeliver {
                consumer_tag: tag.clone(),
                delivery_tag,
                redelivered: entry.redelivered,
                exchange: entry.msg.exchange.clone(),
                routing_key: entry.msg.routing_key.clone(),
            });
            protocol::write_method(&mut self.out, ch, &m);
            let props = delivery_properties(&entry);
            protocol::write_content(
                &mut self.out,
                ch,
                protocol::CLASS_BASIC,
                &props,
                &entry.msg.body,
                frame_max,
            );
            if !no_ack {
                channel.unacked.push_back(Unacked {
                    tag: delivery_tag,
                    queue: queue.clone(),
                    entry,
                    consumer: Some(id),
                });
            }
        }
        self.pull_scratch = batch;
        if !no_ack {
            channel.consumer_unacked += n as u32;
            if let Some(c) = self.consumers.get_mut(&id) {
                c.unacked += n as u32;
            }
        }
        n == credit
    }

    pub fn awaiting_durable(&self) -> bool {
        self.channels
            .values()
            .any(|c| c.confirms.front().is_some_and(|p| p.ticket > 0))
    }

    /// Sends the confirms whose writes are durable: runs of acks as one `multiple` ack, nacks one by one.
    pub fn flush_confirms(&mut self, durable: u64) {
        for channel in self.channels.values_mut() {
            if channel.confirms.is_empty() || channel.closing {
                continue;
            }
            let mut run: Option<(u64, usize)> = None;
            while let Some(p) = channel.confirms.front() {
                if p.ticket > durable {
                    break;
                }
                let p = channel.confirms.pop_front().expect("front");
                if p.ack {
                    run = Some((p.tag, run.map_or(1, |(_, n)| n + 1)));
                } else {
                    if let Some((tag, n)) = run.take() {
                        write_ack(&mut self.out, channel.id, tag, n > 1);
                    }
                    let m = Method::BasicNack(protocol::BasicNack {
                        delivery_tag: p.tag,
                        multiple: false,
                        requeue: false,
                    });
                    protocol::write_method(&mut self.out, channel.id, &m);
                }
            }
            if let Some((tag, n)) = run {
                write_ack(&mut self.out, channel.id, tag, n > 1);
            }
        }
    }
}

fn write_ack(out: &mut bytes::BytesMut, ch: u16, tag: u64, multiple: bool) {
    protocol::write_method(
        out,
        ch,
        &Method::BasicAck(protocol::BasicAck {
            delivery_tag: tag,
            multiple,
        }),
    );
}

/// The properties a delivery carries: as published, plus `x-delivery-count` once the message was returned.
fn delivery_properties(entry: &Entry) -> std::borrow::Cow<'_, protocol::RawProperties> {
    if entry.delivery_count == 0 {
        return std::borrow::Cow::Borrowed(&entry.msg.properties);
    }
    let mut headers = entry.msg.properties.headers().ok().flatten().unwrap_or_default();
    headers.insert(
        "x-delivery-count",
        protocol::FieldValue::I64(entry.delivery_count as i64),
    );
    match entry.msg.properties.with_headers(headers) {
        Ok(p) => std::borrow::Cow::Owned(p),
        Err(_) => std::borrow::Cow::Borrowed(&entry.msg.properties),
    }
}

fn group_by_queue(unacked: Vec<Unacked>) -> Vec<(Arc<Queue>, Vec<Entry>)> {
    let mut by_queue: Vec<(Arc<Queue>, Vec<Entry>)> = Vec::new();
    for u in unacked {
        match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, v)) => v.push(u.entry),
            None => by_queue.push((u.queue, vec![u.entry])),
        }
    }
    by_queue
}

/// Requeues deliveries, one queue lock per queue.
fn requeue_grouped(vhost: &VHost, unacked: Vec<Unacked>, now: u64) {
    let mut dead = DeadLetters::new();
    for (q, entries) in group_by_queue(unacked) {
        q.requeue(entries, now, &mut dead);
        vhost.dead_letter(&q, &mut dead, now);
    }
}

/// Rejects deliveries without requeue: dead-lettered or dropped.
fn reject_grouped(vhost: &VHost, unacked: Vec<Unacked>, now: u64) {
    let mut dead = DeadLetters::new();
    for (q, entries) in group_by_queue(unacked) {
        q.reject(entries, &mut dead);
        vhost.dead_letter(&q, &mut dead, now);
    }
}

/// Settles deliveries for good (ack, or reject without requeue).
fn settle_grouped(taken: &[Unacked]) {
    let mut i = 0;
    while i < taken.len() {
        let q = &taken[i].queue;
        let mut j = i + 1;
        while j < taken.len() && Arc::ptr_eq(&taken[j].queue, q) {
            j += 1;
        }
        q.settle(taken[i..j].iter().map(|u| &u.entry));
        i = j;
    }
}

/// queue.declare on an existing queue must match what it was declared with.
fn check_equivalent(q: &Queue, d: &protocol::QueueDeclare, vhost: &str) -> AmqpResult<()> {
    let name = &q.spec.name;
    let ineq = |arg: &str, received: bool, current: bool| {
        AmqpError::precondition_failed(format!(
            "inequivalent arg '{arg}' for queue '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
        ))
    };
    if d.durable != q.spec.durable {
        return Err(ineq("durable", d.durable, q.spec.durable));
    }
    if d.auto_delete != q.spec.auto_delete {
        return Err(ineq("auto_delete", d.auto_delete, q.spec.auto_delete));
    }
    if d.exclusive != q.spec.exclusive_owner.is_some() {
        return Err(AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        )));
    }
    crate::args::check_equivalent_args(&q.spec.arguments, &d.arguments, name, vhost)
}
