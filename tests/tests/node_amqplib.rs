//! Issue 12: amqplib (Node.js) connects to `amqp://localhost`, publishes 2,000 messages and closes at once
//! (the close follows the publishes in the same burst, as amqplib's callback-API test suite does). It must
//! see close-ok and a clean end (today's main reset the socket: the close promise never settled). amqplib is installed
//! into .tools/node by `make test`.

use std::process::Command;

use mailroom_tests::raw::RawClient;
use mailroom_tests::{workspace_root, Server};

#[test]
fn amqplib_over_localhost_publishes_2000_and_closes_at_once() {
    let root = workspace_root();
    let modules = root.join(".tools/node/node_modules");
    assert!(
        modules.join("amqplib").exists(),
        "amqplib is missing: run `make test` (it installs it into .tools/node)"
    );
    // A port free on both loopback addresses; the broker listens on both, as by default.
    let port = loop {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            break port;
        }
    };
    let tmp = tempfile::tempdir().unwrap();
    let list = format!("127.0.0.1:{port},[::1]:{port}");
    let server = Server::start_in(&tmp.path().join("data"), &["--listen", &list]);
    for round in 0..3 {
        let queue = format!("node-close-{round}");
        let out = Command::new("node")
            .arg(root.join("tests/node/publish_close.js"))
            .args([&port.to_string(), &queue, "2000"])
            .env("NODE_PATH", &modules)
            .output()
            .expect("node runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("ok"),
            "round {round}: {stdout}\n{stderr}"
        );
        // No count is asserted: amqplib writes connection.close (channel 0) ahead of the channel's buffered
        // publishes (seen with strace), and frames after a close are discarded, by RabbitMQ as by Mailroom
        // (rabbit_reader.erl ignores everything but close-ok once closing). The raw-socket test in
        // close_in_flight.rs checks that publishes *before* the close are all routed.
        let mut c = RawClient::open_ch1(server.addr);
        c.declare_queue_with(1, &queue, false, false, false);
        c.round_trip(1);
        c.close_connection();
    }
}
