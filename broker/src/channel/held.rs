//! Replies that promise durability (docs/durability.md): declare-ok, bind-ok, unbind-ok and delete-ok of
//! durable entities, and tx.commit-ok. Such a reply waits for the store ticket of the change it reports; the
//! channel holds it, and the frames that arrive for the channel meanwhile wait in order behind it (a
//! channel is sequential, as a RabbitMQ channel process is), while other channels and deliveries go on.
//! Many channels' and connections' changes share one flush round (group commit).
//!
//! When the ticket is durable the reply goes out and the waiting frames are handled. When its flush round
//! failed, the change is undone where it can be (a declared queue or exchange is deleted again, a binding
//! made or removed is reverted) and the connection is closed with 541 INTERNAL_ERROR and the store's reason.

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

pub(super) struct Held {
    ticket: u64,
    reply: Method,
    undo: Undo,
    /// What the reply reports, for the error text ("queue.declare of 'q'").
    what: String,
}

#[derive(Default)]
pub(super) struct Hold {
    held: Option<Held>,
    backlog: VecDeque<Frame>,
}

impl Hold {
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    pub fn clear(&mut self) {
        self.held = None;
        self.backlog.clear();
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
        self.hold.held = Some(Held {
            ticket,
            reply,
            undo,
            what: what(),
        });
    }

    /// A frame that arrives while a reply is held waits behind it. Returns the frame back if nothing is
    /// held.
    pub(super) fn hold_back(&mut self, frame: Frame) -> Option<Frame> {
        if self.hold.held.is_none() {
            return Some(frame);
        }
        self.hold.backlog.push_back(frame);
        None
    }

    /// Whether a held reply's ticket is settled (`settle_held` has work).
    pub fn held_settled(&self, d: &Durability) -> bool {
        self.hold
            .held
            .as_ref()
            .is_some_and(|h| d.state(h.ticket) != TicketState::Pending)
    }

    /// Frames waiting behind a held reply (the connection stops reading at `BACKLOG_MAX`).
    pub fn backlog_len(&self) -> usize {
        self.hold.backlog.len()
    }

    /// Settles the held reply if its ticket is settled, then handles the frames that waited behind it
    /// (until one of them holds a reply again). A failed ticket is an error that closes the connection.
    pub fn settle_held(&mut self, d: &Durability, ctx: &mut Ctx) -> AmqpResult<Next> {
        if let Some(h) = &self.hold.held {
            match d.state(h.ticket) {
                TicketState::Pending => return Ok(Next::Keep),
                TicketState::Durable => {
                    let h = self.hold.held.take().expect("held");
                    ctx.out.method(self.id, &h.reply);
                }
                TicketState::Failed => {
                    let h = self.hold.held.take().expect("held");
                    self.hold.backlog.clear();
                    let vhost = ctx.session.vhost.clone();
                    let cause = vhost.durability_error(h.ticket);
                    let undone = match h.undo {
                        Undo::Nothing => false,
                        Undo::DeleteQueue(q) => {
                            vhost.delete_queue(&q);
                            ctx.session.disown(&q);
                            true
                        }
                        Undo::DeleteExchange(x) => vhost.delete_exchange(&x, false).is_ok(),
                        Undo::Unbind(b) => vhost.unbind(&b).is_ok(),
                        Undo::Rebind(b) => vhost.bind(b).is_ok(),
                    };
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
        while self.hold.held.is_none() {
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
