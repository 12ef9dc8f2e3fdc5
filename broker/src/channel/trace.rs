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
use crate::trace::{Event, Ids, Kind, Queues};

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

    fn event(&self, kind: Kind, session: &Session, ids: Ids, time: u64) -> Event {
        let mut e = Event::new(kind, &session.trace_source, ids, time);
        e.channel = Some(self.id);
        e
    }

    /// A message routed to `queues`, about to be enqueued: `published`, then `routed` (one event pair, one
    /// send), are recorded before any queue can deliver it, so they come first in its timeline.
    pub(super) fn trace_publish(
        &self,
        p: &BasicPublish,
        msg: &Message,
        queues: &[Arc<Queue>],
        session: &Session,
    ) {
        let vhost = &session.vhost;
        if !vhost.trace.room(2) {
        } else if let Some(ids) = Ids::of(&msg.properties) {
            let mut e = self.event(Kind::Published, session, ids, now_ms());
            e.exchange = Some(p.exchange.clone());
            e.routing_key = Some(p.routing_key.clone());
            e.queues = Some(Queues::of_names(queues.iter().map(|q| q.name())));
            vhost.trace.record(e);
        }
        vhost.firehose_publish(msg, queues.iter().map(|q| q.name()), &self.actor(session));
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
            let mut e = self.event(Kind::Delivered, session, ids, now_ms());
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
        // `unacked` is in tag order (`take_unacked` binary-searches it too).
        let range = if multiple {
            let end = if tag == 0 {
                self.unacked.len()
            } else {
                self.unacked.partition_point(|u| u.tag <= tag)
            };
            0..end
        } else {
            match self.unacked.binary_search_by_key(&tag, |u| u.tag) {
                Ok(i) => i..i + 1,
                Err(_) => 0..0,
            }
        };
        for u in self.unacked.range(range) {
            if !session.vhost.trace.room(1) {
                continue;
            }
            let Some(ids) = Ids::of(&u.entry.msg.properties) else {
                continue;
            };
            let mut e = self.event(kind, session, ids, now);
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
