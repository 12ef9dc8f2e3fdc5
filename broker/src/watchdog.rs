//! Guards that work even when the async runtime does not: signal handling on a thread of its own (a graceful
//! stop within the grace period, else a logged forced exit) and a stall detector that notices when the
//! runtime stops scheduling.
//!
//! Both run on plain OS threads, because the failure they guard against is a runtime whose workers are all
//! busy: then no task runs, tokio's own signal streams are never polled and its timers never fire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How often the runtime ticks the stall detector.
pub const TICK: Duration = Duration::from_millis(100);
/// How long without a tick counts as a stall (ten ticks: a loaded machine delays a tick, not ten).
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// Exit code of a forced exit (graceful shutdown did not finish in time, or a second signal).
pub const FORCED_EXIT_CODE: i32 = 70;

static STALLS: AtomicU64 = AtomicU64::new(0);

/// What SIGHUP runs (certificate reloads), in the order registered.
type ReloadHook = Box<dyn Fn() + Send + Sync>;
static RELOAD_HOOKS: Mutex<Vec<ReloadHook>> = Mutex::new(Vec::new());

/// Registers something to run on SIGHUP (on the signal thread; it must not block for long).
pub fn on_reload(hook: impl Fn() + Send + Sync + 'static) {
    RELOAD_HOOKS.lock().push(Box::new(hook));
}

/// Runs the SIGHUP hooks now.
pub fn run_reload_hooks() {
    for hook in RELOAD_HOOKS.lock().iter() {
        hook();
    }
}

/// Number of runtime stalls seen since start (for the operators' metrics).
pub fn stall_count() -> u64 {
    STALLS.load(Ordering::Relaxed)
}

/// Starts the signal thread: the first SIGTERM or SIGINT cancels `shutdown` (the graceful stop) and arms a
/// deadline of `grace`; if the process still runs then, or a second signal comes, it logs and exits with
/// [`FORCED_EXIT_CODE`]. SIGHUP runs the reload hooks ([`on_reload`]: TLS certificates) and nothing else.
/// Install it before anything slow (opening the store), so an early signal counts.
pub fn install_signal_thread(shutdown: CancellationToken, grace: Duration) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("mailroom-signals".into())
        .spawn(move || {
            let mut first = true;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    info!("SIGHUP received: reloading TLS certificates");
                    run_reload_hooks();
                    continue;
                }
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                if first {
                    first = false;
                    info!(
                        signal = name,
                        grace_secs = grace.as_secs_f64(),
                        "signal received: shutting down"
                    );
                    shutdown.cancel();
                    std::thread::Builder::new()
                        .name("mailroom-shutdown-deadline".into())
                        .spawn(move || {
                            std::thread::sleep(grace);
                            error!(
                                grace_secs = grace.as_secs_f64(),
                                "graceful shutdown did not finish within the grace period: forced exit \
                                 (confirmed messages are on disk; unconfirmed ones may be lost)"
                            );
                            std::process::exit(FORCED_EXIT_CODE);
                        })
                        .ok();
                } else {
                    error!(signal = name, "second signal during shutdown: forced exit");
                    std::process::exit(FORCED_EXIT_CODE);
                }
            }
        })?;
    Ok(())
}

/// Starts the stall detector: a runtime task stamps the time every [`TICK`], an OS thread checks the stamp
/// and logs ERROR when it is older than [`STALL_AFTER`] (once per stall), and again with the stall's length
/// when ticks resume. Must be called from inside the runtime.
pub fn spawn_stall_detector() {
    let epoch = Instant::now();
    let last_tick = Arc::new(AtomicU64::new(0));
    let stamp = last_tick.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            stamp.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    });
    std::thread::Builder::new()
        .name("mailroom-watchdog".into())
        .spawn(move || {
            let mut stalled_since: Option<u64> = None;
            loop {
                std::thread::sleep(TICK);
                let now = epoch.elapsed().as_millis() as u64;
                let last = last_tick.load(Ordering::Relaxed);
                let lag = now.saturating_sub(last);
                match stalled_since {
                    None if lag > STALL_AFTER.as_millis() as u64 => {
                        STALLS.fetch_add(1, Ordering::Relaxed);
                        stalled_since = Some(last);
                        error!(
                            stalled_ms = lag,
                            "runtime stalled: no scheduler tick for {lag} ms (a task is not yielding)"
                        );
                    }
                    Some(since) if last > since => {
                        error!(
                            stalled_ms = last - since,
                            "runtime resumed after a stall of {} ms",
                            last - since
                        );
                        stalled_since = None;
                    }
                    _ => {}
                }
            }
        })
        .ok();
    debug_hooks::arm();
}

/// Raises the soft limit on open files to the hard limit (a broker holds a socket per connection and files
/// per queue) and returns the limit it got.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// Test-only fault injection, compiled into debug builds only: `MAILROOM_TEST_STALL_AFTER_MS=N` makes every
/// runtime worker spin forever N ms after start, so tests can show the stall detector and the forced exit.
#[cfg(debug_assertions)]
mod debug_hooks {
    pub fn arm() {
        let Some(ms) = std::env::var("MAILROOM_TEST_STALL_AFTER_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            return;
        };
        tracing::warn!(after_ms = ms, "test hook: every runtime worker will spin forever");
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            for _ in 0..workers * 2 {
                tokio::spawn(async {
                    loop {
                        std::hint::spin_loop();
                    }
                });
            }
        });
    }
}

#[cfg(not(debug_assertions))]
mod debug_hooks {
    pub fn arm() {}
}
