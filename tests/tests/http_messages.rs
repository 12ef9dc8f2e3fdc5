//! `POST /api/exchanges/{vhost}/{name}/publish`, `POST /api/queues/{vhost}/{name}/get` with each ackmode,
//! and `DELETE /api/queues/{vhost}/{name}/contents` (purge).

use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mailroom_tests::http::{seg, Api};
use mailroom_tests::Server;
use serde_json::{json, Value};

async fn get(api: &Api, q: &str, count: u64, ackmode: &str) -> Value {
    let r = api
        .post(
            &format!("/api/queues/%2F/{}/get", seg(q)),
            json!({"count": count, "ackmode": ackmode, "encoding": "auto", "truncate": 50000}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

#[tokio::test]
async fn publish_get_with_each_ackmode_and_purge() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let q = "msgs %q";
    api.put(&format!("/api/queues/%2F/{}", seg(q)), json!({"durable": true}))
        .await;
    let props = json!({"delivery_mode": 2, "content_type": "text/plain", "message_id": "m1",
                       "headers": {"h": "v", "n": 3}});
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": q, "payload": "hello", "payload_encoding": "string", "properties": props}),
        )
        .await;
    assert_eq!(r.body, json!({"routed": true}));
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": q, "payload": "AAEC/w==", "payload_encoding": "base64", "properties": {}}),
        )
        .await;
    assert_eq!(r.body, json!({"routed": true}));
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "nowhere", "payload": "x", "properties": {}}),
        )
        .await;
    assert_eq!(r.body, json!({"routed": false}));

    // ack_requeue_true: both come back, stay in the queue, and are then redelivered.
    let got = get(&api, q, 5, "ack_requeue_true").await;
    assert_eq!(got.as_array().unwrap().len(), 2);
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["redelivered"], false);
    assert_eq!(got[0]["message_count"], 1);
    assert_eq!(got[0]["properties"]["message_id"], "m1");
    assert_eq!(got[0]["properties"]["delivery_mode"], 2);
    assert_eq!(got[0]["properties"]["headers"], json!({"h": "v", "n": 3}));
    assert_eq!(got[1]["payload"], "AAEC/w==");
    assert_eq!(got[1]["payload_encoding"], "base64");
    assert_eq!(
        api.ok(&format!("/api/queues/%2F/{}", seg(q))).await["messages"],
        2
    );
    // reject_requeue_true: still there, in order, redelivered.
    let got = get(&api, q, 1, "reject_requeue_true").await;
    assert_eq!(
        (got[0]["payload"].as_str(), got[0]["redelivered"].as_bool()),
        (Some("hello"), Some(true))
    );
    assert_eq!(
        api.ok(&format!("/api/queues/%2F/{}", seg(q))).await["messages"],
        2
    );
    // ack_requeue_false: gone.
    let got = get(&api, q, 1, "ack_requeue_false").await;
    assert_eq!(got[0]["payload"], "hello");
    assert_eq!(
        api.ok(&format!("/api/queues/%2F/{}", seg(q))).await["messages"],
        1
    );
    // Bad ackmode or body: 400, nothing taken.
    let r = api
        .post(
            &format!("/api/queues/%2F/{}/get", seg(q)),
            json!({"count": 1, "ackmode": "eat"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .post(
            &format!("/api/queues/%2F/{}/get", seg(q)),
            json!({"ackmode": "ack_requeue_true"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        api.ok(&format!("/api/queues/%2F/{}", seg(q))).await["messages"],
        1
    );
    // Purge.
    assert_eq!(
        api.delete(&format!("/api/queues/%2F/{}/contents", seg(q)))
            .await
            .status,
        204
    );
    assert_eq!(
        api.ok(&format!("/api/queues/%2F/{}", seg(q))).await["messages"],
        0
    );
    assert_eq!(get(&api, q, 1, "ack_requeue_false").await, json!([]));
    // Publishing to a missing exchange: 404; a bad body: 400.
    let r = api
        .post(
            "/api/exchanges/%2F/nope/publish",
            json!({"routing_key": "", "payload": "", "properties": {}}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .post("/api/exchanges/%2F/amq.direct/publish", json!({"payload": "x"}))
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .post(
            "/api/exchanges/%2F/amq.direct/publish",
            json!({"routing_key": "", "payload": "!", "payload_encoding": "base64", "properties": {}}),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_message_published_over_http_reaches_an_amqp_consumer() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "live".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            "live".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    api.post(
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "live", "payload": "over http", "properties": {"correlation_id": "c1"}}),
    )
    .await;
    let d = consumer.next().await.unwrap().unwrap();
    assert_eq!(d.data, b"over http");
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("c1")
    );
    d.ack(BasicAckOptions::default()).await.unwrap();
}

#[tokio::test]
async fn reject_requeue_false_dead_letters() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/dlq", json!({})).await;
    api.put(
        "/api/queues/%2F/work",
        json!({"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}}),
    )
    .await;
    api.post(
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "work", "payload": "bad", "properties": {}}),
    )
    .await;
    let got = get(&api, "work", 1, "reject_requeue_false").await;
    assert_eq!(got[0]["payload"], "bad");
    assert_eq!(api.ok("/api/queues/%2F/work").await["messages"], 0);
    let dead = get(&api, "dlq", 1, "ack_requeue_true").await;
    assert_eq!(dead[0]["payload"], "bad");
    assert_eq!(
        dead[0]["properties"]["headers"]["x-death"][0]["reason"],
        "rejected"
    );
}

/// `POST /api/queues/{vhost}/{name}/redrive` (a Mailroom addition; the broker's redrive operation): back to
/// where each message died, the first N, or to a named queue; `"wait": true` answers once the move task
/// is done, with its counts (tests/tests/http_tasks.rs covers the task form).
#[tokio::test]
async fn redrive_moves_dead_letters_back() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/work.dlq", json!({})).await;
    api.put("/api/queues/%2F/other", json!({})).await;
    api.put(
        "/api/queues/%2F/work",
        json!({"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "work.dlq"}}),
    )
    .await;
    for i in 0..3 {
        api.post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "work", "payload": format!("m{i}"), "properties": {}}),
        )
        .await;
    }
    assert_eq!(
        get(&api, "work", 3, "reject_requeue_false")
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(api.ok("/api/queues/%2F/work.dlq").await["messages"], 3);
    let r = api
        .post(
            "/api/queues/%2F/work.dlq/redrive",
            json!({"count": 2, "wait": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (&r.body["state"], &r.body["moved"], &r.body["kept"]),
        (&json!("done"), &json!(2), &json!(0)),
        "{r:?}"
    );
    let back = get(&api, "work", 5, "ack_requeue_true").await;
    let payloads: Vec<&str> = back
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, vec!["m0", "m1"]);
    let r = api
        .post(
            "/api/queues/%2F/work.dlq/redrive",
            json!({"to": "other", "wait": true}),
        )
        .await;
    assert_eq!(
        (&r.body["moved"], &r.body["kept"]),
        (&json!(1), &json!(0)),
        "{r:?}"
    );
    assert_eq!(
        get(&api, "other", 1, "ack_requeue_true").await[0]["payload"],
        "m2"
    );
    assert_eq!(api.ok("/api/queues/%2F/work.dlq").await["messages"], 0);
    assert_eq!(
        api.post("/api/queues/%2F/work.dlq/redrive", json!({"to": "nope"}))
            .await
            .status,
        404
    );
    assert_eq!(
        api.post("/api/queues/%2F/work.dlq/redrive", json!({"count": -1}))
            .await
            .status,
        400
    );
}

/// Bodies up to RabbitMQ's 20 MiB `max_body_size` are accepted (a 3 MiB publish), larger ones refused (413).
#[tokio::test]
async fn large_bodies() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/big", json!({})).await;
    let payload = "x".repeat(3 << 20);
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "big", "payload": payload, "properties": {}}),
        )
        .await;
    assert_eq!(r.body, json!({"routed": true}));
    let got = get(&api, "big", 1, "ack_requeue_false").await;
    assert_eq!(got[0]["payload_bytes"], 3 << 20);
    let huge = "y".repeat(21 << 20);
    let r = api
        .raw("POST", "/api/exchanges/%2F/amq.default/publish", &huge)
        .await;
    assert_eq!(r.status, 413);
}
