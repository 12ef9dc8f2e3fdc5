//! The Prometheus endpoint after real traffic: `/metrics` (aggregated) and `/metrics/per-object` (per queue),
//! our `mailroom_` names and the rabbitmq_prometheus names RabbitMQ's Grafana dashboards query
//! (deps/rabbitmq_prometheus/src/collectors/prometheus_rabbitmq_core_metrics_collector.erl and
//! rabbit_global_counters.erl name them).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::{http_get, parse_metrics, Server};

fn scrape(server: &Server, path: &str) -> (String, HashMap<String, f64>) {
    let (status, head, body) = http_get(server.prometheus_addr(), path).unwrap();
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "complete exposition");
    let m = parse_metrics(&body);
    (body, m)
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("{key} missing"))
}

/// Waits until `check` holds for a fresh scrape (counters are read at scrape time; acks and confirms are
/// asynchronous to the client).
fn eventually(
    server: &Server,
    path: &str,
    check: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (body, m) = scrape(server, path);
        if check(&m) {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never matched:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_traffic() {
    let server = Server::start();
    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("work".into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.queue_declare("dlq".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString("dlq".into()),
    );
    ch.queue_declare("with \"dlx\"".into(), durable, args)
        .await
        .unwrap();

    // 10 persistent publishes with confirms to `work`, 3 to the dlx queue, one unroutable mandatory and one
    // unroutable plain publish.
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for i in 0..10u8 {
        ch.basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            &[i; 150],
            persistent.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    for _ in 0..3 {
        ch.basic_publish(
            "".into(),
            "with \"dlx\"".into(),
            BasicPublishOptions::default(),
            b"x",
            persistent.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    ch.basic_publish(
        "".into(),
        "nowhere".into(),
        mandatory,
        b"r",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "nowhere".into(),
        BasicPublishOptions::default(),
        b"d",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // Consume 4 of `work` with manual acks and ack them; the consumer stays (prefetch 4: 4 more unacked).
    ch2.basic_qos(4, Default::default()).await.unwrap();
    let mut consumer = ch2
        .basic_consume(
            "work".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // basic.get: one auto-ack from the dlx queue, one manual that is rejected (dead-lettered to dlq), and
    // one on an empty queue.
    let got = ch
        .basic_get("with \"dlx\"".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    let got = ch
        .basic_get("with \"dlx\"".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    got.nack(BasicNackOptions {
        requeue: false,
        ..Default::default()
    })
    .await
    .unwrap();
    ch.queue_declare(
        "empty".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(ch
        .basic_get("empty".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());

    // Aggregated.
    let m = eventually(&server, "/metrics", |m| {
        m.get("rabbitmq_global_messages_acknowledged_total{protocol=\"amqp091\"}") == Some(&4.0)
            && m.get("rabbitmq_queue_messages_unacked") == Some(&4.0)
    });
    let g = |k: &str| {
        get(
            &m,
            &format!("rabbitmq_global_messages_{k}_total{{protocol=\"amqp091\"}}"),
        )
    };
    assert_eq!(g("received"), 15.0);
    assert_eq!(g("received_confirm"), 15.0);
    assert_eq!(g("routed"), 13.0);
    assert_eq!(g("unroutable_returned"), 1.0);
    assert_eq!(g("unroutable_dropped"), 1.0);
    assert_eq!(g("confirmed"), 15.0);
    assert_eq!(g("delivered_consume_manual_ack"), 8.0);
    assert_eq!(g("delivered_get_auto_ack"), 1.0);
    assert_eq!(g("delivered_get_manual_ack"), 1.0);
    assert_eq!(g("get_empty"), 1.0);
    assert_eq!(g("delivered"), 10.0);
    assert_eq!(get(&m, "rabbitmq_channel_messages_published_total"), 15.0);
    assert_eq!(get(&m, "rabbitmq_channel_messages_acked_total"), 4.0);
    assert_eq!(get(&m, "rabbitmq_connections"), 1.0);
    assert_eq!(get(&m, "rabbitmq_channels"), 2.0);
    assert_eq!(get(&m, "rabbitmq_queues"), 4.0);
    assert_eq!(get(&m, "rabbitmq_consumers"), 1.0);
    assert_eq!(get(&m, "rabbitmq_global_publishers"), 1.0);
    // work: 10 - 8 delivered = 2 ready; dlx queue: 1 left; dlq: the dead-lettered one.
    assert_eq!(get(&m, "rabbitmq_queue_messages_ready"), 4.0);
    assert_eq!(get(&m, "rabbitmq_queue_messages_unacked"), 4.0);
    assert_eq!(get(&m, "rabbitmq_queue_messages"), 8.0);
    assert_eq!(get(&m, "rabbitmq_queues_created_total"), 4.0);
    assert_eq!(get(&m, "rabbitmq_connections_opened_total"), 1.0);
    assert_eq!(get(&m, "rabbitmq_channels_opened_total"), 2.0);
    // Message sizes: 10 of 150 bytes (<= 1000), 5 of 1 byte (<= 100).
    assert_eq!(get(&m, "rabbitmq_message_size_bytes_bucket{le=\"100.0\"}"), 5.0);
    assert_eq!(get(&m, "rabbitmq_message_size_bytes_bucket{le=\"1000.0\"}"), 15.0);
    assert_eq!(get(&m, "rabbitmq_message_size_bytes_bucket{le=\"+Inf\"}"), 15.0);
    // The dashboard's spelling of the large buckets (RabbitMQ-Overview.json: le="1e+06", ..., "1e+08").
    for le in ["1e+06", "1e+07", "5e+07", "1e+08"] {
        assert_eq!(
            get(&m, &format!("rabbitmq_message_size_bytes_bucket{{le=\"{le}\"}}")),
            15.0
        );
    }
    assert_eq!(get(&m, "rabbitmq_message_size_bytes_sum"), 1505.0);
    assert_eq!(get(&m, "rabbitmq_alarms_memory_used_watermark"), 0.0);
    assert_eq!(get(&m, "rabbitmq_alarms_free_disk_space_watermark"), 0.0);
    assert!(get(&m, "rabbitmq_process_resident_memory_bytes") > 1e6);
    assert!(get(&m, "rabbitmq_process_open_fds") > 5.0);
    assert!(get(&m, "rabbitmq_process_max_fds") >= get(&m, "rabbitmq_process_open_fds"));
    assert!(get(&m, "rabbitmq_resident_memory_limit_bytes") > 0.0);
    assert!(get(&m, "rabbitmq_disk_space_available_bytes") > 0.0);
    assert!(m
        .keys()
        .any(|k| k.starts_with("rabbitmq_identity_info{") && k.contains("rabbitmq_endpoint=\"aggregated\"")));
    // Our own names.
    assert_eq!(get(&m, "mailroom_messages_published_total"), 15.0);
    assert_eq!(get(&m, "mailroom_messages_acked_total"), 4.0);
    assert_eq!(get(&m, "mailroom_connections"), 1.0);
    assert_eq!(get(&m, "mailroom_connections_throttled"), 0.0);
    assert_eq!(get(&m, "mailroom_runtime_stalls_total"), 0.0);
    assert!(get(&m, "mailroom_store_size_bytes") > 0.0);
    // Persistent publishes were flushed: the flush histogram saw rounds.
    assert!(get(&m, "mailroom_store_flush_duration_seconds_count") >= 1.0);
    assert_eq!(
        get(&m, "mailroom_store_flush_duration_seconds_bucket{le=\"+Inf\"}"),
        get(&m, "mailroom_store_flush_duration_seconds_count")
    );

    // Per object: one series per queue, names escaped.
    let (body, m) = scrape(&server, "/metrics/per-object");
    let q = |name: &str, queue: &str| get(&m, &format!("{name}{{vhost=\"/\",queue=\"{queue}\"}}"));
    assert_eq!(q("rabbitmq_queue_messages_ready", "work"), 2.0);
    assert_eq!(q("rabbitmq_queue_messages_unacked", "work"), 4.0);
    assert_eq!(q("rabbitmq_queue_consumers", "work"), 1.0);
    assert_eq!(q("mailroom_queue_messages_published_total", "work"), 10.0);
    assert_eq!(q("mailroom_queue_messages_delivered_total", "work"), 8.0);
    assert_eq!(q("mailroom_queue_messages_acked_total", "work"), 4.0);
    let dlx = "with \\\"dlx\\\"";
    assert_eq!(q("mailroom_queue_messages_published_total", dlx), 3.0);
    assert_eq!(q("mailroom_queue_messages_delivered_total", dlx), 2.0);
    assert_eq!(q("mailroom_queue_messages_dead_lettered_total", dlx), 1.0);
    assert_eq!(q("rabbitmq_queue_messages_ready", dlx), 1.0);
    assert_eq!(q("rabbitmq_queue_messages_ready", "dlq"), 1.0);
    assert_eq!(q("mailroom_queue_messages_published_total", "dlq"), 1.0);
    assert!(body.contains("rabbitmq_endpoint=\"per-object\""), "{body}");

    // Closing the connection: gauges drop, counters stay.
    conn.close(200, "bye".into()).await.unwrap();
    let m = eventually(&server, "/metrics", |m| {
        m.get("rabbitmq_connections") == Some(&0.0)
    });
    assert_eq!(get(&m, "rabbitmq_channels"), 0.0);
    assert_eq!(get(&m, "rabbitmq_connections_closed_total"), 1.0);
    assert_eq!(get(&m, "rabbitmq_channels_closed_total"), 2.0);
    assert_eq!(
        get(
            &m,
            "rabbitmq_global_messages_received_total{protocol=\"amqp091\"}"
        ),
        15.0
    );
    // The consumer's 4 unacked deliveries went back to `work`.
    assert_eq!(get(&m, "rabbitmq_queue_messages_unacked"), 0.0);
    assert_eq!(get(&m, "rabbitmq_queue_messages_ready"), 8.0);

    // Unknown paths are 404.
    let (status, _, _) = http_get(server.prometheus_addr(), "/nope").unwrap();
    assert_eq!(status, 404);
}

/// Many queues: `/metrics/per-object` has a series per queue and per family, and `/metrics` stays small.
/// `MAILROOM_METRICS_QUEUES` (default 10,000) sets the count; the scrape time is printed, never asserted
/// (docs/performance.md has the 100 k figure and the command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_object_scrape_with_many_queues() {
    let n: usize = std::env::var("MAILROOM_METRICS_QUEUES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let server = Server::start();
    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let started = std::time::Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let declares = chunk.iter().map(|i| {
            ch.queue_declare(
                format!("q-{i}").as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
        });
        for r in futures::future::join_all(declares).await {
            r.unwrap();
        }
    }
    ch.basic_publish(
        "".into(),
        "q-7".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    eprintln!("declared {n} queues in {:?}", started.elapsed());
    let addr = server.prometheus_addr();
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let (status, _, b) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics/per-object"))
            .await
            .unwrap()
            .unwrap();
        times.push(t.elapsed());
        assert_eq!(status, 200);
        body = b;
    }
    eprintln!(
        "per-object scrape of {n} queues: {:?} ({} bytes)",
        times,
        body.len()
    );
    let m = parse_metrics(&body);
    let ready = m
        .keys()
        .filter(|k| k.starts_with("rabbitmq_queue_messages_ready{"))
        .count();
    assert_eq!(ready, n);
    for family in [
        "rabbitmq_queue_messages_unacked{",
        "rabbitmq_queue_consumers{",
        "mailroom_queue_messages_published_total{",
        "mailroom_queue_messages_dead_lettered_total{",
    ] {
        assert_eq!(m.keys().filter(|k| k.starts_with(family)).count(), n, "{family}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get(
        &scrape(&server, "/metrics/per-object").1,
        "rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"q-7\"}",
    ) != 1.0
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = std::time::Instant::now();
    let (_, agg) = scrape(&server, "/metrics");
    eprintln!("aggregated scrape of {n} queues: {:?}", t.elapsed());
    assert_eq!(get(&agg, "rabbitmq_queues"), n as f64);
    assert_eq!(get(&agg, "rabbitmq_queue_messages_ready"), 1.0);
}
