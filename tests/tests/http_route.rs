//! `POST /api/exchanges/{vhost}/{name}/route` (the console's "test route" box) answers which queues a
//! routing key and headers would reach, following e2e bindings, alternate exchanges and CC, without
//! publishing anything; and the console's files are served at `/`.

use mailroom_tests::http::{seg, Api};
use mailroom_tests::Server;
use serde_json::{json, Value};

fn queues(v: &Value) -> Vec<&str> {
    v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q.as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn route_answers_the_queues_a_publish_would_reach() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    for q in ["orders eu", "orders/all", "audit", "lost", "hdr"] {
        let r = api
            .put(&format!("/api/queues/%2F/{}", seg(q)), json!({"durable": true}))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    api.put("/api/exchanges/%2F/lost-x", json!({"type": "fanout"}))
        .await;
    api.put(
        "/api/exchanges/%2F/orders",
        json!({"type": "topic", "arguments": {"alternate-exchange": "lost-x"}}),
    )
    .await;
    api.put("/api/exchanges/%2F/mirror", json!({"type": "fanout"}))
        .await;
    api.put("/api/exchanges/%2F/h", json!({"type": "headers"})).await;
    for (src, kind, dst, key) in [
        ("orders", "q", "orders eu", "order.eu.*"),
        ("orders", "q", "orders/all", "order.#"),
        ("orders", "e", "mirror", "order.eu.#"),
        ("mirror", "q", "audit", ""),
        ("lost-x", "q", "lost", ""),
    ] {
        let r = api
            .post(
                &format!("/api/bindings/%2F/e/{}/{kind}/{}", seg(src), seg(dst)),
                json!({"routing_key": key}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let r = api
        .post(
            "/api/bindings/%2F/e/h/q/hdr",
            json!({"routing_key": "", "arguments": {"x-match": "all", "kind": "invoice"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");

    // Topic, plus the exchange-to-exchange binding, each queue once and sorted.
    let r = api
        .post(
            "/api/exchanges/%2F/orders/route",
            json!({"routing_key": "order.eu.1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(queues(&r.body), ["audit", "orders eu", "orders/all"]);
    assert_eq!(r.body["routed"], true);
    assert_eq!(r.body["used_alternate"], false);

    // No binding matches: the alternate exchange takes it.
    let r = api
        .post(
            "/api/exchanges/%2F/orders/route",
            json!({"routing_key": "invoice.1"}),
        )
        .await;
    assert_eq!(queues(&r.body), ["lost"]);
    assert_eq!(r.body["used_alternate"], true);

    // Headers exchange: the headers decide.
    let r = api
        .post(
            "/api/exchanges/%2F/h/route",
            json!({"routing_key": "", "headers": {"kind": "invoice"}}),
        )
        .await;
    assert_eq!(queues(&r.body), ["hdr"]);
    let r = api
        .post(
            "/api/exchanges/%2F/h/route",
            json!({"routing_key": "", "headers": {"kind": "order"}}),
        )
        .await;
    assert_eq!(queues(&r.body), Vec::<&str>::new());
    assert_eq!(r.body["routed"], false);

    // The default exchange (amq.default in URLs) and sender-selected CC keys.
    let r = api
        .post(
            "/api/exchanges/%2F/amq.default/route",
            json!({"routing_key": "audit", "headers": {"CC": ["lost"]}}),
        )
        .await;
    assert_eq!(queues(&r.body), ["audit", "lost"]);

    // Nothing was published.
    for q in ["orders eu", "orders/all", "audit", "lost", "hdr"] {
        let v = api.ok(&format!("/api/queues/%2F/{}", seg(q))).await;
        assert_eq!(v["messages"], 0, "{q}");
    }

    // Errors as the rest of the API: 404 for a missing exchange or vhost, 400 for a bad body, 401 without
    // access to the vhost.
    let r = api
        .post("/api/exchanges/%2F/nope/route", json!({"routing_key": "a"}))
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .post("/api/exchanges/nope/orders/route", json!({"routing_key": "a"}))
        .await;
    assert_eq!(r.status, 404);
    let r = api
        .raw("POST", "/api/exchanges/%2F/orders/route", "{not json")
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .post("/api/exchanges/%2F/orders/route", json!({"routing_key": 5}))
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .put(
            "/api/users/outsider",
            json!({"password": "pw", "tags": "management"}),
        )
        .await;
    assert!(r.status == 201 || r.status == 204, "{r:?}");
    let r = api
        .as_user("outsider", "pw")
        .post(
            "/api/exchanges/%2F/orders/route",
            json!({"routing_key": "order.eu.1"}),
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");
}

#[tokio::test]
async fn console_files_are_served_without_credentials() {
    let server = Server::start();
    let client = reqwest::Client::new();
    for (path, kind, needle) in [
        ("/", "text/html", "console.js"),
        ("/console.js", "text/javascript", "/api/overview"),
        ("/console.css", "text/css", "body"),
    ] {
        let r = client
            .get(format!("{}{path}", server.http_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(r.text().await.unwrap().contains(needle), "{path}");
    }
    // The API itself still needs credentials.
    let r = client
        .get(format!("{}/api/overview", server.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
