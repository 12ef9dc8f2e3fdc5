//! Duplicate detection with the rabbitmq-message-deduplication plugin's names, over real TCP with lapin:
//! the `x-message-deduplication` exchange type (fanout-like, dedups before routing; `x-cache-size`
//! required), the argument on a direct exchange, deduplicating queues, the per-message `x-cache-ttl`
//! override, duplicates acked under confirms, the window surviving a restart, and a publisher that loses
//! its connection (and its confirms) and re-sends everything producing no duplicate delivery.

mod routing_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::Server;
use routing_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn dedup_kind() -> ExchangeKind {
    ExchangeKind::Custom("x-message-deduplication".into())
}

fn with_key(key: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table(&[(
            "x-deduplication-header",
            AMQPValue::LongString(key.into()),
        )]))
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn deduplication_exchange_drops_duplicates_and_acks_them() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    // The plugin's exchange.declare validation: x-cache-size is required.
    let bad = channel(&conn).await;
    let r = bad
        .exchange_declare(
            "dx".into(),
            dedup_kind(),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    expect_error(
        r,
        406,
        "PRECONDITION_FAILED - Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
    );
    let bad = channel(&conn).await;
    let r = bad
        .exchange_declare(
            "dx".into(),
            dedup_kind(),
            ExchangeDeclareOptions::default(),
            table(&[("x-cache-size", int(10)), ("x-cache-ttl", int(0))]),
        )
        .await;
    expect_error(
        r,
        406,
        "PRECONDITION_FAILED - Invalid argument, 'x-cache-ttl' must be an integer greater than 0",
    );

    exchange_with(
        &ch,
        "dx",
        dedup_kind(),
        durable(),
        table(&[("x-cache-size", int(100))]),
    )
    .await;
    queue(&ch, "a").await;
    queue(&ch, "b").await;
    bind(&ch, "a", "dx", "ignored").await;
    bind(&ch, "b", "dx", "").await;
    // `publish` asserts every confirm is an ack: duplicates included.
    for key in ["k1", "k2", "k1", "k3", "k2", "k1"] {
        publish(&ch, "dx", "any", key, with_key(key)).await;
    }
    // No header: never checked.
    publish(&ch, "dx", "any", "plain", BasicProperties::default()).await;
    publish(&ch, "dx", "any", "plain", BasicProperties::default()).await;
    for q in ["a", "b"] {
        assert_eq!(
            drain(&ch, q).await,
            vec!["k1", "k2", "k3", "plain", "plain"],
            "fanout to {q}"
        );
    }
    // A mandatory duplicate comes back (the plugin's exchange routes it nowhere), and is acked.
    let r = publish_mandatory(&ch, "dx", "any", "k1", with_key("k1")).await;
    assert_eq!(r.map(|(c, t, _)| (c, t)), Some((312, "NO_ROUTE".to_string())));
}

#[tokio::test]
async fn per_message_ttl_and_the_argument_on_a_direct_exchange() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange_with(
        &ch,
        "dd",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        table(&[
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-cache-size", int(5)),
        ]),
    )
    .await;
    queue(&ch, "q").await;
    bind(&ch, "q", "dd", "rk").await;
    let short = |k: &str| {
        BasicProperties::default().with_headers(table(&[
            ("x-deduplication-header", AMQPValue::LongString(k.into())),
            ("x-cache-ttl", int(200)),
        ]))
    };
    publish(&ch, "dd", "rk", "t1", short("t")).await;
    publish(&ch, "dd", "rk", "t2", short("t")).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    publish(&ch, "dd", "rk", "t3", short("t")).await;
    // The window holds 5 entries: after 5 other keys, "t" is evicted and passes again.
    for i in 0..5 {
        publish(&ch, "dd", "rk", &format!("o{i}"), with_key(&format!("o{i}"))).await;
    }
    publish(&ch, "dd", "rk", "t4", with_key("t")).await;
    publish(&ch, "dd", "rk", "t5", with_key("t")).await;
    assert_eq!(
        drain(&ch, "q").await,
        vec!["t1", "t3", "o0", "o1", "o2", "o3", "o4", "t4"]
    );
}

#[tokio::test]
async fn queue_window_survives_a_restart() {
    let mut server = Server::start();
    let qargs = table(&[
        ("x-message-deduplication", AMQPValue::Boolean(true)),
        ("x-cache-ttl", int(600_000)),
    ]);
    {
        let conn = connect(&server).await;
        let ch = confirm_channel(&conn).await;
        ch.queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            qargs.clone(),
        )
        .await
        .unwrap();
        exchange_with(
            &ch,
            "dxr",
            dedup_kind(),
            durable(),
            table(&[("x-cache-size", int(100))]),
        )
        .await;
        durable_queue(&ch, "fromx").await;
        bind(&ch, "fromx", "dxr", "").await;
        for k in ["a", "b", "a"] {
            publish(&ch, "", "dq", k, with_key(k)).await;
            publish(&ch, "dxr", "", k, with_key(k)).await;
        }
        // Consumed: the window still remembers them.
        assert_eq!(drain(&ch, "dq").await, vec!["a", "b"]);
        assert_eq!(drain(&ch, "fromx").await, vec!["a", "b"]);
    }
    // A clean stop: the auto-acks of the drains above are durable after the next flush round only, and a
    // kill -9 could bring those messages back (at-least-once), which would hide what this test checks. The
    // window entries themselves were durable before their publishes were confirmed.
    server.stop();
    server.restart();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    for k in ["a", "b", "c"] {
        publish(&ch, "", "dq", k, with_key(k)).await;
        publish(&ch, "dxr", "", k, with_key(k)).await;
    }
    assert_eq!(
        drain(&ch, "dq").await,
        vec!["c"],
        "the queue's window survived the restart"
    );
    assert_eq!(
        drain(&ch, "fromx").await,
        vec!["c"],
        "the exchange's window survived the restart"
    );
    // Deleting the queue forgets its window.
    ch.queue_delete("dq".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "dq".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        qargs,
    )
    .await
    .unwrap();
    publish(&ch, "", "dq", "a", with_key("a")).await;
    assert_eq!(drain(&ch, "dq").await, vec!["a"]);
}

/// A TCP proxy that can swallow everything the broker sends (so confirms are lost) and then cut.
struct Proxy {
    addr: std::net::SocketAddr,
    swallow: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

async fn proxy(to: std::net::SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let swallow = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(tokio::sync::Notify::new());
    let (sw, ct) = (swallow.clone(), cut.clone());
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(to).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw_) = server.into_split();
        let up = async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = cr.read(&mut buf).await {
                if n == 0 || sw_.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let down = async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if !sw.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
            _ = ct.notified() => {}
        }
        // Both sockets are dropped here: the client and the broker see the connection cut.
    });
    Proxy { addr, swallow, cut }
}

#[tokio::test]
async fn a_publisher_that_resends_after_a_dropped_connection_causes_no_duplicate_delivery() {
    let server = Server::start();
    let admin = connect(&server).await;
    let ch = confirm_channel(&admin).await;
    ch.queue_declare(
        "orders".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-message-deduplication", AMQPValue::Boolean(true))]),
    )
    .await
    .unwrap();
    const N: usize = 50;
    // First attempt, through the proxy: every publish reaches the broker, but the confirms are swallowed
    // and the connection is cut before the publisher learns anything.
    let p = proxy(server.addr).await;
    let url = format!("amqp://guest:guest@{}/%2f", p.addr);
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let pch = conn.create_channel().await.unwrap();
    pch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    p.swallow.store(true, Ordering::SeqCst);
    let mut pending = Vec::new();
    for i in 0..N {
        let id = format!("order-{i}");
        pending.push(
            pch.basic_publish(
                "".into(),
                "orders".into(),
                BasicPublishOptions::default(),
                id.as_bytes(),
                with_key(&id),
            )
            .await
            .unwrap(),
        );
    }
    // Wait until the broker has them all (observed on another connection), then cut.
    for _ in 0..200 {
        if count(&ch, "orders").await as usize == N {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    p.cut.notify_one();
    for c in pending {
        assert!(c.await.is_err(), "no confirm reached the publisher");
    }
    // The publisher reconnects and re-sends everything it has no confirm for: all acked, none enqueued.
    let conn2 = connect(&server).await;
    let pch2 = confirm_channel(&conn2).await;
    for i in 0..N {
        let id = format!("order-{i}");
        publish(&pch2, "", "orders", &id, with_key(&id)).await;
    }
    let got = drain(&ch, "orders").await;
    let want: Vec<String> = (0..N).map(|i| format!("order-{i}")).collect();
    assert_eq!(got, want, "each order delivered exactly once");
}

#[tokio::test]
async fn confirmed_window_entries_survive_kill_9() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = confirm_channel(&conn).await;
        exchange_with(
            &ch,
            "dk",
            dedup_kind(),
            durable(),
            table(&[("x-cache-size", int(1000))]),
        )
        .await;
        durable_queue(&ch, "dkq").await;
        bind(&ch, "dkq", "dk", "").await;
        for i in 0..100 {
            let k = format!("m{i}");
            publish(&ch, "dk", "", &k, with_key(&k)).await;
        }
    }
    server.kill();
    server.restart();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    for i in 0..101 {
        let k = format!("m{i}");
        publish(&ch, "dk", "", &format!("again-{k}"), with_key(&k)).await;
    }
    let got = drain(&ch, "dkq").await;
    assert_eq!(got.len(), 101);
    assert!(
        got[..100].iter().all(|b| b.starts_with('m')),
        "the 100 originals, kept"
    );
    assert_eq!(got[100], "again-m100", "only the new key passed");
}
