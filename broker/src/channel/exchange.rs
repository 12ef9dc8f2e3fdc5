//! The exchange class: exchange.declare, exchange.delete, exchange.bind, exchange.unbind.

use protocol::Method;

use super::held::Undo;
use super::{Channel, Ctx};
use crate::error::{AmqpError, AmqpResult};
use crate::users::{Perm, Res};

fn exchange_binding(
    source: &str,
    destination: &str,
    key: &str,
    args: &protocol::FieldTable,
) -> router::Binding {
    router::Binding {
        source: source.into(),
        destination: router::Destination::Exchange(destination.into()),
        routing_key: key.into(),
        arguments: crate::args::to_router_args(args),
    }
}

impl Channel {
    pub(super) fn exchange_declare(&mut self, d: protocol::ExchangeDeclare, ctx: &mut Ctx) -> AmqpResult<()> {
        if d.passive {
            let n = d.exchange.as_str();
            if self.permit(ctx.session, Perm::Read, Res::Exchange, n).is_err()
                && self.permit(ctx.session, Perm::Write, Res::Exchange, n).is_err()
            {
                self.permit(ctx.session, Perm::Configure, Res::Exchange, n)?;
            }
        } else if !d.exchange.is_empty() {
            self.permit(ctx.session, Perm::Configure, Res::Exchange, d.exchange.as_str())?;
            if let Some(protocol::FieldValue::LongStr(ae)) = d.arguments.get("alternate-exchange") {
                if ctx
                    .session
                    .vhost
                    .router
                    .read()
                    .exchange(d.exchange.as_str())
                    .is_none()
                {
                    let ae = String::from_utf8_lossy(ae.as_bytes()).into_owned();
                    self.permit(ctx.session, Perm::Read, Res::Exchange, d.exchange.as_str())?;
                    self.permit(ctx.session, Perm::Write, Res::Exchange, &ae)?;
                }
            }
        }
        let vhost = &ctx.session.vhost;
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
            crate::dedup::config(&d.arguments, kind == router::ExchangeKind::Deduplication)?;
            let def = router::ExchangeDef {
                name: d.exchange.as_str().into(),
                kind,
                durable: d.durable,
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: crate::args::to_router_args(&d.arguments),
            };
            let (_, ticket) = vhost.declare_exchange_durably(def)?;
            if !d.no_wait {
                let name: std::sync::Arc<str> = d.exchange.as_str().into();
                self.reply_when_durable(
                    ticket,
                    Method::ExchangeDeclareOk(protocol::ExchangeDeclareOk),
                    Undo::DeleteExchange(name.clone()),
                    || format!("exchange.declare of '{name}'"),
                    ctx,
                );
            }
            return Ok(());
        }
        if !d.no_wait {
            ctx.out
                .method(self.id, &Method::ExchangeDeclareOk(protocol::ExchangeDeclareOk));
        }
        Ok(())
    }

    pub(super) fn exchange_delete(&mut self, d: protocol::ExchangeDelete, ctx: &mut Ctx) -> AmqpResult<()> {
        if !d.exchange.is_empty() && !d.exchange.as_str().starts_with("amq.") {
            self.permit(ctx.session, Perm::Configure, Res::Exchange, d.exchange.as_str())?;
        }
        let ticket = ctx
            .session
            .vhost
            .delete_exchange_durably(d.exchange.as_str(), d.if_unused)?;
        if !d.no_wait {
            self.reply_when_durable(
                ticket,
                Method::ExchangeDeleteOk(protocol::ExchangeDeleteOk),
                Undo::Nothing,
                || format!("exchange.delete of '{}'", d.exchange),
                ctx,
            );
        }
        Ok(())
    }

    pub(super) fn exchange_bind(&mut self, b: protocol::ExchangeBind, ctx: &mut Ctx) -> AmqpResult<()> {
        self.permit(ctx.session, Perm::Write, Res::Exchange, b.destination.as_str())?;
        self.permit_bind_source(b.source.as_str(), ctx.session)?;
        let binding = exchange_binding(
            b.source.as_str(),
            b.destination.as_str(),
            b.routing_key.as_str(),
            &b.arguments,
        );
        let ticket = ctx.session.vhost.bind_durably(binding.clone())?;
        if !b.no_wait {
            self.reply_when_durable(
                ticket,
                Method::ExchangeBindOk(protocol::ExchangeBindOk),
                Undo::Unbind(binding),
                || format!("exchange.bind of '{}' to '{}'", b.destination, b.source),
                ctx,
            );
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(&mut self, b: protocol::ExchangeUnbind, ctx: &mut Ctx) -> AmqpResult<()> {
        self.permit(ctx.session, Perm::Write, Res::Exchange, b.destination.as_str())?;
        self.permit_bind_source(b.source.as_str(), ctx.session)?;
        let binding = exchange_binding(
            b.source.as_str(),
            b.destination.as_str(),
            b.routing_key.as_str(),
            &b.arguments,
        );
        let ticket = ctx.session.vhost.unbind_durably(&binding)?;
        if !b.no_wait {
            self.reply_when_durable(
                ticket,
                Method::ExchangeUnbindOk(protocol::ExchangeUnbindOk),
                Undo::Rebind(binding),
                || format!("exchange.unbind of '{}' from '{}'", b.destination, b.source),
                ctx,
            );
        }
        Ok(())
    }
}
