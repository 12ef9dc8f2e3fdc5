//! Issue 12: queue arguments are validated as RabbitMQ 4.x does (rabbit_amqqueue.erl `declare_args()` and
//! its check_* functions; `check_arguments_type_and_value` formats "invalid arg '~ts' for ~ts: ~255p", so a
//! formatted-string error is printed in double quotes and an error term as Erlang prints it). Each refusal is
//! channel.close 406 on queue.declare with RabbitMQ's exact text, nothing is created, and the connection
//! stays usable; every accepted value declares a queue.

use mailroom_tests::raw::protocol::{self, FieldTable, FieldValue, LongStr, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn declare(c: &mut RawClient, ch: u16, name: &str, key: &str, value: FieldValue) -> Method {
    let mut args = FieldTable::new();
    args.insert(key, value);
    if key == "x-dead-letter-routing-key" {
        args.insert("x-dead-letter-exchange", text(""));
    }
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

fn text(v: &str) -> FieldValue {
    FieldValue::LongStr(LongStr::from(v))
}

/// Refused with 406 and exactly RabbitMQ's text for queue `q` in vhost `/`.
fn refused_with(c: &mut RawClient, key: &str, value: FieldValue, why: &str) {
    let m = declare(c, 1, "q", key, value.clone());
    let Method::ChannelClose(close) = m else {
        panic!("{key} = {value:?} was accepted: {m:?}")
    };
    c.send_method(1, Method::ChannelCloseOk(protocol::ChannelCloseOk));
    assert_eq!(close.reply_code, 406, "{key} = {value:?}");
    assert_eq!((close.class_id, close.method_id), (50, 10));
    assert_eq!(
        close.reply_text.to_string(),
        format!("PRECONDITION_FAILED - invalid arg '{key}' for queue 'q' in vhost '/': {why}"),
        "{key} = {value:?}"
    );
    c.open_channel(1);
}

fn accepted(c: &mut RawClient, n: &mut u32, key: &str, value: FieldValue) {
    *n += 1;
    let name = format!("ok-{n}");
    let m = declare(c, 1, &name, key, value.clone());
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{key} = {value:?}: {m:?}");
}

#[test]
fn queue_type_and_mode_are_checked() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    // check_queue_type/2: known names only.
    refused_with(
        &mut c,
        "x-queue-type",
        text("bogus"),
        "\"unsupported queue type 'bogus'\"",
    );
    refused_with(
        &mut c,
        "x-queue-type",
        FieldValue::I32(1),
        "{unacceptable_type,signedint}",
    );
    // check_queue_mode/2 (RabbitMQ 4.0-4.2): default or lazy.
    refused_with(
        &mut c,
        "x-queue-mode",
        text("eager"),
        "\"unsupported queue mode 'eager'\"",
    );
    refused_with(
        &mut c,
        "x-queue-mode",
        FieldValue::Bool(true),
        "{unacceptable_type,bool}",
    );
    // check_queue_version/2.
    refused_with(
        &mut c,
        "x-queue-version",
        FieldValue::I32(3),
        "\"unsupported queue version '3'\"",
    );
    let mut n = 0;
    // a stream must be durable: its declarations are tested in stream_errors.rs
    for t in ["classic", "quorum"] {
        accepted(&mut c, &mut n, "x-queue-type", text(t));
    }
    for m in ["default", "lazy"] {
        accepted(&mut c, &mut n, "x-queue-mode", text(m));
    }
    accepted(&mut c, &mut n, "x-queue-version", FieldValue::I32(2));
}

#[test]
fn integer_arguments_take_integers_in_range() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    // check_int_arg/2: "expected integer, got <type>" for floats, strings and timestamps.
    refused_with(
        &mut c,
        "x-message-ttl",
        FieldValue::F64(1.5),
        "\"expected integer, got double\"",
    );
    refused_with(
        &mut c,
        "x-max-length",
        text("10"),
        "\"expected integer, got longstr\"",
    );
    refused_with(
        &mut c,
        "x-expires",
        FieldValue::Timestamp(5),
        "\"expected integer, got timestamp\"",
    );
    // check_expiry/1: ten years at most, never negative; x-expires also not zero.
    refused_with(
        &mut c,
        "x-message-ttl",
        FieldValue::I64(315_360_000_001),
        "{value_too_large,315360000001}",
    );
    refused_with(
        &mut c,
        "x-message-ttl",
        FieldValue::I32(-1),
        "{value_negative,-1}",
    );
    refused_with(&mut c, "x-expires", FieldValue::I32(0), "{value_zero,0}");
    // check_max_priority_arg/2.
    refused_with(
        &mut c,
        "x-max-priority",
        FieldValue::I32(256),
        "{max_value_exceeded,256}",
    );
    refused_with(
        &mut c,
        "x-max-priority",
        FieldValue::I32(-1),
        "{value_negative,-1}",
    );
    // check_non_neg_int_arg/2 for the rest of RabbitMQ's list.
    for key in [
        "x-max-length-bytes",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-consumer-timeout",
        "x-stream-max-segment-size-bytes",
    ] {
        refused_with(&mut c, key, FieldValue::I32(-7), "{value_negative,-7}");
    }
    // check_initial_cluster_size_arg/2.
    refused_with(
        &mut c,
        "x-quorum-initial-group-size",
        FieldValue::I32(0),
        "{value_zero,0}",
    );
    let mut n = 0;
    accepted(&mut c, &mut n, "x-message-ttl", FieldValue::I64(315_360_000_000));
    accepted(&mut c, &mut n, "x-max-priority", FieldValue::U8(255));
    accepted(&mut c, &mut n, "x-consumer-timeout", FieldValue::U32(60_000));
}

#[test]
fn string_arguments_take_known_values() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    refused_with(&mut c, "x-overflow", text("drop-tail"), "invalid_overflow");
    refused_with(
        &mut c,
        "x-overflow",
        FieldValue::I32(1),
        "{unacceptable_type,signedint}",
    );
    refused_with(
        &mut c,
        "x-dead-letter-strategy",
        text("sometimes"),
        "invalid_dlx_strategy",
    );
    refused_with(
        &mut c,
        "x-dead-letter-exchange",
        FieldValue::Bool(false),
        "{unacceptable_type,bool}",
    );
    refused_with(
        &mut c,
        "x-dead-letter-routing-key",
        FieldValue::I32(1),
        "{unacceptable_type,signedint}",
    );
    refused_with(
        &mut c,
        "x-single-active-consumer",
        text("true"),
        "{unacceptable_type,longstr}",
    );
    refused_with(&mut c, "x-max-age", text("7W"), "invalid_max_age");
    refused_with(&mut c, "x-max-age", text("0D"), "invalid_max_age");
    refused_with(
        &mut c,
        "x-queue-leader-locator",
        text("nearest"),
        "invalid_queue_locator_arg",
    );
    refused_with(
        &mut c,
        "x-member-placement-tag",
        text(""),
        "invalid_member_placement_tag_arg",
    );
    let mut n = 0;
    accepted(&mut c, &mut n, "x-dead-letter-strategy", text("at-least-once"));
    accepted(&mut c, &mut n, "x-max-age", text("7D"));
    accepted(&mut c, &mut n, "x-queue-leader-locator", text("balanced"));
    // Arguments no one validates are kept as given (RabbitMQ ignores unknown x- arguments).
    accepted(&mut c, &mut n, "x-my-own", text("anything"));
}
