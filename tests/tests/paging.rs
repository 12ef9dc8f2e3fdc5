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
