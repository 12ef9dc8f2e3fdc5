//! Issue 11: the consumer acknowledgement timeout. A channel that holds a delivery unacknowledged longer
//! than the timeout is closed with 406 PRECONDITION_FAILED and RabbitMQ's text (rabbit_channel.erl
//! `handle_consumer_timed_out/5`: "delivery acknowledgement on channel N timed out. Timeout value used: T
//! ms. This timeout value can be configured, see consumers doc guide to learn more"); what it held is
//! requeued and redelivered. The timeout is `--consumer-timeout` (RabbitMQ's `consumer_timeout`) or a
//! queue's `x-consumer-timeout` (RabbitMQ 4.3, quorum queues there; every queue here), 0 turning it off.
//! No timing is asserted: the tests wait for the close (or for its absence over a window well past the
//! timeout).

use std::time::Duration;

use mailroom_tests::raw::{protocol, RawClient};
use mailroom_tests::Server;
use protocol::{FieldTable, FieldValue, Method};

fn declare_with_timeout(c: &mut RawClient, ch: u16, name: &str, timeout: Option<i64>) {
    let mut arguments = FieldTable::new();
    if let Some(t) = timeout {
        arguments.insert("x-consumer-timeout", FieldValue::I64(t));
    }
    let m = c.call(
        ch,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments,
        }),
    );
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
}

fn text(ch: u16, ms: u64) -> String {
    format!(
        "PRECONDITION_FAILED - delivery acknowledgement on channel {ch} timed out. Timeout value used: {ms} ms. \
         This timeout value can be configured, see consumers doc guide to learn more"
    )
}

#[test]
fn an_unacked_delivery_past_the_queue_timeout_closes_the_channel_and_is_requeued() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    declare_with_timeout(&mut c, 1, "slow-q", Some(300));
    c.publish(1, "", "slow-q", b"m1");
    c.publish(1, "", "slow-q", b"m2");
    c.open_channel(2);
    c.call(
        2,
        Method::BasicQos(protocol::BasicQos {
            prefetch_size: 0,
            prefetch_count: 1,
            global: false,
        }),
    );
    c.consume(2, "slow-q", "slow", false, false);
    // The first delivery arrives and is never acked; the second waits behind the prefetch of 1.
    let first = c.expect_message(2);
    assert_eq!(first.body_str(), "m1");
    let (code, reply, class, method) = c.expect_channel_close(2);
    assert_eq!(code, 406);
    assert_eq!(reply, text(2, 300));
    assert_eq!((class, method), (0, 0));
    // Both are back in the queue, m1 first and flagged redelivered; the connection goes on.
    let m = c.get(1, "slow-q", true).expect("m1 requeued");
    assert_eq!(m.body_str(), "m1");
    assert!(m.redelivered());
    assert_eq!(c.get(1, "slow-q", true).expect("m2 still there").body_str(), "m2");
}

#[test]
fn the_broker_default_applies_to_gets_and_a_queue_can_turn_it_off() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::try_start_in(&tmp.path().join("data"), &["--consumer-timeout", "300"]).unwrap();
    let mut c = RawClient::open_ch1(server.addr);
    declare_with_timeout(&mut c, 1, "default-q", None);
    declare_with_timeout(&mut c, 1, "patient-q", Some(0));
    c.publish(1, "", "default-q", b"d");
    c.publish(1, "", "patient-q", b"p");
    // A basic.get without no_ack is an unacknowledged delivery too.
    c.open_channel(2);
    assert_eq!(c.get(2, "default-q", false).expect("d").body_str(), "d");
    let (code, reply, _, _) = c.expect_channel_close(2);
    assert_eq!((code, reply), (406, text(2, 300)));
    // x-consumer-timeout 0: no timeout for this queue's deliveries, however long they wait.
    c.open_channel(3);
    let p = c.get(3, "patient-q", false).expect("p");
    assert_eq!(p.body_str(), "p");
    assert!(
        c.is_quiet_for(Duration::from_millis(2500)),
        "a queue with x-consumer-timeout 0 timed out"
    );
    c.ack(3, p.delivery_tag(), false);
    c.round_trip(3);
    // The requeued message is redelivered.
    let d = c.get(1, "default-q", true).expect("d requeued");
    assert!(d.redelivered());
}

#[test]
fn acks_in_time_keep_the_channel_open() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::try_start_in(&tmp.path().join("data"), &["--consumer-timeout", "1500"]).unwrap();
    let mut c = RawClient::open_ch1(server.addr);
    declare_with_timeout(&mut c, 1, "q", None);
    c.consume(1, "q", "ok", false, false);
    // Each message is acked at once; together they span well over the timeout.
    for i in 0..6 {
        c.publish(1, "", "q", format!("m{i}").as_bytes());
        let m = c.expect_message(1);
        assert_eq!(m.body_str(), format!("m{i}"));
        std::thread::sleep(Duration::from_millis(500));
        c.ack(1, m.delivery_tag(), false);
    }
    c.round_trip(1);
}
