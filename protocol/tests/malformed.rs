//! Bad input of every kind yields its typed error (with RabbitMQ's reply code), never a panic.

use proptest::prelude::*;
use protocol::bytes::{BufMut, Bytes, BytesMut};
use protocol::*;
use tokio_util::codec::Decoder;

fn frame(frame_type: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(frame_type);
    b.put_u16(channel);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.put_u8(FRAME_END);
    b
}

fn decode(bytes: &[u8]) -> Result<Option<Frame>, ProtocolError> {
    FrameCodec::new().decode(&mut BytesMut::from(bytes))
}

#[test]
fn incomplete_input_is_not_an_error() {
    let whole = frame(FRAME_BODY, 1, b"hello");
    for n in 0..whole.len() {
        let mut buf = BytesMut::from(&whole[..n]);
        assert_eq!(FrameCodec::new().decode(&mut buf), Ok(None), "prefix {n}");
        assert_eq!(&buf[..], &whole[..n], "a partial frame is left in place");
    }
    let mut buf = whole.clone();
    buf.extend_from_slice(&whole[..3]);
    let mut codec = FrameCodec::new();
    assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Body(1, _)))));
    assert_eq!(codec.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 3);
}

#[test]
fn oversized_frame_is_rejected_before_buffering() {
    let mut buf = BytesMut::with_capacity(16);
    buf.put_u8(FRAME_BODY);
    buf.put_u16(1);
    buf.put_u32(0xFFFF_FFF0);
    let cap = buf.capacity();
    let err = FrameCodec::new().decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::FrameTooLarge {
            size: 0xFFFF_FFF0,
            max: FRAME_MIN_SIZE - 8
        }
    );
    assert_eq!(err.reply_code(), reply::FRAME_ERROR);
    assert_eq!(buf.capacity(), cap, "no reservation for a rejected frame");
    assert_eq!(buf.len(), 7);

    // Unlimited: accepted, but the up-front reservation is capped.
    let mut codec = FrameCodec::new();
    codec.set_max_frame_size(0);
    assert_eq!(codec.decode(&mut buf), Ok(None));
    assert!(buf.capacity() <= (1 << 20) + 64, "reserved {}", buf.capacity());
}

#[test]
fn frame_max_counts_the_whole_frame_with_rabbitmq_tolerance() {
    let mut codec = FrameCodec::new();
    codec.set_max_frame_size(4096);
    assert_eq!(codec.max_frame_size(), 4096);
    // 4088-byte payload = 4096-byte frame: fine. RabbitMQ tolerates up to 8 more.
    for n in [4088usize, 4096] {
        let mut b = frame(FRAME_BODY, 1, &vec![0; n]);
        assert!(matches!(codec.decode(&mut b), Ok(Some(Frame::Body(1, p))) if p.len() == n));
    }
    let mut b = frame(FRAME_BODY, 1, &[0; 4097]);
    assert_eq!(
        codec.decode(&mut b),
        Err(ProtocolError::FrameTooLarge {
            size: 4097,
            max: 4088
        })
    );
    codec.set_size_tolerance(0);
    let mut b = frame(FRAME_BODY, 1, &[0; 4089]);
    assert!(matches!(
        codec.decode(&mut b),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

#[test]
fn bad_end_octet() {
    let mut b = frame(FRAME_HEARTBEAT, 0, b"");
    let last = b.len() - 1;
    b[last] = 0x00;
    let err = decode(&b).unwrap_err();
    assert_eq!(err, ProtocolError::BadFrameEnd(0));
    assert_eq!(err.reply_code(), 501);
}

#[test]
fn unknown_frame_type() {
    let err = decode(&frame(4, 0, b"")).unwrap_err();
    assert_eq!(err, ProtocolError::UnknownFrameType(4));
    assert_eq!(err.reply_code(), 501);
    // Even before the payload has arrived.
    assert_eq!(
        decode(&[b'A', b'M', b'Q', b'P', 0, 0, 9]),
        Err(ProtocolError::UnknownFrameType(b'A'))
    );
}

#[test]
fn heartbeat_with_payload() {
    let err = decode(&frame(FRAME_HEARTBEAT, 0, b"x")).unwrap_err();
    assert_eq!(err, ProtocolError::BadHeartbeat(1));
    assert_eq!(err.reply_code(), 501);
}

#[test]
fn unknown_class_or_method() {
    for (c, m) in [(99u16, 1u16), (60, 41), (0, 0)] {
        let mut p = BytesMut::new();
        p.put_u16(c);
        p.put_u16(m);
        let err = Method::decode(p.freeze()).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::UnknownMethod {
                class_id: c,
                method_id: m
            }
        );
        assert_eq!(err.reply_code(), reply::NOT_IMPLEMENTED);
        assert_eq!((err.class_id(), err.method_id()), (c, m));
    }
    let err = decode(&frame(FRAME_METHOD, 1, &[0, 99, 0, 1])).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::UnknownMethod {
            class_id: 99,
            method_id: 1
        }
    ));
}

#[test]
fn truncated_and_overlong_method_arguments() {
    let full = Method::from(BasicPublish {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        mandatory: false,
        immediate: false,
    })
    .to_bytes();
    let err = Method::decode(full.slice(..full.len() - 1)).unwrap_err();
    assert!(matches!(err.root(), ProtocolError::Malformed(_)), "{err:?}");
    assert_eq!(err.reply_code(), reply::FRAME_ERROR);
    assert_eq!((err.class_id(), err.method_id()), (60, 40));
    assert!(err.reply_text().contains("basic.publish"), "{}", err.reply_text());

    let mut long = BytesMut::from(&full[..]);
    long.put_u8(0);
    let err = Method::decode(long.freeze()).unwrap_err();
    assert!(matches!(err.root(), ProtocolError::Malformed(_)));
    assert_eq!((err.class_id(), err.method_id()), (60, 40));

    for short in [&[][..], &[0, 60][..], &[0, 60, 0]] {
        let err = Method::decode(Bytes::copy_from_slice(short)).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)));
    }
}

#[test]
fn invalid_utf8_shortstr() {
    // queue.declare with queue name 0xFF 0xFE
    let p = [0, 50, 0, 10, 0, 0, 2, 0xFF, 0xFE, 0, 0, 0, 0, 0];
    let err = Method::decode(Bytes::copy_from_slice(&p)).unwrap_err();
    assert_eq!(err.root(), &ProtocolError::InvalidUtf8);
    assert_eq!(err.reply_code(), 501);
    assert_eq!(err.reply_text(), "Malformed UTF-8 in shortstr");
    assert_eq!((err.class_id(), err.method_id()), (50, 10));
}

#[test]
fn unknown_field_type_in_arguments() {
    // queue.declare "q", no bits, arguments {"k": 'Z'}
    let p = [0, 50, 0, 10, 0, 0, 1, b'q', 0, 0, 0, 0, 3, 1, b'k', b'Z'];
    let err = Method::decode(Bytes::copy_from_slice(&p)).unwrap_err();
    assert_eq!(err.root(), &ProtocolError::UnknownFieldType(b'Z'));
    assert_eq!(err.reply_code(), 501);
    assert!(err.reply_text().contains('Z'));
}

#[test]
fn deep_nesting_in_arguments() {
    // queue.declare "q" with arguments {"d": F{"d": F{...}}} nested 200 deep
    let mut table = vec![0u8, 0, 0, 0]; // innermost empty table
    for _ in 0..200 {
        let mut outer = Vec::new();
        let len = (1 + 1 + 1 + table.len()) as u32;
        outer.extend_from_slice(&len.to_be_bytes());
        outer.extend_from_slice(&[1, b'd', b'F']);
        outer.extend_from_slice(&table);
        table = outer;
    }
    let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    p.extend_from_slice(&table);
    let err = Method::decode(Bytes::from(p)).unwrap_err();
    assert_eq!(err.root(), &ProtocolError::NestingTooDeep);
    assert_eq!(err.reply_code(), 501);
}

#[test]
fn truncated_content_header() {
    let err = decode(&frame(FRAME_HEADER, 1, &[0, 60, 0, 0, 0, 0])).unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed(_)));
    assert_eq!(err.reply_code(), 501);
}

#[test]
fn reply_texts_carry_no_code_prefix() {
    let errs = [
        ProtocolError::FrameTooLarge {
            size: 5000,
            max: 4088,
        },
        ProtocolError::BadFrameEnd(1),
        ProtocolError::UnknownFrameType(9),
        ProtocolError::UnexpectedFrame("x".into()),
        ProtocolError::NestingTooDeep,
        ProtocolError::BodyOverrun,
    ];
    for e in errs {
        let text = e.reply_text();
        assert!(!text.starts_with(reply::name(e.reply_code())), "{text}");
        assert!(reply::is_hard_error(e.reply_code()));
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200), max in prop_oneof![Just(0u32), Just(4096), 8u32..64]) {
        let mut codec = FrameCodec::new();
        codec.set_max_frame_size(max);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }

    #[test]
    fn random_frames_with_valid_envelope_never_panic(frame_type in prop_oneof![Just(1u8), Just(2), Just(3), Just(8)], payload in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut buf = frame(frame_type, 1, &payload);
        let _ = FrameCodec::new().decode(&mut buf);
    }

    #[test]
    fn random_method_payloads_never_panic(class in prop_oneof![Just(10u16), Just(20), Just(30), Just(40), Just(50), Just(60), Just(85), Just(90), any::<u16>()], method in prop_oneof![(0u16..12).prop_map(|m| m * 10), (0u16..12).prop_map(|m| m * 10 + 1), any::<u16>()], args in proptest::collection::vec(any::<u8>(), 0..120)) {
        let mut p = BytesMut::new();
        p.put_u16(class);
        p.put_u16(method);
        p.put_slice(&args);
        if let Err(e) = Method::decode(p.freeze()) {
            let _ = (e.reply_code(), e.reply_text(), e.class_id(), e.method_id());
        }
    }

    #[test]
    fn random_tables_and_properties_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let b = Bytes::from(bytes);
        let _ = FieldTable::decode(&mut b.clone());
        let raw = RawProperties::from_bytes(b.clone());
        let _ = (raw.delivery_mode(), raw.priority(), raw.expiration(), raw.user_id(), raw.timestamp(), raw.content_type(), raw.message_id(), raw.reply_to(), raw.correlation_id());
        let _ = raw.headers();
        let _ = raw.decode();
        let _ = raw.with_headers(FieldTable::new());
        let _ = ContentHeader::decode(b);
    }
}
