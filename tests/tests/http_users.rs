//! `/api/users`, `/api/permissions`, `/api/vhosts`, `/api/whoami`: RabbitMQ's shapes and statuses, auth
//! failures (401 with RabbitMQ's reasons), a rejected request changes nothing, and everything survives a
//! restart (the store's durable definitions).

use mailroom_tests::http::{names, seg, Api};
use mailroom_tests::Server;
use serde_json::{json, Value};

#[tokio::test]
async fn users_permissions_and_vhosts_round_trip_and_survive_restart() {
    let mut server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");

    // The default user, as RabbitMQ's: guest, administrator, full permissions on '/'.
    let users = api.ok("/api/users").await;
    assert_eq!(names(&users), vec!["guest"]);
    assert_eq!(users[0]["tags"], json!(["administrator"]));
    assert_eq!(users[0]["hashing_algorithm"], "rabbit_password_hashing_sha256");
    let p = api.ok("/api/permissions/%2F/guest").await;
    assert_eq!(
        p,
        json!({"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})
    );
    let me = api.ok("/api/whoami").await;
    assert_eq!(me["name"], "guest");

    // Create a user with tags as a comma string (RabbitMQ 3.x) and one with a list (4.x).
    assert_eq!(
        api.put(
            "/api/users/ops",
            json!({"password": "s3cret", "tags": "monitoring,management"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.put(
            "/api/users/dev%20one",
            json!({"password": "pw", "tags": ["management"]})
        )
        .await
        .status,
        201
    );
    let ops = api.ok("/api/users/ops").await;
    assert_eq!(ops["tags"], json!(["monitoring", "management"]));
    // Updating without a password keeps it.
    assert_eq!(
        api.put("/api/users/ops", json!({"tags": "monitoring"}))
            .await
            .status,
        204
    );
    let ops_api = api.as_user("ops", "s3cret");
    assert_eq!(ops_api.ok("/api/whoami").await["tags"], json!(["monitoring"]));

    // A vhost with an awkward name, permissions on it.
    let vh = "a/b %c";
    assert_eq!(
        api.put(&format!("/api/vhosts/{}", seg(vh)), json!({"description": "x"}))
            .await
            .status,
        201
    );
    assert_eq!(
        api.put(&format!("/api/vhosts/{}", seg(vh)), json!({}))
            .await
            .status,
        204
    );
    let r = api
        .put(
            &format!("/api/permissions/{}/dev%20one", seg(vh)),
            json!({"configure": "^x", "write": ".*", "read": ""}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let perms = api.ok(&format!("/api/vhosts/{}/permissions", seg(vh))).await;
    let users_there: Vec<&str> = perms
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user"].as_str().unwrap())
        .collect();
    assert_eq!(users_there, vec!["dev one", "guest"]);
    assert_eq!(
        api.ok("/api/users/dev%20one/permissions")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let vhosts = api.ok("/api/vhosts").await;
    assert_eq!(names(&vhosts), vec!["/", vh]);

    // Restart: all of it is still there, and the users still log in.
    server.stop();
    let server = Server::start_in(&server.data_dir.clone(), &[]);
    let api = Api::new(&server.http_url(), "guest", "guest");
    assert_eq!(
        names(&api.ok("/api/users").await),
        vec!["dev one", "guest", "ops"]
    );
    let shown = api.ok(&format!("/api/vhosts/{}", seg(vh))).await;
    assert_eq!(
        (
            shown["description"].as_str(),
            shown["default_queue_type"].as_str()
        ),
        (Some("x"), Some("classic"))
    );
    assert_eq!(names(&api.ok("/api/vhosts").await), vec!["/", vh]);
    let p = api.ok(&format!("/api/permissions/{}/dev%20one", seg(vh))).await;
    assert_eq!(p["configure"], "^x");
    assert_eq!(
        api.as_user("dev one", "pw").ok("/api/whoami").await["name"],
        "dev one"
    );

    // Deletes: permission, user, vhost; then 404s.
    assert_eq!(
        api.delete(&format!("/api/permissions/{}/dev%20one", seg(vh)))
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("/api/permissions/{}/dev%20one", seg(vh)))
            .await
            .status,
        404
    );
    assert_eq!(api.delete("/api/users/ops").await.status, 204);
    assert_eq!(api.get("/api/users/ops").await.status, 404);
    assert_eq!(api.delete(&format!("/api/vhosts/{}", seg(vh))).await.status, 204);
    assert_eq!(api.get(&format!("/api/vhosts/{}", seg(vh))).await.status, 404);
    assert_eq!(
        api.get(&format!("/api/permissions/{}/guest", seg(vh)))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn rabbitmq_password_hashes_are_accepted() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    // "test12" hashed by RabbitMQ (rabbit_password_hashing_sha256; the docs' example on passwords).
    let r = api
        .put(
            "/api/users/imported",
            json!({"password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "management"}),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        api.as_user("imported", "test12").ok("/api/whoami").await["name"],
        "imported"
    );
    assert_eq!(
        api.as_user("imported", "test13").get("/api/whoami").await.status,
        401
    );
    // A hash that is not one is a 400, and no user appears.
    let r = api
        .put("/api/users/broken", json!({"password_hash": "bm9wZQ=="}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(api.get("/api/users/broken").await.status, 404);
}

#[tokio::test]
async fn auth_failures_and_bad_requests() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    // No credentials, wrong credentials: 401 with RabbitMQ's body and a Basic challenge.
    let r = reqwest::get(format!("{}/api/overview", server.http_url()))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_authorized");
    let r = api.as_user("guest", "wrong").get("/api/overview").await;
    assert_eq!(r.status, 401);
    // Wrong credentials: no challenge (RabbitMQ sends its realm only when there are no credentials,
    // rabbit_web_dispatch_access_control:is_authorized1), so browsers show no login dialog.
    assert!(r.headers.get("www-authenticate").is_none());
    assert_eq!(r.body["error"], "not_authorized");
    // A user without a management tag: 401 "Not management user".
    api.put("/api/users/app", json!({"password": "pw", "tags": ""}))
        .await;
    let r = api.as_user("app", "pw").get("/api/overview").await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("Not management user"))
    );
    // A management user is not an administrator: 401 on /api/users, and on a vhost without access.
    api.put("/api/users/mgr", json!({"password": "pw", "tags": "management"}))
        .await;
    let mgr = api.as_user("mgr", "pw");
    let r = mgr.get("/api/users").await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("Not administrator user"))
    );
    let r = mgr.get("/api/queues/%2F").await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("User not authorised to access virtual host"))
    );
    // ... and sees no vhosts or queues it has no permissions in.
    api.put("/api/queues/%2F/secret", json!({})).await;
    assert_eq!(mgr.ok("/api/queues").await, json!([]));
    assert_eq!(mgr.ok("/api/vhosts").await, json!([]));
    let r = mgr.put("/api/vhosts/mine", json!({})).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        api.get("/api/vhosts/mine").await.status,
        404,
        "a refused request changes nothing"
    );

    // Malformed JSON and wrong types: 400, nothing changes.
    let r = api.raw("PUT", "/api/users/x", "{not json").await;
    assert_eq!((r.status, r.body["error"].as_str()), (400, Some("bad_request")));
    assert_eq!(api.get("/api/users/x").await.status, 404);
    let r = api
        .put(
            "/api/permissions/%2F/app",
            json!({"configure": "(", "write": "", "read": ""}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(api.get("/api/permissions/%2F/app").await.status, 404);
    let r = api
        .put("/api/permissions/%2F/app", json!({"configure": ".*"}))
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .put(
            "/api/permissions/%2F/nobody",
            json!({"configure": "", "write": "", "read": ""}),
        )
        .await;
    assert_eq!(r.status, 404);
    // Wrong method: 405 with a JSON body; unknown path: 404.
    let r = api.req("POST", "/api/users", Some(json!({}))).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let r = api.get("/api/nothing-here").await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("Object Not Found"))
    );
}
