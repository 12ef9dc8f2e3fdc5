//! Power loss (issue 17), with LazyFS: a FUSE file system that keeps every write in its own cache until the
//! writer syncs it and drops the rest on command, which is what a power cut does to a disk. A `kill -9` test
//! (crash.rs) cannot see this: the kernel keeps a killed process's unsynced writes.
//!
//! * `power_cuts_at_random_moments`: ≥ 20 cycles (`MAILROOM_POWER_LOSS_CUTS`), each on a fresh data directory
//!   under a fresh mount: the broker, confirmed publishers into 3 durable queues, consumers acking on two of
//!   them, durable declare/bind/unbind/delete churn on another connection; at a random moment the cut
//!   (broker stopped, unsynced writes dropped, broker killed); then a restart on the same directory and the
//!   checks of durability_common (every confirmed message, every acknowledged definition with its arguments,
//!   nothing deleted back, the broker starts on its own).
//! * `crash_points`: LazyFS kills itself (dropping everything unsynced) right after one kind of operation on
//!   one kind of file: a segment write/fsync/create/unlink, an ack-file write/fsync/unlink, a sled write or
//!   fsync, sled's conf write, a definition copy's write; and during the recovery after a cut: after a
//!   rename, an unlink, a truncate, a write. Then a new mount over the same disk, a restart, the same checks.
//! * `torn_writes`: one write to a segment file, an ack file or sled's log is torn (some parts reach the disk,
//!   some do not, as a power cut in the middle of a write can leave it), LazyFS dies right after; same checks.
//!
//! Runs only when `MAILROOM_LAZYFS` names the LazyFS binary (`make test-power-loss` builds it and sets it;
//! needs /dev/fuse and root); plain `make test` skips these with a note. Each test prints one line per case
//! and a summary with the lost counts, and fails if anything was lost.

mod durability_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use durability_common::*;
use mailroom_tests::lazyfs::{self, torn_op, LazyFs};
use mailroom_tests::Server;
use rand::{Rng, SeedableRng};

fn lazyfs_or_skip(test: &str) -> Option<PathBuf> {
    let bin = lazyfs::bin_from_env();
    if bin.is_none() {
        eprintln!(
            "{test}: skipped: MAILROOM_LAZYFS is not set (`make test-power-loss` builds LazyFS and runs this)"
        );
    }
    bin
}

/// The cut: the broker is frozen, every write it did not sync is dropped, then it is killed.
fn cut(server: &mut Server, fs: &mut LazyFs) -> anyhow::Result<()> {
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGSTOP);
    }
    let r = fs.clear_cache();
    server.kill();
    r
}

fn rng() -> rand::rngs::StdRng {
    let seed = std::env::var("MAILROOM_POWER_LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("random seed {seed} (MAILROOM_POWER_LOSS_SEED={seed} repeats the moments)");
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn base_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mailroom-power-loss")
        .tempdir()
        .expect("temp dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_at_random_moments() {
    let Some(bin) = lazyfs_or_skip("power_cuts_at_random_moments") else {
        return;
    };
    let cuts: u32 = std::env::var("MAILROOM_POWER_LOSS_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut rng = rng();
    let base = base_dir();
    let mut outcomes = Vec::new();
    for cycle in 0..cuts {
        let dir = base.path().join(format!("cut{cycle}"));
        let mut fs = blocking(|| LazyFs::mount(&bin, &dir, "")).expect("mount lazyfs");
        let data = fs.mnt.join("data");
        let mut out = Outcome::default();
        let mut server = match blocking(|| Server::try_start_in(&data, &[])) {
            Ok(s) => s,
            Err(e) => {
                out.name = format!("cut {cycle}");
                out.problems
                    .push(format!("the broker did not start on a fresh mount: {e}"));
                out.print();
                outcomes.push(out);
                continue;
            }
        };
        let w = Workload::start(server.url(), WorkloadOpts::default());
        // Mostly under load; about one cut in ten lands while the queues are being declared.
        let delay = if rng.gen_bool(0.1) {
            rng.gen_range(0..60)
        } else {
            rng.gen_range(300..3000)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let cut_result = blocking(|| cut(&mut server, &mut fs));
        let (ledger, defs, events) = w.stop(Duration::from_secs(15)).await;
        out.name = format!("cut {cycle} after {delay} ms");
        if let Err(e) = cut_result {
            out.problems.push(format!("the cut failed: {e}"));
        }
        let mut defs = defs;
        defs.refusals_open();
        restart_and_check(&data, &ledger, &defs, &mut out).await;
        if out.failures() > 0 {
            out.notes.extend(events.into_iter().take(5));
        }
        out.print();
        let failed = out.failures() > 0;
        outcomes.push(out);
        drop(fs);
        if failed {
            keep_for_inspection(&dir, &format!("cut{cycle}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    summary("power_cuts_at_random_moments", &outcomes);
}

/// With `MAILROOM_POWER_LOSS_KEEP=DIR`: a failed case's files as the broker left them (LazyFS's backing
/// directory, `root/`) are copied to `DIR/<name>`, for a look afterwards.
fn keep_for_inspection(dir: &Path, name: &str) {
    let Ok(keep) = std::env::var("MAILROOM_POWER_LOSS_KEEP") else {
        return;
    };
    let to = Path::new(&keep).join(name);
    let _ = std::fs::create_dir_all(&to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.join("root"))
        .arg(&to)
        .status()
        .is_ok_and(|s| s.success());
    eprintln!(
        "    kept: {} ({})",
        to.display(),
        if ok { "copied" } else { "copy failed" }
    );
}

// ------------------------------------------------------------------------------------------------ crash points

/// Regexes LazyFS matches against the real paths (`<root>/data/...`); it wraps them in `.*…*` (ECMAScript).
/// Short: a whole crash command must fit in the 99 bytes LazyFS reads as one command.
const SEG: &str = r"/[0-9a-f]{16}\.seg$";
const ACK: &str = r"/[0-9a-f]{16}\.ack$";
const SLED_DB: &str = r"/sled/db$";
const SLED_ANY: &str = r"/sled/";
const SLED_CONF: &str = r"/sled/conf$";
/// A file unlinked while open is renamed to .fuse_hidden* by libfuse (the unlink LazyFS sees comes at the
/// last close).
const HIDDEN: &str = r"fuse_hidden";
const DATA: &str = r"/data/";
/// The per-queue definition copy beside the segment files (`queue.def`, storage/src/seglog).
const DEF_COPY: &str = r"/queue\.def$";
/// A deleted queue's directory is renamed to `<id>.deleted` before it is removed.
const DELETED: &str = r"\.deleted$";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum When {
    /// Armed before the broker first starts on the fresh directory.
    Start,
    /// Armed under load, once some thousands of publishes were confirmed.
    Load,
    /// After a cut under load: armed before the restart, fires during its recovery.
    Recovery,
}

struct Crash {
    op: &'static str,
    from: Option<String>,
    to: Option<String>,
}

fn after(op: &'static str, from: &str) -> Crash {
    Crash {
        op,
        from: Some(from.to_string()),
        to: None,
    }
}

/// A rename from a path matching `from` to one matching `to`. LazyFS checks a rename's source only when its
/// `from_rgx` also matches the word "none" (a quirk of its matcher), hence the alternation.
fn renamed(from: &str, to: &str) -> Crash {
    Crash {
        op: "rename",
        from: Some(format!("(none|{from})")),
        to: Some(to.to_string()),
    }
}

/// Any rename (LazyFS then ignores the source: see `renamed`).
fn any_rename() -> Crash {
    Crash {
        op: "rename",
        from: Some(DATA.to_string()),
        to: None,
    }
}

enum Arm {
    Crash(Vec<Crash>),
    /// `[[injection]]` tables for the LazyFS config, given the root.
    Torn(Box<dyn Fn(&Path) -> String>),
}

struct Case {
    name: &'static str,
    when: When,
    arm: Arm,
    /// `Recovery` only: the fault that ends the first run (a torn write, a crash point), so that the
    /// recovery has the work the crash point is about; `None`: a cut at a random moment.
    prepare: Option<Arm>,
}

fn arm_crashes(fs: &mut LazyFs, arm: &Arm, out: &mut Outcome) {
    if let Arm::Crash(points) = arm {
        for c in points {
            // The points are alternatives (e.g. a plain unlink, or FUSE's rename of an open file to
            // `.fuse_hidden…`). The broker keeps running while they are armed one by one, so an
            // earlier one can fire, and LazyFS kill itself, before a later one is acknowledged: the
            // crash the case is about has then happened, and the rest need no arming.
            if fs.fault_fired() || !fs.alive() {
                break;
            }
            let r = blocking(|| fs.arm_crash("after", c.op, c.from.as_deref(), c.to.as_deref()));
            if let Err(e) = r {
                if fs.fault_fired() || !fs.alive() {
                    break;
                }
                out.problems.push(format!("arming the crash point: {e}"));
            }
        }
    }
}

/// What LazyFS logged when its fault fired (or that it died without one).
fn fired_note(fs: &mut LazyFs, out: &mut Outcome) {
    if fs.fault_fired() {
        out.notes.push(format!(
            "fired: {}",
            fs.log_tail(40)
                .lines()
                .filter(|l| l.contains("Triggered fault") || l.contains("will persist"))
                .map(|l| l.split("] ").last().unwrap_or(l).to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    } else if !fs.alive() {
        out.notes
            .push(format!("lazyfs died without firing: {}", fs.log_tail(6)));
    }
}

async fn wait_dead(fs: &mut LazyFs, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while fs.alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !fs.alive()
}

/// Runs one case on a fresh mount under `dir`.
async fn run_case(bin: &Path, dir: &Path, case: &Case, rng: &mut impl Rng) -> Outcome {
    let mut out = Outcome {
        name: case.name.to_string(),
        ..Default::default()
    };
    // The fault that ends the first run; None: a cut at a random moment.
    let first = match case.when {
        When::Recovery => case.prepare.as_ref(),
        _ => Some(&case.arm),
    };
    let injections = match first {
        Some(Arm::Torn(f)) => f(&dir.join("root")),
        _ => String::new(),
    };
    let mut fs = match blocking(|| LazyFs::mount(bin, dir, &injections)) {
        Ok(f) => f,
        Err(e) => {
            out.problems.push(format!("mount: {e}"));
            return out;
        }
    };
    let data = fs.mnt.join("data");
    if case.when == When::Start {
        arm_crashes(&mut fs, &case.arm, &mut out);
    }
    // With `Start`, the first start may itself be cut short by the crash point.
    let mut server = match blocking(|| Server::try_start_in(&data, &[])) {
        Ok(s) => Some(s),
        Err(e) => {
            if case.when != When::Start || fs.alive() {
                out.problems
                    .push(format!("the broker did not start on a fresh mount: {e}"));
            }
            None
        }
    };
    let workload = server
        .as_ref()
        .map(|s| Workload::start(s.url(), WorkloadOpts::default()));
    match first {
        None => {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2500))).await;
            if let Some(s) = server.as_mut() {
                if let Err(e) = blocking(|| cut(s, &mut fs)) {
                    out.problems.push(format!("the cut failed: {e}"));
                }
            }
        }
        Some(arm) => {
            if case.when != When::Start && matches!(arm, Arm::Crash(_)) {
                if let Some(w) = &workload {
                    // Some confirmed data on disk first, so that the crash lands mid-stream.
                    let target = rng.gen_range(1000..6000);
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while lock(&w.shared.ledger).acked.len() < target
                        && fs.alive()
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    arm_crashes(&mut fs, arm, &mut out);
                }
            }
            if !wait_dead(&mut fs, Duration::from_secs(40)).await {
                out.problems.push(
                    "the fault never fired in 40 s (the broker never did that operation on that file)".into(),
                );
                if let Some(s) = server.as_mut() {
                    let _ = blocking(|| cut(s, &mut fs));
                }
            }
            fired_note(&mut fs, &mut out);
        }
    }
    if let Some(mut s) = server.take() {
        s.kill();
    }
    let (ledger, mut defs, events) = match workload {
        Some(w) => w.stop(Duration::from_secs(15)).await,
        None => Default::default(),
    };
    if case.when == When::Recovery {
        if let Err(e) = blocking(|| fs.remount("")) {
            out.problems.push(format!("remount: {e}"));
            return out;
        }
        arm_crashes(&mut fs, &case.arm, &mut out);
        let second = blocking(|| Server::try_start_in(&data, &[]));
        if !wait_dead(&mut fs, Duration::from_secs(10)).await {
            out.problems
                .push("the crash point never fired during the recovery".into());
        }
        fired_note(&mut fs, &mut out);
        if let Ok(mut s) = second {
            s.kill();
        }
    }
    if let Err(e) = blocking(|| fs.remount("")) {
        out.problems.push(format!("remount: {e}"));
        return out;
    }
    // A change refused because the disk went away under the running broker may have reached the disk.
    defs.refusals_open();
    restart_and_check(&data, &ledger, &defs, &mut out).await;
    if out.failures() > 0 {
        out.notes.extend(events.into_iter().take(5));
    }
    out
}

async fn run_cases(test: &str, cases: Vec<Case>) {
    let Some(bin) = lazyfs_or_skip(test) else {
        return;
    };
    let mut rng = rng();
    let base = base_dir();
    let mut outcomes = Vec::new();
    let only = std::env::var("MAILROOM_POWER_LOSS_CASE").unwrap_or_default();
    for (i, case) in cases.iter().enumerate() {
        if !case.name.contains(only.as_str()) {
            continue;
        }
        let dir = base.path().join(format!("case{i}"));
        let out = run_case(&bin, &dir, case, &mut rng).await;
        out.print();
        outcomes.push(out);
        let _ = std::fs::remove_dir_all(&dir);
    }
    summary(test, &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_points() {
    use When::*;
    let crash = |v: Vec<Crash>| Arm::Crash(v);
    let cases = vec![
        Case {
            name: "after a segment write",
            when: Load,
            prepare: None,
            arm: crash(vec![after("write", SEG)]),
        },
        Case {
            name: "after a segment fsync",
            when: Load,
            prepare: None,
            arm: crash(vec![after("fsync", SEG)]),
        },
        Case {
            name: "after a segment file is created",
            when: Load,
            prepare: None,
            arm: crash(vec![after("create", SEG)]),
        },
        Case {
            name: "after a segment file is unlinked",
            when: Load,
            prepare: None,
            arm: crash(vec![after("unlink", SEG), renamed(r"\.seg$", HIDDEN)]),
        },
        Case {
            name: "after an ack-file write",
            when: Load,
            prepare: None,
            arm: crash(vec![after("write", ACK)]),
        },
        Case {
            name: "after an ack-file fsync",
            when: Load,
            prepare: None,
            arm: crash(vec![after("fsync", ACK)]),
        },
        Case {
            name: "after an ack file is unlinked",
            when: Load,
            prepare: None,
            arm: crash(vec![after("unlink", ACK), renamed(r"\.ack$", HIDDEN)]),
        },
        Case {
            name: "after a sled log write",
            when: Load,
            prepare: None,
            arm: crash(vec![after("write", SLED_DB)]),
        },
        Case {
            name: "after a sled fsync",
            when: Load,
            prepare: None,
            arm: crash(vec![after("fsync", SLED_ANY)]),
        },
        Case {
            name: "after sled's conf is written (first start)",
            when: Start,
            prepare: None,
            arm: crash(vec![after("write", SLED_CONF)]),
        },
        Case {
            name: "after a definition copy is written",
            when: Start,
            prepare: None,
            arm: crash(vec![after("write", DEF_COPY)]),
        },
        Case {
            name: "after a definition copy is synced",
            when: Start,
            prepare: None,
            arm: crash(vec![after("fsync", DEF_COPY)]),
        },
        Case {
            name: "after a deleted queue's directory is renamed",
            when: Load,
            prepare: None,
            arm: crash(vec![Crash {
                op: "rename",
                from: Some(DATA.to_string()),
                to: Some(DELETED.to_string()),
            }]),
        },
        Case {
            name: "after a rename during recovery",
            when: Recovery,
            prepare: None,
            arm: crash(vec![any_rename()]),
        },
        Case {
            name: "after an unlink during recovery (of an ack file left without its segment)",
            when: Recovery,
            prepare: Some(crash(vec![after("unlink", SEG)])),
            arm: crash(vec![after("unlink", DATA), renamed(DATA, HIDDEN)]),
        },
        Case {
            name: "after a truncate during recovery (of a torn segment tail)",
            when: Recovery,
            prepare: Some(Arm::Torn(Box::new(|r| {
                torn_op(&first_segment(r, 3, "seg"), 5, 3, &[1])
            }))),
            arm: crash(vec![after("truncate", DATA)]),
        },
        Case {
            name: "after a write during recovery",
            when: Recovery,
            prepare: None,
            arm: crash(vec![after("write", DATA)]),
        },
    ];
    run_cases("crash_points", cases).await;
}

/// Queue ids are handed out 1, 2, 3 … on a fresh store and the main queues are declared first, in order;
/// a queue's first segment is named after seq 0.
fn first_segment(root: &Path, queue_id: u32, ext: &str) -> String {
    root.join(format!("data/messages/{queue_id:08x}/{:016x}.{ext}", 0u64))
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_writes() {
    use When::*;
    // dur-q2 (queue id 3) has no consumer: its first segment keeps growing, so its nth write exists.
    let cases = vec![
        Case {
            name: "segment: the first write torn, only its first third on disk",
            when: Load,
            prepare: None,
            arm: Arm::Torn(Box::new(|r| torn_op(&first_segment(r, 3, "seg"), 1, 3, &[1]))),
        },
        Case {
            name: "segment: the 5th write torn, a hole in its middle third",
            when: Load,
            prepare: None,
            arm: Arm::Torn(Box::new(|r| torn_op(&first_segment(r, 3, "seg"), 5, 3, &[1, 3]))),
        },
        Case {
            name: "segment: the 12th write torn, its first quarter missing",
            when: Load,
            prepare: None,
            arm: Arm::Torn(Box::new(|r| {
                torn_op(&first_segment(r, 3, "seg"), 12, 4, &[2, 3, 4])
            })),
        },
        Case {
            name: "ack file: the 3rd write torn in half",
            when: Load,
            prepare: None,
            arm: Arm::Torn(Box::new(|r| torn_op(&first_segment(r, 1, "ack"), 3, 2, &[1]))),
        },
        Case {
            name: "definition copy: its first write torn, half of it on disk",
            when: Load,
            prepare: None,
            arm: Arm::Torn(Box::new(|r| {
                let def = r.join("data/messages/00000003/queue.def");
                torn_op(&def.display().to_string(), 1, 2, &[1])
            })),
        },
        Case {
            name: "sled log: the 30th write torn, half of it on disk",
            when: Load,
            prepare: None,
            arm: Arm::Torn(Box::new(|r| {
                torn_op(&r.join("data/sled/db").display().to_string(), 30, 2, &[1])
            })),
        },
    ];
    run_cases("torn_writes", cases).await;
}
