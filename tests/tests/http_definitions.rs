//! `/api/definitions` (GET export, POST import) and `--definitions FILE` at boot, with a definitions file
//! in RabbitMQ 3.x's export format (tests/data/rabbitmq-3.13-definitions.json, written by this project
//! from RabbitMQ's documented format: users with rabbit_password_hashing_sha256/sha512 hashes, tags as a
//! list or a 3.x comma string, vhosts with metadata, permissions, queues, exchanges, bindings).

use lapin::options::*;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::http::{names, Api};
use mailroom_tests::{workspace_root, Server};
use serde_json::{json, Value};

fn rabbitmq_file() -> std::path::PathBuf {
    workspace_root().join("tests/data/rabbitmq-3.13-definitions.json")
}

async fn check_imported(server: &Server, api: &Api) {
    let users = names(&api.ok("/api/users").await);
    assert_eq!(users, vec!["billing", "guest", "legacy-512", "watcher"]);
    assert_eq!(names(&api.ok("/api/vhosts").await), vec!["/", "billing"]);
    let billing = api.ok("/api/vhosts/billing").await;
    assert_eq!(
        (billing["description"].as_str(), &billing["tags"]),
        (Some("Billing team"), &json!(["prod"]))
    );
    let q = api.ok("/api/queues/billing/billing.invoices").await;
    assert_eq!(q["arguments"]["x-max-length"], 10000);
    assert_eq!(
        api.ok("/api/exchanges/billing/billing.audit").await["internal"],
        true
    );
    assert_eq!(
        api.ok("/api/bindings/billing/e/billing.events/e/billing.audit")
            .await[0]["routing_key"],
        "#"
    );
    // The imported users log in with the passwords RabbitMQ hashed: HTTP and AMQP alike.
    assert_eq!(
        api.as_user("billing", "s3cret").ok("/api/whoami").await["name"],
        "billing"
    );
    assert_eq!(
        api.as_user("watcher", "monitor-pw").ok("/api/whoami").await["tags"],
        json!(["monitoring"])
    );
    let conn = Connection::connect(
        &format!("amqp://legacy-512:long-pw@{}/%2f", server.addr),
        ConnectionProperties::default(),
    )
    .await
    .expect("a sha512 user logs in");
    conn.close(200, "ok".into()).await.unwrap();
    // billing may publish in its vhost; the message routes through the imported bindings.
    let conn = Connection::connect(
        &format!("amqp://billing:s3cret@{}/billing", server.addr),
        ConnectionProperties::default(),
    )
    .await
    .expect("billing logs in to its vhost");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch.basic_publish(
        "billing.events".into(),
        "invoice.paid".into(),
        BasicPublishOptions::default(),
        b"inv-1",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(
        api.ok("/api/queues/billing/billing.invoices").await["messages"],
        1
    );
    // ... but not configure outside billing.*.
    let e = ch
        .queue_declare("other".into(), QueueDeclareOptions::default(), Default::default())
        .await
        .unwrap_err();
    assert!(
        format!("{e}")
            .contains("configure access to queue 'other' in vhost 'billing' refused for user 'billing'"),
        "{e}"
    );
}

#[tokio::test]
async fn rabbitmq_export_imports_over_http_idempotently_and_exports_back() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(rabbitmq_file()).unwrap()).unwrap();
    let r = api.post("/api/definitions", doc.clone()).await;
    assert_eq!(r.status, 204, "{r:?}");
    check_imported(&server, &api).await;
    // Again: nothing changes (the message is still there, nothing is duplicated).
    assert_eq!(api.post("/api/definitions", doc).await.status, 204);
    assert_eq!(
        api.ok("/api/queues/billing/billing.invoices").await["messages"],
        1
    );
    assert_eq!(
        api.ok("/api/bindings/billing/e/billing.events/q/billing.invoices")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Export, then import into a fresh broker: the same definitions.
    let export = api.ok("/api/definitions").await;
    for key in [
        "users",
        "vhosts",
        "permissions",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert!(export[key].is_array(), "{key}");
    }
    let billing = export["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "billing")
        .unwrap();
    assert_eq!(
        billing["password_hash"],
        "obLD1J6YSlAeq29RqDM7bNVRpSePSKOA4noVy2LiW9m6jVUj"
    );
    assert_eq!(billing["hashing_algorithm"], "rabbit_password_hashing_sha256");
    let other = Server::start();
    let api2 = Api::new(&other.http_url(), "guest", "guest");
    assert_eq!(api2.post("/api/definitions", export.clone()).await.status, 204);
    let mut again = api2.ok("/api/definitions").await;
    let mut first = export;
    for d in [&mut first, &mut again] {
        d.as_object_mut().unwrap().remove("users");
    }
    assert_eq!(first, again);
    let per_vhost = api.ok("/api/definitions/billing").await;
    assert_eq!(per_vhost["queues"].as_array().unwrap().len(), 2);
    assert!(per_vhost.get("users").is_none());
}

#[tokio::test]
async fn a_bad_definitions_document_changes_nothing() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(rabbitmq_file()).unwrap()).unwrap();
    doc["exchanges"][0]["type"] = json!("x-no-such-type");
    let r = api.post("/api/definitions", doc).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(names(&api.ok("/api/users").await), vec!["guest"]);
    assert_eq!(names(&api.ok("/api/vhosts").await), vec!["/"]);
    assert_eq!(
        api.raw("POST", "/api/definitions", "{\"users\": ").await.status,
        400
    );
    let r = api
        .post(
            "/api/definitions",
            json!({"queues": [{"name": "q", "vhost": "nope"}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(api.ok("/api/queues").await, json!([]));
    // Only administrators import.
    api.put("/api/users/m", json!({"password": "pw", "tags": "management"}))
        .await;
    assert_eq!(
        api.as_user("m", "pw")
            .post("/api/definitions", json!({}))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn definitions_file_at_boot_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let file = rabbitmq_file();
    let mut server = Server::start_in(&dir, &["--definitions", file.to_str().unwrap()]);
    let api = Api::new(&server.http_url(), "guest", "guest");
    check_imported(&server, &api).await;
    server.stop();
    // The second boot imports the same file again: the message published above is still there.
    let server = Server::start_in(&dir, &["--definitions", file.to_str().unwrap()]);
    let api = Api::new(&server.http_url(), "guest", "guest");
    assert_eq!(
        api.ok("/api/queues/billing/billing.invoices").await["messages"],
        1
    );
    assert_eq!(names(&api.ok("/api/users").await).len(), 4);
}
