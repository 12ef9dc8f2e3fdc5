//! kill -9 while publishers with confirms are running, then restart and drain: every confirmed message is
//! there exactly once, nothing is there that was never sent, and the store opens every time.
//!
//! `MAILROOM_CRASH_CYCLES` sets the number of cycles (default 10; `make crash-test` runs 100).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::Server;
use rand::Rng;

const PUBLISHERS: usize = 3;

async fn publisher(
    url: String,
    cycle: u32,
    id: usize,
    sent: Arc<Mutex<HashSet<String>>>,
    confirmed: Arc<Mutex<HashSet<String>>>,
) {
    let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch.confirm_select(Default::default()).await.is_err() {
        return;
    }
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut n = 0u64;
    loop {
        // Publish a window of 50, then wait for its confirms.
        let mut window = Vec::new();
        for _ in 0..50 {
            let body = format!("c{cycle}-p{id}-{n}");
            n += 1;
            sent.lock().unwrap().insert(body.clone());
            match ch
                .basic_publish(
                    "".into(),
                    "crashq".into(),
                    Default::default(),
                    body.as_bytes(),
                    props.clone(),
                )
                .await
            {
                Ok(confirm) => window.push((body, confirm)),
                Err(_) => return,
            }
        }
        for (body, confirm) in window {
            match confirm.await {
                Ok(c) if c.is_ack() => {
                    confirmed.lock().unwrap().insert(body);
                }
                _ => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill_9_exactly_once() {
    let cycles: u32 = std::env::var("MAILROOM_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut server = Server::start();
    {
        let conn = Connection::connect(&server.url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(
            "crashq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        conn.close(200, "".into()).await.unwrap();
    }
    let mut total_confirmed = 0usize;
    for cycle in 0..cycles {
        let sent = Arc::new(Mutex::new(HashSet::new()));
        let confirmed = Arc::new(Mutex::new(HashSet::new()));
        let mut tasks = Vec::new();
        for id in 0..PUBLISHERS {
            tasks.push(tokio::spawn(publisher(
                server.url(),
                cycle,
                id,
                sent.clone(),
                confirmed.clone(),
            )));
        }
        let wait = rand::thread_rng().gen_range(150..700);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        server.restart();

        let conn = Connection::connect(&server.url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut seen = HashSet::new();
        while let Some(m) = ch
            .basic_get("crashq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let body = String::from_utf8(m.delivery.data.clone()).unwrap();
            assert!(seen.insert(body.clone()), "cycle {cycle}: {body} delivered twice");
        }
        let sent = std::mem::take(&mut *sent.lock().unwrap());
        let confirmed = std::mem::take(&mut *confirmed.lock().unwrap());
        for body in confirmed.iter() {
            assert!(
                seen.contains(body),
                "cycle {cycle}: confirmed message {body} was lost"
            );
        }
        for body in &seen {
            assert!(
                sent.contains(body),
                "cycle {cycle}: {body} was never sent in this cycle (old or foreign)"
            );
        }
        total_confirmed += confirmed.len();
        eprintln!(
            "cycle {cycle}: killed after {wait} ms, {} sent, {} confirmed, {} recovered",
            sent.len(),
            confirmed.len(),
            seen.len()
        );
        conn.close(200, "".into()).await.unwrap();
        // Let the no-ack deletes reach the disk before the next kill (acks carry no durability promise).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        total_confirmed > 0,
        "the test confirmed nothing; it proves nothing"
    );
}
