//! Issue 12: closing with frames still in flight. A client may queue many publishes and send
//! connection.close right behind them in one burst (amqplib does). RabbitMQ handles the frames that arrived
//! before the close in order, answers close-ok, and then (rabbit_reader.erl, `handle_exception` /
//! `terminate`: the socket is closed only after the client's close handshake, and the reader keeps reading
//! until then) never resets the connection under the client. Mailroom shuts its write side down after
//! close-ok and reads and discards until the client's EOF, so the client sees close-ok and a clean EOF.

use std::io::{ErrorKind, Read, Write};

use mailroom_tests::raw::protocol::{self, bytes::BytesMut, Frame, Method, RawProperties};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn publish_into(buf: &mut BytesMut, queue: &str, i: u32) {
    protocol::write_method(
        buf,
        1,
        &Method::BasicPublish(protocol::BasicPublish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        }),
    );
    protocol::write_content(buf, 1, 60, &RawProperties::empty(), format!("m{i}").as_bytes(), 0);
}

/// Reads what is left: true on a clean EOF, false on a reset.
fn ends_with_clean_eof(c: &mut RawClient) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

/// The client may still be writing what it had queued after the close handshake (amqplib is): the server
/// keeps reading and discarding until our EOF, so none of these writes meets a reset, and we read a clean EOF.
fn still_writing_then_clean_eof(c: &mut RawClient, queue: &str) {
    let mut tail = BytesMut::new();
    for i in 0..500 {
        publish_into(&mut tail, queue, i);
    }
    for _ in 0..5 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let Err(e) = c.stream.write_all(&tail) {
            panic!("writing after the close handshake failed: {e} (the server closed under us)");
        }
    }
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(ends_with_clean_eof(c), "the server reset the connection");
}

fn queue_len(server: &Server, queue: &str) -> u32 {
    let mut c = RawClient::open_ch1(server.addr);
    let n = c.declare_queue(1, queue).message_count;
    c.close_connection();
    n
}

#[test]
fn ten_thousand_publishes_and_close_in_one_write_get_close_ok_and_eof() {
    let server = Server::start();
    for round in 0..3 {
        let queue = format!("inflight-{round}");
        let mut c = RawClient::open_ch1(server.addr);
        c.declare_queue(1, &queue);
        let mut burst = BytesMut::new();
        for i in 0..10_000 {
            publish_into(&mut burst, &queue, i);
        }
        protocol::write_method(
            &mut burst,
            0,
            &Method::ConnectionClose(protocol::ConnectionClose {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            }),
        );
        // What amqplib does in effect (it writes the close ahead of its buffered publishes): frames after
        // the close, still unread when the server is done. They are discarded, and must not turn into a reset.
        for i in 0..2_000 {
            publish_into(&mut burst, &queue, i);
        }
        c.send_raw(&burst);
        match c.read_frame() {
            Some(Frame::Method(0, Method::ConnectionCloseOk(_))) => {}
            other => panic!("round {round}: expected close-ok, got {other:?}"),
        }
        still_writing_then_clean_eof(&mut c, &queue);
        assert_eq!(
            queue_len(&server, &queue),
            10_000,
            "every publish before the close was routed, none after"
        );
    }
}

#[test]
fn server_initiated_close_discards_the_rest_until_close_ok_then_eof() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "srv-close");
    let mut burst = BytesMut::new();
    for i in 0..3_000 {
        publish_into(&mut burst, "srv-close", i);
    }
    // A heartbeat on channel 1: 505 UNEXPECTED_FRAME, a connection error (rabbit_reader: "heartbeat frame
    // on non-zero channel"). Everything after it is discarded until close-ok.
    burst.extend_from_slice(&[8, 0, 1, 0, 0, 0, 0, 0xce]);
    for i in 0..3_000 {
        publish_into(&mut burst, "srv-close", i);
    }
    c.send_raw(&burst);
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 505, "{text}");
    still_writing_then_clean_eof(&mut c, "srv-close");
    assert_eq!(
        queue_len(&server, "srv-close"),
        3_000,
        "the publishes before the error, none after"
    );
}
