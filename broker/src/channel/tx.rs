//! The tx class: tx.select, tx.commit, tx.rollback. A transaction holds publishes (routed at publish time,
//! as RabbitMQ does, so routing errors surface at once) and settlements until commit.

use std::sync::Arc;

use protocol::{BasicPublish, Method};

use super::basic_ack::Settle;
use super::held::Undo;
use super::{Channel, Ctx};
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;

/// What a transaction holds until commit.
#[derive(Default)]
pub(super) struct TxState {
    pub publishes: Vec<(BasicPublish, Arc<Message>, Vec<router::Name>)>,
    pub settles: Vec<Settle>,
}

impl Channel {
    pub(super) fn tx_select(&mut self, ctx: &mut Ctx) -> AmqpResult<()> {
        if self.confirms.is_enabled() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from confirm to tx mode",
            ));
        }
        if self.tx.is_none() {
            self.tx = Some(TxState::default());
        }
        ctx.out.method(self.id, &Method::TxSelectOk(protocol::TxSelectOk));
        Ok(())
    }

    pub(super) fn tx_commit(&mut self, ctx: &mut Ctx) -> AmqpResult<()> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(AmqpError::precondition_failed("channel is not transactional"));
        };
        let TxState { publishes, settles } = std::mem::take(tx);
        let mut ticket = 0;
        for (p, msg, dests) in publishes {
            ticket = ticket.max(self.enqueue(&p, msg, &dests, 0, ctx));
        }
        if !settles.is_empty() {
            for s in settles {
                self.apply_settle(s, ctx)?;
            }
            // the acks' deletes were written by now: a ticket at or above theirs
            ticket = ticket.max(ctx.session.vhost.current_ticket());
        }
        // commit-ok promises that the transaction's persistent messages (and acks) are on disk
        self.reply_when_durable(
            ticket,
            Method::TxCommitOk(protocol::TxCommitOk),
            Undo::Nothing,
            || "the transaction (tx.commit)".to_string(),
            ctx,
        );
        Ok(())
    }

    pub(super) fn tx_rollback(&mut self, ctx: &mut Ctx) -> AmqpResult<()> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(AmqpError::precondition_failed("channel is not transactional"));
        };
        *tx = TxState::default();
        ctx.out
            .method(self.id, &Method::TxRollbackOk(protocol::TxRollbackOk));
        Ok(())
    }
}
