//! The real `rabbitmqadmin` v2 (RabbitMQ's CLI for the management API, from crates.io, installed into
//! .tools/rabbitmqadmin by `make test`) against Mailroom, unchanged: it lists, declares, binds, publishes,
//! gets and deletes.

use std::process::Command;

use mailroom_tests::http::Api;
use mailroom_tests::{workspace_root, Server};

fn admin_bin() -> std::path::PathBuf {
    let bin = workspace_root().join(".tools/rabbitmqadmin/bin/rabbitmqadmin");
    assert!(
        bin.exists(),
        "{} is missing: run `make test` (or `make rabbitmqadmin`), which installs it with cargo install",
        bin.display()
    );
    bin
}

/// Runs rabbitmqadmin with `args` against the server; panics with its output unless it exits 0.
fn admin(server: &Server, args: &[&str]) -> String {
    let http = server.http_addr.expect("HTTP listener");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(admin_bin())
        .args(["--host", "127.0.0.1", "--port", &http.port().to_string()])
        .args(["--username", "guest", "--password", "guest", "--non-interactive"])
        .args(args)
        // No ~/.rabbitmqadmin.conf of the machine's user: everything comes from the flags.
        .env("HOME", tmp.path())
        .env_remove("RABBITMQADMIN_CONFIG_FILE_PATH")
        .env_remove("RABBITMQADMIN_TARGET_VHOST")
        .output()
        .expect("run rabbitmqadmin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "rabbitmqadmin {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

#[tokio::test]
async fn rabbitmqadmin_lists_declares_binds_publishes_gets_and_deletes() {
    let server = Server::start();
    let api = Api::new(&server.http_url(), "guest", "guest");
    let _server = tokio::task::spawn_blocking(move || {
        let s = &server;
        let overview = admin(s, &["show", "overview"]);
        assert!(
            overview.contains("Mailroom") || overview.contains("mailroom"),
            "{overview}"
        );
        admin(s, &["queues", "declare", "--name", "orders", "--durable", "true"]);
        admin(
            s,
            &[
                "exchanges",
                "declare",
                "--name",
                "shop",
                "--type",
                "topic",
                "--durable",
                "true",
            ],
        );
        admin(
            s,
            &[
                "exchanges",
                "bind",
                "--source",
                "shop",
                "--destination-type",
                "queue",
                "--destination",
                "orders",
                "--routing-key",
                "order.*",
            ],
        );
        let queues = admin(s, &["queues", "list"]);
        assert!(queues.contains("orders"), "{queues}");
        let exchanges = admin(s, &["exchanges", "list"]);
        assert!(
            exchanges.contains("shop") && exchanges.contains("amq.topic"),
            "{exchanges}"
        );
        let bindings = admin(s, &["bindings", "list"]);
        assert!(bindings.contains("order.*"), "{bindings}");
        let published = admin(
            s,
            &[
                "publish",
                "message",
                "--exchange",
                "shop",
                "--routing-key",
                "order.created",
                "--payload",
                "order #1",
            ],
        );
        assert!(published.contains("routed successfully"), "{published}");
        let got = admin(
            s,
            &[
                "get",
                "messages",
                "--queue",
                "orders",
                "--count",
                "1",
                "--ack-mode",
                "ack_requeue_false",
            ],
        );
        assert!(got.contains("order #1"), "{got}");
        for list in [
            "connections",
            "channels",
            "consumers",
            "users",
            "vhosts",
            "permissions",
            "nodes",
        ] {
            admin(s, &["list", list]);
        }
        admin(
            s,
            &[
                "exchanges",
                "unbind",
                "--source",
                "shop",
                "--destination-type",
                "queue",
                "--destination",
                "orders",
                "--routing-key",
                "order.*",
            ],
        );
        admin(s, &["queues", "delete", "--name", "orders"]);
        admin(s, &["exchanges", "delete", "--name", "shop"]);
        server
    })
    .await
    .unwrap();
    // What rabbitmqadmin did is what the broker holds now: no queue, no exchange, the message taken.
    assert_eq!(api.get("/api/queues/%2F/orders").await.status, 404);
    assert_eq!(api.get("/api/exchanges/%2F/shop").await.status, 404);
}
