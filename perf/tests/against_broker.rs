//! Runs mailroom-perf against the workspace's own broker (the real `mailroom` binary on
//! port 0 with a temporary data dir) and checks that it measures, and that it catches
//! injected losses and duplicates.
//!
//! `MAILROOM_PERF_BROKER_BIN=/path/to/mailroom` uses that binary instead of building one.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use mailroom_perf::{run_blocking, Args, Report};

struct Broker {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker_bin() -> std::path::PathBuf {
    match std::env::var_os("MAILROOM_PERF_BROKER_BIN") {
        Some(p) => p.into(),
        None => mailroom_tests::mailroom_bin(),
    }
}

/// Starts `mailroom --listen 127.0.0.1:0 --data-dir <tmp>` and reads the port from its log
/// (as mailroom-tests' Server::try_start_in does).
fn start_broker() -> Broker {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(broker_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log-level",
            "info",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env_remove("MAILROOM_LISTEN")
        .env_remove("MAILROOM_DATA_DIR")
        .env_remove("MAILROOM_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mailroom");
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line); // keep draining even when nobody listens
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    const MARK: &str = "accepting AMQP connections addr=";
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("broker did not start");
        };
        if let Some(i) = line.find(MARK) {
            let addr = line[i + MARK.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            return Broker {
                child,
                addr,
                _dir: dir,
            };
        }
    }
}

fn uri(b: &Broker) -> String {
    format!("amqp://guest:guest@{}/%2f", b.addr)
}

fn run(b: &Broker, extra: &[&str]) -> Report {
    let u = uri(b);
    let mut argv = vec!["mailroom-perf", "--uri", &u, "--quiet", "--threads", "2"];
    argv.extend_from_slice(extra);
    let settings = Args::try_parse_from(argv).unwrap().resolve().unwrap();
    run_blocking(settings).expect("run completes")
}

fn json_u64(json: &str, field: &str) -> u64 {
    let key = format!("\"{field}\":");
    let i = json.find(&key).unwrap_or_else(|| panic!("{field} in {json}")) + key.len();
    json[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn clean_run_with_confirms_and_manual_ack_is_ok() {
    let b = start_broker();
    let r = run(&b, &["--count", "3000", "--confirm", "50", "--size", "300"]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.published, 3000);
    assert_eq!(r.confirmed, 3000);
    assert_eq!((r.unconfirmed, r.nacked), (0, 0));
    assert_eq!(r.consumed, 3000);
    assert!(r.drained);
    assert_eq!((r.lost, r.duplicated, r.out_of_order), (0, 0, 0));
    assert_eq!(r.latency_samples, 3000);
    assert!(r.latency_us.p50 > 0.0 && r.latency_us.max >= r.latency_us.p99);
    assert!(r.cpu_s > 0.0 && r.cpu_ns_per_msg > 0.0);
    assert_eq!(r.exit_code(), 0);
    // Phases: what came while publishing plus the drain is everything.
    assert_eq!(r.consumed_publishing + r.consumed_after, r.consumed);
    assert_eq!(r.routed, 3000);
    assert_eq!(r.backlog_end, 0);
    assert!(r.backlog_publish_end <= 3000);
    assert!(r.latency_publishing_samples <= r.latency_samples);
    assert_eq!(r.queue_depth_end, Some(0));
    // Mailroom proposes a 60 s heartbeat; the tool takes it.
    assert_eq!(r.heartbeat_s, 60);
    assert_eq!((r.blocks(), r.producer_flow.len()), (0, 1));
    assert!(r.broker.is_none());
}

#[test]
fn watches_the_broker_process() {
    let b = start_broker();
    let pid = b.child.id().to_string();
    let r = run(&b, &["--count", "2000", "--broker-pid", &pid, "--heartbeat", "5"]);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    let st = r.broker.as_ref().expect("broker figures");
    assert_eq!(st.pid, b.child.id());
    assert_eq!(st.name, "mailroom");
    assert!(st.rss_start_kb > 0 && st.rss_peak_kb >= st.rss_start_kb && st.rss_end_kb > 0);
    assert!(st.samples >= 2 && st.cpu_s >= 0.0 && !st.exited);
    assert_eq!(r.heartbeat_s, 5);
    let j = r.to_json();
    for f in [
        "\"rss_peak_kb\":",
        "\"cpu_ns_per_consumed\":",
        "\"cpu_ns_per_published\":",
    ] {
        assert!(j.contains(f), "{f} in {j}");
    }
    // An unknown pid is an error before anything runs.
    let u = uri(&b);
    let settings = Args::try_parse_from([
        "mailroom-perf",
        "--uri",
        &u,
        "--quiet",
        "--count",
        "1",
        "--broker-pid",
        "999999999",
    ])
    .unwrap()
    .resolve()
    .unwrap();
    let e = run_blocking(settings).unwrap_err();
    assert!(format!("{e:#}").contains("999999999"), "{e:#}");
}

#[test]
fn fanout_topic_multi_ack_and_autoack_deliver_everything() {
    let b = start_broker();
    // Fanout: every one of 3 queues gets every message of both producers.
    let r = run(
        &b,
        &[
            "-t",
            "fanout",
            "--queues",
            "3",
            "-x",
            "2",
            "-y",
            "3",
            "--count",
            "500",
            "--multi-ack",
            "7",
            "--prefetch",
            "20",
        ],
    );
    assert_eq!((r.published, r.expected, r.consumed), (1000, 3000, 3000));
    assert_eq!((r.lost, r.duplicated), (0, 0), "{r:?}");
    // Topic, 2 consumers competing on one queue, autoack.
    let r = run(
        &b,
        &[
            "-t",
            "topic",
            "--queues",
            "1",
            "-x",
            "2",
            "-y",
            "2",
            "--count",
            "500",
            "--autoack",
            "--cleanup",
        ],
    );
    assert_eq!((r.published, r.consumed), (1000, 1000));
    assert_eq!((r.lost, r.duplicated, r.exit_code()), (0, 0, 0), "{r:?}");
}

#[test]
fn rate_limit_paces_publishing() {
    let b = start_broker();
    // Both pacings: a timerfd per message (the default) and tokio's 1 ms timer.
    for pacing in ["even", "ms"] {
        let r = run(&b, &["--rate", "2000", "--duration", "1.5", "--pacing", pacing]);
        // ~3000 messages in 1.5 s; allow slack for a loaded machine.
        assert!((2500..=3100).contains(&r.published), "{pacing}: {}", r.published);
        assert_eq!((r.lost, r.exit_code()), (0, 0), "{pacing}");
        assert_eq!(r.pacing.as_deref(), Some(pacing));
    }
}

#[test]
fn publish_then_drain_scenario() {
    let b = start_broker();
    let r = run(&b, &["--scenario", "S6", "--count", "2000"]);
    assert_eq!((r.published, r.confirmed, r.consumed), (2000, 2000, 2000));
    assert!(r.publish_rate > 0.0 && r.consume_rate > 0.0);
    assert_eq!(r.exit_code(), 0, "{r:?}");
    // Nothing is consumed while publishing; the broker accepted everything before the drain.
    assert!(r.consume_after_publish);
    assert_eq!((r.consumed_publishing, r.consumed_after), (0, 2000));
    assert_eq!((r.backlog_publish_end, r.backlog_end), (2000, 0));
    assert_eq!(r.queue_depth_publish_end, Some(2000));
    assert!(r.drain_rate > 0.0 && !r.fell_behind());
}

#[test]
fn detects_injected_loss_in_core_and_binary() {
    let b = start_broker();
    let r = run(
        &b,
        &[
            "--count",
            "1000",
            "--inject-loss-every",
            "100",
            "--drain-timeout",
            "1",
        ],
    );
    assert_eq!(r.published, 1000);
    assert_eq!(r.consumed, 990);
    assert_eq!(r.lost, 10);
    assert!(!r.drained);
    assert_eq!(r.exit_code(), 2);

    let out = Command::new(env!("CARGO_BIN_EXE_mailroom-perf"))
        .args(["--uri", &uri(&b), "--json", "--quiet", "--count", "500"])
        .args(["--inject-loss-every", "50", "--drain-timeout", "1"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{json}");
    assert_eq!(json_u64(&json, "lost"), 10, "{json}");
    assert!(json.contains("\"ok\":false"));
}

#[test]
fn detects_injected_duplicates_in_core_and_binary() {
    let b = start_broker();
    let r = run(&b, &["--count", "1000", "--inject-duplicate-every", "100"]);
    assert_eq!(r.published, 1000);
    assert_eq!(r.consumed, 1010);
    assert_eq!((r.duplicated, r.duplicated_redelivered, r.lost), (10, 0, 0));
    assert_eq!(r.exit_code(), 2);

    let out = Command::new(env!("CARGO_BIN_EXE_mailroom-perf"))
        .args(["--uri", &uri(&b), "--json", "--quiet", "--count", "500"])
        .args(["--inject-duplicate-every", "100", "--confirm", "10"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{json}");
    assert_eq!(json_u64(&json, "duplicated"), 5, "{json}");
    assert_eq!(json_u64(&json, "lost"), 0, "{json}");
}

#[test]
fn unreachable_broker_is_an_error_exit() {
    let out = Command::new(env!("CARGO_BIN_EXE_mailroom-perf"))
        .args(["--uri", "amqp://127.0.0.1:1/", "--count", "1", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting"));
}
