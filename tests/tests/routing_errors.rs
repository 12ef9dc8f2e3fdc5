//! Exchange and binding errors over raw frames, with RabbitMQ's codes, texts and class/method ids:
//! exchange.declare passive/redeclare/reserved names/default exchange/unknown type, exchange.delete
//! if-unused and idempotence, queue.bind/unbind and exchange.bind/unbind to missing ends, publish to a
//! missing exchange; and auto-delete exchanges (with lapin) disappearing with their last binding.

mod routing_common;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use mailroom_tests::raw::protocol::{self, FieldTable as RawTable, FieldValue, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;
use routing_common::*;

#[derive(Clone, Copy, Default)]
struct Flags {
    passive: bool,
    durable: bool,
    auto_delete: bool,
    internal: bool,
}

fn xdecl_args(name: &str, kind: &str, f: Flags, arguments: RawTable) -> Method {
    Method::ExchangeDeclare(protocol::ExchangeDeclare {
        exchange: name.into(),
        kind: kind.into(),
        passive: f.passive,
        durable: f.durable,
        auto_delete: f.auto_delete,
        internal: f.internal,
        no_wait: false,
        arguments,
    })
}

fn xdecl(name: &str, kind: &str, f: Flags) -> Method {
    xdecl_args(name, kind, f, RawTable::new())
}

fn xdelete(name: &str, if_unused: bool) -> Method {
    Method::ExchangeDelete(protocol::ExchangeDelete {
        exchange: name.into(),
        if_unused,
        no_wait: false,
    })
}

fn qbind(queue: &str, exchange: &str, key: &str) -> Method {
    Method::from(protocol::QueueBind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: key.into(),
        no_wait: false,
        arguments: RawTable::new(),
    })
}

fn qunbind(queue: &str, exchange: &str, key: &str) -> Method {
    Method::from(protocol::QueueUnbind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: key.into(),
        arguments: RawTable::new(),
    })
}

fn xbind_m(destination: &str, source: &str, key: &str) -> Method {
    Method::from(protocol::ExchangeBind {
        destination: destination.into(),
        source: source.into(),
        routing_key: key.into(),
        no_wait: false,
        arguments: RawTable::new(),
    })
}

fn xunbind_m(destination: &str, source: &str, key: &str) -> Method {
    Method::from(protocol::ExchangeUnbind {
        destination: destination.into(),
        source: source.into(),
        routing_key: key.into(),
        no_wait: false,
        arguments: RawTable::new(),
    })
}

/// Sends `m` on channel 1 and expects its -ok (by method name).
fn ok(c: &mut RawClient, m: Method) {
    let sent = m.name();
    let reply = c.call(1, m);
    let expected_ok = format!("{}-ok", sent);
    assert_eq!(reply.name(), expected_ok, "{sent}: got {reply:?}");
}

/// Sends `m` on channel 1, expects channel.close with (code, text, class, method), then reopens channel 1
/// and proves the connection still works.
fn ch_err(c: &mut RawClient, m: Method, expected: (u16, &str, u16, u16)) {
    let sent = m.name();
    c.send_method(1, m);
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!((code, text.as_str(), cls, mth), expected, "{sent}");
    c.open_channel(1);
}

fn client(server: &Server) -> RawClient {
    RawClient::open_ch1(server.addr)
}

const DEFAULT_REFUSED: &str = "ACCESS_REFUSED - operation not permitted on the default exchange";

#[test]
fn passive_declare_of_a_missing_exchange_is_404() {
    let server = Server::start();
    let mut c = client(&server);
    let passive = Flags {
        passive: true,
        ..Default::default()
    };
    ch_err(
        &mut c,
        xdecl("nx", "direct", passive),
        (404, "NOT_FOUND - no exchange 'nx' in vhost '/'", 40, 10),
    );
    // Passive ignores type and flags of an existing exchange.
    ok(&mut c, xdecl("x", "topic", Flags::default()));
    ok(
        &mut c,
        xdecl(
            "x",
            "fanout",
            Flags {
                durable: true,
                ..passive
            },
        ),
    );
    ok(&mut c, xdecl("amq.direct", "", passive));
    c.round_trip(1);
}

#[test]
fn redeclare_with_different_type_or_flags_is_406() {
    let server = Server::start();
    let mut c = client(&server);
    ok(&mut c, xdecl("x", "direct", Flags::default()));
    ok(&mut c, xdecl("x", "direct", Flags::default()));
    let t = |field: &str, received: &str, current: &str| {
        format!("PRECONDITION_FAILED - inequivalent arg '{field}' for exchange 'x' in vhost '/': received {received} but current is {current}")
    };
    let text = t("type", "'fanout'", "'direct'");
    ch_err(
        &mut c,
        xdecl("x", "fanout", Flags::default()),
        (406, &text, 40, 10),
    );
    let text = t("durable", "'true'", "'false'");
    ch_err(
        &mut c,
        xdecl(
            "x",
            "direct",
            Flags {
                durable: true,
                ..Default::default()
            },
        ),
        (406, &text, 40, 10),
    );
    let text = t("auto_delete", "'true'", "'false'");
    ch_err(
        &mut c,
        xdecl(
            "x",
            "direct",
            Flags {
                auto_delete: true,
                ..Default::default()
            },
        ),
        (406, &text, 40, 10),
    );
    let text = t("internal", "'true'", "'false'");
    ch_err(
        &mut c,
        xdecl(
            "x",
            "direct",
            Flags {
                internal: true,
                ..Default::default()
            },
        ),
        (406, &text, 40, 10),
    );

    // Only alternate-exchange among the arguments is compared (as RabbitMQ).
    let mut other = RawTable::new();
    other.insert("foo", FieldValue::I32(1));
    ok(&mut c, xdecl_args("x", "direct", Flags::default(), other));
    let mut ae_a = RawTable::new();
    ae_a.insert("alternate-exchange", FieldValue::LongStr("a".into()));
    let mut ae_b = RawTable::new();
    ae_b.insert("alternate-exchange", FieldValue::LongStr("b".into()));
    ok(&mut c, xdecl_args("y", "direct", Flags::default(), ae_a.clone()));
    ok(&mut c, xdecl_args("y", "direct", Flags::default(), ae_a));
    ch_err(
        &mut c,
        xdecl_args("y", "direct", Flags::default(), ae_b),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'y' in vhost '/': received 'b' but current is 'a'",
            40,
            10,
        ),
    );
    ch_err(
        &mut c,
        xdecl("y", "direct", Flags::default()),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange 'y' in vhost '/': received none but current is the value 'a' of type 'longstr'",
            40,
            10,
        ),
    );
    // A predeclared exchange redeclared with another type.
    ch_err(
        &mut c,
        xdecl("amq.direct", "fanout", Flags { durable: true, ..Default::default() }),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'amq.direct' in vhost '/': received 'fanout' but current is 'direct'",
            40,
            10,
        ),
    );
    c.round_trip(1);
}

#[test]
fn reserved_amq_prefix_is_403() {
    let server = Server::start();
    let mut c = client(&server);
    ch_err(
        &mut c,
        xdecl("amq.foo", "direct", Flags::default()),
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
            40,
            10,
        ),
    );
    // Existing amq.* exchanges may be redeclared equivalently but not deleted.
    ok(
        &mut c,
        xdecl(
            "amq.topic",
            "topic",
            Flags {
                durable: true,
                ..Default::default()
            },
        ),
    );
    ch_err(
        &mut c,
        xdelete("amq.topic", false),
        (
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.topic' in vhost '/' not allowed",
            40,
            20,
        ),
    );
    // 'amq' without the dot is an ordinary name.
    ok(&mut c, xdecl("amqx", "direct", Flags::default()));
}

#[test]
fn default_exchange_declare_delete_bind_are_403() {
    let server = Server::start();
    let mut c = client(&server);
    c.declare_queue(1, "q");
    ok(&mut c, xdecl("x", "direct", Flags::default()));
    ch_err(
        &mut c,
        xdecl("", "direct", Flags::default()),
        (403, DEFAULT_REFUSED, 40, 10),
    );
    let passive = Flags {
        passive: true,
        ..Default::default()
    };
    ch_err(
        &mut c,
        xdecl("", "direct", passive),
        (403, DEFAULT_REFUSED, 40, 10),
    );
    ch_err(&mut c, xdelete("", false), (403, DEFAULT_REFUSED, 40, 20));
    ch_err(&mut c, qbind("q", "", "q"), (403, DEFAULT_REFUSED, 50, 20));
    ch_err(&mut c, qunbind("q", "", "q"), (403, DEFAULT_REFUSED, 50, 50));
    ch_err(&mut c, xbind_m("x", "", "k"), (403, DEFAULT_REFUSED, 40, 30));
    ch_err(&mut c, xbind_m("", "x", "k"), (403, DEFAULT_REFUSED, 40, 30));
    ch_err(&mut c, xunbind_m("x", "", "k"), (403, DEFAULT_REFUSED, 40, 40));
    // The default exchange still routes.
    c.round_trip(1);
}

#[test]
fn unknown_exchange_type_closes_the_connection_503() {
    let server = Server::start();
    for (name, kind) in [("x", "foo"), ("x", ""), ("x", "x-recent-history"), ("", "foo")] {
        let mut c = client(&server);
        c.send_method(1, xdecl(name, kind, Flags::default()));
        let (code, text, cls, mth) = c.expect_connection_close();
        assert_eq!(
            (code, text.as_str(), cls, mth),
            (
                503,
                format!("COMMAND_INVALID - unknown exchange type '{kind}'").as_str(),
                40,
                10
            ),
            "declare '{name}' of type '{kind}'"
        );
        assert!(c.is_closed_by_server());
    }
    // Also when the exchange exists (the type is checked first, as RabbitMQ).
    let mut c = client(&server);
    ok(&mut c, xdecl("exists", "direct", Flags::default()));
    c.send_method(1, xdecl("exists", "bogus", Flags::default()));
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str()),
        (503, "COMMAND_INVALID - unknown exchange type 'bogus'")
    );
}

#[test]
fn exchange_delete_if_unused_and_idempotence() {
    let server = Server::start();
    let mut c = client(&server);
    c.declare_queue(1, "q");
    ok(&mut c, xdecl("x", "direct", Flags::default()));
    ok(&mut c, xdecl("dst", "fanout", Flags::default()));
    ok(&mut c, qbind("q", "x", "k"));
    ch_err(
        &mut c,
        xdelete("x", true),
        (
            406,
            "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use",
            40,
            20,
        ),
    );
    // An exchange bound as source of an e2e binding is in use too.
    ok(&mut c, qunbind("q", "x", "k"));
    ok(&mut c, xbind_m("dst", "x", "k"));
    ch_err(
        &mut c,
        xdelete("x", true),
        (
            406,
            "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use",
            40,
            20,
        ),
    );
    // Being only a destination does not count (RabbitMQ checks bindings with the exchange as source).
    ok(&mut c, xdelete("dst", true));
    // x lost its only binding with dst; now unused.
    ok(&mut c, xdelete("x", true));
    // Deleting a missing exchange is fine, repeatedly, with or without if-unused.
    ok(&mut c, xdelete("x", false));
    ok(&mut c, xdelete("never", true));
    let passive = Flags {
        passive: true,
        ..Default::default()
    };
    ch_err(
        &mut c,
        xdecl("x", "direct", passive),
        (404, "NOT_FOUND - no exchange 'x' in vhost '/'", 40, 10),
    );
    // Deleting an exchange removes its bindings: a new one of the same name starts empty.
    ok(&mut c, xdecl("x2", "direct", Flags::default()));
    ok(&mut c, qbind("q", "x2", "k"));
    ok(&mut c, xdelete("x2", false));
    ok(&mut c, xdecl("x2", "direct", Flags::default()));
    ok(&mut c, xdelete("x2", true));
}

#[test]
fn binding_missing_ends_is_404_and_unbinding_missing_ends_or_bindings_is_ok() {
    let server = Server::start();
    let mut c = client(&server);
    c.declare_queue(1, "q");
    ok(&mut c, xdecl("x", "direct", Flags::default()));
    let no_x = "NOT_FOUND - no exchange 'nx' in vhost '/'";
    let no_q = "NOT_FOUND - no queue 'nq' in vhost '/'";
    ch_err(&mut c, qbind("q", "nx", "k"), (404, no_x, 50, 20));
    ch_err(&mut c, qbind("nq", "x", "k"), (404, no_q, 50, 20));
    ch_err(&mut c, xbind_m("x", "nx", "k"), (404, no_x, 40, 30));
    ch_err(
        &mut c,
        xbind_m("ndst", "x", "k"),
        (404, "NOT_FOUND - no exchange 'ndst' in vhost '/'", 40, 30),
    );
    // Unbinding where an end is missing is unbind-ok in RabbitMQ 4.x (rabbit_db_binding:delete_v2/2 returns
    // ok when the source or destination lookup fails: "No absent queues, always present on disk").
    ok(&mut c, qunbind("q", "nx", "k"));
    ok(&mut c, qunbind("nq", "x", "k"));
    ok(&mut c, xunbind_m("x", "nx", "k"));
    ok(&mut c, xunbind_m("nx", "x", "k"));
    // Unbinding something never bound (both ends exist) is a no-op.
    ok(&mut c, qunbind("q", "x", "never"));
    ok(&mut c, xunbind_m("x", "amq.direct", "never"));
    // Binding twice is idempotent; one unbind removes it.
    ok(&mut c, qbind("q", "x", "k"));
    ok(&mut c, qbind("q", "x", "k"));
    ok(&mut c, qunbind("q", "x", "k"));
    ok(&mut c, qunbind("q", "x", "k"));
    c.publish(1, "x", "k", b"nowhere");
    assert!(c.get(1, "q", true).is_none());
}

/// RabbitMQ (rabbit_channel:binding_action/10, rabbit_binding:add/3) checks the default exchange before
/// anything, then looks both ends up and reports the missing source exchange first.
#[test]
fn bind_checks_default_exchange_then_source_before_the_queue() {
    let server = Server::start();
    let mut c = client(&server);
    let no_x = "NOT_FOUND - no exchange 'nx' in vhost '/'";
    let mut wrong = Vec::new();
    for (m, expected) in [
        (qbind("nq", "", "k"), (403, DEFAULT_REFUSED, 50, 20)),
        (qunbind("nq", "", "k"), (403, DEFAULT_REFUSED, 50, 50)),
        (qbind("nq", "nx", "k"), (404, no_x, 50, 20)),
        (xbind_m("ndst", "nx", "k"), (404, no_x, 40, 30)),
        (xbind_m("ndst", "", "k"), (403, DEFAULT_REFUSED, 40, 30)),
    ] {
        let sent = format!("{m:?}");
        c.send_method(1, m);
        let (code, text, cls, mth) = c.expect_channel_close(1);
        if (code, text.as_str(), cls, mth) != expected {
            wrong.push(format!(
                "{sent}\n  got      {:?}\n  expected {expected:?}",
                (code, &text, cls, mth)
            ));
        }
        c.open_channel(1);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn publish_to_a_missing_exchange_is_404_channel_close() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 131_072);
    c.open_channel(1);
    c.open_channel(2);
    c.publish(1, "nx", "k", b"lost");
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (404, "NOT_FOUND - no exchange 'nx' in vhost '/'", 60, 40)
    );
    // A deleted exchange is missing too.
    c.send_method(2, xdecl("gone", "fanout", Flags::default()));
    assert!(matches!(c.expect_method(), Method::ExchangeDeclareOk(_)));
    c.send_method(2, xdelete("gone", false));
    assert!(matches!(c.expect_method(), Method::ExchangeDeleteOk(_)));
    c.publish(2, "gone", "k", b"lost");
    let (code, text, cls, mth) = c.expect_channel_close(2);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (404, "NOT_FOUND - no exchange 'gone' in vhost '/'", 60, 40)
    );
    c.open_channel(1);
    c.round_trip(1);
}

#[test]
fn publish_to_internal_exchange_is_403_with_ids() {
    let server = Server::start();
    let mut c = client(&server);
    ok(
        &mut c,
        xdecl(
            "ix",
            "fanout",
            Flags {
                internal: true,
                ..Default::default()
            },
        ),
    );
    c.publish(1, "ix", "", b"no");
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'ix' in vhost '/'",
            60,
            40
        )
    );
}

// ---- auto-delete (lapin) ----

fn auto_delete() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = channel(&conn).await;
    for q in ["q1", "q2", "q3"] {
        queue(&ch, q).await;
    }
    // Never bound: stays.
    exchange_with(
        &ch,
        "ad0",
        ExchangeKind::Direct,
        auto_delete(),
        FieldTable::default(),
    )
    .await;
    // Two queue bindings: the first unbind keeps it, the last removes it.
    exchange_with(
        &ch,
        "ad1",
        ExchangeKind::Direct,
        auto_delete(),
        FieldTable::default(),
    )
    .await;
    bind(&ch, "q1", "ad1", "a").await;
    bind(&ch, "q2", "ad1", "b").await;
    unbind(&ch, "q1", "ad1", "a").await;
    assert!(exchange_exists(&conn, "ad1").await, "ad1 still has a binding");
    unbind(&ch, "q2", "ad1", "b").await;
    assert!(!exchange_exists(&conn, "ad1").await, "ad1 lost its last binding");
    assert!(
        exchange_exists(&conn, "ad0").await,
        "never-bound auto-delete exchange stays"
    );

    // Queue deletion removes the binding, and so the exchange.
    exchange_with(
        &ch,
        "ad2",
        ExchangeKind::Fanout,
        auto_delete(),
        FieldTable::default(),
    )
    .await;
    bind(&ch, "q3", "ad2", "").await;
    ch.queue_delete("q3".into(), Default::default()).await.unwrap();
    assert!(!exchange_exists(&conn, "ad2").await, "ad2 went with q3");

    // As the source of an e2e binding; exchange.unbind removes it.
    exchange_with(
        &ch,
        "ad3",
        ExchangeKind::Fanout,
        auto_delete(),
        FieldTable::default(),
    )
    .await;
    exchange(&ch, "plain", ExchangeKind::Fanout).await;
    xbind(&ch, "plain", "ad3", "").await;
    xunbind(&ch, "plain", "ad3", "").await;
    assert!(!exchange_exists(&conn, "ad3").await, "ad3 lost its e2e binding");

    // Deleting the destination exchange removes the binding, and so the auto-delete source.
    exchange_with(
        &ch,
        "ad4",
        ExchangeKind::Fanout,
        auto_delete(),
        FieldTable::default(),
    )
    .await;
    xbind(&ch, "plain", "ad4", "").await;
    ch.exchange_delete("plain".into(), Default::default())
        .await
        .unwrap();
    assert!(
        !exchange_exists(&conn, "ad4").await,
        "ad4 went with its destination"
    );

    // Being the destination of a binding does not keep or remove an auto-delete exchange: only bindings
    // with it as source count.
    exchange_with(
        &ch,
        "ad5",
        ExchangeKind::Fanout,
        auto_delete(),
        FieldTable::default(),
    )
    .await;
    exchange(&ch, "src", ExchangeKind::Fanout).await;
    queue(&ch, "q5").await;
    bind(&ch, "q5", "ad5", "").await;
    xbind(&ch, "ad5", "src", "").await;
    xunbind(&ch, "ad5", "src", "").await;
    assert!(
        exchange_exists(&conn, "ad5").await,
        "ad5 still has its queue binding"
    );

    // An exclusive queue's end (connection close) removes its bindings and the auto-delete exchange.
    let conn2 = connect(&server).await;
    let ch2 = channel(&conn2).await;
    exchange_with(
        &ch2,
        "ad6",
        ExchangeKind::Topic,
        auto_delete(),
        FieldTable::default(),
    )
    .await;
    ch2.queue_declare(
        "excl".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    bind(&ch2, "excl", "ad6", "#").await;
    conn2.close(200, "bye".into()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while exchange_exists(&conn, "ad6").await {
        assert!(
            std::time::Instant::now() < deadline,
            "ad6 did not go with the exclusive queue"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    conn.close(200, "bye".into()).await.unwrap();
}
