//! `/api/queues` and `/api/exchanges`: declare, show, list, delete, with URL-encoded names (`/`, `%`,
//! spaces), paging (`page`, `page_size`, `name`, `use_regex` → RabbitMQ's paged shape), `columns=`, and
//! the errors RabbitMQ gives (400 for bad arguments, 404 missing, nothing changed on a refusal).

use mailroom_tests::http::{names, seg, Api};
use mailroom_tests::Server;
use serde_json::json;

const ODD: &str = "odd/name %2F with spaces";

#[tokio::test]
async fn queues_with_awkward_names_round_trip() {
    let mut server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let path = format!("/api/queues/%2F/{}", seg(ODD));
    let r = api
        .put(&path, json!({"durable": true, "auto_delete": false, "arguments": {"x-max-length": 10, "x-queue-mode": "lazy"}}))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    // Declaring it again the same way: 204; differently: 400 and unchanged.
    assert_eq!(
        api.put(
            &path,
            json!({"durable": true, "arguments": {"x-max-length": 10, "x-queue-mode": "lazy"}})
        )
        .await
        .status,
        204
    );
    let r = api
        .put(&path, json!({"durable": true, "arguments": {"x-max-length": 11}}))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body["reason"]
            .as_str()
            .unwrap()
            .contains("inequivalent arg 'x-max-length'"),
        "{r:?}"
    );
    let q = api.ok(&path).await;
    assert_eq!(q["name"], ODD);
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["durable"], true);
    assert_eq!(q["arguments"]["x-max-length"], 10);
    assert_eq!(q["messages"], 0);
    assert_eq!(q["type"], "classic");
    // Bad arguments: 400 and no queue.
    let r = api
        .put(
            "/api/queues/%2F/bad",
            json!({"arguments": {"x-max-length": "ten"}}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(api.get("/api/queues/%2F/bad").await.status, 404);
    // Unknown vhost: 404.
    assert_eq!(api.put("/api/queues/nope/q", json!({})).await.status, 404);
    // Durable: survives a restart.
    server.stop();
    let server = Server::start_in(&server.data_dir.clone(), &[]);
    let api = Api::new(&server.http_url(), "guest", "guest");
    assert_eq!(api.ok(&path).await["arguments"]["x-max-length"], 10);
    // if-empty refuses a queue with messages.
    api.post(
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": ODD, "payload": "m", "properties": {}}),
    )
    .await;
    assert_eq!(api.delete(&format!("{path}?if-empty=true")).await.status, 400);
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.get(&path).await.status, 404);
    assert_eq!(api.delete(&path).await.status, 404);
}

#[tokio::test]
async fn paging_filtering_and_columns() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    for i in 0..25 {
        let r = api
            .put(&format!("/api/queues/%2F/q{i:02}"), json!({"durable": false}))
            .await;
        assert_eq!(r.status, 201);
    }
    api.put("/api/queues/%2F/other", json!({})).await;
    let all = api.ok("/api/queues").await;
    assert_eq!(all.as_array().unwrap().len(), 26);
    let p = api.ok("/api/queues?page=2&page_size=10").await;
    assert_eq!(p["page"], 2);
    assert_eq!(p["page_size"], 10);
    assert_eq!(p["page_count"], 3);
    assert_eq!(p["total_count"], 26);
    assert_eq!(p["filtered_count"], 26);
    assert_eq!(p["item_count"], 10);
    assert_eq!(p["items"][0]["name"], "q09");
    let p = api.ok("/api/queues/%2F?page=1&page_size=100&name=q1").await;
    assert_eq!(p["filtered_count"], 10);
    let p = api
        .ok("/api/queues?page=1&name=%5Eq2%5B0-2%5D%24&use_regex=true")
        .await;
    assert_eq!(names(&p["items"]), vec!["q20", "q21", "q22"]);
    let p = api
        .ok("/api/queues?page=1&page_size=5&sort=name&sort_reverse=true&columns=name,messages")
        .await;
    assert_eq!(p["items"][0], json!({"name": "q24", "messages": 0}));
    let cols = api.ok("/api/queues?columns=name").await;
    assert_eq!(cols[0], json!({"name": "other"}));
    // Out of range and bad sizes: 400.
    assert_eq!(api.get("/api/queues?page=9&page_size=10").await.status, 400);
    assert_eq!(api.get("/api/queues?page=1&page_size=0").await.status, 400);
    assert_eq!(api.get("/api/queues?page=1&page_size=501").await.status, 400);
    assert_eq!(
        api.get("/api/queues?page=1&name=(&use_regex=true").await.status,
        400
    );
}

#[tokio::test]
async fn exchanges_declare_show_list_delete() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let path = format!("/api/exchanges/%2F/{}", seg(ODD));
    let r = api
        .put(
            &path,
            json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "ae"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        api.put(
            &path,
            json!({"type": "topic", "durable": true, "arguments": {"alternate-exchange": "ae"}})
        )
        .await
        .status,
        204
    );
    let r = api.put(&path, json!({"type": "direct"})).await;
    assert_eq!(r.status, 400, "{r:?}");
    let x = api.ok(&path).await;
    assert_eq!(x["type"], "topic");
    assert_eq!(x["arguments"]["alternate-exchange"], "ae");
    let default = api.ok("/api/exchanges/%2F/amq.default").await;
    assert_eq!(
        (default["name"].as_str(), default["type"].as_str()),
        (Some(""), Some("direct"))
    );
    let list = api.ok("/api/exchanges/%2F").await;
    let ns = names(&list);
    assert!(
        ns.contains(&ODD.to_string()) && ns.contains(&"amq.topic".to_string()),
        "{ns:?}"
    );
    assert_eq!(
        api.put("/api/exchanges/%2F/x", json!({"type": "nope"}))
            .await
            .status,
        400
    );
    assert_eq!(api.put("/api/exchanges/%2F/x", json!({})).await.status, 400);
    assert_eq!(api.get("/api/exchanges/%2F/x").await.status, 404);
    assert_eq!(
        api.put("/api/exchanges/%2F/amq.mine", json!({"type": "direct"}))
            .await
            .status,
        401
    );
    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.get(&path).await.status, 404);
}
