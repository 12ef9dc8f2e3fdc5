//! An append-only file with an in-process write buffer, and the file-system helpers the log uses.
//!
//! A `LogFile` keeps every byte it was given until a sync of the file has covered it. That is what
//! makes a failed sync recoverable without trusting the kernel: after `fdatasync` fails, Linux may
//! have dropped the dirty pages and report success on the next call ("fsyncgate"), so the file is
//! marked broken and `repair` rewrites its durable prefix plus the kept bytes into a fresh file,
//! syncs that, and renames it over the old one.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::fault::{FaultOp, Faults, FileKind};
use crate::{io_err, Result};

/// A file's write buffer is written out at once (no sync) when it grows beyond this.
pub(crate) const PENDING_MAX: usize = 1 << 20;

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// Zeros for `LogFile::prefill`.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// A file handed to the flusher for a sync; `upto` is the file length the sync covers.
pub(crate) struct SyncItem {
    pub(crate) qid: u32,
    /// The segment the file belongs to (`None`: the queue's definition copy).
    pub(crate) seg: Option<u64>,
    pub(crate) file_id: u64,
    pub(crate) kind: FileKind,
    /// Shared with the file's `LogFile`: handing a file to a sync round copies no path.
    pub(crate) path: Arc<Path>,
    pub(crate) file: Arc<File>,
    pub(crate) upto: u64,
}

/// An append-only file with an in-process write buffer.
pub(crate) struct LogFile {
    pub(crate) path: Arc<Path>,
    pub(crate) kind: FileKind,
    /// Identifies this file in sync results (a deleted and re-created file gets a new id).
    pub(crate) id: u64,
    /// Opened on first use (reads, writes, syncs).
    pub(crate) file: Option<Arc<File>>,
    /// Bytes known to be on stable storage: a successful sync covered them.
    pub(crate) synced: u64,
    /// Bytes in the file (>= `synced`).
    pub(crate) written: u64,
    /// The file's bytes from offset `synced` on, after the first `head` (which a sync covered): the first
    /// `written - synced` are in the file and wait for a sync, the rest are not written yet. Appends go
    /// to the end; only the end is ever truncated.
    pub(crate) pending: Vec<u8>,
    /// Bytes at the front of `pending` that a sync covered, dropped lazily: moving the bytes appended
    /// during a sync to the front after every round cost a copy of every byte (a quarter of a stream
    /// append's instructions); they are moved once at least `PENDING_MAX` and as many as they are
    /// were dropped, at most one byte moved per byte dropped.
    pub(crate) head: usize,
    /// Written since the last `take_sync`.
    pub(crate) unsynced: bool,
    /// A sync failed: the file's bytes past `synced` cannot be trusted until `repair`.
    pub(crate) broken: bool,
    /// Sealed: once everything is synced, free the buffer and close the handle, so a long queue
    /// costs no memory or file descriptor per finished segment.
    pub(crate) release: bool,
    /// The file's length with the zeros kept ahead of its data (`prefill`); at most `written` when it has
    /// none.
    pub(crate) filled: u64,
    /// Bytes to be written at the very end of the file by the next `write_out` (a sealed segment's
    /// footer): over the last zeros kept ahead (`prefill`) if there is room, else after the data. They
    /// are not data: `written` and `len` do not count them.
    pub(crate) tail: Vec<u8>,
    /// Synced bytes kept at the front of `pending` (at least this many, once a sync covered them) for
    /// readers (a stream's segment being written): a reader a little behind the writers reads them from
    /// memory, not back from the file. 0: none kept (a queue's files).
    pub(crate) keep: usize,
}

impl LogFile {
    pub(crate) fn existing(path: PathBuf, kind: FileKind, len: u64) -> LogFile {
        LogFile {
            path: path.into(),
            kind,
            id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
            file: None,
            synced: len,
            written: len,
            pending: Vec::new(),
            head: 0,
            unsynced: false,
            broken: false,
            release: false,
            keep: 0,
            filled: len,
            tail: Vec::new(),
        }
    }

    /// Keeps the file zero-filled ahead of its written data (never past `cap`): as far ahead as it holds
    /// data, at least `min` and at most `max` bytes (so a file that holds little costs little disk),
    /// writing the zeros again once half of them are used: a record then lands on blocks that already belong to the file, and the
    /// `fdatasync` that makes it durable has no file size or block allocation to commit (on ext4: no journal
    /// commit, which takes milliseconds under other writers' load). PostgreSQL zero-fills its WAL segments
    /// for the same reason. Call after `write_out`, before the round takes the file for its sync (which then
    /// covers the zeros). Recovery tells the zeros from records by their checksums. Not for a sealed file.
    pub(crate) fn prefill(&mut self, min: u64, max: u64, cap: u64, faults: &Faults) -> Result<()> {
        let ahead = self.written.clamp(min, max);
        if self.release || self.broken || self.filled >= self.written + ahead / 2 {
            return Ok(());
        }
        let to = (self.written + ahead).min(cap.max(self.written));
        let at = self.filled.max(self.written);
        if at >= to {
            return Ok(());
        }
        faults
            .check(self.kind, FaultOp::Write)
            .map_err(io_err(&self.path))?;
        let file = self.handle()?;
        write_zeros(&file, &self.path, at, to)?;
        self.filled = to;
        self.unsynced = true;
        Ok(())
    }

    /// The file position of `pending[0]`: bytes from there to `len()` are in memory.
    pub(crate) fn mem_from(&self) -> u64 {
        self.synced - self.head as u64
    }

    /// Creates (or truncates) the file.
    pub(crate) fn create(path: PathBuf, kind: FileKind, faults: &Faults) -> Result<LogFile> {
        faults.check(kind, FaultOp::Write).map_err(io_err(&path))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut lf = LogFile::existing(path, kind, 0);
        lf.file = Some(Arc::new(f));
        // the creation (or the truncation of a stale file of the same name) must be durable too
        lf.unsynced = true;
        Ok(lf)
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

    /// The file's length on disk now: its written data, or its zeros ahead (`prefill`) if they reach
    /// further.
    pub(crate) fn disk_len(&self) -> u64 {
        self.filled.max(self.written)
    }

    /// The file's length once everything buffered is written.
    pub(crate) fn len(&self) -> u64 {
        self.synced + (self.pending.len() - self.head) as u64
    }

    /// Appends to the buffer.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet written to the file.
    pub(crate) fn unwritten(&self) -> usize {
        (self.len() - self.written) as usize
    }

    /// What a flush round does with the file before its sync: `repair` if a sync failed, else `write_out`.
    pub(crate) fn write_out_or_repair(&mut self, faults: &Faults) -> Result<()> {
        if self.broken {
            self.repair(faults)
        } else {
            self.write_out(faults)
        }
    }

    /// Positional write of the unwritten part of the buffer at the file's end: a retry after an
    /// error rewrites the same range.
    pub(crate) fn write_out(&mut self, faults: &Faults) -> Result<()> {
        if self.unwritten() == 0 && self.tail.is_empty() {
            return Ok(());
        }
        faults
            .check(self.kind, FaultOp::Write)
            .map_err(io_err(&self.path))?;
        let f = self.handle()?;
        if self.unwritten() > 0 {
            let from = self.head + (self.written - self.synced) as usize;
            f.write_all_at(&self.pending[from..], self.written)
                .map_err(io_err(&self.path))?;
            self.written = self.len();
            self.unsynced = true;
        }
        if !self.tail.is_empty() {
            // at the file's end, so that the file's length stays what the prefill made it
            let n = self.tail.len() as u64;
            let end = self.filled.max(self.written);
            let at = if end >= self.written + n {
                end - n
            } else {
                self.written
            };
            f.write_all_at(&self.tail, at).map_err(io_err(&self.path))?;
            self.filled = at + n;
            self.tail = Vec::new();
            self.unsynced = true;
        }
        Ok(())
    }

    /// Hands the file to the flusher if it was written since the last call.
    pub(crate) fn take_sync(&mut self, qid: u32, seg: Option<u64>, out: &mut Vec<SyncItem>) {
        if !self.unsynced {
            return;
        }
        self.unsynced = false;
        if let Some(f) = &self.file {
            out.push(SyncItem {
                qid,
                seg,
                file_id: self.id,
                kind: self.kind,
                path: self.path.clone(),
                file: f.clone(),
                upto: self.written,
            });
        }
    }

    /// A sync covering the file's first `upto` bytes succeeded: those bytes leave the buffer.
    pub(crate) fn synced_to(&mut self, upto: u64) {
        if self.broken || upto <= self.synced || upto > self.written {
            return;
        }
        self.head += (upto - self.synced) as usize;
        self.synced = upto;
        let live = self.pending.len() - self.head;
        if live == 0 && (self.keep == 0 || self.release) {
            self.pending.clear();
            self.head = 0;
        } else if self.head >= PENDING_MAX + self.keep && self.head - self.keep >= live {
            // at least `PENDING_MAX` dropped, and at least as many as the live bytes moved
            let drop = self.head - self.keep;
            self.pending.drain(..drop);
            self.head = self.keep;
        }
        self.settle_buffer();
    }

    /// A sealed file (`release`) with nothing left to write or sync lets its buffer and handle go now
    /// (`synced_to` does it when a sync finishes the file; this is for a file sealed already clean).
    pub(crate) fn let_go_if_done(&mut self) {
        if self.release && self.is_clean() {
            self.pending = Vec::new();
            self.head = 0;
            self.file = None;
        }
    }

    fn settle_buffer(&mut self) {
        if !self.pending.is_empty() {
            return;
        }
        if self.release {
            // Reads reopen the file when needed.
            self.pending = Vec::new();
            self.file = None;
        } else if self.pending.capacity() > PENDING_MAX {
            self.pending.shrink_to(PENDING_MAX);
        }
    }

    /// Everything written and synced: nothing of this file is at risk.
    pub(crate) fn is_clean(&self) -> bool {
        !self.broken && self.pending.len() == self.head && !self.unsynced && self.tail.is_empty()
    }

    /// After a failed sync: writes the durable prefix (read back from the file) and every kept
    /// byte into `<name>.repair`, syncs it, renames it over the file and syncs the directory.
    /// The file is then fully written and durable. On error it stays broken (retried later).
    pub(crate) fn repair(&mut self, faults: &Faults) -> Result<()> {
        let mut tmp_name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        tmp_name.push(".repair");
        let tmp = self.path.with_file_name(tmp_name);
        let mut prefix = vec![0u8; self.synced as usize];
        if self.synced > 0 {
            let old = self.handle()?;
            old.read_exact_at(&mut prefix, 0).map_err(io_err(&self.path))?;
        }
        faults.check(self.kind, FaultOp::Write).map_err(io_err(&tmp))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all_at(&prefix, 0).map_err(io_err(&tmp))?;
        f.write_all_at(&self.pending[self.head..], self.synced)
            .map_err(io_err(&tmp))?;
        faults.check(self.kind, FaultOp::Sync).map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir, faults)?;
        }
        self.file = Some(Arc::new(f));
        self.synced = self.len();
        self.written = self.synced;
        self.filled = self.written;
        self.pending.clear();
        self.head = 0;
        self.broken = false;
        self.unsynced = false;
        self.settle_buffer();
        Ok(())
    }
}

pub(crate) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Writes zeros over bytes `from..to` of a file (no sync): the prefill, and stream recovery's torn tails.
pub(crate) fn write_zeros(file: &File, path: &Path, mut from: u64, to: u64) -> Result<()> {
    while from < to {
        let n = ((to - from) as usize).min(ZEROS.len());
        file.write_all_at(&ZEROS[..n], from).map_err(io_err(path))?;
        from += n as u64;
    }
    Ok(())
}

/// Replaces a file's contents with `bytes` durably but for the directory entry: written to `<name>.tmp`,
/// synced, renamed over it (the caller syncs the directory). A crash leaves the old file or the new one
/// (and a `.tmp` that the next open removes).
pub(crate) fn rewrite_file(path: &Path, kind: FileKind, bytes: &[u8], faults: &Faults) -> Result<()> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    faults.check(kind, FaultOp::Write).map_err(io_err(&tmp))?;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all_at(bytes, 0).map_err(io_err(&tmp))?;
    faults.check(kind, FaultOp::Sync).map_err(io_err(&tmp))?;
    f.sync_data().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Cuts a file to `len` bytes and syncs it (recovery: torn tails).
pub(crate) fn truncate_file(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// fsync of a directory, so that the files created, renamed or removed in it are durable. A
/// directory that no longer exists needs nothing.
pub(crate) fn sync_dir(path: &Path, faults: &Faults) -> Result<()> {
    faults
        .check(FileKind::Directory, FaultOp::Sync)
        .map_err(io_err(path))?;
    match File::open(path).and_then(|f| f.sync_all()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_stay_buffered_until_a_sync_covers_them() {
        let d = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let mut f = LogFile::create(d.path().join("a.seg"), FileKind::Segment, &faults).unwrap();
        f.push(b"hello ");
        f.write_out(&faults).unwrap();
        f.push(b"world");
        assert_eq!((f.synced, f.written, f.len()), (0, 6, 11));
        let mut items = Vec::new();
        f.take_sync(1, Some(0), &mut items);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].upto, 6);
        f.synced_to(items[0].upto);
        assert_eq!(&f.pending[f.head..], b"world");
        f.write_out(&faults).unwrap();
        assert_eq!(fs::read(&f.path).unwrap(), b"hello world");
        f.synced_to(11);
        assert!(f.pending.is_empty());
    }

    /// Synced bytes are dropped lazily; what is kept, written and repaired is always the unsynced tail.
    #[test]
    fn synced_bytes_leave_the_buffer_lazily() {
        let d = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let mut f = LogFile::create(d.path().join("a.seg"), FileKind::Segment, &faults).unwrap();
        let mut want = Vec::new();
        for i in 0..40u8 {
            let chunk = vec![i; 100_000];
            want.extend_from_slice(&chunk);
            f.push(&chunk);
            f.write_out(&faults).unwrap();
            // a sync covering all but the last 30,000 bytes
            let upto = f.written - 30_000;
            f.synced_to(upto);
            assert_eq!(f.len(), want.len() as u64);
            assert_eq!(&f.pending[f.head..], &want[upto as usize..], "round {i}");
            assert!(f.head < 2 * PENDING_MAX, "dropped bytes are let go");
        }
        f.push(b"tail");
        want.extend_from_slice(b"tail");
        f.broken = true;
        f.repair(&faults).unwrap();
        assert_eq!(fs::read(&f.path).unwrap(), want);
        assert!(f.is_clean());
    }

    #[test]
    fn repair_rewrites_the_durable_prefix_and_the_kept_bytes_into_a_fresh_file() {
        let d = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let path = d.path().join("a.seg");
        let mut f = LogFile::create(path.clone(), FileKind::Segment, &faults).unwrap();
        f.push(b"durable|");
        f.write_out(&faults).unwrap();
        f.synced_to(8);
        f.push(b"kept-in-memory|");
        f.write_out(&faults).unwrap();
        // a failed sync: pretend the kernel dropped the written pages
        f.broken = true;
        std::os::unix::fs::FileExt::write_all_at(&*f.handle().unwrap(), b"XXXXXXXXXXXXXXX", 8).unwrap();
        f.synced_to(23); // ignored while broken
        assert_eq!(f.synced, 8);
        f.push(b"later");
        faults.fail(FileKind::Segment, FaultOp::Sync, 5, Some(1));
        assert!(f.repair(&faults).is_err());
        assert!(f.broken);
        f.repair(&faults).unwrap();
        assert!(!f.broken && f.is_clean());
        assert_eq!(fs::read(&path).unwrap(), b"durable|kept-in-memory|later");
        assert_eq!((f.synced, f.written), (28, 28));
        assert!(!d.path().join("a.seg.repair").exists());
    }

    #[test]
    fn failed_writes_are_retried_from_the_buffer() {
        let d = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let mut f = LogFile::create(d.path().join("a.ack"), FileKind::Ack, &faults).unwrap();
        f.push(b"abc");
        faults.fail(FileKind::Ack, FaultOp::Write, 28, Some(1));
        assert!(f.write_out(&faults).is_err());
        assert_eq!(f.written, 0);
        f.write_out(&faults).unwrap();
        assert_eq!(fs::read(&f.path).unwrap(), b"abc");
    }
}
