use super::*;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::store::{block_on, DELETE_CHUNK};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn open(d: &Path) -> Store {
    Store::open(d, StoreOptions::default()).unwrap()
}

fn msg(i: u64) -> StoredMessage {
    StoredMessage {
        exchange: format!("x{}", i % 3),
        routing_key: format!("rk.{i}"),
        properties: Bytes::from(vec![0xAB; (i % 5) as usize]),
        body: Bytes::from(format!("body-{i}").into_bytes()),
        delivery_count: 0,
        published_at_ms: 1_700_000_000_000u64.wrapping_add(i),
        expires_at_ms: if i.is_multiple_of(2) {
            Some(i.wrapping_mul(10))
        } else {
            None
        },
        not_before_ms: None,
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seqs_of(v: &[(u64, StoredMessage)]) -> Vec<u64> {
    v.iter().map(|(s, _)| *s).collect()
}

#[test]
fn smoke_durable_after_flush_blocking() {
    let d = tmp();
    let s = open(d.path());
    let t = s.append_message(1, 1, &msg(1)).unwrap();
    s.flush_blocking().unwrap();
    assert_eq!(s.ticket_state(t), TicketState::Durable);
}

#[test]
fn definitions_roundtrip_replace_delete_and_reopen() {
    let d = tmp();
    let vh = VhostRecord { name: "/".into() };
    let user = UserRecord {
        name: "guest".into(),
        password_hash: vec![1, 2, 3],
        tags: vec!["administrator".into()],
    };
    let x = ExchangeRecord {
        vhost: "/".into(),
        name: "amq.topic".into(),
        kind: "topic".into(),
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: vec![9, 9],
    };
    let q = QueueRecord {
        id: 0,
        vhost: "/".into(),
        name: "jobs".into(),
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: vec![],
    };
    let b1 = BindingRecord {
        vhost: "/".into(),
        source: "amq.topic".into(),
        destination: "jobs".into(),
        destination_is_queue: true,
        routing_key: "a.#".into(),
        arguments: vec![],
    };
    let b2 = BindingRecord {
        arguments: vec![1],
        ..b1.clone()
    };
    {
        let s = open(d.path());
        s.put_vhost(&vh).unwrap();
        s.put_vhost(&VhostRecord { name: "other".into() }).unwrap();
        s.delete_vhost("other").unwrap();
        s.put_user(&user).unwrap();
        s.put_user(&UserRecord {
            name: "bob".into(),
            ..Default::default()
        })
        .unwrap();
        s.delete_user("bob").unwrap();
        let t1 = s.put_exchange(&x).unwrap();
        // replace
        let x2 = ExchangeRecord {
            arguments: vec![7],
            ..x.clone()
        };
        let t2 = s.put_exchange(&x2).unwrap();
        assert!(t2 > t1);
        s.put_exchange(&ExchangeRecord {
            name: "gone".into(),
            ..x.clone()
        })
        .unwrap();
        s.delete_exchange("/", "gone").unwrap();
        let id = s.next_queue_id().unwrap();
        let q = QueueRecord { id, ..q.clone() };
        s.put_queue(&q).unwrap();
        s.put_binding(&b1).unwrap();
        s.put_binding(&b2).unwrap();
        s.put_binding(&b2).unwrap(); // idempotent
        assert_eq!(s.bindings().unwrap().len(), 2);
        s.delete_binding(&b2).unwrap();

        assert_eq!(s.vhosts().unwrap(), vec![vh.clone()]);
        assert_eq!(s.users().unwrap(), vec![user.clone()]);
        assert_eq!(s.exchanges().unwrap(), vec![x2.clone()]);
        assert_eq!(s.queues().unwrap(), vec![q.clone()]);
        assert_eq!(s.bindings().unwrap(), vec![b1.clone()]);
    }
    let s = open(d.path());
    assert_eq!(s.vhosts().unwrap(), vec![vh]);
    assert_eq!(s.users().unwrap(), vec![user]);
    assert_eq!(s.exchanges().unwrap()[0].arguments, vec![7]);
    assert_eq!(s.queues().unwrap().len(), 1);
    assert_eq!(s.queues().unwrap()[0].name, "jobs");
    assert_eq!(s.bindings().unwrap(), vec![b1]);
}

#[test]
fn definitions_with_tricky_names_do_not_collide() {
    let d = tmp();
    let s = open(d.path());
    let a = ExchangeRecord {
        vhost: "ab".into(),
        name: "c".into(),
        ..Default::default()
    };
    let b = ExchangeRecord {
        vhost: "a".into(),
        name: "bc".into(),
        ..Default::default()
    };
    s.put_exchange(&a).unwrap();
    s.put_exchange(&b).unwrap();
    assert_eq!(s.exchanges().unwrap().len(), 2);
    s.delete_exchange("a", "bc").unwrap();
    assert_eq!(s.exchanges().unwrap(), vec![a]);
}

#[test]
fn queue_ids_are_monotonic_and_persist() {
    let d = tmp();
    let last = {
        let s = open(d.path());
        let a = s.next_queue_id().unwrap();
        let b = s.next_queue_id().unwrap();
        let c = s.next_queue_id().unwrap();
        assert!(a >= 1 && a < b && b < c);
        c
    };
    let s = open(d.path());
    assert!(s.next_queue_id().unwrap() > last);
}

#[test]
fn append_read_in_order_across_seq_widths() {
    let d = tmp();
    let s = open(d.path());
    let seqs = [
        0u64,
        1,
        255,
        256,
        257,
        65_535,
        65_536,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        1 << 56,
        u64::MAX,
    ];
    for &q in &[255u32, 256, 1] {
        for &seq in seqs.iter() {
            s.append_message(q, seq, &msg(seq)).unwrap();
        }
    }
    for &q in &[255u32, 256, 1] {
        let got = s.read_messages(q, 0, 100).unwrap();
        assert_eq!(seqs_of(&got), seqs.to_vec());
        for (seq, m) in &got {
            assert_eq!(m, &msg(*seq));
        }
        assert_eq!(s.message_seqs(q).unwrap(), seqs.to_vec());
        assert_eq!(s.queue_bounds(q).unwrap(), Some((0, u64::MAX)));
        assert_eq!(s.count_messages(q).unwrap(), seqs.len() as u64);
    }
    // from_seq inclusive + limit
    let got = s.read_messages(256, 256, 3).unwrap();
    assert_eq!(seqs_of(&got), vec![256, 257, 65_535]);
    let got = s.read_messages(256, 258, 2).unwrap();
    assert_eq!(seqs_of(&got), vec![65_535, 65_536]);
    assert!(s.read_messages(256, 0, 0).unwrap().is_empty());
    assert!(s.read_messages(2, 0, 10).unwrap().is_empty());
    assert_eq!(s.queue_bounds(2).unwrap(), None);
    assert_eq!(s.count_messages(2).unwrap(), 0);
    assert_eq!(s.queue_ids_with_messages().unwrap(), vec![1, 255, 256]);
}

#[test]
fn appends_out_of_order_are_refused() {
    let d = tmp();
    let s = open(d.path());
    s.append_message(1, 10, &msg(10)).unwrap();
    for bad in [10, 9, 0] {
        let err = s.append_message(1, bad, &msg(bad)).unwrap_err();
        assert!(
            matches!(err, StoreError::OutOfOrder { queue_id: 1, seq, last: 10 } if seq == bad),
            "{err:?}"
        );
    }
    // other queues are independent; deleting the tail does not allow going back within a run
    s.append_message(2, 0, &msg(0)).unwrap();
    s.delete_messages(1, &[10]).unwrap();
    assert!(s.append_message(1, 10, &msg(10)).is_err());
    s.append_message(1, 11, &msg(11)).unwrap();
    assert_eq!(s.message_seqs(1).unwrap(), vec![11]);
}

#[test]
fn bodies_are_slices_of_one_buffer() {
    let d = tmp();
    let s = open(d.path());
    let m = StoredMessage {
        properties: Bytes::from(vec![1u8; 40]),
        body: Bytes::from(vec![2u8; 4096]),
        ..Default::default()
    };
    s.append_message(3, 1, &m).unwrap();
    let got = s.read_messages(3, 0, 1).unwrap();
    let r = &got[0].1;
    assert_eq!(r, &m);
    // properties and body are adjacent views into the same sled value: no copy was made.
    assert_eq!(
        r.properties.as_ptr() as usize + r.properties.len(),
        r.body.as_ptr() as usize
    );
}

#[test]
fn batch_append_delete_and_state() {
    let d = tmp();
    let s = open(d.path());
    for id in [1, 2] {
        s.put_queue(&QueueRecord {
            id,
            name: format!("q{id}"),
            ..Default::default()
        })
        .unwrap();
    }
    let msgs: Vec<StoredMessage> = (0..10).map(msg).collect();
    let items: Vec<(u32, u64, &StoredMessage)> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| (if i.is_multiple_of(2) { 1 } else { 2 }, i as u64, m))
        .collect();
    let before = s.current_ticket();
    let t = s.append_messages(&items).unwrap();
    assert_eq!(t, before + 1, "one batch, one ticket");
    assert_eq!(s.count_messages(1).unwrap(), 5);
    assert_eq!(s.count_messages(2).unwrap(), 5);

    let st = MessageState {
        delivery_count: 3,
        redelivered: true,
        not_before_ms: Some(42),
    };
    s.set_message_state(1, 4, &st).unwrap();
    assert_eq!(s.message_state(1, 4).unwrap(), Some(st));
    let got = s.read_messages_with_state(1, 0, 10).unwrap();
    for (seq, m, state) in &got {
        if *seq == 4 {
            assert_eq!(m.delivery_count, 3);
            assert_eq!(m.not_before_ms, Some(42));
            assert_eq!(*state, Some(st));
        } else {
            assert_eq!(m.delivery_count, 0);
            assert_eq!(*state, None);
        }
    }

    s.set_message_state(1, 8, &st).unwrap();
    let t2 = s.delete_messages(1, &[0, 4, 8, 999]).unwrap();
    assert_eq!(t2, t + 3);
    assert_eq!(s.message_seqs(1).unwrap(), vec![2, 6]);
    assert_eq!(s.message_state(1, 4).unwrap(), None, "state removed with message");
    assert_eq!(s.message_state(1, 8).unwrap(), None, "state removed with message");
    assert_eq!(s.queue_bounds(1).unwrap(), Some((2, 6)));
    assert_eq!(s.message_seqs(2).unwrap(), vec![1, 3, 5, 7, 9]);
    drop(s);
    // after a restart the broker re-uses the seqs after the last message (8 here): the old
    // message and its state do not come back
    let s = open(d.path());
    s.append_message(1, 7, &msg(7)).unwrap();
    s.append_message(1, 8, &msg(8)).unwrap();
    let got = s.read_messages_with_state(1, 7, 10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].0, 8);
    assert_eq!(got[1].1, msg(8));
    assert_eq!(got[1].2, None);
    assert_eq!(s.queue_bounds(1).unwrap(), Some((2, 8)));
    assert_eq!(s.message_seqs(1).unwrap(), vec![2, 6, 7, 8]);
}

#[test]
fn messages_and_state_persist_across_reopen() {
    let d = tmp();
    {
        let s = open(d.path());
        let id = s.next_queue_id().unwrap();
        assert_eq!(id, 1);
        s.put_queue(&QueueRecord {
            id,
            vhost: "/".into(),
            name: "q".into(),
            durable: true,
            ..Default::default()
        })
        .unwrap();
        for i in 0..300 {
            s.append_message(id, i, &msg(i)).unwrap();
        }
        s.set_message_state(
            id,
            256,
            &MessageState {
                delivery_count: 2,
                redelivered: true,
                not_before_ms: None,
            },
        )
        .unwrap();
        s.delete_messages(id, &(0..10).collect::<Vec<_>>()).unwrap();
        // no explicit flush: drop must flush
    }
    let s = open(d.path());
    assert_eq!(s.queue_bounds(1).unwrap(), Some((10, 299)));
    assert_eq!(s.count_messages(1).unwrap(), 290);
    let got = s.read_messages(1, 0, 1000).unwrap();
    assert_eq!(seqs_of(&got), (10..300).collect::<Vec<_>>());
    for (seq, m) in &got {
        let mut want = msg(*seq);
        if *seq == 256 {
            want.delivery_count = 2;
        }
        assert_eq!(m, &want);
    }
}

#[test]
fn purge_and_delete_queue() {
    let d = tmp();
    let s = open(d.path());
    let q = QueueRecord {
        id: s.next_queue_id().unwrap(),
        vhost: "/".into(),
        name: "a".into(),
        ..Default::default()
    };
    let q2 = QueueRecord {
        id: s.next_queue_id().unwrap(),
        name: "b".into(),
        ..q.clone()
    };
    s.put_queue(&q).unwrap();
    s.put_queue(&q2).unwrap();
    for i in 0..(DELETE_CHUNK as u64 + 5) {
        s.append_message(q.id, i, &msg(i)).unwrap();
    }
    s.set_message_state(q.id, 3, &MessageState::default()).unwrap();
    for i in 0..7 {
        s.append_message(q2.id, i, &msg(i)).unwrap();
    }
    let (n, t) = s.purge_queue(q.id).unwrap();
    assert_eq!(n, DELETE_CHUNK as u64 + 5);
    assert_eq!(t, s.current_ticket());
    assert_eq!(s.count_messages(q.id).unwrap(), 0);
    assert_eq!(s.message_state(q.id, 3).unwrap(), None);
    assert_eq!(s.purge_queue(q.id).unwrap().0, 0);
    assert_eq!(s.count_messages(q2.id).unwrap(), 7);

    s.set_message_state(q2.id, 1, &MessageState::default()).unwrap();
    s.delete_queue("/", "b", q2.id).unwrap();
    assert_eq!(s.queues().unwrap(), vec![q.clone()]);
    assert_eq!(s.count_messages(q2.id).unwrap(), 0);
    assert_eq!(s.message_state(q2.id, 1).unwrap(), None);
    assert!(s.queue_ids_with_messages().unwrap().is_empty());
}

#[test]
fn delivered_mark_roundtrip_and_removed_with_queue() {
    let d = tmp();
    {
        let s = open(d.path());
        s.put_queue(&QueueRecord {
            id: 4,
            name: "q".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.delivered_mark(4).unwrap(), None);
        s.set_delivered_mark(4, 255).unwrap();
        let t = s.set_delivered_mark(4, 256).unwrap();
        assert_eq!(t, s.current_ticket());
        // a mark without a queue record is an orphan and goes at the next open
        s.set_delivered_mark(9, 1).unwrap();
    }
    let s = open(d.path());
    assert_eq!(s.delivered_mark(4).unwrap(), Some(256));
    assert_eq!(s.delivered_mark(9).unwrap(), None);
    s.delete_queue("", "q", 4).unwrap();
    assert_eq!(s.delivered_mark(4).unwrap(), None);
}

#[test]
fn orphaned_messages_are_removed_at_open() {
    let d = tmp();
    {
        let s = open(d.path());
        s.put_queue(&QueueRecord {
            id: 5,
            name: "kept".into(),
            ..Default::default()
        })
        .unwrap();
        s.append_message(5, 1, &msg(1)).unwrap();
        // messages of a queue whose record is gone (as after a crash inside delete_queue)
        s.append_message(6, 1, &msg(1)).unwrap();
        s.set_message_state(6, 1, &MessageState::default()).unwrap();
    }
    let s = open(d.path());
    assert_eq!(s.queue_ids_with_messages().unwrap(), vec![5]);
    assert_eq!(s.message_state(6, 1).unwrap(), None);
}

/// A store of schema version 2 (before the stream round mark) opens, keeps its messages, and says 3 from
/// then on, so a build of version 2 (which would take a marked stream record for garbage) refuses it.
#[test]
fn a_version_2_store_is_opened_and_marked_3() {
    let d = tmp();
    {
        let st = open(d.path());
        put_q(&st, 1);
        st.append_message(1, 0, &msg(7)).unwrap();
        st.flush_blocking().unwrap();
    }
    let set_version = |v: u32| {
        let db = sled::open(d.path().join("sled")).unwrap();
        db.insert(keys::SCHEMA_KEY, &v.to_be_bytes()).unwrap();
        db.flush().unwrap();
    };
    let version = || {
        let db = sled::open(d.path().join("sled")).unwrap();
        crate::be::exact_u32(&db.get(keys::SCHEMA_KEY).unwrap().unwrap()).unwrap()
    };
    set_version(2);
    {
        let st = open(d.path());
        assert_eq!(st.read_messages(1, 0, 10).unwrap().len(), 1);
    }
    assert_eq!(version(), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 3);
}

#[test]
fn schema_version_mismatch_is_refused() {
    let d = tmp();
    drop(open(d.path()));
    {
        let db = sled::open(d.path().join("sled")).unwrap();
        db.insert(keys::SCHEMA_KEY, &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(d.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaVersion {
                found: 99,
                expected: SCHEMA_VERSION
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("99") && text.contains("refusing"), "{text}");
    // the lock was released by the failed open
    drop(Store::open(d.path(), StoreOptions::default()).unwrap_err());
}

#[test]
fn data_without_schema_record_is_refused() {
    let d = tmp();
    {
        let db = sled::open(d.path().join("sled")).unwrap();
        db.insert(b"\x10something", b"x").unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(d.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

#[test]
fn second_open_of_same_dir_is_locked() {
    let d = tmp();
    let s = open(d.path());
    let err = Store::open(d.path(), StoreOptions::default()).unwrap_err();
    match &err {
        StoreError::Locked { dir } => assert_eq!(dir, d.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("is locked") && text.contains(&d.path().display().to_string()));
    // a clone is the same store, not a second open
    let s2 = s.clone();
    drop(s);
    assert!(matches!(
        Store::open(d.path(), StoreOptions::default()),
        Err(StoreError::Locked { .. })
    ));
    drop(s2);
    // after the last handle is gone the dir can be opened again
    drop(open(d.path()));
}

#[test]
fn missing_dir_is_created() {
    let d = tmp();
    let nested = d.path().join("a/b/c");
    let s = open(&nested);
    s.append_message(1, 1, &msg(1)).unwrap();
    assert!(nested.join("LOCK").exists());
    assert!(s.size_on_disk().unwrap() > 0);
    assert!(s.sled_size_on_disk().unwrap() > 0);
}

#[test]
fn dir_below_a_file_gives_io_error() {
    let d = tmp();
    let file = d.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file.join("store"), StoreOptions::default()).unwrap_err();
    match &err {
        StoreError::Io { path, .. } => assert_eq!(path, &file.join("store")),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(err.to_string().contains("plain-file"));
}

#[cfg(unix)]
#[test]
fn unwritable_dir_gives_io_error() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmp();
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), b"x").is_ok() {
        eprintln!("running as root: permission bits are not enforced, skipping");
        return;
    }
    let err = Store::open(&ro, StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn flusher_publishes_tickets_without_explicit_flush() {
    let d = tmp();
    let s = open(d.path());
    let mut rx = s.durable_watch();
    let t = s.append_message(1, 1, &msg(1)).unwrap();
    assert_eq!(t, s.current_ticket());
    s.wait_durable_blocking(t).unwrap();
    assert!(rx.borrow_and_update().settled() >= t);
    let st = s.stats();
    assert!(st.flushes >= 1);
    assert!(st.durable >= t);
    assert_eq!(st.messages_appended, 1);
    assert!(st.bytes_written > 0);
}

#[test]
fn request_flush_flushes_even_when_idle() {
    let d = tmp();
    let s = open(d.path());
    s.flush_blocking().unwrap();
    let f0 = s.stats().flushes;
    s.request_flush();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.stats().flushes == f0 {
        assert!(std::time::Instant::now() < deadline, "flusher did not run");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn group_commit_many_writers_share_flushes() {
    let d = tmp();
    let s = open(d.path());
    const THREADS: u64 = 8;
    const PER: u64 = 200;
    let body = Bytes::from(vec![7u8; 1024]);
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let s = s.clone();
            let body = body.clone();
            sc.spawn(move || {
                let mut rx = s.durable_watch();
                for i in 0..PER {
                    let m = StoredMessage {
                        body: body.clone(),
                        ..Default::default()
                    };
                    let ticket = s.append_message(t as u32 + 1, i, &m).unwrap();
                    // each writer waits for its own write to be durable, like a publisher
                    // waiting to send basic.ack in confirm mode
                    let _ = block_on(rx.wait_for(|d| d.settled() >= ticket)).unwrap();
                }
            });
        }
    });
    let st = s.stats();
    assert_eq!(st.writes, THREADS * PER);
    assert_eq!(st.durable, st.writes);
    assert!(
        st.flushes < st.writes,
        "group commit expected: {} flushes for {} writes",
        st.flushes,
        st.writes
    );
    eprintln!(
        "group commit: {} writes, {} flushes ({:.1} writes/flush)",
        st.writes,
        st.flushes,
        st.writes as f64 / st.flushes as f64
    );
    for t in 0..THREADS as u32 {
        assert_eq!(s.count_messages(t + 1).unwrap(), PER);
    }
}

#[test]
fn store_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Store>();
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Append `n` messages to a queue, the first `gap` seqs after the queue's next seq (seqs
        /// taken by transient messages in the broker), the others consecutive.
        Append(u32, u64, u8),
        /// Delete seqs given as offsets back from the queue's next seq.
        Delete(u32, Vec<u64>),
        State(u32, u64, u32),
        Purge(u32),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        let q = 0u32..3;
        let gap = prop_oneof![8 => Just(0u64), 2 => 1u64..5, 1 => Just(1u64 << 40)];
        let back = 1u64..80;
        prop_oneof![
            6 => (q.clone(), gap, 1u8..30).prop_map(|(q, g, n)| Op::Append(q, g, n)),
            3 => (q.clone(), proptest::collection::vec(back.clone(), 0..40)).prop_map(|(q, v)| Op::Delete(q, v)),
            2 => (q.clone(), back, 1u32..5).prop_map(|(q, s, c)| Op::State(q, s, c)),
            1 => q.prop_map(Op::Purge),
            1 => Just(Op::Reopen),
        ]
    }

    /// Small segments, so that the model crosses many segment boundaries.
    pub(super) fn open_small(d: &Path) -> Store {
        Store::open(
            d,
            StoreOptions {
                segment_bytes: 512,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    }

    proptest! {
        // PROPTEST_CASES=N for a longer run
        #![proptest_config(ProptestConfig::with_cases(env_u64("PROPTEST_CASES", 24) as u32))]
        #[test]
        fn store_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..40)) {
            let d = tmp();
            let mut s = Some(open_small(d.path()));
            // the broker's next seq per queue: after a restart, the last stored seq + 1
            let mut next = [0u64; 3];
            for q in 0..3u32 {
                s.as_ref().unwrap().put_queue(&QueueRecord { id: q, name: format!("q{q}"), ..Default::default() }).unwrap();
            }
            // (queue, seq) -> (message, delivery count)
            let mut model: BTreeMap<(u32, u64), (StoredMessage, u32)> = BTreeMap::new();
            for op in ops {
                let st = s.as_ref().unwrap();
                match op {
                    Op::Append(q, gap, n) => {
                        let first = next[q as usize] + gap;
                        let msgs: Vec<(u64, StoredMessage)> =
                            (first..first + n as u64).map(|seq| (seq, msg(seq))).collect();
                        if n % 2 == 0 {
                            let items: Vec<(u32, u64, &StoredMessage)> =
                                msgs.iter().map(|(seq, m)| (q, *seq, m)).collect();
                            st.append_messages(&items).unwrap();
                        } else {
                            for (seq, m) in &msgs {
                                st.append_message(q, *seq, m).unwrap();
                            }
                        }
                        next[q as usize] = first + n as u64;
                        for (seq, m) in msgs {
                            model.insert((q, seq), (m, 0));
                        }
                    }
                    Op::Delete(q, backs) => {
                        let seqs: Vec<u64> =
                            backs.iter().map(|b| next[q as usize].saturating_sub(*b)).collect();
                        st.delete_messages(q, &seqs).unwrap();
                        for x in seqs { model.remove(&(q, x)); }
                    }
                    Op::State(q, back, c) => {
                        let seq = next[q as usize].saturating_sub(back);
                        if let Some(e) = model.get_mut(&(q, seq)) {
                            st.set_message_state(q, seq, &MessageState { delivery_count: c, redelivered: true, not_before_ms: None }).unwrap();
                            e.1 = c;
                        }
                    }
                    Op::Purge(q) => {
                        let want = model.range((q, 0)..=(q, u64::MAX)).count() as u64;
                        prop_assert_eq!(st.purge_queue(q).unwrap().0, want);
                        model.retain(|k, _| k.0 != q);
                    }
                    Op::Reopen => {
                        drop(s.take());
                        s = Some(open_small(d.path()));
                        for q in 0..3u32 {
                            next[q as usize] = model
                                .range((q, 0)..=(q, u64::MAX))
                                .next_back()
                                .map_or(0, |(k, _)| k.1 + 1);
                        }
                    }
                }
            }
            let st = s.as_ref().unwrap();
            for q in 0..3u32 {
                let want: Vec<(u64, StoredMessage)> = model
                    .range((q, 0)..=(q, u64::MAX))
                    .map(|(k, (m, dc))| (k.1, StoredMessage { delivery_count: *dc, ..m.clone() }))
                    .collect();
                let got = st.read_messages(q, 0, usize::MAX).unwrap();
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(st.message_seqs(q).unwrap(), want.iter().map(|e| e.0).collect::<Vec<_>>());
                // sequential paging (the broker's refill) gives the same sequence
                let mut paged = Vec::new();
                let mut from = 0;
                loop {
                    let page = st.read_messages(q, from, 7).unwrap();
                    match page.last() {
                        Some(l) => from = l.0 + 1,
                        None => break,
                    }
                    paged.extend(page);
                }
                prop_assert_eq!(&paged, &want);
                prop_assert_eq!(st.count_messages(q).unwrap(), want.len() as u64);
                let bounds = want.first().map(|f| (f.0, want.last().unwrap().0));
                prop_assert_eq!(st.queue_bounds(q).unwrap(), bounds);
                // reading in pages from the middle gives the same sequence
                if let Some(mid) = want.get(want.len() / 2) {
                    let page = st.read_messages(q, mid.0, 3).unwrap();
                    let expect: Vec<_> = want.iter().filter(|e| e.0 >= mid.0).take(3).cloned().collect();
                    prop_assert_eq!(page, expect);
                }
            }
        }
    }
}

// --- message log: segments, acks, recovery ---------------------------------------------------

fn open_seg(d: &Path, segment_bytes: u64) -> Store {
    Store::open(
        d,
        StoreOptions {
            segment_bytes,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

fn q_rec(id: u32) -> QueueRecord {
    QueueRecord {
        id,
        vhost: "/".into(),
        name: format!("q{id}"),
        durable: true,
        ..Default::default()
    }
}

/// The message log of `dir` alone, with queue `id` known.
fn open_log(dir: &Path, segment_bytes: u64, id: u32) -> (seglog::MsgLog, seglog::Recovery) {
    seglog::MsgLog::open(
        &dir.join("messages"),
        segment_bytes,
        &std::collections::HashMap::from([(id, q_rec(id))]),
        &dir.join(LOST_FOUND),
        std::sync::Arc::new(Faults::default()),
    )
    .unwrap()
}

fn put_q(s: &Store, id: u32) {
    s.put_queue(&QueueRecord {
        id,
        vhost: "/".into(),
        name: format!("q{id}"),
        durable: true,
        ..Default::default()
    })
    .unwrap();
}

fn big(i: u64) -> StoredMessage {
    StoredMessage {
        body: Bytes::from(vec![(i % 251) as u8; 200 + (i % 7) as usize]),
        ..msg(i)
    }
}

fn queue_dir(d: &Path, q: u32) -> PathBuf {
    d.join("messages").join(format!("{q:08x}"))
}

/// (file name, length) of a queue's message files, sorted.
/// The segment and ack files of queue `q` (not its definition copy `queue.def`, which stays as
/// long as the queue does), with their lengths.
fn files(d: &Path, q: u32) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = match fs::read_dir(queue_dir(d, q)) {
        Ok(rd) => rd
            .filter(|e| e.as_ref().unwrap().file_name() != "queue.def")
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn seg_files(d: &Path, q: u32) -> Vec<String> {
    files(d, q)
        .into_iter()
        .map(|f| f.0)
        .filter(|n| n.ends_with(".seg"))
        .collect()
}

#[test]
fn segments_roll_over_and_reads_cross_boundaries() {
    let d = tmp();
    let s = open_seg(d.path(), 2048);
    put_q(&s, 1);
    for i in 0..100 {
        s.append_message(1, i, &big(i)).unwrap();
    }
    s.flush_blocking().unwrap();
    let segs = seg_files(d.path(), 1);
    assert!(segs.len() >= 10, "{segs:?}");
    assert_eq!(segs[0], "0000000000000000.seg");
    // every segment has its ack file; no segment much above the limit (ack files are kept zero-filled
    // ahead: `ACK_PREFILL`)
    for (name, len) in files(d.path(), 1) {
        if name.ends_with(".seg") {
            assert!(len <= 2048, "{name} {len}");
        }
    }
    assert_eq!(files(d.path(), 1).len(), 2 * segs.len());
    // whole, paged sequentially, from arbitrary points
    let all = s.read_messages(1, 0, usize::MAX).unwrap();
    assert_eq!(seqs_of(&all), (0..100).collect::<Vec<_>>());
    for (seq, m) in &all {
        assert_eq!(m, &big(*seq));
    }
    for page in [1, 3, 8, 64] {
        let mut from = 0;
        let mut got = Vec::new();
        loop {
            let p = s.read_messages(1, from, page).unwrap();
            let Some(l) = p.last() else { break };
            from = l.0 + 1;
            got.extend(seqs_of(&p));
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "page {page}");
    }
    for from in [0u64, 7, 33, 50, 99, 100, 1000] {
        let p = s.read_messages(1, from, 5).unwrap();
        let want: Vec<u64> = (from..100).take(5).collect();
        assert_eq!(seqs_of(&p), want, "from {from}");
    }
    // delete across boundaries: every third message, then reads skip them
    let gone: Vec<u64> = (0..100).filter(|i| i % 3 == 0).collect();
    s.delete_messages(1, &gone).unwrap();
    let left: Vec<u64> = (0..100).filter(|i| i % 3 != 0).collect();
    assert_eq!(seqs_of(&s.read_messages(1, 0, usize::MAX).unwrap()), left);
    assert_eq!(s.message_seqs(1).unwrap(), left);
    assert_eq!(s.count_messages(1).unwrap(), left.len() as u64);
    assert_eq!(s.queue_bounds(1).unwrap(), Some((1, 98)));
    let p = s.read_messages(1, 30, 4).unwrap();
    assert_eq!(seqs_of(&p), vec![31, 32, 34, 35]);
    // the same after a reopen
    drop(s);
    let s = open_seg(d.path(), 2048);
    assert_eq!(seqs_of(&s.read_messages(1, 0, usize::MAX).unwrap()), left);
    assert_eq!(s.count_messages(1).unwrap(), left.len() as u64);
    assert_eq!(s.queue_bounds(1).unwrap(), Some((1, 98)));
    // appends continue after the last message, in a new segment
    s.append_message(1, 99, &big(99)).unwrap();
    s.append_message(1, 100, &big(100)).unwrap();
    assert_eq!(s.queue_bounds(1).unwrap(), Some((1, 100)));
    assert!(seg_files(d.path(), 1).contains(&"0000000000000063.seg".to_string()));
}

#[test]
fn fully_acked_segments_are_deleted() {
    let d = tmp();
    let s = open_seg(d.path(), 2048);
    put_q(&s, 1);
    s.flush_blocking().unwrap();
    let baseline = s.size_on_disk().unwrap();
    for i in 0..200 {
        s.append_message(1, i, &big(i)).unwrap();
    }
    s.flush_blocking().unwrap();
    let segs = seg_files(d.path(), 1);
    assert!(segs.len() > 10);
    let peak = s.size_on_disk().unwrap();
    assert!(peak > baseline + 40_000, "{baseline} -> {peak}");
    // ack the first segment's messages out of order, all but one: the files stay
    let second: u64 = u64::from_str_radix(segs[1].trim_end_matches(".seg"), 16).unwrap();
    let first_seg: Vec<u64> = (0..second).rev().collect();
    s.delete_messages(1, &first_seg[..first_seg.len() - 1]).unwrap();
    assert!(queue_dir(d.path(), 1).join(&segs[0]).exists());
    // the last one: .seg and .ack are gone
    s.delete_messages(1, &[0]).unwrap();
    assert!(!queue_dir(d.path(), 1).join(&segs[0]).exists());
    assert!(!queue_dir(d.path(), 1)
        .join(segs[0].replace(".seg", ".ack"))
        .exists());
    assert_eq!(s.queue_bounds(1).unwrap(), Some((second, 199)));
    // ack everything else in batches (the broker's pattern): every file goes, the write
    // segment included (it is not tiny), whose files are kept as the queue's spare
    let rest: Vec<u64> = (second..200).collect();
    for c in rest.chunks(10) {
        s.delete_messages(1, c).unwrap();
    }
    s.flush_blocking().unwrap();
    let left = files(d.path(), 1);
    let names: Vec<&str> = left.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, vec!["spare.ack", "spare.seg"]);
    let spare_len = left[1].1;
    assert!(spare_len > 0 && spare_len <= 2048, "{left:?}");
    assert_eq!(s.count_messages(1).unwrap(), 0);
    assert_eq!(s.queue_bounds(1).unwrap(), None);
    assert!(s.queue_ids_with_messages().unwrap().is_empty());
    let after = s.size_on_disk().unwrap();
    assert!(after < baseline + 16_384, "{baseline} -> {peak} -> {after}");
    // the queue goes on, in the spare's files: the segment file has the spare's length (the new
    // record is written over the old ones) until it holds more
    s.append_message(1, 200, &big(200)).unwrap();
    s.flush_blocking().unwrap();
    assert_eq!(seqs_of(&s.read_messages(1, 0, 10).unwrap()), vec![200]);
    assert_eq!(seg_files(d.path(), 1), vec!["00000000000000c8.seg"]);
    let now = files(d.path(), 1);
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(now[1], ("00000000000000c8.seg".to_string(), spare_len));
    // a reopen takes the new record only (the old ones after it have lower seqs), and cuts them off
    drop(s);
    let s = open_seg(d.path(), 2048);
    assert_eq!(seqs_of(&s.read_messages(1, 0, 10).unwrap()), vec![200]);
    assert_eq!(s.read_messages(1, 0, 10).unwrap()[0].1, big(200));
}

#[test]
fn reopen_after_ack_keeps_acks_and_drops_empty_segments() {
    let d = tmp();
    {
        let s = open_seg(d.path(), 2048);
        put_q(&s, 1);
        for i in 0..100 {
            s.append_message(1, i, &big(i)).unwrap();
        }
        // ack some in every segment and all of a middle range
        let acked: Vec<u64> = (0..100).filter(|i| i % 4 == 1 || (40..60).contains(i)).collect();
        s.delete_messages(1, &acked).unwrap();
        // no explicit flush: drop flushes
    }
    let want: Vec<u64> = (0..100)
        .filter(|i| !(i % 4 == 1 || (40..60).contains(i)))
        .collect();
    let s = open_seg(d.path(), 2048);
    assert_eq!(s.message_seqs(1).unwrap(), want);
    assert_eq!(seqs_of(&s.read_messages(1, 0, usize::MAX).unwrap()), want);
    assert_eq!(s.count_messages(1).unwrap(), want.len() as u64);
    // no file holds only acked messages
    drop(s);
    let s = open_seg(d.path(), 2048);
    let firsts: Vec<u64> = seg_files(d.path(), 1)
        .iter()
        .map(|n| u64::from_str_radix(n.trim_end_matches(".seg"), 16).unwrap())
        .collect();
    for (i, first) in firsts.iter().enumerate() {
        let end = firsts.get(i + 1).copied().unwrap_or(u64::MAX);
        assert!(
            want.iter().any(|w| w >= first && *w < end),
            "segment {first} holds only acked messages"
        );
    }
    // a drained queue leaves no files after a reopen, and its seqs start over
    s.delete_messages(1, &want).unwrap();
    drop(s);
    let s = open_seg(d.path(), 2048);
    assert_eq!(s.queue_bounds(1).unwrap(), None);
    assert_eq!(files(d.path(), 1), vec![]);
    // the definition copy stays while the queue exists
    assert!(queue_dir(d.path(), 1).join("queue.def").exists());
    s.append_message(1, 0, &big(0)).unwrap();
    assert_eq!(seqs_of(&s.read_messages(1, 0, 10).unwrap()), vec![0]);
}

#[test]
fn torn_tails_are_cut_off() {
    use std::io::Write;
    let d = tmp();
    {
        let s = open_seg(d.path(), 4096);
        put_q(&s, 1);
        for i in 0..40 {
            s.append_message(1, i, &big(i)).unwrap();
        }
        s.delete_messages(1, &[1, 2, 39]).unwrap();
        s.flush_blocking().unwrap();
    }
    let segs = seg_files(d.path(), 1);
    let dir = queue_dir(d.path(), 1);
    let last_seg = dir.join(segs.last().unwrap());
    let first_ack = dir.join(segs[0].replace(".seg", ".ack"));
    let seg_len = fs::metadata(&last_seg).unwrap().len();
    let ack_before = fs::read(&first_ack).unwrap();
    // garbage at the end of a segment: a plausible header, a partial record, random bytes
    let mut partial = seglog::encode_record(40, &big(40)).unwrap();
    partial.truncate(partial.len() / 2);
    let mut f = fs::OpenOptions::new().append(true).open(&last_seg).unwrap();
    f.write_all(&partial).unwrap();
    f.write_all(&[0xFF; 37]).unwrap();
    drop(f);
    // and at the end of an ack file: half an ack batch naming a live message, then zeros
    let mut f = fs::OpenOptions::new().append(true).open(&first_ack).unwrap();
    f.write_all(&[0, 0, 0, 1, 1, 2, 3, 4, 0, 0, 0]).unwrap();
    f.write_all(&[0; 20]).unwrap();
    drop(f);
    let want: Vec<u64> = (0..39).filter(|i| ![1, 2].contains(i)).collect();
    let s = open_seg(d.path(), 4096);
    let got = s.read_messages(1, 0, usize::MAX).unwrap();
    assert_eq!(seqs_of(&got), want);
    for (seq, m) in &got {
        assert_eq!(m, &big(*seq));
    }
    // the ack file is cut back to its batches: the garbage goes, and so do the zeros kept ahead of
    // them (`ACK_PREFILL`) that the garbage followed
    let ack_after = fs::read(&first_ack).unwrap();
    assert!(!ack_after.is_empty() && ack_after.len() <= ack_before.len());
    assert_eq!(&ack_after[..], &ack_before[..ack_after.len()]);
    assert!(ack_before[ack_after.len()..].iter().all(|&b| b == 0));
    // the segment lost the garbage, its footer (and the zeros before it) and the acked record 39, and
    // got a new footer right after its records (one run: no larger than the old one)
    s.flush_blocking().unwrap();
    let after = fs::read(&last_seg).unwrap();
    assert!(after.ends_with(b"MRSEGEND"));
    assert!(after.len() as u64 <= seg_len - partial_record_len(39));
    // the store goes on: 39 was acked and cut off with the tail, so it is appended again
    s.append_message(1, 39, &big(1039)).unwrap();
    drop(s);
    let s = open_seg(d.path(), 4096);
    let got = s.read_messages(1, 30, usize::MAX).unwrap();
    assert_eq!(seqs_of(&got), (30..40).collect::<Vec<_>>());
    assert_eq!(got.last().unwrap().1, big(1039));
}

/// Length of the record of `big(seq)` (the acked tail record cut off at open).
fn partial_record_len(seq: u64) -> u64 {
    seglog::encode_record(seq, &big(seq)).unwrap().len() as u64
}

#[test]
fn purge_and_delete_queue_remove_files() {
    let d = tmp();
    let s = open_seg(d.path(), 2048);
    put_q(&s, 1);
    put_q(&s, 2);
    for i in 0..50 {
        s.append_message(1, i, &big(i)).unwrap();
        s.append_message(2, i, &big(i)).unwrap();
    }
    s.set_message_state(1, 10, &MessageState::default()).unwrap();
    s.flush_blocking().unwrap();
    assert!(seg_files(d.path(), 1).len() > 3);
    assert_eq!(s.purge_queue(1).unwrap().0, 50);
    // the write segment's files may stay as the spare (`seglog::Spare`), under names that no open takes
    assert!(
        files(d.path(), 1).iter().all(|f| f.0.starts_with("spare.")),
        "{:?}",
        files(d.path(), 1)
    );
    assert_eq!(s.message_state(1, 10).unwrap(), None);
    // appends go on after a purge (seqs keep increasing)
    s.append_message(1, 50, &big(50)).unwrap();
    assert_eq!(s.queue_bounds(1).unwrap(), Some((50, 50)));
    let s2 = s.clone();
    s2.delete_queue("/", "q2", 2).unwrap();
    assert!(!queue_dir(d.path(), 2).exists());
    assert_eq!(s.count_messages(2).unwrap(), 0);
    // renamed to `<id>.deleted` until a flush round made the deletion durable, then removed (the
    // flusher thread may run that round before the next line, so its existence is not asserted)
    let trash = d.path().join("messages").join("00000002.deleted");
    s.flush_blocking().unwrap();
    assert!(!trash.exists());
    drop((s, s2));
    let s = open_seg(d.path(), 2048);
    assert_eq!(s.queue_ids_with_messages().unwrap(), vec![1]);
    assert_eq!(seqs_of(&s.read_messages(1, 0, 100).unwrap()), vec![50]);
}

/// Simulated crashes: after a sync point, more appends and acks reach the files (or part of
/// them); then every file is cut at a random offset not below its length at the sync point,
/// sometimes with garbage after the cut. Reopening must work, every message synced at the sync
/// point and never acked must be there, messages acked before it must not, and nothing else
/// may appear that was not appended (with exactly the content appended).
#[test]
fn random_crash_points_lose_nothing_synced_and_invent_nothing() {
    use rand_lite::Rng;
    // CRASH_ROUNDS / CRASH_SEED for a longer or different run
    let mut rng = Rng(env_u64("CRASH_SEED", 0x9E37_79B9_7F4A_7C15) | 1);
    for round in 0..env_u64("CRASH_ROUNDS", 40) as usize {
        let d = tmp();
        let seg_bytes = [700u64, 2048, 8192][round % 3];
        let mut next = 0u64;
        let mut acked_before: Vec<u64> = Vec::new();
        let synced: Vec<u64>;
        let mut later: Vec<u64> = Vec::new();
        let mut acked_later: Vec<u64> = Vec::new();
        let at_sync: BTreeMap<String, u64>;
        {
            let s = open_seg(d.path(), seg_bytes);
            put_q(&s, 1);
            // before the sync point
            for _ in 0..rng.below(6) + 1 {
                for _ in 0..rng.below(30) {
                    s.append_message(1, next, &big(next)).unwrap();
                    next += 1;
                }
                let acks: Vec<u64> = (0..rng.below(10)).map(|_| rng.below(next.max(1))).collect();
                s.delete_messages(1, &acks).unwrap();
                acked_before.extend(acks.into_iter().filter(|a| *a < next));
            }
            s.flush_blocking().unwrap();
            synced = (0..next).filter(|i| !acked_before.contains(i)).collect();
            at_sync = files(d.path(), 1).into_iter().collect();
            // after it
            for _ in 0..rng.below(4) {
                for _ in 0..rng.below(30) {
                    s.append_message(1, next, &big(next)).unwrap();
                    later.push(next);
                    next += 1;
                }
                let acks: Vec<u64> = (0..rng.below(20)).map(|_| rng.below(next.max(1))).collect();
                s.delete_messages(1, &acks).unwrap();
                acked_later.extend(acks);
            }
        }
        // the crash: cut every file somewhere after its synced length
        let dir = queue_dir(d.path(), 1);
        for (name, len) in files(d.path(), 1) {
            let floor = at_sync.get(&name).copied().unwrap_or(0).min(len);
            let cut = floor + rng.below(len - floor + 1);
            let f = fs::OpenOptions::new().write(true).open(dir.join(&name)).unwrap();
            f.set_len(cut).unwrap();
            if cut > floor && rng.below(3) == 0 {
                let junk: Vec<u8> = (0..rng.below(40)).map(|_| rng.below(256) as u8).collect();
                std::os::unix::fs::FileExt::write_all_at(&f, &junk, cut).unwrap();
            }
        }
        let s = open_seg(d.path(), seg_bytes);
        let got = s.read_messages(1, 0, usize::MAX).unwrap();
        let got_seqs = seqs_of(&got);
        check_reopened(round, &got, &synced, &acked_before, &later, &acked_later);
        assert_eq!(s.message_seqs(1).unwrap(), got_seqs);
        assert_eq!(s.count_messages(1).unwrap(), got.len() as u64);
        // and it goes on
        let n = got_seqs.last().map_or(0, |l| l + 1);
        s.append_message(1, n, &big(n)).unwrap();
        s.flush_blocking().unwrap();
        drop(s);
        let s = open_seg(d.path(), seg_bytes);
        let again = s.read_messages(1, 0, usize::MAX).unwrap();
        assert_eq!(again.len(), got.len() + 1, "round {round}");
    }
}

/// A queue whose consumers keep up writes its segments over the files of those it retired
/// (`seglog::Spare`). Simulated crashes after a sync point: every 512-byte block of a file that changed
/// since then is either new or as it was at the sync point (the kernel wrote some of the new pages and
/// not others: a reused file then shows old records between or after new ones), and the files may also
/// be cut after their length at the sync point. Nothing synced and not acked since is lost, nothing
/// acked before the sync point comes back, nothing is invented or altered. (Renames are kept: the
/// directory is synced in the round that makes records in a reused file durable; the power-loss tests
/// cut a real file system under the broker.)
#[test]
fn reused_segment_files_survive_crashes_with_old_and_new_blocks_mixed() {
    use rand_lite::Rng;
    use std::collections::HashMap;
    use std::os::unix::fs::{FileExt, MetadataExt};
    const BLOCK: usize = 512;
    let mut rng = Rng(env_u64("CRASH_SEED", 0x5EED_1234_ABCD_0001) | 1);
    let mut reused_files = 0;
    for round in 0..env_u64("CRASH_ROUNDS", 40) as usize {
        let d = tmp();
        let dir = queue_dir(d.path(), 1);
        let seg_bytes = [2048u64, 4096][round % 2];
        let mut next = 0u64;
        let mut acked_before: Vec<u64> = Vec::new();
        let mut later: Vec<u64> = Vec::new();
        let mut acked_later: Vec<u64> = Vec::new();
        let synced: Vec<u64>;
        // inode -> name and content at the sync point
        let mut at_sync: HashMap<u64, (String, Vec<u8>)> = HashMap::new();
        let inodes = |dir: &Path| -> Vec<(String, u64)> {
            fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name() != "queue.def")
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().ino(),
                    )
                })
                .collect()
        };
        // a consumer that keeps up: appends, then acks of (nearly) all of them, in order
        let step = |s: &Store,
                    next: &mut u64,
                    appended: &mut Vec<u64>,
                    acked: &mut Vec<u64>,
                    rng: &mut Rng,
                    at: &str| {
            let from = *next;
            for _ in 0..rng.below(12) + 1 {
                s.append_message(1, *next, &big(*next))
                    .unwrap_or_else(|e| panic!("round {round}, {at}: {e:?}"));
                appended.push(*next);
                *next += 1;
            }
            let acks: Vec<u64> = (from..*next).filter(|_| rng.below(8) != 0).collect();
            s.delete_messages(1, &acks).unwrap();
            acked.extend(acks);
        };
        {
            let s = open_seg(d.path(), seg_bytes);
            put_q(&s, 1);
            let mut before = Vec::new();
            for _ in 0..rng.below(10) + 3 {
                step(&s, &mut next, &mut before, &mut acked_before, &mut rng, "before");
                if rng.below(3) == 0 {
                    s.flush_blocking().unwrap();
                }
            }
            s.flush_blocking().unwrap();
            synced = (0..next).filter(|i| !acked_before.contains(i)).collect();
            for (name, ino) in inodes(&dir) {
                let content = fs::read(dir.join(&name)).unwrap();
                at_sync.insert(ino, (name, content));
            }
            for _ in 0..rng.below(8) + 1 {
                step(&s, &mut next, &mut later, &mut acked_later, &mut rng, "after");
            }
        }
        // the crash
        for (name, ino) in inodes(&dir) {
            let path = dir.join(&name);
            let now = fs::read(&path).unwrap();
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            // a file that had another name at the sync point was reused since (or is the spare now)
            let old = at_sync.get(&ino).map(|(was, content)| {
                if *was != name && name.ends_with(".seg") && !name.starts_with("spare") {
                    reused_files += 1;
                }
                content
            });
            let floor = old.map_or(0, |o| o.len() as u64).min(now.len() as u64);
            let cut = floor + rng.below(now.len() as u64 - floor + 1);
            f.set_len(cut).unwrap();
            if let Some(old) = old {
                for b in (0..floor as usize).step_by(BLOCK) {
                    let e = (b + BLOCK).min(floor as usize);
                    if now[b..e] != old[b..e] && rng.below(2) == 0 {
                        f.write_all_at(&old[b..e], b as u64).unwrap();
                    }
                }
            }
        }
        let s = open_seg(d.path(), seg_bytes);
        // what the broker reads at start (before any read finds records a sealed segment's footer
        // names damaged): appends go on after the last seq
        let bounds = s.queue_bounds(1).unwrap();
        let got = s.read_messages(1, 0, usize::MAX).unwrap();
        let got_seqs = seqs_of(&got);
        check_reopened(round, &got, &synced, &acked_before, &later, &acked_later);
        assert_eq!(s.count_messages(1).unwrap(), got.len() as u64);
        // and it goes on, through more reuse
        let mut n = bounds.map_or(0, |b| b.1 + 1);
        let (mut more, mut more_acked) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            step(&s, &mut n, &mut more, &mut more_acked, &mut rng, "reopened");
        }
        s.flush_blocking().unwrap();
        drop(s);
        let s = open_seg(d.path(), seg_bytes);
        let want: Vec<u64> = got_seqs
            .iter()
            .chain(more.iter())
            .filter(|x| !more_acked.contains(x))
            .copied()
            .collect();
        assert_eq!(
            seqs_of(&s.read_messages(1, 0, usize::MAX).unwrap()),
            want,
            "round {round}"
        );
    }
    eprintln!("{reused_files} reused segment files crashed");
    assert!(
        reused_files > 3,
        "only {reused_files} reused segment files crashed"
    );
}

/// The crash tests' verdict on what a reopened store reads: every message synced and not acked since
/// is there, nothing acked before the sync point is back, nothing is invented or altered.
fn check_reopened(
    round: usize,
    got: &[(u64, StoredMessage)],
    synced: &[u64],
    acked_before: &[u64],
    later: &[u64],
    acked_later: &[u64],
) {
    let got_seqs = seqs_of(got);
    for w in synced {
        assert!(
            got_seqs.contains(w) || acked_later.contains(w),
            "round {round}: synced message {w} lost"
        );
    }
    for (seq, m) in got {
        assert!(!acked_before.contains(seq), "round {round}: acked {seq} is back");
        assert!(
            synced.contains(seq) || later.contains(seq),
            "round {round}: {seq} invented"
        );
        assert_eq!(m, &big(*seq), "round {round}: {seq} altered");
    }
}

/// A tiny deterministic generator (the tests need no crate for this).
mod rand_lite {
    pub struct Rng(pub u64);
    impl Rng {
        pub fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            if n == 0 {
                0
            } else {
                self.0 % n
            }
        }
    }
}

#[test]
fn sealed_segments_are_opened_from_their_footers() {
    let d = tmp();
    {
        let s = open_seg(d.path(), 2048);
        put_q(&s, 1);
        // gaps (transient messages in the broker) make several runs per segment
        for i in (0..300).filter(|i| i % 5 != 3) {
            s.append_message(1, i, &big(i)).unwrap();
        }
        s.delete_messages(1, &[0, 7, 150]).unwrap();
    }
    let want: Vec<u64> = (0..300)
        .filter(|i| i % 5 != 3 && ![0, 7, 150].contains(i))
        .collect();
    // every segment ends with a footer now: a reopen reads none of them whole
    let (log, rec) = open_log(d.path(), 2048, 1);
    assert_eq!(rec.scanned_segments, 0);
    assert_eq!(rec.truncated_files, 0);
    assert_eq!(log.seqs(1), want);
    drop(log);
    // a broken footer (here: a flipped byte in it) makes open read that segment instead
    let dir = queue_dir(d.path(), 1);
    let seg = dir.join(&seg_files(d.path(), 1)[1]);
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x55;
    fs::write(&seg, &bytes).unwrap();
    let s = open_seg(d.path(), 2048);
    assert_eq!(s.message_seqs(1).unwrap(), want);
    let got = s.read_messages(1, 0, usize::MAX).unwrap();
    assert_eq!(seqs_of(&got), want);
    for (seq, m) in &got {
        assert_eq!(m, &big(*seq));
    }
    drop(s);
    let (_, rec) = open_log(d.path(), 2048, 1);
    assert_eq!(rec.scanned_segments, 0, "the segment got a new footer");
}

#[test]
fn permissions_and_policies_roundtrip_and_reopen() {
    let d = tmp();
    let p = PermissionRecord {
        vhost: "/".into(),
        user: "app".into(),
        configure: "^app\\.".into(),
        write: ".*".into(),
        read: "".into(),
    };
    let pol = PolicyRecord {
        vhost: "/".into(),
        name: "dlx".into(),
        pattern: "^jobs$".into(),
        apply_to: "queues".into(),
        priority: 3,
        definition: "{\"max-length\":5}".into(),
    };
    {
        let s = open(d.path());
        s.put_permission(&p).unwrap();
        s.put_permission(&PermissionRecord {
            user: "other".into(),
            ..p.clone()
        })
        .unwrap();
        s.delete_permission("/", "other").unwrap();
        s.put_policy(&pol).unwrap();
        s.put_policy(&PolicyRecord {
            name: "gone".into(),
            ..pol.clone()
        })
        .unwrap();
        s.delete_policy("/", "gone").unwrap();
        s.put_vhost_meta(&VhostMetaRecord {
            name: "/".into(),
            description: "d".into(),
            tags: vec!["t".into()],
            default_queue_type: "classic".into(),
        })
        .unwrap();
    }
    let s = open(d.path());
    assert_eq!(s.permissions().unwrap(), vec![p]);
    assert_eq!(s.policies().unwrap(), vec![pol]);
    assert_eq!(s.vhost_metas().unwrap()[0].tags, vec!["t".to_string()]);
}

/// Found by `store_matches_a_btreemap` (its regression file): seqs 2^40 apart in one segment, then an ack
/// that makes recovery scan the segment, which took the far record for garbage and dropped it with
/// everything after it. Such a seq now starts a new segment.
#[test]
fn a_seq_far_past_the_last_starts_a_segment_and_survives_a_reopen() {
    for gap in [5u64, 1 << 32, (1 << 40) - 1, 1 << 40, 1 << 41] {
        let d = tmp();
        let open = model::open_small;
        let s = open(d.path());
        put_q(&s, 2);
        s.append_message(2, 0, &msg(0)).unwrap();
        for seq in gap + 1..gap + 4 {
            s.append_message(2, seq, &msg(seq)).unwrap();
        }
        s.delete_messages(2, &[gap + 3]).unwrap();
        drop(s);
        let s = open(d.path());
        let seqs: Vec<u64> = s
            .read_messages(2, 0, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(seqs, [0, gap + 1, gap + 2], "gap {gap}");
    }
}
