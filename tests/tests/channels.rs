//! Channels: open/close both ways, unopened channels, double open, channel_max, interleaving, and what
//! happens to a channel's frames after a channel error.

use mailroom_tests::raw::protocol::{self, Frame, Method, RawProperties};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn passive_declare(name: &str) -> Method {
    Method::QueueDeclare(protocol::QueueDeclare {
        queue: name.into(),
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        no_wait: false,
        arguments: protocol::FieldTable::new(),
    })
}

#[test]
fn client_opens_and_closes_channels_and_can_reuse_the_number() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 131_072);
    c.open_channel(1);
    c.open_channel(2);
    c.round_trip(1);
    c.close_channel(1);
    c.round_trip(2);
    c.open_channel(1);
    c.round_trip(1);
    c.close_channel(1);
    c.close_channel(2);
    c.close_connection();
}

#[test]
fn server_closes_a_channel_and_the_number_can_be_reopened_after_close_ok() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 131_072);
    c.open_channel(3);
    c.send_method(3, passive_declare("missing"));
    let (code, text, cls, mth) = c.expect_channel_close(3);
    assert_eq!((code, cls, mth), (404, 50, 10), "{text}");
    assert_eq!(text, "NOT_FOUND - no queue 'missing' in vhost '/'");
    c.open_channel(3);
    c.round_trip(3);
}

#[test]
fn method_on_unopened_channel_is_504() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 131_072);
    c.send_method(
        5,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "q".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: protocol::FieldTable::new(),
        }),
    );
    let (code, text, cls, mth) = c.expect_connection_close();
    assert_eq!((code, cls, mth), (504, 50, 10), "{text}");
    assert_eq!(text, "CHANNEL_ERROR - expected 'channel.open'");
    assert!(c.is_closed_by_server());
}

#[test]
fn second_channel_open_on_the_same_channel_is_504() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 131_072);
    c.open_channel(1);
    c.send_method(1, Method::ChannelOpen(protocol::ChannelOpen));
    let (code, text, cls, mth) = c.expect_connection_close();
    assert_eq!((code, cls, mth), (504, 20, 10), "{text}");
    assert_eq!(text, "CHANNEL_ERROR - second 'channel.open' seen");
    assert!(c.is_closed_by_server());
}

#[test]
fn channel_number_above_channel_max_is_530() {
    let server = Server::start();
    let (mut c, t) = RawClient::until_tune(server.addr);
    c.send_method(
        0,
        Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: 10,
            frame_max: t.frame_max,
            heartbeat: 0,
        }),
    );
    c.send_method(
        0,
        Method::ConnectionOpen(protocol::ConnectionOpen {
            virtual_host: "/".into(),
        }),
    );
    assert!(matches!(c.expect_method(), Method::ConnectionOpenOk(_)));
    c.open_channel(10); // the highest allowed number
    c.send_method(11, Method::ChannelOpen(protocol::ChannelOpen));
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 530, "{text}");
    assert!(text.starts_with("NOT_ALLOWED - "), "{text}");
    assert!(c.is_closed_by_server());
}

#[test]
fn frames_of_different_channels_interleave() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 4096);
    c.open_channel(1);
    c.open_channel(2);
    c.declare_queue(1, "q1");
    c.declare_queue(2, "q2");
    let body1: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let body2 = b"second channel".to_vec();
    // ch1: method + header + first body frame, then a whole publish on ch2, then the rest of ch1's body.
    let mut b = protocol::bytes::BytesMut::new();
    protocol::write_method(
        &mut b,
        1,
        &Method::BasicPublish(protocol::BasicPublish {
            exchange: "".into(),
            routing_key: "q1".into(),
            mandatory: false,
            immediate: false,
        }),
    );
    protocol::write_content(&mut b, 1, 60, &RawProperties::empty(), &body1, 4096);
    let ch1_frames = b.split();
    // Find the end of the header frame + first body frame.
    let first_end = frame_end(&ch1_frames, 0);
    let header_end = frame_end(&ch1_frames, first_end);
    let body1_end = frame_end(&ch1_frames, header_end);
    c.send_raw(&ch1_frames[..body1_end]);
    c.publish(2, "", "q2", &body2);
    c.send_raw(&ch1_frames[body1_end..]);
    let m1 = c.get(1, "q1", true).expect("q1 message");
    assert_eq!(m1.body, body1);
    let m2 = c.get(2, "q2", true).expect("q2 message");
    assert_eq!(m2.body, body2);
}

fn frame_end(buf: &[u8], at: usize) -> usize {
    let size = u32::from_be_bytes([buf[at + 3], buf[at + 4], buf[at + 5], buf[at + 6]]) as usize;
    at + 7 + size + 1
}

#[test]
fn frames_after_a_channel_error_are_dropped_until_close_ok() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 4096);
    c.open_channel(1);
    c.open_channel(2);
    c.declare_queue(2, "keep");
    // The error, and -- before we read the server's channel.close -- more traffic on the same channel, as an
    // asynchronous client would send it: a publish (method, header, body frames) and a synchronous method.
    c.send_method(1, passive_declare("missing"));
    c.publish(1, "", "keep", &vec![7u8; 10_000]);
    c.send_method(1, passive_declare("keep"));
    let (code, _, _, _) = c.expect_channel_close(1);
    assert_eq!(code, 404);
    // Nothing else comes back for channel 1 (no second close, no declare-ok), and the connection still works.
    c.round_trip(2);
    c.open_channel(1);
    c.round_trip(1);
    assert!(
        c.get(2, "keep", true).is_none(),
        "the dropped publish must not be enqueued"
    );
    // A body frame alone on a channel that is waiting for close-ok is dropped too.
    c.send_method(1, passive_declare("missing"));
    let mut b = protocol::bytes::BytesMut::new();
    Frame::Body(1, protocol::bytes::Bytes::from_static(b"stray")).encode(&mut b);
    c.send_raw(&b);
    let (code, _, _, _) = c.expect_channel_close(1);
    assert_eq!(code, 404);
    c.round_trip(2);
}
