//! Publisher confirms (acks with delivery tags, returns before acks, nacks on reject-publish) and transactions.

use std::collections::BTreeSet;

use mailroom_tests::raw::protocol::{self, FieldTable, FieldValue, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn select_confirms(c: &mut RawClient, ch: u16) {
    let m = c.call(
        ch,
        Method::ConfirmSelect(protocol::ConfirmSelect { no_wait: false }),
    );
    assert!(matches!(m, Method::ConfirmSelectOk(_)), "{m:?}");
}

/// Reads confirms until every tag in 1..=n is covered; returns (acked, nacked).
fn collect_confirms(c: &mut RawClient, ch: u16, n: u64) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut acked = BTreeSet::new();
    let mut nacked = BTreeSet::new();
    while acked.len() + nacked.len() < n as usize {
        match c.expect_method() {
            Method::BasicAck(a) => {
                let tags: Vec<u64> = if a.multiple {
                    (1..=a.delivery_tag)
                        .filter(|t| !acked.contains(t) && !nacked.contains(t))
                        .collect()
                } else {
                    vec![a.delivery_tag]
                };
                assert!(!tags.is_empty(), "ack {a:?} confirms nothing new");
                for t in tags {
                    assert!(t >= 1 && t <= n, "ack for unknown tag {t}");
                    assert!(acked.insert(t), "tag {t} acked twice");
                }
            }
            Method::BasicNack(a) => {
                let tags: Vec<u64> = if a.multiple {
                    (1..=a.delivery_tag)
                        .filter(|t| !acked.contains(t) && !nacked.contains(t))
                        .collect()
                } else {
                    vec![a.delivery_tag]
                };
                for t in tags {
                    assert!(nacked.insert(t), "tag {t} nacked twice");
                }
            }
            m => panic!("expected basic.ack/nack on channel {ch}, got {m:?}"),
        }
    }
    (acked, nacked)
}

#[test]
fn confirms_ack_every_delivery_tag() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "cq");
    select_confirms(&mut c, 1);
    for i in 0..3 {
        c.publish(1, "", "cq", format!("{i}").as_bytes());
    }
    let (acked, nacked) = collect_confirms(&mut c, 1, 3);
    assert_eq!(acked, (1..=3).collect());
    assert!(nacked.is_empty());
    // Unroutable messages are confirmed too, and tags keep counting.
    c.publish(1, "", "nowhere", b"x");
    match c.expect_method() {
        Method::BasicAck(a) => assert_eq!(a.delivery_tag, 4),
        m => panic!("{m:?}"),
    }
    assert_eq!(c.declare_queue(1, "cq").message_count, 3);
}

#[test]
fn confirms_for_many_publishes_cover_all_tags() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue_with(1, "many", true, false, false);
    select_confirms(&mut c, 1);
    let props = protocol::RawProperties::from_properties(&protocol::BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    });
    for i in 0..500 {
        c.publish_full(
            1,
            protocol::BasicPublish {
                exchange: "".into(),
                routing_key: "many".into(),
                mandatory: false,
                immediate: false,
            },
            &props,
            format!("{i}").as_bytes(),
        );
    }
    let (acked, nacked) = collect_confirms(&mut c, 1, 500);
    assert_eq!(acked.len(), 500);
    assert!(nacked.is_empty());
}

#[test]
fn return_comes_before_the_ack_of_a_mandatory_unroutable_publish() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    select_confirms(&mut c, 1);
    c.publish_full(
        1,
        protocol::BasicPublish {
            exchange: "".into(),
            routing_key: "nowhere".into(),
            mandatory: true,
            immediate: false,
        },
        &protocol::RawProperties::empty(),
        b"back",
    );
    let r = c.expect_message(1);
    assert!(matches!(r.method, Method::BasicReturn(ref x) if x.reply_code == 312));
    match c.expect_method() {
        Method::BasicAck(a) => assert_eq!((a.delivery_tag, a.multiple), (1, false)),
        m => panic!("{m:?}"),
    }
}

/// A queue with x-max-length=1 and x-overflow=reject-publish refuses the second message: RabbitMQ nacks it.
#[test]
fn confirm_nack_when_the_queue_rejects_the_publish() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let mut args = FieldTable::new();
    args.insert("x-max-length", FieldValue::I32(1));
    args.insert("x-overflow", FieldValue::LongStr("reject-publish".into()));
    let m = c.call(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "tiny".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: args,
        }),
    );
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
    select_confirms(&mut c, 1);
    c.publish(1, "", "tiny", b"fits");
    c.publish(1, "", "tiny", b"overflows");
    let (acked, nacked) = collect_confirms(&mut c, 1, 2);
    assert_eq!(acked, [1].into_iter().collect());
    assert_eq!(nacked, [2].into_iter().collect());
}

fn tx(c: &mut RawClient, ch: u16, m: Method) {
    let r = c.call(ch, m);
    assert!(
        matches!(
            r,
            Method::TxSelectOk(_) | Method::TxCommitOk(_) | Method::TxRollbackOk(_)
        ),
        "{r:?}"
    );
}

#[test]
fn tx_publishes_are_invisible_until_commit_and_rollback_discards() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 131_072);
    c.open_channel(1);
    c.open_channel(2);
    c.declare_queue(2, "txq");
    tx(&mut c, 1, Method::TxSelect(protocol::TxSelect));
    c.publish(1, "", "txq", b"a");
    c.publish(1, "", "txq", b"b");
    assert!(c.get(2, "txq", true).is_none(), "uncommitted publish visible");
    tx(&mut c, 1, Method::TxCommit(protocol::TxCommit));
    assert_eq!(c.get(2, "txq", true).unwrap().body, b"a");
    assert_eq!(c.get(2, "txq", true).unwrap().body, b"b");
    c.publish(1, "", "txq", b"discard me");
    tx(&mut c, 1, Method::TxRollback(protocol::TxRollback));
    assert!(c.get(2, "txq", true).is_none(), "rolled-back publish visible");
    // The channel stays transactional after commit/rollback.
    c.publish(1, "", "txq", b"c");
    assert!(c.get(2, "txq", true).is_none());
    tx(&mut c, 1, Method::TxCommit(protocol::TxCommit));
    assert_eq!(c.get(2, "txq", true).unwrap().body, b"c");
}

#[test]
fn tx_acks_apply_at_commit() {
    let server = Server::start();
    let mut c = RawClient::open(server.addr, 131_072);
    c.open_channel(1);
    c.open_channel(2);
    c.declare_queue(2, "txa");
    c.publish(2, "", "txa", b"one");
    c.publish(2, "", "txa", b"two");
    tx(&mut c, 1, Method::TxSelect(protocol::TxSelect));
    let one = c.get(1, "txa", false).unwrap();
    let two = c.get(1, "txa", false).unwrap();
    // Ack "one" and roll back: the ack is discarded, "one" stays unacked.
    c.ack(1, one.delivery_tag(), false);
    tx(&mut c, 1, Method::TxRollback(protocol::TxRollback));
    // Ack "two" and commit: "two" is gone for good.
    c.ack(1, two.delivery_tag(), false);
    tx(&mut c, 1, Method::TxCommit(protocol::TxCommit));
    // Closing the channel requeues what is still unacked: only "one".
    c.close_channel(1);
    let back = c
        .get(2, "txa", true)
        .expect("the rolled-back ack left 'one' unacked");
    assert_eq!(back.body, b"one");
    assert!(back.redelivered());
    assert!(c.get(2, "txa", true).is_none(), "'two' was acked at commit");
}

#[test]
fn tx_commit_and_rollback_without_select_are_406() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.send_method(1, Method::TxCommit(protocol::TxCommit));
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (406, "PRECONDITION_FAILED - channel is not transactional", 90, 20)
    );
    c.open_channel(1);
    c.send_method(1, Method::TxRollback(protocol::TxRollback));
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (406, "PRECONDITION_FAILED - channel is not transactional", 90, 30)
    );
    c.open_channel(1);
    c.round_trip(1);
}

#[test]
fn tx_and_confirm_modes_exclude_each_other() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    tx(&mut c, 1, Method::TxSelect(protocol::TxSelect));
    c.send_method(
        1,
        Method::ConfirmSelect(protocol::ConfirmSelect { no_wait: false }),
    );
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
            85,
            10
        )
    );
    c.open_channel(1);
    select_confirms(&mut c, 1);
    c.send_method(1, Method::TxSelect(protocol::TxSelect));
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!(
        (code, text.as_str(), cls, mth),
        (
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
            90,
            10
        )
    );
}
