//! LazyFS (a FUSE file system that keeps every write in its own cache until the writer syncs it, and drops
//! what is unsynced on command) for the power-loss tests: mount, cut, crash points, remount.
//!
//! The binary comes from `../shared/tools/lazyfs/build.sh` (`make test-power-loss` builds it into
//! `.tools/lazyfs/` and passes its path in `MAILROOM_LAZYFS`). Usage is as in that directory's README:
//! a config file names the fault FIFO and the FIFO LazyFS acknowledges `clear-cache` on; `root/` holds the
//! real files, `mnt/` is the mount; paths LazyFS matches fault regexes against are the real ones
//! (`<root>/data/...`, the `subdir` module prepends the root).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// The LazyFS binary named by `MAILROOM_LAZYFS`, if set (the power-loss tests skip without it).
pub fn bin_from_env() -> Option<PathBuf> {
    std::env::var_os("MAILROOM_LAZYFS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A LazyFS `[[injection]]` table (for `LazyFs::mount`): the `occurrence`-th write to `file` (its path under
/// the mount's root) is split into `parts` parts at any byte, only the parts in `persist` (1-based) reach the
/// disk, then LazyFS dies as the power would.
pub fn torn_op(file: &str, occurrence: u32, parts: u32, persist: &[u32]) -> String {
    format!(
        "[[injection]]\ntype=\"torn-op\"\nfile=\"{file}\"\noccurrence={occurrence}\nparts={parts}\npersist={persist:?}\n"
    )
}

/// One LazyFS mount over `<base>/root` at `<base>/mnt`.
pub struct LazyFs {
    bin: PathBuf,
    base: PathBuf,
    /// The real directory behind the mount (what survives a cut).
    pub root: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
    child: Option<Child>,
    done: Option<File>,
    fifo: PathBuf,
    log: PathBuf,
    generation: u32,
    /// `valid crash fault` lines seen in the log so far (a crash command is acknowledged by one more).
    crash_acks: usize,
}

impl LazyFs {
    /// Mounts a fresh LazyFS under `base` (created if missing). `injections` is appended to the config
    /// file as is (`[[injection]]` tables: torn writes), empty for none.
    pub fn mount(bin: &Path, base: &Path, injections: &str) -> anyhow::Result<LazyFs> {
        fs::create_dir_all(base.join("root"))?;
        fs::create_dir_all(base.join("mnt"))?;
        let mut fs = LazyFs {
            bin: bin.to_path_buf(),
            base: base.to_path_buf(),
            root: base.join("root"),
            mnt: base.join("mnt"),
            child: None,
            done: None,
            fifo: PathBuf::new(),
            log: PathBuf::new(),
            generation: 0,
            crash_acks: 0,
        };
        fs.start(injections)?;
        Ok(fs)
    }

    fn start(&mut self, injections: &str) -> anyhow::Result<()> {
        self.generation += 1;
        let g = self.generation;
        let b = &self.base;
        self.fifo = b.join(format!("faults-{g}.fifo"));
        let done = b.join(format!("done-{g}.fifo"));
        self.log = b.join(format!("lazyfs-{g}.log"));
        self.crash_acks = 0;
        let config = b.join(format!("lazyfs-{g}.toml"));
        // The cache is allocated page by page as it fills; it must hold everything written between two
        // syncs of a run (a cycle writes well under 1 GiB).
        fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\nfifo_path_completed=\"{}\"\n[cache]\napply_eviction=false\n\
                 [cache.simple]\ncustom_size=\"2gb\"\nblocks_per_page=1\n[filesystem]\n\
                 log_all_operations=false\nlogfile=\"{}\"\n{injections}\n",
                self.fifo.display(),
                done.display(),
                self.log.display()
            ),
        )?;
        let out = File::create(b.join(format!("lazyfs-{g}.out")))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg(&self.mnt)
            .arg("--config-path")
            .arg(&config)
            .args(["-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", self.root.display()))
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // LazyFS aborts when unmounted (an unjoined thread): no core files.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &lim);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().context("start lazyfs")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mounted = fs::read_to_string("/proc/mounts")?
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(&*self.mnt.to_string_lossy()));
            let fifo_ready = fs::metadata(&done)
                .map(|m| m.file_type().is_fifo())
                .unwrap_or(false);
            if mounted && fifo_ready {
                break;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("lazyfs exited at start ({status}): {}", self.output());
            }
            if Instant::now() > deadline {
                bail!("lazyfs did not mount within 30 s: {}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Held open read-write: LazyFS's fault thread writes acknowledgements there and blocks on open
        // while nobody has it open for reading.
        self.done = Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&done)?,
        );
        Ok(())
    }

    fn output(&self) -> String {
        let out =
            fs::read_to_string(self.base.join(format!("lazyfs-{}.out", self.generation))).unwrap_or_default();
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        format!("{out}{log}")
    }

    /// The last `n` lines of LazyFS's log (for failure reports).
    pub fn log_tail(&self, n: usize) -> String {
        let all = self.output();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The path LazyFS sees (and matches fault regexes against) for `rel` under the mount.
    pub fn real_path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes one command to the fault FIFO.
    pub fn command(&self, cmd: &str) -> anyhow::Result<()> {
        // O_NONBLOCK: fails (ENXIO) instead of hanging while nobody reads the FIFO: LazyFS's fault thread
        // opens it a moment after the mount, and never again once LazyFS is gone.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut f = loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.fifo)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("open {} (is lazyfs running?)", self.fifo.display()))
                }
            }
        };
        f.write_all(format!("{cmd}\n").as_bytes())?;
        Ok(())
    }

    /// Drops every write not yet synced (the power cut) and waits for LazyFS's acknowledgement.
    pub fn clear_cache(&mut self) -> anyhow::Result<()> {
        self.command("lazyfs::clear-cache")?;
        let line = self.read_done(Duration::from_secs(60))?;
        if !line.contains("finished::clear-cache") {
            bail!("unexpected acknowledgement from lazyfs: {line:?}");
        }
        Ok(())
    }

    fn read_done(&mut self, within: Duration) -> anyhow::Result<String> {
        let f = self.done.as_mut().ok_or_else(|| anyhow!("not mounted"))?;
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no acknowledgement from lazyfs within {within:?}");
            }
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            unsafe {
                libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32);
            }
            let mut buf = [0u8; 256];
            match f.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
            if got.contains(&b'\n') {
                return Ok(String::from_utf8_lossy(&got).trim().to_string());
            }
        }
    }

    /// Arms a crash point: LazyFS kills itself (losing every unsynced write) right `timing` ("before" /
    /// "after") the first `op` on a path matching `from_rgx` (and `to_rgx` for rename/link). Waits until
    /// LazyFS has logged the fault as valid.
    pub fn arm_crash(
        &mut self,
        timing: &str,
        op: &str,
        from_rgx: Option<&str>,
        to_rgx: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut cmd = format!("lazyfs::crash::timing={timing}::op={op}");
        if let Some(r) = from_rgx {
            cmd.push_str(&format!("::from_rgx={r}"));
        }
        if let Some(r) = to_rgx {
            cmd.push_str(&format!("::to_rgx={r}"));
        }
        // LazyFS reads its FIFO 100 bytes at a time and takes each read as one command.
        if cmd.len() > 99 {
            bail!("{cmd:?} is longer than the 99 bytes LazyFS reads as one command");
        }
        self.command(&cmd)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("INVALID crash fault") {
                bail!("lazyfs rejected {cmd:?}: {}", self.log_tail(5));
            }
            let n = log.matches("received: VALID crash fault").count();
            if n > self.crash_acks {
                self.crash_acks = n;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("lazyfs did not acknowledge {cmd:?}: {}", self.log_tail(5));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the LazyFS process is still running (a crash point or torn write kills it).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether LazyFS logged that a fault condition fired (it kills itself right after).
    pub fn fault_fired(&self) -> bool {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.contains("Triggered fault condition") || log.contains("Killing LazyFS")
    }

    /// Unmounts (also after LazyFS died) and ends the LazyFS process.
    pub fn unmount(&mut self) {
        self.done = None;
        for args in [&["-u"][..], &["-uz"][..]] {
            let mounted = fs::read_to_string("/proc/mounts")
                .map(|m| {
                    m.lines()
                        .any(|l| l.split(' ').nth(1) == Some(&*self.mnt.to_string_lossy()))
                })
                .unwrap_or(false);
            if !mounted {
                break;
            }
            for _ in 0..50 {
                let ok = Command::new("fusermount3")
                    .args(args)
                    .arg(&self.mnt)
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Unmounts and mounts a new LazyFS over the same root (what a machine does after a power cut).
    pub fn remount(&mut self, injections: &str) -> anyhow::Result<()> {
        self.unmount();
        self.start(injections)
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.unmount();
    }
}
