//! Queue and consumer features around failure handling, end to end: `x-max-priority` (higher priority first),
//! `x-single-active-consumer` (one consumer gets everything, failover on cancel / channel close), consumer
//! priorities (`x-priority` on basic.consume), and the consumer cancel notification sent when a queue is
//! deleted (lapin's consumer stream ends; a raw client with consumer_cancel_notify gets basic.cancel).

mod failure_common;

use std::time::Duration;

use failure_common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use mailroom_tests::raw::protocol::{self, FieldValue, Frame, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn prio(p: u8) -> BasicProperties {
    BasicProperties::default().with_priority(p)
}

// ---- x-max-priority ----

#[tokio::test]
async fn higher_priority_messages_are_delivered_first() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "pq", &[("x-max-priority", int(9))]).await;
    for p in 0..=9u8 {
        publish(&ch, "pq", &format!("p{p}"), prio(p)).await;
    }
    let c = channel(&conn).await;
    let mut cons = consume(&c, "pq", "c").await;
    let mut got = Vec::new();
    for _ in 0..10 {
        let d = next(&mut cons).await;
        got.push(body(&d));
        ack(&d).await;
    }
    let expected: Vec<String> = (0..=9).rev().map(|p| format!("p{p}")).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn priority_order_with_basic_get_fifo_within_a_priority_and_no_priority_is_zero() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "pq", &[("x-max-priority", int(5))]).await;
    publish(&ch, "pq", "none", BasicProperties::default()).await;
    publish(&ch, "pq", "low-a", prio(1)).await;
    publish(&ch, "pq", "high-a", prio(4)).await;
    publish(&ch, "pq", "low-b", prio(1)).await;
    publish(&ch, "pq", "high-b", prio(4)).await;
    // Above the maximum counts as the maximum: FIFO with other max-priority messages.
    publish(&ch, "pq", "max-a", prio(5)).await;
    publish(&ch, "pq", "over", prio(9)).await;
    publish(&ch, "pq", "max-b", prio(5)).await;
    assert_eq!(
        drain(&ch, "pq").await,
        ["max-a", "over", "max-b", "high-a", "high-b", "low-a", "low-b", "none"]
    );
}

#[tokio::test]
async fn a_queue_without_max_priority_ignores_priorities() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "fifo", &[]).await;
    publish(&ch, "fifo", "first", prio(0)).await;
    publish(&ch, "fifo", "second", prio(9)).await;
    assert_eq!(drain(&ch, "fifo").await, ["first", "second"]);
}

#[tokio::test]
async fn a_requeued_message_keeps_its_priority() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "pq", &[("x-max-priority", int(9))]).await;
    publish(&ch, "pq", "high", prio(9)).await;
    let m = ch
        .basic_get("pq".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    publish(&ch, "pq", "low", prio(1)).await;
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(drain(&ch, "pq").await, ["high", "low"]);
}

// ---- single active consumer ----

#[tokio::test]
async fn single_active_consumer_gets_everything_and_fails_over_on_cancel() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "sac",
        &[("x-single-active-consumer", lapin::types::AMQPValue::Boolean(true))],
    )
    .await;
    let c1ch = channel(&conn).await;
    let c2ch = channel(&conn).await;
    let mut c1 = consume(&c1ch, "sac", "first").await;
    let mut c2 = consume(&c2ch, "sac", "second").await;
    for i in 0..10 {
        publish(&ch, "sac", &format!("m{i}"), BasicProperties::default()).await;
    }
    for i in 0..10 {
        let d = next(&mut c1).await;
        assert_eq!(body(&d), format!("m{i}"));
        ack(&d).await;
    }
    assert!(
        next_within(&mut c2, Duration::from_millis(300)).await.is_none(),
        "the second consumer is idle"
    );
    c1ch.basic_cancel("first".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    for i in 10..15 {
        publish(&ch, "sac", &format!("m{i}"), BasicProperties::default()).await;
    }
    for i in 10..15 {
        let d = next(&mut c2).await;
        assert_eq!(body(&d), format!("m{i}"), "the second consumer took over");
        ack(&d).await;
    }
}

#[tokio::test]
async fn single_active_consumer_fails_over_on_channel_close_with_unacked_messages_in_order() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "sac",
        &[("x-single-active-consumer", lapin::types::AMQPValue::Boolean(true))],
    )
    .await;
    let conn1 = connect(&server).await;
    let c1ch = channel(&conn1).await;
    let c2ch = channel(&conn).await;
    let mut c1 = consume(&c1ch, "sac", "first").await;
    let mut c2 = consume(&c2ch, "sac", "second").await;
    for i in 0..5 {
        publish(&ch, "sac", &format!("m{i}"), BasicProperties::default()).await;
    }
    for i in 0..5 {
        assert_eq!(body(&next(&mut c1).await), format!("m{i}"));
    }
    // The active consumer's connection dies with everything unacked.
    conn1.close(200, "bye".into()).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        let d = next(&mut c2).await;
        assert!(d.redelivered);
        got.push(body(&d));
        ack(&d).await;
    }
    assert_eq!(
        got,
        ["m0", "m1", "m2", "m3", "m4"],
        "redelivered to the new active consumer in order"
    );
}

// ---- consumer priorities ----

fn x_priority(p: i32) -> FieldTable {
    table(&[("x-priority", int(p as i64))])
}

#[tokio::test]
async fn the_higher_priority_consumer_gets_the_messages_while_it_has_credit() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", &[]).await;
    let low_ch = channel(&conn).await;
    let high_ch = channel(&conn).await;
    // The low-priority consumer registers first.
    let mut low = consume_with(&low_ch, "q", "low", x_priority(1)).await;
    let mut high = consume_with(&high_ch, "q", "high", x_priority(10)).await;
    for i in 0..10 {
        publish(&ch, "q", &format!("m{i}"), BasicProperties::default()).await;
    }
    for i in 0..10 {
        let d = next(&mut high).await;
        assert_eq!(body(&d), format!("m{i}"));
        ack(&d).await;
    }
    assert!(next_within(&mut low, Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn lower_priority_consumers_get_messages_when_the_higher_one_is_out_of_credit() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", &[]).await;
    let low_ch = channel(&conn).await;
    let high_ch = channel(&conn).await;
    high_ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut high = consume_with(&high_ch, "q", "high", x_priority(5)).await;
    let mut low = consume_with(&low_ch, "q", "low", x_priority(-1)).await;
    for i in 0..4 {
        publish(&ch, "q", &format!("m{i}"), BasicProperties::default()).await;
    }
    let h = next(&mut high).await;
    assert_eq!(body(&h), "m0");
    let mut low_got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut low).await;
        low_got.push(body(&d));
        ack(&d).await;
    }
    assert_eq!(low_got, ["m1", "m2", "m3"]);
    ack(&h).await;
}

// ---- cancel notification ----

#[tokio::test]
async fn deleting_a_queue_cancels_its_lapin_consumers() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "doomed", &[]).await;
    let cch = channel(&conn).await;
    let mut cons = consume(&cch, "doomed", "c").await;
    publish(&ch, "doomed", "last", BasicProperties::default()).await;
    let d = next(&mut cons).await;
    ack(&d).await;
    ch.queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(3), cons.next()).await {
        Ok(None) => {}
        Ok(Some(other)) => panic!("expected the consumer to end, got {other:?}"),
        Err(_) => panic!("the consumer was not cancelled within 3 s of the queue's deletion"),
    }
    // The consumer's channel is still open.
    assert!(cch.status().connected());
    declare(&cch, "other", &[]).await;
}

fn raw_with_capabilities(addr: std::net::SocketAddr, cancel_notify: bool) -> RawClient {
    let (mut c, _) = RawClient::start(addr);
    let mut caps = protocol::FieldTable::new();
    caps.insert("consumer_cancel_notify", FieldValue::Bool(cancel_notify));
    caps.insert("publisher_confirms", FieldValue::Bool(true));
    let mut props = protocol::FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    props.insert(
        "product",
        FieldValue::LongStr(protocol::LongStr::from("failure-tests")),
    );
    c.send_method(
        0,
        Method::from(protocol::ConnectionStartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: protocol::LongStr::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        }),
    );
    let Method::ConnectionTune(t) = c.expect_method() else {
        panic!("expected tune")
    };
    c.send_method(
        0,
        Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: t.channel_max,
            frame_max: 131_072,
            heartbeat: 0,
        }),
    );
    c.frame_max = 131_072;
    c.send_method(
        0,
        Method::ConnectionOpen(protocol::ConnectionOpen {
            virtual_host: "/".into(),
        }),
    );
    assert!(matches!(c.expect_method(), Method::ConnectionOpenOk(_)));
    c.open_channel(1);
    c
}

fn delete_queue(addr: std::net::SocketAddr, name: &str) {
    let mut other = RawClient::open_ch1(addr);
    let m = other.call(
        1,
        Method::QueueDelete(protocol::QueueDelete {
            queue: name.into(),
            if_unused: false,
            if_empty: false,
            no_wait: false,
        }),
    );
    assert!(matches!(m, Method::QueueDeleteOk(_)), "{m:?}");
}

#[test]
fn raw_client_with_consumer_cancel_notify_gets_basic_cancel_on_queue_delete() {
    let server = Server::start();
    let mut c = raw_with_capabilities(server.addr, true);
    c.declare_queue(1, "doomed");
    c.consume(1, "doomed", "watcher", false, false);
    delete_queue(server.addr, "doomed");
    match c.expect_frame() {
        Frame::Method(1, Method::BasicCancel(cancel)) => {
            assert_eq!(cancel.consumer_tag.as_str(), "watcher");
            assert!(cancel.no_wait, "the server's basic.cancel is sent with no-wait");
        }
        f => panic!("expected basic.cancel, got {f:?}"),
    }
    // The channel is still usable.
    c.round_trip(1);
}

#[test]
fn raw_client_without_consumer_cancel_notify_gets_no_basic_cancel() {
    let server = Server::start();
    let mut c = raw_with_capabilities(server.addr, false);
    c.declare_queue(1, "doomed");
    c.consume(1, "doomed", "watcher", false, false);
    delete_queue(server.addr, "doomed");
    assert!(
        c.is_quiet_for(Duration::from_millis(400)),
        "no basic.cancel without the capability"
    );
    c.round_trip(1);
}
