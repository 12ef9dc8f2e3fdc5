//! The channel's tracing hooks (issue 15), called only when tracing is on for the session's vhost (the
//! callers check `vhost.trace.on()`, one relaxed load): the `published` and `routed` events and the
//! firehose's `publish.<exchange>` copy, the `delivered` event and the `deliver.<queue>` copy, and the
//! `acked`/`nacked`/`rejected` events. Everything else about tracing is in `crate::trace`.

use protocol::{BasicPublish, ShortStr};

use super::Channel;
use crate::clock::now_ms;
use crate::message::Message;
use crate::queue::{Entry, Queue};
use crate::session::Session;
use crate::trace::firehose::Actor;
use crate::trace::{Event, Kind};

impl Channel {
    fn actor<'a>(&self, session: &'a Session) -> Actor<'a> {
        Actor {
            connection: &session.conn_name,
            channel: self.id,
            user: &session.user,
        }
    }

    fn event(&self, kind: Kind, session: &Session, msg: &Message, time: u64) -> Option<Event> {
        Event::about(kind, &session.vhost.name, &msg.properties, time).map(|mut e| {
            e.connection = Some(session.conn_name.clone());
            e.user = Some(session.user.clone());
            e.channel = Some(self.id);
            e
        })
    }

    /// A message routed to `dests`, about to be enqueued: `published`, then `routed`, are recorded before
    /// any queue can deliver it, so they come first in its timeline.
    pub(super) fn trace_publish(
        &self,
        p: &BasicPublish,
        msg: &Message,
        dests: &[router::Name],
        session: &Session,
    ) {
        let vhost = &session.vhost;
        let now = now_ms();
        let published = self.event(Kind::Published, session, msg, now).map(|mut e| {
            e.exchange = Some(p.exchange.as_str().to_string());
            e.routing_key = Some(p.routing_key.as_str().to_string());
            e
        });
        if let Some(published) = published {
            let mut routed = published.clone();
            routed.event = Kind::Routed;
            routed.queues = Some(dests.iter().map(|q| q.to_string()).collect());
            vhost.trace.record(Some(published));
            vhost.trace.record(Some(routed));
        }
        vhost.firehose_publish(msg, dests, &self.actor(session));
    }

    /// One delivery (consumer `tag`, or basic.get when None).
    pub(super) fn trace_deliver(
        &self,
        session: &Session,
        queue: &Queue,
        tag: Option<&ShortStr>,
        entry: &Entry,
    ) {
        let vhost = &session.vhost;
        let ev = self
            .event(Kind::Delivered, session, &entry.msg, now_ms())
            .map(|mut e| {
                e.exchange = Some(entry.msg.exchange.as_str().to_string());
                e.routing_key = Some(entry.msg.routing_key.as_str().to_string());
                e.queue = Some(queue.name().to_string());
                e.consumer_tag = Some(tag.map_or("basic.get", |t| t.as_str()).to_string());
                e.redelivered = Some(entry.redelivered);
                e.delivery_count = Some(entry.delivery_count);
                e
            });
        vhost.trace.record(ev);
        vhost.firehose_deliver(&entry.msg, queue.name(), entry.redelivered, &self.actor(session));
    }

    /// basic.ack / nack / reject of `tag` (`multiple`: every tag up to it; 0 = all), before the deliveries
    /// are settled. A nack or reject with requeue has the reason `requeue`.
    pub(super) fn trace_settle(
        &self,
        kind: Kind,
        tag: u64,
        multiple: bool,
        requeue: bool,
        session: &Session,
    ) {
        let now = now_ms();
        let hit = |u: &&super::Unacked| {
            if multiple {
                tag == 0 || u.tag <= tag
            } else {
                u.tag == tag
            }
        };
        for u in self.unacked.iter().filter(hit) {
            let ev = self.event(kind, session, &u.entry.msg, now).map(|mut e| {
                e.queue = Some(u.queue.name().to_string());
                e.consumer_tag = Some(match u.consumer.and_then(|c| session.consumers.get(&c)) {
                    Some(c) => c.tag.as_str().to_string(),
                    None => "basic.get".to_string(),
                });
                e.delivery_count = Some(u.entry.delivery_count);
                e.redelivered = Some(u.entry.redelivered);
                if requeue {
                    e.reason = Some("requeue".into());
                }
                e
            });
            session.vhost.trace.record(ev);
        }
    }
}
