//! The queue class: queue.declare, queue.bind, queue.unbind, queue.purge, queue.delete; and the rules every
//! method naming a queue follows (the empty name, exclusive queues).

use std::sync::Arc;

use protocol::{Method, ShortStr};

use super::held::Undo;
use super::{Channel, Ctx};
use crate::clock::now_ms;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::{Queue, QueueKind, QueueSpec};
use crate::session::Session;
use crate::users::{Perm, Res};

fn locked(name: &str, vhost: &str) -> AmqpError {
    AmqpError::resource_locked(format!(
        "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
    ))
}

/// Exclusive queues belong to the connection that declared them.
pub(super) fn check_exclusive(q: &Queue, session: &Session) -> AmqpResult<()> {
    match q.spec.exclusive_owner {
        Some(owner) if owner != session.id => Err(locked(&q.spec.name, &session.vhost.name)),
        _ => Ok(()),
    }
}

impl Channel {
    /// Looks a queue up and checks that this connection may use it.
    pub(super) fn usable_queue(&self, name: &ShortStr, session: &Session) -> AmqpResult<Arc<Queue>> {
        let name = self.queue_name(name)?;
        let q = session.vhost.queue_or_404(&name)?;
        check_exclusive(&q, session)?;
        Ok(q)
    }

    /// Read on a binding's source exchange; the default exchange is refused first (as RabbitMQ's
    /// binding_action_with_checks, which checks write on the destination before both).
    pub(super) fn permit_bind_source(&mut self, exchange: &str, session: &Session) -> AmqpResult<()> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.permit(session, Perm::Read, Res::Exchange, exchange)
    }

    /// RabbitMQ's shortcut: an empty queue name and an empty routing key bind with the last declared
    /// queue's name as the key.
    fn binding_key(&self, queue: &ShortStr, key: &ShortStr) -> AmqpResult<Arc<str>> {
        if queue.is_empty() && key.is_empty() {
            return self.queue_name(queue);
        }
        Ok(key.as_str().into())
    }

    pub(super) fn queue_declare(&mut self, d: protocol::QueueDeclare, ctx: &mut Ctx) -> AmqpResult<()> {
        if d.queue.as_str().starts_with(crate::reply_to::PSEUDO_QUEUE) {
            // Direct reply-to: every declare of these names is passive (RabbitMQ's queue.declare clause).
            return self.reply_declare(&d, ctx);
        }
        let session = &mut *ctx.session;
        let vhost = session.vhost.clone();
        let name: Arc<str> = if d.queue.is_empty() {
            if d.passive {
                self.queue_name(&d.queue)?
            } else {
                crate::names::queue_name().into()
            }
        } else {
            d.queue.as_str().into()
        };
        let mut ticket = 0;
        if d.passive {
            // rabbit_channel's check_any_resource_access_permitted: read, write or configure.
            if self.permit(session, Perm::Read, Res::Queue, &name).is_err()
                && self.permit(session, Perm::Write, Res::Queue, &name).is_err()
            {
                self.permit(session, Perm::Configure, Res::Queue, &name)?;
            }
        } else {
            self.permit(session, Perm::Configure, Res::Queue, &name)?;
        }
        let q = if d.passive {
            let q = vhost.queue_or_404(&name)?;
            check_exclusive(&q, session)?;
            q
        } else {
            if name.starts_with("amq.") && !d.queue.is_empty() {
                if let Some(existing) = vhost.queue(&name) {
                    // Redeclaring an existing server-named queue is allowed.
                    check_exclusive(&existing, session)?;
                } else {
                    return Err(AmqpError::access_refused(format!(
                        "queue name '{name}' contains reserved prefix 'amq.*'"
                    )));
                }
            }
            crate::args::validate_queue_args(&d.arguments, &name, &vhost.name)?;
            if QueueKind::of(&d.arguments) == QueueKind::Stream {
                crate::queue::stream::args::check_declare(
                    d.durable,
                    d.exclusive,
                    d.auto_delete,
                    &d.arguments,
                    &name,
                    &vhost.name,
                )?;
            }
            // A new queue with a dead-letter exchange: read on the queue, write on the DLX.
            if vhost.queue(&name).is_none() {
                if let Some(protocol::FieldValue::LongStr(dlx)) = d.arguments.get("x-dead-letter-exchange") {
                    let dlx = String::from_utf8_lossy(dlx.as_bytes()).into_owned();
                    self.permit(session, Perm::Read, Res::Queue, &name)?;
                    self.permit(session, Perm::Write, Res::Exchange, &dlx)?;
                }
            }
            crate::dedup::config(&d.arguments, false)?;
            let spec = QueueSpec {
                name: name.clone(),
                durable: d.durable,
                exclusive_owner: d.exclusive.then_some(session.id),
                auto_delete: d.auto_delete,
                arguments: d.arguments.clone(),
            };
            let (q, created, t) = vhost.declare_queue_durably(spec)?;
            if created {
                ticket = t;
                if d.exclusive {
                    session.own_exclusive(q.clone());
                }
            } else {
                check_exclusive(&q, session)?;
                check_equivalent(&q, &d, &vhost.name)?;
                q.touch(now_ms());
            }
            q
        };
        self.last_queue = Some(name.clone());
        if !d.no_wait {
            let (messages, consumers) = q.counts();
            let reply = Method::QueueDeclareOk(protocol::QueueDeclareOk {
                queue: ShortStr::from(&*name),
                message_count: messages,
                consumer_count: consumers,
            });
            self.reply_when_durable(
                ticket,
                reply,
                Undo::DeleteQueue(q),
                || format!("queue.declare of '{name}'"),
                ctx,
            );
        }
        Ok(())
    }

    pub(super) fn queue_bind(&mut self, b: protocol::QueueBind, ctx: &mut Ctx) -> AmqpResult<()> {
        let name = self.queue_name(&b.queue)?;
        self.permit(ctx.session, Perm::Write, Res::Queue, &name)?;
        self.permit_bind_source(b.exchange.as_str(), ctx.session)?;
        check_bind_source(b.exchange.as_str(), ctx.session)?;
        let q = self.usable_queue(&b.queue, ctx.session)?;
        let routing_key = self.binding_key(&b.queue, &b.routing_key)?;
        let binding = router::Binding {
            source: b.exchange.as_str().into(),
            destination: router::Destination::Queue(q.name().clone()),
            routing_key,
            arguments: crate::args::to_router_args(&b.arguments),
        };
        let ticket = ctx.session.vhost.bind_durably(binding.clone())?;
        if !b.no_wait {
            self.reply_when_durable(
                ticket,
                Method::QueueBindOk(protocol::QueueBindOk),
                Undo::Unbind(binding),
                || format!("queue.bind of '{}' to '{}'", q.name(), b.exchange),
                ctx,
            );
        }
        Ok(())
    }

    pub(super) fn queue_unbind(&mut self, b: protocol::QueueUnbind, ctx: &mut Ctx) -> AmqpResult<()> {
        if b.exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let name = self.queue_name(&b.queue)?;
        self.permit(ctx.session, Perm::Write, Res::Queue, &name)?;
        self.permit_bind_source(b.exchange.as_str(), ctx.session)?;
        if let Some(q) = ctx.session.vhost.queue(&name) {
            check_exclusive(&q, ctx.session)?;
        }
        let routing_key = self.binding_key(&b.queue, &b.routing_key)?;
        let binding = router::Binding {
            source: b.exchange.as_str().into(),
            destination: router::Destination::Queue(name),
            routing_key,
            arguments: crate::args::to_router_args(&b.arguments),
        };
        let ticket = ctx.session.vhost.unbind_durably(&binding)?;
        let what = || format!("queue.unbind of '{}' from '{}'", b.queue, b.exchange);
        self.reply_when_durable(
            ticket,
            Method::QueueUnbindOk(protocol::QueueUnbindOk),
            Undo::Rebind(binding),
            what,
            ctx,
        );
        Ok(())
    }

    pub(super) fn queue_purge(&mut self, p: protocol::QueuePurge, ctx: &mut Ctx) -> AmqpResult<()> {
        let name = self.queue_name(&p.queue)?;
        self.permit(ctx.session, Perm::Read, Res::Queue, &name)?;
        let q = self.usable_queue(&p.queue, ctx.session)?;
        self.refuse_on_stream(&q, "queue.purge", &ctx.session.vhost.name)?;
        let n = q.purge();
        if !p.no_wait {
            ctx.out.method(
                self.id,
                &Method::QueuePurgeOk(protocol::QueuePurgeOk { message_count: n }),
            );
        }
        Ok(())
    }

    pub(super) fn queue_delete(&mut self, d: protocol::QueueDelete, ctx: &mut Ctx) -> AmqpResult<()> {
        let name = self.queue_name(&d.queue)?;
        self.permit(ctx.session, Perm::Configure, Res::Queue, &name)?;
        let session = &mut *ctx.session;
        let mut n = 0;
        let mut ticket = 0;
        if let Some(q) = session.vhost.queue(&name) {
            check_exclusive(&q, session)?;
            let (messages, consumers) = q.counts();
            if d.if_unused && consumers > 0 {
                return Err(AmqpError::precondition_failed(format!(
                    "queue '{name}' in vhost '{}' in use",
                    session.vhost.name
                )));
            }
            if d.if_empty && messages > 0 {
                return Err(AmqpError::precondition_failed(format!(
                    "queue '{name}' in vhost '{}' not empty",
                    session.vhost.name
                )));
            }
            (n, ticket) = session.vhost.delete_queue_durably(&q);
            session.disown(&q);
        }
        if !d.no_wait {
            self.reply_when_durable(
                ticket,
                Method::QueueDeleteOk(protocol::QueueDeleteOk { message_count: n }),
                Undo::Nothing,
                || format!("queue.delete of '{name}'"),
                ctx,
            );
        }
        Ok(())
    }
}

/// RabbitMQ's order of checks for queue.bind/unbind: the default exchange (403), then the exchange (404).
fn check_bind_source(exchange: &str, session: &Session) -> AmqpResult<()> {
    if exchange.is_empty() {
        return Err(AmqpError::access_refused(
            "operation not permitted on the default exchange",
        ));
    }
    let vhost = &session.vhost;
    if vhost.router.read().exchange(exchange).is_none() {
        return Err(AmqpError::not_found(format!(
            "no exchange '{exchange}' in vhost '{}'",
            vhost.name
        )));
    }
    Ok(())
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
        return Err(locked(name, vhost));
    }
    crate::args::check_equivalent_args(&q.spec.arguments, &d.arguments, name, vhost)
}
