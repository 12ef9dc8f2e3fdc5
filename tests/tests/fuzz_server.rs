//! The black-box server fuzzer (issue 18; see `mailroom_tests::fuzz_server`): valid handshakes, then mutated
//! frame sequences over real TCP against the real binary, with a control connection that must keep
//! round-tripping after every fuzzed connection and the broker's RSS sampled.
//!
//! `cargo test` runs it with a fixed seed for about a minute. `make fuzz-server SECONDS=N SEED=S` runs it
//! longer (`MAILROOM_FUZZ_SECONDS`, `MAILROOM_FUZZ_SEED`, strict about the one-second control limit);
//! `MAILROOM_FUZZ_CASE=i` replays a seed's run up to case `i`. A failure prints the seed, the case and the hex bytes of
//! the connection that caused it.

use std::time::Duration;

use mailroom_tests::fuzz_server::{self, Config};
use mailroom_tests::Server;

#[test]
fn fuzzed_connections_never_stall_or_crash_the_broker() {
    let cfg = Config::from_env(60);
    let mut server = Server::start();
    let result = fuzz_server::run(server.addr, server.pid(), &cfg);
    match result {
        Ok(report) => {
            println!("fuzz_server: {report}");
            assert!(report.connections > 0, "no case ran");
            assert!(
                report.closed_by_server > 0,
                "the broker never objected: the fuzzer sends nothing wrong"
            );
            // Whatever the clients did, SIGTERM still stops the broker cleanly.
            let status = server
                .signal_and_wait(libc::SIGTERM, Duration::from_secs(30))
                .expect("the broker stops on SIGTERM after the fuzz run");
            assert!(status.success(), "exit status after SIGTERM: {status}");
        }
        Err(failure) => {
            let log = server.log_lines();
            let tail = &log[log.len().saturating_sub(40)..];
            panic!("{failure}\nlast broker log lines:\n{}", tail.join("\n"));
        }
    }
}
