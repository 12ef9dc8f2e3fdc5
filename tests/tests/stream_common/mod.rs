//! Helpers shared by the `stream_*` end-to-end tests (lapin against the real broker binary).
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use mailroom_tests::Server;

pub async fn connect(server: &Server) -> Connection {
    Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .expect("connect")
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

/// Declares stream `name` (durable) with `extra` arguments.
pub async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    let mut args = table(extra);
    args.insert("x-queue-type".into(), s("stream"));
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name.into(), opts, args)
        .await
        .unwrap_or_else(|e| panic!("declare stream {name}: {e}"));
}

/// Publishes `bodies` to `stream` on a confirm channel and waits for every confirm.
pub async fn publish_confirmed(conn: &Connection, stream: &str, bodies: impl IntoIterator<Item = String>) {
    publish_with(conn, stream, bodies.into_iter().map(|b| (b, None))).await
}

/// Publishes (body, filter value) pairs, confirmed.
pub async fn publish_with(
    conn: &Connection,
    stream: &str,
    items: impl IntoIterator<Item = (String, Option<&'static str>)>,
) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut pending = Vec::new();
    for (body, filter) in items {
        let mut props = BasicProperties::default();
        if let Some(f) = filter {
            props = props.with_headers(table(&[("x-stream-filter-value", s(f))]));
        }
        let c = ch
            .basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap();
        pending.push(c);
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack(), "publish confirmed");
    }
    ch.close(200, "bye".into()).await.ok();
}

/// A channel with basic.qos prefetch `prefetch` (streams require one) consuming `stream` with `tag` and
/// `args`.
pub async fn consume(
    conn: &Connection,
    stream: &str,
    tag: &str,
    prefetch: u16,
    args: FieldTable,
) -> (Channel, Consumer) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default()).await.unwrap();
    let c = ch
        .basic_consume(stream.into(), tag.into(), BasicConsumeOptions::default(), args)
        .await
        .unwrap_or_else(|e| panic!("consume {stream}: {e}"));
    (ch, c)
}

/// The `x-stream-offset` header of a delivery.
pub fn offset_of(d: &lapin::message::Delivery) -> u64 {
    let h = d.properties.headers().as_ref().expect("headers");
    match h.inner().get(&ShortString::from("x-stream-offset")) {
        Some(AMQPValue::LongLongInt(n)) => *n as u64,
        other => panic!("x-stream-offset header: {other:?}"),
    }
}

/// Takes `n` deliveries (acking each when `ack`), as (offset, body).
pub async fn take(c: &mut Consumer, n: usize, ack: bool) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), c.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} of {n} deliveries", out.len()))
            .expect("consumer open")
            .expect("delivery");
        out.push((offset_of(&d), String::from_utf8_lossy(&d.data).to_string()));
        if ack {
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    out
}

/// Asserts that nothing more arrives within a short while (the stream holds nothing else for this
/// consumer).
pub async fn nothing_more(c: &mut Consumer) {
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(500), c.next()).await {
        panic!(
            "unexpected delivery at offset {}: {}",
            offset_of(&d),
            String::from_utf8_lossy(&d.data)
        );
    }
}

pub fn bodies(range: std::ops::Range<u64>, prefix: &str) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

/// Bytes of the files under `dir` (recursively).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += dir_bytes(&p);
            } else if let Ok(m) = p.metadata() {
                n += m.len();
            }
        }
    }
    n
}
