//! A channel: its state and its behaviour. The connection looks a channel up once per frame and calls
//! [`Channel::handle`]; content frames are assembled here, and every method a channel handles is dispatched
//! from the one match in [`Channel::dispatch`] to a handler laid out by AMQP class:
//!
//! - `mod.rs` (this file): channel.open/close/close-ok/flow, content assembly, channel errors, release;
//! - `exchange.rs`: exchange.declare/delete/bind/unbind;
//! - `queue.rs`: queue.declare/bind/unbind/purge/delete;
//! - `basic_publish.rs`: basic.publish (route, enqueue, mandatory returns);
//! - `basic_consume.rs`: basic.qos/consume/cancel, and consumers cancelled by the server;
//! - `basic_deliver.rs`: deliveries to consumers, basic.get;
//! - `basic_ack.rs`: basic.ack/nack/reject/recover(-async);
//! - `direct_reply_to.rs`: the `amq.rabbitmq.reply-to` pseudo-queue (RPC replies without a queue);
//! - `confirm.rs`: confirm.select and publisher confirms;
//! - `tx.rs`: tx.select/commit/rollback.
//!
//! A handler sees the channel (`self`) and a [`Ctx`]: the connection's shared [`Session`] and its [`Output`].
//! Channels never see the connection itself, so the channel module does not depend on the connection module.

mod ack_timeout;
mod basic_ack;
mod basic_consume;
mod basic_deliver;
mod basic_publish;
mod confirm;
mod direct_reply_to;
mod exchange;
mod held;
mod info;
mod queue;
#[cfg(test)]
mod requeue_model;
mod stream;
mod table;
mod trace;
mod tx;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use protocol::{Assembled, ContentAssembler, Frame, Method, ShortStr};

use crate::clock::now_ms;
use crate::config::MAX_MAX_MESSAGE_SIZE;
use crate::error::{AmqpError, AmqpResult};
use crate::output::Output;
use crate::queue::{ConsumerId, DeadLetters, Entry, Queue};
use crate::session::Session;
use crate::vhost::VHost;

use confirm::Confirms;
use held::Hold;
pub use held::BACKLOG_MAX;
pub use info::consumer_snapshots;
pub use table::ChannelTable;
use tx::TxState;

/// What a channel's handlers work with besides the channel itself. Built by the connection for each frame.
pub struct Ctx<'a> {
    pub session: &'a mut Session,
    pub out: &'a mut Output,
}

/// What the connection does with the channel after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Keep,
    /// The channel is closed (channel.close or close-ok handled): forget it.
    Remove,
}

/// A delivery the client has not acked yet.
pub struct Unacked {
    pub tag: u64,
    pub queue: Arc<Queue>,
    pub entry: Entry,
    /// None for basic.get.
    pub consumer: Option<ConsumerId>,
    /// When it was delivered (ms, the clock read once per delivered batch): the consumer timeout's start.
    pub delivered_at: u64,
}

pub struct Channel {
    id: u16,
    /// We sent channel.close and wait for close-ok: drop everything else.
    closing: bool,
    assembler: ContentAssembler,
    /// This channel's consumers by tag (their state is in the session).
    consumers: HashMap<ShortStr, ConsumerId>,
    unacked: VecDeque<Unacked>,
    next_tag: u64,
    /// basic.qos global=false: the limit new consumers on this channel get.
    consumer_prefetch: u16,
    /// basic.qos global=true: limit over all consumers of the channel.
    channel_prefetch: u16,
    /// Deliveries to consumers not yet acked (what the channel limit counts).
    consumer_unacked: u32,
    confirms: Confirms,
    tx: Option<TxState>,
    /// The queue an empty queue name means (the last one declared on this channel).
    last_queue: Option<Arc<str>>,
    /// Reused by ack/nack/reject for the deliveries they settle (a single ack allocates nothing).
    settle_scratch: Vec<Unacked>,
    /// Single acks of the oldest delivery taken off `unacked` and not settled yet: a run of them read in
    /// one pass is settled together (`basic_ack.rs`), before the channel's next other frame and before the
    /// connection's pulls.
    acked_run: Vec<Unacked>,
    /// The smallest acknowledgement timeout (ms) of the queues this channel delivered from (u64::MAX: none):
    /// the consumer-timeout check looks no further than deliveries this old (`ack_timeout.rs`).
    ack_timeout_floor: u64,
    /// The direct reply-to consumer, if the client consumes from `amq.rabbitmq.reply-to` here.
    reply: Option<direct_reply_to::ReplyConsumer>,
    /// A reply waiting for its changes to be durable, and the frames waiting behind it (`held.rs`).
    hold: Hold,
    /// Permission checks that passed (RabbitMQ's per-channel permission cache, `users.rs`).
    perms: crate::users::PermCache,
}

impl Channel {
    /// channel.open: a new channel, and its open-ok.
    pub fn open(id: u16, out: &mut Output) -> Channel {
        out.method(id, &Method::ChannelOpenOk(protocol::ChannelOpenOk));
        Channel {
            id,
            closing: false,
            assembler: ContentAssembler::new(),
            consumers: HashMap::new(),
            unacked: VecDeque::new(),
            next_tag: 1,
            ack_timeout_floor: u64::MAX,
            consumer_prefetch: 0,
            channel_prefetch: 0,
            consumer_unacked: 0,
            confirms: Confirms::default(),
            tx: None,
            last_queue: None,
            settle_scratch: Vec::new(),
            acked_run: Vec::new(),
            reply: None,
            hold: Hold::default(),
            perms: Default::default(),
        }
    }

    /// `rabbit_channel:check_*_permitted`: the session's user may do `perm` on `res` `name` (cached).
    pub(super) fn permit(
        &mut self,
        session: &Session,
        perm: crate::users::Perm,
        res: crate::users::Res,
        name: &str,
    ) -> AmqpResult<()> {
        session
            .access
            .check(&mut self.perms, &session.vhost.name, perm, res, name)
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// One frame for this channel. Soft errors close the channel here; a hard error is returned for the
    /// connection to close.
    #[inline(always)]
    pub fn handle(&mut self, frame: Frame, ctx: &mut Ctx) -> AmqpResult<Next> {
        if self.closing {
            // Only close and close-ok matter until the client acknowledges our channel.close.
            return Ok(match frame {
                Frame::Method(_, Method::ChannelCloseOk(_)) => Next::Remove,
                Frame::Method(_, Method::ChannelClose(_)) => {
                    ctx.out
                        .method(self.id, &Method::ChannelCloseOk(protocol::ChannelCloseOk));
                    Next::Remove
                }
                _ => Next::Keep,
            });
        }
        if !self.holds_replies() {
            // The usual case: the frame goes straight on (not moved through `hold_back`'s return).
            return self.handle_now(frame, ctx);
        }
        let Some((frame, passed)) = self.hold_back(frame) else {
            return Ok(Next::Keep);
        };
        if let held::Passed::Behind(index) = passed {
            // A definition method handled while replies are held: what it writes goes out after them.
            let mark = ctx.out.mark();
            let r = self.handle_now(frame, ctx);
            let frames = ctx.out.take_from(mark);
            if let Some(now) = self.hold.keep_after(index, frames) {
                ctx.out.put(&now);
            }
            return r;
        }
        self.handle_now(frame, ctx)
    }

    /// One frame, handled now (not held back).
    #[inline(always)]
    fn handle_now(&mut self, frame: Frame, ctx: &mut Ctx) -> AmqpResult<Next> {
        // Whatever follows a run of single acks sees them settled (credit, counters, the queues).
        if !self.acked_run.is_empty() && !matches!(frame, Frame::Method(_, Method::BasicAck(_))) {
            self.settle_acked_run(ctx.session);
        }
        // A body over --max-message-size is refused at its content header, before any of it is buffered:
        // RabbitMQ (rabbit_channel.erl check_msg_size) gives the same 406 only after reading the whole body.
        // Its body frames, still on the way, are discarded by the closing channel. Sizes over the 512 MiB
        // ceiling stay the assembler's frame error, as RabbitMQ's rabbit_command_assembler has it.
        if let Frame::Header(_, h) = &frame {
            if self.assembler.awaits_header() && h.body_size <= MAX_MAX_MESSAGE_SIZE {
                if let Err(e) = ctx.session.check_message_size(h.body_size) {
                    self.assembler.reset();
                    self.close_with(
                        e.on_method(
                            protocol::BasicPublish::CLASS_ID,
                            protocol::BasicPublish::METHOD_ID,
                        ),
                        ctx,
                    );
                    return Ok(Next::Keep);
                }
            }
        }
        let pushed = match frame {
            Frame::Method(_, m) => self.assembler.push_method(m),
            Frame::Header(_, h) => self.assembler.push_header(h),
            Frame::Body(_, b) => self.assembler.push_body(b),
            Frame::Heartbeat(_) => Ok(None),
        };
        // One match on the assembler's answer, its parts bound where they are (a command moved whole
        // out of it first was a `memcpy` call per command).
        match pushed {
            Ok(None) => Ok(Next::Keep),
            Err(e) => Err(AmqpError::from(e)),
            Ok(Some(Assembled::Method(m))) => {
                let (class_id, method_id) = (m.class_id(), m.method_id());
                let result = self.dispatch(m, ctx);
                self.method_result(result, class_id, method_id, ctx)
            }
            Ok(Some(Assembled::Content {
                method: Method::BasicPublish(p),
                header,
                body,
            })) => {
                let result = self.basic_publish(p, header, body, ctx).map(|()| Next::Keep);
                self.method_result(
                    result,
                    protocol::BasicPublish::CLASS_ID,
                    protocol::BasicPublish::METHOD_ID,
                    ctx,
                )
            }
            Ok(Some(Assembled::Content { method: other, .. })) => {
                let (class_id, method_id) = (other.class_id(), other.method_id());
                let result = Err(AmqpError::command_invalid(format!(
                    "method '{}' does not carry content",
                    other.name()
                )));
                self.method_result(result, class_id, method_id, ctx)
            }
        }
    }

    /// A handled method's result: an error is about that method; one that does not close the connection
    /// closes the channel.
    fn method_result(
        &mut self,
        result: AmqpResult<Next>,
        class_id: u16,
        method_id: u16,
        ctx: &mut Ctx,
    ) -> AmqpResult<Next> {
        match result {
            Ok(next) => Ok(next),
            Err(e) => {
                let e = e.on_method(class_id, method_id);
                if e.closes_connection() {
                    Err(e)
                } else {
                    self.close_with(e, ctx);
                    Ok(Next::Keep)
                }
            }
        }
    }

    /// Every method a channel handles, to its handler.
    fn dispatch(&mut self, m: Method, ctx: &mut Ctx) -> AmqpResult<Next> {
        match m {
            Method::ChannelOpen(_) => return Err(AmqpError::channel_error("second 'channel.open' seen")),
            Method::ChannelClose(_) => return Ok(self.channel_close(ctx)),
            Method::ChannelCloseOk(_) => {}
            Method::ChannelFlow(f) => self.channel_flow(f, ctx)?,
            Method::ExchangeDeclare(d) => self.exchange_declare(d, ctx)?,
            Method::ExchangeDelete(d) => self.exchange_delete(d, ctx)?,
            Method::ExchangeBind(b) => self.exchange_bind(*b, ctx)?,
            Method::ExchangeUnbind(b) => self.exchange_unbind(*b, ctx)?,
            Method::QueueDeclare(d) => self.queue_declare(d, ctx)?,
            Method::QueueBind(b) => self.queue_bind(*b, ctx)?,
            Method::QueueUnbind(b) => self.queue_unbind(*b, ctx)?,
            Method::QueuePurge(p) => self.queue_purge(p, ctx)?,
            Method::QueueDelete(d) => self.queue_delete(d, ctx)?,
            Method::BasicQos(q) => self.basic_qos(q, ctx)?,
            Method::BasicConsume(c) => self.basic_consume(c, ctx)?,
            Method::BasicCancel(c) => self.basic_cancel(c, ctx)?,
            Method::BasicGet(g) => self.basic_get(g, ctx)?,
            Method::BasicAck(a) => self.basic_ack(a, ctx)?,
            Method::BasicReject(r) => self.basic_reject(r, ctx)?,
            Method::BasicNack(n) => self.basic_nack(n, ctx)?,
            Method::BasicRecover(r) => self.basic_recover(r.requeue, true, ctx)?,
            Method::BasicRecoverAsync(r) => self.basic_recover(r.requeue, false, ctx)?,
            Method::ConfirmSelect(c) => self.confirm_select(c, ctx)?,
            Method::TxSelect(_) => self.tx_select(ctx)?,
            Method::TxCommit(_) => self.tx_commit(ctx)?,
            Method::TxRollback(_) => self.tx_rollback(ctx)?,
            other => {
                return Err(AmqpError::command_invalid(format!(
                    "unexpected method '{}' from the client",
                    other.name()
                )))
            }
        }
        Ok(Next::Keep)
    }

    /// channel.close from the client: release everything, answer close-ok, and the channel is gone.
    fn channel_close(&mut self, ctx: &mut Ctx) -> Next {
        self.release(ctx.session);
        ctx.out
            .method(self.id, &Method::ChannelCloseOk(protocol::ChannelCloseOk));
        Next::Remove
    }

    fn channel_flow(&mut self, f: protocol::ChannelFlow, ctx: &mut Ctx) -> AmqpResult<()> {
        if !f.active {
            return Err(AmqpError::not_implemented("active=false"));
        }
        ctx.out.method(
            self.id,
            &Method::ChannelFlowOk(protocol::ChannelFlowOk { active: true }),
        );
        Ok(())
    }

    /// A channel error: send channel.close, release what the channel holds, drop its frames until close-ok.
    fn close_with(&mut self, e: AmqpError, ctx: &mut Ctx) {
        // Replies held for durability go out first (a method handled ahead of them failed).
        let Err(e) = self.hold.defer_close(e) else {
            return;
        };
        tracing::debug!(
            conn = ctx.session.id,
            channel = self.id,
            code = e.code,
            text = e.text,
            "closing channel"
        );
        self.release(ctx.session);
        self.closing = true;
        ctx.out.method(
            self.id,
            &Method::ChannelClose(protocol::ChannelClose {
                reply_code: e.code,
                reply_text: ShortStr::from(truncate_text(&e.text)),
                class_id: e.class_id,
                method_id: e.method_id,
            }),
        );
    }

    /// Requeues the channel's unacked messages (to their original positions) and then cancels its
    /// consumers. Also what the connection does to every channel when it goes, however it goes
    /// ([`release_channels`]).
    ///
    /// Requeue first: a single active consumer's successor becomes active only when the consumer leaves, and
    /// by then the messages are back in place, so it receives them first, in order (m0*, m1*, m2, m3), as
    /// RabbitMQ's classic queue does when a channel goes down (rabbit_amqqueue_process.erl
    /// `handle_ch_down/2`: `requeue_and_run` before the queue delivers again).
    pub fn release(&mut self, session: &mut Session) {
        #[cfg(test)]
        requeue_model::other_connections_run();
        self.requeue_unacked(session);
        self.confirms.clear();
        self.hold.clear();
        self.tx = None;
        self.assembler.reset();
        #[cfg(test)]
        requeue_model::other_connections_run();
        #[cfg(debug_assertions)]
        if !self.consumers.is_empty() {
            test_hooks::pause_in_release();
        }
        for (_, id) in self.consumers.drain() {
            session.remove_consumer(id);
        }
        self.release_reply(session);
    }

    /// Every unacked delivery of the channel goes back to its queue, in order.
    fn requeue_unacked(&mut self, session: &mut Session) {
        // Acked is acked: those go for good, not back.
        self.settle_acked_run(session);
        let mut unacked: Vec<Unacked> = self.unacked.drain(..).collect();
        // Deliveries a settle had taken when its handler failed go back too.
        unacked.append(&mut self.settle_scratch);
        self.consumer_unacked = 0;
        requeue_grouped(&session.vhost, unacked, now_ms());
    }

    /// The queue an empty queue name means: the last queue declared on this channel.
    fn queue_name(&self, name: &ShortStr) -> AmqpResult<Arc<str>> {
        if name.is_empty() {
            return self
                .last_queue
                .clone()
                .ok_or_else(|| AmqpError::not_found("no previously declared queue"));
        }
        Ok(name.as_str().into())
    }
}

/// A connection's channels go (connection closed, dropped or failed): every channel's unacked deliveries are
/// requeued before any of its consumers leaves, so no consumer of another connection takes over a single
/// active consumer's queue while some of the connection's deliveries are still out.
pub fn release_channels(channels: &mut ChannelTable, session: &mut Session) {
    for channel in channels.values_mut() {
        channel.requeue_unacked(session);
    }
    for (_, mut channel) in channels.drain() {
        channel.release(session);
    }
}

/// Reply texts are short strings: cut at 255 bytes on a character boundary.
pub fn truncate_text(s: &str) -> &str {
    if s.len() <= 255 {
        return s;
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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

/// Requeues deliveries, one queue lock per queue; those over their delivery limit are dead-lettered.
fn requeue_grouped(vhost: &VHost, unacked: Vec<Unacked>, now: u64) {
    if unacked.is_empty() {
        return;
    }
    let mut dead = DeadLetters::new();
    for (q, entries) in group_by_queue(unacked) {
        q.requeue(entries, now, &mut dead);
        vhost.dead_letter(&q, &mut dead, now);
    }
}

/// Test-only fault injection, compiled into debug builds only: `MAILROOM_TEST_RELEASE_PAUSE_MS=N` makes a
/// channel that is going away wait N ms between requeueing its deliveries and cancelling its consumers, so an
/// end-to-end test can show that a single active consumer's successor cannot take over (and take messages out
/// of order) before the requeue.
#[cfg(debug_assertions)]
mod test_hooks {
    use std::sync::OnceLock;
    use std::time::Duration;

    pub fn pause_in_release() {
        static PAUSE: OnceLock<Option<u64>> = OnceLock::new();
        let pause = PAUSE.get_or_init(|| {
            std::env::var("MAILROOM_TEST_RELEASE_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(ms) = pause {
            tracing::warn!(ms, "test hook: pausing a channel release");
            let sleep = || std::thread::sleep(Duration::from_millis(*ms));
            // Let the runtime's other tasks (other connections) run meanwhile, as they could at any time.
            match tokio::runtime::Handle::try_current() {
                Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(sleep)
                }
                _ => sleep(),
            }
        }
    }
}
