//! `message_stats` of `/api/overview`, `/api/queues` and `/api/channels`: RabbitMQ's counters (`publish`,
//! `deliver_get`, `ack`, `redeliver`, ...) with `*_details: {"rate": per second}`. The counters are the
//! ones the metrics already keep (`stats.rs`: per connection, per queue; nothing new on the message path);
//! a sampler reads them every 5 s (RabbitMQ's `collect_statistics_interval`) into `Broker::rates`, and a
//! rate is the change over the last sample interval, as RabbitMQ's management agent reports it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::queue::Queue;
use crate::stats::{MessageTotals, Sample, RATE_INTERVAL_MS};

/// A connection's (or the whole broker's) counters, in `Sample::v` order.
const MESSAGE_FIELDS: [&str; 12] = [
    "publish",
    "confirm",
    "return_unroutable",
    "drop_unroutable",
    "deliver",
    "deliver_no_ack",
    "get",
    "get_no_ack",
    "deliver_get",
    "redeliver",
    "ack",
    "get_empty",
];

/// A queue's counters, in `Sample::v` order.
const QUEUE_FIELDS: [&str; 3] = ["publish", "deliver_get", "ack"];

fn message_values(t: &MessageTotals) -> [u64; 12] {
    let deliver_get = t.delivered_consume_manual_ack
        + t.delivered_consume_auto_ack
        + t.delivered_get_manual_ack
        + t.delivered_get_auto_ack;
    [
        t.received,
        t.confirmed,
        t.unroutable_returned,
        t.unroutable_dropped,
        t.delivered_consume_manual_ack,
        t.delivered_consume_auto_ack,
        t.delivered_get_manual_ack,
        t.delivered_get_auto_ack,
        deliver_get,
        t.redelivered,
        t.acknowledged,
        t.get_empty,
    ]
}

fn queue_values(q: &Queue) -> [u64; 12] {
    use crate::stats::QueueStats;
    let mut v = [0; 12];
    v[0] = QueueStats::get(&q.stats.published);
    v[1] = QueueStats::get(&q.stats.delivered);
    v[2] = QueueStats::get(&q.stats.acked);
    v
}

fn queue_key(vhost: &str, name: &str) -> String {
    format!("q\u{0}{vhost}\u{0}{name}")
}

fn conn_key(id: u64) -> String {
    format!("c\u{0}{id}")
}

const OVERVIEW_KEY: &str = "o";

/// One round of samples of every object.
pub fn sample_all(broker: &Broker, now_ms: u64) -> HashMap<String, Sample> {
    let mut out = HashMap::new();
    let sample = |v| Sample { at_ms: now_ms, v };
    out.insert(
        OVERVIEW_KEY.to_owned(),
        sample(message_values(&broker.stats.totals().messages)),
    );
    for id in broker.stats.open_ids() {
        if let Some(c) = broker.stats.conn(id) {
            let mut t = MessageTotals::default();
            c.messages.add_to(&mut t);
            out.insert(conn_key(id), sample(message_values(&t)));
        }
    }
    for vh in broker.vhosts() {
        for q in vh.queues() {
            out.insert(queue_key(&vh.name, q.name()), sample(queue_values(&q)));
        }
    }
    out
}

/// Samples now and then every [`RATE_INTERVAL_MS`] until `shutdown` (on a blocking thread each time: a
/// broker with many queues takes a while to walk).
pub fn spawn_sampler(broker: Arc<Broker>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(RATE_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let b = broker.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let samples = sample_all(&b, crate::clock::now_ms());
                b.rates.record(samples);
            })
            .await;
        }
    });
}

/// `message_stats`: the current counters, each with its rate over the last sample interval.
fn stats_json(fields: &[&str], now: &[u64; 12], samples: Option<(Sample, Sample)>) -> Value {
    let mut m = Map::new();
    for (i, f) in fields.iter().enumerate() {
        let rate = samples.map_or(0.0, |(prev, last)| last.rate_since(&prev, i));
        m.insert((*f).to_owned(), now[i].into());
        m.insert(format!("{f}_details"), serde_json::json!({"rate": rate}));
    }
    Value::Object(m)
}

pub fn overview_stats(broker: &Broker) -> Value {
    let now = message_values(&broker.stats.totals().messages);
    stats_json(&MESSAGE_FIELDS, &now, broker.rates.get(OVERVIEW_KEY))
}

pub fn queue_stats(broker: &Broker, vhost: &str, q: &Queue) -> Value {
    let now = queue_values(q);
    stats_json(&QUEUE_FIELDS, &now, broker.rates.get(&queue_key(vhost, q.name())))
}

/// A connection's counters (the API shows them on the connection's channel when it has just one: the
/// counters are kept per connection).
pub fn conn_stats(broker: &Broker, id: u64) -> Value {
    let Some(c) = broker.stats.conn(id) else {
        return Value::Object(Map::new());
    };
    let mut t = MessageTotals::default();
    c.messages.add_to(&mut t);
    stats_json(
        &MESSAGE_FIELDS,
        &message_values(&t),
        broker.rates.get(&conn_key(id)),
    )
}
