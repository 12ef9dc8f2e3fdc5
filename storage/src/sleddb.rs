//! sled, made durable by the store itself, and rebuilt from memory when a write or sync fails.
//!
//! sled 0.34's `Db::flush` writes its log with `sync_file_range`, which syncs no metadata and no
//! disk cache, and sled never fsyncs its `conf` file or its directories. So after every
//! `Db::flush` the store `fdatasync`s sled's `db` file and fsyncs every other file in `sled/`
//! (and `sled/blobs/`) it has not synced at that length yet, and the directories whose entries
//! changed (`sync`). A new store gets the same at creation, plus the data directory itself.
//!
//! After an I/O error sled keeps failing every write (its "global error"), and after a failed fsync
//! its files cannot be trusted (the kernel may have dropped the dirty pages and report success on
//! the next fsync). Either way the store marks sled broken and the next flush round calls
//! `rebuild`: sled's in-memory contents (the truth the broker acted on) are copied into a fresh
//! sled under `sled.new`, which is synced whole and then swapped in by two renames (`sled` ->
//! `sled.old`, `sled.new` -> `sled`) and a sync of the data directory. `prepare_dir` finishes or
//! undoes an interrupted swap at the next open.

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::fault::{FaultOp, Faults, FileKind};
use crate::seglog::sync_dir;
use crate::sled_worker::SledWorker;
use crate::{io_err, Result, StoreError, SLED_SEGMENT_SIZE};

/// sled's settings (fixed for the life of a store).
#[derive(Debug, Clone)]
pub(crate) struct SledConfig {
    pub(crate) cache_capacity_bytes: u64,
    pub(crate) flush_interval_ms: Option<u64>,
}

struct Slot {
    /// `None` while a rebuild is incomplete (every sled call fails then).
    db: Option<sled::Db>,
    /// `sled/db`, opened by us for `fdatasync`.
    db_file: Option<File>,
    /// The contents a failed rebuild copied out of the old db, for the next attempt.
    saved: Option<Vec<(sled::IVec, sled::IVec)>>,
}

pub(crate) struct SledDb {
    data_dir: PathBuf,
    path: PathBuf,
    config: SledConfig,
    faults: Arc<Faults>,
    /// Every call into sled holds this for reading; `rebuild` holds it for writing.
    slot: RwLock<Slot>,
    /// Files of `sled/` (and `sled/blobs/`) synced so far, with the length they were synced at
    /// (used by the flusher thread only).
    seen: Mutex<BTreeMap<PathBuf, u64>>,
    /// Written since the last `sync` took this flag.
    dirty: AtomicBool,
    /// A write or sync failed: `rebuild` before anything in sled counts as durable again.
    broken: AtomicBool,
    writeout: Arc<WriteOut>,
    writeout_thread: Mutex<Option<JoinHandle<()>>>,
    /// Removals that could not be written because sled was broken or being rebuilt: the rebuild
    /// leaves these keys out of the fresh copy (see `defer_removal`).
    deferred: Mutex<Vec<Removal>>,
    /// Runs the flusher's and the rebuild's sled calls with a deadline (`sled_worker`).
    worker: SledWorker,
    /// A rebuild is under way: writes wait for it (`wait_rebuild`).
    rebuilding: AtomicBool,
    rebuild_mx: Mutex<()>,
    rebuild_cv: Condvar,
}

/// How long a sled call may take before it is abandoned (`sled_worker`). Far above any flush seen
/// (milliseconds), well below the minute a publisher waits for its confirms.
const SLED_DEADLINE: Duration = Duration::from_secs(10);

/// A removal `rebuild` applies to the copy it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Removal {
    Key(Vec<u8>),
    /// Every key starting with these bytes.
    Prefix(Vec<u8>),
}

impl Removal {
    fn covers(&self, k: &[u8]) -> bool {
        match self {
            Removal::Key(key) => k == key.as_slice(),
            Removal::Prefix(p) => k.starts_with(p),
        }
    }
}

/// The write-out thread's state. sled keeps writes in its own buffers until `Db::flush`; a process
/// killed before that loses them (a kill -9 keeps what reached the kernel). The flusher calls
/// `Db::flush` at the start of each round, but a round can be busy in an `fsync` for milliseconds;
/// so a small thread hands sled's buffers to the kernel (`Db::flush`, no fsync) as soon as sled is
/// written, as sled's own flush did before the store synced sled itself. Durability still comes
/// from the flusher's rounds only.
#[derive(Default)]
struct WriteOut {
    pending: AtomicBool,
    state: Mutex<WriteOutState>,
    cv: Condvar,
}

#[derive(Default)]
struct WriteOutState {
    sleeping: bool,
    stop: bool,
}

/// What `SledDb::open` found.
pub(crate) enum Opened {
    Ok(Box<SledDb>),
    /// sled's files could not be read as a database (the error text).
    Corrupt(String),
}

fn sled_config(path: &Path, c: &SledConfig) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(c.cache_capacity_bytes)
        .flush_every_ms(c.flush_interval_ms)
        .use_compression(false)
        .segment_size(SLED_SEGMENT_SIZE)
}

/// Drops a sled handle without letting sled take the thread down. sled 0.34's `Drop for Log` ends
/// with `config.file.sync_all().unwrap()` whenever sled has not recorded an I/O error of its own:
/// one failed fsync there (EIO, or ENOSPC on some file systems) panics the dropping thread. That
/// thread is the flusher during a rebuild, and a dead flusher settles no ticket again (no confirm,
/// no nack) while the definitions store stays closed. Returns false if the drop panicked: sled's
/// files were then not synced, and the caller must not count them as durable.
pub(crate) fn drop_db(db: sled::Db, what: &Path) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db))) {
        Ok(()) => true,
        Err(_) => {
            tracing::error!(
                path = %what.display(),
                "closing the definitions store failed (sled's final fsync failed); its files are not trusted"
            );
            false
        }
    }
}

fn open_err(path: &Path) -> impl FnOnce(sled::Error) -> StoreError + '_ {
    move |e| match e {
        sled::Error::Io(source) => StoreError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => other.into(),
    }
}

/// Wait (up to `timeout`) until nobody holds sled's flock on `sled_dir/db`. Returns whether it
/// is free (or absent).
pub(crate) fn wait_sled_lock_free(sled_dir: &Path, timeout: Duration) -> bool {
    let f = match File::open(sled_dir.join("db")) {
        Ok(f) => f,
        Err(_) => return true,
    };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match f.try_lock() {
            Ok(()) => return true, // unlocked when `f` is closed
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => return false,
        }
    }
}

fn remove_dir_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Finishes or undoes a rebuild that a crash interrupted (see the module docs).
pub(crate) fn prepare_dir(data_dir: &Path, faults: &Faults) -> Result<()> {
    let (cur, new, old) = (
        data_dir.join("sled"),
        data_dir.join("sled.new"),
        data_dir.join("sled.old"),
    );
    let mut changed = false;
    if !cur.exists() {
        // `sled.new` is only renamed once it is complete; else the previous one is still whole
        let from = if new.exists() { &new } else { &old };
        if from.exists() {
            tracing::warn!(from = %from.display(), "finishing an interrupted rebuild of the definitions store");
            fs::rename(from, &cur).map_err(io_err(from))?;
            changed = true;
        }
    }
    changed |= remove_dir_if_exists(&new)?;
    changed |= remove_dir_if_exists(&old)?;
    if changed {
        sync_dir(data_dir, faults)?;
    }
    Ok(())
}

/// Every file under `dir` (one level of subdirectories: `blobs/`) with its length.
fn list_files(dir: &Path, out: &mut BTreeMap<PathBuf, u64>) -> Result<()> {
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let md = match e.metadata() {
            Ok(md) => md,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err(&e.path())(err)),
        };
        if md.is_dir() {
            list_files(&e.path(), out)?;
        } else {
            out.insert(e.path(), md.len());
        }
    }
    Ok(())
}

/// fsyncs what changed under `dir` since `seen` (updated): each new or grown file, and the
/// directories whose entries changed. `db_file` (sled's log, always written) is synced anyway.
fn sync_tree(
    dir: &Path,
    db_file: Option<&File>,
    seen: &mut BTreeMap<PathBuf, u64>,
    faults: &Faults,
) -> Result<usize> {
    faults.check(FileKind::Sled, FaultOp::Sync).map_err(io_err(dir))?;
    let mut syncs = 0;
    let db_path = dir.join("db");
    if let Some(f) = db_file {
        f.sync_data().map_err(io_err(&db_path))?;
        syncs += 1;
    }
    let mut now = BTreeMap::new();
    list_files(dir, &mut now)?;
    let mut dirs_changed: Vec<PathBuf> = Vec::new();
    for (path, len) in &now {
        let known = seen.get(path);
        if known == Some(len) || (db_file.is_some() && *path == db_path && known.is_some()) {
            continue;
        }
        match File::open(path) {
            Ok(f) => f.sync_all().map_err(io_err(path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(path)(e)),
        }
        syncs += 1;
        if known.is_none() {
            if let Some(parent) = path.parent() {
                if !dirs_changed.iter().any(|d| d == parent) {
                    dirs_changed.push(parent.to_path_buf());
                }
            }
        }
    }
    for gone in seen.keys().filter(|p| !now.contains_key(*p)) {
        if let Some(parent) = gone.parent() {
            if !dirs_changed.iter().any(|d| d == parent) {
                dirs_changed.push(parent.to_path_buf());
            }
        }
    }
    for d in &dirs_changed {
        sync_dir(d, faults)?;
        syncs += 1;
    }
    *seen = now;
    Ok(syncs)
}

impl SledDb {
    /// Opens (or creates) sled under `data_dir/sled`. A new sled is made durable at once: its
    /// files, its directories and the data directory.
    pub(crate) fn open(data_dir: &Path, config: SledConfig, faults: Arc<Faults>) -> Result<Opened> {
        prepare_dir(data_dir, &faults)?;
        let path = data_dir.join("sled");
        // We hold LOCK, so a sled lock still held can only be a Store of this process that is
        // being dropped right now (see Inner::drop); give it a moment.
        wait_sled_lock_free(&path, Duration::from_secs(2));
        let db = match sled_config(&path, &config).open() {
            Ok(db) => db,
            Err(sled::Error::Io(source)) => return Err(StoreError::Io { path, source }),
            Err(e) => return Ok(Opened::Corrupt(e.to_string())),
        };
        let db_file = File::open(path.join("db")).map_err(io_err(&path))?;
        let s = SledDb {
            data_dir: data_dir.to_path_buf(),
            path,
            config,
            faults,
            slot: RwLock::new(Slot {
                db: Some(db),
                db_file: Some(db_file),
                saved: None,
            }),
            seen: Mutex::new(BTreeMap::new()),
            dirty: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            writeout: Arc::new(WriteOut::default()),
            writeout_thread: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
            worker: SledWorker::new("mailroom-sled-call", SLED_DEADLINE),
            rebuilding: AtomicBool::new(false),
            rebuild_mx: Mutex::new(()),
            rebuild_cv: Condvar::new(),
        };
        // Everything sled wrote on open (conf, the db file, blobs/, a snapshot), the sled
        // directory's entries, and `sled` in the data directory.
        s.sync()?;
        sync_dir(data_dir, &s.faults)?;
        Ok(Opened::Ok(Box::new(s)))
    }

    /// Moves an unreadable sled directory aside (into `lost`), so that a fresh one can be made.
    pub(crate) fn move_aside(data_dir: &Path, lost: &Path, faults: &Faults) -> Result<PathBuf> {
        let from = data_dir.join("sled");
        fs::create_dir_all(lost).map_err(io_err(lost))?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut to = lost.join(format!("sled-{secs}"));
        let mut n = 1;
        while to.exists() {
            to = lost.join(format!("sled-{secs}-{n}"));
            n += 1;
        }
        fs::rename(&from, &to).map_err(io_err(&from))?;
        sync_dir(lost, faults)?;
        sync_dir(data_dir, faults)?;
        Ok(to)
    }

    /// A read. Fails (without touching sled) while a rebuild is incomplete.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T> {
        let slot = self.slot.read();
        let db = slot.db.as_ref().ok_or_else(unavailable)?;
        Ok(f(db)?)
    }

    /// A write: on success sled is dirty (the next flush round syncs it); on failure it is broken
    /// (the next flush round rebuilds it) and the error is returned, nothing changed.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T> {
        if let Err(e) = self.faults.check(FileKind::Sled, FaultOp::Write) {
            self.broken.store(true, SeqCst);
            return Err(io_err(&self.path)(e));
        }
        self.wait_rebuild();
        let slot = self.slot.read();
        if self.rebuilding.load(SeqCst) || self.worker.is_stuck() {
            return Err(unavailable());
        }
        let db = slot.db.as_ref().ok_or_else(unavailable)?;
        match f(db) {
            Ok(v) => {
                self.dirty.store(true, SeqCst);
                self.kick_writeout();
                Ok(v)
            }
            Err(e) => {
                if matches!(e, sled::Error::Io(_)) {
                    self.broken.store(true, SeqCst);
                }
                Err(e.into())
            }
        }
    }

    /// Starts the write-out thread (`WriteOut`). It holds a reference to the store's sled handle
    /// through `this`.
    pub(crate) fn start_writeout(this: &Arc<crate::flusher::Shared>) -> Result<()> {
        let shared = Arc::downgrade(this);
        let w = this.sled.writeout.clone();
        let h = std::thread::Builder::new()
            .name("mailroom-sled-writeout".into())
            .spawn(move || loop {
                {
                    let mut st = w.state.lock();
                    while !w.pending.load(SeqCst) && !st.stop {
                        st.sleeping = true;
                        w.cv.wait(&mut st);
                        st.sleeping = false;
                    }
                    if st.stop {
                        return;
                    }
                }
                w.pending.store(false, SeqCst);
                let Some(shared) = shared.upgrade() else { return };
                // A handle of its own, outside the lock: a flush that never returns (see
                // `sled_worker`) then holds up only this thread, not a rebuild. Panics (sled's
                // `unwrap`s, also in its `Drop` if this is the last handle) are caught.
                let db = shared.sled.slot.read().db.clone();
                if let Some(db) = db {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                        let r = db.flush();
                        drop(db);
                        r
                    }));
                    if !matches!(r, Ok(Ok(_))) {
                        tracing::debug!("sled write-out failed (the next flush round reports it)");
                        shared.sled.broken.store(true, SeqCst);
                    }
                }
            })
            .map_err(io_err(&this.sled.path))?;
        *this.sled.writeout_thread.lock() = Some(h);
        Ok(())
    }

    fn kick_writeout(&self) {
        if !self.writeout.pending.swap(true, SeqCst) {
            let st = self.writeout.state.lock();
            if st.sleeping {
                self.writeout.cv.notify_one();
            }
        }
    }

    fn stop_writeout(&self) {
        self.writeout.state.lock().stop = true;
        self.writeout.cv.notify_all();
        if let Some(h) = self.writeout_thread.lock().take() {
            // not forever: a write-out stuck in sled (`sled_worker`) is left behind
            let deadline = std::time::Instant::now() + SLED_DEADLINE;
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }

    /// A write that arrives during a rebuild waits for it (tens of milliseconds; at most the time the
    /// rebuild's sled calls are given, `SLED_DEADLINE` each), as it waited for sled's lock before the
    /// copy was built without it; then it goes to the new sled, or to the old one if the rebuild failed.
    /// Not while a sled call is stuck (`sled_worker`): then it fails at once.
    fn wait_rebuild(&self) {
        if !self.rebuilding.load(SeqCst) || self.worker.is_stuck() {
            return;
        }
        let deadline = std::time::Instant::now() + SLED_DEADLINE * 3;
        let mut g = self.rebuild_mx.lock();
        while self.rebuilding.load(SeqCst) && !self.worker.is_stuck() {
            if self.rebuild_cv.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
    }

    /// Records removals whose write failed because sled is broken or closed for a rebuild (`can_defer`).
    /// No write can succeed until the rebuild (sled refuses every write after an I/O error of its
    /// own, and there is no sled while it is rebuilt), and the rebuild leaves these keys out of the
    /// fresh copy: so the removal is done by the rebuild, and durable once a flush round succeeds
    /// after it, like any write. Without this, a change that was undone in memory (a declare whose
    /// write could not be made durable) came back from the rebuilt copy.
    pub(crate) fn defer_removal(&self, r: Vec<Removal>) {
        self.deferred.lock().extend(r);
    }

    /// Takes back removals deferred by `defer_removal` (the operation they belonged to failed).
    pub(crate) fn cancel_removal(&self, r: &[Removal]) {
        let mut d = self.deferred.lock();
        for x in r {
            if let Some(i) = d.iter().rposition(|y| y == x) {
                d.remove(i);
            }
        }
    }

    /// Whether a failed write can be deferred to the rebuild: sled is marked broken (a rebuild is
    /// due) or closed by one in progress.
    pub(crate) fn can_defer(&self, e: &StoreError) -> bool {
        matches!(e, StoreError::Unavailable(_)) || self.is_broken()
    }

    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, SeqCst)
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(SeqCst)
    }

    pub(crate) fn mark_broken(&self) {
        self.broken.store(true, SeqCst);
    }

    /// `Db::flush`, then the fsyncs sled does not do. Returns the number of fsyncs. On failure sled
    /// is broken.
    pub(crate) fn sync(&self) -> Result<usize> {
        let slot = self.slot.read();
        let r = (|| {
            let db = slot.db.as_ref().ok_or_else(unavailable)?;
            self.faults
                .check(FileKind::Sled, FaultOp::Sync)
                .map_err(io_err(&self.path))?;
            let db = db.clone();
            self.worker.run("flushing the definitions store", move || {
                Ok(db.flush().map(|_| ())?)
            })?;
            sync_tree(
                &self.path,
                slot.db_file.as_ref(),
                &mut self.seen.lock(),
                &self.faults,
            )
        })();
        if r.is_err() {
            self.broken.store(true, SeqCst);
        }
        r
    }

    /// Copies sled's contents into a fresh sled and swaps it in (module docs). All of it under
    /// the write lock: no sled call runs meanwhile. The old sled stays open (readable) until the
    /// new one is complete; on error sled stays broken and the next round tries again.
    pub(crate) fn rebuild(&self) -> Result<()> {
        // Writes fail at once (`Unavailable`) from here until the new sled is in, instead of waiting
        // for the lock while the copy is built: a rebuild can take up to `SLED_DEADLINE`.
        // After a sled call was abandoned (`sled_worker`), they keep failing until a rebuild succeeds:
        // no call may start a sled write that could wait on the stuck one. Otherwise writes go to the
        // old sled again between attempts, as before (durable once a round succeeds after a rebuild).
        self.rebuilding.store(true, SeqCst);
        let r = self.rebuild_inner();
        if r.is_ok() {
            self.worker.clear_stuck();
        }
        self.rebuilding.store(false, SeqCst);
        let _g = self.rebuild_mx.lock();
        self.rebuild_cv.notify_all();
        r
    }

    fn rebuild_inner(&self) -> Result<()> {
        // The copy is taken under the write lock: every write that got the read lock before is in
        // it, and every write after sees `rebuilding` (checked under the read lock) and fails.
        let (data, closed) = {
            let slot = self.slot.write();
            // A copy of what a failed attempt saved: `saved` is cleared once the new sled is in.
            let data = match &slot.saved {
                Some(d) => d.clone(),
                None => {
                    let db = slot.db.as_ref().ok_or_else(unavailable)?;
                    db.iter().collect::<sled::Result<Vec<_>>>()?
                }
            };
            (data, slot.db.is_none())
        };
        let deferred = self.deferred.lock().clone();
        let mut data = data;
        if !deferred.is_empty() {
            data.retain(|(k, _)| !deferred.iter().any(|r| r.covers(k)));
        }
        // Built without the lock: reads go on from the old sled meanwhile.
        let built = self.build_new(&data);
        let mut slot = self.slot.write();
        let seen = match built {
            Ok(seen) => seen,
            Err(e) => {
                if closed {
                    // an earlier attempt closed the old one: its data is all there is
                    slot.saved = Some(data);
                }
                return Err(e);
            }
        };
        if !closed {
            // The old db's close may fail (it is broken): what counts is `data`, copied above.
            if let Some(db) = slot.db.take() {
                let path = self.path.clone();
                let _ = self.worker.run("closing the old definitions store", move || {
                    drop_db(db, &path);
                    Ok(())
                });
            }
            slot.db_file = None;
            wait_sled_lock_free(&self.path, Duration::from_secs(5));
        }
        // the old one is closed from here on: keep the data until the new one is in place
        slot.saved = Some(data);
        let (db, db_file) = self.swap_in()?;
        let keys = slot.saved.take().map_or(0, |d| d.len());
        // Removals deferred while the copy was built: applied to the new sled (synced by the next
        // round, which the caller's tickets wait for like any write's).
        let late: Vec<Removal> = {
            let mut d = self.deferred.lock();
            let applied = deferred.len().min(d.len());
            d.drain(..applied);
            d.drain(..).collect()
        };
        for r in &late {
            let applied = match r {
                Removal::Key(k) => db.remove(k.as_slice()).map(|_| ()),
                Removal::Prefix(p) => db
                    .scan_prefix(p)
                    .keys()
                    .try_for_each(|k| db.remove(k?).map(|_| ())),
            };
            if let Err(e) = applied {
                self.deferred.lock().push(r.clone());
                self.broken.store(true, SeqCst);
                tracing::error!(error = %e, "a removal deferred to the rebuild failed; sled is rebuilt again");
            }
        }
        slot.db = Some(db);
        slot.db_file = Some(db_file);
        *self.seen.lock() = seen;
        if !self.deferred.lock().is_empty() {
            return Err(StoreError::Engine(
                "the rebuilt definitions store could not take a deferred removal".into(),
            ));
        }
        self.broken.store(false, SeqCst);
        // what was deferred late is in the new sled but not synced yet
        self.dirty.store(!late.is_empty(), SeqCst);
        tracing::warn!(keys, "definitions store rebuilt after a write failure");
        Ok(())
    }

    /// Writes `data` into a fresh sled at `sled.new` and syncs all of it. Returns the files synced
    /// (under their names after the swap).
    fn build_new(&self, data: &[(sled::IVec, sled::IVec)]) -> Result<BTreeMap<PathBuf, u64>> {
        let new = self.data_dir.join("sled.new");
        remove_dir_if_exists(&new)?;
        self.faults
            .check(FileKind::Sled, FaultOp::Write)
            .map_err(io_err(&new))?;
        let (path, config, data) = (new.clone(), self.config.clone(), data.to_vec());
        self.worker.run("building the new definitions store", move || {
            let db = sled_config(&path, &config).open().map_err(open_err(&path))?;
            // Single inserts, not a batch: `apply_batch` takes sled's process-wide concurrency lock
            // for writing, and a sled call left stuck after an I/O error can keep that lock from
            // ever being granted (seen: the second rebuild parked there). The new sled is private
            // until it is renamed into place, so the batch's atomicity is not needed.
            let filled = data
                .into_iter()
                .try_for_each(|(k, v)| db.insert(k, v).map(|_| ()))
                .and_then(|()| db.flush().map(|_| ()));
            let closed = drop_db(db, &path);
            filled?;
            if !closed {
                return Err(StoreError::Engine(format!(
                    "closing the new definitions store at {} failed (its final fsync failed)",
                    path.display()
                )));
            }
            Ok(())
        })?;
        wait_sled_lock_free(&new, Duration::from_secs(5));
        let mut seen = BTreeMap::new();
        sync_tree(&new, None, &mut seen, &self.faults)?;
        sync_dir(&new, &self.faults)?;
        Ok(seen
            .into_iter()
            .filter_map(|(p, len)| p.strip_prefix(&new).ok().map(|rel| (self.path.join(rel), len)))
            .collect())
    }

    /// `sled` -> `sled.old`, `sled.new` -> `sled`, sync of the data directory, then opens it.
    fn swap_in(&self) -> Result<(sled::Db, File)> {
        let new = self.data_dir.join("sled.new");
        let old = self.data_dir.join("sled.old");
        remove_dir_if_exists(&old)?;
        if self.path.exists() {
            fs::rename(&self.path, &old).map_err(io_err(&self.path))?;
        }
        fs::rename(&new, &self.path).map_err(io_err(&new))?;
        sync_dir(&self.data_dir, &self.faults)?;
        if let Err(e) = remove_dir_if_exists(&old) {
            tracing::warn!(error = %e, "removing the old definitions store failed");
        }
        sync_dir(&self.data_dir, &self.faults)?;
        let (path, config) = (self.path.clone(), self.config.clone());
        let db = self
            .worker
            .run("opening the rebuilt definitions store", move || {
                sled_config(&path, &config).open().map_err(open_err(&path))
            })?;
        let db_file = File::open(self.path.join("db")).map_err(io_err(&self.path))?;
        Ok((db, db_file))
    }

    /// Closes sled (the last flush is the caller's) and waits until its threads let go of it.
    pub(crate) fn close(&self) {
        self.stop_writeout();
        let mut slot = self.slot.write();
        if let Some(db) = slot.db.take() {
            let path = self.path.clone();
            let _ = self.worker.run("closing the definitions store", move || {
                drop_db(db, &path);
                Ok(())
            });
        }
        slot.db_file = None;
        drop(slot);
        wait_sled_lock_free(&self.path, Duration::from_secs(5));
    }

    /// sled's own size figure.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        self.read(|db| db.size_on_disk())
    }
}

fn unavailable() -> StoreError {
    StoreError::Unavailable(
        "the definitions store is being rebuilt after a write failure; retry later".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SledConfig {
        SledConfig {
            cache_capacity_bytes: 8 << 20,
            flush_interval_ms: None,
        }
    }

    fn open(d: &Path, faults: Arc<Faults>) -> SledDb {
        match SledDb::open(d, cfg(), faults).unwrap() {
            Opened::Ok(s) => *s,
            Opened::Corrupt(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_failed_sync_rebuilds_sled_from_memory_into_fresh_files() {
        let d = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let s = open(d.path(), faults.clone());
        s.write(|db| db.insert(b"a", b"1")).unwrap();
        assert!(s.sync().unwrap() >= 1);
        s.write(|db| db.insert(b"b", b"2")).unwrap();
        faults.fail(FileKind::Sled, FaultOp::Sync, 5, Some(1));
        assert!(s.sync().is_err());
        assert!(s.is_broken());
        s.write(|db| db.insert(b"c", b"3")).unwrap();
        // the rebuild itself fails once (disk still full), then works
        faults.fail(FileKind::Sled, FaultOp::Write, 28, Some(1));
        assert!(s.rebuild().is_err());
        assert!(s.is_broken());
        // still readable between attempts (the old one stays open until the new one is whole)
        assert_eq!(s.read(|db| db.get(b"c")).unwrap().as_deref(), Some(&b"3"[..]));
        s.rebuild().unwrap();
        assert!(!s.is_broken());
        for (k, v) in [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")] {
            assert_eq!(s.read(|db| db.get(k)).unwrap().as_deref(), Some(&v[..]));
        }
        s.write(|db| db.insert(b"d", b"4")).unwrap();
        s.sync().unwrap();
        s.close();
        assert!(!d.path().join("sled.new").exists() && !d.path().join("sled.old").exists());
        let s = open(d.path(), faults);
        assert_eq!(s.read(|db| Ok(db.len())).unwrap(), 4);
    }

    #[test]
    fn an_interrupted_swap_is_finished_at_open() {
        let d = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let s = open(d.path(), faults.clone());
        s.write(|db| db.insert(b"k", b"v")).unwrap();
        s.sync().unwrap();
        s.close();
        drop(s);
        // as if a crash came between the two renames of a rebuild
        fs::rename(d.path().join("sled"), d.path().join("sled.new")).unwrap();
        fs::create_dir(d.path().join("sled.old")).unwrap();
        let s = open(d.path(), faults);
        assert_eq!(s.read(|db| db.get(b"k")).unwrap().as_deref(), Some(&b"v"[..]));
        assert!(!d.path().join("sled.new").exists() && !d.path().join("sled.old").exists());
    }

    #[test]
    fn a_failed_write_marks_sled_broken_and_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let faults = Arc::new(Faults::default());
        let s = open(d.path(), faults.clone());
        faults.fail(FileKind::Sled, FaultOp::Write, 28, Some(1));
        assert!(s.write(|db| db.insert(b"x", b"1")).is_err());
        assert!(s.is_broken());
        assert_eq!(s.read(|db| db.get(b"x")).unwrap(), None);
        s.rebuild().unwrap();
        s.write(|db| db.insert(b"x", b"2")).unwrap();
        assert!(s.take_dirty());
    }
}
