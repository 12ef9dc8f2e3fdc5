//! Malformed input from one connection closes that connection with its code; a connection opened before keeps
//! working throughout (publish/get round trip after each bad one).

use mailroom_tests::raw::protocol::{self, Frame, Method, RawProperties};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn publish_method(rk: &str) -> Method {
    Method::BasicPublish(protocol::BasicPublish {
        exchange: "".into(),
        routing_key: rk.into(),
        mandatory: false,
        immediate: false,
    })
}

#[test]
fn bad_connections_close_with_their_codes_while_an_earlier_one_keeps_working() {
    let server = Server::start();
    let mut witness = RawClient::open_ch1(server.addr);
    witness.round_trip(1);

    // 1. Garbage after the handshake: an unknown frame type.
    {
        let mut c = RawClient::open_ch1(server.addr);
        let mut garbage = vec![0xFFu8, 0x13, 0x37, 0, 0, 0, 4];
        garbage.extend((0..1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
        c.send_raw(&garbage);
        let (code, text, _, _) = c.expect_connection_close();
        assert_eq!(code, 501, "{text}");
        assert!(text.starts_with("FRAME_ERROR - "), "{text}");
        assert!(c.is_closed_by_server());
    }
    witness.round_trip(1);

    // 2. A frame larger than the negotiated frame_max (4096; RabbitMQ tolerates 8 bytes over).
    {
        let mut c = RawClient::open(server.addr, 4096);
        c.open_channel(1);
        c.declare_queue(1, "big");
        let mut b = protocol::bytes::BytesMut::new();
        protocol::write_method(&mut b, 1, &publish_method("big"));
        // Header says 8000 bytes; one body frame carries all of them (payload 8000 > 4088 + 8).
        protocol::write_content(&mut b, 1, 60, &RawProperties::empty(), &[1u8; 8000], 0);
        c.send_raw(&b);
        let (code, text, _, _) = c.expect_connection_close();
        assert_eq!(code, 501, "{text}");
        assert!(text.starts_with("FRAME_ERROR - "), "{text}");
        assert!(c.is_closed_by_server());
    }
    witness.round_trip(1);
    // The oversized message was not enqueued.
    assert!(witness.get(1, "big", true).is_none());

    // 3. A body longer than its content header said.
    {
        let mut c = RawClient::open_ch1(server.addr);
        c.declare_queue(1, "over");
        let mut b = protocol::bytes::BytesMut::new();
        protocol::write_method(&mut b, 1, &publish_method("over"));
        let at = b.len();
        protocol::write_content(&mut b, 1, 60, &RawProperties::empty(), &[0u8; 5], 0);
        // Rewrite the header's body_size (offset: 7 frame header + 2 class + 2 weight) to 5, then a 10-byte body.
        b.truncate(at);
        protocol::write_content(&mut b, 1, 60, &RawProperties::empty(), &[0u8; 10], 0);
        b[at + 7 + 4..at + 7 + 12].copy_from_slice(&5u64.to_be_bytes());
        c.send_raw(&b);
        let (code, text, _, _) = c.expect_connection_close();
        assert_eq!(code, 501, "{text}");
        assert!(text.starts_with("FRAME_ERROR - "), "{text}");
        assert!(c.is_closed_by_server());
    }
    witness.round_trip(1);
    assert!(witness.get(1, "over", true).is_none());

    // 4. A method on a channel that was never opened.
    {
        let mut c = RawClient::open(server.addr, 131_072);
        c.send_method(
            7,
            Method::BasicGet(protocol::BasicGet {
                queue: "over".into(),
                no_ack: true,
            }),
        );
        let (code, text, cls, mth) = c.expect_connection_close();
        assert_eq!((code, cls, mth), (504, 60, 70), "{text}");
        assert!(text.starts_with("CHANNEL_ERROR - "), "{text}");
        assert!(c.is_closed_by_server());
    }
    witness.round_trip(1);

    // 5. Method arguments cut short.
    {
        let mut c = RawClient::open_ch1(server.addr);
        // queue.declare (50/10) with only the reserved short and half a queue name.
        c.send_raw(&[1, 0, 1, 0, 0, 0, 9, 0, 50, 0, 10, 0, 0, 10, b'a', b'b', 0xCE]);
        let (code, text, cls, mth) = c.expect_connection_close();
        assert_eq!((code, cls, mth), (501, 50, 10), "{text}");
        assert!(c.is_closed_by_server());
    }
    witness.round_trip(1);

    // 6. A socket that just drops mid-frame.
    {
        let mut c = RawClient::open_ch1(server.addr);
        c.send_raw(&[1, 0, 1, 0, 0, 0x10, 0]);
        drop(c);
    }
    witness.round_trip(1);

    // 7. A heartbeat frame with a payload.
    {
        let mut c = RawClient::open_ch1(server.addr);
        c.send_raw(&[8, 0, 0, 0, 0, 0, 2, 1, 2, 0xCE]);
        let (code, text, _, _) = c.expect_connection_close();
        assert_eq!(code, 501, "{text}");
    }
    witness.round_trip(1);
    witness.close_connection();
    let _ = Frame::Heartbeat(0);
}
