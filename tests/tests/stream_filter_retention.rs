//! Issue 15: stream filtering (`x-stream-filter-value` on publish; `x-stream-filter`, one value or a list,
//! and `x-stream-match-unfiltered` on consume, as rabbit_stream_queue:filter_spec/1) and retention
//! (`x-max-length-bytes`, `x-max-age`, `x-stream-max-segment-size-bytes`): whole oldest segments are
//! dropped and the disk shrinks.

mod stream_common;

use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldArray};
use mailroom_tests::Server;
use stream_common::*;

#[tokio::test]
async fn consumers_receive_only_their_filter_values() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "s", &[]).await;
    let items = (0..30u64).map(|i| {
        let f = match i % 3 {
            0 => Some("eu"),
            1 => Some("us"),
            _ => None,
        };
        (format!("m{i}"), f)
    });
    publish_with(&conn, "s", items).await;

    let first = ("x-stream-offset", s("first"));
    let (_c1, mut eu) = consume(
        &conn,
        "s",
        "",
        5,
        table(&[first.clone(), ("x-stream-filter", s("eu"))]),
    )
    .await;
    let got = take(&mut eu, 10, true).await;
    assert!(got.iter().all(|g| g.0 % 3 == 0), "{got:?}");
    nothing_more(&mut eu).await;

    let list = AMQPValue::FieldArray(FieldArray::from(vec![s("eu"), s("us")]));
    let (_c2, mut both) = consume(
        &conn,
        "s",
        "",
        5,
        table(&[first.clone(), ("x-stream-filter", list)]),
    )
    .await;
    let got = take(&mut both, 20, true).await;
    assert!(got.iter().all(|g| g.0 % 3 != 2), "{got:?}");
    nothing_more(&mut both).await;

    let (_c3, mut unf) = consume(
        &conn,
        "s",
        "",
        5,
        table(&[
            first.clone(),
            ("x-stream-filter", s("us")),
            ("x-stream-match-unfiltered", AMQPValue::Boolean(true)),
        ]),
    )
    .await;
    let got = take(&mut unf, 20, true).await;
    assert!(got.iter().all(|g| g.0 % 3 != 0), "{got:?}");
    nothing_more(&mut unf).await;

    // a filtered consumer is woken by matching publishes only, and sees them in order
    publish_with(
        &conn,
        "s",
        [("x".to_string(), Some("us")), ("y".to_string(), Some("eu"))],
    )
    .await;
    assert_eq!(take(&mut eu, 1, true).await[0], (31, "y".into()));
}

#[tokio::test]
async fn max_length_bytes_drops_whole_oldest_segments() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(
        &ch,
        "s",
        &[
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(64 * 1024)),
            ("x-max-length-bytes", AMQPValue::LongInt(256 * 1024)),
        ],
    )
    .await;
    let body = "x".repeat(1000);
    publish_confirmed(&conn, "s", (0..3000).map(|i| format!("{i:05}{body}"))).await;
    // a little over the limit at most: the limit plus the segment being written
    let on_disk = dir_bytes(&server.data_dir.join("streams"));
    assert!(on_disk < 400 * 1024, "{on_disk} bytes on disk");
    // the oldest are gone, the rest is whole and in order up to the last
    let (_ch, mut c) = consume(&conn, "s", "", 100, table(&[("x-stream-offset", s("first"))])).await;
    let first = take(&mut c, 1, true).await[0].0;
    assert!(first > 2000, "first offset held: {first}");
    let rest = take(&mut c, (2999 - first) as usize, true).await;
    assert_eq!(rest.last().unwrap().0, 2999);
    assert!(rest.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    // declare-ok counts what is held
    let q = ch
        .queue_declare(
            "s".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count() as u64, 3000 - first);
}

#[tokio::test]
async fn max_age_drops_old_segments_and_the_disk_shrinks() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(
        &ch,
        "s",
        &[
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(32 * 1024)),
            ("x-max-age", s("2s")),
        ],
    )
    .await;
    let body = "y".repeat(1000);
    publish_confirmed(&conn, "s", (0..1000).map(|i| format!("{i:05}{body}"))).await;
    let dir = server.data_dir.join("streams");
    let full = dir_bytes(&dir);
    assert!(full > 900 * 1024, "{full}");
    // the timer drops every segment older than 2 s but the one being written
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = dir_bytes(&dir);
        if now < 64 * 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "still {now} bytes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // offsets go on
    publish_confirmed(&conn, "s", ["after".to_string()]).await;
    let (_ch, mut c) = consume(&conn, "s", "", 100, table(&[("x-stream-offset", s("last"))])).await;
    let got = take(&mut c, 1, true).await;
    assert_eq!(got[0], (1000, "after".into()));
}
