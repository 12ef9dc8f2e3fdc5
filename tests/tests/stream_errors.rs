//! Issue 15: what a stream refuses, with RabbitMQ's codes and texts. Declaration:
//! rabbit_queue_type_util:check_auto_delete/check_exclusive/check_non_durable and
//! rabbit_amqqueue:check_arguments_key/4 (406); consumers: rabbit_stream_queue:consume/3 (no prefetch: 406;
//! automatic ack and global qos: 540 NOT_IMPLEMENTED, which closes the connection) and
//! check_stream_offset_arg (406); basic.get (rabbit_stream_queue:dequeue/6) and queue.purge
//! (rabbit_channel, `{error, not_supported}`): 540. The broker goes on serving everyone else and nothing
//! is lost.

use mailroom_tests::raw::protocol::{self, FieldTable, FieldValue, LongStr, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn text(v: &str) -> FieldValue {
    FieldValue::LongStr(LongStr::from(v))
}

fn declare(
    c: &mut RawClient,
    name: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    extra: &[(&str, FieldValue)],
) -> Method {
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type", text("stream"));
    for (k, v) in extra {
        arguments.insert(*k, v.clone());
    }
    c.call(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: name.into(),
            passive: false,
            durable,
            exclusive,
            auto_delete,
            no_wait: false,
            arguments,
        }),
    )
}

fn refused(c: &mut RawClient, m: Method, code: u16, why: &str, class_method: (u16, u16)) {
    let Method::ChannelClose(close) = m else {
        panic!("accepted: {m:?}")
    };
    c.send_method(1, Method::ChannelCloseOk(protocol::ChannelCloseOk));
    assert_eq!(
        (close.reply_code, close.reply_text.to_string()),
        (code, why.to_string())
    );
    assert_eq!((close.class_id, close.method_id), class_method);
    c.open_channel(1);
}

fn qos(c: &mut RawClient, n: u16, global: bool) {
    let m = c.call(
        1,
        Method::BasicQos(protocol::BasicQos {
            prefetch_size: 0,
            prefetch_count: n,
            global,
        }),
    );
    assert!(matches!(m, Method::BasicQosOk(_)), "{m:?}");
}

fn consume_msg(queue: &str, no_ack: bool, args: FieldTable) -> Method {
    Method::BasicConsume(protocol::BasicConsume {
        queue: queue.into(),
        consumer_tag: "".into(),
        no_local: false,
        no_ack,
        exclusive: false,
        no_wait: false,
        arguments: args,
    })
}

#[test]
fn declarations_a_stream_refuses() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let m = declare(&mut c, "s", false, false, false, &[]);
    refused(
        &mut c,
        m,
        406,
        "PRECONDITION_FAILED - invalid property 'non-durable' for queue 's' in vhost '/'",
        (50, 10),
    );
    let m = declare(&mut c, "s", true, true, false, &[]);
    refused(
        &mut c,
        m,
        406,
        "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 's' in vhost '/'",
        (50, 10),
    );
    let m = declare(&mut c, "s", true, false, true, &[]);
    refused(
        &mut c,
        m,
        406,
        "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 's' in vhost '/'",
        (50, 10),
    );
    let m = declare(
        &mut c,
        "s",
        true,
        false,
        false,
        &[("x-message-ttl", FieldValue::I32(1000))],
    );
    refused(
        &mut c,
        m,
        406,
        "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 's' in vhost '/' of queue type rabbit_stream_queue",
        (50, 10),
    );
    let m = declare(&mut c, "s", true, false, false, &[("x-max-age", text("7x"))]);
    refused(
        &mut c,
        m,
        406,
        "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 's' in vhost '/': invalid_max_age",
        (50, 10),
    );
    // nothing was created; a proper declaration works
    let m = declare(
        &mut c,
        "s",
        true,
        false,
        false,
        &[
            ("x-max-age", text("7D")),
            ("x-max-length-bytes", FieldValue::I64(1 << 30)),
        ],
    );
    assert!(
        matches!(m, Method::QueueDeclareOk(ref ok) if ok.message_count == 0),
        "{m:?}"
    );
    // a redeclaration must match (rabbit_misc:assert_args_equivalence/4 over the stream's arguments)
    let m = declare(
        &mut c,
        "s",
        true,
        false,
        false,
        &[
            ("x-max-age", text("1D")),
            ("x-max-length-bytes", FieldValue::I64(1 << 30)),
        ],
    );
    refused(
        &mut c,
        m,
        406,
        "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue 's' in vhost '/': received the value '1D' of type 'longstr' but current is the value '7D' of type 'longstr'",
        (50, 10),
    );
}

#[test]
fn consumers_and_methods_a_stream_refuses() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let m = declare(&mut c, "s", true, false, false, &[]);
    assert!(matches!(m, Method::QueueDeclareOk(_)));
    c.publish(1, "", "s", b"kept");

    // no prefetch
    let m = c.call(1, consume_msg("s", false, FieldTable::new()));
    refused(
        &mut c,
        m,
        406,
        "PRECONDITION_FAILED - consumer prefetch count is not set for stream queue 's' in vhost '/'",
        (60, 20),
    );
    // a bad offset spec
    qos(&mut c, 10, false);
    let mut args = FieldTable::new();
    args.insert("x-stream-offset", text("bogus"));
    let m = c.call(1, consume_msg("s", false, args));
    refused(
        &mut c,
        m,
        406,
        "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 's' in vhost '/': {invalid_stream_offset_arg,{longstr,<<\"bogus\">>}}",
        (60, 20),
    );

    // basic.get: 540, the connection closes
    c.send_method(
        1,
        Method::BasicGet(protocol::BasicGet {
            queue: "s".into(),
            no_ack: false,
        }),
    );
    let (code, why, class, method) = c.expect_connection_close();
    assert_eq!(
        (code, why.as_str(), class, method),
        (
            540,
            "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 's' in vhost '/'",
            60,
            70
        )
    );

    let mut c = RawClient::open_ch1(server.addr);
    qos(&mut c, 10, false);
    c.send_method(1, consume_msg("s", true, FieldTable::new()));
    let (code, why, ..) = c.expect_connection_close();
    assert_eq!(
        (code, why.as_str()),
        (
            540,
            "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queue 's' in vhost '/'"
        )
    );

    let mut c = RawClient::open_ch1(server.addr);
    qos(&mut c, 10, false);
    qos(&mut c, 10, true);
    c.send_method(1, consume_msg("s", false, FieldTable::new()));
    let (code, why, ..) = c.expect_connection_close();
    assert_eq!(
        (code, why.as_str()),
        (
            540,
            "NOT_IMPLEMENTED - queue 's' in vhost '/' does not support global qos"
        )
    );

    let mut c = RawClient::open_ch1(server.addr);
    c.send_method(
        1,
        Method::QueuePurge(protocol::QueuePurge {
            queue: "s".into(),
            no_wait: false,
        }),
    );
    let (code, why, ..) = c.expect_connection_close();
    assert_eq!(
        (code, why.as_str()),
        (
            540,
            "NOT_IMPLEMENTED - queue.purge not supported by stream queues queue 's' in vhost '/'"
        )
    );

    // the broker serves on, and the message is still there
    let mut c = RawClient::open_ch1(server.addr);
    qos(&mut c, 10, false);
    let mut args = FieldTable::new();
    args.insert("x-stream-offset", text("first"));
    let m = c.call(1, consume_msg("s", false, args));
    assert!(matches!(m, Method::BasicConsumeOk(_)), "{m:?}");
    let msg = c.expect_message(1);
    assert_eq!(msg.body_str(), "kept");
}
