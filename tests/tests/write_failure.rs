//! Write failures (issue 17), end to end: the broker runs with the faultfs shim (`tests/shim/faultfs.c`,
//! `LD_PRELOAD`), which makes writes or syncs of one kind of store file fail with ENOSPC or EIO while the test
//! says so. Each case, on a fresh data directory, under confirmed publishers (1 KiB persistent, window 100)
//! into 3 durable queues and consumers acking on two of them:
//!
//! 1. confirms flow; then the fault is switched on for one kind of file (segment files, ack files, sled's
//!    files, per-queue definition copies) and one kind of call (writes, syncs), either for good or once;
//! 2. a durable queue.declare is sent while the fault is on: it must be answered, with declare-ok or with a
//!    clear AMQP error (then it must have changed nothing);
//! 3. with segment faults, publishes the failure covered are nacked, and none sent after the first failure
//!    is acked while it lasts (that would be a durability lie);
//! 4. the fault is switched off: new publishes are confirmed again and a new durable declare succeeds,
//!    without a restart; every publish got its confirm or nack;
//! 5. the broker is killed and restarted without the shim: every confirmed message is there (the sync cases
//!    use the shim's fsyncgate model: a failed sync zeroes what it would have covered, as Linux may drop
//!    those pages, so a confirm given on the strength of a later successful sync shows up as a loss here),
//!    every acknowledged definition is there, a refused one is not.
//!
//! Runs when `MAILROOM_WRITE_FAULTS=1` (`make test-power-loss` and `make test-write-faults` set it); needs a
//! C compiler (`cc`) for the shim. Prints one block per case and fails with the counts if any case failed.

mod durability_common;

use std::time::{Duration, Instant};

use durability_common::*;
use lapin::options::QueueDeclareOptions;
use mailroom_tests::faultfs::{Count, FaultFs, Ops};
use mailroom_tests::Server;

/// Paths relative to the data directory (POSIX ERE, matched by the shim). Each kind includes its temporary
/// siblings (`<name>.repair`, `sled.new`, …): a full disk fails those writes too.
const SEG: &str = r"^messages/[0-9a-f]{8}/[0-9a-f]{16}\.seg(\.[a-z]+)?$";
const ACK: &str = r"^messages/[0-9a-f]{8}/[0-9a-f]{16}\.ack(\.[a-z]+)?$";
const SLED: &str = r"^sled(\.[a-z]+)?(/|$)";
/// The per-queue definition copy beside the segment files (`queue.def`, storage/src/seglog).
const DEF_COPY: &str = r"^messages/[0-9a-f]{8}/queue\.def(\.[a-z]+)?$";

struct Case {
    name: &'static str,
    regex: &'static str,
    errno: &'static str,
    ops: &'static [Ops],
    count: Count,
    /// fsyncgate model for sync failures.
    drop: bool,
    /// Every publish needs this kind of file, so publishes the failure covered must be nacked.
    covers_publishes: bool,
}

/// Every file under the data directory.
const ANY: &str = "^";

fn cases() -> Vec<Case> {
    use Count::*;
    const W: &[Ops] = &[Ops::Write];
    const S: &[Ops] = &[Ops::Sync];
    const WS: &[Ops] = &[Ops::Write, Ops::Sync];
    let c = |name, regex, errno, ops, count, drop, covers_publishes| Case {
        name,
        regex,
        errno,
        ops,
        count,
        drop,
        covers_publishes,
    };
    #[rustfmt::skip]
    let cases = vec![
        c("segment writes fail with ENOSPC (disk full)", SEG, "ENOSPC", W, Every, false, true),
        c("segment writes fail with EIO", SEG, "EIO", W, Every, false, true),
        c("segment syncs fail with EIO", SEG, "EIO", S, Every, true, true),
        c("one segment sync fails with EIO, its pages dropped", SEG, "EIO", S, Next(1), true, false),
        c("ack-file writes fail with ENOSPC", ACK, "ENOSPC", W, Every, false, false),
        c("ack-file writes fail with EIO", ACK, "EIO", W, Every, false, false),
        c("one ack-file sync fails with EIO, its pages dropped", ACK, "EIO", S, Next(1), true, false),
        c("sled writes fail with ENOSPC", SLED, "ENOSPC", W, Every, false, false),
        c("sled writes fail with EIO", SLED, "EIO", W, Every, false, false),
        c("sled syncs fail with EIO", SLED, "EIO", S, Every, true, false),
        c("one sled sync fails with EIO, its pages dropped", SLED, "EIO", S, Next(1), true, false),
        c("definition-copy writes fail with ENOSPC", DEF_COPY, "ENOSPC", W, Every, false, false),
        c("one definition-copy sync fails with EIO, its pages dropped", DEF_COPY, "EIO", S, Next(1), true, false),
        c("every write of every store file fails with ENOSPC (disk full)", ANY, "ENOSPC", W, Every, false, true),
        c("1 in 100 writes and syncs of any store file fail with EIO, pages dropped", ANY, "EIO", WS, OneIn(100), true, false),
    ];
    cases
}

/// How long the test waits for something that must happen (an answer, confirms after the fault): a
/// deadline against a broker that is stuck, not a timing claim.
fn patience() -> Duration {
    Duration::from_secs(
        std::env::var("MAILROOM_FAULT_PATIENCE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    )
}

/// How a declare was answered (printed with `{:?}` in the reports).
#[derive(Debug)]
#[allow(dead_code)]
enum Answer {
    Ok,
    Refused(u16, String),
    Lost(String),
    Silent,
}

/// A durable queue.declare on its own connection, recorded in `defs` like the churn's.
async fn declare(url: &str, name: &str, defs: &std::sync::Mutex<Defs>) -> Answer {
    let key = queue_key(name);
    let args = table(&[("x-dead-letter-exchange", s("wf-dlx"))]);
    {
        let mut d = lock(defs);
        d.entity(&key, || Entity {
            kind: Kind::Queue,
            name: name.to_string(),
            queue: String::new(),
            n: 0,
            args: args.clone(),
            state: None,
            in_flight: 0,
        });
        d.begin(std::slice::from_ref(&key));
    }
    let attempt = async {
        let conn = connect(url).await?;
        let ch = conn.create_channel().await?;
        let r = ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await;
        let _ = conn.close(200, "bye".into()).await;
        r.map(drop)
    };
    match tokio::time::timeout(patience(), attempt).await {
        Err(_) => Answer::Silent,
        Ok(Ok(())) => {
            lock(defs).ok(std::slice::from_ref(&key), true);
            Answer::Ok
        }
        Ok(Err(e)) => match amqp_code(&e) {
            Some((code, text)) => {
                lock(defs).refused(
                    std::slice::from_ref(&key),
                    format!("declare {name}: {code} {text}"),
                );
                Answer::Refused(code, text)
            }
            None => Answer::Lost(e.to_string()),
        },
    }
}

async fn run_case(case: &Case) -> Outcome {
    let mut out = Outcome {
        name: case.name.to_string(),
        ..Default::default()
    };
    let tmp = tempfile::Builder::new()
        .prefix("mailroom-write-failure")
        .tempdir()
        .expect("temp dir");
    let data = tmp.path().join("data");
    let ff = FaultFs::new(&tmp.path().join("faultfs"), &data).expect("build the faultfs shim");
    let env = ff.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut server = match blocking(|| Server::try_start_with_env(&data, &[], &env)) {
        Ok(s) => s,
        Err(e) => {
            out.problems
                .push(format!("the broker did not start with the shim: {e}"));
            return out;
        }
    };
    let url = server.url();
    let probes = std::sync::Mutex::new(Defs::default());
    let w = Workload::start(
        url.clone(),
        WorkloadOpts {
            churn_rounds: 0,
            ..Default::default()
        },
    );
    let sh = w.shared.clone();
    let acked = || lock(&sh.ledger).acked.len();
    if !wait_until(patience(), || acked() >= 1500).await {
        out.problems.push(format!(
            "only {} publishes confirmed before the fault (needed 1500)",
            acked()
        ));
    }

    // The fault.
    w.set_phase(1);
    ff.fail(case.errno, case.ops, case.count, case.drop, case.regex)
        .expect("switch the fault on");
    let during = declare(&url, "wf-during", &probes);
    let hit = async { wait_until(Duration::from_secs(30), || !ff.injections().is_empty()).await };
    let (during, hit) = tokio::join!(during, hit);
    if !hit {
        out.problems.push(format!(
            "the fault never hit: no {:?} call on a file matching {} in 30 s",
            case.ops, case.regex
        ));
    }
    w.set_phase(2);
    match case.count {
        Count::Every => {
            // Held until the broker has nacked something (bounded: some cases have nothing to nack).
            let covered = || lock(&sh.ledger).nacked_in(2) >= 50;
            wait_until(Duration::from_secs(5), covered).await;
        }
        Count::OneIn(_) => tokio::time::sleep(Duration::from_secs(5)).await,
        Count::Next(_) => tokio::time::sleep(Duration::from_secs(1)).await,
    }
    w.set_phase(3);
    ff.off().expect("switch the fault off");
    let injected = ff.injections();

    // Back to service without a restart.
    let recovered = wait_until(patience(), || lock(&sh.ledger).acked_sent_in(3) >= 1000).await;
    if !recovered {
        let l = w.ledger();
        out.problems.push(format!(
            "not back in service: {} of the publishes sent after the fault stopped were acked within {:?} \
             ({} nacked); needed 1000",
            l.acked_sent_in(3),
            patience(),
            l.nacked
                .iter()
                .filter(|(id, _)| l.sent.get(id).map(|s| s.1) == Some(3))
                .count()
        ));
    }
    let after = declare(&url, "wf-after", &probes).await;
    if !matches!(after, Answer::Ok) {
        out.problems.push(format!(
            "a durable queue.declare after the fault: {after:?} (expected declare-ok)"
        ));
    }
    match &during {
        Answer::Ok | Answer::Refused(..) => {}
        other => out.problems.push(format!(
            "a durable queue.declare while the fault was on: {other:?} (expected declare-ok or an AMQP error)"
        )),
    }
    let (ledger, mut defs, events) = w.stop(patience()).await;
    let unanswered = ledger.unanswered();
    if unanswered > 0 {
        out.problems.push(format!(
            "{unanswered} publishes never got a confirm or a nack (the publishers waited {:?})",
            patience()
        ));
    }
    let nacked_covered = ledger
        .nacked
        .iter()
        .filter(|(id, p)| **p >= 1 && ledger.sent.get(id).map(|s| s.1 <= 2) == Some(true))
        .count();
    let acked_during: Vec<u64> = ledger
        .acked
        .iter()
        .filter(|(id, p)| {
            **p == 2 && ledger.sent.get(id).map(|s| s.1) == Some(2) && !ledger.consumer_acked.contains(id)
        })
        .map(|(id, _)| *id)
        .collect();
    if case.covers_publishes {
        if nacked_covered == 0 {
            out.problems
                .push("no publish was nacked although the store could not write or sync any message".into());
        }
        if !acked_during.is_empty() {
            out.problems.push(format!(
                "{} publishes sent after the first failure were acked while the fault lasted",
                acked_during.len()
            ));
        }
    }
    out.notes.push(format!(
        "{} failures injected ({}); declare during the fault: {during:?}; {} publishes nacked, {} acked during the fault",
        injected.len(),
        injected.iter().take(2).cloned().collect::<Vec<_>>().join("; "),
        ledger.nacked.len(),
        ledger.acked.values().filter(|p| **p == 2).count()
    ));

    // Nothing confirmed lost: kill, restart without the shim, check.
    server.kill();
    for (k, e) in lock(&probes).entities.clone() {
        defs.entities.insert(k, e);
    }
    restart_and_check(&data, &ledger, &defs, &mut out).await;
    if out.failures() > 0 {
        out.notes.extend(events.into_iter().take(5));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failures() {
    if std::env::var("MAILROOM_WRITE_FAULTS").as_deref() != Ok("1") {
        eprintln!(
            "write_failures: skipped: MAILROOM_WRITE_FAULTS is not 1 (`make test-write-faults` runs it)"
        );
        return;
    }
    let only = std::env::var("MAILROOM_WRITE_FAULTS_CASE").unwrap_or_default();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for case in cases().iter().filter(|c| c.name.contains(only.as_str())) {
        let out = run_case(case).await;
        out.print();
        outcomes.push(out);
    }
    eprintln!("({} cases in {:?})", outcomes.len(), started.elapsed());
    summary("write_failures", &outcomes);
}
