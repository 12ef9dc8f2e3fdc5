//! Failure-handling state across restarts (graceful stop and kill -9): TTL expiry that falls due while the
//! broker is down, dead-lettered messages in a durable DLQ, the delivery limit and the retry schedule.

mod failure_common;

use std::time::{Duration, Instant};

use failure_common::*;
use lapin::options::*;
use mailroom_tests::Server;

const WAIT: Duration = Duration::from_secs(3);

async fn nack_once_via_get(ch: &lapin::Channel, q: &str) -> lapin::message::Delivery {
    let m = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("message");
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: false,
        },
    )
    .await
    .unwrap();
    m.delivery
}

fn down(server: &mut Server, graceful: bool) {
    if graceful {
        assert!(server.stop().success());
    }
    server.restart();
}

#[tokio::test]
async fn ttl_that_falls_due_while_the_broker_is_down_expires_into_the_dlq_after_restart() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "dlq", &[]).await;
        declare_durable(
            &ch,
            "dq",
            &[
                ("x-message-ttl", int(400)),
                ("x-dead-letter-exchange", s("")),
                ("x-dead-letter-routing-key", s("dlq")),
            ],
        )
        .await;
        ch.confirm_select(Default::default()).await.unwrap();
        publish(&ch, "dq", "stale", persistent()).await;
        conn.close(200, "bye".into()).await.unwrap();
    }
    assert!(server.stop().success());
    std::thread::sleep(Duration::from_millis(600));
    server.restart();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    let d = get_within(&ch, "dlq", WAIT)
        .await
        .expect("expired into the DLQ after the restart");
    assert_eq!(body(&d), "stale");
    assert_eq!(x_death(&d)[0].reason(), "expired");
    assert!(
        get_now(&ch, "dq").await.is_none(),
        "never delivered from the source queue"
    );
}

async fn dead_lettered_message_survives(graceful: bool) {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "dlq", &[]).await;
        declare_durable(
            &ch,
            "dq",
            &[
                ("x-dead-letter-exchange", s("")),
                ("x-dead-letter-routing-key", s("dlq")),
            ],
        )
        .await;
        ch.confirm_select(Default::default()).await.unwrap();
        publish(&ch, "dq", "bad", persistent()).await;
        let m = ch
            .basic_get("dq".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        ch.basic_reject(m.delivery.delivery_tag, BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        wait_count(&ch, "dlq", 1, WAIT).await;
        // Give a group-commit a moment before a kill.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    down(&mut server, graceful);
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    let d = get_within(&ch, "dlq", WAIT)
        .await
        .expect("the dead-lettered copy survived");
    assert_eq!(body(&d), "bad");
    assert_eq!(d.properties.delivery_mode(), &Some(2), "still persistent");
    let x = x_death(&d);
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].reason(), "rejected");
    assert_eq!(x[0].queue(), "dq");
    assert!(
        get_now(&ch, "dq").await.is_none(),
        "and it is not back in the source queue"
    );
}

#[tokio::test]
async fn dead_lettered_message_survives_a_graceful_restart() {
    dead_lettered_message_survives(true).await;
}

#[tokio::test]
async fn dead_lettered_message_survives_a_crash() {
    dead_lettered_message_survives(false).await;
}

async fn delivery_limit_continues_after_restart(graceful: bool) {
    let mut server = Server::start();
    let args = [
        ("x-delivery-limit", int(2)),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("dlq")),
    ];
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "dlq", &[]).await;
        declare_durable(&ch, "dq", &args).await;
        ch.confirm_select(Default::default()).await.unwrap();
        publish(&ch, "dq", "poison", persistent()).await;
        nack_once_via_get(&ch, "dq").await;
        nack_once_via_get(&ch, "dq").await;
        assert_eq!(count(&ch, "dq").await, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    down(&mut server, graceful);
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    let d = nack_once_via_get(&ch, "dq").await;
    assert_eq!(delivery_count(&d), Some(2), "the count survived");
    let dl = get_within(&ch, "dlq", WAIT)
        .await
        .expect("the third return hits the limit");
    assert_eq!(x_death(&dl)[0].reason(), "delivery_limit");
    assert!(get_now(&ch, "dq").await.is_none());
}

#[tokio::test]
async fn delivery_limit_continues_after_a_graceful_restart() {
    delivery_limit_continues_after_restart(true).await;
}

#[tokio::test]
async fn delivery_limit_continues_after_a_crash() {
    delivery_limit_continues_after_restart(false).await;
}

#[tokio::test]
async fn retry_due_time_survives_a_crash() {
    let mut server = Server::start();
    let nacked_at;
    {
        let conn = connect(&server).await;
        let ch = channel(&conn).await;
        declare_durable(
            &ch,
            "dq",
            &[
                ("x-delayed-retry-min", int(1500)),
                ("x-delayed-retry-multiplier", int(1)),
            ],
        )
        .await;
        ch.confirm_select(Default::default()).await.unwrap();
        publish(&ch, "dq", "persistent", persistent()).await;
        nack_once_via_get(&ch, "dq").await;
        nacked_at = Instant::now();
        let _ = count(&ch, "dq").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    server.restart(); // SIGKILL, then start
    let conn = connect(&server).await;
    let c = channel(&conn).await;
    let mut cons = consume(&c, "dq", "c").await;
    let early = Duration::from_millis(1500 * 6 / 10).saturating_sub(nacked_at.elapsed());
    assert!(
        next_within(&mut cons, early).await.is_none(),
        "delivered before its due time after a crash"
    );
    let d = next_within(&mut cons, Duration::from_secs(4))
        .await
        .expect("delivered after its due time");
    assert_about("delay across the crash", nacked_at.elapsed(), 1500);
    assert_eq!(delivery_count(&d), Some(1));
}
