//! An append-only file with an in-process write buffer, and the file-system helpers the log uses.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{io_err, Result};

/// A file's write buffer is written out at once (no sync) when it grows beyond this.
pub(crate) const PENDING_MAX: usize = 1 << 20;

/// An append-only file with an in-process write buffer.
pub(crate) struct LogFile {
    pub(crate) path: PathBuf,
    /// Opened on first use (reads, writes, syncs).
    pub(crate) file: Option<Arc<File>>,
    /// Bytes in the file.
    pub(crate) written: u64,
    /// Bytes not yet written to the file.
    pub(crate) pending: Vec<u8>,
    /// Written since the last `take_sync`.
    pub(crate) unsynced: bool,
    /// Sealed: once the buffer (the footer) is written out, free it and close the handle, so a long
    /// queue costs no memory or file descriptor per finished segment.
    pub(crate) release: bool,
}

impl LogFile {
    pub(crate) fn existing(path: PathBuf, len: u64) -> LogFile {
        LogFile {
            path,
            file: None,
            written: len,
            pending: Vec::new(),
            unsynced: false,
            release: false,
        }
    }

    /// Creates (or truncates) the file.
    pub(crate) fn create(path: PathBuf) -> Result<LogFile> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(LogFile {
            path,
            file: Some(Arc::new(f)),
            written: 0,
            pending: Vec::new(),
            // the truncation (of a stale file of the same name) must be durable too
            unsynced: true,
            release: false,
        })
    }

    pub(crate) fn handle(&mut self) -> Result<Arc<File>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        let f = Arc::new(f);
        self.file = Some(f.clone());
        Ok(f)
    }

    pub(crate) fn len(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Positional write of the buffer at the file's end: a retry after an error rewrites the same
    /// range.
    pub(crate) fn write_out(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let f = self.handle()?;
        f.write_all_at(&self.pending, self.written)
            .map_err(io_err(&self.path))?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        if self.release {
            self.pending = Vec::new();
        } else if self.pending.capacity() > PENDING_MAX {
            self.pending.shrink_to(PENDING_MAX);
        }
        self.unsynced = true;
        Ok(())
    }

    pub(crate) fn take_sync(&mut self, out: &mut Vec<(PathBuf, Arc<File>)>) {
        if self.unsynced {
            if let Some(f) = &self.file {
                out.push((self.path.clone(), f.clone()));
            }
            self.unsynced = false;
        }
        if self.release && self.pending.is_empty() {
            // The sync list holds its own handle; reads reopen the file when needed.
            self.file = None;
        }
    }
}

pub(crate) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

pub(crate) fn truncate_file(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    match File::open(path).and_then(|f| f.sync_all()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}
