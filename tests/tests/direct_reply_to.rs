//! Issue 12: direct reply-to (https://www.rabbitmq.com/docs/direct-reply-to), the RPC pattern of Spring
//! AMQP's RabbitTemplate, many Node and Python RPC helpers and RabbitMQ's tutorial 6.
//!
//! RabbitMQ's rules, from rabbit_channel.erl (4.x): the `basic.consume` clause for `amq.rabbitmq.reply-to`
//! ("reply consumer cannot acknowledge", "reply consumer already set"), `maybe_set_fast_reply_to` /
//! `override_reply_to` ("fast reply consumer does not exist", the rewrite of `reply_to` to
//! `amq.rabbitmq.reply-to.<suffix>`), the `queue.declare` clause for `amq.rabbitmq.reply-to*` ("all declares
//! to these are effectively passive. If it exists it by definition has one consumer": `{ok, QueueName, 0,
//! 1}`, else `not_found`), and `deliver_reply` (basic.deliver with the reply consumer's tag, the reply's
//! exchange and routing key). A reply to a requester that is gone is dropped; with mandatory it is
//! returned (rabbit_exchange.erl ≤ 4.1 routes reply names as `{virtual_reply_queue, _}`, which are not
//! queues, so a mandatory reply gets basic.return 312 NO_ROUTE).

use mailroom_tests::raw::protocol::{self, BasicProperties, FieldTable, Method, RawProperties};
use mailroom_tests::raw::RawClient;
use mailroom_tests::{run_python, Server};

const PSEUDO: &str = "amq.rabbitmq.reply-to";

fn consume(c: &mut RawClient, ch: u16, queue: &str, tag: &str, no_ack: bool) -> Method {
    c.call(
        ch,
        Method::BasicConsume(protocol::BasicConsume {
            queue: queue.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack,
            exclusive: false,
            no_wait: false,
            arguments: FieldTable::new(),
        }),
    )
}

fn declare(c: &mut RawClient, ch: u16, queue: &str, passive: bool) -> Method {
    c.call(
        ch,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: queue.into(),
            passive,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        }),
    )
}

fn props(reply_to: Option<&str>, correlation_id: &str) -> RawProperties {
    RawProperties::from_properties(&BasicProperties {
        reply_to: reply_to.map(Into::into),
        correlation_id: Some(correlation_id.into()),
        ..Default::default()
    })
}

fn publish(c: &mut RawClient, ch: u16, key: &str, props: &RawProperties, body: &[u8], mandatory: bool) {
    c.publish_full(
        ch,
        protocol::BasicPublish {
            exchange: "".into(),
            routing_key: key.into(),
            mandatory,
            immediate: false,
        },
        props,
        body,
    );
}

/// The requester: consumes from the pseudo-queue on channel 1; returns its consumer tag.
fn requester(server: &Server) -> (RawClient, String) {
    let mut r = RawClient::open_ch1(server.addr);
    let Method::BasicConsumeOk(ok) = consume(&mut r, 1, PSEUDO, "", true) else {
        panic!("no consume-ok")
    };
    (r, ok.consumer_tag.to_string())
}

/// Sends a request to queue "rpc" and returns the reply_to the responder sees.
fn request(r: &mut RawClient, s: &mut RawClient, id: &str) -> String {
    publish(r, 1, "rpc", &props(Some(PSEUDO), id), b"request", false);
    let got = loop {
        if let Some(m) = s.get(1, "rpc", true) {
            break m;
        }
    };
    assert_eq!(got.header.properties.correlation_id(), Some(id));
    got.header.properties.reply_to().expect("reply_to").to_string()
}

#[test]
fn request_reply_without_a_queue() {
    let server = Server::start();
    let (mut r, tag) = requester(&server);
    assert!(tag.starts_with("amq.ctag-"), "{tag}");
    let mut s = RawClient::open_ch1(server.addr);
    declare(&mut s, 1, "rpc", false);

    let reply_to = request(&mut r, &mut s, "c1");
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > PSEUDO.len() + 1,
        "{reply_to}"
    );

    // The responder may check that the requester is still there: declare (passive or not) says 0, 1.
    for passive in [true, false] {
        let Method::QueueDeclareOk(ok) = declare(&mut s, 1, &reply_to, passive) else {
            panic!("declare of the reply name")
        };
        assert_eq!(
            (ok.queue.as_str(), ok.message_count, ok.consumer_count),
            (reply_to.as_str(), 0, 1)
        );
    }
    let Method::QueueDeclareOk(ok) = declare(&mut s, 1, PSEUDO, false) else {
        panic!("declare of the pseudo-queue")
    };
    assert_eq!(
        (ok.queue.as_str(), ok.message_count, ok.consumer_count),
        (PSEUDO, 0, 1)
    );

    // The reply, published to the name on the default exchange (mandatory, in confirm mode), goes straight
    // to the requester's consumer: routed (no basic.return) and confirmed.
    let m = s.call(
        1,
        Method::ConfirmSelect(protocol::ConfirmSelect { no_wait: false }),
    );
    assert!(matches!(m, Method::ConfirmSelectOk(_)), "{m:?}");
    publish(&mut s, 1, &reply_to, &props(None, "c1"), b"reply", true);
    let m = s.expect_method();
    assert!(
        matches!(m, Method::BasicAck(_)),
        "the reply is confirmed, not returned: {m:?}"
    );
    let got = r.expect_message(1);
    let Method::BasicDeliver(d) = &got.method else {
        unreachable!()
    };
    assert_eq!(d.consumer_tag.as_str(), tag);
    assert_eq!(
        (d.exchange.as_str(), d.routing_key.as_str()),
        ("", reply_to.as_str())
    );
    assert!(!d.redelivered);
    assert_eq!(got.body, b"reply");
    assert_eq!(got.header.properties.correlation_id(), Some("c1"));

    // A second request carries the same name; nothing was declared: "rpc" is the only queue with messages.
    assert_eq!(request(&mut r, &mut s, "c2"), reply_to);
    publish(&mut s, 1, &reply_to, &props(None, "c2"), b"reply 2", false);
    let got = r.expect_message(1);
    assert_eq!(got.body, b"reply 2");
    assert_eq!(got.delivery_tag(), 2);

    // One reply consumer per channel.
    let (code, text, class, method) = match consume(&mut r, 1, PSEUDO, "", true) {
        Method::ChannelClose(c) => (c.reply_code, c.reply_text.to_string(), c.class_id, c.method_id),
        m => panic!("second reply consumer accepted: {m:?}"),
    };
    assert_eq!(
        (code, text.as_str(), class, method),
        (406, "PRECONDITION_FAILED - reply consumer already set", 60, 20)
    );
}

#[test]
fn reply_consumer_must_not_ack_and_requests_need_one() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let (code, text, class, method) = match consume(&mut c, 1, PSEUDO, "", false) {
        Method::ChannelClose(c) => (c.reply_code, c.reply_text.to_string(), c.class_id, c.method_id),
        m => panic!("{m:?}"),
    };
    c.send_method(1, Method::ChannelCloseOk(protocol::ChannelCloseOk));
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            406,
            "PRECONDITION_FAILED - reply consumer cannot acknowledge",
            60,
            20
        )
    );

    c.open_channel(1);
    declare(&mut c, 1, "rpc", false);
    publish(&mut c, 1, "rpc", &props(Some(PSEUDO), "x"), b"request", false);
    let (code, text, class, method) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), class, method),
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist",
            60,
            40
        )
    );
    c.open_channel(1);
    assert!(
        c.get(1, "rpc", true).is_none(),
        "the refused request was not routed"
    );

    // The reply consumer is per channel: consuming on channel 2 does not make channel 1 a requester.
    c.open_channel(2);
    assert!(matches!(
        consume(&mut c, 2, PSEUDO, "mine", true),
        Method::BasicConsumeOk(_)
    ));
    publish(&mut c, 1, "rpc", &props(Some(PSEUDO), "y"), b"request", false);
    let (code, ..) = c.expect_channel_close(1);
    assert_eq!(code, 406);
    // Cancelled, it is gone too.
    let m = c.call(
        2,
        Method::BasicCancel(protocol::BasicCancel {
            consumer_tag: "mine".into(),
            no_wait: false,
        }),
    );
    assert!(matches!(m, Method::BasicCancelOk(_)), "{m:?}");
    publish(&mut c, 2, "rpc", &props(Some(PSEUDO), "z"), b"request", false);
    let (code, ..) = c.expect_channel_close(2);
    assert_eq!(code, 406);
}

#[test]
fn a_reply_to_a_gone_requester_is_dropped_or_returned() {
    let server = Server::start();
    let (mut r, _) = requester(&server);
    let mut s = RawClient::open_ch1(server.addr);
    declare(&mut s, 1, "rpc", false);
    let reply_to = request(&mut r, &mut s, "c1");
    r.close_connection();
    drop(r);

    // Not mandatory: dropped, and the responder carries on.
    publish(&mut s, 1, &reply_to, &props(None, "c1"), b"late", false);
    s.round_trip(1);
    // Mandatory: basic.return 312 NO_ROUTE with the reply.
    publish(&mut s, 1, &reply_to, &props(None, "c1"), b"late", true);
    let m = s.expect_message(1);
    let Method::BasicReturn(ret) = &m.method else {
        panic!("{:?}", m.method)
    };
    assert_eq!((ret.reply_code, ret.reply_text.as_str()), (312, "NO_ROUTE"));
    assert_eq!(ret.routing_key.as_str(), reply_to);
    assert_eq!(m.body, b"late");
    // A name nobody was given: the same.
    publish(
        &mut s,
        1,
        "amq.rabbitmq.reply-to.nobody",
        &props(None, "c9"),
        b"x",
        true,
    );
    assert!(matches!(s.expect_message(1).method, Method::BasicReturn(_)));

    // The check a responder makes before expensive work: the name no longer exists.
    let m = declare(&mut s, 1, &reply_to, true);
    let Method::ChannelClose(close) = m else {
        panic!("{m:?}")
    };
    assert_eq!(close.reply_code, 404);
    assert_eq!(
        close.reply_text.as_str(),
        format!("NOT_FOUND - no queue '{reply_to}' in vhost '/'")
    );
}

#[test]
fn pika_spring_style_rpc_thousand_requests_each_reply_to_its_caller() {
    let server = Server::start();
    let out = run_python(&server, "direct_reply_to_rpc.py", &[]);
    assert!(out.contains("RPC OK 1000"), "{out}");
}
