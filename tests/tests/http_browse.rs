//! `GET|POST /api/queues/{vhost}/{name}/browse` (issue 14, a Mailroom addition): paging through a queue's
//! messages without consuming them. RabbitMQ's own "get messages" (`rabbit_mgmt_wm_queue_get`) takes
//! messages off the queue or requeues them (marking them redelivered) and refuses streams; a browse leaves
//! them ready, unacked and in order.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::http::{seg, Api};
use mailroom_tests::Server;
use serde_json::{json, Value};

async fn browse(api: &Api, q: &str, query: &str) -> Value {
    let r = api
        .get(&format!("/api/queues/%2F/{}/browse?{query}", seg(q)))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

fn payloads(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["payload"].as_str().expect("payload").to_owned())
        .collect()
}

async fn publish_n(ch: &lapin::Channel, q: &str, n: usize, persistent: bool) {
    ch.confirm_select(ConfirmSelectOptions::default()).await.ok();
    let mut confirms = Vec::new();
    for i in 0..n {
        let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                props,
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        c.await.expect("confirm");
    }
}

/// Consumes every message and checks they come in publish order, `m0`..`m{n-1}`, none redelivered.
async fn consume_all_in_order(ch: &lapin::Channel, q: &str, n: usize) {
    ch.basic_qos(500, BasicQosOptions::default()).await.expect("qos");
    let mut c = ch
        .basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(60), c.next())
            .await
            .expect("a delivery in time")
            .expect("a delivery")
            .expect("ok");
        assert_eq!(std::str::from_utf8(&d.data).unwrap(), format!("m{i}"));
        assert!(!d.redelivered, "a browse must not mark messages redelivered");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    ch.basic_cancel(c.tag(), BasicCancelOptions::default())
        .await
        .expect("cancel");
}

#[tokio::test]
async fn browse_leaves_messages_in_place_and_pages_with_from_and_count() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let q = "browse me/%";
    assert_eq!(
        api.put(&format!("/api/queues/%2F/{}", seg(q)), json!({"durable": true}))
            .await
            .status,
        201
    );
    let props = json!({"delivery_mode": 2, "content_type": "text/plain", "message_id": "id-0",
                       "headers": {"h": "v"}});
    for i in 0..5 {
        let mut p = props.clone();
        p["message_id"] = json!(format!("id-{i}"));
        let r = api
            .post(
                "/api/exchanges/%2F/amq.default/publish",
                json!({"routing_key": q, "payload": format!("m{i}"), "properties": p}),
            )
            .await;
        assert_eq!(r.body, json!({"routed": true}));
    }
    // A binary payload: base64 preview, and a truncated one.
    let all = browse(&api, q, "from=0&count=10").await;
    assert_eq!(payloads(&all), ["m0", "m1", "m2", "m3", "m4"]);
    let m = &all["messages"][2];
    assert_eq!(m["position"], 2);
    assert_eq!(m["payload_encoding"], "string");
    assert_eq!(m["payload_bytes"], 2);
    assert_eq!(m["redelivered"], false);
    assert_eq!(m["delivery_count"], 0);
    assert_eq!(m["properties"]["message_id"], "id-2");
    assert_eq!(m["properties"]["delivery_mode"], 2);
    assert_eq!(m["headers"], json!({"h": "v"}));
    assert_eq!(m["x_death"], json!([]));
    assert_eq!(all["message_count"], 5);
    assert_eq!(all["next"], Value::Null, "a short page has no next");
    // Paging by position and by the returned cursor.
    let p1 = browse(&api, q, "from=1&count=2").await;
    assert_eq!(payloads(&p1), ["m1", "m2"]);
    assert_eq!(p1["next_position"], 3);
    let cursor = p1["next"].as_str().expect("a full page has a cursor").to_owned();
    let p2 = browse(&api, q, &format!("from={cursor}&count=2")).await;
    assert_eq!(payloads(&p2), ["m3", "m4"]);
    assert!(browse(&api, q, "from=5").await["messages"]
        .as_array()
        .unwrap()
        .is_empty());
    // POST with a JSON body: the same, with truncate and base64.
    let r = api
        .post(
            &format!("/api/queues/%2F/{}/browse", seg(q)),
            json!({"from": 4, "count": 1, "truncate": 1, "encoding": "base64"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["messages"][0]["payload"], "bQ=="); // "m"
    assert_eq!(r.body["messages"][0]["payload_encoding"], "base64");
    assert_eq!(r.body["messages"][0]["payload_bytes"], 2);
    // Nothing changed: the count, and a consumer gets every message in order, not redelivered.
    assert_eq!(
        api.ok(&format!("/api/queues/%2F/{}", seg(q))).await["messages"],
        5
    );
    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    consume_all_in_order(&ch, q, 5).await;
}

/// Long queues live partly on disk: persistent messages of a durable queue past `MEM_MAX` (4096) in the
/// segment log, transient ones in the queue's spill files. A browse reads any page of them without taking
/// them, and the queue delivers them afterwards in order.
#[tokio::test]
async fn browse_reads_pages_of_messages_paged_to_disk() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let n = 7000;
    for (q, durable, persistent) in [("long-persistent", true, true), ("long-transient", false, false)] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish_n(&ch, q, n, persistent).await;
        for from in [0usize, 4090, 5000, 6995] {
            let page = browse(&api, q, &format!("from={from}&count=10")).await;
            let want: Vec<String> = (from..(from + 10).min(n)).map(|i| format!("m{i}")).collect();
            assert_eq!(payloads(&page), want, "{q} from {from}");
            assert_eq!(page["message_count"], n);
        }
        // Walking the cursor across the memory/disk boundary.
        let mut page = browse(&api, q, "from=4000&count=100").await;
        let mut seen = payloads(&page);
        while let Some(c) = page["next"].as_str().map(str::to_owned) {
            if seen.len() >= 300 {
                break;
            }
            page = browse(&api, q, &format!("from={c}&count=100")).await;
            seen.extend(payloads(&page));
        }
        let want: Vec<String> = (4000..4300).map(|i| format!("m{i}")).collect();
        assert_eq!(seen, want, "{q}");
        assert_eq!(api.ok(&format!("/api/queues/%2F/{q}")).await["messages"], n);
        consume_all_in_order(&ch, q, n).await;
    }
}

/// A stream is browsed by offset; its consumers are not affected.
#[tokio::test]
async fn browse_a_stream_from_an_offset() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    ch.queue_declare(
        "events".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    publish_n(&ch, "events", 20, true).await;
    let page = browse(&api, "events", "from=5&count=3").await;
    assert_eq!(page["type"], "stream");
    assert_eq!(payloads(&page), ["m5", "m6", "m7"]);
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["position"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [5, 6, 7]);
    assert_eq!(page["messages"][0]["offset"], 5);
    assert_eq!(page["next"], "8");
    let tail = browse(&api, "events", "from=18&count=10").await;
    assert_eq!(payloads(&tail), ["m18", "m19"]);
    assert_eq!(tail["next"], Value::Null);
    let head = browse(&api, "events", "count=2").await;
    assert_eq!(payloads(&head), ["m0", "m1"]);
    // A consumer from the first offset still reads everything.
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut cargs = FieldTable::default();
    cargs.insert("x-stream-offset".into(), AMQPValue::LongString("first".into()));
    let mut c = ch
        .basic_consume("events".into(), "".into(), BasicConsumeOptions::default(), cargs)
        .await
        .unwrap();
    for i in 0..20 {
        let d = tokio::time::timeout(Duration::from_secs(30), c.next())
            .await
            .expect("in time")
            .expect("delivery")
            .expect("ok");
        assert_eq!(std::str::from_utf8(&d.data).unwrap(), format!("m{i}"));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

/// A dead letter's `x-death` shows as a summary.
#[tokio::test]
async fn browse_shows_the_x_death_summary() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/dlq", json!({"durable": true})).await;
    let r = api
        .put(
            "/api/queues/%2F/work",
            json!({"durable": true, "arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    api.post(
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "work", "payload": "bad", "properties": {"delivery_mode": 2}}),
    )
    .await;
    let r = api
        .post(
            "/api/queues/%2F/work/get",
            json!({"count": 1, "ackmode": "reject_requeue_false"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let mut page = Value::Null;
    for _ in 0..100 {
        page = browse(&api, "dlq", "").await;
        if !page["messages"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = &page["messages"][0];
    assert_eq!(m["payload"], "bad");
    assert_eq!(
        m["x_death"],
        json!([{"queue": "work", "reason": "rejected", "count": 1, "exchange": "", "routing_keys": ["work"]}])
    );
    assert_eq!(api.ok("/api/queues/%2F/dlq").await["messages"], 1);
}

#[tokio::test]
async fn browse_errors() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/q1", json!({"durable": false})).await;
    assert_eq!(api.get("/api/queues/%2F/nope/browse").await.status, 404);
    assert_eq!(api.get("/api/queues/nohost/q1/browse").await.status, 404);
    let anon = api.as_user("guest", "wrong");
    assert_eq!(anon.get("/api/queues/%2F/q1/browse").await.status, 401);
    for bad in [
        "from=-1",
        "from=xyz",
        "count=0",
        "count=501",
        "count=abc",
        "encoding=utf9",
    ] {
        let r = api.get(&format!("/api/queues/%2F/q1/browse?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert_eq!(r.body["error"], "bad_request");
    }
    // A user without read permission on the queue: 401 as RabbitMQ answers a refused get.
    api.put(
        "/api/users/reader",
        json!({"password": "pw", "tags": "management"}),
    )
    .await;
    api.put(
        "/api/permissions/%2F/reader",
        json!({"configure": "", "write": "", "read": "^other$"}),
    )
    .await;
    let r = api.as_user("reader", "pw").get("/api/queues/%2F/q1/browse").await;
    assert_eq!(r.status, 401, "{r:?}");
}
