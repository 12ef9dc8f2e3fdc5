//! Issue 14's web console, end to end in real headless Chromium (Debian's `chromium`, driven by
//! playwright-core; both installed by `make test`: the Makefile's console-deps). The script
//! tests/console/console_test.js logs in, declares a queue with a dead-letter queue, creates a binding in
//! the binding editor and tests the route, publishes, sees the message counted, browses the queue (the
//! message stays), dead-letters it, finds it in the dead-letter view, redrives it and waits for the
//! progress bar to finish, closes an AMQP connection from the connections page, adds a user and a policy,
//! and looks up a trace. A screenshot of each page goes to target/console-screenshots/ (ignored).

use std::process::Command;

use mailroom_tests::raw::RawClient;
use mailroom_tests::{target_dir, workspace_root, Server};

#[test]
fn console_in_headless_chromium() {
    let root = workspace_root();
    let modules = root.join(".tools/playwright/node_modules");
    assert!(
        modules.join("playwright-core").exists(),
        "playwright-core is missing: run `make test` (it installs it into .tools/playwright)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run `make test` (it installs Debian's chromium)"
    );
    let server = Server::start();
    // A connection for the page to close.
    let _conn = RawClient::open_ch1(server.addr);
    let shots = target_dir().join("console-screenshots");
    let out = Command::new("node")
        .arg(root.join("tests/console/console_test.js"))
        .arg(server.http_url())
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("console ok"),
        "the console script failed (screenshots in {}):\n{stdout}\n{stderr}",
        shots.display()
    );
    for page in [
        "exchange",
        "queues",
        "queue",
        "dead-letters",
        "redrive",
        "overview",
        "connections",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
