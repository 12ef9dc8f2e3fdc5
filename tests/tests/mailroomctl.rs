//! `mailroomctl` against the real broker: every command group through the management API, tables and
//! `--format json`, exit codes 0 (ok), 1 (the broker refused / unreachable) and 2 (bad usage), and the
//! connection settings from flags, the environment and a config file.

use std::process::{Command, Output};

use mailroom_tests::{mailroomctl_bin, Server};
use serde_json::{json, Value};

fn ctl_with(server: &Server, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(mailroomctl_bin())
        .args(["--url", &server.http_url()])
        .args(args)
        .env_remove("MAILROOM_HTTP_URL")
        .env_remove("MAILROOM_USER")
        .env_remove("MAILROOM_PASSWORD")
        .env_remove("MAILROOM_VHOST")
        .env("HOME", "/nonexistent")
        .envs(env.iter().copied())
        .output()
        .expect("run mailroomctl")
}

/// Runs a command that must succeed; its standard output.
fn ctl(server: &Server, args: &[&str]) -> String {
    let out = ctl_with(server, args, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mailroomctl {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json(server: &Server, args: &[&str]) -> Value {
    let mut a = vec!["--format", "json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ctl(server, &a)).expect("JSON output")
}

#[test]
fn every_command_group_against_the_broker() {
    let server = Server::start();
    ctl(&server, &["exchanges", "declare", "shop", "--type", "topic"]);
    ctl(
        &server,
        &["queues", "declare", "orders", "--argument", "x-max-length=100"],
    );
    ctl(&server, &["queues", "declare", "orders.dlq"]);
    ctl(
        &server,
        &[
            "bind",
            "--source",
            "shop",
            "--destination",
            "orders",
            "--routing-key",
            "order.*",
        ],
    );
    let table = ctl(&server, &["bindings", "list"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("shop"))
        .expect("the binding is listed");
    assert!(line.contains("orders") && line.contains("order.*"), "{table}");
    // Tables are aligned: every row starts its columns where the header does.
    let header = table.lines().next().unwrap();
    let col = header.find("destination").unwrap();
    assert_eq!(&line[col..col + 6], "orders", "{table}");

    let out = ctl(
        &server,
        &[
            "publish",
            "--exchange",
            "shop",
            "--routing-key",
            "order.new",
            "--payload",
            "o-1",
            "--property",
            "delivery_mode=2",
        ],
    );
    assert_eq!(out.trim(), "routed: true");
    let q = json(&server, &["queues", "list"]);
    let orders = q
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "orders")
        .unwrap();
    assert_eq!(orders["messages"], 1);
    assert_eq!(orders["arguments"]["x-max-length"], 100);
    let got = json(&server, &["get", "orders", "--ackmode", "ack_requeue_false"]);
    assert_eq!(got[0]["payload"], "o-1");
    ctl(
        &server,
        &[
            "unbind",
            "--source",
            "shop",
            "--destination",
            "orders",
            "--routing-key",
            "order.*",
        ],
    );
    assert!(!ctl(&server, &["bindings", "list"]).contains("order.*"));

    // Dead letters: a rejected message shows where and why it died.
    ctl(
        &server,
        &[
            "queues",
            "declare",
            "work",
            "--argument",
            "x-dead-letter-exchange=",
            "--argument",
            "x-dead-letter-routing-key=orders.dlq",
        ],
    );
    ctl(&server, &["publish", "--routing-key", "work", "--payload", "bad"]);
    json(&server, &["get", "work", "--ackmode", "reject_requeue_false"]);
    let dlq = ctl(&server, &["dlq", "list", "orders.dlq"]);
    let row = dlq.lines().nth(1).expect("a dead letter");
    assert!(
        row.contains("work") && row.contains("rejected") && row.contains("bad"),
        "{dlq}"
    );

    // ... and goes back where it died.
    let out = ctl(&server, &["dlq", "redrive", "orders.dlq"]);
    assert_eq!(out.trim(), "moved: 1, kept: 0");
    let back = json(&server, &["get", "work"]);
    assert_eq!(back[0]["payload"], "bad");
    // The move ran as a task: listed, shown, and (being done) not cancellable.
    let tasks = json(&server, &["tasks", "list"]);
    let task = &tasks[0];
    assert_eq!(
        (&task["state"], &task["moved"]),
        (&json!("done"), &json!(1)),
        "{tasks}"
    );
    let id = task["id"].to_string();
    assert_eq!(json(&server, &["tasks", "show", &id])["source"], "orders.dlq");
    assert_eq!(
        ctl_with(&server, &["tasks", "cancel", &id], &[]).status.code(),
        Some(1)
    );
    // --async: the task is started and printed at once.
    json(&server, &["get", "work", "--ackmode", "reject_requeue_false"]);
    let started = json(
        &server,
        &["dlq", "redrive", "orders.dlq", "--async", "--rate", "100"],
    );
    let id = started["id"].to_string();
    assert_eq!(started["rate_limit"], 100);
    let mut state = Value::Null;
    for _ in 0..600 {
        state = json(&server, &["tasks", "show", &id])["state"].clone();
        if state == "done" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(state, "done");
    assert_eq!(json(&server, &["get", "work"])[0]["payload"], "bad");

    // Users, vhosts, permissions, policies.
    ctl(&server, &["vhosts", "add", "team a"]);
    ctl(
        &server,
        &[
            "users",
            "add",
            "alice",
            "--new-password",
            "pw",
            "--tags",
            "management",
        ],
    );
    ctl(
        &server,
        &[
            "--vhost",
            "team a",
            "permissions",
            "set",
            "alice",
            "--configure",
            "^alice\\.",
        ],
    );
    let perms = json(&server, &["--vhost", "team a", "permissions", "list"]);
    assert!(perms
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["user"] == "alice" && p["configure"] == "^alice\\."));
    let as_alice = ctl_with(
        &server,
        &["--vhost", "team a", "queues", "declare", "alice.q"],
        &[("MAILROOM_USER", "alice"), ("MAILROOM_PASSWORD", "pw")],
    );
    assert!(as_alice.status.success(), "{as_alice:?}");
    ctl(
        &server,
        &[
            "policies",
            "set",
            "cap",
            "--pattern",
            "^orders$",
            "--definition",
            r#"{"max-length": 5}"#,
            "--apply-to",
            "queues",
        ],
    );
    let q = json(&server, &["queues", "list"]);
    let orders = q
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "orders")
        .unwrap();
    assert_eq!(orders["policy"], "cap");
    assert!(ctl(&server, &["policies", "list"]).contains("^orders$"));

    // Definitions out and back in.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("defs.json");
    ctl(&server, &["definitions", "export", file.to_str().unwrap()]);
    let defs: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert!(defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "alice"));
    let other = Server::start();
    ctl(&other, &["definitions", "import", file.to_str().unwrap()]);
    assert!(ctl(&other, &["users", "list"]).contains("alice"));
    assert!(ctl(&other, &["--vhost", "team a", "queues", "list"]).contains("alice.q"));

    // Deletes, and the overview.
    ctl(&server, &["policies", "delete", "cap"]);
    ctl(&server, &["queues", "delete", "orders"]);
    ctl(&server, &["exchanges", "delete", "shop"]);
    ctl(&server, &["users", "delete", "alice"]);
    ctl(&server, &["vhosts", "delete", "team a"]);
    let o = json(&server, &["overview"]);
    assert_eq!(o["product_name"], "Mailroom");
    assert!(ctl(&server, &["overview"]).contains("Mailroom"));
    assert!(ctl(&server, &["connections"]).starts_with("name"));
}

#[test]
fn exit_codes_and_settings() {
    let server = Server::start();
    // 1: the broker refuses (404 here, 401 with a wrong password), with its reason on stderr.
    let out = ctl_with(&server, &["queues", "delete", "missing"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{out:?}");
    let out = ctl_with(&server, &["--password", "wrong", "queues", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    // 2: bad usage.
    let out = ctl_with(&server, &["queues", "frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    // 1: nothing listening.
    let out = Command::new(mailroomctl_bin())
        .args(["--url", "http://127.0.0.1:9", "queues", "list"])
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // Settings from a config file (url, user, password, vhost) when no flag or variable gives them.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("ctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "url = \"{}\"\nuser = \"guest\"\npassword = \"guest\"\n",
            server.http_url()
        ),
    )
    .unwrap();
    let out = Command::new(mailroomctl_bin())
        .args(["--config", cfg.to_str().unwrap(), "vhosts", "list"])
        .env_remove("MAILROOM_HTTP_URL")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with('/')));
    // The environment gives the URL too.
    let out = Command::new(mailroomctl_bin())
        .args(["vhosts", "list"])
        .env("MAILROOM_HTTP_URL", server.http_url())
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
