//! Issue 12: sender-selected distribution, RabbitMQ's `CC` and `BCC` headers
//! (https://www.rabbitmq.com/docs/sender-selected). A message is routed with its routing key and with every
//! key in its `CC` and `BCC` headers (arrays of long strings; elements of other types are ignored), each
//! queue gets one copy, `CC` is delivered as published and `BCC` is removed from every delivered copy.
//!
//! Source (rabbitmq-server): `rabbit_basic:header_routes/1` reads `?ROUTING_HEADERS` = [CC, BCC], keeps the
//! `longstr` elements and throws `{unacceptable_type_in_header, Header, Type}` for a header that is not an
//! array, which `rabbit_channel` turns into 406 "invalid message: ~tp"; `mc_amqpl:message/3` routes with
//! [RoutingKey | CC ++ BCC] and `mc_amqpl:init/1` strips `?DELETED_HEADER` (BCC) before anything is stored
//! or delivered. Dead-lettering (`rabbit_dead_letter:publish/5`, `mc:record_death/3`): without a
//! dead-letter routing key the dead letter routes with all of the message's keys; `x-death`'s
//! `routing-keys` "should include CC, but exclude BCC"; the dead-lettered copy never shows BCC and keeps CC
//! ("we keep the CC header as of RabbitMQ 3.13", deps/rabbit/test/dead_lettering_SUITE.erl
//! `dead_letter_headers_CC_with_routing_key`, `dead_letter_headers_BCC`).

use mailroom_tests::raw::protocol::{
    self, BasicProperties, FieldTable, FieldValue, LongStr, Method, RawProperties,
};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn strs(v: &[&str]) -> FieldValue {
    FieldValue::Array(v.iter().map(|s| FieldValue::LongStr(LongStr::from(*s))).collect())
}

fn text(v: &str) -> FieldValue {
    FieldValue::LongStr(LongStr::from(v))
}

fn with_headers(h: &[(&str, FieldValue)], persistent: bool) -> RawProperties {
    let mut t = FieldTable::new();
    for (k, v) in h {
        t.insert(*k, v.clone());
    }
    RawProperties::from_properties(&BasicProperties {
        headers: Some(t),
        delivery_mode: persistent.then_some(2),
        ..Default::default()
    })
}

fn publish(c: &mut RawClient, exchange: &str, key: &str, props: &RawProperties, mandatory: bool) {
    c.publish_full(
        1,
        protocol::BasicPublish {
            exchange: exchange.into(),
            routing_key: key.into(),
            mandatory,
            immediate: false,
        },
        props,
        b"hello",
    );
}

fn exchange(c: &mut RawClient, name: &str, kind: &str) {
    let m = c.call(
        1,
        Method::ExchangeDeclare(protocol::ExchangeDeclare {
            exchange: name.into(),
            kind: kind.into(),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            no_wait: false,
            arguments: FieldTable::new(),
        }),
    );
    assert!(matches!(m, Method::ExchangeDeclareOk(_)), "{m:?}");
}

fn queue(c: &mut RawClient, name: &str, args: &[(&str, FieldValue)]) {
    let mut t = FieldTable::new();
    for (k, v) in args {
        t.insert(*k, v.clone());
    }
    let m = c.call(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: name.into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: t,
        }),
    );
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
}

fn bind(c: &mut RawClient, queue: &str, exchange: &str, key: &str) {
    let m = c.call(
        1,
        Method::from(protocol::QueueBind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            no_wait: false,
            arguments: FieldTable::new(),
        }),
    );
    assert!(matches!(m, Method::QueueBindOk(_)), "{m:?}");
}

fn headers_of(m: &mailroom_tests::raw::RawMessage) -> FieldTable {
    m.header.properties.headers().unwrap().unwrap_or_default()
}

/// Every message in `queue`, got without ack.
fn drain(c: &mut RawClient, queue: &str) -> Vec<mailroom_tests::raw::RawMessage> {
    std::iter::from_fn(|| c.get(1, queue, true)).collect()
}

#[test]
fn cc_and_bcc_route_each_queue_once_and_bcc_is_never_delivered() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    exchange(&mut c, "x", "direct");
    exchange(&mut c, "t", "topic");
    for q in ["qa", "qb", "qc", "qd", "qt"] {
        queue(&mut c, q, &[]);
    }
    for (q, k) in [("qa", "a"), ("qb", "b"), ("qc", "c"), ("qd", "d")] {
        bind(&mut c, q, "x", k);
    }
    bind(&mut c, "qt", "t", "news.*");

    // Direct exchange: key a, CC [b, a], BCC [c]: qa, qb and qc once each, qd nothing.
    let props = with_headers(
        &[
            ("CC", strs(&["b", "a"])),
            ("other", text("kept")),
            ("BCC", strs(&["c"])),
        ],
        false,
    );
    publish(&mut c, "x", "a", &props, false);
    for q in ["qa", "qb", "qc"] {
        let got = drain(&mut c, q);
        assert_eq!(got.len(), 1, "{q} gets exactly one copy");
        let h = headers_of(&got[0]);
        assert_eq!(h.get("CC"), Some(&strs(&["b", "a"])), "{q}: CC as published");
        assert_eq!(h.get("other"), Some(&text("kept")), "{q}");
        assert!(h.get("BCC").is_none(), "{q}: BCC is removed from every copy");
        let Method::BasicGetOk(ok) = &got[0].method else {
            unreachable!()
        };
        assert_eq!(
            ok.routing_key.as_str(),
            "a",
            "the delivery shows the publish's own key"
        );
    }
    assert!(drain(&mut c, "qd").is_empty());

    // Default exchange: every key names a queue. Topic exchange: keys are matched as patterns.
    publish(
        &mut c,
        "",
        "qa",
        &with_headers(&[("CC", strs(&["qd"]))], false),
        false,
    );
    assert_eq!(drain(&mut c, "qa").len(), 1);
    assert_eq!(drain(&mut c, "qd").len(), 1);
    publish(
        &mut c,
        "t",
        "sport",
        &with_headers(&[("BCC", strs(&["news.eu"]))], false),
        false,
    );
    assert_eq!(drain(&mut c, "qt").len(), 1);

    // Only long strings count: other elements are ignored, as RabbitMQ's list comprehension does.
    let mixed = FieldValue::Array(vec![FieldValue::I32(7), text("b"), FieldValue::Bool(true)]);
    publish(&mut c, "x", "none", &with_headers(&[("CC", mixed)], false), false);
    assert_eq!(drain(&mut c, "qb").len(), 1);

    // Mandatory: routed through a CC key alone is routed (no basic.return).
    publish(
        &mut c,
        "x",
        "none",
        &with_headers(&[("CC", strs(&["b"]))], false),
        true,
    );
    let got = c.get(1, "qb", true).expect("routed by CC");
    assert_eq!(got.body, b"hello");
    // Unroutable with its CC keys too: returned, without BCC.
    publish(
        &mut c,
        "x",
        "none",
        &with_headers(&[("CC", strs(&["zz"])), ("BCC", strs(&["yy"]))], false),
        true,
    );
    let ret = c.expect_message(1);
    assert!(matches!(ret.method, Method::BasicReturn(_)), "{:?}", ret.method);
    assert!(headers_of(&ret).get("BCC").is_none());
    c.round_trip(1);
}

#[test]
fn cc_or_bcc_of_another_type_refuses_the_publish() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    queue(&mut c, "q", &[]);
    for (name, value, ty) in [
        ("CC", text("q"), "longstr"),
        ("BCC", FieldValue::I64(99), "long"),
        ("CC", FieldValue::Table(FieldTable::new()), "table"),
    ] {
        publish(&mut c, "", "q", &with_headers(&[(name, value)], false), false);
        let (code, text, class, method) = c.expect_channel_close(1);
        assert_eq!(code, 406);
        assert_eq!(
            text,
            format!("PRECONDITION_FAILED - invalid message: {{unacceptable_type_in_header,\"{name}\",{ty}}}")
        );
        assert_eq!((class, method), (60, 40));
        c.open_channel(1);
    }
    assert!(c.get(1, "q", true).is_none(), "nothing was routed");
}

/// x-death's routing-keys: the key and the CC keys, not the BCC keys.
fn death_keys(h: &FieldTable) -> Vec<String> {
    let Some(FieldValue::Array(deaths)) = h.get("x-death") else {
        panic!("no x-death in {h:?}")
    };
    let FieldValue::Table(d) = &deaths[0] else {
        panic!("{deaths:?}")
    };
    let Some(FieldValue::Array(keys)) = d.get("routing-keys") else {
        panic!("{d:?}")
    };
    keys.iter().map(|k| k.as_str().unwrap().to_string()).collect()
}

#[test]
fn dead_lettering_routes_with_every_key_and_records_cc_not_bcc() {
    let mut server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    exchange(&mut c, "x", "direct");
    exchange(&mut c, "dlx", "direct");
    // "src" dead-letters with the message's own keys; "src-rk" with the dead-letter routing key "s".
    queue(&mut c, "src", &[("x-dead-letter-exchange", text("dlx"))]);
    queue(
        &mut c,
        "src-rk",
        &[
            ("x-dead-letter-exchange", text("dlx")),
            ("x-dead-letter-routing-key", text("s")),
        ],
    );
    bind(&mut c, "src", "x", "s");
    bind(&mut c, "src-rk", "x", "s");
    for (q, k) in [("dl-s", "s"), ("dl-cc", "cc1"), ("dl-bcc", "bcc1")] {
        queue(&mut c, q, &[]);
        bind(&mut c, q, "dlx", k);
    }
    let props = with_headers(&[("CC", strs(&["cc1"])), ("BCC", strs(&["bcc1"]))], true);
    publish(&mut c, "x", "s", &props, false);
    c.round_trip(1);

    // A restart in between: the BCC keys come back with the stored message (and stay out of deliveries).
    c.close_connection();
    server.stop();
    server.restart();
    let mut c = RawClient::open_ch1(server.addr);

    for src in ["src", "src-rk"] {
        let m = c.get(1, src, false).expect("the message");
        assert!(
            headers_of(&m).get("BCC").is_none(),
            "{src}: no BCC after a restart either"
        );
        c.send_method(
            1,
            Method::BasicReject(protocol::BasicReject {
                delivery_tag: m.delivery_tag(),
                requeue: false,
            }),
        );
    }
    c.round_trip(1);

    // From "src": to dl-s, dl-cc and dl-bcc (all three keys); from "src-rk": to dl-s only.
    let s = drain(&mut c, "dl-s");
    assert_eq!(s.len(), 2, "dl-s gets the dead letter of both queues");
    assert_eq!(drain(&mut c, "dl-cc").len(), 1);
    assert_eq!(drain(&mut c, "dl-bcc").len(), 1);
    for m in &s {
        let h = headers_of(m);
        assert_eq!(
            death_keys(&h),
            ["s", "cc1"],
            "routing-keys: the key and CC, not BCC"
        );
        assert!(h.get("BCC").is_none(), "a dead letter never shows BCC");
        assert_eq!(h.get("CC"), Some(&strs(&["cc1"])), "RabbitMQ 4.x keeps CC");
    }
}
