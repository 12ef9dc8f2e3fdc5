//! RabbitMQ's firehose (`deps/rabbit/src/rabbit_trace.erl`): while tracing is on for a vhost, every publish
//! is copied to its `amq.rabbitmq.trace` exchange with routing key `publish.<exchange>` and every delivery
//! with `deliver.<queue>`. The copy has the original body and, as its only property, headers naming the
//! original: `exchange_name`, `routing_keys`, `properties` (the original properties as a table), `node`,
//! and `vhost`, `connection`, `channel`, `user`, plus `routed_queues` (publish) or `redelivered` (deliver).
//! Messages that were published to the trace exchange are not traced again (RabbitMQ's `trace/5` first
//! clause), so consuming a trace queue does not loop. Copies are transient and have no confirms
//! (`publish_at_most_once`).
//!
//! Also the vhost's trace events of dead-lettering, expiry and redrive (an `impl VHost` block, as
//! `delayed.rs`).

use std::sync::Arc;

use protocol::{BasicProperties, FieldTable, FieldValue, LongStr, RawProperties, ShortStr};
use router::TRACE_EXCHANGE;

use super::{Event, Ids, Kind};
use crate::message::Message;
use crate::queue::{DeadLetters, DeathReason, Queue};
use crate::vhost::VHost;

/// Who published or consumed: the connection, channel and user of a firehose copy and of an event.
pub struct Actor<'a> {
    pub connection: &'a Arc<str>,
    pub channel: u16,
    pub user: &'a str,
}

fn long(s: &str) -> FieldValue {
    FieldValue::LongStr(LongStr::from(s))
}

/// RabbitMQ's `type/1` in rabbit_trace: integers are `signedint`, tables `table`, the rest `longstr`.
fn int(v: i64) -> FieldValue {
    match i32::try_from(v) {
        Ok(i) => FieldValue::I32(i),
        Err(_) => FieldValue::I64(v),
    }
}

/// `msg_to_table/3`: the properties that are set, by their field names.
fn properties_table(p: &BasicProperties) -> FieldTable {
    let mut t = FieldTable::new();
    let mut s = |k: &'static str, v: &Option<ShortStr>| {
        if let Some(v) = v {
            t.insert(k, long(v.as_str()));
        }
    };
    s("content_type", &p.content_type);
    s("content_encoding", &p.content_encoding);
    s("correlation_id", &p.correlation_id);
    s("reply_to", &p.reply_to);
    s("expiration", &p.expiration);
    s("message_id", &p.message_id);
    s("type", &p.kind);
    s("user_id", &p.user_id);
    s("app_id", &p.app_id);
    s("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        t.insert("headers", FieldValue::Table(h.clone()));
    }
    if let Some(d) = p.delivery_mode {
        t.insert("delivery_mode", int(d as i64));
    }
    if let Some(d) = p.priority {
        t.insert("priority", int(d as i64));
    }
    if let Some(d) = p.timestamp {
        t.insert("timestamp", int(d as i64));
    }
    t
}

impl VHost {
    /// The `publish.<exchange>` copy of a message routed to `routed`.
    pub fn firehose_publish<'a>(
        &self,
        msg: &Message,
        routed: impl Iterator<Item = &'a router::Name>,
        who: &Actor,
    ) {
        if msg.exchange.as_str() == TRACE_EXCHANGE {
            return;
        }
        let queues = routed.map(|q| long(q)).collect();
        self.firehose(
            msg,
            "publish.",
            msg.exchange.as_str(),
            who,
            [("routed_queues", FieldValue::Array(queues))],
        );
    }

    /// The `deliver.<queue>` copy of a delivery.
    pub fn firehose_deliver(&self, msg: &Message, queue: &str, redelivered: bool, who: &Actor) {
        if msg.exchange.as_str() == TRACE_EXCHANGE {
            return;
        }
        self.firehose(
            msg,
            "deliver.",
            queue,
            who,
            [("redelivered", FieldValue::I32(redelivered as i32))],
        );
    }

    fn firehose(
        &self,
        msg: &Message,
        prefix: &str,
        suffix: &str,
        who: &Actor,
        extra: [(&'static str, FieldValue); 1],
    ) {
        let mut dests = Vec::new();
        {
            let router = self.router.read();
            // The common case: nothing bound to the trace exchange, nothing to build.
            if !router.has_bindings_from(TRACE_EXCHANGE) {
                return;
            }
            let key = format!("{prefix}{suffix}");
            if router.route_internal(TRACE_EXCHANGE, &key, &mut dests).is_err() || dests.is_empty() {
                return;
            }
        }
        let key = format!("{prefix}{suffix}");
        let Ok(rk) = ShortStr::try_from_str(&key) else {
            return;
        };
        let props = msg.properties.decode().unwrap_or_default();
        let mut keys = vec![long(msg.routing_key.as_str())];
        keys.extend(msg.cc_keys().iter().map(|k| long(k)));
        let mut h = FieldTable::new();
        h.insert("exchange_name", long(msg.exchange.as_str()));
        h.insert("routing_keys", FieldValue::Array(keys));
        h.insert("properties", FieldValue::Table(properties_table(&props)));
        h.insert("node", long(super::node_name()));
        for (k, v) in extra {
            h.insert(k, v);
        }
        h.insert("vhost", long(&self.name));
        h.insert("connection", long(who.connection));
        h.insert("channel", FieldValue::I32(who.channel as i32));
        h.insert("user", long(who.user));
        let copy_props = RawProperties::from_properties(&BasicProperties {
            headers: Some(h),
            ..Default::default()
        });
        let copy = Arc::new(Message::new(
            ShortStr::from_static(TRACE_EXCHANGE),
            rk,
            copy_props,
            msg.body.clone(),
        ));
        let now = crate::clock::now_ms();
        let mut targets: Vec<Arc<Queue>> = Vec::new();
        self.with_queues(&dests, |q| targets.push(q.clone()));
        for q in targets {
            let mut dead = DeadLetters::new();
            let _ = q.publish(copy.clone(), now, &mut dead);
            self.dead_letter(&q, &mut dead, now);
        }
    }

    /// Trace events of messages that leave `from` dead (called by `dead_letter` when tracing is on):
    /// `expired` for an expiry, then `dead-lettered` with the reason and the dead-letter exchange (no
    /// `target`: dropped, the queue has none).
    pub(crate) fn trace_dead(&self, from: &Queue, dead: &DeadLetters, dlx: Option<&Arc<str>>, now: u64) {
        let Some(src) = self.trace.source() else {
            return;
        };
        for d in dead.iter() {
            let Some(ids) = Ids::of(&d.entry.msg.properties) else {
                continue;
            };
            if d.reason == DeathReason::Expired {
                let mut e = Event::new(Kind::Expired, src, ids.clone(), now);
                e.queue = Some(from.name().clone());
                e.reason = Some("expired");
                e.target = dlx.cloned();
                self.trace.record(e);
            }
            if d.reason != DeathReason::Expired || dlx.is_some() {
                let mut e = Event::new(Kind::DeadLettered, src, ids, now);
                e.queue = Some(from.name().clone());
                e.reason = Some(d.reason.as_str());
                e.target = dlx.cloned();
                e.delivery_count = Some(d.entry.delivery_count);
                self.trace.record(e);
            }
        }
    }

    /// The trace event of a message moved from `from` to `to` by a redrive.
    pub(crate) fn trace_redriven(&self, from: &str, to: &Arc<str>, msg: &Message, now: u64) {
        let Some(src) = self.trace.source() else {
            return;
        };
        if let Some(ids) = Ids::of(&msg.properties) {
            let mut e = Event::new(Kind::Redriven, src, ids, now);
            e.queue = Some(from.into());
            e.target = Some(to.clone());
            self.trace.record(e);
        }
    }
}
