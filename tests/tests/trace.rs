//! Message tracing (issue 15) over real TCP with lapin and the management API: a three-service chain whose
//! timeline comes back from `GET /api/trace` in order, lookups by message id, dead-letter/expiry/redrive
//! events, nothing recorded while tracing is off, RabbitMQ's firehose (`amq.rabbitmq.trace`) with its
//! headers, the trace surviving a restart, and overload drops counted. The recorder writes off the publish
//! path, so every check polls the API until the expected events are there (generous timeouts, no timing
//! asserted).

mod routing_common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use mailroom_tests::http::Api;
use mailroom_tests::Server;
use routing_common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn api(server: &Server) -> Api {
    Api::new(&server.http_url(), "guest", "guest")
}

async fn set_tracing(api: &Api, vhost: &str, on: bool) {
    let r = api
        .put(
            &format!("/api/vhosts/{}", mailroom_tests::http::seg(vhost)),
            json!({"tracing": on}),
        )
        .await;
    assert!(r.status == 204 || r.status == 201, "PUT vhost tracing: {r:?}");
}

fn ids(cid: &str, mid: &str) -> BasicProperties {
    BasicProperties::default()
        .with_correlation_id(cid.into())
        .with_message_id(mid.into())
}

async fn events(api: &Api, param: &str, id: &str) -> Vec<Value> {
    let r = api
        .ok(&format!("/api/trace?{param}={}", mailroom_tests::http::seg(id)))
        .await;
    r["events"].as_array().expect("events list").clone()
}

/// Polls the trace API until `done` holds for the events of `id` (panics after `WAIT`).
async fn wait_events(api: &Api, param: &str, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = events(api, param, id).await;
        if done(&ev) {
            return ev;
        }
        assert!(
            Instant::now() < deadline,
            "trace of {param}={id} never completed: {ev:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kind(e: &Value) -> &str {
    e["event"].as_str().unwrap_or_default()
}

fn has(ev: &[Value], event: &str, queue: &str) -> bool {
    ev.iter().any(|e| kind(e) == event && e["queue"] == queue)
}

/// Index of the first event matching `event` and, for events with a queue, `queue` (for `published` and
/// `routed`, the routing key).
fn pos(ev: &[Value], event: &str, queue: &str) -> usize {
    ev.iter()
        .position(|e| {
            kind(e) == event && (e["queue"] == queue || (e["queue"].is_null() && e["routing_key"] == queue))
        })
        .unwrap_or_else(|| panic!("no {event} {queue} in {ev:#?}"))
}

/// One service of the chain: consumes `from`, publishes a follow-up with the same correlation id to `to`
/// (if any), then acks.
async fn service(ch: Channel, from: &'static str, to: Option<&'static str>) {
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            from.into(),
            format!("{from}-service").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    while let Some(Ok(d)) = consumer.next().await {
        let cid = d
            .properties
            .correlation_id()
            .clone()
            .expect("correlation id")
            .to_string();
        if let Some(to) = to {
            ch.basic_publish(
                "".into(),
                to.into(),
                BasicPublishOptions::default(),
                b"next",
                ids(&cid, &format!("{to}-{cid}")),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

#[tokio::test]
async fn three_service_chain_timeline_in_order_and_by_message_id() {
    let server = Server::start();
    let api = api(&server);
    assert_eq!(api.ok("/api/vhosts/%2F").await["tracing"], false);
    set_tracing(&api, "/", true).await;
    assert_eq!(api.ok("/api/vhosts/%2F").await["tracing"], true);
    let conn = connect(&server).await;
    let setup = channel(&conn).await;
    for q in ["orders", "payments", "shipping"] {
        queue(&setup, q).await;
    }
    for (from, to) in [
        ("orders", Some("payments")),
        ("payments", Some("shipping")),
        ("shipping", None),
    ] {
        let c = connect(&server).await;
        let ch = confirm_channel(&c).await;
        tokio::spawn(async move {
            let _keep = c;
            service(ch, from, to).await
        });
    }
    let client = confirm_channel(&conn).await;
    publish(&client, "", "orders", "order", ids("order-42", "order-msg-42")).await;

    let ev = wait_events(&api, "correlation_id", "order-42", |ev| {
        has(ev, "acked", "shipping")
    })
    .await;
    // Every hop: published, routed, delivered, acked, and the next hop is published after the delivery.
    let mut last_delivered = 0;
    for (i, q) in ["orders", "payments", "shipping"].iter().enumerate() {
        let p = pos(&ev, "published", q);
        let r = pos(&ev, "routed", q);
        let d = pos(&ev, "delivered", q);
        let a = pos(&ev, "acked", q);
        assert!(p < r && r < d && d < a, "hop {q} out of order: {ev:#?}");
        if i > 0 {
            assert!(
                last_delivered < p,
                "hop {q} published before the previous delivery: {ev:#?}"
            );
        }
        last_delivered = d;
        assert_eq!(ev[r]["queues"], json!([q]));
        assert_eq!(ev[p]["exchange"], "");
        assert_eq!(ev[p]["user"], "guest");
        assert!(
            ev[p]["connection"].as_str().unwrap().contains(" -> "),
            "{:?}",
            ev[p]
        );
        assert!(ev[p]["channel"].as_u64().unwrap() >= 1);
        assert_eq!(ev[d]["consumer_tag"], format!("{q}-service"));
        assert_eq!(ev[d]["redelivered"], false);
        assert_eq!(ev[d]["delivery_count"], 0);
        assert_eq!(ev[a]["consumer_tag"], format!("{q}-service"));
    }
    assert!(ev
        .iter()
        .all(|e| e["correlation_id"] == "order-42" && e["vhost"] == "/"));
    // Times are ms since the epoch and never go back along the timeline by more than clock skew between
    // threads (recording order is the order of the list).
    assert!(ev.iter().all(|e| e["time"].as_u64().unwrap() > 1_600_000_000_000));
    // Absent fields are omitted, not null.
    assert!(ev
        .iter()
        .all(|e| e.as_object().unwrap().values().all(|v| !v.is_null())));

    // By message id: the payment message alone.
    let ev = wait_events(&api, "message_id", "payments-order-42", |ev| {
        has(ev, "acked", "payments")
    })
    .await;
    let kinds: Vec<&str> = ev.iter().map(kind).collect();
    assert_eq!(kinds, ["published", "routed", "delivered", "acked"]);
    assert!(ev.iter().all(|e| e["message_id"] == "payments-order-42"));

    // A missing parameter is a 400; an unknown id an empty timeline.
    assert_eq!(api.get("/api/trace").await.status, 400);
    assert!(events(&api, "correlation_id", "nobody").await.is_empty());
}

#[tokio::test]
async fn dead_letter_expiry_nack_and_redrive_events() {
    let server = Server::start();
    let api = api(&server);
    set_tracing(&api, "/", true).await;
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "dlx", lapin::ExchangeKind::Fanout).await;
    queue(&ch, "dlq").await;
    bind(&ch, "dlq", "dlx", "").await;
    let args = table(&[("x-dead-letter-exchange", s("dlx"))]);
    for q in ["work", "ttl-q"] {
        ch.queue_declare(q.into(), QueueDeclareOptions::default(), args.clone())
            .await
            .unwrap();
    }
    // Rejected without requeue (basic.nack): nacked, then dead-lettered to dlx.
    publish(&ch, "", "work", "bad", ids("dl-1", "m-nack")).await;
    let got = ch
        .basic_get("work".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    got.nack(BasicNackOptions {
        requeue: false,
        multiple: false,
    })
    .await
    .unwrap();
    let ev = wait_events(&api, "message_id", "m-nack", |ev| {
        has(ev, "dead-lettered", "work")
    })
    .await;
    let d = pos(&ev, "delivered", "work");
    let n = pos(&ev, "nacked", "work");
    let dl = pos(&ev, "dead-lettered", "work");
    assert!(d < n && n < dl, "{ev:#?}");
    assert_eq!(ev[d]["consumer_tag"], "basic.get");
    assert_eq!(ev[dl]["reason"], "rejected");
    assert_eq!(ev[dl]["target"], "dlx");

    // Redrive from the DLQ back to where it died: redriven (from dlq to work).
    // (A message-move task since the redrive became one: 201, then it runs; the event is polled for.)
    let r = api.post("/api/queues/%2F/dlq/redrive", json!({})).await;
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    let ev = wait_events(&api, "message_id", "m-nack", |ev| has(ev, "redriven", "dlq")).await;
    let rd = &ev[pos(&ev, "redriven", "dlq")];
    assert_eq!(rd["target"], "work");

    // Expiry (per-message TTL): expired in ttl-q, then dead-lettered with reason expired.
    publish(
        &ch,
        "",
        "ttl-q",
        "late",
        ids("dl-2", "m-exp").with_expiration("1".into()),
    )
    .await;
    let ev = wait_events(&api, "correlation_id", "dl-2", |ev| {
        has(ev, "dead-lettered", "ttl-q")
    })
    .await;
    let x = pos(&ev, "expired", "ttl-q");
    let dl = pos(&ev, "dead-lettered", "ttl-q");
    assert!(pos(&ev, "routed", "ttl-q") < x && x < dl, "{ev:#?}");
    assert_eq!(ev[x]["target"], "dlx");
    assert_eq!(ev[dl]["reason"], "expired");
}

#[tokio::test]
async fn tracing_off_records_nothing() {
    let server = Server::start();
    let api = api(&server);
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "q").await;
    let round = |cid: &'static str| {
        let ch = ch.clone();
        async move {
            publish(&ch, "", "q", "x", ids(cid, cid)).await;
            let m = ch
                .basic_get("q".into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
                .expect("a message");
            m.ack(BasicAckOptions::default()).await.unwrap();
        }
    };
    round("off-before").await;
    set_tracing(&api, "/", true).await;
    round("on-1").await;
    wait_events(&api, "correlation_id", "on-1", |ev| has(ev, "acked", "q")).await;
    set_tracing(&api, "/", false).await;
    assert_eq!(api.ok("/api/vhosts/%2F").await["tracing"], false);
    round("off-after").await;
    // A marker traced after the off period: once it is recorded, everything before it has been too (one
    // recorder, in order), so an empty timeline for the off ids means nothing was recorded for them.
    set_tracing(&api, "/", true).await;
    round("on-2").await;
    wait_events(&api, "correlation_id", "on-2", |ev| has(ev, "acked", "q")).await;
    assert!(events(&api, "correlation_id", "off-before").await.is_empty());
    assert!(events(&api, "correlation_id", "off-after").await.is_empty());
    assert!(events(&api, "message_id", "off-after").await.is_empty());
    // Another vhost (tracing never on) records nothing either.
    assert_eq!(api.put("/api/vhosts/other", json!({})).await.status, 201);
    assert_eq!(api.ok("/api/vhosts/other").await["tracing"], false);
}

fn header<'a>(h: &'a FieldTable, k: &str) -> &'a AMQPValue {
    h.inner()
        .get(&ShortString::from(k))
        .unwrap_or_else(|| panic!("no header {k} in {h:?}"))
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => s.to_string(),
        other => panic!("not a long string: {other:?}"),
    }
}

/// RabbitMQ's firehose as `deps/rabbit/src/rabbit_trace.erl` builds it: `tap_in` publishes
/// `publish.<exchange>` with `trace/5`'s headers (`exchange_name`, `routing_keys`, `properties` from
/// `msg_to_table/3`, `node`) plus `vhost`, `connection`, `channel` (signedint), `user`, `routed_queues`;
/// `tap_out` publishes `deliver.<queue>` with `redelivered` (signedint 0/1) and the same connection
/// fields; a message whose exchange is the trace exchange is not traced again (`trace/5`'s first clause).
/// The exchange is internal (rabbit_vhost declares `{<<"amq.rabbitmq.trace">>, topic, true}`).
#[tokio::test]
async fn firehose_copies_publishes_and_deliveries_with_rabbitmq_headers() {
    let server = Server::start();
    let api = api(&server);
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    for q in ["target", "fh-pub", "fh-del"] {
        queue(&ch, q).await;
    }
    bind(&ch, "target", "amq.direct", "k").await;
    bind(&ch, "fh-pub", "amq.rabbitmq.trace", "publish.#").await;
    bind(&ch, "fh-del", "amq.rabbitmq.trace", "deliver.#").await;
    // Tracing off: no copies.
    publish(&ch, "amq.direct", "k", "untraced", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "target").await, ["untraced"]);
    set_tracing(&api, "/", true).await;
    let props = ids("fh-1", "fh-m1")
        .with_content_type("text/plain".into())
        .with_delivery_mode(2)
        .with_headers(table(&[("app", s("shop"))]));
    publish(&ch, "amq.direct", "k", "traced body", props).await;
    let got = ch
        .basic_get("target".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the message");
    got.ack(BasicAckOptions::default()).await.unwrap();

    let p = ch
        .basic_get("fh-pub".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a publish.# copy");
    assert_eq!(p.delivery.routing_key.as_str(), "publish.amq.direct");
    assert_eq!(p.delivery.exchange.as_str(), "amq.rabbitmq.trace");
    assert_eq!(p.delivery.data, b"traced body");
    let h = p.delivery.properties.headers().clone().expect("headers");
    assert_eq!(text(header(&h, "exchange_name")), "amq.direct");
    assert_eq!(
        header(&h, "routing_keys"),
        &AMQPValue::FieldArray(vec![s("k")].into())
    );
    assert_eq!(text(header(&h, "vhost")), "/");
    assert_eq!(text(header(&h, "user")), "guest");
    assert!(text(header(&h, "node")).starts_with("mailroom@"));
    assert!(text(header(&h, "connection")).contains(" -> "));
    assert!(matches!(header(&h, "channel"), AMQPValue::LongInt(c) if *c >= 1));
    assert_eq!(
        header(&h, "routed_queues"),
        &AMQPValue::FieldArray(vec![s("target")].into())
    );
    let AMQPValue::FieldTable(pt) = header(&h, "properties") else {
        panic!("properties is not a table: {h:?}");
    };
    assert_eq!(text(header(pt, "correlation_id")), "fh-1");
    assert_eq!(text(header(pt, "message_id")), "fh-m1");
    assert_eq!(text(header(pt, "content_type")), "text/plain");
    assert_eq!(header(pt, "delivery_mode"), &AMQPValue::LongInt(2));
    let AMQPValue::FieldTable(app) = header(pt, "headers") else {
        panic!("headers is not a table: {pt:?}");
    };
    assert_eq!(text(header(app, "app")), "shop");
    // Only the headers are set on the copy itself.
    assert!(p.delivery.properties.correlation_id().is_none());
    assert!(p.delivery.properties.delivery_mode().is_none());

    let d = ch
        .basic_get("fh-del".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a deliver.# copy");
    assert_eq!(d.delivery.routing_key.as_str(), "deliver.target");
    assert_eq!(d.delivery.data, b"traced body");
    let h = d.delivery.properties.headers().clone().expect("headers");
    assert_eq!(text(header(&h, "exchange_name")), "amq.direct");
    assert_eq!(header(&h, "redelivered"), &AMQPValue::LongInt(0));
    assert_eq!(text(header(&h, "user")), "guest");
    // Getting the copies from fh-pub and fh-del made no copies of their own (no loop), and nothing else
    // was copied.
    assert_eq!(count(&ch, "fh-pub").await, 0);
    assert_eq!(count(&ch, "fh-del").await, 0);
    // Clients may not publish to the internal trace exchange (403, as RabbitMQ).
    let bad = channel(&conn).await;
    // In confirm mode the refused publish's confirm fails with the channel's close (without it, a later call
    // could find the channel still closing and see no reply code).
    bad.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let r = bad
        .basic_publish(
            "amq.rabbitmq.trace".into(),
            "publish.x".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let e = match r {
        Ok(c) => c.await.expect_err("the publish is refused"),
        Err(e) => e,
    };
    assert_eq!(amqp_error(&e).0, 403, "{e:?}");
}

#[tokio::test]
async fn trace_and_switch_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = Server::start_in(&dir, &[]);
    {
        let api = api(&server);
        set_tracing(&api, "/", true).await;
        let conn = connect(&server).await;
        let ch = confirm_channel(&conn).await;
        queue(&ch, "q").await;
        publish(&ch, "", "q", "x", ids("durable-1", "durable-m1")).await;
        wait_events(&api, "correlation_id", "durable-1", |ev| ev.len() >= 2).await;
        conn.close(200, "bye".into()).await.unwrap();
    }
    assert!(server.stop().success());
    let server = Server::start_in(&dir, &[]);
    let api = api(&server);
    assert_eq!(api.ok("/api/vhosts/%2F").await["tracing"], true);
    let ev = events(&api, "correlation_id", "durable-1").await;
    let kinds: Vec<&str> = ev.iter().map(kind).collect();
    assert_eq!(kinds, ["published", "routed"], "{ev:#?}");
    // Still tracing after the restart, appended after the recovered events.
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "q").await;
    publish(&ch, "", "q", "y", ids("durable-1", "durable-m2")).await;
    let ev = wait_events(&api, "correlation_id", "durable-1", |ev| ev.len() >= 4).await;
    assert_eq!(ev[2]["message_id"], "durable-m2");
}

#[tokio::test]
async fn overload_drops_are_counted_and_publishers_never_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("mailroom.toml");
    // A one-event buffer: a publish's events (published and routed, one send) find it full unless the
    // recorder took the previous publish's in between.
    std::fs::write(&conf, "[trace]\nbuffer_events = 1\n").unwrap();
    let server = Server::start_in(&tmp.path().join("data"), &["--config", conf.to_str().unwrap()]);
    let api = api(&server);
    set_tracing(&api, "/", true).await;
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "q").await;
    const N: u64 = 2000;
    let mut confirms = Vec::new();
    for i in 0..N {
        let c = ch
            .basic_publish(
                "".into(),
                "q".into(),
                BasicPublishOptions::default(),
                b"x",
                ids("flood", &format!("flood-{i}")),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    // Each publish offered two events (published, routed) before its confirm: all were either taken or
    // dropped and counted.
    let t = &api.ok("/api/overview").await["mailroom"]["trace"];
    let (accepted, dropped) = (
        t["events_accepted"].as_u64().unwrap(),
        t["events_dropped"].as_u64().unwrap(),
    );
    assert_eq!(accepted + dropped, 2 * N, "{t}");
    assert!(dropped > 0, "{t}");
    // What was taken is written, and what the API returns is what was taken.
    let deadline = Instant::now() + WAIT;
    loop {
        let t = &api.ok("/api/overview").await["mailroom"]["trace"];
        if t["events_written"].as_u64().unwrap() == accepted {
            break;
        }
        assert!(Instant::now() < deadline, "recorder never caught up: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = api.ok("/api/trace?correlation_id=flood&limit=100000").await;
    assert_eq!(r["events"].as_array().unwrap().len() as u64, accepted);
}

fn ctl(server: &Server, args: &[&str]) -> String {
    let out = std::process::Command::new(mailroom_tests::mailroomctl_bin())
        .args(["--url", &server.http_url()])
        .args(args)
        .env_remove("MAILROOM_HTTP_URL")
        .env_remove("MAILROOM_USER")
        .env_remove("MAILROOM_PASSWORD")
        .env_remove("MAILROOM_VHOST")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run mailroomctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mailroomctl {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `mailroomctl vhosts tracing VHOST on|off` switches tracing through the API; `mailroomctl trace ID`
/// prints the timeline (a table, or the API's events with `--format json`).
#[tokio::test]
async fn mailroomctl_switches_tracing_and_prints_the_timeline() {
    let server = Server::start();
    let api = api(&server);
    ctl(&server, &["vhosts", "tracing", "/", "on"]);
    assert_eq!(api.ok("/api/vhosts/%2F").await["tracing"], true);
    assert!(ctl(&server, &["vhosts", "list"]).contains("true"));
    let conn = connect(&server).await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "q").await;
    publish(&ch, "", "q", "x", ids("ctl-1", "ctl-m1")).await;
    wait_events(&api, "correlation_id", "ctl-1", |ev| ev.len() >= 2).await;
    let table = ctl(&server, &["trace", "ctl-1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("time") && lines[0].contains("event"),
        "{table}"
    );
    assert!(
        lines[1].contains("published") && lines[2].contains("routed"),
        "{table}"
    );
    let v: Value = serde_json::from_str(&ctl(
        &server,
        &["--format", "json", "trace", "ctl-m1", "--message-id"],
    ))
    .expect("JSON output");
    assert_eq!(v.as_array().expect("events").len(), 2, "{v}");
    ctl(&server, &["vhosts", "tracing", "/", "off"]);
    assert_eq!(api.ok("/api/vhosts/%2F").await["tracing"], false);
}
