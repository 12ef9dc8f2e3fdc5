//! Message moves as tasks (issue 14; SQS's StartMessageMoveTask semantics): `POST
//! /api/queues/{vhost}/{name}/redrive` starts a task, `GET /api/tasks[/{id}]` shows its progress, `DELETE
//! /api/tasks/{id}` cancels it; a task survives a kill -9 half-way with no message lost or doubled.
//! Nothing here asserts a duration: the rate limit is checked by counts and states only.

use std::collections::HashMap;
use std::time::Duration;

use mailroom_tests::http::Api;
use mailroom_tests::Server;
use serde_json::{json, Value};

/// `work` dead-letters into `work.dlq`; `n` persistent messages `m0`..: published to `work`, then rejected
/// (RabbitMQ's management get with `reject_requeue_false`), so each carries an `x-death` naming `work`.
async fn dead_letters(api: &Api, n: usize) {
    dead_letters_mode(api, n, 2).await
}

/// `dead_letters` with delivery mode 1 (transient: no flush round per publish) or 2.
async fn dead_letters_mode(api: &Api, n: usize, delivery_mode: u8) {
    let r = api
        .put("/api/queues/%2F/work.dlq", json!({"durable": true}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = api
        .put(
            "/api/queues/%2F/work",
            json!({"durable": true,
                   "arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "work.dlq"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    for i in 0..n {
        let r = api
            .post(
                "/api/exchanges/%2F/amq.default/publish",
                json!({"routing_key": "work", "payload": format!("m{i}"),
                       "properties": {"delivery_mode": delivery_mode, "message_id": format!("id-{i}")}}),
            )
            .await;
        assert_eq!(r.body, json!({"routed": true}));
    }
    let r = api
        .post(
            "/api/queues/%2F/work/get",
            json!({"count": n, "ackmode": "reject_requeue_false", "encoding": "auto"}),
        )
        .await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(n));
    wait_count(api, "work.dlq", n as u64).await;
}

async fn messages(api: &Api, q: &str) -> u64 {
    api.ok(&format!("/api/queues/%2F/{q}")).await["messages"]
        .as_u64()
        .expect("messages")
}

async fn wait_count(api: &Api, q: &str, n: u64) {
    for _ in 0..600 {
        if messages(api, q).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{q} never held {n} messages (has {})", messages(api, q).await);
}

/// Polls the task until `pred` holds (60 s at most; never a fixed sleep standing for a duration).
async fn wait_task(api: &Api, id: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..1200 {
        let r = api.get(&format!("/api/tasks/{id}")).await;
        if r.status == 200 {
            if pred(&r.body) {
                return r.body;
            }
            last = r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} never reached {what}: {last}");
}

/// Takes every message off `q` (ack_requeue_false) and counts each payload.
async fn drain(api: &Api, q: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    loop {
        let r = api
            .post(
                &format!("/api/queues/%2F/{q}/get"),
                json!({"count": 100, "ackmode": "ack_requeue_false", "encoding": "auto"}),
            )
            .await;
        let got = r.body.as_array().cloned().unwrap_or_default();
        if got.is_empty() {
            return seen;
        }
        for m in got {
            *seen
                .entry(m["payload"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
    }
}

#[tokio::test]
async fn a_task_moves_every_dead_letter_back_and_reports_progress() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    dead_letters(&api, 30).await;
    let r = api.post("/api/queues/%2F/work.dlq/redrive", json!({})).await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_u64().expect("an id");
    assert_eq!(r.body["source"], "work.dlq");
    assert_eq!(r.body["destination"], Value::Null);
    assert_eq!(r.body["total"], 30);
    assert_eq!(r.body["vhost"], "/");
    let t = wait_task(&api, id, "done", |t| t["state"] == "done").await;
    assert_eq!((&t["moved"], &t["total"]), (&json!(30), &json!(30)), "{t}");
    assert!(t["finished"].as_u64().is_some() && t["error"].is_null(), "{t}");
    let list = api.ok("/api/tasks").await;
    assert!(list.as_array().unwrap().iter().any(|x| x["id"] == id));
    assert_eq!(messages(&api, "work.dlq").await, 0);
    // Back in `work`, in their order.
    let r = api
        .post(
            "/api/queues/%2F/work/get",
            json!({"count": 30, "ackmode": "ack_requeue_false", "encoding": "auto"}),
        )
        .await;
    let payloads: Vec<&str> = r
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, want);
    // A finished task cannot be cancelled; an unknown one is 404.
    assert_eq!(api.delete(&format!("/api/tasks/{id}")).await.status, 400);
    assert_eq!(api.get("/api/tasks/999999").await.status, 404);
    assert_eq!(api.get("/api/tasks/abc").await.status, 404);
}

#[tokio::test]
async fn message_ids_count_and_to_select_what_moves() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    dead_letters(&api, 10).await;
    api.put("/api/queues/%2F/other", json!({"durable": true})).await;
    let r = api
        .post(
            "/api/queues/%2F/work.dlq/redrive",
            json!({"message_ids": ["id-3", "id-7", "nope"], "to": "other", "wait": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (&r.body["state"], &r.body["moved"]),
        (&json!("done"), &json!(2)),
        "{r:?}"
    );
    let got = drain(&api, "other").await;
    assert_eq!(got, HashMap::from([("m3".to_owned(), 1), ("m7".to_owned(), 1)]));
    assert_eq!(messages(&api, "work.dlq").await, 8);
    let r = api
        .post(
            "/api/queues/%2F/work.dlq/redrive",
            json!({"count": 3, "wait": true}),
        )
        .await;
    assert_eq!(
        (&r.body["moved"], &r.body["total"]),
        (&json!(3), &json!(3)),
        "{r:?}"
    );
    assert_eq!(messages(&api, "work.dlq").await, 5);
    let got = drain(&api, "work").await;
    assert_eq!(got.len(), 3);
    for (body, n) in [
        ("rate", json!({"rate": 0})),
        ("ids", json!({"message_ids": [1]})),
        ("count", json!({"count": "x"})),
    ] {
        let r = api.post("/api/queues/%2F/work.dlq/redrive", n).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    assert_eq!(
        api.post("/api/queues/%2F/work.dlq/redrive", json!({"to": "nope"}))
            .await
            .status,
        404
    );
    assert_eq!(
        api.post("/api/queues/%2F/nope/redrive", json!({})).await.status,
        404
    );
    let anon = api.as_user("guest", "wrong");
    assert_eq!(anon.get("/api/tasks").await.status, 401);
    assert_eq!(
        messages(&api, "work.dlq").await,
        5,
        "refused requests move nothing"
    );
}

#[tokio::test]
async fn a_rate_limited_task_runs_in_the_background_and_cancel_leaves_the_rest() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    // Transient: this test has no restart, and 400 publishes need no flush round each.
    dead_letters_mode(&api, 400, 1).await;
    let r = api
        .post("/api/queues/%2F/work.dlq/redrive", json!({"rate": 50}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["rate_limit"], 50);
    let id = r.body["id"].as_u64().unwrap();
    // 400 messages at 50/s cannot be done right after the start (the pacing needs 8 s).
    let t = api.ok(&format!("/api/tasks/{id}")).await;
    assert_eq!(t["state"], "running", "{t}");
    assert!(t["moved"].as_u64().unwrap() < 400, "{t}");
    wait_task(&api, id, "some progress", |t| {
        t["moved"].as_u64().unwrap_or(0) >= 10
    })
    .await;
    let r = api.delete(&format!("/api/tasks/{id}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["state"], "cancelled", "{r:?}");
    let moved = r.body["moved"].as_u64().unwrap();
    assert!((10..400).contains(&moved), "{r:?}");
    // What moved stays moved; the rest stays in the DLQ; nothing moves after the cancel.
    assert_eq!(messages(&api, "work").await, moved);
    assert_eq!(messages(&api, "work.dlq").await, 400 - moved);
    assert_eq!(api.ok(&format!("/api/tasks/{id}")).await["moved"], moved);
}

/// The task survives a kill -9 half-way: it resumes at the restart and finishes; `work` holds each message
/// exactly once and the DLQ is empty.
#[tokio::test]
async fn a_task_killed_half_way_resumes_with_nothing_lost_or_doubled() {
    let mut server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let n = 100;
    dead_letters(&api, n).await;
    let r = api
        .post("/api/queues/%2F/work.dlq/redrive", json!({"rate": 20}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_u64().unwrap();
    let t = wait_task(&api, id, "a quarter", |t| t["moved"].as_u64().unwrap_or(0) >= 25).await;
    assert_eq!(t["state"], "running", "{t}");
    server.kill();
    server.restart();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let t = wait_task(&api, id, "done after the restart", |t| t["state"] == "done").await;
    assert_eq!(t["moved"], n, "{t}");
    assert_eq!(messages(&api, "work.dlq").await, 0);
    let got = drain(&api, "work").await;
    let want: HashMap<String, usize> = (0..n).map(|i| (format!("m{i}"), 1)).collect();
    assert_eq!(got, want, "each message exactly once");
}

/// The crash in the one window where a message is in two places: its copy is durable in the target and
/// the original is still in the DLQ (the debug build's hook aborts the broker right there, in the third
/// batch). The restart finds the batch's copies by their `x-mailroom-redrive` header and does not move
/// those messages again: `work` holds each message exactly once.
#[tokio::test]
async fn a_crash_between_the_copies_and_the_removals_moves_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::try_start_with_env(&dir, &[], &[("MAILROOM_TEST_ABORT_AFTER_MOVE_COPIES", "3")])
        .expect("start");
    let api = Api::new(&server.http_url(), "guest", "guest");
    let n = 50;
    dead_letters(&api, n).await;
    // rate 50: batches of 5, so the third batch ends half-way.
    let r = api
        .post("/api/queues/%2F/work.dlq/redrive", json!({"rate": 50}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.body["id"].as_u64().unwrap();
    assert!(
        server
            .wait_for_log("test hook: aborting", Duration::from_secs(120))
            .is_some(),
        "the hook fired"
    );
    server.restart();
    assert!(
        server
            .startup_log
            .iter()
            .any(|l| l.contains("resuming a message move") && l.contains("in_doubt_found=5")),
        "the restart found the crashed batch's 5 copies: {:?}",
        server.startup_log
    );
    let api = Api::new(&server.http_url(), "guest", "guest");
    let t = wait_task(&api, id, "done after the restart", |t| t["state"] == "done").await;
    assert_eq!(t["moved"], n, "{t}");
    assert_eq!(messages(&api, "work.dlq").await, 0);
    let got = drain(&api, "work").await;
    let want: HashMap<String, usize> = (0..n).map(|i| (format!("m{i}"), 1)).collect();
    assert_eq!(got, want, "each message exactly once");
}
