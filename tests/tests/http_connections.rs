//! `/api/connections`, `/api/channels`, `/api/consumers` and closing a connection over HTTP
//! (`DELETE /api/connections/{name}`: the client gets connection.close 320 CONNECTION_FORCED).

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mailroom_tests::http::{seg, Api};
use mailroom_tests::Server;
use serde_json::json;

#[tokio::test]
async fn connections_channels_consumers_and_forced_close() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let props = ConnectionProperties::default().with_connection_name("billing-worker".into());
    let conn = Connection::connect(&server.url(), props).await.unwrap();
    let ch1 = conn.create_channel().await.unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    ch1.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    ch1.queue_declare(
        "jobs".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _consumer = ch1
        .basic_consume(
            "jobs".into(),
            "ctag-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch2.confirm_select(ConfirmSelectOptions::default()).await.unwrap();

    let conns = api.ok("/api/connections").await;
    assert_eq!(conns.as_array().unwrap().len(), 1);
    let c = &conns[0];
    let name = c["name"].as_str().unwrap().to_string();
    assert!(name.ends_with(&format!("-> {}", server.addr)), "{name}");
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["protocol"], "AMQP 0-9-1");
    assert_eq!(c["channels"], 2);
    assert_eq!(c["client_properties"]["connection_name"], "billing-worker");
    assert_eq!(
        api.ok(&format!("/api/connections/{}", seg(&name))).await["name"],
        name.as_str()
    );
    assert_eq!(
        api.ok("/api/vhosts/%2F/connections")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let chans = api.ok("/api/channels").await;
    assert_eq!(chans.as_array().unwrap().len(), 2);
    let first = chans
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == 1)
        .unwrap();
    assert_eq!(first["name"], format!("{name} (1)"));
    assert_eq!(first["consumer_count"], 1);
    assert_eq!(first["prefetch_count"], 7);
    assert_eq!(first["connection_details"]["name"], name.as_str());
    let second = chans
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == 2)
        .unwrap();
    assert_eq!(second["confirm"], true);
    assert_eq!(
        api.ok(&format!("/api/channels/{}", seg(&format!("{name} (2)"))))
            .await["number"],
        2
    );
    assert_eq!(
        api.ok(&format!("/api/connections/{}/channels", seg(&name)))
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let consumers = api.ok("/api/consumers").await;
    assert_eq!(consumers.as_array().unwrap().len(), 1);
    assert_eq!(consumers[0]["consumer_tag"], "ctag-1");
    assert_eq!(consumers[0]["queue"], json!({"name": "jobs", "vhost": "/"}));
    assert_eq!(consumers[0]["ack_required"], true);
    assert_eq!(consumers[0]["channel_details"]["connection_name"], name.as_str());
    assert_eq!(api.ok("/api/consumers/%2F").await.as_array().unwrap().len(), 1);
    assert_eq!(api.ok("/api/queues/%2F/jobs").await["consumers"], 1);

    // Close it: the client sees 320 with the reason, the broker forgets it and its consumer.
    let r = api
        .req("DELETE", &format!("/api/connections/{}", seg(&name)), None)
        .await;
    assert_eq!(r.status, 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while conn.status().connected() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!conn.status().connected(), "the connection was closed");
    let mut left = 1;
    for _ in 0..100 {
        left = api.ok("/api/connections").await.as_array().unwrap().len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0);
    assert_eq!(api.ok("/api/queues/%2F/jobs").await["consumers"], 0);
    assert_eq!(
        api.delete(&format!("/api/connections/{}", seg(&name)))
            .await
            .status,
        404
    );
}

/// The closing frame itself, read with the raw client: 320 and RabbitMQ's default reason (or `X-Reason`).
#[tokio::test]
async fn forced_close_sends_320_with_the_reason() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let addr = server.addr;
    let mut raw = tokio::task::spawn_blocking(move || mailroom_tests::raw::RawClient::open(addr, 131072))
        .await
        .unwrap();
    let conns = api.ok("/api/connections").await;
    let name = conns[0]["name"].as_str().unwrap().to_string();
    let r = reqwest::Client::new()
        .delete(format!("{}/api/connections/{}", server.http_url(), seg(&name)))
        .basic_auth("guest", Some("guest"))
        .header("X-Reason", "maintenance window")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (code, text, _, _) = tokio::task::spawn_blocking(move || raw.expect_connection_close())
        .await
        .unwrap();
    assert_eq!(
        (code, text.as_str()),
        (320, "CONNECTION_FORCED - maintenance window")
    );
}

#[tokio::test]
async fn a_management_user_sees_only_its_own_connections() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/users/mgr", json!({"password": "pw", "tags": "management"}))
        .await;
    api.put(
        "/api/permissions/%2F/mgr",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    let _guest = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let _mine = Connection::connect(
        &format!("amqp://mgr:pw@{}/%2f", server.addr),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(api.ok("/api/connections").await.as_array().unwrap().len(), 2);
    let seen = api.as_user("mgr", "pw").ok("/api/connections").await;
    assert_eq!(seen.as_array().unwrap().len(), 1);
    assert_eq!(seen[0]["user"], "mgr");
}
