//! Routing edge cases checked against RabbitMQ's rabbit_channel: the queue.bind/unbind shortcuts (empty
//! queue and key mean the last declared queue), argument validation (alternate-exchange type, x-match),
//! transactional publishes (routed and checked at publish time, not at commit), and a pathological topic
//! pattern that must not stall the broker.

mod routing_common;

use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use mailroom_tests::raw::protocol::{self, FieldTable as RawTable, FieldValue, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;
use routing_common::*;

fn qbind(queue: &str, exchange: &str, key: &str, arguments: RawTable) -> Method {
    Method::from(protocol::QueueBind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: key.into(),
        no_wait: false,
        arguments,
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

fn xdecl(name: &str, kind: &str, internal: bool, arguments: RawTable) -> Method {
    Method::ExchangeDeclare(protocol::ExchangeDeclare {
        exchange: name.into(),
        kind: kind.into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal,
        no_wait: false,
        arguments,
    })
}

/// rabbit_channel:expand_shortcuts/2: queue.bind/unbind with an empty queue name use the channel's most
/// recently declared queue, and with an empty routing key as well, the routing key is that queue's name.
#[test]
fn queue_bind_with_empty_queue_and_key_uses_the_last_declared_queue() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "qq");
    let m = c.call(1, qbind("", "amq.direct", "", RawTable::new()));
    assert!(matches!(m, Method::QueueBindOk(_)), "{m:?}");
    c.publish(1, "amq.direct", "qq", b"by-name");
    c.publish(1, "amq.direct", "", b"by-empty-key");
    let got = c.get(1, "qq", true).map(|m| m.body_str());
    assert_eq!(
        got.as_deref(),
        Some("by-name"),
        "queue.bind('', key '') must bind the last declared queue with its name as the key"
    );
    assert!(
        c.get(1, "qq", true).is_none(),
        "nothing routed with the empty key"
    );
    // The same shortcut on unbind removes that binding.
    let m = c.call(1, qunbind("", "amq.direct", ""));
    assert!(matches!(m, Method::QueueUnbindOk(_)), "{m:?}");
    c.publish(1, "amq.direct", "qq", b"after-unbind");
    assert!(
        c.get(1, "qq", true).is_none(),
        "unbind('', '') removed the 'qq' binding"
    );
}

/// With an explicit (non-empty) key, the empty queue name still means the last declared queue.
#[test]
fn queue_bind_with_empty_queue_name_and_a_key() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "qk");
    let m = c.call(1, qbind("", "amq.direct", "key", RawTable::new()));
    assert!(matches!(m, Method::QueueBindOk(_)), "{m:?}");
    c.publish(1, "amq.direct", "key", b"k");
    assert_eq!(c.get(1, "qk", true).map(|m| m.body_str()).as_deref(), Some("k"));
    // A fresh channel has no last queue: 404.
    c.open_channel(2);
    c.send_method(2, qbind("", "amq.direct", "key", RawTable::new()));
    let (code, text, cls, mth) = c.expect_channel_close(2);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (404, "NOT_FOUND - no previously declared queue", 50, 20)
    );
}

/// rabbit_misc:r_arg/4: an alternate-exchange argument that is not a longstr is refused on declare.
#[test]
fn alternate_exchange_argument_of_the_wrong_type_is_406() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let mut args = RawTable::new();
    args.insert("alternate-exchange", FieldValue::I32(7));
    c.send_method(1, xdecl("x", "direct", false, args));
    let reply = c.read_frame();
    match reply {
        Some(protocol::Frame::Method(1, Method::ChannelClose(m))) => assert_eq!(
            (m.reply_code, m.reply_text.as_str(), m.class_id, m.method_id),
            (
                406,
                "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in exchange 'x' in vhost '/'",
                40,
                10
            )
        ),
        other => panic!("expected channel.close 406, got {other:?}"),
    }
}

/// rabbit_exchange_type_headers:validate_binding/2.
#[test]
fn headers_binding_with_an_invalid_x_match_is_406() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "q");
    let m = c.call(1, xdecl("h", "headers", false, RawTable::new()));
    assert!(matches!(m, Method::ExchangeDeclareOk(_)), "{m:?}");
    let mut args = RawTable::new();
    args.insert("x-match", FieldValue::LongStr("foo".into()));
    c.send_method(1, qbind("q", "h", "", args));
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (
            406,
            "PRECONDITION_FAILED - Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x",
            50,
            20
        )
    );
    c.open_channel(1);
    let mut args = RawTable::new();
    args.insert("x-match", FieldValue::I32(1));
    c.send_method(1, qbind("q", "h", "", args));
    let (code, text, _, _) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - Invalid x-match field type signedint (value 1); expected longstr"
        )
    );
    // x-match is not validated on other exchange types.
    c.open_channel(1);
    let mut args = RawTable::new();
    args.insert("x-match", FieldValue::LongStr("foo".into()));
    let m = c.call(1, qbind("q", "amq.direct", "k", args));
    assert!(matches!(m, Method::QueueBindOk(_)), "{m:?}");
}

/// RabbitMQ routes a transactional publish when basic.publish arrives (rabbit_channel keeps the routed
/// queue names in the tx) and delivers to those queues at commit; binding changes in between do not
/// change where the message goes.
#[tokio::test]
async fn tx_publish_is_routed_at_publish_time() {
    let server = Server::start();
    let conn = connect(&server).await;
    let admin = channel(&conn).await;
    exchange(&admin, "x", ExchangeKind::Direct).await;
    queue(&admin, "before").await;
    queue(&admin, "after").await;
    bind(&admin, "before", "x", "k").await;
    let tx = channel(&conn).await;
    tx.tx_select().await.unwrap();
    tx.basic_publish(
        "x".into(),
        "k".into(),
        Default::default(),
        b"txmsg",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // A round trip on the tx channel so the publish has certainly been received.
    tx.queue_declare(
        "before".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    unbind(&admin, "before", "x", "k").await;
    bind(&admin, "after", "x", "k").await;
    tx.tx_commit().await.unwrap();
    assert_eq!(
        (drain(&admin, "before").await, drain(&admin, "after").await),
        (vec!["txmsg".to_string()], vec![]),
        "(before, after): the tx message goes where the bindings said at publish time"
    );
}

/// rabbit_channel checks an internal exchange when basic.publish arrives, in a transaction too: the channel
/// closes with basic.publish's ids at once, not at tx.commit.
#[test]
fn tx_publish_to_an_internal_exchange_fails_at_publish() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let m = c.call(1, xdecl("ix", "fanout", true, RawTable::new()));
    assert!(matches!(m, Method::ExchangeDeclareOk(_)), "{m:?}");
    let m = c.call(1, Method::TxSelect(protocol::TxSelect));
    assert!(matches!(m, Method::TxSelectOk(_)), "{m:?}");
    c.publish(1, "ix", "", b"no");
    // Without a commit, the close must come by itself.
    c.set_read_timeout(Duration::from_secs(3));
    let f = c.read_frame();
    match f {
        Some(protocol::Frame::Method(1, Method::ChannelClose(m))) => assert_eq!(
            (m.reply_code, m.reply_text.as_str(), m.class_id, m.method_id),
            (
                403,
                "ACCESS_REFUSED - cannot publish to internal exchange 'ix' in vhost '/'",
                60,
                40
            )
        ),
        other => panic!("expected channel.close 403 at publish time, got {other:?}"),
    }
}

/// Topic patterns with many '#' against a long key: RabbitMQ's trie walk visits (node, word) pairs; a walk
/// without memoisation is exponential here. A publish must be routed promptly and the broker stay usable.
#[tokio::test]
async fn pathological_topic_pattern_does_not_stall_the_broker() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "t", ExchangeKind::Topic).await;
    queue(&ch, "q").await;
    let pattern = format!("{}z", "#.a.".repeat(12));
    bind(&ch, "q", "t", &pattern).await;
    let key = vec!["a"; 60].join(".");
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        publish(&ch, "t", &key, "slow?", BasicProperties::default()),
    )
    .await;
    assert!(
        r.is_ok(),
        "one publish with a 60-word key to a topic exchange with pattern '{pattern}' was not confirmed within 10 s"
    );
    eprintln!("pathological publish confirmed in {:?}", started.elapsed());
    // The matching key still matches.
    let key_z = format!("{key}.z");
    assert_no_errors(run_matrix(&ch, "t", &["q"], &[case(&key_z, &["q"]), case(&key, &[])]).await);
}
