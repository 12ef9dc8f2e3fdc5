//! Policies (`/api/policies/{vhost}/{name}`), RabbitMQ's model, applied to live queues: a dead-letter
//! exchange and a delivery limit added under traffic send a poison loop to the DLQ; a max-length policy
//! trims a queue at once; queue arguments win where RabbitMQ's classic queue says so (the smaller
//! max-length; the queue's own DLX); policies survive a restart and show in `/api/queues`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::http::Api;
use mailroom_tests::Server;
use serde_json::{json, Value};

async fn wait_for(api: &Api, path: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = api.ok(path).await;
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dead_letter_policy_on_a_live_queue_under_traffic() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put(
        "/api/exchanges/%2F/dlx",
        json!({"type": "fanout", "durable": true}),
    )
    .await;
    api.put("/api/queues/%2F/work.dlq", json!({"durable": true}))
        .await;
    api.post("/api/bindings/%2F/e/dlx/q/work.dlq", json!({"routing_key": ""}))
        .await;
    api.put("/api/queues/%2F/work", json!({"durable": true})).await;

    // A consumer that rejects everything with requeue: a poison loop while no policy applies.
    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "poison".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let nacker = tokio::spawn(async move {
        let mut seen = 0u64;
        while let Some(Ok(d)) = consumer.next().await {
            seen += 1;
            let _ = d
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
        }
        seen
    });
    let pubch = conn.create_channel().await.unwrap();
    pubch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..20 {
        pubch
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The loop runs: the messages keep coming back, nothing reaches the DLQ.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.ok("/api/queues/%2F/work.dlq").await["messages"], 0);

    // The operator adds a DLX and a delivery limit by policy, traffic still flowing.
    let r = api
        .put(
            "/api/policies/%2F/poison-guard",
            json!({"pattern": "^work$", "apply-to": "queues", "priority": 1,
                   "definition": {"dead-letter-exchange": "dlx", "delivery-limit": 2}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    for i in 20..30 {
        pubch
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Every message, old and new, ends in the DLQ; none is lost.
    wait_for(&api, "/api/queues/%2F/work.dlq", "30 dead letters", |q| {
        q["messages"] == 30
    })
    .await;
    wait_for(&api, "/api/queues/%2F/work", "an empty work queue", |q| {
        q["messages"] == 0
    })
    .await;
    let q = api.ok("/api/queues/%2F/work").await;
    assert_eq!(q["policy"], "poison-guard");
    assert_eq!(
        q["effective_policy_definition"],
        json!({"dead-letter-exchange": "dlx", "delivery-limit": 2})
    );
    let dead = api
        .post(
            "/api/queues/%2F/work.dlq/get",
            json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
    assert_eq!(
        dead.body[0]["properties"]["headers"]["x-death"][0]["reason"],
        "delivery_limit"
    );
    conn.close(200, "bye".into()).await.unwrap();
    assert!(nacker.await.unwrap() >= 30);

    // The policy as RabbitMQ shows it; deleting it gives the queue its declared arguments back.
    let p = api.ok("/api/policies/%2F/poison-guard").await;
    assert_eq!(p["apply-to"], "queues");
    assert_eq!(p["priority"], 1);
    assert_eq!(api.ok("/api/policies").await.as_array().unwrap().len(), 1);
    assert_eq!(api.delete("/api/policies/%2F/poison-guard").await.status, 204);
    let q = api.ok("/api/queues/%2F/work").await;
    assert_eq!(q["policy"], Value::Null);
    assert_eq!(q["effective_policy_definition"], json!({}));
    assert_eq!(api.delete("/api/policies/%2F/poison-guard").await.status, 404);
}

#[tokio::test]
async fn max_length_policy_trims_at_once_arguments_win_and_it_survives_restart() {
    let mut server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/capped", json!({"durable": true})).await;
    api.put(
        "/api/queues/%2F/tight",
        json!({"durable": true, "arguments": {"x-max-length": 2}}),
    )
    .await;
    for q in ["capped", "tight"] {
        for i in 0..10 {
            api.post(
                "/api/exchanges/%2F/amq.default/publish",
                json!({"routing_key": q, "payload": format!("{i}"), "properties": {"delivery_mode": 2}}),
            )
            .await;
        }
    }
    assert_eq!(api.ok("/api/queues/%2F/capped").await["messages"], 10);
    assert_eq!(api.ok("/api/queues/%2F/tight").await["messages"], 2);
    let r = api
        .put(
            "/api/policies/%2F/cap",
            json!({"pattern": "^(capped|tight)$", "definition": {"max-length": 3}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    // drop-head at once: the oldest go.
    assert_eq!(api.ok("/api/queues/%2F/capped").await["messages"], 3);
    let head = api
        .post(
            "/api/queues/%2F/capped/get",
            json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
    assert_eq!(head.body[0]["payload"], "7");
    // The queue's own x-max-length 2 is smaller than the policy's 3: it stays at 2.
    for i in 0..5 {
        api.post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "tight", "payload": format!("t{i}"), "properties": {}}),
        )
        .await;
    }
    assert_eq!(api.ok("/api/queues/%2F/tight").await["messages"], 2);

    // Bad policies: 400, nothing changes.
    let r = api
        .put(
            "/api/policies/%2F/bad",
            json!({"pattern": "(", "definition": {"max-length": 1}}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .put(
            "/api/policies/%2F/bad",
            json!({"pattern": ".*", "definition": {"max-length": "x"}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(api.get("/api/policies/%2F/bad").await.status, 404);
    // Only policymakers and administrators write policies.
    api.put("/api/users/m", json!({"password": "pw", "tags": "management"}))
        .await;
    api.put(
        "/api/permissions/%2F/m",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    let r = api
        .as_user("m", "pw")
        .put(
            "/api/policies/%2F/x",
            json!({"pattern": ".*", "definition": {"max-length": 1}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("Not policymaker user"))
    );

    // After a restart the policy is back and still applies.
    server.stop();
    let server = Server::start_in(&server.data_dir.clone(), &[]);
    let api = Api::new(&server.http_url(), "guest", "guest");
    assert_eq!(
        api.ok("/api/policies/%2F/cap").await["definition"],
        json!({"max-length": 3})
    );
    for i in 0..5 {
        api.post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "capped", "payload": format!("r{i}"), "properties": {}}),
        )
        .await;
    }
    assert_eq!(api.ok("/api/queues/%2F/capped").await["messages"], 3);
    // And definitions carry it.
    let defs = api.ok("/api/definitions").await;
    assert_eq!(defs["policies"][0]["name"], "cap");
}

#[tokio::test]
async fn alternate_exchange_policy_catches_unroutable_messages() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/exchanges/%2F/orders", json!({"type": "direct"}))
        .await;
    api.put("/api/exchanges/%2F/ae", json!({"type": "fanout"})).await;
    api.put("/api/queues/%2F/unrouted", json!({})).await;
    api.post("/api/bindings/%2F/e/ae/q/unrouted", json!({})).await;
    let publish = |rk: &'static str| {
        let api = &api;
        async move {
            api.post(
                "/api/exchanges/%2F/orders/publish",
                json!({"routing_key": rk, "payload": rk, "properties": {}}),
            )
            .await
            .body
        }
    };
    assert_eq!(publish("lost").await, json!({"routed": false}));
    let r = api
        .put("/api/policies/%2F/ae", json!({"pattern": "^orders$", "apply-to": "exchanges", "definition": {"alternate-exchange": "ae"}}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(publish("caught").await, json!({"routed": true}));
    assert_eq!(api.ok("/api/queues/%2F/unrouted").await["messages"], 1);
    // The exchange as declared is unchanged: redeclaring it without arguments is still equivalent.
    assert_eq!(
        api.put("/api/exchanges/%2F/orders", json!({"type": "direct"}))
            .await
            .status,
        204
    );
    assert_eq!(api.delete("/api/policies/%2F/ae").await.status, 204);
    assert_eq!(publish("lost again").await, json!({"routed": false}));
}
