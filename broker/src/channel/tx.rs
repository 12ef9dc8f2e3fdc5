//! The tx class: tx.select, tx.commit, tx.rollback. A transaction holds publishes (routed at publish time,
//! as RabbitMQ does, so routing errors surface at once) and settlements until commit.

use std::sync::Arc;

use protocol::{BasicPublish, Method};

use super::basic_ack::Settle;
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
        for (p, msg, dests) in publishes {
            self.enqueue(&p, msg, &dests, ctx);
        }
        for s in settles {
            self.apply_settle(s, ctx)?;
        }
        ctx.out.method(self.id, &Method::TxCommitOk(protocol::TxCommitOk));
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
