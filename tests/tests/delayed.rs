//! Delayed delivery with the rabbitmq-delayed-message-exchange interface, over real TCP with lapin:
//! `x-delayed-message` exchanges with `x-delayed-type` direct/topic/fanout/headers, `x-delay` holding a
//! message until due (≤ 0, absent or not an integer: routed at once), release in due-time order whatever
//! the publish order, confirms once stored, held messages surviving kill -9 with their due times, and
//! unroutable-when-due messages dropped and logged. No test asserts timings: only order and presence.

mod routing_common;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::Server;
use routing_common::*;

fn delayed_kind() -> ExchangeKind {
    ExchangeKind::Custom("x-delayed-message".into())
}

async fn delayed_exchange(ch: &lapin::Channel, name: &str, inner: &str) {
    exchange_with(
        ch,
        name,
        delayed_kind(),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-delayed-type", s(inner))]),
    )
    .await;
}

fn delay(ms: i64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table(&[("x-delay", AMQPValue::LongLongInt(ms))]))
}

/// Checks due order without assuming when each message was published: every message was published within
/// `spread` of the others, so if `a`'s delay exceeds `b`'s by more than `spread`, `a` is due after `b` and
/// must come after it. `delays[i]` is the delay of the i-th message received.
fn assert_due_order(delays: &[i64], spread: Duration) {
    let spread = spread.as_millis() as i64;
    for (i, &a) in delays.iter().enumerate() {
        for &b in &delays[i + 1..] {
            assert!(
                a <= b + spread,
                "a message with delay {a} came before one with delay {b} (publishes spread over {spread} ms): {delays:?}"
            );
        }
    }
}

/// Consumes `n` messages from `queue` (bounded wait per message), returning the bodies in arrival order.
async fn consume(ch: &lapin::Channel, queue: &str, n: usize, per_message: Duration) -> Vec<String> {
    let mut c = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(per_message, c.next()).await {
            Ok(Some(Ok(d))) => out.push(String::from_utf8_lossy(&d.data).into_owned()),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn released_in_due_order_whatever_the_publish_order() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    delayed_exchange(&ch, "later", "direct").await;
    durable_queue(&ch, "dq").await;
    bind(&ch, "dq", "later", "k").await;
    // Routed at once: no header, x-delay 0, negative, or not an integer. Published before the delayed ones,
    // so they are first whatever the machine's speed (a delayed message published earlier could fall due
    // while a slow machine is still publishing these).
    publish(&ch, "later", "k", "now-plain", BasicProperties::default()).await;
    publish(&ch, "later", "k", "now-zero", delay(0)).await;
    publish(&ch, "later", "k", "now-negative", delay(-500)).await;
    let str_delay = BasicProperties::default().with_headers(table(&[("x-delay", s("1000"))]));
    publish(&ch, "later", "k", "now-string", str_delay).await;
    // 40 messages, delays 200..2150 ms in a scrambled order (a fixed permutation).
    let delays: Vec<i64> = (0..40).map(|i| 200 + ((i * 17) % 40) * 50).collect();
    let started = std::time::Instant::now();
    for d in &delays {
        // `publish` waits for each confirm: a delayed message is confirmed once stored, not when due.
        publish(&ch, "later", "k", &format!("d{d:05}"), delay(*d)).await;
    }
    let spread = started.elapsed();
    let got = consume(&ch, "dq", 44, Duration::from_secs(10)).await;
    assert_eq!(&got[..4], ["now-plain", "now-zero", "now-negative", "now-string"]);
    let mut want: Vec<String> = delays.iter().map(|d| format!("d{d:05}")).collect();
    want.sort();
    let mut sorted = got[4..].to_vec();
    sorted.sort();
    assert_eq!(sorted, want, "every delayed message, once");
    let got_delays: Vec<i64> = got[4..].iter().map(|b| b[1..].parse().unwrap()).collect();
    assert_due_order(&got_delays, spread);
}

#[tokio::test]
async fn every_delayed_type_routes_as_its_base_type_when_due() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    for inner in ["direct", "topic", "fanout", "headers"] {
        let x = format!("later-{inner}");
        delayed_exchange(&ch, &x, inner).await;
        let (hit, miss) = (format!("{inner}-hit"), format!("{inner}-miss"));
        queue(&ch, &hit).await;
        queue(&ch, &miss).await;
        match inner {
            "direct" => {
                bind(&ch, &hit, &x, "a").await;
                bind(&ch, &miss, &x, "b").await;
            }
            "topic" => {
                bind(&ch, &hit, &x, "a.*").await;
                bind(&ch, &miss, &x, "b.#").await;
            }
            "fanout" => {
                bind(&ch, &hit, &x, "").await;
            }
            _ => {
                bind_args(
                    &ch,
                    &hit,
                    &x,
                    "",
                    table(&[("x-match", s("all")), ("kind", s("hit"))]),
                )
                .await;
                bind_args(
                    &ch,
                    &miss,
                    &x,
                    "",
                    table(&[("x-match", s("all")), ("kind", s("miss"))]),
                )
                .await;
            }
        }
        let key = if inner == "topic" { "a.x" } else { "a" };
        let props = BasicProperties::default()
            .with_headers(table(&[("x-delay", AMQPValue::LongInt(300)), ("kind", s("hit"))]));
        publish(&ch, &x, key, inner, props).await;
        assert_eq!(
            consume(&ch, &hit, 1, Duration::from_secs(10)).await,
            vec![inner.to_string()]
        );
        assert_eq!(count(&ch, &miss).await, 0, "{inner}");
    }
}

#[tokio::test]
async fn declare_needs_an_existing_delayed_type() {
    let server = Server::start();
    let conn = connect(&server).await;
    for args in [
        FieldTable::default(),
        table(&[("x-delayed-type", s("nope"))]),
        table(&[("x-delayed-type", s("x-delayed-message"))]),
    ] {
        let ch = channel(&conn).await;
        let r = ch
            .exchange_declare(
                "d".into(),
                delayed_kind(),
                ExchangeDeclareOptions::default(),
                args,
            )
            .await;
        // rabbit_exchange_type_delayed_message:validate/1
        expect_error(
            r,
            406,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
        );
    }
}

#[tokio::test]
async fn held_messages_survive_kill_9_and_come_out_in_due_order() {
    let mut server = Server::start();
    const N: i64 = 300;
    let spread;
    {
        let conn = connect(&server).await;
        let ch = confirm_channel(&conn).await;
        delayed_exchange(&ch, "later", "direct").await;
        durable_queue(&ch, "dq").await;
        bind(&ch, "dq", "later", "k").await;
        // Delays 1.5..4.5 s in a scrambled order; all confirmed before the kill.
        let mut pending = Vec::new();
        let started = std::time::Instant::now();
        for i in 0..N {
            let d = 1500 + (i * 7919) % 3000;
            pending.push(
                ch.basic_publish(
                    "later".into(),
                    "k".into(),
                    BasicPublishOptions::default(),
                    format!("d{d:05}-{i:03}").as_bytes(),
                    delay(d),
                )
                .await
                .unwrap(),
            );
        }
        for p in pending {
            assert!(p.await.unwrap().is_ack());
        }
        // Every message was held between `started` and its confirm.
        spread = started.elapsed();
    }
    server.kill();
    server.restart();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    let got = consume(&ch, "dq", N as usize, Duration::from_secs(15)).await;
    let mut want: Vec<String> = (0..N)
        .map(|i| format!("d{:05}-{i:03}", 1500 + (i * 7919) % 3000))
        .collect();
    want.sort();
    assert_eq!(got.len(), N as usize, "none lost");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, want);
    // Due order across the kill: the bodies start with their delay.
    let got_delays: Vec<i64> = got.iter().map(|b| b[1..6].parse().unwrap()).collect();
    assert_due_order(&got_delays, spread);
}

#[tokio::test]
async fn unroutable_when_due_is_dropped_and_logged() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    delayed_exchange(&ch, "nowhere", "direct").await;
    // Held: mandatory does not apply (no basic.return), the confirm is an ack.
    assert_eq!(
        publish_mandatory(&ch, "nowhere", "k", "lost", delay(200)).await,
        None
    );
    assert!(
        server
            .wait_for_log(
                "delayed messages unroutable when due: dropped",
                Duration::from_secs(10)
            )
            .is_some(),
        "the drop is logged"
    );
}
