//! TTLs end to end: `x-message-ttl` per queue and the `expiration` property per message (the smaller wins),
//! with and without consumers; expired messages are never delivered and are dead-lettered as `expired`;
//! `x-expires` removes a queue that has been unused for that long.

mod failure_common;

use std::time::{Duration, Instant};

use failure_common::*;
use lapin::options::*;
use lapin::BasicProperties;
use mailroom_tests::Server;

const WAIT: Duration = Duration::from_secs(3);

fn dlx_to(q: &str) -> Vec<(&'static str, lapin::types::AMQPValue)> {
    vec![
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s(q)),
    ]
}

#[tokio::test]
async fn queue_ttl_without_consumers_expires_everything() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", &[("x-message-ttl", int(100))]).await;
    for i in 0..10 {
        publish(&ch, "q", &format!("m{i}"), BasicProperties::default()).await;
    }
    assert!(count(&ch, "q").await > 0, "not expired at once");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(count(&ch, "q").await, 0);
    assert!(get_now(&ch, "q").await.is_none());
    // New messages still arrive and can be consumed before they expire.
    publish(&ch, "q", "fresh", BasicProperties::default()).await;
    assert_eq!(
        get_now(&ch, "q").await.map(|d| body(&d)).as_deref(),
        Some("fresh")
    );
}

#[tokio::test]
async fn per_message_expiration_only_expires_that_message() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", &[]).await;
    publish(&ch, "q", "short", expiring(100)).await;
    publish(&ch, "q", "forever", BasicProperties::default()).await;
    publish(&ch, "q", "long", expiring(60_000)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(drain(&ch, "q").await, ["forever", "long"]);
}

#[tokio::test]
async fn expired_message_behind_a_live_one_is_never_delivered() {
    // The expired message is not at the head: a long-lived one is in front of it.
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(&ch, "q", &dlx_to("dlq")).await;
    publish(&ch, "q", "head", BasicProperties::default()).await;
    publish(&ch, "q", "short", expiring(100)).await;
    publish(&ch, "q", "tail", BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(drain(&ch, "q").await, ["head", "tail"]);
    let d = get_within(&ch, "dlq", WAIT).await.expect("dead-lettered");
    assert_eq!(body(&d), "short");
    assert_eq!(x_death(&d)[0].reason(), "expired");
}

/// Publishes one message and returns how long it took to show up in the DLQ.
async fn time_to_dlq(queue_ttl: Option<i64>, expiration: Option<u64>) -> Duration {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    let mut args = dlx_to("dlq");
    if let Some(t) = queue_ttl {
        args.push(("x-message-ttl", int(t)));
    }
    declare(&ch, "q", &args).await;
    let props = match expiration {
        Some(e) => expiring(e),
        None => BasicProperties::default(),
    };
    let t = Instant::now();
    publish(&ch, "q", "m", props).await;
    let d = get_within(&ch, "dlq", Duration::from_secs(8))
        .await
        .expect("expired into the DLQ");
    let took = t.elapsed();
    assert_eq!(x_death(&d)[0].reason(), "expired");
    took
}

#[tokio::test]
async fn the_smaller_of_queue_ttl_and_expiration_wins() {
    assert_about(
        "queue TTL 150, expiration 5000",
        time_to_dlq(Some(150), Some(5000)).await,
        150,
    );
    assert_about(
        "queue TTL 5000, expiration 150",
        time_to_dlq(Some(5000), Some(150)).await,
        150,
    );
    assert_about("queue TTL 300 alone", time_to_dlq(Some(300), None).await, 300);
    assert_about("expiration 300 alone", time_to_dlq(None, Some(300)).await, 300);
}

#[tokio::test]
async fn expiration_zero_without_a_consumer_expires_at_once() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(&ch, "q", &dlx_to("dlq")).await;
    publish(&ch, "q", "now-or-never", expiring(0)).await;
    let d = get_within(&ch, "dlq", WAIT).await.expect("expired");
    assert_eq!(body(&d), "now-or-never");
    assert!(get_now(&ch, "q").await.is_none());
}

#[tokio::test]
async fn with_a_busy_consumer_waiting_messages_expire_and_are_never_delivered() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    let mut args = dlx_to("dlq");
    args.push(("x-message-ttl", int(200)));
    declare(&ch, "q", &args).await;
    let c = channel(&conn).await;
    c.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&c, "q", "c").await;
    for i in 0..3 {
        publish(&ch, "q", &format!("m{i}"), BasicProperties::default()).await;
    }
    let d0 = next(&mut cons).await;
    assert_eq!(body(&d0), "m0");
    // m1 and m2 wait behind the prefetch window and expire.
    wait_count(&ch, "dlq", 2, WAIT).await;
    ack(&d0).await;
    assert!(
        next_within(&mut cons, Duration::from_millis(300)).await.is_none(),
        "expired messages must not be delivered"
    );
    assert_eq!(drain(&ch, "dlq").await, ["m1", "m2"]);
    // A fresh message is delivered immediately to the (now idle) consumer.
    publish(&ch, "q", "fresh", BasicProperties::default()).await;
    let d = next(&mut cons).await;
    assert_eq!(body(&d), "fresh");
    ack(&d).await;
}

#[tokio::test]
async fn an_unacked_message_past_its_ttl_is_expired_when_returned() {
    // RabbitMQ: a message that is returned keeps its original expiry; if that has passed, it expires instead of
    // being redelivered.
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    let mut args = dlx_to("dlq");
    args.push(("x-message-ttl", int(150)));
    declare(&ch, "q", &args).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    publish(&ch, "q", "slow", BasicProperties::default()).await;
    let d = next(&mut cons).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        count(&ch, "dlq").await,
        0,
        "an unacked message does not expire while the consumer holds it"
    );
    nack(&d, true).await;
    let got = next_within(&mut cons, Duration::from_millis(400)).await;
    assert!(
        got.is_none(),
        "expired message redelivered: {:?}",
        got.map(|d| body(&d))
    );
    let d = get_within(&ch, "dlq", WAIT)
        .await
        .expect("dead-lettered as expired");
    assert_eq!(x_death(&d)[0].reason(), "expired");
}

#[tokio::test]
async fn invalid_expiration_property_is_a_precondition_failure() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", &[]).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let r = ch
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_expiration("soon".into()),
        )
        .await;
    let err = match r {
        Ok(confirm) => confirm
            .await
            .expect_err("publish with expiration 'soon' should fail"),
        Err(e) => e,
    };
    let (code, text) = amqp_error(&err);
    assert_eq!(code, 406, "{text}");
    assert!(text.contains("expiration"), "{text}");
}

// ---- x-expires ----

#[tokio::test]
async fn unused_queue_with_x_expires_disappears() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "temp", &[("x-expires", int(200))]).await;
    publish(
        &ch,
        "temp",
        "messages do not count as use",
        BasicProperties::default(),
    )
    .await;
    assert!(queue_exists(&conn, "temp").await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !queue_exists(&conn, "temp").await,
        "the queue should have expired"
    );
    // It can be declared again.
    declare(&ch, "temp", &[("x-expires", int(200))]).await;
    assert_eq!(count(&ch, "temp").await, 0, "a fresh queue");
}

#[tokio::test]
async fn a_consumer_keeps_an_x_expires_queue_alive_until_it_leaves() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "temp", &[("x-expires", int(200))]).await;
    let c = channel(&conn).await;
    let _cons = consume(&c, "temp", "keeper").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(queue_exists(&conn, "temp").await, "in use by a consumer");
    c.basic_cancel("keeper".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    let t = Instant::now();
    loop {
        if !queue_exists(&conn, "temp").await {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "not expired 2 s after the consumer left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "expired too early: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn basic_get_and_redeclare_count_as_use_for_x_expires() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    let args = [("x-expires", int(300))];
    declare(&ch, "temp", &args).await;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(800) {
        let _ = get_now(&ch, "temp").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(queue_exists(&conn, "temp").await, "basic.get is use");
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(800) {
        declare(&ch, "temp", &args).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(queue_exists(&conn, "temp").await, "redeclare is use");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!queue_exists(&conn, "temp").await, "expired once left alone");
}
