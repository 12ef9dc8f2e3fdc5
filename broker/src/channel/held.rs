//! Replies that promise durability (docs/durability.md): declare-ok, bind-ok, unbind-ok and delete-ok of
//! durable entities, and tx.commit-ok. Such a reply waits for the store ticket of the change it reports; the
//! channel holds it, and the frames that arrive for the channel meanwhile wait in order behind it (a
//! channel is sequential, as a RabbitMQ channel process is), while other channels and deliveries go on.
//! Many channels' and connections' changes share one flush round (group commit).
//!
//! When the ticket is durable the reply goes out and the waiting frames are handled. When its flush round
//! failed, the change is undone where it can be (a declared queue or exchange is deleted again, a binding
//! made or removed is reverted) and the connection is closed with 541 INTERNAL_ERROR and the store's reason.
//!
//! Definition methods (exchange.* and queue.*) that arrive while a reply is held and nothing else waits are
//! not held back: they are handled at once, so that a burst of declares on one channel shares flush rounds
//! (group commit) instead of paying one round each. What they write (their own replies, held or not, and
//! any error) is kept behind the held replies and sent in order, so the client sees exactly the sequence a
//! sequential channel gives. If a held change fails, it and every change handled after it that is not
//! durable yet are undone, newest first, and the connection is closed with 541 as above.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::{Frame, Method};
use storage::{Durability, TicketState};

use super::{Channel, Ctx, Next};
use crate::error::{AmqpError, AmqpResult};
use crate::queue::Queue;

/// Frames a held channel keeps for later; beyond this the connection stops reading its socket until the
/// reply is settled (backpressure instead of unbounded memory).
pub const BACKLOG_MAX: usize = 4096;

/// How a change whose ticket failed is taken back.
pub(super) enum Undo {
    /// Nothing can be undone (a deletion: the messages are gone; a transaction: its messages stay queued).
    Nothing,
    DeleteQueue(Arc<Queue>),
    DeleteExchange(Arc<str>),
    Unbind(router::Binding),
    Rebind(router::Binding),
}

/// Most replies held at once on a channel: beyond this, definition methods wait in the backlog too.
const HELD_MAX: usize = 4096;

pub(super) struct Held {
    ticket: u64,
    reply: Method,
    undo: Undo,
    /// What the reply reports, for the error text ("queue.declare of 'q'").
    what: String,
    /// Frames written by the methods handled after this one while it was held, sent right after its reply.
    after: bytes::BytesMut,
}

#[derive(Default)]
pub(super) struct Hold {
    held: VecDeque<Held>,
    backlog: VecDeque<Frame>,
    /// A channel error met by a method handled ahead: the channel is closed with it once the replies held
    /// before it are out (frames arriving meanwhile are dropped, as a closing channel drops them).
    pending_close: Option<AmqpError>,
}

impl Hold {
    pub fn is_held(&self) -> bool {
        !self.held.is_empty()
    }

    pub fn clear(&mut self) {
        self.held.clear();
        self.backlog.clear();
        self.pending_close = None;
    }

    /// Defers a channel close behind the held replies; false (nothing deferred) when nothing is held.
    pub(super) fn defer_close(&mut self, e: AmqpError) -> Result<(), AmqpError> {
        if self.held.is_empty() {
            return Err(e);
        }
        self.backlog.clear();
        self.pending_close.get_or_insert(e);
        Ok(())
    }

    /// Whether `frame` may be handled now although a reply is held (see the module docs).
    fn may_pass(&self, frame: &Frame) -> bool {
        self.backlog.is_empty()
            && self.held.len() < HELD_MAX
            && matches!(frame, Frame::Method(_, m) if matches!(m.class_id(), 40 | 50))
    }

    /// Keeps frames written while a reply was held behind the last reply held before them. If that reply
    /// is no longer held (the channel settled or dropped its held replies meanwhile), nothing is ahead of
    /// the frames any more: they are given back to be written now.
    #[must_use]
    pub(super) fn keep_after(&mut self, index: usize, frames: bytes::BytesMut) -> Option<bytes::BytesMut> {
        if frames.is_empty() {
            return None;
        }
        match self.held.get_mut(index) {
            Some(h) => {
                h.after.unsplit(frames);
                None
            }
            None => Some(frames),
        }
    }
}

impl Channel {
    /// Sends `reply` now if `ticket` is 0 (nothing was written), else once the ticket is durable.
    pub(super) fn reply_when_durable(
        &mut self,
        ticket: u64,
        reply: Method,
        undo: Undo,
        what: impl FnOnce() -> String,
        ctx: &mut Ctx,
    ) {
        if ticket == 0 {
            ctx.out.method(self.id, &reply);
            return;
        }
        self.hold.held.push_back(Held {
            ticket,
            reply,
            undo,
            what: what(),
            after: bytes::BytesMut::new(),
        });
    }

    /// Whether a reply is held (frames then go through `hold_back`).
    #[inline]
    pub(super) fn holds_replies(&self) -> bool {
        !self.hold.held.is_empty()
    }

    /// A frame that arrives while a reply is held waits behind it, unless it is a definition method that
    /// may go ahead (then `Passed` says behind which held reply its output goes). Returns the frame back if
    /// it is to be handled now.
    pub(super) fn hold_back(&mut self, frame: Frame) -> Option<(Frame, Passed)> {
        if self.hold.held.is_empty() {
            return Some((frame, Passed::NotHeld));
        }
        if self.hold.pending_close.is_some() {
            return None;
        }
        if self.hold.may_pass(&frame) {
            return Some((frame, Passed::Behind(self.hold.held.len() - 1)));
        }
        self.hold.backlog.push_back(frame);
        None
    }

    /// Whether a held reply's ticket is settled (`settle_held` has work).
    pub fn held_settled(&self, d: &Durability) -> bool {
        self.hold
            .held
            .front()
            .is_some_and(|h| d.state(h.ticket) != TicketState::Pending)
    }

    /// Frames waiting behind a held reply (the connection stops reading at `BACKLOG_MAX`).
    pub fn backlog_len(&self) -> usize {
        self.hold.backlog.len()
    }

    /// Settles the held reply if its ticket is settled, then handles the frames that waited behind it
    /// (until one of them holds a reply again). A failed ticket is an error that closes the connection.
    pub fn settle_held(&mut self, d: &Durability, ctx: &mut Ctx) -> AmqpResult<Next> {
        while let Some(h) = self.hold.held.front() {
            match d.state(h.ticket) {
                TicketState::Pending => return Ok(Next::Keep),
                TicketState::Durable => {
                    let h = self.hold.held.pop_front().expect("held");
                    ctx.out.method(self.id, &h.reply);
                    ctx.out.put(&h.after);
                }
                TicketState::Failed => {
                    let h = self.hold.held.pop_front().expect("held");
                    self.hold.backlog.clear();
                    let vhost = ctx.session.vhost.clone();
                    // The changes handled after it that are not durable yet go too, newest first.
                    for later in std::mem::take(&mut self.hold.held).into_iter().rev() {
                        if d.state(later.ticket) != TicketState::Durable {
                            undo(later.undo, &vhost, ctx);
                        }
                    }
                    let cause = vhost.durability_error(h.ticket);
                    let undone = undo(h.undo, &vhost, ctx);
                    tracing::error!(what = h.what, cause, undone, "a change could not be made durable");
                    let tail = if undone { "; it was undone" } else { "" };
                    return Err(AmqpError::internal(format!(
                        "{} could not be made durable ({cause}){tail}",
                        h.what
                    ))
                    .on_method(h.reply.class_id(), request_method_of(&h.reply)));
                }
            }
        }
        if let Some(e) = self.hold.pending_close.take() {
            self.close_with(e, ctx);
            return Ok(Next::Keep);
        }
        while self.hold.held.is_empty() {
            let Some(frame) = self.hold.backlog.pop_front() else {
                break;
            };
            if self.handle(frame, ctx)? == Next::Remove {
                return Ok(Next::Remove);
            }
        }
        Ok(Next::Keep)
    }
}

/// Where a frame handled at once goes relative to the held replies.
#[derive(Debug, Clone, Copy)]
pub(super) enum Passed {
    /// Nothing was held: its output goes out as usual.
    NotHeld,
    /// Handled ahead while replies are held: its output is sent after the reply at this index.
    Behind(usize),
}

/// Takes back a change whose round failed. Returns whether anything was undone.
fn undo(u: Undo, vhost: &Arc<crate::vhost::VHost>, ctx: &mut Ctx) -> bool {
    match u {
        Undo::Nothing => false,
        Undo::DeleteQueue(q) => {
            vhost.delete_queue(&q);
            ctx.session.disown(&q);
            true
        }
        Undo::DeleteExchange(x) => vhost.delete_exchange(&x, false).is_ok(),
        Undo::Unbind(b) => vhost.unbind(&b).is_ok(),
        Undo::Rebind(b) => vhost.bind(b).is_ok(),
    }
}

/// The method id of the request a held reply answers.
fn request_method_of(reply: &Method) -> u16 {
    match reply {
        Method::ExchangeDeclareOk(_) | Method::QueueDeclareOk(_) => 10,
        Method::ExchangeDeleteOk(_) | Method::QueueBindOk(_) | Method::TxCommitOk(_) => 20,
        Method::ExchangeBindOk(_) => 30,
        Method::ExchangeUnbindOk(_) | Method::QueueDeleteOk(_) => 40,
        Method::QueueUnbindOk(_) => 50,
        other => other.method_id().saturating_sub(1),
    }
}
