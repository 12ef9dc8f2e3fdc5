//! The channel's tracing hooks (issue 15), called only when tracing is on for the session's vhost (the
//! callers check `vhost.trace.on()`, one relaxed load): the `published` and `routed` events and the
//! firehose's `publish.<exchange>` copy, the `delivered` event and the `deliver.<queue>` copy, and the
//! `acked`/`nacked`/`rejected` events. Everything else about tracing is in `crate::trace`.

use std::sync::Arc;

use protocol::{BasicPublish, ShortStr};

use super::Channel;
use crate::clock::now_ms;
use crate::message::Message;
use crate::queue::{Entry, Queue};
use crate::session::Session;
use crate::trace::firehose::Actor;
use crate::trace::{Event, Ids, Kind};

/// The consumer tag events of basic.get deliveries show.
const BASIC_GET: ShortStr = ShortStr::from_static("basic.get");

impl Channel {
    fn actor<'a>(&self, session: &'a Session) -> Actor<'a> {
        Actor {
            connection: &session.conn_name,
            channel: self.id,
            user: &session.user,
        }
    }

    fn event(&self, kind: Kind, session: &Session, ids: &Arc<Ids>, time: u64) -> Event {
        let mut e = Event::new(kind, &session.vhost.name, ids, time);
        e.connection = Some(session.conn_name.clone());
        e.user = Some(session.trace_user.clone());
        e.channel = Some(self.id);
        e
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
        if !vhost.trace.room(2) {
        } else if let Some(ids) = Ids::of(&msg.properties) {
            let mut e = self.event(Kind::Published, session, &ids, now_ms());
            e.exchange = Some(p.exchange.clone());
            e.routing_key = Some(p.routing_key.clone());
            let mut routed = e.clone();
            routed.event = Kind::Routed;
            routed.queues = Some(dests.to_vec());
            vhost.trace.record(e);
            vhost.trace.record(routed);
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
        if !vhost.trace.room(1) {
        } else if let Some(ids) = Ids::of(&entry.msg.properties) {
            let mut e = self.event(Kind::Delivered, session, &ids, now_ms());
            e.exchange = Some(entry.msg.exchange.clone());
            e.routing_key = Some(entry.msg.routing_key.clone());
            e.queue = Some(queue.name().clone());
            e.consumer_tag = Some(tag.cloned().unwrap_or(BASIC_GET));
            e.redelivered = Some(entry.redelivered);
            e.delivery_count = Some(entry.delivery_count);
            vhost.trace.record(e);
        }
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
            if !session.vhost.trace.room(1) {
                continue;
            }
            let Some(ids) = Ids::of(&u.entry.msg.properties) else {
                continue;
            };
            let mut e = self.event(kind, session, &ids, now);
            e.queue = Some(u.queue.name().clone());
            e.consumer_tag = Some(match u.consumer.and_then(|c| session.consumers.get(&c)) {
                Some(c) => c.tag.clone(),
                None => BASIC_GET,
            });
            e.delivery_count = Some(u.entry.delivery_count);
            e.redelivered = Some(u.entry.redelivered);
            if requeue {
                e.reason = Some("requeue");
            }
            session.vhost.trace.record(e);
        }
    }
}
