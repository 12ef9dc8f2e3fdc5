use std::fs;
use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;

use super::format::{idx_path, seg_path, stream_dir_name};
use super::*;
use crate::codec::MessageParts;
use crate::{FaultOp, FileKind, Store, StoreOptions, StoredMessage, TicketState};

fn open(d: &Path) -> Store {
    Store::open(d, StoreOptions::default()).unwrap()
}

fn msg(i: u64, size: usize) -> StoredMessage {
    let mut body = format!("body-{i}-").into_bytes();
    body.resize(size.max(body.len()), b'.');
    StoredMessage {
        exchange: "ex".into(),
        routing_key: format!("rk.{i}"),
        properties: Bytes::from_static(&[0x10, 0]),
        body: Bytes::from(body),
        delivery_count: 0,
        published_at_ms: i,
        expires_at_ms: None,
        not_before_ms: None,
    }
}

/// A queue record so the stream's directory is accounted for at the next open.
fn declare(st: &Store, name: &str) -> u32 {
    let id = st.next_queue_id().unwrap();
    st.put_queue(&crate::QueueRecord {
        id,
        vhost: "/".into(),
        name: name.into(),
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: vec![],
    })
    .unwrap();
    id
}

fn read_all(st: &Store, r: &mut StreamReader) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    loop {
        let mut items = Vec::new();
        let res = st
            .stream_read(r, 100, usize::MAX, &mut |_| true, &mut items)
            .unwrap();
        out.extend(items.iter().map(|i| (i.offset, i.timestamp_ms)));
        if res.taken < 100 && !res.more {
            return out;
        }
    }
}

fn offsets(v: &[(u64, u64)]) -> Vec<u64> {
    v.iter().map(|x| x.0).collect()
}

#[test]
fn offsets_increase_and_every_start_spec_places_the_reader() {
    let d = tempfile::tempdir().unwrap();
    let st = open(d.path());
    let id = declare(&st, "s");
    // ~30 records per 4 KiB segment
    for i in 0..300u64 {
        let (off, _) = st
            .stream_append(id, 1000 + i * 10, None, &msg(i, 100), 4096)
            .unwrap();
        assert_eq!(off, i);
        if i % 7 == 0 {
            st.flush_blocking().unwrap(); // chunk boundaries
        }
    }
    let stats = st.stream_stats(id);
    assert_eq!((stats.first, stats.next), (Some(0), 300));
    assert!(stats.segments > 5, "{stats:?}");

    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    let all = read_all(&st, &mut r);
    assert_eq!(offsets(&all), (0..300).collect::<Vec<_>>());
    assert_eq!(all[5].1, 1050);

    let mut r = st.stream_reader(id, StreamStart::Offset(137)).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), (137..300).collect::<Vec<_>>());

    // the first message at or after 2005 is offset 101 (ts 2010)
    let mut r = st.stream_reader(id, StreamStart::Timestamp(2005)).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r))[0], 101);
    let mut r = st.stream_reader(id, StreamStart::Timestamp(2000)).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r))[0], 100);

    // last: the last chunk (started after the flush at 294, or later: the flusher also runs rounds
    // of its own, and each round ends a chunk)
    let mut r = st.stream_reader(id, StreamStart::Last).unwrap();
    let last = offsets(&read_all(&st, &mut r));
    assert!(
        last[0] >= 295 && last == (last[0]..300).collect::<Vec<_>>(),
        "{last:?}"
    );

    let mut r = st.stream_reader(id, StreamStart::Next).unwrap();
    assert!(read_all(&st, &mut r).is_empty());
    st.stream_append(id, 9999, None, &msg(300, 10), 4096).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), vec![300]);
    // beyond the end: next
    let mut r = st.stream_reader(id, StreamStart::Offset(10_000)).unwrap();
    st.stream_append(id, 9999, None, &msg(301, 10), 4096).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), vec![301]);
}

#[test]
fn filter_values_select_records_and_the_scan_limit_yields() {
    let d = tempfile::tempdir().unwrap();
    let st = open(d.path());
    let id = declare(&st, "s");
    for i in 0..100u64 {
        let f: Option<&[u8]> = match i % 3 {
            0 => Some(b"eu"),
            1 => Some(b"us"),
            _ => None,
        };
        st.stream_append(id, i, f, &msg(i, 50), 1 << 20).unwrap();
    }
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    let mut out = Vec::new();
    let mut accept = |f: Option<&[u8]>| f == Some(b"eu");
    let res = st
        .stream_read(&mut r, 1000, 1 << 20, &mut accept, &mut out)
        .unwrap();
    assert_eq!(res.taken, 34);
    assert!(out.iter().all(|i| i.offset % 3 == 0));
    // a small scan limit stops early and says so
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    let mut out = Vec::new();
    let res = st.stream_read(&mut r, 1000, 500, &mut accept, &mut out).unwrap();
    assert!(res.more && res.taken < 34);
}

#[test]
fn reopen_continues_offsets_and_zeroes_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    let id;
    {
        let st = open(d.path());
        id = declare(&st, "s");
        for i in 0..50u64 {
            st.stream_append(id, i, None, &msg(i, 200), 4096).unwrap();
        }
        st.flush_blocking().unwrap();
    }
    // a torn write at the end of the last segment
    let dir = d.path().join("streams").join(stream_dir_name(id));
    let last = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            n.strip_suffix(".seg")
                .map(|s| u64::from_str_radix(s, 16).unwrap())
        })
        .max()
        .unwrap();
    let p = seg_path(&dir, last);
    let mut bytes = fs::read(&p).unwrap();
    // the records end in the body's '.'s, then come the prefill's zeros
    let good_len = bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    bytes.extend_from_slice(&[0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    fs::write(&p, &bytes).unwrap();
    // and a lost index of another segment
    fs::remove_file(idx_path(&dir, 0)).unwrap();
    let st = open(d.path());
    // zeroed, not cut: recovery truncates nothing in place (recovery.rs, `open_segment`)
    let after = fs::read(&p).unwrap();
    assert_eq!(after.len(), bytes.len(), "the file keeps its length");
    assert_eq!(&after[..good_len as usize], &bytes[..good_len as usize]);
    assert!(
        after[good_len as usize..].iter().all(|&b| b == 0),
        "torn tail zeroed"
    );
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), (0..50).collect::<Vec<_>>());
    let mut r = st.stream_reader(id, StreamStart::Offset(3)).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r))[0], 3);
    appends_go_on_after_the_records(st, d.path(), id, 50, 4096);
}

/// Appends offset `next` (the one after the last record recovery kept), then reopens: the append went where
/// the records ended, over the zeros, and a reopen reads it after the two before it and finds no torn tail.
fn appends_go_on_after_the_records(st: Store, d: &Path, id: u32, next: u64, max: u64) {
    let (off, t) = st.stream_append(id, 1000, None, &msg(next, 10), max).unwrap();
    assert_eq!(off, next);
    block_wait(&st, t);
    drop(st);
    let st = open(d);
    let mut r = st.stream_reader(id, StreamStart::Offset(next - 2)).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), vec![next - 2, next - 1, next]);
}

fn block_wait(st: &Store, t: u64) {
    st.wait_durable_blocking(t).unwrap();
}

/// A stream whose first ten records (of one size: `one` bytes each, at the start of segment file `p`) are
/// followed by 3 MB more, so that their bytes are no longer kept in memory (`KEEP_SYNCED`) and a reader
/// reads them from the file: (store, stream id, `p`, `one`).
fn ten_small_records_read_from_the_file(d: &Path) -> (Store, u32, std::path::PathBuf, usize) {
    let st = open(d);
    let id = declare(&st, "s");
    for i in 0..10u64 {
        st.stream_append(id, i, None, &msg(i, 100), 64 << 20).unwrap();
    }
    st.flush_blocking().unwrap();
    let p = seg_path(&d.join("streams").join(stream_dir_name(id)), 0);
    // ten records of one size, then the prefill's zeros
    let b0 = fs::read(&p).unwrap();
    let one = (b0.iter().rposition(|&x| x != 0).unwrap() + 1) / 10;
    for i in 10..40u64 {
        st.stream_append(id, i, None, &msg(i, 100_000), 64 << 20).unwrap();
        st.flush_blocking().unwrap();
    }
    (st, id, p, one)
}

#[test]
fn damaged_record_in_the_middle_is_skipped() {
    let d = tempfile::tempdir().unwrap();
    let (st, id, p, one) = ten_small_records_read_from_the_file(d.path());
    let mut b = fs::read(&p).unwrap();
    b[one * 3 + 40] ^= 0xff;
    fs::write(&p, &b).unwrap();
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    let got = offsets(&read_all(&st, &mut r));
    let want: Vec<u64> = (0..40).filter(|&i| i != 3).collect();
    assert_eq!(got, want);
}

/// Opens the stream log of `d` by itself (stream `id` named "s"): what recovery found.
fn open_streams(d: &Path, id: u32) -> super::recovery::StreamRecovery {
    let known = [(
        id,
        crate::QueueRecord {
            id,
            vhost: "/".into(),
            name: "s".into(),
            durable: true,
            ..Default::default()
        },
    )]
    .into_iter()
    .collect();
    stream_log(d, &known).1
}

/// The stream log of `d` opened by itself (no store, no flusher thread: `run_round` is its flusher), with
/// the queue records `known`: the log and what recovery found.
fn stream_log(
    d: &Path,
    known: &std::collections::HashMap<u32, crate::QueueRecord>,
) -> (StreamLog, super::recovery::StreamRecovery) {
    StreamLog::open(&d.join("streams"), known, &d.join("lost"), Default::default()).unwrap()
}

/// Bytes of a synced record changed on the medium (not a torn write: later rounds' marked records follow
/// it): recovery skips that record and keeps the confirmed ones after it, where it used to take it for a
/// torn tail and zero everything after it (`recovery::scan_records`). Appends go on after the last record.
#[test]
fn recovery_skips_a_damaged_record_and_keeps_the_records_after_it() {
    let d = tempfile::tempdir().unwrap();
    let (st, id, p, one) = ten_small_records_read_from_the_file(d.path());
    drop(st);
    let mut b = fs::read(&p).unwrap();
    b[one * 3 + 40] ^= 0xff;
    fs::write(&p, &b).unwrap();
    // with the index lost too, recovery reads the whole segment
    fs::remove_file(idx_path(&d.path().join("streams").join(stream_dir_name(id)), 0)).unwrap();
    let rec = open_streams(d.path(), id);
    assert_eq!((rec.damaged_regions, rec.damaged_bytes), (1, one as u64));
    assert_eq!(rec.torn_files, 0);
    assert_eq!(fs::read(&p).unwrap(), b, "nothing rewritten");
    let st = open(d.path());
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    let want: Vec<u64> = (0..40).filter(|&i| i != 3).collect();
    assert_eq!(offsets(&read_all(&st, &mut r)), want);
    appends_go_on_after_the_records(st, d.path(), id, 40, 64 << 20);
}

/// The position of each record of segment file bytes `b`, in order.
fn record_positions(b: &[u8]) -> Vec<usize> {
    let mut at = vec![];
    let mut p = 0;
    while let Ok(Some(h)) = super::format::parse_record(&b[p..]) {
        at.push(p);
        p += h.total;
    }
    at
}

/// A power cut tore the last round's write (a hole of zeros from inside one record to inside a later one,
/// at no sector boundary, as LazyFS's torn-op makes them): the records from the first it broke on were never
/// confirmed, and recovery does not bring back the ones after the hole, though they are whole: the offsets
/// stay without a gap and appends go on from the last record before it. (Damage before an earlier round's
/// end is crossed instead: `recovery_skips_a_damaged_record_and_keeps_the_records_after_it`.)
#[test]
fn recovery_ends_the_records_at_a_torn_write_in_the_last_round() {
    let d = tempfile::tempdir().unwrap();
    let id = declare(&open(d.path()), "s");
    // two rounds of ten records, written by the stream log alone (the store's flusher would choose its
    // own rounds)
    let (log, _) = stream_log(d.path(), &Default::default());
    for round in 0..2u64 {
        for i in round * 10..round * 10 + 10 {
            log.append(id, i, None, &MessageParts::of(&msg(i, 100)), 64 << 20)
                .unwrap();
        }
        run_round(&log, true);
    }
    drop(log);
    let p = seg_path(&d.path().join("streams").join(stream_dir_name(id)), 0);
    let mut b = fs::read(&p).unwrap();
    let at = record_positions(&b);
    assert_eq!(at.len(), 20);
    b[at[13] + 30..at[15] + 9].fill(0);
    fs::write(&p, &b).unwrap();
    let rec = open_streams(d.path(), id);
    assert_eq!((rec.damaged_regions, rec.torn_files), (0, 1));
    assert!(
        fs::read(&p).unwrap()[at[13]..].iter().all(|&x| x == 0),
        "the tail zeroed"
    );
    let st = open(d.path());
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), (0..13).collect::<Vec<_>>());
    appends_go_on_after_the_records(st, d.path(), id, 13, 64 << 20);
}

/// One flusher round of the stream log by itself: write out, sync (or report the sync failed), settle.
fn run_round(log: &StreamLog, sync_ok: bool) {
    let mut batch = crate::seglog::SyncBatch::default();
    log.collect_for_sync(&mut batch).unwrap();
    for item in &batch.files {
        item.file.sync_data().unwrap();
    }
    log.apply_sync_results(batch.files.into_iter().map(|i| (i, sync_ok)));
}

/// The flusher marks a round's first record only when everything before it in the segment is synced: after
/// a round's sync (the next round's first record), and not after a write-out that no sync covered yet. (The
/// stream log by itself, without the store's flusher thread: each `round` is one of its rounds.)
#[test]
fn the_round_mark_is_set_on_a_rounds_first_record_when_all_before_it_is_synced() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("streams");
    let (log, _) = stream_log(d.path(), &Default::default());
    let id = 7;
    let append = |i: u64, size: usize| {
        log.append(
            id,
            i,
            None,
            &crate::codec::MessageParts::of(&msg(i, size)),
            64 << 20,
        )
        .unwrap();
    };
    let round = |sync: bool| run_round(&log, sync);
    let marks = || {
        let b = fs::read(seg_path(&root.join(stream_dir_name(id)), 0)).unwrap();
        record_positions(&b)
            .iter()
            .enumerate()
            .filter(|(_, &p)| super::format::parse_record(&b[p..]).unwrap().unwrap().marked)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    (0..3).for_each(|i| append(i, 100));
    round(true);
    assert_eq!(marks(), vec![0], "a new segment's first record");
    (3..5).for_each(|i| append(i, 100));
    round(true);
    assert_eq!(marks(), vec![0, 3]);
    // more than `PENDING_MAX` appended: written out by the append itself, unsynced, so the round that
    // syncs it has no record to mark; the round after it does
    let big = (crate::seglog::PENDING_MAX / 100_000 + 2) as u64;
    (5..5 + big).for_each(|i| append(i, 100_000));
    append(5 + big, 100);
    round(true);
    assert_eq!(marks(), vec![0, 3]);
    append(6 + big, 100);
    round(true);
    assert_eq!(marks(), vec![0, 3, 6 + big as usize]);
    // a round whose sync failed (its first record was marked: all before it was durable when it was
    // written); the round after it repairs the file and marks nothing; the next one marks again
    append(7 + big, 100);
    round(false);
    append(8 + big, 100);
    round(true);
    let m = |i: u64| (i + big) as usize;
    assert_eq!(marks(), vec![0, 3, m(6), m(7)]);
    append(9 + big, 100);
    round(true);
    assert_eq!(marks(), vec![0, 3, m(6), m(7), m(9)]);
}

#[test]
fn retention_drops_whole_oldest_segments_and_readers_move_on() {
    let d = tempfile::tempdir().unwrap();
    let st = open(d.path());
    let id = declare(&st, "s");
    for i in 0..400u64 {
        st.stream_append(id, 1000 + i, None, &msg(i, 200), 8192).unwrap();
    }
    st.flush_blocking().unwrap();
    let dir = d.path().join("streams").join(stream_dir_name(id));
    let before = crate::dir_allocated_bytes(&dir).unwrap();
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    let mut items = Vec::new();
    st.stream_read(&mut r, 3, usize::MAX, &mut |_| true, &mut items)
        .unwrap();
    let s0 = st.stream_stats(id);
    let dropped = st.stream_retain(id, Some(32 << 10), None).unwrap();
    assert!(dropped > 0);
    let s1 = st.stream_stats(id);
    assert!(s1.bytes <= 32 << 10 && s1.bytes < s0.bytes, "{s0:?} {s1:?}");
    assert!(s1.first.unwrap() > 0);
    st.flush_blocking().unwrap();
    let after = crate::dir_allocated_bytes(&dir).unwrap();
    assert!(after < before / 2, "disk shrank: {before} -> {after}");
    // the reader's segment is gone: it hands out what it had read, then goes on at the first
    // offset held
    let rest = offsets(&read_all(&st, &mut r));
    let first = s1.first.unwrap();
    let jump = rest.iter().position(|&o| o == first).unwrap();
    assert_eq!(&rest[jump..], (first..400).collect::<Vec<_>>().as_slice());
    assert!(rest[..jump].windows(2).all(|w| w[1] == w[0] + 1) && rest[0] == 3);
    // by age: everything older than the write segment
    let dropped = st.stream_retain(id, None, Some(u64::MAX)).unwrap();
    assert!(dropped > 0);
    assert_eq!(st.stream_stats(id).segments, 1);
    drop(st);
    let st = open(d.path());
    let (off, _) = st.stream_append(id, 5000, None, &msg(1, 1), 8192).unwrap();
    assert_eq!(off, 400, "offsets are never reused");
}

#[test]
fn stored_offsets_survive_reopen_and_go_with_the_stream() {
    let d = tempfile::tempdir().unwrap();
    let id;
    {
        let st = open(d.path());
        id = declare(&st, "s");
        st.stream_append(id, 1, None, &msg(1, 1), 1 << 20).unwrap();
        let t = st.stream_store_offset(id, "reader-1", 41).unwrap();
        st.wait_durable_blocking(t).unwrap();
    }
    let st = open(d.path());
    assert_eq!(st.stream_offset(id, "reader-1").unwrap(), Some(41));
    assert_eq!(st.stream_offset(id, "reader-2").unwrap(), None);
    st.delete_stream("/", "s", id).unwrap();
    assert_eq!(st.stream_offset(id, "reader-1").unwrap(), None);
    assert!(!d.path().join("streams").join(stream_dir_name(id)).exists());
}

#[test]
fn a_failed_sync_fails_the_appends_it_covered_and_later_ones_succeed() {
    let d = tempfile::tempdir().unwrap();
    let st = open(d.path());
    let id = declare(&st, "s");
    st.flush_blocking().unwrap();
    // The fault stays until the append's ticket is settled: the flusher thread may run a round
    // between the append and its ticket (a round that fails only earlier tickets), so a one-shot
    // fault could be spent there and the retry would then, rightly, make the append durable.
    st.faults()
        .fail(FileKind::Segment, FaultOp::Sync, libc_eio(), None);
    let (_, t) = st.stream_append(id, 1, None, &msg(1, 10), 1 << 20).unwrap();
    let _ = st.flush_blocking();
    assert_eq!(st.ticket_state(t), TicketState::Failed);
    st.faults().clear();
    let (_, t2) = st.stream_append(id, 2, None, &msg(2, 10), 1 << 20).unwrap();
    st.flush_blocking().unwrap();
    assert_eq!(st.ticket_state(t2), TicketState::Durable);
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), vec![0, 1]);
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn a_stream_directory_without_a_record_goes_to_lost_found() {
    let d = tempfile::tempdir().unwrap();
    {
        let st = open(d.path());
        st.stream_append(77, 1, None, &msg(1, 1), 1 << 20).unwrap();
        st.flush_blocking().unwrap();
    }
    let _st = open(d.path());
    assert!(!d.path().join("streams").join(stream_dir_name(77)).exists());
    let lost: Vec<_> = fs::read_dir(d.path().join(crate::LOST_FOUND))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(lost.iter().any(|n| n.starts_with("stream-0000004d")), "{lost:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Against a model (a vector of (offset, timestamp)): any start spec, after any pattern of
    /// appends, flushes, reopens and segment sizes, reads exactly the model's suffix.
    #[test]
    fn reads_match_a_model(
        ops in proptest::collection::vec((0u8..10, 1usize..600), 1..120),
        seg in 1024u64..16384,
        probes in proptest::collection::vec((0u8..4, 0u64..200), 1..8),
    ) {
        let d = tempfile::tempdir().unwrap();
        let mut st = open(d.path());
        let id = declare(&st, "s");
        let mut model: Vec<(u64, u64)> = Vec::new();
        let mut ts = 1000u64;
        for (op, size) in ops {
            match op {
                0 => { st.flush_blocking().unwrap(); }
                1 => { drop(st); st = open(d.path()); }
                _ => {
                    ts += (size % 3) as u64;
                    let (off, _) = st.stream_append(id, ts, None, &msg(model.len() as u64, size), seg).unwrap();
                    prop_assert_eq!(off, model.len() as u64);
                    model.push((off, ts));
                }
            }
        }
        for (kind, v) in probes {
            let (start, want): (StreamStart, Vec<(u64, u64)>) = match kind {
                0 => (StreamStart::First, model.clone()),
                1 => (StreamStart::Offset(v), model.iter().copied().filter(|m| m.0 >= v.min(model.len() as u64)).collect()),
                2 => {
                    let t = 1000 + v;
                    let w: Vec<_> = model.iter().copied().filter(|m| m.1 >= t).collect();
                    (StreamStart::Timestamp(t), w)
                }
                _ => (StreamStart::Next, vec![]),
            };
            let mut r = st.stream_reader(id, start).unwrap();
            prop_assert_eq!(read_all(&st, &mut r), want);
        }
    }
}

/// The unsynced tail is read from the segment's write buffer, not from the file: a file system that
/// returns stale bytes for a region written but not yet synced (LazyFS did, racing reads with the writes
/// and syncs of the same block: zeros, and the record looked damaged and was skipped) cannot make a live
/// reader skip. Here the file's unsynced bytes are zeroed behind the store's back.
#[test]
fn the_unsynced_tail_is_read_from_memory() {
    let d = tempfile::tempdir().unwrap();
    let st = open(d.path());
    let id = declare(&st, "s");
    st.flush_blocking().unwrap();
    let (_, t) = st.stream_append(id, 1, None, &msg(0, 100), 1 << 20).unwrap();
    st.wait_durable_blocking(t).unwrap();
    let seg = d
        .path()
        .join("streams")
        .join(stream_dir_name(id))
        .join(seg_path(Path::new(""), 0));
    // the records' end (the prefill's zeros follow)
    let data_end = |p: &Path| {
        let b = fs::read(p).unwrap();
        b.iter().rposition(|&x| x != 0).map_or(0, |i| i as u64 + 1)
    };
    let synced_len = data_end(&seg);
    // written out, never synced: every sync of a segment fails from here on
    st.faults()
        .fail(FileKind::Segment, FaultOp::Sync, libc_eio(), None);
    let mut last = 0;
    for i in 1..10 {
        last = st.stream_append(id, 1, None, &msg(i, 100), 1 << 20).unwrap().1;
    }
    let _ = st.flush_blocking();
    assert_eq!(st.ticket_state(last), TicketState::Failed);
    let len = data_end(&seg);
    assert!(
        len > synced_len && synced_len > 0,
        "the later records were written out: {len}"
    );
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; (len - synced_len) as usize], synced_len)
        .unwrap();
    drop(f);
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), (0..10).collect::<Vec<_>>());
    st.faults().clear();
}

/// Synced bytes of the segment being written stay in memory (`KEEP_SYNCED`) for readers: a reader a little
/// behind the writers does not read them back from the file. Zeroing the whole file behind the store's back
/// (as LazyFS's stale reads looked) changes nothing for it.
#[test]
fn recently_synced_records_are_read_from_memory() {
    let d = tempfile::tempdir().unwrap();
    let st = open(d.path());
    let id = declare(&st, "s");
    let mut last = 0;
    for i in 0..10 {
        last = st.stream_append(id, 1, None, &msg(i, 100), 1 << 20).unwrap().1;
    }
    st.wait_durable_blocking(last).unwrap();
    st.flush_blocking().unwrap();
    let seg = d
        .path()
        .join("streams")
        .join(stream_dir_name(id))
        .join(seg_path(Path::new(""), 0));
    let len = fs::metadata(&seg).unwrap().len();
    assert!(len > 1000);
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; len as usize], 0).unwrap();
    drop(f);
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), (0..10).collect::<Vec<_>>());
}

/// A record that reads back damaged is read again after a short wait before it is skipped: a file system
/// may return stale bytes for a while (LazyFS returned zeros for written bytes, and the record 50 ms later).
#[test]
fn a_record_that_reads_damaged_for_a_moment_is_read_again_not_skipped() {
    let d = tempfile::tempdir().unwrap();
    let (st, id, p, one) = ten_small_records_read_from_the_file(d.path());
    let good = fs::read(&p).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; one], (one * 3) as u64).unwrap();
    let restore = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(40));
        std::os::unix::fs::FileExt::write_all_at(&f, &good[one * 3..one * 4], (one * 3) as u64).unwrap();
    });
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    let got = offsets(&read_all(&st, &mut r));
    restore.join().unwrap();
    assert_eq!(got, (0..40).collect::<Vec<_>>());
}

/// The segment being written is kept zero-filled ahead of its data (`PREFILL`, up to the segment size), and
/// a reopen keeps the zeros without taking them for a torn write; appends
/// then go on where the records end, over the zeros.
#[test]
fn the_write_segment_is_prefilled_and_a_reopen_keeps_the_zeros() {
    let d = tempfile::tempdir().unwrap();
    let max = 64 << 10;
    let st = open(d.path());
    let id = declare(&st, "s");
    for i in 0..150u64 {
        st.stream_append(id, i, None, &msg(i, 1000), max).unwrap();
    }
    st.flush_blocking().unwrap();
    let dir = d.path().join("streams").join(stream_dir_name(id));
    let mut segs: Vec<u64> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            n.strip_suffix(".seg")
                .map(|s| u64::from_str_radix(s, 16).unwrap())
        })
        .collect();
    segs.sort_unstable();
    assert!(segs.len() >= 3, "{segs:?}");
    let data_end = |b: &[u8]| b.iter().rposition(|&x| x != 0).unwrap() + 1;
    for (i, first) in segs.iter().enumerate() {
        let b = fs::read(seg_path(&dir, *first)).unwrap();
        if i + 1 < segs.len() {
            // a sealed segment keeps the zeros it had (up to the segment size)
            assert!(b.len() as u64 <= max, "sealed segment {first}: {} bytes", b.len());
        } else {
            assert_eq!(
                b.len() as u64,
                max,
                "the write segment is filled up to the segment size"
            );
            assert!(data_end(&b) < b.len());
        }
    }
    drop(st);
    let rec = open_streams(d.path(), id);
    assert_eq!((rec.torn_files, rec.torn_bytes), (0, 0), "zeros are no torn tail");
    let last = seg_path(&dir, *segs.last().unwrap());
    let b = fs::read(&last).unwrap();
    assert_eq!(b.len() as u64, max, "zeros kept at open");
    assert!(data_end(&b) < b.len());
    let st = open(d.path());
    let mut r = st.stream_reader(id, StreamStart::First).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), (0..150).collect::<Vec<_>>());
    let (off, t) = st.stream_append(id, 200, None, &msg(150, 1000), max).unwrap();
    assert_eq!(off, 150);
    block_wait(&st, t);
    let mut r = st.stream_reader(id, StreamStart::Offset(149)).unwrap();
    assert_eq!(offsets(&read_all(&st, &mut r)), vec![149, 150]);
}
