//! Watching the broker process through /proc (Linux; the broker on this host): resident
//! memory (`VmRSS`, and the kernel's high-water mark `VmHWM`) sampled every 100 ms on a
//! thread of its own, and CPU time (`utime + stime` from `/proc/PID/stat`) at the start and
//! the end of the run. Optionally stops the publishers when the broker's RSS passes a cap,
//! so an overload run cannot take a shared machine down with it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio_util::sync::CancellationToken;

/// How often the sampler reads /proc/PID/status.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Memory figures of `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStatus {
    /// `VmRSS`: resident set size now.
    pub rss_kb: u64,
    /// `VmHWM`: the highest RSS since the process started (0 if the kernel did not say).
    pub hwm_kb: u64,
}

/// Parses `VmRSS` and `VmHWM` out of the text of `/proc/PID/status`. None without `VmRSS`
/// (a zombie or kernel thread has none).
pub fn parse_status(text: &str) -> Option<MemStatus> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(MemStatus {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:").unwrap_or(0),
    })
}

/// Parses `/proc/PID/stat` into (comm, utime + stime in clock ticks). The command name is
/// in parentheses and may itself contain spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // After ") ": state (field 3), ppid (4), ... utime is field 14, stime field 15.
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = rest.get(14 - 3)?.parse().ok()?;
    let stime: u64 = rest.get(15 - 3)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

fn read_mem(pid: u32) -> Option<MemStatus> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn read_cpu(pid: u32) -> Option<(String, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A process seen in /proc: its pid, `comm` (at most 15 bytes) and the file name of argv[0].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Process id.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// Base name of the first word of `/proc/PID/cmdline`.
    pub argv0: String,
}

/// Picks the one process called `name` (its comm or its argv[0] file name), leaving out
/// `self_pid`. An error names every candidate when there are several.
pub fn pick(name: &str, candidates: &[Candidate], self_pid: u32) -> Result<u32, String> {
    let found: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.pid != self_pid && (c.comm == name || c.argv0 == name))
        .collect();
    match found.as_slice() {
        [] => Err(format!("no process named {name:?} in /proc")),
        [one] => Ok(one.pid),
        many => Err(format!(
            "{} processes named {name:?} (pids {}): choose one with --broker-pid",
            many.len(),
            many.iter()
                .map(|c| c.pid.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Finds the pid of the one process called `name` (as `pgrep -x` would, also matching the
/// file name of argv[0] for names longer than comm's 15 bytes).
pub fn find_process(name: &str) -> anyhow::Result<u32> {
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm"))
            .map(|s| s.trim_end_matches('\n').to_string())
            .unwrap_or_default();
        let argv0 = std::fs::read(entry.path().join("cmdline"))
            .ok()
            .and_then(|b| {
                let first = b.split(|c| *c == 0).next()?.to_vec();
                let s = String::from_utf8_lossy(&first).to_string();
                Some(s.rsplit('/').next().unwrap_or("").to_string())
            })
            .unwrap_or_default();
        candidates.push(Candidate { pid, comm, argv0 });
    }
    pick(name, &candidates, std::process::id()).map_err(|e| anyhow!(e))
}

/// What the sampler thread shares.
#[derive(Default)]
struct Shared {
    rss_kb: AtomicU64,
    peak_kb: AtomicU64,
    hwm_kb: AtomicU64,
    cpu_ticks: AtomicU64,
    samples: AtomicU64,
    gone: AtomicBool,
    stop: AtomicBool,
    cap_hit_kb: AtomicU64,
}

/// The broker's figures over a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerStats {
    /// Process id.
    pub pid: u32,
    /// Its comm (process name).
    pub name: String,
    /// RSS readings taken.
    pub samples: u64,
    /// RSS at the start, KiB.
    pub rss_start_kb: u64,
    /// Highest RSS seen by the sampler (every 100 ms), KiB.
    pub rss_peak_kb: u64,
    /// RSS at the end (the last reading), KiB.
    pub rss_end_kb: u64,
    /// The kernel's `VmHWM` at the end: the highest RSS since the broker started (may
    /// predate this run), KiB.
    pub vmhwm_kb: u64,
    /// CPU seconds (user + system) the broker used during the run.
    pub cpu_s: f64,
    /// The process disappeared during the run.
    pub exited: bool,
    /// RSS (KiB) at which `--max-broker-rss` stopped the publishers, if it did.
    pub rss_cap_hit_kb: Option<u64>,
}

/// A running watch on one process.
pub struct Monitor {
    pid: u32,
    name: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    rss_start_kb: u64,
    cpu_start: u64,
    tck: u64,
}

impl Monitor {
    /// Starts watching `pid`. When `max_rss_kb` is given and the broker's RSS reaches it,
    /// `on_cap` is cancelled (once). Fails when the process cannot be read.
    pub fn start(pid: u32, max_rss_kb: Option<u64>, on_cap: CancellationToken) -> anyhow::Result<Monitor> {
        let Some(mem) = read_mem(pid) else {
            bail!("cannot read /proc/{pid}/status (no such process, or not ours to read?)");
        };
        let Some((name, cpu_start)) = read_cpu(pid) else {
            bail!("cannot read /proc/{pid}/stat");
        };
        let shared = Arc::new(Shared::default());
        shared.rss_kb.store(mem.rss_kb, Relaxed);
        shared.peak_kb.store(mem.rss_kb, Relaxed);
        shared.hwm_kb.store(mem.hwm_kb, Relaxed);
        shared.cpu_ticks.store(cpu_start, Relaxed);
        shared.samples.store(1, Relaxed);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("broker-monitor".into())
                .spawn(move || sample_loop(pid, &shared, max_rss_kb, &on_cap))?
        };
        Ok(Monitor {
            pid,
            name,
            shared,
            thread: Some(thread),
            rss_start_kb: mem.rss_kb,
            cpu_start,
            tck: clk_tck(),
        })
    }

    /// (RSS KiB, CPU seconds since the start) as of the last sample.
    pub fn current(&self) -> (u64, f64) {
        let ticks = self.shared.cpu_ticks.load(Relaxed).saturating_sub(self.cpu_start);
        (self.shared.rss_kb.load(Relaxed), ticks as f64 / self.tck as f64)
    }

    /// Whether the process disappeared.
    pub fn gone(&self) -> bool {
        self.shared.gone.load(Relaxed)
    }

    /// Stops the sampler, takes a last reading and returns the run's figures.
    pub fn finish(mut self) -> BrokerStats {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        sample_once(self.pid, &self.shared);
        let sh = &self.shared;
        let cap = sh.cap_hit_kb.load(Relaxed);
        BrokerStats {
            pid: self.pid,
            name: self.name.clone(),
            samples: sh.samples.load(Relaxed),
            rss_start_kb: self.rss_start_kb,
            rss_peak_kb: sh.peak_kb.load(Relaxed),
            rss_end_kb: sh.rss_kb.load(Relaxed),
            vmhwm_kb: sh.hwm_kb.load(Relaxed),
            cpu_s: sh.cpu_ticks.load(Relaxed).saturating_sub(self.cpu_start) as f64 / self.tck as f64,
            exited: sh.gone.load(Relaxed),
            rss_cap_hit_kb: (cap > 0).then_some(cap),
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// One reading; false once the process is gone.
fn sample_once(pid: u32, sh: &Shared) -> bool {
    if sh.gone.load(Relaxed) {
        return false;
    }
    let (Some(mem), Some((_, ticks))) = (read_mem(pid), read_cpu(pid)) else {
        sh.gone.store(true, Relaxed);
        return false;
    };
    sh.rss_kb.store(mem.rss_kb, Relaxed);
    sh.peak_kb.fetch_max(mem.rss_kb, Relaxed);
    sh.hwm_kb.store(mem.hwm_kb, Relaxed);
    sh.cpu_ticks.store(ticks, Relaxed);
    sh.samples.fetch_add(1, Relaxed);
    true
}

fn sample_loop(pid: u32, sh: &Shared, max_rss_kb: Option<u64>, on_cap: &CancellationToken) {
    let mut next = std::time::Instant::now() + SAMPLE_EVERY;
    while !sh.stop.load(Relaxed) {
        let now = std::time::Instant::now();
        if now < next {
            std::thread::park_timeout(next - now);
            continue;
        }
        next += SAMPLE_EVERY;
        if next < now {
            next = now + SAMPLE_EVERY;
        }
        if !sample_once(pid, sh) {
            return;
        }
        let rss = sh.rss_kb.load(Relaxed);
        if let Some(cap) = max_rss_kb {
            if rss >= cap && sh.cap_hit_kb.load(Relaxed) == 0 {
                sh.cap_hit_kb.store(rss, Relaxed);
                on_cap.cancel();
            }
        }
    }
}

/// Parses a size: plain bytes, or a number with K/M/G/T (powers of 1024; `KiB`, `MB`,
/// `GiB`... accepted alike, case-insensitive). Returns bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 4GiB, 1000000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use KiB, MiB, GiB)")),
    };
    Ok((v * mult as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parsing() {
        let text =
            "Name:\tmailroom\nVmPeak:\t  900 kB\nVmHWM:\t   6244 kB\nVmRSS:\t    6100 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(text),
            Some(MemStatus {
                rss_kb: 6100,
                hwm_kb: 6244
            })
        );
        assert_eq!(parse_status("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(parse_status("VmRSS:\t 12 kB\n").map(|m| m.hwm_kb), Some(0));
    }

    #[test]
    fn stat_parsing_counts_fields_after_the_last_paren() {
        // comm with spaces and a ')' in it; utime 1234, stime 56.
        let text =
            "4242 (we) ird name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 4 0 99 1000 200\n";
        assert_eq!(parse_stat(text), Some(("we) ird name".into(), 1290)));
        assert_eq!(parse_stat("1 (x) S 0"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let mem = read_mem(me).expect("own status");
        assert!(mem.rss_kb > 0 && mem.hwm_kb >= mem.rss_kb);
        assert!(read_cpu(me).is_some());
        assert!(clk_tck() > 0);
    }

    #[test]
    fn picking_by_name() {
        let c = |pid, comm: &str, argv0: &str| Candidate {
            pid,
            comm: comm.into(),
            argv0: argv0.into(),
        };
        let list = vec![
            c(10, "mailroom", "mailroom"),
            c(11, "beam.smp", "beam.smp"),
            c(12, "bash", "bash"),
            c(13, "mailroom-perf", "mailroom-perf"),
            c(14, "a-very-long-nam", "a-very-long-name-indeed"),
            c(20, "beam.smp", "beam.smp"),
        ];
        assert_eq!(pick("mailroom", &list, 13), Ok(10));
        assert_eq!(pick("a-very-long-name-indeed", &list, 1), Ok(14));
        assert_eq!(
            pick("mailroom-perf", &list, 13).unwrap_err(),
            "no process named \"mailroom-perf\" in /proc"
        );
        let e = pick("beam.smp", &list, 1).unwrap_err();
        assert!(e.contains("pids 11, 20") && e.contains("--broker-pid"), "{e}");
    }

    #[test]
    fn monitor_watches_a_child_and_notices_its_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let token = CancellationToken::new();
        // A cap of 1 KiB is hit at the first sample.
        let m = Monitor::start(child.id(), Some(1), token.clone()).expect("monitor");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !token.is_cancelled() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(token.is_cancelled());
        assert!(m.current().0 > 0);
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !m.gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = m.finish();
        assert!(st.exited);
        assert_eq!(st.name, "sleep");
        assert!(st.rss_start_kb > 0 && st.rss_peak_kb >= st.rss_start_kb);
        assert!(st.rss_cap_hit_kb.is_some());
        assert!(st.samples >= 2);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("1.5 GB"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
