//! Issue 15: server-side offset tracking, as LavinMQ does it. A consumer with a tag of its own and no
//! `x-stream-offset` (or with `x-stream-automatic-offset-tracking: true`) has its last acked offset stored
//! by the broker; consuming again with the same tag resumes right after it: after a reconnect, a clean
//! restart and a kill -9.

mod stream_common;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use mailroom_tests::Server;
use stream_common::*;

/// A confirmed publish to another stream: its confirm comes after a flush round that covered every write
/// made before it (the acks' stored offsets included).
async fn barrier(conn: &lapin::Connection) {
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "barrier", &[]).await;
    publish_confirmed(conn, "barrier", ["x".to_string()]).await;
}

#[tokio::test]
async fn a_tracked_consumer_resumes_after_reconnect_restart_and_kill() {
    let mut server = Server::start();
    {
        let conn = connect(&server).await;
        let ch = conn.create_channel().await.unwrap();
        declare_stream(&ch, "orders", &[]).await;
        publish_confirmed(&conn, "orders", bodies(0..5, "early")).await;
        // tracked (own tag, no x-stream-offset): starts at next
        let (_ch, mut c) = consume(&conn, "orders", "billing", 10, FieldTable::default()).await;
        nothing_more(&mut c).await;
        publish_confirmed(&conn, "orders", bodies(5..20, "m")).await;
        let got = take(&mut c, 8, true).await; // acks 5..=12
        assert_eq!(got[0].0, 5);
        // two more delivered but not acked
        take(&mut c, 2, false).await;
        conn.close(200, "bye".into()).await.ok();
    }
    // reconnect: resumes after the last acked offset (12); the unacked tail comes again
    {
        let conn = connect(&server).await;
        let (_ch, mut c) = consume(&conn, "orders", "billing", 10, FieldTable::default()).await;
        let got = take(&mut c, 7, true).await;
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (13..20).collect::<Vec<_>>()
        );
        nothing_more(&mut c).await;
        // an untracked consumer (generated tag) is not affected
        let (_ch2, mut c2) =
            consume(&conn, "orders", "", 10, table(&[("x-stream-offset", s("first"))])).await;
        assert_eq!(take(&mut c2, 1, true).await[0].0, 0);
        conn.close(200, "bye".into()).await.ok();
    }
    // clean restart
    server.stop();
    server.restart();
    {
        let conn = connect(&server).await;
        publish_confirmed(&conn, "orders", bodies(20..30, "n")).await;
        let (_ch, mut c) = consume(&conn, "orders", "billing", 10, FieldTable::default()).await;
        let got = take(&mut c, 6, true).await; // acks 20..=25
        assert_eq!(got[0], (20, "n20".into()));
        barrier(&conn).await;
    }
    // kill -9: the acked offset was durable (the barrier's confirm came after it)
    server.restart();
    {
        let conn = connect(&server).await;
        let (_ch, mut c) = consume(&conn, "orders", "billing", 10, FieldTable::default()).await;
        let got = take(&mut c, 4, true).await;
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![26, 27, 28, 29]);
        nothing_more(&mut c).await;
    }
}

#[tokio::test]
async fn the_flag_tracks_with_an_explicit_offset_and_multiple_acks_count() {
    let server = Server::start();
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "s", &[]).await;
    publish_confirmed(&conn, "s", bodies(0..10, "m")).await;
    let args = table(&[
        ("x-stream-offset", s("first")),
        ("x-stream-automatic-offset-tracking", AMQPValue::Boolean(true)),
    ]);
    {
        let (ch, mut c) = consume(&conn, "s", "audit", 10, args.clone()).await;
        let mut last = None;
        for _ in 0..4 {
            let d = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                futures::StreamExt::next(&mut c),
            )
            .await
            .unwrap()
            .unwrap()
            .unwrap();
            last = Some(d.delivery_tag);
        }
        // one multiple ack for offsets 0..=3
        ch.basic_ack(last.unwrap(), BasicAckOptions { multiple: true })
            .await
            .unwrap();
        ch.close(200, "bye".into()).await.unwrap();
    }
    // the stored offset wins over x-stream-offset: first
    let (_ch, mut c) = consume(&conn, "s", "audit", 10, args).await;
    assert_eq!(take(&mut c, 1, true).await[0], (4, "m4".into()));
    // x-stream-offset without the flag: not tracked, starts where asked
    let (_ch2, mut c2) = consume(
        &conn,
        "s",
        "audit-2",
        10,
        table(&[("x-stream-offset", s("first"))]),
    )
    .await;
    assert_eq!(take(&mut c2, 1, true).await[0].0, 0);
}
