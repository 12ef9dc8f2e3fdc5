//! Content assembly: order rules, texts and codes as in rabbit_command_assembler.

use protocol::bytes::{Bytes, BytesMut};
use protocol::*;
use tokio_util::codec::Decoder;

fn publish() -> Method {
    BasicPublish {
        exchange: "".into(),
        routing_key: "q".into(),
        mandatory: false,
        immediate: false,
    }
    .into()
}

fn header(size: u64) -> ContentHeader {
    ContentHeader::new(60, size, RawProperties::empty())
}

#[test]
fn method_without_content_passes_through() {
    let mut a = ContentAssembler::new();
    let m: Method = BasicAck {
        delivery_tag: 1,
        multiple: false,
    }
    .into();
    assert_eq!(a.push_method(m.clone()), Ok(Some(Assembled::Method(m))));
    assert!(a.is_idle());
}

#[test]
fn empty_body_completes_on_header() {
    let mut a = ContentAssembler::new();
    assert_eq!(a.push_method(publish()), Ok(None));
    assert!(!a.is_idle());
    let got = a.push_header(header(0)).unwrap().unwrap();
    assert_eq!(
        got,
        Assembled::Content {
            method: publish(),
            header: header(0),
            body: Bytes::new()
        }
    );
    assert!(a.is_idle());
}

#[test]
fn single_frame_body_is_zero_copy() {
    let mut a = ContentAssembler::new();
    a.push_method(publish()).unwrap();
    a.push_header(header(5)).unwrap();
    let body = Bytes::from_static(b"hello");
    let ptr = body.as_ptr();
    match a.push_body(body).unwrap().unwrap() {
        Assembled::Content { body, .. } => assert_eq!(body.as_ptr(), ptr),
        other => panic!("{other:?}"),
    }
}

#[test]
fn multi_frame_body_is_joined() {
    let mut a = ContentAssembler::new();
    a.push_method(publish()).unwrap();
    a.push_header(header(10)).unwrap();
    assert_eq!(a.push_body(Bytes::from_static(b"0123")), Ok(None));
    assert_eq!(a.push_body(Bytes::new()), Ok(None));
    assert_eq!(a.push_body(Bytes::from_static(b"456")), Ok(None));
    match a.push_body(Bytes::from_static(b"789")).unwrap().unwrap() {
        Assembled::Content { body, header, .. } => {
            assert_eq!(&body[..], b"0123456789");
            assert_eq!(header.body_size, 10);
        }
        other => panic!("{other:?}"),
    }
    assert!(a.is_idle());
}

#[test]
fn huge_claimed_body_size_does_not_preallocate() {
    let mut a = ContentAssembler::new();
    a.push_method(publish()).unwrap();
    a.push_header(header(DEFAULT_MAX_BODY_SIZE)).unwrap();
    // Two tiny fragments force a join; this must not try to allocate 512 MiB.
    a.push_body(Bytes::from_static(b"a")).unwrap();
    a.push_body(Bytes::from_static(b"b")).unwrap();
    assert!(!a.is_idle());
    a.reset();
    assert!(a.is_idle());
}

fn assert_unexpected(err: ProtocolError, text: &str, ids: (u16, u16)) {
    assert_eq!(err.reply_code(), reply::UNEXPECTED_FRAME, "{err:?}");
    assert_eq!(err.reply_text(), text);
    assert_eq!((err.class_id(), err.method_id()), ids);
    assert!(matches!(err.root(), ProtocolError::UnexpectedFrame(_)));
}

#[test]
fn out_of_order_frames_are_505_with_rabbitmq_texts() {
    let mut a = ContentAssembler::new();
    assert_unexpected(
        a.push_header(header(1)).unwrap_err(),
        "expected method frame, got non method frame instead",
        (0, 0),
    );
    assert_unexpected(
        a.push_body(Bytes::from_static(b"x")).unwrap_err(),
        "expected method frame, got non method frame instead",
        (0, 0),
    );

    a.push_method(publish()).unwrap();
    assert_unexpected(
        a.push_method(publish()).unwrap_err(),
        "expected content header for class 60, got non content header frame instead",
        (60, 40),
    );
    assert_unexpected(
        a.push_body(Bytes::from_static(b"x")).unwrap_err(),
        "expected content header for class 60, got non content header frame instead",
        (60, 40),
    );
    assert_unexpected(
        a.push_header(ContentHeader::new(50, 1, RawProperties::empty()))
            .unwrap_err(),
        "expected content header for class 60, got one for class 50 instead",
        (60, 40),
    );

    a.push_header(header(3)).unwrap();
    assert_unexpected(
        a.push_method(publish()).unwrap_err(),
        "expected content body, got non content body frame instead",
        (60, 40),
    );
    assert_unexpected(
        a.push_header(header(3)).unwrap_err(),
        "expected content body, got non content body frame instead",
        (60, 40),
    );
}

#[test]
fn body_longer_than_body_size_is_a_frame_error() {
    let mut a = ContentAssembler::new();
    a.push_method(publish()).unwrap();
    a.push_header(header(3)).unwrap();
    a.push_body(Bytes::from_static(b"ab")).unwrap();
    let err = a.push_body(Bytes::from_static(b"cd")).unwrap_err();
    assert_eq!(err.root(), &ProtocolError::BodyOverrun);
    assert_eq!(err.reply_code(), reply::FRAME_ERROR);
    assert_eq!(
        err.reply_text(),
        "content body frame exceeds remaining content size"
    );
    assert_eq!((err.class_id(), err.method_id()), (60, 40));
}

#[test]
fn body_size_over_the_limit_is_a_frame_error() {
    let mut a = ContentAssembler::new();
    a.set_max_body_size(1000);
    a.push_method(publish()).unwrap();
    let err = a.push_header(header(1001)).unwrap_err();
    assert_eq!(
        err.root(),
        &ProtocolError::BodyTooLarge {
            size: 1001,
            max: 1000
        }
    );
    assert_eq!(err.reply_code(), reply::FRAME_ERROR);
    assert_eq!(
        err.reply_text(),
        "content body size 1001 exceeds maximum allowed size 1000"
    );
}

#[test]
fn write_content_splits_bodies_and_reassembles() {
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let props = RawProperties::from_properties(&BasicProperties {
        content_type: Some("application/octet-stream".into()),
        ..Default::default()
    });
    for (frame_max, sizes) in [
        (4096u32, vec![4088usize, 4088, 1824]),
        (0, vec![10_000]),
        (10_008, vec![10_000]),
    ] {
        let mut out = BytesMut::new();
        write_method_with_content(&mut out, 3, &publish(), &props, &body, frame_max);
        let mut codec = FrameCodec::new();
        codec.set_max_frame_size(frame_max);
        let mut a = ContentAssembler::new();
        let mut seen = Vec::new();
        let mut done = None;
        while let Some(f) = codec.decode(&mut out).unwrap() {
            let r = match f {
                Frame::Method(3, m) => a.push_method(m),
                Frame::Header(3, h) => a.push_header(h),
                Frame::Body(3, b) => {
                    seen.push(b.len());
                    a.push_body(b)
                }
                other => panic!("{other:?}"),
            };
            if let Some(x) = r.unwrap() {
                done = Some(x);
            }
        }
        assert_eq!(seen, sizes, "frame_max {frame_max}");
        match done.unwrap() {
            Assembled::Content {
                method,
                header,
                body: got,
            } => {
                assert_eq!(method, publish());
                assert_eq!(header.properties, props);
                assert_eq!(&got[..], &body[..]);
            }
            other => panic!("{other:?}"),
        }
    }
    // An empty body writes the header frame only.
    let mut out = BytesMut::new();
    write_content(&mut out, 1, 60, &RawProperties::empty(), b"", 4096);
    assert_eq!(out.len(), 7 + 14 + 1);
}
