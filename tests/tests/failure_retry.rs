//! Delayed retry (LavinMQ's `x-delayed-retry-min/-multiplier/-max`) end to end: a message returned with
//! requeue=true waits min×n (linear), min (constant, multiplier 1) or min×mult^(n−1) (exponential), capped by
//! max, while later messages flow; the default delivery limit with retry is 20; a restart in the middle keeps
//! the count and the due time.
//!
//! Timings use generous tolerances (±40 % + 100 ms): the broker's timer ticks every 10 ms.

mod failure_common;

use std::time::{Duration, Instant};

use failure_common::*;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use mailroom_tests::Server;

const WAIT: Duration = Duration::from_secs(3);

/// Declares `q` with the retry arguments, publishes one message, nacks (requeue) it `returns` times and
/// returns the gaps between consecutive deliveries plus the x-delivery-count of each delivery.
async fn gaps(retry_args: &[(&str, AMQPValue)], returns: usize) -> (Vec<Duration>, Vec<Option<i64>>) {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    let mut args = retry_args.to_vec();
    args.push(("x-delivery-limit", int(returns as i64 + 5)));
    declare(&ch, "q", &args).await;
    publish(&ch, "q", "retry-me", BasicProperties::default()).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let mut times = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..=returns {
        let d = next_within(&mut cons, Duration::from_secs(6))
            .await
            .expect("redelivered within 6 s");
        times.push(Instant::now());
        counts.push(delivery_count(&d));
        if counts.len() <= returns {
            nack(&d, true).await;
        } else {
            ack(&d).await;
        }
    }
    let gaps = times.windows(2).map(|w| w[1] - w[0]).collect();
    (gaps, counts)
}

fn check(gaps: &[Duration], expected: &[u64]) {
    eprintln!(
        "gaps {:?} ms, expected {expected:?} ms",
        gaps.iter().map(|g| g.as_millis()).collect::<Vec<_>>()
    );
    assert_eq!(gaps.len(), expected.len());
    for (i, (g, e)) in gaps.iter().zip(expected).enumerate() {
        assert_about(&format!("delay before redelivery {}", i + 1), *g, *e);
    }
}

#[tokio::test]
async fn linear_backoff_without_multiplier() {
    let (g, counts) = gaps(&[("x-delayed-retry-min", int(150))], 3).await;
    assert_eq!(counts, [None, Some(1), Some(2), Some(3)]);
    check(&g, &[150, 300, 450]);
    assert!(g[2] > g[0], "linear delays grow: {g:?}");
}

#[tokio::test]
async fn constant_backoff_with_multiplier_one() {
    let (g, _) = gaps(
        &[
            ("x-delayed-retry-min", int(200)),
            ("x-delayed-retry-multiplier", int(1)),
        ],
        3,
    )
    .await;
    check(&g, &[200, 200, 200]);
}

#[tokio::test]
async fn exponential_backoff_with_multiplier_two() {
    let (g, _) = gaps(
        &[
            ("x-delayed-retry-min", int(100)),
            ("x-delayed-retry-multiplier", int(2)),
        ],
        4,
    )
    .await;
    check(&g, &[100, 200, 400, 800]);
    assert!(g[3] > g[1], "exponential delays grow: {g:?}");
}

#[tokio::test]
async fn exponential_backoff_is_capped_by_max() {
    let (g, _) = gaps(
        &[
            ("x-delayed-retry-min", int(100)),
            ("x-delayed-retry-multiplier", int(3)),
            ("x-delayed-retry-max", int(400)),
        ],
        4,
    )
    .await;
    // 100, 300, 900→400, 2700→400
    check(&g, &[100, 300, 400, 400]);
}

#[tokio::test]
async fn reject_with_requeue_is_delayed_too() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "q",
        &[
            ("x-delayed-retry-min", int(400)),
            ("x-delayed-retry-multiplier", int(1)),
        ],
    )
    .await;
    publish(&ch, "q", "r", BasicProperties::default()).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let d = next(&mut cons).await;
    let t = Instant::now();
    reject(&d, true).await;
    let d = next(&mut cons).await;
    assert_about("reject(requeue) delay", t.elapsed(), 400);
    assert_eq!(delivery_count(&d), Some(1));
}

#[tokio::test]
async fn later_messages_flow_while_a_returned_one_waits() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(
        &ch,
        "q",
        &[
            ("x-delayed-retry-min", int(600)),
            ("x-delayed-retry-multiplier", int(1)),
        ],
    )
    .await;
    publish(&ch, "q", "poison", BasicProperties::default()).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let d = next(&mut cons).await;
    assert_eq!(body(&d), "poison");
    let returned_at = Instant::now();
    nack(&d, true).await;
    // While it waits, it is not deliverable, not even through basic.get.
    assert!(
        get_now(&ch, "q").await.is_none(),
        "the returned message is not deliverable yet"
    );
    for i in 0..3 {
        publish(&ch, "q", &format!("m{i}"), BasicProperties::default()).await;
    }
    for i in 0..3 {
        let d = next(&mut cons).await;
        assert_eq!(body(&d), format!("m{i}"), "later messages are delivered first");
        assert!(
            returned_at.elapsed() < Duration::from_millis(500),
            "m{i} did not wait for the poison message"
        );
        ack(&d).await;
    }
    let d = next(&mut cons).await;
    assert_eq!(body(&d), "poison");
    assert_about("retry delay", returned_at.elapsed(), 600);
    assert_eq!(delivery_count(&d), Some(1));
    ack(&d).await;
}

#[tokio::test]
async fn retry_defaults_the_delivery_limit_to_twenty() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-delayed-retry-min", int(5)),
            ("x-delayed-retry-multiplier", int(1)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    publish(&ch, "q", "poison", BasicProperties::default()).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let mut deliveries = 0;
    while let Some(d) = next_within(&mut cons, Duration::from_millis(600)).await {
        deliveries += 1;
        assert!(deliveries <= 30, "never dead-lettered");
        nack(&d, true).await;
    }
    assert_eq!(deliveries, 21, "limit 20: 21 deliveries");
    let d = get_within(&ch, "dlq", WAIT).await.expect("dead-lettered");
    assert_eq!(x_death(&d)[0].reason(), "delivery_limit");
}

#[tokio::test]
async fn explicit_delivery_limit_overrides_the_retry_default() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq", &[]).await;
    declare(
        &ch,
        "q",
        &[
            ("x-delayed-retry-min", int(20)),
            ("x-delivery-limit", int(2)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ],
    )
    .await;
    publish(&ch, "q", "poison", BasicProperties::default()).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "q", "c").await;
    let mut counts = Vec::new();
    while let Some(d) = next_within(&mut cons, Duration::from_millis(600)).await {
        counts.push(delivery_count(&d));
        assert!(counts.len() < 10);
        nack(&d, true).await;
    }
    assert_eq!(counts, [None, Some(1), Some(2)]);
    assert!(get_within(&ch, "dlq", WAIT).await.is_some());
}

#[tokio::test]
async fn restart_in_the_middle_of_a_retry_schedule_keeps_count_and_due_time() {
    let mut server = Server::start();
    let args = [("x-delayed-retry-min", int(1500))]; // linear: 1500, 3000, ...
    let nacked_at;
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "dq", &args).await;
        ch.confirm_select(Default::default()).await.unwrap();
        publish(&ch, "dq", "persistent", persistent()).await;
        let m = ch
            .basic_get("dq".into(), lapin::options::BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("message");
        ch.basic_nack(
            m.delivery.delivery_tag,
            lapin::options::BasicNackOptions {
                requeue: true,
                multiple: false,
            },
        )
        .await
        .unwrap();
        nacked_at = Instant::now();
        let _ = count(&ch, "dq").await; // round trip: the nack was processed
        conn.close(200, "bye".into()).await.unwrap();
        assert!(server.stop().success());
    }
    server.restart();
    let restarted_after = nacked_at.elapsed();
    assert!(
        restarted_after < Duration::from_millis(1000),
        "restart took {restarted_after:?}: too slow for this test's schedule"
    );
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "dq", "c").await;
    // Not before its due time (1.5 s after the nack, minus tolerance)...
    let early = Duration::from_millis(1500 * 6 / 10);
    let until_early = early.saturating_sub(nacked_at.elapsed());
    assert!(
        next_within(&mut cons, until_early).await.is_none(),
        "delivered before its due time after the restart"
    );
    // ...but around it.
    let d = next_within(&mut cons, Duration::from_secs(4))
        .await
        .expect("delivered after its due time");
    assert_about("delay across the restart", nacked_at.elapsed(), 1500);
    assert_eq!(delivery_count(&d), Some(1), "the count survived");
    // The schedule continues from the kept count: the 2nd return waits 2 × 1500 ms.
    let t = Instant::now();
    nack(&d, true).await;
    let d = next_within(&mut cons, Duration::from_secs(6))
        .await
        .expect("second retry");
    assert_about("second delay after the restart", t.elapsed(), 3000);
    assert_eq!(delivery_count(&d), Some(2));
    ack(&d).await;
    let _ = ch;
}
