//! Seed corpora, built with the protocol crate's own encoders: real handshakes, every method, tables with
//! every value type, properties with every field, valid and invalid queue arguments, forged x-death headers.
//! `gen-corpus` writes them to `fuzz/corpus/<target>/`; the replay test runs them through every target.

use bytes::BytesMut;
use protocol::*;

use crate::table_body;

fn ls(s: &str) -> FieldValue {
    FieldValue::LongStr(LongStr::from(s))
}

/// A table with one value of every type, an array and a nested table.
pub fn every_type_table() -> FieldTable {
    let mut inner = FieldTable::new();
    inner.insert("k", ls("v"));
    inner.insert("n", FieldValue::I32(-1));
    let mut t = FieldTable::new();
    t.insert("bool", FieldValue::Bool(true));
    t.insert("i8", FieldValue::I8(-8));
    t.insert("u8", FieldValue::U8(8));
    t.insert("i16", FieldValue::I16(-16));
    t.insert("u16", FieldValue::U16(16));
    t.insert("i32", FieldValue::I32(-32));
    t.insert("u32", FieldValue::U32(32));
    t.insert("i64", FieldValue::I64(-64));
    t.insert("f32", FieldValue::F32(1.5));
    t.insert("f64", FieldValue::F64(-2.5));
    t.insert(
        "dec",
        FieldValue::Decimal {
            scale: 2,
            value: 12345,
        },
    );
    t.insert("str", ls("hello"));
    t.insert("bin", FieldValue::Bytes(bytes::Bytes::from_static(b"\x00\xff")));
    t.insert(
        "arr",
        FieldValue::Array(vec![
            FieldValue::I32(1),
            ls("two"),
            FieldValue::Void,
            FieldValue::Table(inner.clone()),
        ]),
    );
    t.insert("ts", FieldValue::Timestamp(1_700_000_000));
    t.insert("tbl", FieldValue::Table(inner));
    t.insert("void", FieldValue::Void);
    t
}

/// Tables nested `n` deep (the decoder's limit is 64).
pub fn nested_table(n: usize) -> FieldTable {
    let mut t = FieldTable::new();
    t.insert("leaf", FieldValue::Bool(true));
    for _ in 1..n {
        let mut outer = FieldTable::new();
        outer.insert("t", FieldValue::Table(t));
        t = outer;
    }
    t
}

fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs.iter().map(|(k, v)| (*k, v.clone())).collect()
}

/// Queue argument tables, valid and invalid, covering every argument the broker validates.
pub fn queue_arg_tables() -> Vec<FieldTable> {
    use FieldValue::*;
    vec![
        args(&[("x-message-ttl", I32(60_000)), ("x-expires", I64(120_000))]),
        args(&[("x-message-ttl", I32(-1))]),
        args(&[("x-message-ttl", I64(315_360_000_001))]),
        args(&[("x-expires", I32(0))]),
        args(&[("x-expires", Timestamp(5))]),
        args(&[("x-max-length", I64(10)), ("x-overflow", ls("reject-publish"))]),
        args(&[
            ("x-max-length-bytes", U32(1 << 20)),
            ("x-overflow", ls("reject-publish-dlx")),
        ]),
        args(&[("x-overflow", ls("bogus"))]),
        args(&[
            ("x-dead-letter-exchange", ls("dlx")),
            ("x-dead-letter-routing-key", ls("rk")),
        ]),
        args(&[("x-dead-letter-routing-key", ls("rk"))]),
        args(&[("x-dead-letter-exchange", I32(1))]),
        args(&[("x-dead-letter-strategy", ls("at-least-once"))]),
        args(&[("x-max-priority", U8(10))]),
        args(&[("x-max-priority", I32(256))]),
        args(&[("x-single-active-consumer", Bool(true))]),
        args(&[("x-single-active-consumer", ls("yes"))]),
        args(&[("x-queue-type", ls("classic")), ("x-queue-mode", ls("lazy"))]),
        args(&[
            ("x-queue-type", ls("quorum")),
            ("x-quorum-initial-group-size", I32(3)),
        ]),
        args(&[("x-queue-type", ls("stream")), ("x-max-age", ls("7D"))]),
        args(&[("x-max-age", ls("0s"))]),
        args(&[("x-queue-version", I32(2))]),
        args(&[("x-queue-leader-locator", ls("balanced"))]),
        args(&[("x-member-placement-tag", ls(""))]),
        args(&[("x-delivery-limit", I32(3)), ("x-delayed-retry-min", I32(100))]),
        args(&[
            ("x-delayed-retry-min", I32(10)),
            ("x-delayed-retry-multiplier", I32(2)),
            ("x-delayed-retry-max", I64(1000)),
        ]),
        args(&[("x-consumer-timeout", F64(1.0))]),
        args(&[("alternate-exchange", ls("ae"))]),
        args(&[("alternate-exchange", F64(f64::NAN))]),
        args(&[("x-match", ls("any")), ("a", I32(1)), ("b", ls("x"))]),
        args(&[("x-match", ls("all-with-x")), ("x-a", Void)]),
        args(&[("x-match", ls("bogus"))]),
        args(&[("x-match", I32(1))]),
        every_type_table(),
    ]
}

pub fn sample_properties() -> Vec<BasicProperties> {
    let mut h = FieldTable::new();
    h.insert("k", ls("v"));
    h.insert("n", FieldValue::I64(7));
    let full = BasicProperties {
        content_type: Some("text/plain".into()),
        content_encoding: Some("gzip".into()),
        headers: Some(h),
        delivery_mode: Some(2),
        priority: Some(5),
        correlation_id: Some("corr".into()),
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        expiration: Some("60000".into()),
        message_id: Some("id-1".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("type".into()),
        user_id: Some("guest".into()),
        app_id: Some("app".into()),
        cluster_id: Some("c".into()),
    };
    let mut out = vec![full, BasicProperties::default()];
    for e in [
        "0",
        "",
        "-1",
        "+5",
        "1.5",
        "18446744073709551615",
        "18446744073709551616",
        "abc",
    ] {
        out.push(BasicProperties {
            expiration: Some(e.into()),
            ..Default::default()
        });
    }
    out.push(BasicProperties {
        delivery_mode: Some(1),
        headers: Some(every_type_table()),
        ..Default::default()
    });
    out
}

/// A forged `x-death` header as a publisher could send it.
pub fn x_death_properties() -> Vec<BasicProperties> {
    let entry = |q: &str, reason: &str, count: FieldValue| {
        let mut t = FieldTable::new();
        t.insert("count", count);
        t.insert("reason", ls(reason));
        t.insert("queue", ls(q));
        t.insert("time", FieldValue::Timestamp(1));
        t.insert("exchange", ls("ex"));
        t.insert("routing-keys", FieldValue::Array(vec![ls("rk")]));
        FieldValue::Table(t)
    };
    let with = |deaths: Vec<FieldValue>| {
        let mut h = FieldTable::new();
        h.insert("x-death", FieldValue::Array(deaths));
        h.insert("x-first-death-queue", ls("q0"));
        BasicProperties {
            headers: Some(h),
            expiration: Some("100".into()),
            ..Default::default()
        }
    };
    vec![
        BasicProperties::default(),
        with(vec![entry("q1", "expired", FieldValue::I64(1))]),
        with(vec![
            entry("q2", "rejected", FieldValue::I64(3)),
            entry("q1", "expired", FieldValue::I32(2)),
        ]),
        with(vec![entry("q1", "maxlen", FieldValue::I64(i64::MAX - 1))]),
        with(vec![
            entry("q1", "expired", ls("not a number")),
            ls("not a table"),
        ]),
        {
            let mut h = FieldTable::new();
            h.insert("x-death", ls("not an array"));
            BasicProperties {
                headers: Some(h),
                ..Default::default()
            }
        },
    ]
}

/// Methods with realistic arguments, as clients send them.
pub fn sample_methods() -> Vec<Method> {
    let mut caps = FieldTable::new();
    caps.insert("publisher_confirms", FieldValue::Bool(true));
    caps.insert("consumer_cancel_notify", FieldValue::Bool(true));
    let mut client = FieldTable::new();
    client.insert("product", ls("fuzz"));
    client.insert("capabilities", FieldValue::Table(caps));
    let mut out = vec![
        Method::from(ConnectionStartOk {
            client_properties: client,
            mechanism: "PLAIN".into(),
            response: LongStr::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        }),
        Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        }),
        Method::ConnectionOpen(ConnectionOpen {
            virtual_host: "/".into(),
        }),
        Method::ChannelOpen(ChannelOpen),
        Method::ConfirmSelect(ConfirmSelect { no_wait: false }),
        Method::BasicQos(BasicQos {
            prefetch_size: 0,
            prefetch_count: 10,
            global: false,
        }),
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: "hx".into(),
            kind: "headers".into(),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            no_wait: false,
            arguments: args(&[("alternate-exchange", ls("ae"))]),
        }),
        Method::from(QueueBind {
            queue: "q".into(),
            exchange: "hx".into(),
            routing_key: "".into(),
            no_wait: false,
            arguments: args(&[("x-match", ls("any")), ("a", FieldValue::I32(1))]),
        }),
        Method::BasicConsume(BasicConsume {
            queue: "q".into(),
            consumer_tag: "tag".into(),
            no_local: false,
            no_ack: false,
            exclusive: true,
            no_wait: false,
            arguments: args(&[("x-priority", FieldValue::I32(5))]),
        }),
        Method::BasicPublish(BasicPublish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: true,
            immediate: false,
        }),
        Method::BasicAck(BasicAck {
            delivery_tag: 1,
            multiple: true,
        }),
        Method::BasicNack(BasicNack {
            delivery_tag: 2,
            multiple: false,
            requeue: true,
        }),
        Method::BasicGet(BasicGet {
            queue: "q".into(),
            no_ack: true,
        }),
        Method::ChannelClose(ChannelClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }),
        Method::ConnectionClose(ConnectionClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }),
    ];
    for t in queue_arg_tables().into_iter().take(6) {
        out.push(Method::QueueDeclare(QueueDeclare {
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: t,
        }));
    }
    out
}

/// The smallest payload (ids included) that decodes as each method of `ALL_METHODS`, found by trying
/// zero-filled argument bytes of growing length.
pub fn minimal_payloads() -> Vec<Vec<u8>> {
    ALL_METHODS
        .iter()
        .filter_map(|(c, m, _, _)| {
            (0..64).find_map(|n| {
                let mut p = Vec::with_capacity(4 + n);
                p.extend_from_slice(&c.to_be_bytes());
                p.extend_from_slice(&m.to_be_bytes());
                p.resize(4 + n, 0);
                Method::decode(bytes::Bytes::from(p.clone())).ok().map(|_| p)
            })
        })
        .collect()
}

/// A client session as bytes after the protocol header: handshake, declare, publish (multi-frame body),
/// consume, ack, close.
pub fn session_stream() -> Vec<u8> {
    let mut b = BytesMut::new();
    for m in sample_methods() {
        let ch = match &m {
            Method::ConnectionStartOk(_)
            | Method::ConnectionTuneOk(_)
            | Method::ConnectionOpen(_)
            | Method::ConnectionClose(_) => 0,
            _ => 1,
        };
        write_method(&mut b, ch, &m);
        if m.has_content() {
            let props = RawProperties::from_properties(&sample_properties()[0]);
            write_content(&mut b, ch, CLASS_BASIC, &props, &[7u8; 9000], 4096);
        }
    }
    write_heartbeat(&mut b);
    b.to_vec()
}

fn frame_stream_seeds() -> Vec<Vec<u8>> {
    let session = session_stream();
    let mut out = Vec::new();
    for (fm, tol) in [(1u8, 0u8), (2, 1), (0, 0)] {
        for seed in [[0, 0, 0, 1], [0x12, 0x34, 0x56, 0x78]] {
            let mut s = vec![fm, tol];
            s.extend_from_slice(&seed);
            s.extend_from_slice(&session);
            out.push(s);
        }
    }
    // Small streams: one of each frame type, a bad end octet, an oversized frame, an unknown type.
    let mut one = BytesMut::new();
    write_method(&mut one, 1, &Method::ChannelOpen(ChannelOpen));
    write_content(&mut one, 1, 60, &RawProperties::empty(), b"abc", 0);
    write_heartbeat(&mut one);
    let mut bad_end = one.to_vec();
    let n = bad_end.len();
    bad_end[n - 1] = 0;
    let mut huge = vec![1u8, 0, 1, 0xff, 0xff, 0xff, 0xff];
    huge.extend_from_slice(&[0; 16]);
    for s in [one.to_vec(), bad_end, huge, vec![9, 0, 0, 0, 0, 0, 0, 0xce]] {
        let mut v = vec![1, 0, 0, 0, 0, 7];
        v.extend_from_slice(&s);
        out.push(v);
    }
    out
}

fn method_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = minimal_payloads()
        .into_iter()
        .map(|p| {
            let mut v = vec![0u8];
            v.extend_from_slice(&p);
            v
        })
        .collect();
    for m in sample_methods() {
        let mut v = vec![0u8];
        v.extend_from_slice(&m.to_bytes());
        out.push(v);
    }
    // Unknown ids and a truncated payload.
    out.push(vec![0, 0, 60, 0, 99]);
    out.push(vec![0, 0, 99, 0, 10, 1, 2, 3]);
    out.push(vec![0x80 | 50]);
    out
}

fn field_table_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for t in [
        every_type_table(),
        nested_table(63),
        nested_table(64),
        FieldTable::new(),
    ]
    .into_iter()
    .chain(queue_arg_tables())
    {
        let mut v = vec![0u8];
        v.extend_from_slice(&table_body(&t));
        out.push(v);
        let mut enc = BytesMut::new();
        t.encode(&mut enc);
        let mut v = vec![1u8];
        v.extend_from_slice(&enc);
        out.push(v);
    }
    let mut strs = BytesMut::new();
    for s in ["", "a", "ünïcödé", &"x".repeat(255)] {
        ShortStr::from(s).encode(&mut strs);
    }
    let mut v = vec![2u8];
    v.extend_from_slice(&strs);
    out.push(v);
    let mut longs = BytesMut::new();
    for s in [&b""[..], b"abc", b"\xff\xfe"] {
        LongStr::from(s).encode(&mut longs);
    }
    let mut v = vec![3u8];
    v.extend_from_slice(&longs);
    out.push(v);
    out
}

fn properties_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = sample_properties()
        .iter()
        .map(|p| RawProperties::from_properties(p).as_bytes().to_vec())
        .collect();
    // A whole content-header payload too.
    let mut h = BytesMut::new();
    ContentHeader::new(60, 5, RawProperties::from_properties(&sample_properties()[0])).encode(&mut h);
    out.push(h.to_vec());
    // Continuation flag words.
    out.push(vec![0x00, 0x01, 0x00, 0x01, 0x00, 0x00]);
    out
}

fn content_assembly_seeds() -> Vec<Vec<u8>> {
    vec![
        // default limit; publish, header (size 5 via "1" class: sel bits), body, body
        vec![
            1, 0, 1, 0x44, 5, 0, 6, 1, 3, b'a', b'b', b'c', 6, 1, 2, b'd', b'e',
        ],
        // small limit; publish, header with a big u16 size, body
        vec![0, 0, 16, 0, 2, 0x84, 0x40, 0, 0, 6, 2, 1, b'x'],
        // interleaved channels, an ack between, a reset
        vec![
            1, 0, 1, 1, 2, 4, 1, 0x44, 2, 0, 4, 2, 0x44, 1, 0, 3, 3, 7, 6, 1, 2, b'h', b'i', 7, 2, 6, 2, 1,
            b'z',
        ],
        // header with no method; body with no header; wrong class id; non-zero weight
        vec![1, 4, 1, 0x40, 1, 0, 6, 1, 1, b'q', 0, 1, 4, 1, 0x40, 0, 99, 1, 0],
        vec![1, 0, 1, 4, 1, 0x48, 3, 1, 0],
    ]
}

fn sasl_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for r in [
        &b"\0guest\0guest"[..],
        b"authz\0user\0pass",
        b"\0\0",
        b"guest",
        b"\0a\0b\0c",
        b"\0\xff\0x",
    ] {
        let mut v = vec![0u8];
        v.extend_from_slice(r);
        out.push(v);
    }
    let mut t = FieldTable::new();
    t.insert("LOGIN", ls("guest"));
    t.insert("PASSWORD", ls("guest"));
    let mut bad = FieldTable::new();
    bad.insert("LOGIN", FieldValue::I32(1));
    bad.insert("PASSWORD", ls("guest"));
    for t in [t, bad] {
        let mut v = vec![1u8];
        v.extend_from_slice(&table_body(&t));
        out.push(v);
    }
    out
}

fn arguments_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, t) in queue_arg_tables().iter().enumerate() {
        let mut v = vec![i as u8 % 4];
        v.extend_from_slice(&table_body(t));
        out.push(v);
    }
    out
}

fn headers_match_seeds() -> Vec<Vec<u8>> {
    vec![
        // 2 bindings: {a: str "1", x-match any}, {b: long 1}; 2 messages: {a: bytes "1"}, {b: double 1.0}
        vec![
            1, 2, 0, 0, 0, 4, 0, 1, 1, 1, 2, 2, 6, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 4, 2, 0,
        ],
        vec![
            3, 3, 0, 9, 1, 1, 3, 1, 4, 2, 2, 8, 0, 3, 3, 4, 0, 1, 2, 0, 0, 1, 4, 5, 1, 1, 2, 3, 2, 6, 3, 3,
        ],
        vec![5; 64],
        (0u8..=255).collect(),
    ]
}

fn x_death_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, p) in x_death_properties().iter().enumerate() {
        let mut v = vec![i as u8 % 2, i as u8 % 4, 0, 0, 0x10, 0];
        v.extend_from_slice(RawProperties::from_properties(p).as_bytes());
        out.push(v);
    }
    out.push(vec![3, 1, 0, 0, 0, 1, 2, 0xc3, 0xa9, 0x00, 0x00]);
    out
}

/// The seeds of one target (empty for an unknown name).
pub fn for_target(name: &str) -> Vec<Vec<u8>> {
    match name {
        "frame_stream" => frame_stream_seeds(),
        "method" => method_seeds(),
        "field_table" => field_table_seeds(),
        "properties" => properties_seeds(),
        "content_assembly" => content_assembly_seeds(),
        "sasl" => sasl_seeds(),
        "arguments" => arguments_seeds(),
        "headers_match" => headers_match_seeds(),
        "x_death" => x_death_seeds(),
        _ => Vec::new(),
    }
}
