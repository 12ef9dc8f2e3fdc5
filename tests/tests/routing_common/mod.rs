//! Helpers shared by the `routing_*` end-to-end tests (lapin against the real broker binary).
#![allow(dead_code)]

use std::collections::BTreeMap;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use mailroom_tests::Server;

pub async fn connect(server: &Server) -> Connection {
    Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

pub async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.expect("channel")
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

pub fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

pub fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

pub fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

pub async fn queue(ch: &Channel, name: &str) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

pub async fn durable_queue(ch: &Channel, name: &str) {
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name.into(), opts, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

/// A transient, non-auto-delete, non-internal exchange.
pub async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    exchange_with(
        ch,
        name,
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
}

pub async fn exchange_with(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    opts: ExchangeDeclareOptions,
    args: FieldTable,
) {
    ch.exchange_declare(name.into(), kind, opts, args)
        .await
        .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_args(ch, queue, exchange, key, FieldTable::default()).await
}

pub async fn bind_args(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with '{key}': {e}"));
}

pub async fn unbind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    ch.queue_unbind(queue.into(), exchange.into(), key.into(), FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("unbind {queue} from {exchange} with '{key}': {e}"));
}

/// exchange.bind: messages published to `source` with a matching key go on to `destination`.
pub async fn xbind(ch: &Channel, destination: &str, source: &str, key: &str) {
    ch.exchange_bind(
        destination.into(),
        source.into(),
        key.into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.bind {source} -> {destination} '{key}': {e}"));
}

pub async fn xunbind(ch: &Channel, destination: &str, source: &str, key: &str) {
    ch.exchange_unbind(
        destination.into(),
        source.into(),
        key.into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("exchange.unbind {source} -> {destination} '{key}': {e}"));
}

/// Publishes on a confirm-mode channel and waits for the confirm (panics on a nack).
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str, props: BasicProperties) {
    let c = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .unwrap_or_else(|e| panic!("publish {body} to '{exchange}' '{key}': {e}"))
        .await
        .unwrap_or_else(|e| panic!("confirm of {body} to '{exchange}' '{key}': {e}"));
    assert!(c.is_ack(), "publish {body} to '{exchange}' '{key}' was nacked");
}

/// Publishes with mandatory=true on a confirm-mode channel; returns the (code, text) of basic.return if
/// the message came back, None if it was acked without a return.
pub async fn publish_mandatory(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) -> Option<(u16, String, Vec<u8>)> {
    let c = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body.as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack(), "mandatory publish {body} was nacked");
    c.take_message()
        .map(|m| (m.reply_code, m.reply_text.to_string(), m.delivery.data.clone()))
}

/// Drains a queue with basic.get (auto-ack); returns the bodies in order.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"))
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

/// Ready count via passive declare.
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

/// The reply code and text of a lapin error that closed a channel or connection.
pub fn amqp_error(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => (err.get_id(), err.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other:?}"),
    }
}

/// Expects `r` to be an AMQP error with `code` and `text`.
pub fn expect_error<T: std::fmt::Debug>(r: Result<T, lapin::Error>, code: u16, text: &str) {
    match r {
        Ok(v) => panic!("expected {code} {text}, got Ok({v:?})"),
        Err(e) => assert_eq!(amqp_error(&e), (code, text.to_string()), "{e:?}"),
    }
}

/// Whether exchange `name` exists: passive declare on a fresh channel (404 means no).
pub async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let ch = channel(conn).await;
    let r = ch
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match r {
        Ok(()) => {
            let _ = ch.close(200, "bye".into()).await;
            true
        }
        Err(e) => {
            let (code, text) = amqp_error(&e);
            assert_eq!(code, 404, "passive declare of exchange {name}: {text}");
            assert_eq!(
                text,
                format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
                "passive declare of exchange {name}"
            );
            false
        }
    }
}

pub async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = channel(conn).await;
    let r = ch
        .queue_declare(
            name.into(),
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
            assert_eq!(amqp_error(&e).0, 404, "passive declare of queue {name}");
            false
        }
    }
}

/// One message of a routing matrix: its routing key, optional headers, and the queues it must reach.
pub struct Case {
    pub key: String,
    pub headers: Option<FieldTable>,
    pub expect: Vec<&'static str>,
}

pub fn case(key: &str, expect: &[&'static str]) -> Case {
    Case {
        key: key.to_string(),
        headers: None,
        expect: expect.to_vec(),
    }
}

pub fn hcase(headers: Option<FieldTable>, expect: &[&'static str]) -> Case {
    Case {
        key: String::new(),
        headers,
        expect: expect.to_vec(),
    }
}

/// Publishes every case to `exchange` (body `m<i>`, confirmed), then drains `queues` and checks that each
/// message reached exactly its expected queues, once each. Returns a list of mismatches (empty when all is
/// well) so a test can report every wrong route at once.
pub async fn run_matrix(ch: &Channel, exchange: &str, queues: &[&str], cases: &[Case]) -> Vec<String> {
    for (i, c) in cases.iter().enumerate() {
        let mut props = BasicProperties::default();
        if let Some(h) = &c.headers {
            props = props.with_headers(h.clone());
        }
        publish(ch, exchange, &c.key, &format!("m{i}"), props).await;
    }
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for q in queues {
        for body in drain(ch, q).await {
            got.entry(body).or_default().push(q.to_string());
        }
    }
    let mut errors = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut g = got.remove(&format!("m{i}")).unwrap_or_default();
        g.sort();
        let mut e: Vec<String> = c.expect.iter().map(|s| s.to_string()).collect();
        e.sort();
        if g != e {
            errors.push(format!(
                "exchange '{exchange}' key '{}' headers {:?}: reached {g:?}, expected {e:?}",
                c.key,
                c.headers.as_ref().map(|h| h.inner().clone())
            ));
        }
    }
    for (body, qs) in got {
        errors.push(format!("unexpected message {body} in {qs:?}"));
    }
    errors
}

pub fn assert_no_errors(errors: Vec<String>) {
    assert!(errors.is_empty(), "wrong routes:\n{}", errors.join("\n"));
}
