//! Channel errors (403/404/405/406) close only their channel; connection errors (501, 503, 504, 505, 530, 540)
//! close the connection with the failing class/method ids. Texts follow RabbitMQ.

use mailroom_tests::raw::protocol::{self, FieldTable, Frame, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn declare(name: &str, durable: bool, exclusive: bool) -> Method {
    Method::QueueDeclare(protocol::QueueDeclare {
        queue: name.into(),
        passive: false,
        durable,
        exclusive,
        auto_delete: false,
        no_wait: false,
        arguments: FieldTable::new(),
    })
}

fn exchange_declare(name: &str, kind: &str) -> Method {
    Method::ExchangeDeclare(protocol::ExchangeDeclare {
        exchange: name.into(),
        kind: kind.into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        no_wait: false,
        arguments: FieldTable::new(),
    })
}

fn consume(queue: &str, tag: &str, exclusive: bool) -> Method {
    Method::BasicConsume(protocol::BasicConsume {
        queue: queue.into(),
        consumer_tag: tag.into(),
        no_local: false,
        no_ack: false,
        exclusive,
        no_wait: false,
        arguments: FieldTable::new(),
    })
}

/// Opens channels 1 and 2; runs `setup`, then sends `m` on channel 1, expects channel.close on 1 with the given
/// code, text and ids; then proves channel 2 and a reopened channel 1 still work.
fn assert_channel_error(
    server: &Server,
    setup: impl FnOnce(&mut RawClient),
    m: Method,
    expected: (u16, &str, u16, u16),
) {
    let mut c = RawClient::open(server.addr, 131_072);
    c.open_channel(1);
    c.open_channel(2);
    setup(&mut c);
    c.send_method(1, m);
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!((code, text.as_str(), cls, mth), expected);
    c.round_trip(2);
    c.open_channel(1);
    c.round_trip(1);
    c.close_connection();
}

/// Sends `m` on `ch` (channel 1 open) and expects connection.close with the given code and ids; returns the text.
fn assert_connection_error(c: &mut RawClient, ch: u16, m: Method, code: u16, ids: (u16, u16)) -> String {
    c.send_method(ch, m);
    let (got, text, cls, mth) = c.expect_connection_close();
    assert_eq!((got, cls, mth), (code, ids.0, ids.1), "{text}");
    assert!(c.is_closed_by_server(), "socket closed after connection.close");
    text
}

// ---- channel errors ----

#[test]
fn consume_from_missing_queue_is_404() {
    let server = Server::start();
    assert_channel_error(
        &server,
        |_| {},
        consume("missing", "", false),
        (404, "NOT_FOUND - no queue 'missing' in vhost '/'", 60, 20),
    );
}

#[test]
fn publish_to_missing_exchange_is_404() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 131_072);
    c.open_channel(1);
    c.open_channel(2);
    c.publish(1, "nox", "rk", b"x");
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (404, "NOT_FOUND - no exchange 'nox' in vhost '/'", 60, 40)
    );
    c.round_trip(2);
}

#[test]
fn declaring_an_amq_queue_is_403() {
    let server = Server::start();
    assert_channel_error(
        &server,
        |_| {},
        declare("amq.foo", false, false),
        (
            403,
            "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'",
            50,
            10,
        ),
    );
}

#[test]
fn declaring_an_amq_exchange_is_403() {
    let server = Server::start();
    assert_channel_error(
        &server,
        |_| {},
        exchange_declare("amq.foo", "direct"),
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
            40,
            10,
        ),
    );
}

#[test]
fn using_another_connections_exclusive_queue_is_405() {
    let server = Server::start();
    let mut owner = RawClient::open_ch1(server.addr);
    owner.declare_queue_with(1, "excl", false, true, false);
    let prefix = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl' in vhost '/'";
    for (m, ids) in [
        (declare("excl", false, true), (50, 10)),
        (consume("excl", "", false), (60, 20)),
        (
            Method::BasicGet(protocol::BasicGet {
                queue: "excl".into(),
                no_ack: true,
            }),
            (60, 70),
        ),
    ] {
        let mut c = RawClient::open(server.addr, 131_072);
        c.open_channel(1);
        c.open_channel(2);
        c.send_method(1, m);
        let (code, text, cls, mth) = c.expect_channel_close(1);
        assert_eq!((code, cls, mth), (405, ids.0, ids.1), "{text}");
        assert!(text.starts_with(prefix), "{text}");
        c.round_trip(2);
    }
    owner.round_trip(1);
}

#[test]
fn redeclare_with_different_durable_is_406() {
    let server = Server::start();
    assert_channel_error(
        &server,
        |c| {
            c.declare_queue(2, "q");
        },
        declare("q", true, false),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'",
            50,
            10,
        ),
    );
}

#[test]
fn ack_of_unknown_delivery_tag_is_406() {
    let server = Server::start();
    assert_channel_error(
        &server,
        |_| {},
        Method::BasicAck(protocol::BasicAck {
            delivery_tag: 99,
            multiple: false,
        }),
        (406, "PRECONDITION_FAILED - unknown delivery tag 99", 60, 80),
    );
}

#[test]
fn queue_delete_if_unused_with_a_consumer_is_406() {
    let server = Server::start();
    assert_channel_error(
        &server,
        |c| {
            c.declare_queue(2, "used");
            c.consume(2, "used", "c1", false, false);
        },
        Method::QueueDelete(protocol::QueueDelete {
            queue: "used".into(),
            if_unused: true,
            if_empty: false,
            no_wait: false,
        }),
        (
            406,
            "PRECONDITION_FAILED - queue 'used' in vhost '/' in use",
            50,
            40,
        ),
    );
}

#[test]
fn queue_delete_if_empty_with_messages_is_406() {
    let server = Server::start();
    assert_channel_error(
        &server,
        |c| {
            c.declare_queue(2, "full");
            c.publish(2, "", "full", b"m");
        },
        Method::QueueDelete(protocol::QueueDelete {
            queue: "full".into(),
            if_unused: false,
            if_empty: true,
            no_wait: false,
        }),
        (
            406,
            "PRECONDITION_FAILED - queue 'full' in vhost '/' not empty",
            50,
            40,
        ),
    );
}

#[test]
fn tx_commit_without_select_is_406() {
    let server = Server::start();
    assert_channel_error(
        &server,
        |_| {},
        Method::TxCommit(protocol::TxCommit),
        (406, "PRECONDITION_FAILED - channel is not transactional", 90, 20),
    );
}

// ---- connection errors ----

#[test]
fn publish_immediate_is_540() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "q");
    c.publish_full(
        1,
        protocol::BasicPublish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        },
        &protocol::RawProperties::empty(),
        b"now",
    );
    let (code, text, cls, mth) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
    );
    assert!(c.is_closed_by_server());
}

#[test]
fn qos_prefetch_size_is_540() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let text = assert_connection_error(
        &mut c,
        1,
        Method::BasicQos(protocol::BasicQos {
            prefetch_size: 1,
            prefetch_count: 0,
            global: false,
        }),
        540,
        (60, 10),
    );
    assert_eq!(text, "NOT_IMPLEMENTED - prefetch_size!=0 (1)");
}

#[test]
fn duplicate_consumer_tag_is_530() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "q");
    c.consume(1, "q", "ctag", false, false);
    let text = assert_connection_error(&mut c, 1, consume("q", "ctag", false), 530, (60, 20));
    assert_eq!(text, "NOT_ALLOWED - attempt to reuse consumer tag 'ctag'");
}

#[test]
fn body_frame_without_method_is_505() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let mut b = protocol::bytes::BytesMut::new();
    Frame::Body(1, protocol::bytes::Bytes::from_static(b"orphan")).encode(&mut b);
    c.send_raw(&b);
    let (code, text, cls, mth) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0
        )
    );
    assert!(c.is_closed_by_server());
}

#[test]
fn content_header_after_a_non_content_method_is_505() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let mut b = protocol::bytes::BytesMut::new();
    protocol::write_method(&mut b, 1, &declare("q", false, false));
    protocol::write_content(&mut b, 1, 60, &protocol::RawProperties::empty(), b"", 131_072);
    c.send_raw(&b);
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 505, "{text}");
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    );
}

#[test]
fn method_instead_of_content_header_is_505() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let mut b = protocol::bytes::BytesMut::new();
    protocol::write_method(
        &mut b,
        1,
        &Method::BasicPublish(protocol::BasicPublish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        }),
    );
    protocol::write_method(&mut b, 1, &declare("q", false, false));
    c.send_raw(&b);
    let (code, text, cls, mth) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            60,
            40
        )
    );
}

#[test]
fn heartbeat_on_a_non_zero_channel_is_505() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.send_raw(&[8, 0, 1, 0, 0, 0, 0, 0xCE]);
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 505, "{text}");
    assert!(text.starts_with("UNEXPECTED_FRAME - "), "{text}");
}

#[test]
fn bad_frame_end_octet_is_501() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let mut b = protocol::bytes::BytesMut::new();
    protocol::write_method(&mut b, 1, &declare("q", false, false));
    let n = b.len();
    b[n - 1] = 0xAB;
    c.send_raw(&b);
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 501, "{text}");
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
    assert!(c.is_closed_by_server());
}

#[test]
fn unknown_frame_type_is_501() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.send_raw(&[9, 0, 1, 0, 0, 0, 0, 0xCE]);
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 501, "{text}");
    assert!(text.starts_with("FRAME_ERROR - "), "{text}");
}

#[test]
fn unknown_exchange_type_is_503() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let text = assert_connection_error(&mut c, 1, exchange_declare("x", "foo"), 503, (40, 10));
    assert_eq!(text, "COMMAND_INVALID - unknown exchange type 'foo'");
}

/// RabbitMQ (rabbit_reader:handle_method0/2): a non-connection method on channel 0 once the connection runs
/// is `CHANNEL_ERROR - unexpected method in connection state running`, with the method's ids.
#[test]
fn non_connection_method_on_channel_0_is_a_connection_error() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let text = assert_connection_error(&mut c, 0, declare("q", false, false), 504, (50, 10));
    assert_eq!(
        text,
        "CHANNEL_ERROR - unexpected method in connection state running"
    );
}

#[test]
fn unknown_method_is_540() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    // class 60, method 999: a method frame the protocol does not define.
    c.send_raw(&[1, 0, 1, 0, 0, 0, 4, 0, 60, 0x03, 0xE7, 0xCE]);
    let (code, text, cls, mth) = c.expect_connection_close();
    assert_eq!((code, cls, mth), (540, 60, 999), "{text}");
    assert!(text.starts_with("NOT_IMPLEMENTED - "), "{text}");
}
