//! Property tests: everything encodes and decodes back to itself.

mod common;

use common::methods::arb_method;
use common::*;
use proptest::prelude::*;
use protocol::bytes::BytesMut;
use protocol::*;

proptest! {
    #[test]
    fn every_method_roundtrips(m in arb_method()) {
        let bytes = m.to_bytes();
        let back = Method::decode(bytes.clone()).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), m.class_id());
        prop_assert_eq!(u16::from_be_bytes([bytes[2], bytes[3]]), m.method_id());
        prop_assert_eq!(method_name(m.class_id(), m.method_id()), Some(m.name()));
    }

    #[test]
    fn every_method_roundtrips_through_the_codec(m in arb_method(), ch in any::<u16>()) {
        let f = Frame::Method(ch, m);
        prop_assert_eq!(codec_roundtrip(&f), f);
    }

    #[test]
    fn method_truncations_never_decode_silently(m in arb_method(), cut in any::<prop::sample::Index>()) {
        let bytes = m.to_bytes();
        let n = cut.index(bytes.len());
        // Every strict prefix is an error (never a panic, never a different method).
        prop_assert!(Method::decode(bytes.slice(..n)).is_err());
    }

    #[test]
    fn field_tables_roundtrip(t in arb_table()) {
        let mut buf = BytesMut::new();
        t.encode(&mut buf);
        prop_assert_eq!(buf.len(), t.encoded_len());
        let mut src = buf.freeze();
        let back = FieldTable::decode(&mut src).unwrap();
        prop_assert!(src.is_empty());
        prop_assert_eq!(back, t);
    }

    #[test]
    fn basic_properties_roundtrip(p in arb_properties()) {
        let mut buf = BytesMut::new();
        p.encode(&mut buf);
        prop_assert_eq!(BasicProperties::decode(buf.freeze()).unwrap(), p.clone());
    }

    #[test]
    fn raw_properties_accessors_agree_with_decode(p in arb_properties()) {
        let raw = RawProperties::from_properties(&p);
        prop_assert_eq!(raw.decode().unwrap(), p.clone());
        prop_assert_eq!(raw.delivery_mode(), p.delivery_mode);
        prop_assert_eq!(raw.priority(), p.priority);
        prop_assert_eq!(raw.expiration(), p.expiration.as_deref());
        prop_assert_eq!(raw.user_id(), p.user_id.as_deref());
        prop_assert_eq!(raw.content_type(), p.content_type.as_deref());
        prop_assert_eq!(raw.correlation_id(), p.correlation_id.as_deref());
        prop_assert_eq!(raw.reply_to(), p.reply_to.as_deref());
        prop_assert_eq!(raw.message_id(), p.message_id.as_deref());
        prop_assert_eq!(raw.timestamp(), p.timestamp);
        prop_assert_eq!(raw.headers().unwrap(), p.headers.clone());
        prop_assert_eq!(raw.has_headers(), p.headers.is_some());
    }

    #[test]
    fn with_headers_replaces_only_headers(p in arb_properties(), h in arb_table()) {
        let raw = RawProperties::from_properties(&p).with_headers(h.clone()).unwrap();
        let mut expected = p;
        expected.headers = Some(h);
        prop_assert_eq!(raw.decode().unwrap(), expected.clone());
        prop_assert_eq!(raw, RawProperties::from_properties(&expected));
    }

    #[test]
    fn content_frames_roundtrip(p in arb_properties(), body in proptest::collection::vec(any::<u8>(), 0..300), ch in any::<u16>()) {
        let h = Frame::Header(ch, ContentHeader::new(60, body.len() as u64, RawProperties::from_properties(&p)));
        prop_assert_eq!(codec_roundtrip(&h), h);
        let b = Frame::Body(ch, protocol::bytes::Bytes::from(body));
        prop_assert_eq!(codec_roundtrip(&b), b);
    }

    /// The borrowed-parts writers give the bytes of the `Method`/`RawProperties` ones.
    #[test]
    fn borrowed_writers_match_the_owned_ones(
        d in common::methods::arb_basic_deliver(),
        p in arb_properties(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        frame_max in prop_oneof![Just(0u32), 9u32..100],
        ch in any::<u16>(),
    ) {
        let mut want = BytesMut::new();
        write_method(&mut want, ch, &Method::BasicDeliver(d.clone()));
        let mut got = BytesMut::new();
        write_basic_deliver(&mut got, ch, d.consumer_tag.as_bytes(), d.delivery_tag, d.redelivered,
            d.exchange.as_bytes(), d.routing_key.as_bytes());
        prop_assert_eq!(&got, &want);
        let raw = RawProperties::from_properties(&p);
        let (mut want, mut got) = (BytesMut::new(), BytesMut::new());
        write_content(&mut want, ch, 60, &raw, &body, frame_max);
        write_content_with(&mut got, ch, 60, &body, frame_max, |b| b.extend_from_slice(raw.as_bytes()));
        prop_assert_eq!(&got, &want);
    }
}

#[test]
fn every_spec_method_is_listed_and_named() {
    assert_eq!(ALL_METHODS.len(), 66);
    for &(c, m, name, content) in ALL_METHODS {
        assert_eq!(method_name(c, m), Some(name));
        assert_eq!(
            content,
            matches!(
                name,
                "basic.publish" | "basic.return" | "basic.deliver" | "basic.get-ok"
            )
        );
    }
    assert_eq!(method_name(60, 40), Some("basic.publish"));
    assert_eq!(method_name(40, 51), Some("exchange.unbind-ok"));
    assert_eq!(method_name(60, 41), None);
    assert_eq!(class_name(85), Some("confirm"));
}

#[test]
fn heartbeat_and_unit_methods_roundtrip() {
    for f in [
        Frame::Heartbeat(0),
        Frame::Heartbeat(7),
        Frame::Method(0, ConnectionCloseOk.into()),
        Frame::Method(3, TxSelect.into()),
        Frame::Method(3, ChannelOpen.into()),
    ] {
        assert_eq!(codec_roundtrip(&f), f);
    }
}
