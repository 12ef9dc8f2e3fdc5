//! Durable declares pipelined on one channel share flush rounds (issue 17: a burst of 10,000 declares takes
//! seconds): definition methods are handled while earlier replies wait for their round, and every reply
//! still goes out in request order, as from a sequential channel (the AMQP model a RabbitMQ channel
//! process follows). A channel error met on the way is sent after the replies before it; the methods after
//! it are dropped, as a closing channel drops them.

use mailroom_tests::raw::{protocol, RawClient};
use mailroom_tests::Server;
use protocol::bytes::BytesMut;
use protocol::{FieldTable, Frame, Method};

fn declare(name: &str, passive: bool) -> Method {
    Method::QueueDeclare(protocol::QueueDeclare {
        queue: name.into(),
        passive,
        durable: true,
        exclusive: false,
        auto_delete: false,
        no_wait: false,
        arguments: FieldTable::new(),
    })
}

fn next_method(c: &mut RawClient) -> (u16, Method) {
    loop {
        match c.read_frame() {
            Some(Frame::Method(ch, m)) => return (ch, m),
            Some(_) => continue,
            None => panic!("connection closed"),
        }
    }
}

#[test]
fn pipelined_durable_declares_are_answered_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(&tmp.path().join("data"), &[]);
    let mut c = RawClient::open_ch1(server.addr);
    let mut b = BytesMut::new();
    const N: usize = 2_000;
    for i in 0..N {
        protocol::write_method(&mut b, 1, &declare(&format!("pipe-{i}"), false));
        // A bind and an existing-queue redeclare in between: replies of every kind keep their place.
        if i % 100 == 99 {
            protocol::write_method(
                &mut b,
                1,
                &Method::from(protocol::QueueBind {
                    queue: format!("pipe-{i}").as_str().into(),
                    exchange: "amq.direct".into(),
                    routing_key: format!("k{i}").as_str().into(),
                    no_wait: false,
                    arguments: FieldTable::new(),
                }),
            );
            protocol::write_method(&mut b, 1, &declare("pipe-0", true));
        }
    }
    c.send_raw(&b);
    for i in 0..N {
        match next_method(&mut c) {
            (1, Method::QueueDeclareOk(ok)) => assert_eq!(ok.queue.to_string(), format!("pipe-{i}")),
            other => panic!("reply {i}: {other:?}"),
        }
        if i % 100 == 99 {
            assert!(matches!(next_method(&mut c), (1, Method::QueueBindOk(_))));
            match next_method(&mut c) {
                (1, Method::QueueDeclareOk(ok)) => assert_eq!(ok.queue.to_string(), "pipe-0"),
                other => panic!("passive redeclare: {other:?}"),
            }
        }
    }
    c.round_trip(1);
}

/// RabbitMQ answers the methods before a failing one and then closes the channel; the declare after the
/// failing passive declare is not made.
#[test]
fn an_error_in_a_pipelined_burst_comes_after_the_replies_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(&tmp.path().join("data"), &[]);
    let mut c = RawClient::open_ch1(server.addr);
    let mut b = BytesMut::new();
    protocol::write_method(&mut b, 1, &declare("burst-a", false));
    protocol::write_method(&mut b, 1, &declare("burst-b", false));
    protocol::write_method(&mut b, 1, &declare("burst-missing", true));
    protocol::write_method(&mut b, 1, &declare("burst-after", false));
    c.send_raw(&b);
    for name in ["burst-a", "burst-b"] {
        match next_method(&mut c) {
            (1, Method::QueueDeclareOk(ok)) => assert_eq!(ok.queue.to_string(), name),
            other => panic!("{name}: {other:?}"),
        }
    }
    match next_method(&mut c) {
        (1, Method::ChannelClose(close)) => {
            assert_eq!(close.reply_code, 404);
            assert_eq!(
                close.reply_text.to_string(),
                "NOT_FOUND - no queue 'burst-missing' in vhost '/'"
            );
        }
        other => panic!("expected channel.close 404, got {other:?}"),
    }
    c.send_method(1, Method::ChannelCloseOk(protocol::ChannelCloseOk));
    c.open_channel(2);
    for (name, exists) in [("burst-a", true), ("burst-b", true), ("burst-after", false)] {
        c.send_method(2, declare(name, true));
        match next_method(&mut c) {
            (2, Method::QueueDeclareOk(_)) => assert!(exists, "{name} was declared"),
            (2, Method::ChannelClose(close)) => {
                assert!(!exists, "{name} is missing: {}", close.reply_text);
                assert_eq!(close.reply_code, 404);
                c.send_method(2, Method::ChannelCloseOk(protocol::ChannelCloseOk));
                c.open_channel(2);
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
