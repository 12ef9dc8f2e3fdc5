//! Issue 18: one write holding a `basic.consume` and then a frame that makes the server close the
//! connection used to spin a worker thread forever (the consumer stayed on the connection's pull list after
//! the close released it, so a `select!` branch was always ready). The whole broker froze: no other
//! connection was served and SIGTERM was ignored. Each variant below sends its bytes in ONE write, then
//! checks that the offending connection gets its connection.close, that a connection opened before and a new
//! one keep working, and that the broker still stops cleanly on SIGTERM.

use std::time::Duration;

use mailroom_tests::raw::protocol::{self, bytes::BytesMut, Method, RawProperties};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

/// The 33-byte basic.consume frame from the issue: queue `repro-q`, tag `tag-1`, all flags off.
const CONSUME_REPRO_Q: [u8; 33] = [
    0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x19, 0x00, 0x3c, 0x00, 0x14, 0x00, 0x00, 0x07, b'r', b'e', b'p',
    b'r', b'o', b'-', b'q', 0x05, b't', b'a', b'g', b'-', b'1', 0x00, 0x00, 0x00, 0x00, 0x00, 0xce,
];

fn freeze_variant(server: &Server, witness: &mut RawClient, second: &[u8], code: u16) {
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "repro-q");
    let mut bytes = CONSUME_REPRO_Q.to_vec();
    bytes.extend_from_slice(second);
    c.send_raw(&bytes);
    let (got, text, _, _) = c.expect_connection_close();
    assert_eq!(got, code, "{text}");
    // We never answer close-ok: the server gives up after its closing deadline and closes the socket.
    assert!(
        c.is_closed_by_server(),
        "the server closes the connection after its close deadline"
    );
    // A connection opened before and a brand new one are both served.
    witness.round_trip(1);
    let mut fresh = RawClient::open_ch1(server.addr);
    fresh.round_trip(1);
    fresh.close_connection();
}

fn stops_on_sigterm(mut server: Server) {
    let status = server
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(20))
        .expect("the broker stops on SIGTERM (it did not: frozen)");
    assert!(status.success(), "{status}");
}

#[test]
fn consume_then_reused_tag_in_one_write_530() {
    let server = Server::start();
    let mut witness = RawClient::open_ch1(server.addr);
    // The exact 66 bytes of the issue: the same consume twice; the second reuses the tag (530).
    freeze_variant(&server, &mut witness, &CONSUME_REPRO_Q, 530);
    stops_on_sigterm(server);
}

#[test]
fn consume_then_content_header_without_method_in_one_write_505() {
    let server = Server::start();
    let mut witness = RawClient::open_ch1(server.addr);
    let mut header = BytesMut::new();
    // A content header (and its body) with no basic.publish before it: 505 UNEXPECTED_FRAME.
    protocol::write_content(&mut header, 1, 60, &RawProperties::empty(), b"x", 0);
    freeze_variant(&server, &mut witness, &header, 505);
    stops_on_sigterm(server);
}

#[test]
fn consume_then_tune_ok_while_open_in_one_write_504() {
    let server = Server::start();
    let mut witness = RawClient::open_ch1(server.addr);
    let mut tune_ok = BytesMut::new();
    // connection.tune-ok after the handshake: RabbitMQ's last handle_method0 clause, 504 CHANNEL_ERROR
    // (rabbit_reader.erl: "unexpected method in connection state running").
    protocol::write_method(
        &mut tune_ok,
        0,
        &Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 0,
        }),
    );
    freeze_variant(&server, &mut witness, &tune_ok, 504);
    stops_on_sigterm(server);
}
