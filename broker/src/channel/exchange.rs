//! The exchange class: exchange.declare, exchange.delete, exchange.bind, exchange.unbind.

use protocol::Method;

use super::{Channel, Ctx};
use crate::error::{AmqpError, AmqpResult};

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
            ctx.out
                .method(self.id, &Method::ExchangeDeclareOk(protocol::ExchangeDeclareOk));
        }
        Ok(())
    }

    pub(super) fn exchange_delete(&mut self, d: protocol::ExchangeDelete, ctx: &mut Ctx) -> AmqpResult<()> {
        ctx.session
            .vhost
            .delete_exchange(d.exchange.as_str(), d.if_unused)?;
        if !d.no_wait {
            ctx.out
                .method(self.id, &Method::ExchangeDeleteOk(protocol::ExchangeDeleteOk));
        }
        Ok(())
    }

    pub(super) fn exchange_bind(&mut self, b: protocol::ExchangeBind, ctx: &mut Ctx) -> AmqpResult<()> {
        let binding = exchange_binding(
            b.source.as_str(),
            b.destination.as_str(),
            b.routing_key.as_str(),
            &b.arguments,
        );
        ctx.session.vhost.bind(binding)?;
        if !b.no_wait {
            ctx.out
                .method(self.id, &Method::ExchangeBindOk(protocol::ExchangeBindOk));
        }
        Ok(())
    }

    pub(super) fn exchange_unbind(&mut self, b: protocol::ExchangeUnbind, ctx: &mut Ctx) -> AmqpResult<()> {
        let binding = exchange_binding(
            b.source.as_str(),
            b.destination.as_str(),
            b.routing_key.as_str(),
            &b.arguments,
        );
        ctx.session.vhost.unbind(&binding)?;
        if !b.no_wait {
            ctx.out
                .method(self.id, &Method::ExchangeUnbindOk(protocol::ExchangeUnbindOk));
        }
        Ok(())
    }
}
