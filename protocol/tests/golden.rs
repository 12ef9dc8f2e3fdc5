//! Golden bytes, checked by hand against the 0-9-1 spec (frame layout in §4.2.3,
//! argument order in amqp0-9-1.xml, bit packing per §4.2.5.2, properties per §4.2.6.1).

use protocol::bytes::{Bytes, BytesMut};
use protocol::*;
use tokio_util::codec::Decoder;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_one(bytes: &[u8]) -> Frame {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(bytes);
    let f = codec.decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    f
}

fn method_frame(channel: u16, m: impl Into<Method>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    write_method(&mut buf, channel, &m.into());
    buf.to_vec()
}

#[test]
fn constants() {
    assert_eq!(PROTOCOL_HEADER, [b'A', b'M', b'Q', b'P', 0, 0, 9, 1]);
    assert_eq!(
        (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT),
        (1, 2, 3, 8)
    );
    assert_eq!(FRAME_END, 0xCE);
    assert_eq!(FRAME_MIN_SIZE, 4096);
}

#[test]
fn heartbeat() {
    let mut buf = BytesMut::new();
    write_heartbeat(&mut buf);
    assert_eq!(&buf[..], &hex("08 0000 00000000 CE")[..]);
    assert_eq!(decode_one(&buf), Frame::Heartbeat(0));
    assert_eq!(decode_one(&hex("08 0005 00000000 CE")), Frame::Heartbeat(5));
}

#[test]
fn connection_tune() {
    let m = ConnectionTune {
        channel_max: 2047,
        frame_max: 131072,
        heartbeat: 60,
    };
    // type 1, channel 0, size 12 | class 10, method 30 | short 2047, long 131072, short 60 | end
    let expected = hex("01 0000 0000000C 000A 001E 07FF 00020000 003C CE");
    assert_eq!(method_frame(0, m.clone()), expected);
    assert_eq!(decode_one(&expected), Frame::Method(0, m.into()));
}

#[test]
fn basic_publish() {
    let m = BasicPublish {
        exchange: ShortStr::from("amq.direct"),
        routing_key: ShortStr::from("q"),
        mandatory: true,
        immediate: false,
    };
    // class 60, method 40 | reserved-1 short 0 | shortstr "amq.direct" | shortstr "q" | bits: mandatory=bit0
    let payload = "003C 0028 0000 0A 616D712E646972656374 01 71 01";
    let expected = hex(&format!("01 0001 00000014 {payload} CE"));
    assert_eq!(method_frame(1, m.clone()), expected);
    assert_eq!(decode_one(&expected), Frame::Method(1, m.clone().into()));
    // immediate is bit 1
    let m2 = BasicPublish {
        immediate: true,
        mandatory: false,
        ..m
    };
    assert_eq!(*method_frame(1, m2).iter().rev().nth(1).unwrap(), 0x02);
}

#[test]
fn basic_deliver_and_ack() {
    let deliver = BasicDeliver {
        consumer_tag: "ctag".into(),
        delivery_tag: 1,
        redelivered: true,
        exchange: "".into(),
        routing_key: "q".into(),
    };
    let expected = hex("01 0002 00000015 003C 003C 04 63746167 0000000000000001 01 00 01 71 CE");
    assert_eq!(method_frame(2, deliver.clone()), expected);
    assert_eq!(decode_one(&expected), Frame::Method(2, deliver.into()));

    let ack = BasicAck {
        delivery_tag: 42,
        multiple: true,
    };
    let expected = hex("01 0002 0000000D 003C 0050 000000000000002A 01 CE");
    assert_eq!(method_frame(2, ack.clone()), expected);
    assert_eq!(decode_one(&expected), Frame::Method(2, ack.into()));
}

#[test]
fn queue_declare_packs_five_bits() {
    let m = QueueDeclare {
        queue: "q".into(),
        passive: false,
        durable: true,
        exclusive: false,
        auto_delete: true,
        no_wait: true,
        arguments: FieldTable::new(),
    };
    // bits: passive=0 durable=1 exclusive=2 auto-delete=3 nowait=4 -> 0b11010
    let expected = hex("01 0001 0000000D 0032 000A 0000 01 71 1A 00000000 CE");
    assert_eq!(method_frame(1, m.clone()), expected);
    assert_eq!(decode_one(&expected), Frame::Method(1, m.into()));
}

#[test]
fn content_header_with_delivery_mode_2_and_body() {
    let props = RawProperties::from_properties(&BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    });
    let mut buf = BytesMut::new();
    write_content(&mut buf, 1, 60, &props, b"hello", 4096);
    // header: class 60, weight 0, body size 5, flags 0x1000 (delivery-mode = bit 12), octet 2
    let header = hex("02 0001 0000000F 003C 0000 0000000000000005 1000 02 CE");
    let body = hex("03 0001 00000005 68656C6C6F CE");
    assert_eq!(&buf[..], &[header.clone(), body.clone()].concat()[..]);
    match decode_one(&header) {
        Frame::Header(1, h) => {
            assert_eq!((h.class_id, h.weight, h.body_size), (60, 0, 5));
            assert_eq!(h.properties.delivery_mode(), Some(2));
            assert_eq!(h.properties, props);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(decode_one(&body), Frame::Body(1, Bytes::from_static(b"hello")));
}

#[test]
fn channel_close() {
    let m = ChannelClose {
        reply_code: 404,
        reply_text: "NOT_FOUND - no queue 'q' in vhost '/'".into(),
        class_id: 50,
        method_id: 10,
    };
    let text = "NOT_FOUND - no queue 'q' in vhost '/'";
    let text_hex: String = text.bytes().map(|b| format!("{b:02X}")).collect();
    let payload = format!("0014 0028 0194 {:02X} {text_hex} 0032 000A", text.len());
    let size = 4 + 2 + 1 + text.len() + 4;
    let expected = hex(&format!("01 0001 {size:08X} {payload} CE"));
    assert_eq!(method_frame(1, m.clone()), expected);
    assert_eq!(decode_one(&expected), Frame::Method(1, m.into()));
}

#[test]
fn connection_start_with_table() {
    let mut caps = FieldTable::new();
    caps.insert("publisher_confirms", FieldValue::Bool(true));
    let mut props = FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    let m = ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties: props,
        mechanisms: "PLAIN".into(),
        locales: "en_US".into(),
    };
    let inner = "12 7075626C69736865725F636F6E6669726D73 74 01"; // "publisher_confirms" t 1
    let outer = format!("0C 6361706162696C6974696573 46 00000015 {inner}"); // "capabilities" F len
    let payload = format!("000A 000A 00 09 00000027 {outer} 00000005 504C41494E 00000005 656E5F5553");
    let bytes = hex(&payload);
    let expected = hex(&format!("01 0000 {:08X} {payload} CE", bytes.len()));
    assert_eq!(method_frame(0, m.clone()), expected);
    assert_eq!(decode_one(&expected), Frame::Method(0, m.into()));
}

#[test]
fn connection_open_writes_reserved_fields() {
    let m = ConnectionOpen {
        virtual_host: "/".into(),
    };
    // vhost "/", reserved-1 shortstr "", reserved-2 bit 0
    let expected = hex("01 0000 00000008 000A 0028 01 2F 00 00 CE");
    assert_eq!(method_frame(0, m.clone()), expected);
    // A client sending the old capabilities/insist values still decodes.
    let with_reserved = hex("01 0000 00000009 000A 0028 01 2F 01 78 01 CE");
    assert_eq!(decode_one(&with_reserved), Frame::Method(0, m.into()));
}
