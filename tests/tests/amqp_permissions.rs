//! Users, vhosts and permissions over AMQP, set up through the management API: RabbitMQ checks each
//! operation in rabbit_channel.erl (check_configure_permitted / check_write_permitted /
//! check_read_permitted) and refuses with 403 ACCESS_REFUSED and rabbit_access_control's text
//! "<perm> access to <kind> '<name>' in vhost '<vhost>' refused for user '<user>'"; connection.open to a
//! vhost without permissions is 530 NOT_ALLOWED "access to vhost '<v>' refused for user '<u>'".

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::http::{seg, Api};
use mailroom_tests::Server;
use serde_json::json;

fn code_text(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => (err.get_id(), err.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other:?}"),
    }
}

async fn connect_as(server: &Server, user: &str, pw: &str, vhost: &str) -> Result<Connection, lapin::Error> {
    let url = format!("amqp://{user}:{pw}@{}/{}", server.addr, seg(vhost));
    Connection::connect(&url, ConnectionProperties::default()).await
}

/// Creates `user` (password "pw", no tags) with the three regexes on `vhost`.
async fn user_with(api: &Api, user: &str, vhost: &str, configure: &str, write: &str, read: &str) {
    let r = api
        .put(
            &format!("/api/users/{user}"),
            json!({"password": "pw", "tags": ""}),
        )
        .await;
    assert!(r.status == 201 || r.status == 204, "{r:?}");
    let r = api
        .put(
            &format!("/api/permissions/{}/{user}", seg(vhost)),
            json!({"configure": configure, "write": write, "read": read}),
        )
        .await;
    assert!(r.status == 201 || r.status == 204, "{r:?}");
}

#[tokio::test]
async fn publish_without_write_permission_is_403_with_rabbitmq_text() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    // The admin declares the queue; the user may only read.
    assert_eq!(
        api.put("/api/queues/%2F/inbox", json!({"durable": true}))
            .await
            .status,
        201
    );
    user_with(&api, "reader", "/", "", "", ".*").await;
    let conn = connect_as(&server, "reader", "pw", "/")
        .await
        .expect("reader connects");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let r = ch
        .basic_publish(
            "".into(),
            "inbox".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    let err = match r {
        Ok(confirm) => confirm.await.expect_err("publish must be refused"),
        Err(e) => e,
    };
    assert_eq!(
        code_text(&err),
        (
            403,
            "ACCESS_REFUSED - write access to exchange 'amq.default' in vhost '/' refused for user 'reader'"
                .into()
        )
    );
    // Read is allowed: basic.get works on another channel, and nothing was enqueued.
    let ch2 = conn.create_channel().await.unwrap();
    let got = ch2
        .basic_get("inbox".into(), BasicGetOptions::default())
        .await
        .unwrap();
    assert!(got.is_none());
}

#[tokio::test]
async fn configure_read_and_bind_checks() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/theirs", json!({})).await;
    api.put("/api/exchanges/%2F/src", json!({"type": "direct"})).await;
    // May configure and write app.*, read app.* only.
    user_with(&api, "app", "/", "^app\\.", "^app\\.", "^app\\.").await;
    let conn = connect_as(&server, "app", "pw", "/").await.unwrap();

    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "app.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("app.q may be declared");
    let e = ch
        .queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code_text(&e),
        (
            403,
            "ACCESS_REFUSED - configure access to queue 'other' in vhost '/' refused for user 'app'".into()
        )
    );

    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .basic_consume(
            "theirs".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code_text(&e),
        (
            403,
            "ACCESS_REFUSED - read access to queue 'theirs' in vhost '/' refused for user 'app'".into()
        )
    );

    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .queue_purge("theirs".into(), QueuePurgeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code_text(&e).0, 403);

    // Bind: write on the destination (app.q: yes), read on the source ('src': no).
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .queue_bind(
            "app.q".into(),
            "src".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code_text(&e),
        (
            403,
            "ACCESS_REFUSED - read access to exchange 'src' in vhost '/' refused for user 'app'".into()
        )
    );
    // Write on the destination is checked first.
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .queue_bind(
            "theirs".into(),
            "src".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code_text(&e),
        (
            403,
            "ACCESS_REFUSED - write access to queue 'theirs' in vhost '/' refused for user 'app'".into()
        )
    );
    // Deleting someone else's queue needs configure.
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .queue_delete("theirs".into(), QueueDeleteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        code_text(&e),
        (
            403,
            "ACCESS_REFUSED - configure access to queue 'theirs' in vhost '/' refused for user 'app'".into()
        )
    );
    // The refusals changed nothing.
    let q = api.ok("/api/queues/%2F/theirs").await;
    assert_eq!(q["name"], "theirs");
}

#[tokio::test]
async fn a_permission_change_applies_to_open_channels() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    api.put("/api/queues/%2F/q", json!({})).await;
    user_with(&api, "u", "/", ".*", ".*", ".*").await;
    let conn = connect_as(&server, "u", "pw", "/").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let c = ch
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"1",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    c.await.expect("allowed while write is .*");
    // Revoke write: the channel's cached grant must not outlive the change.
    user_with(&api, "u", "/", ".*", "", ".*").await;
    let r = ch
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions::default(),
            b"2",
            BasicProperties::default(),
        )
        .await;
    let err = match r {
        Ok(confirm) => confirm.await.expect_err("refused after the change"),
        Err(e) => e,
    };
    assert_eq!(code_text(&err).0, 403);
    let q = api.ok("/api/queues/%2F/q").await;
    assert_eq!(q["messages"], 1);
}

#[tokio::test]
async fn vhost_without_permission_is_530_and_a_new_vhost_works() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    assert_eq!(api.put("/api/vhosts/team%20a%2Fb", json!({})).await.status, 201);
    user_with(&api, "outsider", "/", ".*", ".*", ".*").await;
    let e = connect_as(&server, "outsider", "pw", "team a/b")
        .await
        .unwrap_err();
    assert_eq!(
        code_text(&e),
        (
            530,
            "NOT_ALLOWED - access to vhost 'team a/b' refused for user 'outsider'".into()
        )
    );
    // The creator (guest) got full permissions on the new vhost and can use it.
    let conn = connect_as(&server, "guest", "guest", "team a/b")
        .await
        .expect("guest connects");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "jobs".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let qs = api.ok("/api/queues/team%20a%2Fb").await;
    assert_eq!(mailroom_tests::http::names(&qs), vec!["jobs"]);
    // Queues of another vhost are separate.
    assert!(api.get("/api/queues/%2F/jobs").await.status == 404);
    // Wrong password: 403 at login.
    let e = connect_as(&server, "outsider", "bad", "/").await.unwrap_err();
    assert_eq!(code_text(&e).0, 403);
}
