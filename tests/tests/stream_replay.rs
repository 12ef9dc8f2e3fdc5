//! Issue 15, stream queues: replay from `first`, a number, an AMQP timestamp and an interval after a
//! restart; `last` and `next`; the `x-stream-offset` header; independent consumers; acks never remove.
//! Semantics as RabbitMQ's rabbit_stream_queue.erl (parse_offset_arg/1: a timestamp is seconds, an interval
//! string is "now minus that", in x-max-age's format).

mod stream_common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable};
use mailroom_tests::Server;
use stream_common::*;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test]
async fn replay_from_first_number_timestamp_and_interval_after_a_restart() {
    let mut server = Server::start();
    let ts_b;
    {
        let conn = connect(&server).await;
        let ch = conn.create_channel().await.unwrap();
        declare_stream(&ch, "events", &[]).await;
        publish_confirmed(&conn, "events", bodies(0..100, "a")).await;
        // batch b starts in a later second than every message of batch a
        let t0 = now_ms();
        let boundary = (t0 / 1000 + 1) * 1000;
        while now_ms() < boundary + 50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ts_b = boundary / 1000;
        publish_confirmed(&conn, "events", bodies(100..150, "b")).await;
        conn.close(200, "bye".into()).await.ok();
    }
    server.stop();
    server.restart();
    let conn = connect(&server).await;

    // first: everything, in order, each with its offset
    let (_ch, mut c) = consume(&conn, "events", "", 50, table(&[("x-stream-offset", s("first"))])).await;
    let got = take(&mut c, 150, true).await;
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        (0..150).collect::<Vec<_>>()
    );
    assert_eq!(got[0].1, "a0");
    assert_eq!(got[120].1, "b120");
    nothing_more(&mut c).await;

    // acks removed nothing: a second consumer reads the same from a number on
    let (_ch2, mut c2) = consume(
        &conn,
        "events",
        "",
        10,
        table(&[("x-stream-offset", AMQPValue::LongLongInt(42))]),
    )
    .await;
    let got = take(&mut c2, 108, true).await;
    assert_eq!(got[0], (42, "a42".to_string()));
    assert_eq!(got.last().unwrap().0, 149);
    nothing_more(&mut c2).await;

    // an AMQP timestamp (seconds): batch b only
    let (_ch3, mut c3) = consume(
        &conn,
        "events",
        "",
        10,
        table(&[("x-stream-offset", AMQPValue::Timestamp(ts_b))]),
    )
    .await;
    let got = take(&mut c3, 50, true).await;
    assert_eq!(got[0], (100, "b100".to_string()));
    nothing_more(&mut c3).await;

    // an interval: everything was published within the last 24 hours
    let (_ch4, mut c4) = consume(&conn, "events", "", 10, table(&[("x-stream-offset", s("24h"))])).await;
    let got = take(&mut c4, 150, true).await;
    assert_eq!(got[0].0, 0);
    nothing_more(&mut c4).await;

    // next (the default): only what is published from now on; every consumer gets it
    let (_ch5, mut c5) = consume(&conn, "events", "", 10, FieldTable::default()).await;
    nothing_more(&mut c5).await;
    publish_confirmed(&conn, "events", bodies(150..152, "c")).await;
    assert_eq!(
        take(&mut c5, 2, true).await,
        vec![(150, "c150".into()), (151, "c151".into())]
    );
    assert_eq!(take(&mut c, 2, true).await[0].0, 150);
    assert_eq!(take(&mut c4, 2, true).await[1].0, 151);
}

#[tokio::test]
async fn an_interval_leaves_out_what_is_older() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "s", &[]).await;
    publish_confirmed(&conn, "s", bodies(0..10, "old")).await;
    // "4s": the old batch is 6 s old when the consumer starts, the new one moments old
    tokio::time::sleep(Duration::from_secs(6)).await;
    publish_confirmed(&conn, "s", bodies(10..15, "new")).await;
    let (_ch, mut c) = consume(&conn, "s", "", 10, table(&[("x-stream-offset", s("4s"))])).await;
    let got = take(&mut c, 5, true).await;
    assert_eq!(got[0], (10, "new10".to_string()));
    nothing_more(&mut c).await;
}

#[tokio::test]
async fn last_starts_at_the_last_chunk_and_consumers_are_independent() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "s", &[]).await;
    publish_confirmed(&conn, "s", bodies(0..20, "m")).await;
    // the last chunk holds at least the last message and ends with it
    let (_ch, mut last) = consume(&conn, "s", "", 100, table(&[("x-stream-offset", s("last"))])).await;
    let first = take(&mut last, 1, true).await[0].0;
    assert!(first <= 19);
    if first < 19 {
        let rest = take(&mut last, (19 - first) as usize, true).await;
        assert_eq!(rest.last().unwrap().0, 19);
    }
    nothing_more(&mut last).await;

    // a slow consumer (prefetch 1, never acking) does not hold back a fast one
    let (_slow_ch, mut slow) = consume(&conn, "s", "", 1, table(&[("x-stream-offset", s("first"))])).await;
    let (_fast_ch, mut fast) = consume(&conn, "s", "", 5, table(&[("x-stream-offset", s("first"))])).await;
    assert_eq!(take(&mut slow, 1, false).await[0].0, 0);
    nothing_more(&mut slow).await;
    let got = take(&mut fast, 20, true).await;
    assert_eq!(got.last().unwrap().0, 19);
}

/// Stream "s" in segments of 100 kB, holding "m0", "m1", … published with confirms in batches that end
/// before `ends` (each batch once the one before it is confirmed).
async fn stream_in_small_segments(server: &Server, ends: &[u64]) {
    let conn = connect(server).await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(
        &ch,
        "s",
        &[("x-stream-max-segment-size-bytes", AMQPValue::LongInt(100_000))],
    )
    .await;
    let mut from = 0;
    for &end in ends {
        publish_confirmed(&conn, "s", bodies(from..end, "m")).await;
        from = end;
    }
}

#[tokio::test]
async fn every_confirmed_message_survives_kill_9() {
    let mut server = Server::start();
    stream_in_small_segments(&server, &[3000]).await;
    server.restart(); // SIGKILL, then start on the same data dir
    let conn = connect(&server).await;
    let (_ch, mut c) = consume(&conn, "s", "", 200, table(&[("x-stream-offset", s("first"))])).await;
    let got = take(&mut c, 3000, true).await;
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, g)| g.0 == i as u64 && g.1 == format!("m{i}")));
    nothing_more(&mut c).await;
    // offsets continue after the last one
    publish_confirmed(&conn, "s", ["next".to_string()]).await;
    assert_eq!(take(&mut c, 1, true).await[0], (3000, "next".into()));
}

/// A record whose bytes changed on disk after they were synced (media damage: a later flush round's marked
/// record follows it, so it cannot be a power cut's torn write) costs its own message and nothing else:
/// recovery skips it, logs it as an error, and keeps the confirmed records after it
/// (storage/src/stream/recovery.rs, `scan_records`); offsets go on after the last. With the segment's index
/// lost too, recovery reads the whole segment. (RabbitMQ's osiris truncates a segment at its first invalid
/// chunk; here the records after the damage were confirmed, so they stay.)
#[tokio::test]
async fn a_record_damaged_on_disk_costs_only_its_own_message() {
    let mut server = Server::start();
    // 3000..3100 published once 0..3000 were confirmed: written by later flush rounds
    stream_in_small_segments(&server, &[3000, 3100]).await;
    server.kill();
    let streams = server.data_dir.join("streams");
    let dir = std::fs::read_dir(&streams)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut segs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap().clone();
    let mut bytes = std::fs::read(&last).unwrap();
    let at = bytes
        .windows(5)
        .position(|w| w == b"m2900")
        .expect("record 2900 in the last segment");
    bytes[at + 1] ^= 0x40;
    std::fs::write(&last, &bytes).unwrap();
    std::fs::remove_file(last.with_extension("idx")).unwrap();
    server.restart();
    assert!(
        server
            .startup_log
            .iter()
            .any(|l| l.contains("damaged records skipped")),
        "recovery reports the damage: {:?}",
        server.startup_log
    );
    let conn = connect(&server).await;
    let (_ch, mut c) = consume(&conn, "s", "", 200, table(&[("x-stream-offset", s("first"))])).await;
    let got = take(&mut c, 3099, true).await;
    let want: Vec<(u64, String)> = (0..3100u64)
        .filter(|&i| i != 2900)
        .map(|i| (i, format!("m{i}")))
        .collect();
    assert_eq!(got, want);
    nothing_more(&mut c).await;
    publish_confirmed(&conn, "s", ["next".to_string()]).await;
    assert_eq!(take(&mut c, 1, true).await[0], (3100, "next".into()));
}

#[tokio::test]
async fn deliveries_never_carry_bcc() {
    // RabbitMQ's sender-selected distribution: BCC routes the message but is removed before delivery
    // (rabbit_exchange: the header is stripped), from a stream too.
    use lapin::options::BasicPublishOptions;
    use lapin::types::{FieldArray, ShortString};
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "s", &[]).await;
    declare_stream(&ch, "s2", &[]).await;
    let headers = table(&[("BCC", AMQPValue::FieldArray(FieldArray::from(vec![s("s2")])))]);
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "".into(),
        "s".into(),
        BasicPublishOptions::default(),
        b"m",
        lapin::BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    for q in ["s", "s2"] {
        let (_c, mut c) = consume(&conn, q, "", 10, table(&[("x-stream-offset", s("first"))])).await;
        let d = tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::next(&mut c))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let h = d.properties.headers().as_ref().unwrap();
        assert!(h.inner().get(&ShortString::from("BCC")).is_none(), "{q}: {h:?}");
        assert_eq!(offset_of(&d), 0);
    }
}
