//! Issue 11, "transient messages page to disk": a long queue of transient messages keeps only a bounded part
//! in memory and the rest in its spill files under `<data-dir>/spill` (never fsynced, never recovered), so
//! it costs memory per file, not per message; delivery order is kept across memory, spill and the segment
//! log; a restart empties the spill (transient messages do not survive it, as in RabbitMQ) and keeps every
//! persistent message.

use std::path::Path;

use mailroom_tests::raw::{protocol, RawClient};
use mailroom_tests::Server;
use protocol::Method;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn spill_bytes(data: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p).map_or(0, |d| {
            d.flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        walk(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
    }
    walk(&data.join("spill"))
}

fn publish_props(c: &mut RawClient, queue: &str, body: &[u8], persistent: bool) {
    let props = if persistent {
        protocol::RawProperties::from_properties(&protocol::BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        })
    } else {
        protocol::RawProperties::empty()
    };
    c.publish_full(
        1,
        protocol::BasicPublish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        },
        &props,
        body,
    );
}

fn body(i: u32, len: usize) -> Vec<u8> {
    let mut b = format!("{i:08}").into_bytes();
    b.resize(len, b'.');
    b
}

/// Reads `n` deliveries on channel 1 (no-ack consumer) and checks they are `expect(i)` in order.
fn drain_in_order(c: &mut RawClient, n: u32, expect: impl Fn(u32) -> u32) {
    for i in 0..n {
        let m = c.expect_message(1);
        let want = format!("{:08}", expect(i));
        assert_eq!(&m.body[..8], want.as_bytes(), "delivery {i}");
    }
}

#[test]
fn a_long_transient_queue_lives_in_its_spill_not_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start_in(&data, &[]);
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "long-transient");
    c.round_trip(1);
    let before = rss_kib(server.pid());
    const N: u32 = 200_000;
    const SIZE: usize = 1024;
    for i in 0..N {
        c.publish(1, "", "long-transient", &body(i, SIZE));
    }
    // Publishes are handled in order: after this round trip all are in the queue.
    c.round_trip(1);
    let after = rss_kib(server.pid());
    let spilled = spill_bytes(&data);
    let total = N as u64 * SIZE as u64;
    eprintln!(
        "RSS {before} KiB -> {after} KiB for {} MiB of messages; spill {} MiB",
        total >> 20,
        spilled >> 20
    );
    assert!(spilled > total / 2, "only {spilled} bytes spilled of {total}");
    // Without paging the bodies alone would add 195 MiB; the spill keeps the queue's memory to a few MiB
    // (4096 ready + 1024 unspilled messages), the rest is allocator slack.
    assert!(
        after.saturating_sub(before) < 96 * 1024,
        "RSS grew by {} KiB holding {} MiB of transient messages",
        after - before,
        total >> 20
    );
    let ok = c.declare_queue(1, "long-transient");
    assert_eq!(ok.message_count, N);
    c.consume(1, "long-transient", "drain", true, false);
    drain_in_order(&mut c, N, |i| i);
    // Read spill files are deleted as the queue drains.
    c.round_trip(1);
    assert!(
        spill_bytes(&data) < 16 << 20,
        "{} bytes left in the spill",
        spill_bytes(&data)
    );
}

#[test]
fn a_durable_queue_keeps_order_across_memory_spill_and_store_and_a_restart_keeps_only_persistent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start_in(&data, &[]);
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue_with(1, "mixed", true, false, false);
    // Every third message persistent: past the in-memory part, persistent ones stay in the segment log
    // only and transient ones go to the spill; reading back merges them by position.
    const N: u32 = 30_000;
    for i in 0..N {
        publish_props(&mut c, "mixed", &body(i, 200), i % 3 == 0);
    }
    c.round_trip(1);
    assert!(spill_bytes(&data) > 0, "nothing was spilled");
    // Half now, in order.
    c.open_channel(2);
    for i in 0..N / 2 {
        let m = c.get(2, "mixed", true).expect("message");
        assert_eq!(&m.body[..8], format!("{i:08}").as_bytes());
    }
    drop(c);
    // A clean stop (a kill -9 may lose the last acks' deletes: those would come back as redeliveries).
    server.signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(30));
    let server = Server::start_in(&data, &[]);
    assert_eq!(spill_bytes(&data), 0, "a restart empties the spill");
    let mut c = RawClient::open_ch1(server.addr);
    let ok = c.call(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "mixed".into(),
            passive: true,
            durable: true,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: protocol::FieldTable::new(),
        }),
    );
    let persistent_left: Vec<u32> = (N / 2..N).filter(|i| i % 3 == 0).collect();
    match ok {
        Method::QueueDeclareOk(ok) => assert_eq!(ok.message_count as usize, persistent_left.len()),
        m => panic!("{m:?}"),
    }
    c.consume(1, "mixed", "drain", true, false);
    drain_in_order(&mut c, persistent_left.len() as u32, |i| {
        persistent_left[i as usize]
    });
}

/// Issue 11, "or the broker is near the watermark": above the paging ratio of the memory watermark (0.5 by
/// default, RabbitMQ 3.x's `vm_memory_high_watermark_paging_ratio`, rabbit_memory_monitor / the classic
/// queue's `reduce_memory_use`), a queue pages new messages at once, far below the message count at which
/// it would page on its own, and publishers are not blocked yet (that happens at the watermark itself).
/// The broker's RSS is faked through the debug build's test hook.
#[test]
fn near_the_memory_watermark_queues_page_new_messages_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hook = tmp.path().join("rss");
    // Watermark 1 GiB; 600 MiB is above half of it, below the alarm.
    std::fs::write(&hook, (600u64 << 20).to_string()).unwrap();
    let server = Server::try_start_with_env(
        &data,
        &["--memory-high-watermark", "1GiB"],
        &[("MAILROOM_TEST_RSS_FILE", hook.to_str().unwrap())],
    )
    .unwrap();
    server
        .wait_for_log(
            "queues page new messages to disk",
            std::time::Duration::from_secs(20),
        )
        .expect("the paging threshold is logged");
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "pressed");
    c.round_trip(1);
    // 3,000 messages: fewer than a queue keeps in memory on its own (4,096), so without the pressure
    // nothing would reach the spill.
    const N: u32 = 3000;
    for i in 0..N {
        c.publish(1, "", "pressed", &body(i, 1024));
    }
    c.round_trip(1);
    let spilled = spill_bytes(&data);
    assert!(
        spilled > 1024 * 1024,
        "only {spilled} bytes spilled: the queue did not page under memory pressure"
    );
    // Pressure gone: new messages stay in memory again (the spill does not grow), and order holds across
    // memory, spill and memory.
    std::fs::write(&hook, (100u64 << 20).to_string()).unwrap();
    server
        .wait_for_log(
            "queues no longer page new messages",
            std::time::Duration::from_secs(20),
        )
        .expect("the end of the pressure is logged");
    let ok = c.declare_queue(1, "pressed");
    assert_eq!(ok.message_count, N);
    c.consume(1, "pressed", "drain", true, false);
    drain_in_order(&mut c, N, |i| i);
}

/// The other side: the same 3,000 messages with memory well under the paging ratio stay in memory.
#[test]
fn far_from_the_watermark_a_short_queue_stays_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hook = tmp.path().join("rss");
    std::fs::write(&hook, (100u64 << 20).to_string()).unwrap();
    let server = Server::try_start_with_env(
        &data,
        &["--memory-high-watermark", "1GiB"],
        &[("MAILROOM_TEST_RSS_FILE", hook.to_str().unwrap())],
    )
    .unwrap();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "relaxed");
    c.round_trip(1);
    for i in 0..3000 {
        c.publish(1, "", "relaxed", &body(i, 1024));
    }
    c.round_trip(1);
    assert_eq!(spill_bytes(&data), 0, "nothing pages far from the watermark");
    c.consume(1, "relaxed", "drain", true, false);
    drain_in_order(&mut c, 3000, |i| i);
}

/// A throttled publisher does not send a consumed queue through the spill. With consumers, the flow bound
/// stops publishers a message or so past it; paging must start well above that (twice the bound), or
/// every later message would be written to the spill and read back while the consumers keep up (the cost
/// that took a quarter of S2's rate, docs/performance.md "Flow control").
#[test]
fn a_throttled_queue_with_a_consumer_stays_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("mailroom.toml");
    // A bound above the 4,096 messages a queue keeps in memory on its own, so the margin matters.
    std::fs::write(&cfg, "queue_flow_max_messages = 5000\n").unwrap();
    let server = Server::try_start_in(&data, &["--config", cfg.to_str().unwrap()]).unwrap();
    let mut consumer = RawClient::open_ch1(server.addr);
    consumer.declare_queue(1, "flowing");
    consumer.send_method(
        1,
        Method::BasicQos(protocol::BasicQos {
            prefetch_size: 0,
            prefetch_count: 100,
            global: false,
        }),
    );
    assert!(matches!(consumer.expect_method(), Method::BasicQosOk(_)));
    consumer.consume(1, "flowing", "c", false, false);
    const N: u32 = 16_000;
    let addr = server.addr;
    let publisher = std::thread::spawn(move || {
        let mut p = RawClient::open_ch1(addr);
        for i in 0..N {
            p.publish(1, "", "flowing", &body(i, 1024));
        }
        p.round_trip(1);
    });
    // Throttle cycles: stop acking until the publisher is held at the bound, take 3,000 (it resumes at
    // the low-water mark, half the bound), and stop again until it is held once more.
    let mut next = 0u32;
    let mut take = |c: &mut RawClient, upto: u32| {
        while next < upto {
            let m = c.expect_message(1);
            assert_eq!(&m.body[..8], format!("{next:08}").as_bytes(), "delivery {next}");
            c.ack(1, m.delivery_tag(), false);
            next += 1;
        }
    };
    // The publisher is held once the broker reports it throttled (the `times`-th time): the queue went past
    // its bound and is not yet back under half of it.
    let prom = server.prometheus_addr();
    let wait_held = |times: f64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let (_, _, text) = mailroom_tests::http_get(prom, "/metrics").unwrap();
            let m = mailroom_tests::parse_metrics(&text);
            let throttles = [
                "mailroom_flow_queue_throttles_total",
                "mailroom_flow_queue_throttles",
            ]
            .iter()
            .find_map(|k| m.get(*k).copied())
            .unwrap_or(0.0);
            if m.get("mailroom_connections_throttled").copied().unwrap_or(0.0) >= 1.0 && throttles >= times {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the publisher was never throttled"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    take(&mut consumer, 1000);
    wait_held(1.0);
    take(&mut consumer, 4000);
    wait_held(2.0);
    assert_eq!(
        spill_bytes(&data),
        0,
        "a queue with a consumer paged at its flow bound"
    );
    take(&mut consumer, N);
    publisher.join().unwrap();
}
