//! Flow control (issue 11): the per-queue bounds that throttle publishers, the per-connection publish budget,
//! the memory and disk alarms that block publishing connections, and the counters the management API will
//! show. See docs/flow-control.md.
//!
//! - A queue over its bound (ready messages in memory beyond what its consumers take) sets a flag; a
//!   connection that publishes to it stops reading its socket until the queue is back under its low-water
//!   mark (`queue/mod.rs` keeps the flag and wakes the waiting connections; `connection/mod.rs` pauses).
//! - The alarm monitor (a thread) samples the broker's RSS and the data dir's free space; while an alarm is
//!   set, every connection that has published is not read (and gets `connection.blocked` if it asked).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// A queue's flow bound: ready messages (and their body bytes) held in memory while it has consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    pub max_messages: u64,
    pub max_bytes: u64,
}

impl QueueBound {
    /// Defaults chosen by measurement (docs/performance.md, "Flow control", and "The flow bound: 20,000 →
    /// 5,000 messages per queue"): with a consumer at full speed the backlog in the queue is a few ms of
    /// delivery, short bursts are not throttled, and S2/S4/S5/F1 ran as fast as with 20,000 at half the
    /// p99 latency (S1 about 7 % slower, still over 1.9 M msg/s).
    pub const DEFAULT: QueueBound = QueueBound {
        max_messages: 5_000,
        max_bytes: 32 << 20,
    };

    /// Over the bound: publishers to this queue are throttled.
    pub fn exceeded(&self, messages: u64, bytes: u64) -> bool {
        messages > self.max_messages || bytes > self.max_bytes
    }

    /// Under the low-water mark (half the bound): throttled publishers resume.
    pub fn below_low_water(&self, messages: u64, bytes: u64) -> bool {
        messages <= self.max_messages / 2 && bytes <= self.max_bytes / 2
    }
}

static QUEUE_MAX_MESSAGES: AtomicU64 = AtomicU64::new(QueueBound::DEFAULT.max_messages);
static QUEUE_MAX_BYTES: AtomicU64 = AtomicU64::new(QueueBound::DEFAULT.max_bytes);

/// Sets the bound queues declared from now on get (the broker does this once at start).
pub fn set_queue_bound(b: QueueBound) {
    QUEUE_MAX_MESSAGES.store(b.max_messages.max(1), Ordering::Relaxed);
    QUEUE_MAX_BYTES.store(b.max_bytes.max(1), Ordering::Relaxed);
}

/// The bound a new queue gets.
pub fn queue_bound() -> QueueBound {
    QueueBound {
        max_messages: QUEUE_MAX_MESSAGES.load(Ordering::Relaxed),
        max_bytes: QUEUE_MAX_BYTES.load(Ordering::Relaxed),
    }
}

/// RabbitMQ 3.x's `vm_memory_high_watermark_paging_ratio`: above this fraction of the memory watermark,
/// queues page their new messages to disk instead of keeping them in memory (`queue/mod.rs`).
pub const DEFAULT_PAGING_RATIO: f64 = 0.5;

/// Unset (`u64::MAX`, a NaN): the default.
static PAGING_RATIO_BITS: AtomicU64 = AtomicU64::new(u64::MAX);
static MEMORY_PRESSURE: AtomicBool = AtomicBool::new(false);

/// Sets the paging ratio (the broker does this once at start).
pub fn set_paging_ratio(r: f64) {
    PAGING_RATIO_BITS.store(r.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

fn paging_ratio() -> f64 {
    match PAGING_RATIO_BITS.load(Ordering::Relaxed) {
        u64::MAX => DEFAULT_PAGING_RATIO,
        b => f64::from_bits(b),
    }
}

/// Memory is near the watermark (over the paging ratio of it): queues page new messages to disk at once.
/// One relaxed load per publish.
pub fn memory_pressure() -> bool {
    MEMORY_PRESSURE.load(Ordering::Relaxed)
}

/// The memory high watermark: a fraction of the machine's (or cgroup's) memory, or an absolute size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    Relative(f64),
    Absolute(u64),
}

impl Watermark {
    /// RabbitMQ 4's default `vm_memory_high_watermark.relative`.
    pub const DEFAULT: Watermark = Watermark::Relative(0.6);

    /// `0.6` (a fraction, at most 1) or a size such as `512MiB`, `2GB`, `1073741824`.
    pub fn parse(s: &str) -> Result<Watermark, String> {
        let s = s.trim();
        if let Ok(f) = s.parse::<f64>() {
            if s.contains('.') || f <= 1.0 {
                if !(0.0..=1.0).contains(&f) {
                    return Err(format!(
                        "memory high watermark fraction {s} is not between 0 and 1"
                    ));
                }
                return Ok(Watermark::Relative(f));
            }
        }
        parse_size(s).map(Watermark::Absolute)
    }

    /// The limit in bytes given the memory available to the process.
    pub fn bytes(&self, total: u64) -> u64 {
        match *self {
            Watermark::Relative(f) => (total as f64 * f) as u64,
            Watermark::Absolute(b) => b,
        }
    }
}

/// The disk free limit: an absolute size, or a multiple of the memory available (`1.5x`, RabbitMQ's
/// `disk_free_limit.relative`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskLimit {
    Absolute(u64),
    MemRelative(f64),
}

impl DiskLimit {
    /// RabbitMQ's default `disk_free_limit.absolute`: 50 MB.
    pub const DEFAULT: DiskLimit = DiskLimit::Absolute(50_000_000);

    pub fn parse(s: &str) -> Result<DiskLimit, String> {
        let s = s.trim();
        if let Some(f) = s.strip_suffix('x') {
            let f: f64 = f
                .trim()
                .parse()
                .map_err(|_| format!("invalid disk free limit '{s}'"))?;
            if !(0.0..=100.0).contains(&f) {
                return Err(format!("invalid disk free limit '{s}'"));
            }
            return Ok(DiskLimit::MemRelative(f));
        }
        parse_size(s).map(DiskLimit::Absolute)
    }

    pub fn bytes(&self, total_memory: u64) -> u64 {
        match *self {
            DiskLimit::Absolute(b) => b,
            DiskLimit::MemRelative(f) => (total_memory as f64 * f) as u64,
        }
    }
}

/// A size with RabbitMQ's information units: `k`/`KiB`, `M`/`MiB`, `G`/`GiB` are powers of two; `kB`, `MB`,
/// `GB` powers of ten; no unit is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" | "kiB" => 1 << 10,
        "kB" | "KB" => 1_000,
        "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        u => return Err(format!("invalid size unit '{u}' in '{s}'")),
    };
    Ok((n * mult as f64) as u64)
}

/// The resource alarms in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    pub memory: bool,
    pub disk: bool,
}

impl AlarmState {
    pub fn any(&self) -> bool {
        self.memory || self.disk
    }

    /// The reason connection.blocked carries (RabbitMQ's texts).
    pub fn reason(&self) -> &'static str {
        match (self.memory, self.disk) {
            (true, true) => "low on memory & low on disk",
            (true, false) => "low on memory",
            (false, true) => "low on disk",
            (false, false) => "",
        }
    }
}

/// Counters kept for the management API and metrics.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Times a connection was throttled by a queue over its bound.
    pub queue_throttles: AtomicU64,
    /// Total milliseconds connections spent throttled by queues.
    pub queue_throttled_ms: AtomicU64,
    /// Times a connection was blocked by an alarm.
    pub alarm_blocks: AtomicU64,
    /// Total milliseconds connections spent blocked by alarms.
    pub alarm_blocked_ms: AtomicU64,
    /// Times the memory alarm was raised.
    pub memory_alarms: AtomicU64,
    /// Times the disk alarm was raised.
    pub disk_alarms: AtomicU64,
    /// The last sampled RSS, bytes.
    pub rss_bytes: AtomicU64,
    /// The last sampled free space of the data dir, bytes.
    pub disk_free_bytes: AtomicU64,
    /// Publishes refused over the maximum message size.
    pub oversized_publishes: AtomicU64,
    /// Connections refused over --max-connections.
    pub refused_connections: AtomicU64,
    /// Channels closed by the consumer acknowledgement timeout.
    pub consumer_timeouts: AtomicU64,
}

/// The alarms and counters, shared by the broker, its connections and the monitor thread.
pub struct Flow {
    alarms: watch::Sender<AlarmState>,
    pub counters: FlowCounters,
    /// The memory limit in bytes (0 until the monitor computed it).
    pub memory_limit: AtomicU64,
    stop: AtomicBool,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            alarms: watch::channel(AlarmState::default()).0,
            counters: FlowCounters::default(),
            memory_limit: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }
}

/// How often the monitor samples memory (disk is sampled every 10th time).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

impl Flow {
    pub fn subscribe(&self) -> watch::Receiver<AlarmState> {
        self.alarms.subscribe()
    }

    pub fn alarms(&self) -> AlarmState {
        *self.alarms.borrow()
    }

    fn set(&self, f: impl FnOnce(&mut AlarmState)) {
        self.alarms.send_if_modified(|a| {
            let before = *a;
            f(a);
            *a != before
        });
    }

    /// Stops the monitor thread.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Starts the monitor thread: RSS every 100 ms against the memory watermark, the data dir's free space
    /// every second against the disk free limit. It ends when the `Flow` is dropped or stopped.
    pub fn spawn_monitor(self: &Arc<Self>, watermark: Watermark, disk: DiskLimit, data_dir: PathBuf) {
        let weak: Weak<Flow> = Arc::downgrade(self);
        let total = available_memory();
        let mem_limit = watermark.bytes(total);
        let disk_limit = disk.bytes(total);
        self.memory_limit.store(mem_limit, Ordering::Relaxed);
        tracing::info!(
            memory_limit = mem_limit,
            available_memory = total,
            disk_free_limit = disk_limit,
            "memory high watermark {} MiB ({watermark:?} of {} MiB), disk free limit {} MB",
            mem_limit >> 20,
            total >> 20,
            disk_limit / 1_000_000
        );
        if test_hooks::fake("MAILROOM_TEST_DISK_FREE_FILE").is_none() && disk_free(&data_dir).is_none() {
            tracing::warn!(
                data_dir = %data_dir.display(),
                "the file system of the data directory reports no free space figure (total size 0, as some \
                 FUSE file systems do): the disk free limit cannot be checked there and its alarm stays off"
            );
        }
        let spawned = std::thread::Builder::new()
            .name("mailroom-alarms".into())
            .spawn(move || {
                let mut n = 0u64;
                loop {
                    let Some(flow) = weak.upgrade() else { break };
                    if flow.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut rss = test_hooks::fake("MAILROOM_TEST_RSS_FILE").or_else(rss_bytes);
                    if rss.is_some_and(|r| r > mem_limit) && n.is_multiple_of(10) {
                        // Over the watermark: give freed memory back to the OS first (once a second),
                        // or the alarm would never clear after the backlog drained.
                        trim_heap();
                        rss = test_hooks::fake("MAILROOM_TEST_RSS_FILE").or_else(rss_bytes);
                    }
                    if let Some(rss) = rss {
                        flow.check_memory(rss, mem_limit);
                    }
                    if n.is_multiple_of(10) {
                        let free =
                            test_hooks::fake("MAILROOM_TEST_DISK_FREE_FILE").or_else(|| disk_free(&data_dir));
                        if let Some(free) = free {
                            flow.check_disk(free, disk_limit);
                        }
                    }
                    n += 1;
                    drop(flow);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the memory and disk monitor");
        }
    }

    /// One memory sample: raises or clears the memory alarm.
    pub fn check_memory(&self, rss: u64, limit: u64) {
        self.counters.rss_bytes.store(rss, Ordering::Relaxed);
        let pressure = rss as f64 > limit as f64 * paging_ratio();
        if MEMORY_PRESSURE.swap(pressure, Ordering::Relaxed) != pressure {
            tracing::info!(
                rss,
                limit,
                "memory {} the paging threshold ({:.2} of the watermark): queues {} new messages to disk",
                if pressure { "above" } else { "back below" },
                paging_ratio(),
                if pressure { "page" } else { "no longer page" }
            );
        }
        let was = self.alarms().memory;
        let now = rss > limit;
        if now == was {
            return;
        }
        if now {
            self.counters.memory_alarms.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                rss,
                limit,
                "memory resource limit alarm set: memory used {rss} > allowed {limit}; publishers are \
                 blocked until it clears"
            );
        } else {
            tracing::warn!(
                rss,
                limit,
                "memory resource limit alarm cleared: memory used {rss} <= allowed {limit}"
            );
        }
        self.set(|a| a.memory = now);
    }

    /// One disk sample: raises or clears the disk alarm.
    pub fn check_disk(&self, free: u64, limit: u64) {
        self.counters.disk_free_bytes.store(free, Ordering::Relaxed);
        let was = self.alarms().disk;
        let now = free < limit;
        if now == was {
            return;
        }
        if now {
            self.counters.disk_alarms.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                free,
                limit,
                "disk resource limit alarm set: free disk space {free} < limit {limit}; publishers are \
                 blocked until it clears"
            );
        } else {
            tracing::warn!(
                free,
                limit,
                "disk resource limit alarm cleared: free disk space {free} >= limit {limit}"
            );
        }
        self.set(|a| a.disk = now);
    }
}

/// Test-only: `MAILROOM_TEST_RSS_FILE=PATH` (or `MAILROOM_TEST_DISK_FREE_FILE`) makes the monitor read the
/// RSS (free disk space) from a file holding a size, so end-to-end tests can raise and clear the alarms at
/// will. Compiled into debug builds only.
mod test_hooks {
    #[cfg(debug_assertions)]
    pub fn fake(var: &str) -> Option<u64> {
        let path = std::env::var_os(var)?;
        let text = std::fs::read_to_string(path).ok()?;
        super::parse_size(text.trim()).ok()
    }

    #[cfg(not(debug_assertions))]
    pub fn fake(_var: &str) -> Option<u64> {
        None
    }
}

/// The memory the broker may use: the machine's, or the cgroup's limit when one is set and lower.
pub fn available_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    .min();
    match cgroup {
        Some(c) if c > 0 && c < total => c,
        _ => total,
    }
}

/// Returns glibc's free memory to the OS (glibc keeps freed chunks in its arenas otherwise, and the RSS
/// would stay at its peak after a backlog drained). The `mailroom` binary allocates with mimalloc
/// (`main.rs`), which gives freed pages back by itself; what still comes from glibc (C libraries,
/// tests that run the library with the system allocator) is trimmed here.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The process's resident set size.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * if page > 0 { page as u64 } else { 4096 })
}

/// Free space (for unprivileged users) on the file system holding `dir`; `None` when the file system does
/// not report its size (total blocks 0, as FUSE file systems without `statfs` do, LazyFS among them):
/// "0 bytes free" there means "unknown", and raising the disk alarm on it would block every publisher.
pub fn disk_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value; the path is NUL-terminated and outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_rabbitmq_units() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("50MB").unwrap(), 50_000_000);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn watermarks_relative_or_absolute() {
        assert_eq!(Watermark::parse("0.6").unwrap(), Watermark::Relative(0.6));
        assert_eq!(Watermark::parse("1").unwrap(), Watermark::Relative(1.0));
        assert_eq!(
            Watermark::parse("256MiB").unwrap(),
            Watermark::Absolute(256 << 20)
        );
        assert_eq!(
            Watermark::parse("1000000").unwrap(),
            Watermark::Absolute(1_000_000)
        );
        assert!(Watermark::parse("1.5").is_err());
        assert_eq!(Watermark::Relative(0.5).bytes(1000), 500);
        assert_eq!(DiskLimit::parse("1.5x").unwrap(), DiskLimit::MemRelative(1.5));
        assert_eq!(DiskLimit::parse("50MB").unwrap(), DiskLimit::DEFAULT);
        assert_eq!(DiskLimit::MemRelative(2.0).bytes(10), 20);
    }

    #[test]
    fn bound_has_hysteresis() {
        let b = QueueBound {
            max_messages: 10,
            max_bytes: 1000,
        };
        assert!(!b.exceeded(10, 1000));
        assert!(b.exceeded(11, 0));
        assert!(b.exceeded(0, 1001));
        assert!(!b.below_low_water(6, 0));
        assert!(b.below_low_water(5, 500));
        assert!(!b.below_low_water(0, 501));
    }

    #[test]
    fn alarms_raise_and_clear_once() {
        let f = Flow::default();
        let mut rx = f.subscribe();
        f.check_memory(10, 100);
        assert!(!rx.has_changed().unwrap());
        f.check_memory(200, 100);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().reason(), "low on memory");
        f.check_disk(1, 100);
        assert_eq!(f.alarms().reason(), "low on memory & low on disk");
        f.check_memory(50, 100);
        f.check_disk(1000, 100);
        assert!(!f.alarms().any());
        assert_eq!(f.counters.memory_alarms.load(Ordering::Relaxed), 1);
        assert_eq!(f.counters.disk_alarms.load(Ordering::Relaxed), 1);
        assert!(rss_bytes().unwrap() > 0);
        assert!(available_memory() > 0);
        assert!(disk_free(Path::new("/")).is_some());
    }
}
