//! Helpers shared by the `failure_*` end-to-end tests (lapin against the real broker binary).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use mailroom_tests::Server;

pub async fn connect(server: &Server) -> Connection {
    Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

pub async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.expect("channel")
}

/// An integer argument (signed 32-bit, as most clients send them).
pub fn int(v: i64) -> AMQPValue {
    if v >= i32::MIN as i64 && v <= i32::MAX as i64 {
        AMQPValue::LongInt(v as i32)
    } else {
        AMQPValue::LongLongInt(v)
    }
}

pub fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

pub async fn declare(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), table(args))
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

pub async fn declare_durable(ch: &Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name.into(), opts, table(args))
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

/// A fanout/direct exchange `name`.
pub async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    ch.exchange_declare(name.into(), kind, Default::default(), FieldTable::default())
        .await
        .unwrap();
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Publishes through the default exchange and waits for the confirm if the channel is in confirm mode.
pub async fn publish(ch: &Channel, queue: &str, body: &str, props: BasicProperties) {
    publish_to(ch, "", queue, body, props).await;
}

pub async fn publish_to(ch: &Channel, exchange: &str, key: &str, body: &str, props: BasicProperties) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Publishes on a confirm-mode channel and returns whether the broker acked (true) or nacked (false).
pub async fn publish_confirmed(ch: &Channel, queue: &str, body: &str, props: BasicProperties) -> bool {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    match confirm {
        lapin::Confirmation::Ack(_) => true,
        lapin::Confirmation::Nack(_) => false,
        lapin::Confirmation::NotRequested => panic!("channel is not in confirm mode"),
    }
}

pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

pub fn expiring(ms: u64) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.to_string().into())
}

/// basic.get (auto-ack) once.
pub async fn get_now(ch: &Channel, queue: &str) -> Option<Delivery> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .map(|m| m.delivery)
}

/// Polls basic.get (auto-ack) until a message arrives or `within` passes.
pub async fn get_within(ch: &Channel, queue: &str, within: Duration) -> Option<Delivery> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(d) = get_now(ch, queue).await {
            return Some(d);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Drains a queue with basic.get (auto-ack); returns the bodies.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = get_now(ch, queue).await {
        out.push(body(&d));
    }
    out
}

pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

pub async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    consume_with(ch, queue, tag, FieldTable::default()).await
}

pub async fn consume_with(ch: &Channel, queue: &str, tag: &str, args: FieldTable) -> Consumer {
    ch.basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), args)
        .await
        .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
}

/// The next delivery within `within`; None on timeout. Panics if the consumer ended.
pub async fn next_within(c: &mut Consumer, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, c.next()).await {
        Ok(Some(d)) => Some(d.expect("delivery")),
        Ok(None) => panic!("consumer {} ended", c.tag()),
        Err(_) => None,
    }
}

pub async fn next(c: &mut Consumer) -> Delivery {
    next_within(c, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no delivery for consumer {} within 5 s", c.tag()))
}

pub async fn ack(d: &Delivery) {
    d.ack(BasicAckOptions::default()).await.unwrap();
}

pub async fn nack(d: &Delivery, requeue: bool) {
    d.nack(BasicNackOptions {
        requeue,
        multiple: false,
    })
    .await
    .unwrap();
}

pub async fn reject(d: &Delivery, requeue: bool) {
    d.reject(BasicRejectOptions { requeue }).await.unwrap();
}

/// Ready message count via a passive declare.
pub async fn count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("passive declare {queue}: {e}"))
    .message_count()
}

/// Waits until `queue` holds `n` ready messages (or panics after `within`).
pub async fn wait_count(ch: &Channel, queue: &str, n: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let c = count(ch, queue).await;
        if c == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue {queue} holds {c} messages, expected {n} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reply code and text of a lapin error that closed a channel or connection.
pub fn amqp_error(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => (err.get_id(), err.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other:?}"),
    }
}

/// Whether `queue` exists (passive declare on a fresh channel; 404 means no).
pub async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let ch = channel(conn).await;
    let r = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match r {
        Ok(_) => {
            let _ = ch.close(200, "bye".into()).await;
            true
        }
        Err(e) => {
            let (code, text) = amqp_error(&e);
            assert_eq!(code, 404, "passive declare of {queue}: {text}");
            false
        }
    }
}

// ---- headers ----

pub fn headers(d: &Delivery) -> FieldTable {
    d.properties.headers().clone().unwrap_or_default()
}

pub fn header(d: &Delivery, key: &str) -> Option<AMQPValue> {
    headers(d).inner().get(&ShortString::from(key)).cloned()
}

pub fn as_i64(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i64,
        AMQPValue::ShortShortUInt(x) => *x as i64,
        AMQPValue::ShortInt(x) => *x as i64,
        AMQPValue::ShortUInt(x) => *x as i64,
        AMQPValue::LongInt(x) => *x as i64,
        AMQPValue::LongUInt(x) => *x as i64,
        AMQPValue::LongLongInt(x) => *x,
        _ => return None,
    })
}

pub fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// `x-delivery-count` of a delivery: None when absent; panics if it is not an integer.
pub fn delivery_count(d: &Delivery) -> Option<i64> {
    header(d, "x-delivery-count").map(|v| as_i64(&v).unwrap_or_else(|| panic!("x-delivery-count is {v:?}")))
}

pub fn header_str(d: &Delivery, key: &str) -> Option<String> {
    header(d, key).map(|v| as_string(&v).unwrap_or_else(|| panic!("{key} is {v:?}, not a string")))
}

/// One `x-death` entry.
#[derive(Debug, Clone)]
pub struct Death {
    pub table: FieldTable,
}

impl Death {
    pub fn get(&self, k: &str) -> Option<&AMQPValue> {
        self.table.inner().get(&ShortString::from(k))
    }
    pub fn str(&self, k: &str) -> String {
        self.get(k)
            .and_then(as_string)
            .unwrap_or_else(|| panic!("x-death entry has no string {k}: {:?}", self.table))
    }
    pub fn queue(&self) -> String {
        self.str("queue")
    }
    pub fn reason(&self) -> String {
        self.str("reason")
    }
    pub fn exchange(&self) -> String {
        self.str("exchange")
    }
    /// `count`, which must be a long (64-bit, field type 'l').
    pub fn count(&self) -> i64 {
        match self.get("count") {
            Some(AMQPValue::LongLongInt(c)) => *c,
            other => panic!("x-death count should be a long, is {other:?}"),
        }
    }
    pub fn routing_keys(&self) -> Vec<String> {
        match self.get("routing-keys") {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .map(|v| as_string(v).expect("routing key string"))
                .collect(),
            other => panic!("routing-keys should be an array, is {other:?}"),
        }
    }
    /// `time`, which must be a timestamp (seconds).
    pub fn time(&self) -> u64 {
        match self.get("time") {
            Some(AMQPValue::Timestamp(t)) => *t,
            other => panic!("x-death time should be a timestamp, is {other:?}"),
        }
    }
}

/// The `x-death` entries, most recent first; empty if absent. Panics if it is not an array of tables.
pub fn x_death(d: &Delivery) -> Vec<Death> {
    match header(d, "x-death") {
        None => Vec::new(),
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => Death { table: t.clone() },
                other => panic!("x-death element is not a table: {other:?}"),
            })
            .collect(),
        Some(other) => panic!("x-death is not an array: {other:?}"),
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts the `x-death` time is "now" (within a few seconds).
pub fn assert_recent(t: u64) {
    let now = now_secs();
    assert!(
        t + 10 >= now && t <= now + 2,
        "x-death time {t} should be about now ({now})"
    );
}

/// Asserts a redelivery delay of `expected` ms was applied. The lower bound is the behaviour under
/// test (the broker never hands a returned message back before its delay: `actual` is measured from
/// before the return was sent, so it can only be longer). The upper bound only catches a delay that
/// was far too long or not computed from the settings at all; it is wide because a loaded 2-core CI
/// machine can be seconds late, and tests do not assert timings.
pub fn assert_about(what: &str, actual: Duration, expected_ms: u64) {
    let e = expected_ms as f64;
    let a = actual.as_secs_f64() * 1000.0;
    let lo = e * 0.9;
    let hi = e * 3.0 + 3000.0;
    assert!(
        a >= lo && a <= hi,
        "{what}: took {a:.0} ms, expected about {expected_ms} ms (allowed {lo:.0}..{hi:.0})"
    );
}
