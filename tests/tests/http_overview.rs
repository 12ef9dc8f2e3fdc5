//! `/api/overview`, `/api/nodes`, `/api/aliveness-test`, health checks: RabbitMQ's shapes with live counts.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mailroom_tests::http::Api;
use mailroom_tests::Server;
use serde_json::json;

#[tokio::test]
async fn overview_counts_live_objects() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let o = api.ok("/api/overview").await;
    assert_eq!(o["product_name"], "Mailroom");
    assert!(o["rabbitmq_version"].as_str().unwrap().starts_with('4'));
    assert!(o["node"].as_str().unwrap().starts_with("mailroom@"));
    assert_eq!(o["object_totals"]["queues"], 0);
    let exchanges = api.ok("/api/exchanges").await;
    assert_eq!(
        o["object_totals"]["exchanges"],
        exchanges.as_array().unwrap().len()
    );
    assert!(mailroom_tests::http::names(&exchanges).contains(&"amq.topic".to_string()));
    assert_eq!(o["listeners"][0]["protocol"], "amqp");
    assert_eq!(o["listeners"][0]["port"], server.addr.port());

    let conn = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("q".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    api.post(
        "/api/exchanges/%2F/amq.default/publish",
        json!({"routing_key": "q", "payload": "x", "properties": {}}),
    )
    .await;
    let o = api.ok("/api/overview").await;
    assert_eq!(o["object_totals"]["queues"], 1);
    assert_eq!(o["object_totals"]["connections"], 1);
    assert_eq!(o["object_totals"]["channels"], 1);
    assert_eq!(o["queue_totals"]["messages"], 1);
    assert_eq!(o["queue_totals"]["messages_ready"], 1);

    // columns= trims a single object too.
    let o = api.ok("/api/overview?columns=object_totals.queues,node").await;
    assert_eq!(o.as_object().unwrap().len(), 2);
    assert_eq!(o["object_totals"], json!({"queues": 1}));

    assert_eq!(api.ok("/api/aliveness-test/%2F").await, json!({"status": "ok"}));
    assert_eq!(api.ok("/api/health/checks/alarms").await["status"], "ok");
    let nodes = api.ok("/api/nodes").await;
    assert_eq!(nodes[0]["running"], true);
    assert_eq!(nodes[0]["mem_alarm"], false);
    conn.close(200, "bye".into()).await.unwrap();
}
