//! Dead-lettering end to end: reject / nack without requeue, expiry (queue TTL and per-message expiration),
//! max-length drop-head, the `x-death` / `x-first-death-*` / `x-last-death-*` headers RabbitMQ writes,
//! `x-dead-letter-routing-key`, repeat deaths, and cycle handling (automatic cycles are dropped, cycles
//! with a client rejection go on).

mod failure_common;

use std::time::Duration;

use failure_common::*;
use lapin::options::*;
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::Server;

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn reject_and_nack_without_requeue_dead_letter_with_x_death() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    exchange(&ch, "dlx", ExchangeKind::Direct).await;
    declare(&ch, "dlq", &[]).await;
    bind(&ch, "dlq", "dlx", "work").await;
    declare(&ch, "work", &[("x-dead-letter-exchange", s("dlx"))]).await;

    let mut h = lapin::types::FieldTable::default();
    h.insert("app".into(), s("billing"));
    for i in 0..2 {
        let props = BasicProperties::default()
            .with_headers(h.clone())
            .with_message_id(format!("id{i}").into());
        publish(&ch, "work", &format!("m{i}"), props).await;
    }
    let cch = channel(&conn).await;
    let mut c = consume(&cch, "work", "c").await;
    let d0 = next(&mut c).await;
    assert_eq!(body(&d0), "m0");
    reject(&d0, false).await;
    let d1 = next(&mut c).await;
    assert_eq!(body(&d1), "m1");
    nack(&d1, false).await;

    for i in 0..2 {
        let d = get_within(&ch, "dlq", WAIT)
            .await
            .unwrap_or_else(|| panic!("m{i} dead-lettered"));
        assert_eq!(body(&d), format!("m{i}"));
        assert_eq!(
            d.properties.message_id().as_ref().map(|m| m.to_string()),
            Some(format!("id{i}")),
            "properties are kept"
        );
        assert_eq!(
            header_str(&d, "app").as_deref(),
            Some("billing"),
            "headers are kept"
        );
        let deaths = x_death(&d);
        assert_eq!(deaths.len(), 1, "{deaths:?}");
        let x = &deaths[0];
        assert_eq!(x.count(), 1);
        assert_eq!(x.reason(), "rejected");
        assert_eq!(x.queue(), "work");
        assert_eq!(x.exchange(), "");
        assert_eq!(x.routing_keys(), vec!["work".to_string()]);
        assert_recent(x.time());
        assert!(
            x.get("original-expiration").is_none(),
            "no expiration, so no original-expiration"
        );
        assert_eq!(
            header_str(&d, "x-first-death-reason").as_deref(),
            Some("rejected")
        );
        assert_eq!(header_str(&d, "x-first-death-queue").as_deref(), Some("work"));
        assert_eq!(header_str(&d, "x-first-death-exchange").as_deref(), Some(""));
        assert_eq!(header_str(&d, "x-last-death-reason").as_deref(), Some("rejected"));
        assert_eq!(header_str(&d, "x-last-death-queue").as_deref(), Some("work"));
        assert_eq!(header_str(&d, "x-last-death-exchange").as_deref(), Some(""));
        assert!(
            !d.redelivered,
            "a dead-lettered message is a new message in the DLQ"
        );
    }
    assert_eq!(count(&ch, "work").await, 0, "rejected messages left the queue");
    assert!(get_now(&ch, "dlq").await.is_none());
}

#[tokio::test]
async fn basic_get_then_reject_dead_letters_too() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "work",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    publish(&ch, "work", "x", BasicProperties::default()).await;
    let m = ch
        .basic_get("work".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("message");
    ch.basic_reject(m.delivery.delivery_tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let d = get_within(&ch, "dlq", WAIT)
        .await
        .expect("dead-lettered to the default exchange");
    assert_eq!(body(&d), "x");
    assert_eq!(x_death(&d)[0].reason(), "rejected");
}

#[tokio::test]
async fn dead_letter_routing_key_replaces_the_key_and_x_death_keeps_the_original() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    exchange(&ch, "orders", ExchangeKind::Topic).await;
    exchange(&ch, "dlx", ExchangeKind::Direct).await;
    declare(&ch, "dlq", &[]).await;
    declare(&ch, "wrong", &[]).await;
    bind(&ch, "dlq", "dlx", "dead").await;
    bind(&ch, "wrong", "dlx", "order.created").await;
    declare(
        &ch,
        "work",
        &[
            ("x-dead-letter-exchange", s("dlx")),
            ("x-dead-letter-routing-key", s("dead")),
        ],
    )
    .await;
    bind(&ch, "work", "orders", "order.*").await;
    publish_to(&ch, "orders", "order.created", "o1", BasicProperties::default()).await;
    let m = get_within(&ch, "work", WAIT).await;
    assert!(m.is_some(), "routed to work");
    // Auto-acked get consumed it; publish again and reject via a consumer.
    publish_to(&ch, "orders", "order.created", "o2", BasicProperties::default()).await;
    let cch = channel(&conn).await;
    let mut c = consume(&cch, "work", "c").await;
    let d = next(&mut c).await;
    reject(&d, false).await;
    let dl = get_within(&ch, "dlq", WAIT)
        .await
        .expect("dead-lettered with key 'dead'");
    assert_eq!(body(&dl), "o2");
    let x = &x_death(&dl)[0];
    assert_eq!(
        x.exchange(),
        "orders",
        "x-death names the exchange it was published to"
    );
    assert_eq!(x.routing_keys(), vec!["order.created".to_string()]);
    assert_eq!(
        header_str(&dl, "x-first-death-exchange").as_deref(),
        Some("orders")
    );
    assert!(
        get_now(&ch, "wrong").await.is_none(),
        "the original key is not used"
    );
}

#[tokio::test]
async fn per_message_expiration_dead_letters_as_expired_with_original_expiration() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "work",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    publish(&ch, "work", "short", expiring(50)).await;
    let d = get_within(&ch, "dlq", WAIT)
        .await
        .expect("expired message dead-lettered");
    assert_eq!(body(&d), "short");
    assert_eq!(
        d.properties.expiration(),
        &None,
        "the expiration property is removed from a dead-lettered message"
    );
    let x = &x_death(&d)[0];
    assert_eq!(x.reason(), "expired");
    assert_eq!(x.queue(), "work");
    assert_eq!(x.count(), 1);
    assert_eq!(
        as_string(x.get("original-expiration").expect("original-expiration")).as_deref(),
        Some("50")
    );
    assert_eq!(header_str(&d, "x-first-death-reason").as_deref(), Some("expired"));
    assert_eq!(count(&ch, "work").await, 0);
}

#[tokio::test]
async fn queue_ttl_dead_letters_as_expired_without_original_expiration() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "work",
        &[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    for i in 0..5 {
        publish(&ch, "work", &format!("m{i}"), BasicProperties::default()).await;
    }
    wait_count(&ch, "dlq", 5, WAIT).await;
    let got = {
        let mut v = Vec::new();
        while let Some(d) = get_now(&ch, "dlq").await {
            let x = &x_death(&d)[0];
            assert_eq!(x.reason(), "expired");
            assert!(x.get("original-expiration").is_none());
            v.push(body(&d));
        }
        v
    };
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"], "expired in order");
}

#[tokio::test]
async fn max_length_drop_head_dead_letters_the_head_as_maxlen() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "work",
        &[
            ("x-max-length", int(2)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    for i in 0..5 {
        publish(&ch, "work", &format!("m{i}"), BasicProperties::default()).await;
    }
    wait_count(&ch, "dlq", 3, WAIT).await;
    let mut dead = Vec::new();
    while let Some(d) = get_now(&ch, "dlq").await {
        let x = &x_death(&d)[0];
        assert_eq!(x.reason(), "maxlen");
        assert_eq!(x.queue(), "work");
        dead.push(body(&d));
    }
    assert_eq!(dead, ["m0", "m1", "m2"]);
    assert_eq!(drain(&ch, "work").await, ["m3", "m4"]);
}

/// work --reject--> retry (TTL 50 ms) --expired--> work: a cycle with a client rejection in it goes on, and
/// each repeat death of the same queue and reason raises that entry's count and moves it to the front.
#[tokio::test]
async fn cycle_with_rejection_continues_and_counts_repeat_deaths() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "work",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("retry")),
        ],
    )
    .await;
    declare(
        &ch,
        "retry",
        &[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("work")),
        ],
    )
    .await;
    publish(&ch, "work", "job", BasicProperties::default()).await;
    let cch = channel(&conn).await;
    let mut c = consume(&cch, "work", "c").await;

    let d1 = next(&mut c).await;
    assert!(x_death(&d1).is_empty(), "first delivery has no x-death");
    reject(&d1, false).await;

    let d2 = next(&mut c).await;
    let x = x_death(&d2);
    assert_eq!(x.len(), 2, "{x:?}");
    assert_eq!(
        (x[0].queue(), x[0].reason(), x[0].count()),
        ("retry".into(), "expired".into(), 1)
    );
    assert_eq!(
        (x[1].queue(), x[1].reason(), x[1].count()),
        ("work".into(), "rejected".into(), 1)
    );
    assert_eq!(x[0].exchange(), "", "retry got it from the default exchange");
    assert_eq!(x[0].routing_keys(), vec!["retry".to_string()]);
    assert_eq!(
        header_str(&d2, "x-first-death-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(header_str(&d2, "x-first-death-queue").as_deref(), Some("work"));
    assert_eq!(header_str(&d2, "x-last-death-reason").as_deref(), Some("expired"));
    assert_eq!(header_str(&d2, "x-last-death-queue").as_deref(), Some("retry"));
    reject(&d2, false).await;

    let d3 = next(&mut c).await;
    let x = x_death(&d3);
    assert_eq!(x.len(), 2, "still one entry per (queue, reason): {x:?}");
    assert_eq!(
        (x[0].queue(), x[0].reason(), x[0].count()),
        ("retry".into(), "expired".into(), 2)
    );
    assert_eq!(
        (x[1].queue(), x[1].reason(), x[1].count()),
        ("work".into(), "rejected".into(), 2)
    );
    assert_eq!(
        header_str(&d3, "x-first-death-queue").as_deref(),
        Some("work"),
        "first death is kept"
    );
    reject(&d3, false).await;

    let d4 = next(&mut c).await;
    let x = x_death(&d4);
    assert_eq!(x[0].count(), 3);
    assert_eq!(x[1].count(), 3);
    ack(&d4).await;
    assert!(next_within(&mut c, Duration::from_millis(300)).await.is_none());
}

fn logged(server: &Server, lines: &mut Vec<String>, needle: &str) -> bool {
    lines.extend(server.log_lines());
    lines.iter().any(|l| l.contains(needle))
}

/// A queue whose TTL dead-letters into itself: the message expires once, would come back into the same queue
/// with no rejection in between, and is dropped (with a warning) instead of looping forever.
#[tokio::test]
async fn automatic_self_cycle_is_dropped_with_a_warning() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    // No x-dead-letter-routing-key: dead-lettered with its own key "loop" through the default exchange.
    declare(
        &ch,
        "loop",
        &[("x-message-ttl", int(30)), ("x-dead-letter-exchange", s(""))],
    )
    .await;
    publish(&ch, "loop", "spin", BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&ch, "loop").await,
        0,
        "the message was dropped, not re-queued"
    );
    // Still empty a bit later (it is not circulating).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&ch, "loop").await, 0);
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !logged(&server, &mut lines, "cycle") {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker should log a warning about the dead-letter cycle; log:\n{}",
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The broker is fine afterwards.
    publish(&ch, "loop", "again", BasicProperties::default()).await;
    assert!(!lines.iter().any(|l| l.contains("panic")));
}

/// A → B → A through TTLs with no rejection: dropped when it would re-enter A (A is already in its x-death).
/// Fanout DLXs also feed "tap" queues outside the cycle, which see each expiry once.
#[tokio::test]
async fn automatic_two_queue_cycle_is_dropped_per_destination() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    exchange(&ch, "a-dlx", ExchangeKind::Fanout).await;
    exchange(&ch, "b-dlx", ExchangeKind::Fanout).await;
    declare(&ch, "tap-a", &[]).await;
    declare(&ch, "tap-b", &[]).await;
    declare(
        &ch,
        "a",
        &[("x-message-ttl", int(40)), ("x-dead-letter-exchange", s("a-dlx"))],
    )
    .await;
    declare(
        &ch,
        "b",
        &[("x-message-ttl", int(40)), ("x-dead-letter-exchange", s("b-dlx"))],
    )
    .await;
    bind(&ch, "b", "a-dlx", "").await;
    bind(&ch, "tap-a", "a-dlx", "").await;
    bind(&ch, "a", "b-dlx", "").await;
    bind(&ch, "tap-b", "b-dlx", "").await;
    publish(&ch, "a", "round", BasicProperties::default()).await;
    wait_count(&ch, "tap-b", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(count(&ch, "a").await, 0, "not re-queued into a");
    assert_eq!(count(&ch, "b").await, 0);
    assert_eq!(
        count(&ch, "tap-a").await,
        1,
        "a expired it once: the loop stopped"
    );
    assert_eq!(count(&ch, "tap-b").await, 1);
    let first = get_now(&ch, "tap-a").await.unwrap();
    let x = x_death(&first);
    assert_eq!(x.len(), 1);
    assert_eq!(
        (x[0].queue(), x[0].reason(), x[0].count()),
        ("a".into(), "expired".into(), 1)
    );
    let second = get_now(&ch, "tap-b").await.unwrap();
    let x = x_death(&second);
    assert_eq!(x.len(), 2, "{x:?}");
    assert_eq!(
        (x[0].queue(), x[0].reason(), x[0].count()),
        ("b".into(), "expired".into(), 1)
    );
    assert_eq!(
        (x[1].queue(), x[1].reason(), x[1].count()),
        ("a".into(), "expired".into(), 1)
    );
    assert_eq!(x[0].exchange(), "a-dlx");
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !logged(&server, &mut lines, "cycle") {
        assert!(
            std::time::Instant::now() < deadline,
            "no cycle warning; log:\n{}",
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn missing_dead_letter_exchange_drops_the_message_and_the_queue_keeps_working() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "work", &[("x-dead-letter-exchange", s("nowhere"))]).await;
    publish(&ch, "work", "a", BasicProperties::default()).await;
    publish(&ch, "work", "b", BasicProperties::default()).await;
    let cch = channel(&conn).await;
    let mut c = consume(&cch, "work", "c").await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "a");
    reject(&d, false).await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "b");
    ack(&d).await;
    assert!(
        next_within(&mut c, Duration::from_millis(200)).await.is_none(),
        "a is gone"
    );
    // The channel and connection are still usable.
    assert_eq!(count(&ch, "work").await, 0);
}

/// A headers exchange as dead-letter exchange matches on the dead letter's headers. RabbitMQ routes the
/// dead letter, headers and all, through the DLX like any message: `rabbit_dead_letter:publish/5` calls
/// `rabbit_exchange:route(DLX, DLMsg, ...)` with the updated message (deps/rabbit/src/rabbit_dead_letter.erl),
/// and the headers exchange matches on its headers. (Before, the dead letter was routed with no headers at
/// all and never matched.)
#[tokio::test]
async fn a_headers_exchange_as_dead_letter_exchange_matches_the_dead_letters_headers() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    exchange(&ch, "dlx-h", ExchangeKind::Headers).await;
    declare(&ch, "dl-orders", &[]).await;
    ch.queue_bind(
        "dl-orders".into(),
        "dlx-h".into(),
        "".into(),
        Default::default(),
        table(&[("x-match", s("all")), ("kind", s("order"))]),
    )
    .await
    .unwrap();
    declare(&ch, "work-h", &[("x-dead-letter-exchange", s("dlx-h"))]).await;
    for kind in ["order", "invoice"] {
        let mut h = lapin::types::FieldTable::default();
        h.insert("kind".into(), s(kind));
        publish(&ch, "work-h", kind, BasicProperties::default().with_headers(h)).await;
    }
    let cch = channel(&conn).await;
    let mut c = consume(&cch, "work-h", "c").await;
    for _ in 0..2 {
        let d = next(&mut c).await;
        reject(&d, false).await;
    }
    let d = get_within(&ch, "dl-orders", WAIT)
        .await
        .expect("the order's dead letter matched kind=order");
    assert_eq!(body(&d), "order");
    let more = get_within(&ch, "dl-orders", Duration::from_millis(300)).await;
    assert_eq!(more.map(|d| body(&d)), None, "the invoice's did not match");
}
