//! Edge cases around failure handling: nack multiple, max-length 0, dead-lettering keeps priority and
//! persistence, purge and delete with messages waiting for a retry, returns by channel close on a retry queue,
//! TTL in priority queues, delivery limit with single active consumer, TTL 0 with and without a consumer.

mod failure_common;

use std::time::{Duration, Instant};

use failure_common::*;
use lapin::options::*;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use mailroom_tests::Server;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn nack_multiple_with_requeue_counts_each_message() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", &[]).await;
    for i in 0..3 {
        publish(&ch, "q", &format!("m{i}"), BasicProperties::default()).await;
    }
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let mut last = None;
    for _ in 0..3 {
        last = Some(next(&mut cons).await);
    }
    last.unwrap()
        .nack(BasicNackOptions {
            requeue: true,
            multiple: true,
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut cons).await;
        got.push((body(&d), delivery_count(&d)));
        ack(&d).await;
    }
    assert_eq!(
        got,
        [
            ("m0".into(), Some(1)),
            ("m1".into(), Some(1)),
            ("m2".into(), Some(1))
        ],
        "all three returned once, in order"
    );
}

#[tokio::test]
async fn nack_multiple_without_requeue_dead_letters_all() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    for i in 0..3 {
        publish(&ch, "q", &format!("m{i}"), BasicProperties::default()).await;
    }
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let mut last = None;
    for _ in 0..3 {
        last = Some(next(&mut cons).await);
    }
    last.unwrap()
        .nack(BasicNackOptions {
            requeue: false,
            multiple: true,
        })
        .await
        .unwrap();
    wait_count(&ch, "dlq", 3, WAIT).await;
    assert_eq!(drain(&ch, "dlq").await, ["m0", "m1", "m2"]);
}

#[tokio::test]
async fn max_length_zero_dead_letters_every_message() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-max-length", int(0)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    for i in 0..3 {
        publish(&ch, "q", &format!("m{i}"), BasicProperties::default()).await;
    }
    wait_count(&ch, "dlq", 3, WAIT).await;
    assert_eq!(count(&ch, "q").await, 0);
    let d = get_now(&ch, "dlq").await.unwrap();
    assert_eq!(x_death(&d)[0].reason(), "maxlen");
}

#[tokio::test]
async fn dead_lettering_keeps_priority_for_a_priority_dlq() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[("x-max-priority", int(9))]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    for (b, p) in [("low", 1u8), ("high", 8), ("mid", 4)] {
        publish(&ch, "q", b, BasicProperties::default().with_priority(p)).await;
    }
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    for _ in 0..3 {
        let d = next(&mut cons).await;
        reject(&d, false).await;
    }
    wait_count(&ch, "dlq", 3, WAIT).await;
    assert_eq!(drain(&ch, "dlq").await, ["high", "mid", "low"]);
}

#[tokio::test]
async fn ttl_in_a_priority_queue_expires_low_priority_messages_behind_high_ones() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "pq",
        &[
            ("x-max-priority", int(5)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    publish(
        &ch,
        "pq",
        "keep-high",
        BasicProperties::default().with_priority(5),
    )
    .await;
    publish(&ch, "pq", "expire-low", expiring(100).with_priority(1)).await;
    publish(&ch, "pq", "keep-low", BasicProperties::default().with_priority(1)).await;
    let d = get_within(&ch, "dlq", WAIT)
        .await
        .expect("the low-priority message expired");
    assert_eq!(body(&d), "expire-low");
    assert_eq!(drain(&ch, "pq").await, ["keep-high", "keep-low"]);
}

#[tokio::test]
async fn purge_removes_a_message_waiting_for_retry_and_counts_it_once() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "q",
        &[
            ("x-delayed-retry-min", int(1000)),
            ("x-delayed-retry-multiplier", int(1)),
        ],
    )
    .await;
    publish(&ch, "q", "waiting", BasicProperties::default()).await;
    let m = ch
        .basic_get("q".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .unwrap();
    assert!(get_now(&ch, "q").await.is_none(), "waiting");
    assert_eq!(
        count(&ch, "q").await,
        1,
        "declare-ok counts the waiting message once"
    );
    let purged = ch
        .queue_purge("q".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(count(&ch, "q").await, 0);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        get_now(&ch, "q").await.is_none(),
        "a purged message does not come back after its delay"
    );
    assert_eq!(purged, 1, "purge-ok message-count: one message was purged");
}

#[tokio::test]
async fn deleting_a_queue_with_a_message_waiting_for_retry_is_clean() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", &[("x-delayed-retry-min", int(200))]).await;
    publish(&ch, "q", "waiting", BasicProperties::default()).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let d = next(&mut cons).await;
    nack(&d, true).await;
    ch.queue_delete("q".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Recreated queue is empty; the timer did not resurrect anything.
    declare(&ch, "q", &[("x-delayed-retry-min", int(200))]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&ch, "q").await, 0);
    assert!(get_now(&ch, "q").await.is_none());
}

#[tokio::test]
async fn channel_close_returns_on_a_retry_queue_are_counted() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "q",
        &[
            ("x-delayed-retry-min", int(300)),
            ("x-delayed-retry-multiplier", int(1)),
        ],
    )
    .await;
    publish(&ch, "q", "m", BasicProperties::default()).await;
    let c1 = channel(&conn).await;
    let mut cons = consume(&c1, "q", "c1").await;
    let _d = next(&mut cons).await;
    c1.close(200, "bye".into()).await.unwrap();
    let t = Instant::now();
    let c2 = channel(&conn).await;
    let mut cons = consume(&c2, "q", "c2").await;
    let d = next(&mut cons).await;
    assert_eq!(delivery_count(&d), Some(1));
    // Whether a return by channel close waits for the retry delay is not specified; print it for the record.
    eprintln!(
        "redelivered {:?} after the channel close (retry min 300 ms)",
        t.elapsed()
    );
}

#[tokio::test]
async fn delivery_limit_with_single_active_consumer() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            ("x-delivery-limit", int(1)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    publish(&ch, "q", "poison", BasicProperties::default()).await;
    publish(&ch, "q", "fine", BasicProperties::default()).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let mut seen = Vec::new();
    while let Some(d) = next_within(&mut cons, Duration::from_millis(400)).await {
        seen.push(body(&d));
        if body(&d) == "poison" {
            nack(&d, true).await;
        } else {
            ack(&d).await;
        }
        assert!(seen.len() < 10);
    }
    assert_eq!(seen.iter().filter(|b| *b == "poison").count(), 2);
    assert_eq!(seen.iter().filter(|b| *b == "fine").count(), 1);
    assert!(get_within(&ch, "dlq", WAIT).await.is_some());
}

/// RabbitMQ: "Setting the TTL to 0 causes messages to be expired upon reaching a queue unless they can be
/// delivered to a consumer immediately." Without a consumer it expires; with an idle consumer it is delivered.
async fn ttl_zero(queue_ttl_zero: bool) {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    let mut args = vec![
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("dlq")),
    ];
    if queue_ttl_zero {
        args.push(("x-message-ttl", int(0)));
    }
    declare(&ch, "q", &args).await;
    let props = || {
        if queue_ttl_zero {
            BasicProperties::default()
        } else {
            expiring(0)
        }
    };
    publish(&ch, "q", "nobody-home", props()).await;
    let d = get_within(&ch, "dlq", WAIT)
        .await
        .expect("expired at once without a consumer");
    assert_eq!(body(&d), "nobody-home");
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&ch, "q", "taken", props()).await;
    let d = next_within(&mut cons, Duration::from_secs(1)).await;
    let dead = drain(&ch, "dlq").await;
    assert_eq!(
        d.as_ref().map(body).as_deref(),
        Some("taken"),
        "an idle consumer was waiting, so the TTL-0 message should be delivered (dead-lettered instead: {dead:?})"
    );
}

#[tokio::test]
async fn queue_ttl_zero_delivers_to_an_idle_consumer_and_expires_otherwise() {
    ttl_zero(true).await;
}

#[tokio::test]
async fn expiration_zero_delivers_to_an_idle_consumer_and_expires_otherwise() {
    ttl_zero(false).await;
}
