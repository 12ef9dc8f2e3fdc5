//! Issue 12: single active consumer failover keeps order. When the active consumer goes away with
//! unacknowledged messages, they go back to their original positions and the next active consumer gets them
//! first, in order: m0*, m1*, m2, m3 (not m2, m3, m0*, m1*).
//!
//! RabbitMQ's classic queue does this in one step when a channel goes down
//! (deps/rabbit/src/rabbit_amqqueue_process.erl `handle_ch_down/2`: the channel's consumers are erased, the
//! new single active consumer is chosen, then `requeue_and_run(ChAckTags, ...)` puts the unacked messages back
//! before anything is delivered to it); a requeued message goes back to its original position
//! (rabbit_variable_queue keeps the seq id). Raw AMQP clients against the real broker, three ways for the
//! active consumer to go: channel.close, connection.close, and the TCP connection dropped.
//!
//! The broker runs with its debug-build test hook `MAILROOM_TEST_RELEASE_PAUSE_MS`: a channel that goes away
//! waits between the two halves of its release. Before issue 12's fix a channel cancelled its consumers
//! first and requeued after, so the successor (another connection's task, running meanwhile) could take m2
//! and m3 in between; the pause makes that window wide instead of a rare race.

use mailroom_tests::raw::protocol::{self, FieldTable, FieldValue, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn declare_sac(c: &mut RawClient, name: &str) {
    let mut args = FieldTable::new();
    args.insert("x-single-active-consumer", FieldValue::Bool(true));
    let m = c.call(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: args,
        }),
    );
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
}

fn qos(c: &mut RawClient, prefetch: u16) {
    let m = c.call(
        1,
        Method::BasicQos(protocol::BasicQos {
            prefetch_size: 0,
            prefetch_count: prefetch,
            global: false,
        }),
    );
    assert!(matches!(m, Method::BasicQosOk(_)), "{m:?}");
}

#[derive(Clone, Copy, Debug)]
enum Goes {
    ChannelClose,
    ConnectionClose,
    SocketDropped,
}

/// m0..m3 in a SAC queue; A (prefetch 2) holds m0 and m1 unacked, B waits; A goes; B must get m0*, m1*, m2, m3.
fn failover(goes: Goes) {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::try_start_with_env(
        &tmp.path().join("data"),
        &[],
        &[("MAILROOM_TEST_RELEASE_PAUSE_MS", "300")],
    )
    .expect("broker starts");
    let q = format!("sac-{goes:?}");
    let mut a = RawClient::open_ch1(server.addr);
    declare_sac(&mut a, &q);
    for i in 0..4 {
        a.publish(1, "", &q, format!("m{i}").as_bytes());
    }
    qos(&mut a, 2);
    a.consume(1, &q, "a", false, false);
    let got: Vec<String> = (0..2).map(|_| a.expect_message(1).body_str()).collect();
    assert_eq!(got, ["m0", "m1"]);

    let mut b = RawClient::open_ch1(server.addr);
    qos(&mut b, 10);
    b.consume(1, &q, "b", false, false);
    assert!(
        b.is_quiet_for(std::time::Duration::from_millis(200)),
        "B is not the active consumer yet"
    );

    match goes {
        Goes::ChannelClose => a.close_channel(1),
        Goes::ConnectionClose => a.close_connection(),
        Goes::SocketDropped => drop(a),
    }

    let got: Vec<(String, bool)> = (0..4)
        .map(|_| {
            let m = b.expect_message(1);
            (m.body_str(), m.redelivered())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("m0".to_string(), true),
            ("m1".to_string(), true),
            ("m2".to_string(), false),
            ("m3".to_string(), false)
        ],
        "{goes:?}"
    );
}

#[test]
fn sac_failover_on_channel_close_keeps_order() {
    failover(Goes::ChannelClose);
}

#[test]
fn sac_failover_on_connection_close_keeps_order() {
    failover(Goes::ConnectionClose);
}

#[test]
fn sac_failover_on_dropped_socket_keeps_order() {
    failover(Goes::SocketDropped);
}
