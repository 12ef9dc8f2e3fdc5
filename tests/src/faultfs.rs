//! The write-failure shim (`tests/shim/faultfs.c`, an `LD_PRELOAD` library): built on first use with the
//! system C compiler into `<target>/faultfs/`, switched at run time through a control file. See the C file
//! for the control line's fields.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context};

use crate::{target_dir, workspace_root};

/// Builds the shim if it is missing or older than its source; returns the library's path.
pub fn build_shim() -> anyhow::Result<PathBuf> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let src = workspace_root().join("tests/shim/faultfs.c");
    let dir = target_dir().join("faultfs");
    let lib = dir.join("libfaultfs.so");
    let fresh = match (fs::metadata(&lib), fs::metadata(&src)) {
        (Ok(l), Ok(s)) => l.modified()? >= s.modified()?,
        _ => false,
    };
    if fresh {
        return Ok(lib);
    }
    fs::create_dir_all(&dir)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let tmp = dir.join(format!("libfaultfs.so.{}", std::process::id()));
    let out = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(["-ldl", "-lpthread"])
        .output()
        .with_context(|| format!("run {cc} (a C compiler is needed for the write-failure shim)"))?;
    if !out.status.success() {
        bail!(
            "building {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&tmp, &lib)?;
    Ok(lib)
}

/// One broker's fault switch.
pub struct FaultFs {
    pub lib: PathBuf,
    pub control: PathBuf,
    pub log: PathBuf,
    pub root: PathBuf,
    serial: Mutex<u64>,
}

/// How many matching calls fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// Every one, until switched off.
    Every,
    /// The next n.
    Next(u32),
    /// Each with probability 1/n, until switched off.
    OneIn(u32),
}

/// Which calls fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    Write,
    Sync,
}

impl FaultFs {
    /// A switch in `dir` for files under `root` (the broker's data directory; canonicalized, since the shim
    /// compares it with `/proc/self/fd` links). `root` need not exist yet.
    pub fn new(dir: &Path, root: &Path) -> anyhow::Result<FaultFs> {
        let lib = build_shim()?;
        fs::create_dir_all(dir)?;
        let parent = root.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent)?;
        let root = fs::canonicalize(parent)?.join(root.file_name().unwrap_or_default());
        let f = FaultFs {
            lib,
            control: dir.join("faultfs.control"),
            log: dir.join("faultfs.log"),
            root,
            serial: Mutex::new(0),
        };
        f.off()?;
        let _ = fs::remove_file(&f.log);
        Ok(f)
    }

    /// Environment for the broker process.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            ("FAULTFS_ROOT".into(), self.root.display().to_string()),
            ("FAULTFS_CONTROL".into(), self.control.display().to_string()),
            ("FAULTFS_LOG".into(), self.log.display().to_string()),
        ]
    }

    fn write_control(&self, line: &str) -> anyhow::Result<()> {
        let mut n = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        let tmp = self.control.with_extension(format!("tmp{n}"));
        fs::write(&tmp, format!("{line}\n"))?;
        // rename: the shim sees the old line or the new one, never half of it
        fs::rename(&tmp, &self.control)?;
        Ok(())
    }

    /// Fails `ops` on files whose path relative to the data directory matches `regex` (POSIX ERE) with
    /// `errno` ("ENOSPC" / "EIO"): every such call while `count` is `Every`, the next n with `Next(n)`,
    /// each with probability 1/n with `OneIn(n)`. With
    /// `drop`, an injected sync failure also zeroes what was written to that file since its last successful
    /// sync (Linux may drop those pages after a failed fsync).
    pub fn fail(
        &self,
        errno: &str,
        ops: &[Ops],
        count: Count,
        drop: bool,
        regex: &str,
    ) -> anyhow::Result<()> {
        let ops: Vec<&str> = ops
            .iter()
            .map(|o| match o {
                Ops::Write => "write",
                Ops::Sync => "sync",
            })
            .collect();
        let count = match count {
            Count::Every => "-1".to_string(),
            Count::Next(n) => n.to_string(),
            Count::OneIn(n) => format!("1/{n}"),
        };
        self.write_control(&format!(
            "{errno} {} {count} {} {regex}",
            ops.join(","),
            drop as u8
        ))
    }

    /// Stops failing.
    pub fn off(&self) -> anyhow::Result<()> {
        self.write_control("off")
    }

    /// The failures injected so far, one line each: `<errno> <call> <relative path> dropped=<bytes>`.
    pub fn injections(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}
