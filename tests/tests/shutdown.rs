//! Issue 18: shutdown that always works, and a stall detector. Signals are handled on an OS thread of their
//! own, so even a runtime whose every worker is stuck cannot keep the broker from stopping: a graceful stop
//! within `--shutdown-timeout`, else a logged forced exit with code 70.

use std::time::Duration;

use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

#[test]
fn sigterm_with_every_worker_stuck_is_a_logged_forced_exit() {
    let tmp = tempfile::tempdir().unwrap();
    // The debug build's test hook spins every runtime worker forever 300 ms after start.
    let mut server = Server::try_start_with_env(
        &tmp.path().join("data"),
        &["--shutdown-timeout", "2"],
        &[("MAILROOM_TEST_STALL_AFTER_MS", "300")],
    )
    .expect("broker starts");
    // The stall detector notices the runtime stopped scheduling and says how long.
    let line = server
        .wait_for_log("runtime stalled", Duration::from_secs(20))
        .expect("the stall detector logs the stall");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("stalled_ms="), "{line}");
    let status = server
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(20))
        .expect("a stuck broker still exits after SIGTERM");
    assert_eq!(status.code(), Some(70), "forced exit code: {status}");
    let forced = server.wait_for_log("forced exit", Duration::from_secs(5));
    assert!(forced.is_some(), "the forced exit is logged");
}

#[test]
fn sigint_is_a_graceful_stop_like_sigterm() {
    let mut server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.round_trip(1);
    let status = server
        .signal_and_wait(libc::SIGINT, Duration::from_secs(20))
        .expect("the broker stops on SIGINT");
    assert!(status.success(), "{status}");
    // The open connection was told: connection.close 320 CONNECTION_FORCED.
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 320, "{text}");
}

#[test]
fn second_signal_during_a_slow_shutdown_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::try_start_with_env(
        &tmp.path().join("data"),
        &["--shutdown-timeout", "600"],
        &[("MAILROOM_TEST_STALL_AFTER_MS", "200")],
    )
    .expect("broker starts");
    server
        .wait_for_log("runtime stalled", Duration::from_secs(20))
        .expect("stalled");
    let pid = server.pid();
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    server
        .wait_for_log("signal received", Duration::from_secs(10))
        .expect("first signal seen");
    let status = server
        .signal_and_wait(libc::SIGINT, Duration::from_secs(20))
        .expect("the second signal ends it long before the 600 s grace period");
    assert_eq!(status.code(), Some(70), "{status}");
}
