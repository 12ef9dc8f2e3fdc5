//! Issue 18, "cleanup that cannot be skipped": everything a connection registers (consumers, exclusive
//! queues, unacked deliveries, its pull list) is released by ownership (`Drop` of the connection's state), so
//! even a panic in the connection's task requeues its unacked messages and deletes its exclusive queues, and
//! the broker keeps serving everyone else.
//!
//! The panic comes from a test-only hook compiled into debug builds only (`connection::test_hooks`):
//! `MAILROOM_TEST_PANIC_ON_QUEUE=NAME` makes a connection's task panic on a queue.declare of NAME. A release
//! build has no such hook, so this file only runs against a debug build (what `make test` builds).
//!
//! What RabbitMQ does when a connection dies without closing (rabbit_channel.erl `terminate`,
//! rabbit_amqqueue `notify_down_all`): its unacked messages go back to their queues marked redelivered, its
//! consumers are removed, and its exclusive queues are deleted (rabbit_amqqueue `on_node_down` / the
//! exclusive owner's DOWN message).

#![cfg(debug_assertions)]

use std::time::Duration;

use mailroom_tests::raw::protocol::{self, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

const PANIC_QUEUE: &str = "panic-now";

#[test]
fn a_panicking_connection_requeues_its_unacked_and_loses_its_exclusive_queues() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::try_start_with_env(
        &tmp.path().join("data"),
        &[],
        &[("MAILROOM_TEST_PANIC_ON_QUEUE", PANIC_QUEUE)],
    )
    .expect("broker starts");

    // A witness connection, opened before, publishes the work.
    let mut w = RawClient::open_ch1(server.addr);
    w.declare_queue(1, "pc-work");
    w.declare_queue(1, "pc-get");
    for i in 0..3 {
        w.publish(1, "", "pc-work", format!("m{i}").as_bytes());
    }
    w.publish(1, "", "pc-get", b"got");
    // Publishes carry no reply: a declare on the same channel after them proves they were enqueued before
    // another connection asks for them.
    assert_eq!(w.declare_queue(1, "pc-get").message_count, 1);

    // The victim: a consumer holding three unacked deliveries on channel 1, a basic.get left unacked, and on
    // channel 2 an exclusive queue with a consumer holding one more.
    let mut a = RawClient::open_ch1(server.addr);
    a.consume(1, "pc-work", "c1", false, false);
    for i in 0..3 {
        let m = a.expect_message(1);
        assert_eq!(m.body_str(), format!("m{i}"));
        assert!(!m.redelivered());
    }
    let got = a.get(1, "pc-get", false).expect("a message to get");
    assert!(!got.redelivered());
    a.open_channel(2);
    a.declare_queue_with(2, "pc-mine", false, true, false);
    a.publish(2, "", "pc-mine", b"mine");
    a.consume(2, "pc-mine", "c2", false, false);
    assert_eq!(a.expect_message(2).body_str(), "mine");
    assert_eq!(w.declare_queue(1, "pc-work").consumer_count, 1);

    // The hook: the victim's task panics in the middle of handling a method.
    a.send_method(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: PANIC_QUEUE.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: protocol::FieldTable::new(),
        }),
    );
    assert!(a.is_closed_by_server(), "the panicked task's socket is closed");
    server
        .wait_for_log(
            "test hook: this connection's task panics now",
            Duration::from_secs(10),
        )
        .expect("the hook fired");

    // The socket closes only after the task's state was dropped, so everything is released by now.
    let ok = w.declare_queue(1, "pc-work");
    assert_eq!(
        (ok.message_count, ok.consumer_count),
        (3, 0),
        "the three deliveries are back in their queue and the consumer is gone"
    );
    for i in 0..3 {
        let m = w.get(1, "pc-work", true).expect("requeued message");
        assert_eq!(m.body_str(), format!("m{i}"), "requeued in their original order");
        assert!(m.redelivered(), "requeued messages are marked redelivered");
    }
    assert!(w.get(1, "pc-work", true).is_none());
    let m = w.get(1, "pc-get", true).expect("the unacked basic.get is back");
    assert_eq!(m.body_str(), "got");
    assert!(m.redelivered());

    // The exclusive queue went with its owner.
    w.send_method(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "pc-mine".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: protocol::FieldTable::new(),
        }),
    );
    let (code, text, _, _) = w.expect_channel_close(1);
    assert_eq!(code, 404, "{text}");

    // The broker keeps serving: the witness on a new channel, a brand new connection, and a new consumer.
    w.open_channel(3);
    w.round_trip(3);
    let mut fresh = RawClient::open_ch1(server.addr);
    fresh.round_trip(1);
    w.publish(3, "", "pc-work", b"after");
    fresh.consume(1, "pc-work", "c3", false, false);
    let m = fresh.expect_message(1);
    assert_eq!(m.body_str(), "after");
    fresh.ack(1, m.delivery_tag(), false);
    fresh.close_connection();
    w.close_connection();

    let status = server
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(20))
        .expect("the broker stops on SIGTERM");
    assert!(status.success(), "{status}");
}
