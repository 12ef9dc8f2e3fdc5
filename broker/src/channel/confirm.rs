//! The confirm class: confirm.select, and publisher confirms. Each publish in confirm mode gets the next
//! publish tag and waits for the store ticket of its write (0 when nothing was written); after each round of
//! frames the connection sends every confirm whose ticket is settled, a run of acks as one `multiple` ack.
//! A publish whose ticket failed (its flush round could not make it durable) is nacked, never acked: the
//! message may or may not be kept, as RabbitMQ's nack says.

use std::collections::VecDeque;

use protocol::Method;
use storage::{Durability, TicketState};

use super::{Channel, Ctx};
use crate::error::{AmqpError, AmqpResult};
use crate::output::Output;

/// A publish waiting for its confirm.
struct PendingConfirm {
    tag: u64,
    /// Store ticket that must be durable first (0 = none).
    ticket: u64,
    ack: bool,
}

pub(super) struct Confirms {
    enabled: bool,
    next_tag: u64,
    pending: VecDeque<PendingConfirm>,
}

impl Default for Confirms {
    fn default() -> Self {
        Confirms {
            enabled: false,
            next_tag: 1,
            pending: VecDeque::new(),
        }
    }
}

impl Confirms {
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// A publish was handled: in confirm mode it owes an ack (or a nack) once `ticket` is durable.
    pub fn record(&mut self, ticket: u64, ack: bool) {
        if !self.enabled {
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        self.pending.push_back(PendingConfirm { tag, ticket, ack });
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

impl Channel {
    pub(super) fn confirm_select(&mut self, c: protocol::ConfirmSelect, ctx: &mut Ctx) -> AmqpResult<()> {
        if self.tx.is_some() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from tx to confirm mode",
            ));
        }
        self.confirms.enabled = true;
        if !c.no_wait {
            ctx.out
                .method(self.id, &Method::ConfirmSelectOk(protocol::ConfirmSelectOk));
        }
        Ok(())
    }

    /// Whether the oldest pending confirm, or a held reply, waits for a store write (the connection then
    /// watches the store).
    pub fn awaiting_durable(&self) -> bool {
        self.confirms.pending.front().is_some_and(|p| p.ticket > 0) || self.hold.is_held()
    }

    /// Sends the confirms whose writes are settled: runs of acks as one `multiple` ack, nacks one by one
    /// (a publish refused by a queue, or whose write could not be made durable). Returns the number of
    /// publishes acked (for the metrics).
    pub fn flush_confirms(&mut self, durable: &Durability, out: &mut Output) -> u64 {
        if self.confirms.pending.is_empty() || self.closing {
            return 0;
        }
        let mut acked = 0;
        let mut run: Option<(u64, usize)> = None;
        while let Some(p) = self.confirms.pending.front() {
            let stored = match durable.state(p.ticket) {
                TicketState::Pending => break,
                TicketState::Durable => true,
                TicketState::Failed => false,
            };
            let Some(p) = self.confirms.pending.pop_front() else {
                break;
            };
            if p.ack && stored {
                acked += 1;
                run = Some((p.tag, run.map_or(1, |(_, n)| n + 1)));
            } else {
                if let Some((tag, n)) = run.take() {
                    write_ack(out, self.id, tag, n > 1);
                }
                let m = Method::BasicNack(protocol::BasicNack {
                    delivery_tag: p.tag,
                    multiple: false,
                    requeue: false,
                });
                out.method(self.id, &m);
            }
        }
        if let Some((tag, n)) = run {
            write_ack(out, self.id, tag, n > 1);
        }
        acked
    }
}

fn write_ack(out: &mut Output, ch: u16, tag: u64, multiple: bool) {
    out.method(
        ch,
        &Method::BasicAck(protocol::BasicAck {
            delivery_tag: tag,
            multiple,
        }),
    );
}
