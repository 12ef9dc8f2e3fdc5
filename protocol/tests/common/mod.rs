//! Shared proptest strategies.
#![allow(dead_code)]

pub mod methods;

use proptest::collection::vec;
use proptest::prelude::*;
use protocol::bytes::Bytes;
use protocol::*;

/// Short strings: mostly ASCII names, sometimes arbitrary Unicode up to the 255-byte limit.
pub fn arb_shortstr() -> impl Strategy<Value = ShortStr> {
    prop_oneof![
        "[a-zA-Z0-9._/-]{0,32}".prop_map(|s| ShortStr::from(s.as_str())),
        "\\PC{0,100}".prop_map(|s| {
            let mut end = s.len().min(255);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            ShortStr::from(&s[..end])
        }),
    ]
}

pub fn arb_longstr() -> impl Strategy<Value = LongStr> {
    vec(any::<u8>(), 0..64).prop_map(LongStr::from)
}

pub fn arb_field_value() -> impl Strategy<Value = FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<f32>().prop_map(FieldValue::F32),
        any::<f64>().prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        arb_longstr().prop_map(FieldValue::LongStr),
        vec(any::<u8>(), 0..32).prop_map(|v| FieldValue::Bytes(Bytes::from(v))),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            vec((arb_shortstr(), inner), 0..6).prop_map(|kv| FieldValue::Table(table_of(kv))),
        ]
    })
}

/// Builds a table keeping every pair (insert replaces duplicates, as decode would not).
fn table_of(kv: Vec<(ShortStr, FieldValue)>) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in kv {
        t.insert(k, v);
    }
    t
}

pub fn arb_table() -> impl Strategy<Value = FieldTable> {
    vec((arb_shortstr(), arb_field_value()), 0..6).prop_map(table_of)
}

pub fn arb_properties() -> impl Strategy<Value = BasicProperties> {
    let a = (
        proptest::option::of(arb_shortstr()),
        proptest::option::of(arb_shortstr()),
        proptest::option::of(arb_table()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(arb_shortstr()),
        proptest::option::of(arb_shortstr()),
    );
    let b = (
        proptest::option::of(arb_shortstr()),
        proptest::option::of(arb_shortstr()),
        proptest::option::of(any::<u64>()),
        proptest::option::of(arb_shortstr()),
        proptest::option::of(arb_shortstr()),
        proptest::option::of(arb_shortstr()),
        proptest::option::of(arb_shortstr()),
    );
    (a, b).prop_map(
        |(
            (content_type, content_encoding, headers, delivery_mode, priority, correlation_id, reply_to),
            (expiration, message_id, timestamp, kind, user_id, app_id, cluster_id),
        )| BasicProperties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
            cluster_id,
        },
    )
}

/// Encodes `frame` through the codec and decodes it back, asserting the buffer is consumed.
pub fn codec_roundtrip(frame: &Frame) -> Frame {
    use protocol::bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};
    let mut codec = FrameCodec::new();
    codec.set_max_frame_size(0);
    let mut buf = BytesMut::new();
    codec.encode(frame.clone(), &mut buf).unwrap();
    let out = codec.decode(&mut buf).unwrap().expect("a whole frame");
    assert!(buf.is_empty(), "codec left {} bytes", buf.len());
    out
}
