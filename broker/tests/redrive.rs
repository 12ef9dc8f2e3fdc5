//! Redrive (`VHost::redrive`): dead letters go back to the queue they died in (from their `x-death`), or to a
//! queue named by the caller; they keep their headers and start over with a delivery count of 0; messages
//! whose destination is gone stay in the dead-letter queue. In-process, over a real store in a temp dir.

use std::path::Path;
use std::sync::Arc;

use broker::broker::Broker;
use broker::config::Config;
use broker::deadletter::Redriven;
use broker::message::Message;
use broker::queue::{next_consumer_id, ConsumerId, Entry, QueueSpec};
use broker::signal::ConnSignal;
use broker::vhost::VHost;

mod common;
use bytes::Bytes;
use common::DlQueue;
use protocol::{BasicProperties, FieldTable, FieldValue, LongStr, RawProperties, ShortStr};

const NOW: u64 = 1_700_000_000_000;

struct Env {
    _broker: Arc<Broker>,
    vhost: Arc<VHost>,
    signal: Arc<ConnSignal>,
}

impl Env {
    fn open(dir: &Path) -> Env {
        let broker = Broker::open(Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        })
        .expect("open broker");
        let vhost = broker.vhost("/").expect("vhost /");
        Env {
            _broker: broker,
            vhost,
            signal: Arc::new(ConnSignal::new()),
        }
    }

    fn q(&self, name: &str) -> DlQueue {
        let q = self
            .vhost
            .queue(name)
            .unwrap_or_else(|| panic!("queue {name} exists"));
        DlQueue::new(&self.vhost, q)
    }

    /// A durable queue; with `dlx`, dead-lettering to the default exchange with routing key "dlq".
    fn declare(&self, name: &str, dlx: bool) -> DlQueue {
        let mut arguments = FieldTable::new();
        if dlx {
            arguments.insert("x-dead-letter-exchange", FieldValue::LongStr(LongStr::from("")));
            arguments.insert(
                "x-dead-letter-routing-key",
                FieldValue::LongStr(LongStr::from("dlq")),
            );
        }
        let (q, created) = self
            .vhost
            .declare_queue(QueueSpec {
                name: name.into(),
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments,
            })
            .expect("declare");
        assert!(created);
        DlQueue::new(&self.vhost, q)
    }

    /// Pulls everything ready from `q` with ack, through a new consumer (removed afterwards).
    fn pull_all(&self, q: &DlQueue) -> Vec<Entry> {
        let id: ConsumerId = next_consumer_id();
        q.add_consumer(id, ShortStr::from("t"), false, 0, self.signal.clone(), "/", NOW)
            .expect("consume");
        let mut out = Vec::new();
        q.pull(id, 1000, true, NOW, &mut out);
        q.remove_consumer(id, NOW);
        out
    }

    /// Publishes `body` to `q` (persistent, with an application header), delivers it, returns it `returns`
    /// times, then rejects it without requeue.
    fn kill(&self, q: &DlQueue, body: &str, returns: u32) {
        q.publish(message(body), NOW).expect("publish");
        for _ in 0..returns {
            let got = self.pull_all(q);
            assert_eq!(bodies(&got), [body]);
            q.requeue(got, NOW);
        }
        let got = self.pull_all(q);
        assert_eq!(bodies(&got), [body]);
        assert_eq!(got[0].delivery_count, returns);
        q.reject(got, NOW);
    }
}

fn message(body: &str) -> Arc<Message> {
    let mut headers = FieldTable::new();
    headers.insert("app", FieldValue::LongStr(LongStr::from(format!("h-{body}"))));
    let props = BasicProperties {
        delivery_mode: Some(2),
        headers: Some(headers),
        ..Default::default()
    };
    Arc::new(Message::new(
        ShortStr::from(""),
        ShortStr::from("work"),
        RawProperties::from_properties(&props),
        Bytes::from(body.to_owned()),
    ))
}

fn bodies(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.msg.body.to_vec()).unwrap())
        .collect()
}

/// (queue, reason, count) of every x-death entry, most recent first.
fn deaths(msg: &Message) -> Vec<(String, String, i64)> {
    let h = msg.properties.headers().unwrap().expect("headers");
    let Some(FieldValue::Array(a)) = h.get("x-death") else {
        panic!("no x-death in {h:?}")
    };
    a.iter()
        .map(|v| {
            let t = v.as_table().expect("table");
            (
                t.get("queue").and_then(|v| v.as_str()).unwrap().to_owned(),
                t.get("reason").and_then(|v| v.as_str()).unwrap().to_owned(),
                t.get("count").and_then(|v| v.as_i64()).unwrap(),
            )
        })
        .collect()
}

fn app_header(msg: &Message) -> Option<String> {
    let h = msg.properties.headers().unwrap()?;
    h.get("app").and_then(|v| v.as_str()).map(str::to_owned)
}

/// Dead letters from A and B in "dlq": [a1 (from A), b1 (from B), a2 (from A)], a1 returned twice first.
fn setup(env: &Env) {
    env.declare("dlq", false);
    let a = env.declare("A", true);
    let b = env.declare("B", true);
    env.declare("C", false);
    env.kill(&a, "a1", 2);
    env.kill(&b, "b1", 1);
    env.kill(&a, "a2", 0);
    assert_eq!(env.q("dlq").counts().0, 3);
    assert_eq!(a.counts().0, 0);
    assert_eq!(b.counts().0, 0);
}

fn check_redrive(env: &Env) {
    let (dlq, a, b, c) = (env.q("dlq"), env.q("A"), env.q("B"), env.q("C"));

    // To a named queue, at most one: the first dead letter (a1) goes to C.
    let r = env
        .vhost
        .redrive("dlq", Some("C"), Some(1), NOW)
        .expect("redrive to C");
    assert_eq!(r, Redriven { moved: 1, kept: 0 });
    assert_eq!(dlq.counts().0, 2);
    let in_c = env.pull_all(&c);
    assert_eq!(bodies(&in_c), ["a1"]);
    assert_eq!(deaths(&in_c[0].msg), [("A".into(), "rejected".into(), 1)]);
    assert_eq!(app_header(&in_c[0].msg).as_deref(), Some("h-a1"));
    assert_eq!((in_c[0].delivery_count, in_c[0].redelivered), (0, false));
    c.settle(in_c.iter());

    // Returned once while in the dlq: still starts over at 0 in its origin queue.
    let got = env.pull_all(&dlq);
    assert_eq!(bodies(&got), ["b1", "a2"]);
    dlq.requeue(got, NOW);

    // Back where they came from.
    let r = env.vhost.redrive("dlq", None, None, NOW).expect("redrive");
    assert_eq!(r, Redriven { moved: 2, kept: 0 });
    assert_eq!(dlq.counts().0, 0);
    let in_a = env.pull_all(&a);
    assert_eq!(bodies(&in_a), ["a2"]);
    let in_b = env.pull_all(&b);
    assert_eq!(bodies(&in_b), ["b1"]);
    for (e, origin) in [(&in_a[0], "A"), (&in_b[0], "B")] {
        assert_eq!(
            (e.delivery_count, e.redelivered),
            (0, false),
            "delivery count reset"
        );
        assert_eq!(deaths(&e.msg), [(origin.to_string(), "rejected".to_string(), 1)]);
        assert!(app_header(&e.msg).is_some(), "application headers kept");
        assert!(e.msg.persistent);
    }

    // Dying again in A counts a second (A, rejected) death.
    a.reject(in_a, NOW);
    b.settle(in_b.iter());
    let got = env.pull_all(&dlq);
    assert_eq!(bodies(&got), ["a2"]);
    assert_eq!(deaths(&got[0].msg), [("A".into(), "rejected".into(), 2)]);
    dlq.requeue(got, NOW);

    // The dlq itself as the destination: nothing moves, nothing is lost.
    let r = env
        .vhost
        .redrive("dlq", Some("dlq"), None, NOW)
        .expect("redrive to itself");
    assert_eq!(r, Redriven { moved: 0, kept: 1 });
    assert_eq!(dlq.counts().0, 1);
    let r = env
        .vhost
        .redrive("dlq", None, Some(0), NOW)
        .expect("redrive none");
    assert_eq!(r, Redriven { moved: 0, kept: 0 });
    assert_eq!(dlq.counts().0, 1);

    // Unknown queues are 404s and leave everything in place.
    let e = env.vhost.redrive("nope", None, None, NOW).unwrap_err();
    assert_eq!(e.code, 404);
    let e = env.vhost.redrive("dlq", Some("nope"), None, NOW).unwrap_err();
    assert_eq!(e.code, 404);
    assert_eq!(dlq.counts().0, 1);
    let r = env.vhost.redrive("dlq", None, None, NOW).expect("redrive");
    assert_eq!(r, Redriven { moved: 1, kept: 0 });
    let in_a = env.pull_all(&a);
    assert_eq!(bodies(&in_a), ["a2"]);
    a.settle(in_a.iter());
}

#[test]
fn redrive_returns_dead_letters_to_their_queues() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path());
    setup(&env);
    check_redrive(&env);
}

/// The same after a restart: the dlq is read back from the store when redrive takes from it.
#[test]
fn redrive_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path());
    setup(&env);
    drop(env);
    let env = Env::open(dir.path());
    check_redrive(&env);
}

/// Moved messages leave the dlq's store and enter their queue's: after a restart they are where redrive put
/// them, once.
#[test]
fn redriven_messages_stay_moved_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path());
    setup(&env);
    let r = env.vhost.redrive("dlq", None, Some(2), NOW).unwrap();
    assert_eq!(r, Redriven { moved: 2, kept: 0 });
    drop(env);
    let env = Env::open(dir.path());
    assert_eq!(bodies(&env.pull_all(&env.q("A"))), ["a1"]);
    assert_eq!(bodies(&env.pull_all(&env.q("B"))), ["b1"]);
    let left = env.pull_all(&env.q("dlq"));
    assert_eq!(bodies(&left), ["a2"]);
    assert_eq!(deaths(&left[0].msg), [("A".into(), "rejected".into(), 1)]);
}

/// A dead letter whose queue was deleted stays in the dlq, in its place; the others move on.
#[test]
fn redrive_keeps_messages_whose_queue_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path());
    env.declare("dlq", false);
    let a = env.declare("A", true);
    let d = env.declare("D", true);
    env.kill(&a, "a1", 0);
    env.kill(&d, "d1", 0);
    env.kill(&a, "a2", 0);
    env.vhost.delete_queue(&d);
    assert!(env.vhost.queue("D").is_none());

    let r = env.vhost.redrive("dlq", None, None, NOW).unwrap();
    assert_eq!(r, Redriven { moved: 2, kept: 1 });
    let dlq = env.q("dlq");
    assert_eq!(dlq.counts().0, 1);
    assert_eq!(bodies(&env.pull_all(&a)), ["a1", "a2"]);

    // Still there after a restart (kept messages are not forgotten by the store), and still kept.
    drop((a, d, dlq));
    drop(env);
    let env = Env::open(dir.path());
    let r = env.vhost.redrive("dlq", None, None, NOW).unwrap();
    assert_eq!(r, Redriven { moved: 0, kept: 1 });
    let left = env.pull_all(&env.q("dlq"));
    assert_eq!(bodies(&left), ["d1"]);
    assert_eq!(deaths(&left[0].msg), [("D".into(), "rejected".into(), 1)]);

    // Declared again, D takes it back.
    env.q("dlq").requeue(left, NOW);
    env.declare("D", true);
    let r = env.vhost.redrive("dlq", None, None, NOW).unwrap();
    assert_eq!(r, Redriven { moved: 1, kept: 0 });
    assert_eq!(bodies(&env.pull_all(&env.q("D"))), ["d1"]);
}

/// A message without x-death (published straight to the dlq) has nowhere to go back to.
#[test]
fn redrive_keeps_messages_without_x_death() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path());
    let dlq = env.declare("dlq", false);
    let a = env.declare("A", true);
    dlq.publish(message("plain"), NOW).unwrap();
    env.kill(&a, "a1", 0);
    let r = env.vhost.redrive("dlq", None, None, NOW).unwrap();
    assert_eq!(r, Redriven { moved: 1, kept: 1 });
    assert_eq!(bodies(&env.pull_all(&dlq)), ["plain"]);
    assert_eq!(bodies(&env.pull_all(&a)), ["a1"]);
}
