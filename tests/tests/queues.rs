//! queue.declare (passive, durable, exclusive, auto-delete, server-named, counts, equivalence),
//! queue.delete (if-unused, if-empty, idempotent), queue.purge.

use mailroom_tests::raw::protocol::{self, FieldTable, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn passive(name: &str) -> Method {
    Method::QueueDeclare(protocol::QueueDeclare {
        queue: name.into(),
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        no_wait: false,
        arguments: FieldTable::new(),
    })
}

fn delete(name: &str, if_unused: bool, if_empty: bool) -> Method {
    Method::QueueDelete(protocol::QueueDelete {
        queue: name.into(),
        if_unused,
        if_empty,
        no_wait: false,
    })
}

fn passive_exists(c: &mut RawClient, ch: u16, name: &str) -> Option<protocol::QueueDeclareOk> {
    match c.call(ch, passive(name)) {
        Method::QueueDeclareOk(ok) => Some(ok),
        // Another connection's exclusive queue that still exists (its owner is going away): 405.
        Method::ChannelClose(cl) if cl.reply_code == 405 => {
            c.send_method(ch, Method::ChannelCloseOk(protocol::ChannelCloseOk));
            c.open_channel(ch);
            Some(protocol::QueueDeclareOk {
                queue: name.into(),
                message_count: 0,
                consumer_count: 0,
            })
        }
        Method::ChannelClose(cl) => {
            assert_eq!(cl.reply_code, 404, "{}", cl.reply_text);
            assert_eq!(
                cl.reply_text.as_str(),
                format!("NOT_FOUND - no queue '{name}' in vhost '/'")
            );
            c.send_method(ch, Method::ChannelCloseOk(protocol::ChannelCloseOk));
            c.open_channel(ch);
            None
        }
        m => panic!("unexpected {m:?}"),
    }
}

#[test]
fn passive_declare_of_a_missing_queue_is_404_and_of_an_existing_one_reports_counts() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    assert!(passive_exists(&mut c, 1, "nope").is_none());
    c.declare_queue(1, "q");
    for i in 0..3 {
        c.publish(1, "", "q", format!("m{i}").as_bytes());
    }
    let mut other = RawClient::open_ch1(server.addr);
    other.consume(1, "q", "c1", false, false);
    // One message is now held by the consumer (unacked); declare-ok counts ready messages.
    let d = other.expect_message(1);
    assert_eq!(d.body, b"m0");
    // Prefetch is unlimited, so the consumer may take all three; wait until it did.
    let _ = other.expect_message(1);
    let _ = other.expect_message(1);
    let ok = passive_exists(&mut c, 1, "q").unwrap();
    assert_eq!(ok.queue.as_str(), "q");
    assert_eq!(ok.message_count, 0);
    assert_eq!(ok.consumer_count, 1);
    // Redeclare (non-passive, same flags) reports the same.
    let ok = c.declare_queue(1, "q");
    assert_eq!((ok.message_count, ok.consumer_count), (0, 1));
}

#[test]
fn declare_ok_reports_message_and_consumer_counts() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let ok = c.declare_queue(1, "counts");
    assert_eq!(
        (ok.queue.as_str(), ok.message_count, ok.consumer_count),
        ("counts", 0, 0)
    );
    for _ in 0..5 {
        c.publish(1, "", "counts", b"x");
    }
    let ok = c.declare_queue(1, "counts");
    assert_eq!((ok.message_count, ok.consumer_count), (5, 0));
    c.open_channel(2);
    c.send_method(
        2,
        Method::BasicQos(protocol::BasicQos {
            prefetch_size: 0,
            prefetch_count: 1,
            global: false,
        }),
    );
    assert!(matches!(c.expect_method(), Method::BasicQosOk(_)));
    c.consume(2, "counts", "a", false, false);
    let _ = c.expect_message(2);
    let ok = c.declare_queue(1, "counts");
    assert_eq!((ok.message_count, ok.consumer_count), (4, 1));
}

#[test]
fn server_named_queues_start_with_amq_gen() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    let a = c.declare_queue_with(1, "", false, true, false);
    let b = c.declare_queue_with(1, "", false, true, false);
    assert!(a.queue.starts_with("amq.gen-"), "{}", a.queue);
    assert!(b.queue.starts_with("amq.gen-"), "{}", b.queue);
    assert_ne!(a.queue, b.queue);
    c.publish(1, "", &a.queue, b"hi");
    assert_eq!(c.get(1, &a.queue, true).unwrap().body, b"hi");
}

#[test]
fn exclusive_queue_dies_with_its_connection() {
    let server = Server::start();
    let mut owner = RawClient::open_ch1(server.addr);
    owner.declare_queue_with(1, "mine", false, true, false);
    let mut other = RawClient::open_ch1(server.addr);
    owner.close_connection();
    assert!(owner.is_closed_by_server());
    // The exclusive queue is gone once its connection closed.
    let mut gone = false;
    for _ in 0..50 {
        if passive_exists(&mut other, 1, "mine").is_none() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone, "exclusive queue survived its connection");
}

#[test]
fn exclusive_queue_dies_when_its_socket_drops() {
    let server = Server::start();
    let mut owner = RawClient::open_ch1(server.addr);
    owner.declare_queue_with(1, "mine2", false, true, false);
    drop(owner);
    let mut other = RawClient::open_ch1(server.addr);
    let mut gone = false;
    for _ in 0..100 {
        if passive_exists(&mut other, 1, "mine2").is_none() {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(gone, "exclusive queue survived its dropped socket");
}

#[test]
fn auto_delete_queue_is_deleted_when_its_last_consumer_cancels() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue_with(1, "auto", false, false, true);
    let t1 = c.consume(1, "auto", "t1", false, false);
    let t2 = c.consume(1, "auto", "t2", false, false);
    for t in [t1, t2] {
        let m = c.call(
            1,
            Method::BasicCancel(protocol::BasicCancel {
                consumer_tag: t.as_str().into(),
                no_wait: false,
            }),
        );
        match m {
            Method::BasicCancelOk(ok) => assert_eq!(ok.consumer_tag.as_str(), t),
            m => panic!("{m:?}"),
        }
        if t == "t1" {
            assert!(
                passive_exists(&mut c, 1, "auto").is_some(),
                "deleted while a consumer remained"
            );
        }
    }
    assert!(
        passive_exists(&mut c, 1, "auto").is_none(),
        "auto-delete queue survived"
    );
}

#[test]
fn redeclare_with_different_flags_is_406_equivalence() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue_with(1, "dur", true, false, false);
    // Same flags: fine.
    c.declare_queue_with(1, "dur", true, false, false);
    c.send_method(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "dur".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        }),
    );
    let (code, text, cls, mth) = c.expect_channel_close(1);
    assert_eq!((code, cls, mth), (406, 50, 10));
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'dur' in vhost '/': received 'false' but current is 'true'"
    );
    c.open_channel(1);
    c.declare_queue_with(1, "ad", false, false, true);
    c.send_method(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: "ad".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments: FieldTable::new(),
        }),
    );
    let (code, text, _, _) = c.expect_channel_close(1);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue 'ad' in vhost '/': received 'false' but current is 'true'"
    );
}

#[test]
fn queue_delete_if_unused_if_empty_and_idempotent() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    // Deleting a queue that does not exist succeeds.
    match c.call(1, delete("never", false, false)) {
        Method::QueueDeleteOk(ok) => assert_eq!(ok.message_count, 0),
        m => panic!("{m:?}"),
    }
    // if-unused on an unused queue with messages: deleted, count returned.
    c.declare_queue(1, "d1");
    c.publish(1, "", "d1", b"a");
    c.publish(1, "", "d1", b"b");
    match c.call(1, delete("d1", true, false)) {
        Method::QueueDeleteOk(ok) => assert_eq!(ok.message_count, 2),
        m => panic!("{m:?}"),
    }
    assert!(passive_exists(&mut c, 1, "d1").is_none());
    // if-empty on an empty queue with a consumer: deleted.
    c.declare_queue(1, "d2");
    c.open_channel(2);
    c.consume(2, "d2", "cons", false, false);
    match c.call(1, delete("d2", false, true)) {
        Method::QueueDeleteOk(ok) => assert_eq!(ok.message_count, 0),
        // The consumer's channel may get basic.cancel first (consumer_cancel_notify is not on for raw clients).
        m => panic!("{m:?}"),
    }
    assert!(passive_exists(&mut c, 1, "d2").is_none());
    // Deleting again is still fine.
    assert!(matches!(
        c.call(1, delete("d2", true, true)),
        Method::QueueDeleteOk(_)
    ));
}

#[test]
fn queue_purge_returns_the_count_and_leaves_unacked_alone() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "p");
    for i in 0..7 {
        c.publish(1, "", "p", format!("{i}").as_bytes());
    }
    let held = c.get(1, "p", false).unwrap();
    match c.call(
        1,
        Method::QueuePurge(protocol::QueuePurge {
            queue: "p".into(),
            no_wait: false,
        }),
    ) {
        Method::QueuePurgeOk(ok) => assert_eq!(ok.message_count, 6),
        m => panic!("{m:?}"),
    }
    assert!(c.get(1, "p", true).is_none());
    // The unacked one comes back when rejected with requeue.
    c.send_method(
        1,
        Method::BasicReject(protocol::BasicReject {
            delivery_tag: held.delivery_tag(),
            requeue: true,
        }),
    );
    let back = c.get(1, "p", true).unwrap();
    assert_eq!(back.body, b"0");
    assert!(back.redelivered());
    match c.call(
        1,
        Method::QueuePurge(protocol::QueuePurge {
            queue: "p".into(),
            no_wait: false,
        }),
    ) {
        Method::QueuePurgeOk(ok) => assert_eq!(ok.message_count, 0),
        m => panic!("{m:?}"),
    }
}

#[test]
fn durable_queue_and_persistent_message_survive_a_restart() {
    let mut server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue_with(1, "keep", true, false, false);
    let props = protocol::RawProperties::from_properties(&protocol::BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    });
    c.send_method(
        1,
        Method::ConfirmSelect(protocol::ConfirmSelect { no_wait: false }),
    );
    assert!(matches!(c.expect_method(), Method::ConfirmSelectOk(_)));
    c.publish_full(
        1,
        protocol::BasicPublish {
            exchange: "".into(),
            routing_key: "keep".into(),
            mandatory: false,
            immediate: false,
        },
        &props,
        b"persisted",
    );
    assert!(matches!(c.expect_method(), Method::BasicAck(_)));
    drop(c);
    let status = server.stop();
    assert!(status.success());
    server.restart();
    let mut c = RawClient::open_ch1(server.addr);
    let ok = passive_exists(&mut c, 1, "keep").expect("durable queue after restart");
    assert_eq!(ok.message_count, 1);
    assert_eq!(c.get(1, "keep", true).unwrap().body, b"persisted");
}
