//! `message_stats` with rates on `/api/overview`, `/api/queues` and `/api/channels` (RabbitMQ's names:
//! `publish`, `deliver_get`, `ack`, ... and `*_details.rate`, per second over the last sample interval of
//! 5 s, `collect_statistics_interval` in rabbitmq_management_agent). Counts are asserted, rates only as
//! "above zero while messages flow": never a value or a timing.

use std::time::{Duration, Instant};

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::http::Api;
use mailroom_tests::Server;
use serde_json::Value;

fn rate(v: &Value, field: &str) -> f64 {
    v["message_stats"][format!("{field}_details")]["rate"]
        .as_f64()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn counters_grow_and_rates_appear_while_messages_flow() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "rated".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let publish = |i: usize| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "".into(),
                "rated".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
    };
    for i in 0..50 {
        publish(i).await;
    }
    // Counts: every publish is counted once the queue has it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = api.ok("/api/queues/%2F/rated").await;
        if q["message_stats"]["publish"].as_u64() == Some(50) {
            break;
        }
        assert!(Instant::now() < deadline, "publish count never reached 50: {q}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Rates: keep publishing until a sample interval saw them (the sampler runs every 5 s).
    let mut i = 50;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (q, overview, channel) = loop {
        publish(i).await;
        i += 1;
        let q = api.ok("/api/queues/%2F/rated").await;
        let o = api.ok("/api/overview").await;
        let chans = api.ok("/api/channels").await;
        let c = chans
            .as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or(Value::Null);
        if rate(&q, "publish") > 0.0 && rate(&o, "publish") > 0.0 && rate(&c, "publish") > 0.0 {
            break (q, o, c);
        }
        assert!(
            Instant::now() < deadline,
            "no publish rate appeared: {q}\n{o}\n{c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(q["message_stats"]["publish"].as_u64().unwrap() >= 50, "{q}");
    assert!(
        overview["message_stats"]["publish"].as_u64().unwrap() >= 50,
        "{overview}"
    );
    assert!(
        channel["message_stats"]["publish"].as_u64().unwrap() >= 50,
        "{channel}"
    );
    assert_eq!(overview["rates_mode"], "basic");
    // Deliveries and acks count on the queue and the overview.
    for _ in 0..10 {
        let m = ch
            .basic_get("rated".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("a message");
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = api.ok("/api/queues/%2F/rated").await;
        let o = api.ok("/api/overview").await;
        if q["message_stats"]["deliver_get"].as_u64() >= Some(10)
            && q["message_stats"]["ack"].as_u64() >= Some(10)
            && o["message_stats"]["get"].as_u64() >= Some(10)
            && o["message_stats"]["ack"].as_u64() >= Some(10)
        {
            assert!(q["message_stats"]["ack_details"]["rate"].is_number());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries/acks never counted: {q}\n{o}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
