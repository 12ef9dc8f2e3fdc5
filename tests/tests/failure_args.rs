//! Invalid failure-handling queue arguments are refused with channel.close 406 PRECONDITION_FAILED naming
//! the argument (as RabbitMQ), the queue is not created, and the connection stays usable. Also: redeclaring
//! with a different value is 406 "inequivalent arg".

use mailroom_tests::raw::protocol::{self, FieldTable, FieldValue, LongStr, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn declare(c: &mut RawClient, ch: u16, name: &str, args: FieldTable) -> Method {
    c.call(
        ch,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: args,
        }),
    )
}

fn args(pairs: Vec<(&str, FieldValue)>) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in pairs {
        t.insert(k, v);
    }
    t
}

fn text(v: &str) -> FieldValue {
    FieldValue::LongStr(LongStr::from(v))
}

/// Declares `q` with the argument; expects channel.close 406 on queue.declare naming `key`; returns the text.
fn refused(server: &Server, key: &str, value: FieldValue) -> String {
    let mut c = RawClient::open_ch1(server.addr);
    let m = declare(&mut c, 1, "q", args(vec![(key, value.clone())]));
    let Method::ChannelClose(close) = m else {
        panic!("{key} = {value:?} was accepted: {m:?}")
    };
    c.send_method(1, Method::ChannelCloseOk(protocol::ChannelCloseOk));
    let t = close.reply_text.to_string();
    assert_eq!(close.reply_code, 406, "{key} = {value:?}: {t}");
    assert_eq!(
        (close.class_id, close.method_id),
        (50, 10),
        "blames queue.declare"
    );
    assert!(t.starts_with("PRECONDITION_FAILED - "), "{t}");
    assert!(t.contains(key), "the text names the argument {key}: {t}");
    // The queue was not created, and the connection is fine.
    c.open_channel(2);
    let m = c.call(
        2,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "q".into(),
            passive: true,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        }),
    );
    match m {
        Method::ChannelClose(cl) => {
            assert_eq!(
                cl.reply_code, 404,
                "the refused queue must not exist: {}",
                cl.reply_text
            );
            c.send_method(2, Method::ChannelCloseOk(protocol::ChannelCloseOk));
        }
        m => panic!("the refused queue exists: {m:?}"),
    }
    c.open_channel(3);
    c.round_trip(3);
    t
}

#[test]
fn negative_message_ttl() {
    let server = Server::start();
    let t = refused(&server, "x-message-ttl", FieldValue::I32(-1));
    assert!(t.contains("-1"), "{t}");
}

#[test]
fn string_message_ttl() {
    let server = Server::start();
    refused(&server, "x-message-ttl", text("1000"));
}

#[test]
fn float_message_ttl() {
    let server = Server::start();
    refused(&server, "x-message-ttl", FieldValue::F64(1.5));
}

/// RabbitMQ's text is "...: invalid_overflow" (rabbit_amqqueue.erl check_overflow/2); it does not repeat the value.
#[test]
fn unknown_overflow_mode() {
    let server = Server::start();
    let t = refused(&server, "x-overflow", text("drop-tail"));
    assert!(t.ends_with("for queue 'q' in vhost '/': invalid_overflow"), "{t}");
}

#[test]
fn max_priority_300() {
    let server = Server::start();
    let t = refused(&server, "x-max-priority", FieldValue::I32(300));
    assert!(t.contains("300"), "{t}");
}

#[test]
fn negative_max_priority() {
    let server = Server::start();
    refused(&server, "x-max-priority", FieldValue::I32(-1));
}

#[test]
fn expires_zero_and_negative() {
    let server = Server::start();
    refused(&server, "x-expires", FieldValue::I32(0));
    refused(&server, "x-expires", FieldValue::I64(-5));
}

#[test]
fn negative_lengths_and_limits() {
    let server = Server::start();
    refused(&server, "x-max-length", FieldValue::I32(-1));
    refused(&server, "x-max-length-bytes", FieldValue::I32(-1));
    refused(&server, "x-delivery-limit", FieldValue::I32(-1));
    refused(&server, "x-delivery-limit", text("3"));
}

#[test]
fn bad_retry_arguments() {
    let server = Server::start();
    refused(&server, "x-delayed-retry-min", FieldValue::I32(-100));
    refused(&server, "x-delayed-retry-max", text("1s"));
    refused(&server, "x-delayed-retry-multiplier", FieldValue::I32(-2));
}

#[test]
fn bad_dead_letter_and_single_active_consumer_types() {
    let server = Server::start();
    refused(&server, "x-dead-letter-exchange", FieldValue::I32(1));
    refused(&server, "x-single-active-consumer", text("yes"));
}

/// RabbitMQ refuses a dead-letter routing key without a dead-letter exchange
/// ("invalid arg 'x-dead-letter-routing-key' ...: routing_key_but_no_dlx_defined").
#[test]
fn dead_letter_routing_key_without_exchange() {
    let server = Server::start();
    refused(&server, "x-dead-letter-routing-key", text("dlq"));
}

/// RabbitMQ's format names the queue and vhost: "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue
/// 'q' in vhost '/': {value_negative,-1}" (the Erlang error term varies between versions and is not checked).
#[test]
fn error_text_names_queue_and_vhost_like_rabbitmq() {
    let server = Server::start();
    let t = refused(&server, "x-message-ttl", FieldValue::I32(-1));
    assert!(
        t.starts_with("PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': "),
        "{t}"
    );
}

#[test]
fn valid_arguments_of_every_integer_width_are_accepted() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let widths = [
        FieldValue::U8(50),
        FieldValue::I16(50),
        FieldValue::U16(50),
        FieldValue::I32(50),
        FieldValue::U32(50),
        FieldValue::I64(50),
    ];
    for (i, v) in widths.into_iter().enumerate() {
        let name = format!("ok{i}");
        let m = declare(
            &mut c,
            1,
            &name,
            args(vec![
                ("x-message-ttl", v.clone()),
                ("x-max-length", v.clone()),
                ("x-max-priority", FieldValue::U8(10)),
                ("x-overflow", text("reject-publish-dlx")),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("dlq")),
                ("x-delivery-limit", v.clone()),
                ("x-delayed-retry-min", v.clone()),
                ("x-delayed-retry-max", v.clone()),
                ("x-delayed-retry-multiplier", FieldValue::U8(2)),
                ("x-expires", FieldValue::I32(60_000)),
                ("x-single-active-consumer", FieldValue::Bool(true)),
            ]),
        );
        assert!(matches!(m, Method::QueueDeclareOk(_)), "{name}: {m:?}");
    }
}

#[test]
fn redeclare_with_a_different_ttl_is_inequivalent() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let m = declare(
        &mut c,
        1,
        "q",
        args(vec![("x-message-ttl", FieldValue::I32(100))]),
    );
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
    // Same value, other integer width: equivalent.
    let m = declare(
        &mut c,
        1,
        "q",
        args(vec![("x-message-ttl", FieldValue::I64(100))]),
    );
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
    let m = declare(
        &mut c,
        1,
        "q",
        args(vec![("x-message-ttl", FieldValue::I32(200))]),
    );
    let Method::ChannelClose(close) = m else {
        panic!("accepted a different x-message-ttl: {m:?}")
    };
    c.send_method(1, Method::ChannelCloseOk(protocol::ChannelCloseOk));
    assert_eq!(close.reply_code, 406);
    let t = close.reply_text.to_string();
    assert!(
        t.contains("inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/'"),
        "{t}"
    );
    // Dropping the DLX on redeclare is inequivalent too.
    c.open_channel(2);
    let m = declare(
        &mut c,
        2,
        "d",
        args(vec![("x-dead-letter-exchange", text("dlx"))]),
    );
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
    let m = declare(&mut c, 2, "d", FieldTable::new());
    let Method::ChannelClose(close) = m else {
        panic!("accepted a redeclare without the DLX: {m:?}")
    };
    assert_eq!(close.reply_code, 406);
    assert!(
        close.reply_text.as_str().contains("x-dead-letter-exchange"),
        "{}",
        close.reply_text
    );
}
