//! Length limits end to end: `x-max-length`, `x-max-length-bytes`, and `x-overflow` drop-head (the head is
//! dropped or dead-lettered as `maxlen`), reject-publish (confirm nack, the queue keeps the old messages) and
//! reject-publish-dlx (nack and the rejected message is dead-lettered).

mod failure_common;

use std::time::Duration;

use failure_common::*;
use lapin::options::*;
use lapin::BasicProperties;
use mailroom_tests::Server;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn max_length_drop_head_keeps_the_newest() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "q", &[("x-max-length", int(3))]).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for i in 0..6 {
        assert!(
            publish_confirmed(&ch, "q", &format!("m{i}"), BasicProperties::default()).await,
            "drop-head accepts every publish"
        );
    }
    assert_eq!(count(&ch, "q").await, 3);
    assert_eq!(drain(&ch, "q").await, ["m3", "m4", "m5"]);
}

#[tokio::test]
async fn explicit_drop_head_is_the_default_behaviour() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "q",
        &[("x-max-length", int(1)), ("x-overflow", s("drop-head"))],
    )
    .await;
    publish(&ch, "q", "old", BasicProperties::default()).await;
    publish(&ch, "q", "new", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "q").await, ["new"]);
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-max-length-bytes", int(10)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    // Properties and headers do not count, only bodies.
    let mut h = lapin::types::FieldTable::default();
    h.insert("big".into(), s(&"x".repeat(200)));
    for b in ["aaaa", "bbbb", "cccc", "dddd"] {
        publish(&ch, "q", b, BasicProperties::default().with_headers(h.clone())).await;
    }
    assert_eq!(count(&ch, "q").await, 2, "4-byte bodies, 10-byte limit: 2 fit");
    wait_count(&ch, "dlq", 2, WAIT).await;
    let d = get_now(&ch, "dlq").await.unwrap();
    assert_eq!(body(&d), "aaaa");
    assert_eq!(x_death(&d)[0].reason(), "maxlen");
    assert_eq!(drain(&ch, "q").await, ["cccc", "dddd"]);
    // One body larger than the limit on its own: it cannot be kept.
    publish(&ch, "q", "0123456789ABC", BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        count(&ch, "q").await,
        0,
        "a message larger than max-length-bytes is dropped"
    );
}

#[tokio::test]
async fn unacked_messages_do_not_count_against_max_length() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "q",
        &[("x-max-length", int(2)), ("x-overflow", s("reject-publish"))],
    )
    .await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let c = channel(&conn).await;
    c.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&c, "q", "c").await;
    assert!(publish_confirmed(&ch, "q", "a", BasicProperties::default()).await);
    assert!(publish_confirmed(&ch, "q", "b", BasicProperties::default()).await);
    let da = next(&mut cons).await;
    let db = next(&mut cons).await;
    // Both are unacked now; the queue has room for two more ready messages.
    assert!(publish_confirmed(&ch, "q", "c", BasicProperties::default()).await);
    assert!(publish_confirmed(&ch, "q", "d", BasicProperties::default()).await);
    assert!(
        !publish_confirmed(&ch, "q", "e", BasicProperties::default()).await,
        "third ready message"
    );
    ack(&da).await;
    ack(&db).await;
    let mut rest = Vec::new();
    for _ in 0..2 {
        let d = next(&mut cons).await;
        rest.push(body(&d));
        ack(&d).await;
    }
    assert_eq!(rest, ["c", "d"]);
}

#[tokio::test]
async fn reject_publish_nacks_and_keeps_the_old_messages() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-max-length", int(2)),
            ("x-overflow", s("reject-publish")),
            // reject-publish does not dead-letter the rejected message even with a DLX.
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert!(publish_confirmed(&ch, "q", "m0", BasicProperties::default()).await);
    assert!(publish_confirmed(&ch, "q", "m1", BasicProperties::default()).await);
    assert!(
        !publish_confirmed(&ch, "q", "m2", BasicProperties::default()).await,
        "m2 nacked"
    );
    assert!(
        !publish_confirmed(&ch, "q", "m3", BasicProperties::default()).await,
        "m3 nacked"
    );
    assert_eq!(count(&ch, "q").await, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(&ch, "dlq").await, 0, "reject-publish does not dead-letter");
    // Room again after one is consumed.
    assert_eq!(get_now(&ch, "q").await.map(|d| body(&d)).as_deref(), Some("m0"));
    assert!(publish_confirmed(&ch, "q", "m4", BasicProperties::default()).await);
    assert_eq!(drain(&ch, "q").await, ["m1", "m4"]);
}

#[tokio::test]
async fn reject_publish_nacks_only_the_full_queue_of_a_fanout() {
    // One publish routed to two queues, one of them full: the publisher gets a nack (RabbitMQ), and the queue
    // with room still gets the message.
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    exchange(&ch, "fan", lapin::ExchangeKind::Fanout).await;
    declare(
        &ch,
        "full",
        &[("x-max-length", int(0)), ("x-overflow", s("reject-publish"))],
    )
    .await;
    declare(&ch, "roomy", &[]).await;
    bind(&ch, "full", "fan", "").await;
    bind(&ch, "roomy", "fan", "").await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let confirm = ch
        .basic_publish(
            "fan".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"both",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_nack(), "a full reject-publish queue nacks the publish");
    assert_eq!(count(&ch, "full").await, 0);
    assert_eq!(count(&ch, "roomy").await, 1);
}

#[tokio::test]
async fn reject_publish_with_max_length_bytes() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "q",
        &[
            ("x-max-length-bytes", int(8)),
            ("x-overflow", s("reject-publish")),
        ],
    )
    .await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert!(publish_confirmed(&ch, "q", "aaaa", BasicProperties::default()).await);
    assert!(publish_confirmed(&ch, "q", "bbbb", BasicProperties::default()).await);
    assert!(!publish_confirmed(&ch, "q", "c", BasicProperties::default()).await);
    assert_eq!(drain(&ch, "q").await, ["aaaa", "bbbb"]);
}

#[tokio::test]
async fn reject_publish_dlx_nacks_and_dead_letters_the_rejected_message() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-max-length", int(1)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    assert!(publish_confirmed(&ch, "q", "kept", BasicProperties::default()).await);
    assert!(
        !publish_confirmed(&ch, "q", "rejected", BasicProperties::default()).await,
        "nacked"
    );
    let d = get_within(&ch, "dlq", WAIT)
        .await
        .expect("the rejected message is dead-lettered");
    assert_eq!(body(&d), "rejected");
    let x = &x_death(&d)[0];
    assert_eq!(x.reason(), "maxlen");
    assert_eq!(x.queue(), "q");
    assert_eq!(x.count(), 1);
    assert_eq!(drain(&ch, "q").await, ["kept"], "the queue keeps the old message");
}

#[tokio::test]
async fn reject_publish_without_confirms_drops_silently_and_the_channel_stays_open() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "q",
        &[("x-max-length", int(1)), ("x-overflow", s("reject-publish"))],
    )
    .await;
    for b in ["a", "b", "c"] {
        publish(&ch, "q", b, BasicProperties::default()).await;
    }
    assert_eq!(drain(&ch, "q").await, ["a"]);
    assert!(ch.status().connected(), "the channel is still open");
}
