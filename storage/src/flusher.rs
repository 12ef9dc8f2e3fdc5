//! Group commit: one flusher thread per store writes out the message log's buffers, syncs every
//! file written since its last round (concurrently), flushes and fsyncs sled if it was written,
//! and then settles every ticket the round covered: durable if all of it worked, failed if
//! anything did not (`Durability`). A failed round leaves nothing to chance: files whose sync
//! failed are rewritten from memory and sled is rebuilt before a later round counts (see
//! `seglog::file` and `sleddb`), and until that works every round fails.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::fault::Faults;
use crate::seglog::{self, MsgLog, SyncBatch};
use crate::sleddb::SledDb;
use crate::{io_err, Result, StoreError};

/// A flush round syncs up to this many files at once.
const SYNC_THREADS: usize = 8;
/// After a failed round the flusher tries again after this long, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// A failing flush is logged at most this often (with the number of failures in between).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(5);
/// Failed ticket ranges kept for late readers (ranges of consecutive failed rounds merge, so this
/// is many failure episodes).
const FAILED_RANGES_KEPT: usize = 4096;

/// What is known about tickets: every ticket up to `settled()` is decided, durable or failed.
/// Published by the store on `Store::durable_watch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durability {
    settled: u64,
    /// Inclusive ranges of failed tickets, ascending, disjoint.
    failed: Arc<Vec<(u64, u64)>>,
}

/// The outcome of one ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketState {
    /// Its flush round has not finished yet.
    Pending,
    /// On stable storage.
    Durable,
    /// Its flush round failed: the write may or may not be on disk and must not be reported as
    /// durable (nack it).
    Failed,
}

impl Durability {
    /// The highest ticket whose outcome is known.
    pub fn settled(&self) -> u64 {
        self.settled
    }

    pub fn state(&self, ticket: u64) -> TicketState {
        if ticket > self.settled {
            return TicketState::Pending;
        }
        let i = self.failed.partition_point(|r| r.1 < ticket);
        match self.failed.get(i) {
            Some(&(lo, hi)) if lo <= ticket && ticket <= hi => TicketState::Failed,
            _ => TicketState::Durable,
        }
    }

    /// Whether any ticket in `from..=to` failed.
    pub fn any_failed(&self, from: u64, to: u64) -> bool {
        let i = self.failed.partition_point(|r| r.1 < from);
        self.failed.get(i).is_some_and(|r| r.0 <= to)
    }

    fn settle(&mut self, upto: u64, ok: bool) -> bool {
        if upto <= self.settled {
            return false;
        }
        if !ok {
            let lo = self.settled + 1;
            let failed = Arc::make_mut(&mut self.failed);
            match failed.last_mut() {
                Some(last) if last.1 + 1 == lo => last.1 = upto,
                _ => failed.push((lo, upto)),
            }
            if failed.len() > FAILED_RANGES_KEPT {
                failed.remove(0);
            }
        }
        self.settled = upto;
        true
    }
}

pub(crate) struct WakeState {
    pub(crate) requested: bool,
    pub(crate) shutdown: bool,
}

/// The flusher's carry-over between rounds.
#[derive(Default)]
pub(crate) struct RoundState {
    /// Directory syncs that failed (retried).
    dirs: Vec<PathBuf>,
    /// sled was written but its sync failed or has not happened.
    sled: bool,
    /// Logging of failures: last line, failures since.
    last_log: Option<Instant>,
    unlogged: u64,
}

pub(crate) struct Shared {
    pub(crate) sled: SledDb,
    pub(crate) log: MsgLog,
    pub(crate) streams: crate::stream::StreamLog,
    pub(crate) faults: Arc<Faults>,
    /// Threads that sync a round's files beside the flusher thread.
    pub(crate) sync_pool: crate::sync_pool::SyncPool,
    /// Held for a whole flush round: rounds never overlap (a round settles only after every
    /// earlier round's syncs completed).
    pub(crate) round: Mutex<RoundState>,
    pub(crate) ticket: AtomicU64,
    pub(crate) flushes: AtomicU64,
    /// How long successful flush rounds took (the metrics' flush latency).
    pub(crate) flush_latency: crate::latency::LatencyHistogram,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) flush_errors: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) messages_appended: AtomicU64,
    pub(crate) messages_deleted: AtomicU64,
    pub(crate) durable_tx: watch::Sender<Durability>,
    pub(crate) wake: Mutex<WakeState>,
    /// The delayed-message release's wake-up (`DelayedLog::hold`, `Store::delayed_waker`).
    pub(crate) delayed_wake: Arc<crate::delayed::DelayedWake>,
    pub(crate) cv: Condvar,
    /// Set by the flusher (under `wake`) just before it waits; writers only take the lock to
    /// notify when it is set.
    pub(crate) sleeping: AtomicBool,
    /// The last round failed: the flusher retries until one succeeds, new writes or not.
    pub(crate) failing: AtomicBool,
    /// Why the last failed round failed (for the errors of failed tickets).
    pub(crate) last_error: Mutex<String>,
}

impl Shared {
    /// Called after a write has been applied: takes the next ticket and wakes the flusher.
    pub(crate) fn bump(&self, bytes: usize) -> u64 {
        self.bytes_written.fetch_add(bytes as u64, SeqCst);
        let t = self.ticket.fetch_add(1, SeqCst) + 1;
        if self.sleeping.load(SeqCst) {
            let _g = self.wake.lock();
            self.cv.notify_one();
        }
        t
    }

    fn settle(&self, t: u64, ok: bool) {
        self.durable_tx.send_if_modified(|d| d.settle(t, ok));
    }

    /// One group commit. The ticket is read first: every write with a ticket <= T was applied
    /// (to a log buffer or to sled) before, so writing out the buffers, syncing the files written
    /// and syncing sled afterwards makes all of them durable before T is settled. If any of it
    /// fails, every ticket up to T not settled before fails.
    pub(crate) fn flush_now(&self) -> Result<()> {
        let mut round = self.round.lock();
        let t = self.ticket.load(SeqCst);
        let started = Instant::now();
        // A panic in a round (sled's code has `unwrap`s on I/O results) fails the round like an
        // error: its tickets are nacked, sled is rebuilt, and the flusher lives on. A dead flusher
        // would settle nothing again.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sync_round(&mut round)))
            .unwrap_or_else(|_| {
                self.sled.mark_broken();
                Err(StoreError::Engine(
                    "a storage flush round panicked (see the log above)".into(),
                ))
            });
        match result {
            Ok(()) => {
                self.flush_latency.observe(started.elapsed());
                self.flushes.fetch_add(1, SeqCst);
                self.settle(t, true);
                if self.failing.swap(false, SeqCst) {
                    tracing::warn!(
                        failures = round.unlogged,
                        "storage flushes succeed again: the store is back in service"
                    );
                    round.unlogged = 0;
                    round.last_log = None;
                }
                Ok(())
            }
            Err(e) => {
                self.flush_errors.fetch_add(1, SeqCst);
                *self.last_error.lock() = e.to_string();
                self.settle(t, false);
                self.failing.store(true, SeqCst);
                round.unlogged += 1;
                if round.last_log.is_none_or(|l| l.elapsed() >= ERROR_LOG_EVERY) {
                    tracing::error!(
                        error = %e,
                        failures = round.unlogged,
                        "storage flush failed: the writes it covered are reported as failed \
                         (publishes nacked); retrying"
                    );
                    round.last_log = Some(Instant::now());
                    round.unlogged = 0;
                }
                Err(e)
            }
        }
    }

    /// Repairs, collects and syncs, up to `SYNC_THREADS` at a time: one queue's files are
    /// independent of another's, and concurrent fsyncs share the file system's journal commits,
    /// so a round costs about one fsync, not one per queue.
    fn sync_round(&self, round: &mut RoundState) -> Result<()> {
        if self.sled.is_broken() {
            self.sled.rebuild()?;
            round.sled = false;
        }
        let mut batch = SyncBatch::default();
        let collected = self.log.collect_for_sync(&mut batch);
        let n_log_files = batch.files.len();
        let streams_collected = self.streams.collect_for_sync(&mut batch);
        let collected = collected.and(streams_collected);
        batch.dirs.append(&mut round.dirs);
        if self.sled.take_dirty() {
            round.sled = true;
        }
        let SyncBatch { files, dirs, trash } = batch;
        let (nf, nd) = (files.len(), dirs.len());
        let total = nf + nd + round.sled as usize;
        let task = |i: usize| -> SyncTask {
            if i < nf {
                let it = &files[i];
                SyncTask::File(it.kind, it.path.clone(), it.file.clone())
            } else {
                SyncTask::Dir(dirs[i - nf].clone())
            }
        };
        let mut results: Vec<Option<Result<usize>>> = (0..total).map(|_| None).collect();
        let workers = total.min(SYNC_THREADS);
        // Files and directories are synced on the pool's threads and this one, sled on this one (its
        // handle stays with the flusher).
        let (tx, rx) = std::sync::mpsc::channel::<Vec<(usize, Result<usize>)>>();
        let mut sent = 0;
        for w in 1..workers {
            let tasks: Vec<(usize, SyncTask)> = (w..nf + nd).step_by(workers).map(|i| (i, task(i))).collect();
            if tasks.is_empty() {
                continue;
            }
            let (faults, tx) = (self.faults.clone(), tx.clone());
            let job = Box::new(move || {
                let out = tasks.into_iter().map(|(i, t)| (i, t.run(&faults))).collect();
                let _ = tx.send(out);
            });
            // a job no thread can take runs here (it sends its results all the same)
            if let Err(job) = self.sync_pool.run_on(w - 1, job) {
                job();
            }
            sent += 1;
        }
        drop(tx);
        for i in (0..nf + nd).step_by(workers.max(1)) {
            results[i] = Some(task(i).run(&self.faults));
        }
        if round.sled {
            results[nf + nd] = Some(self.sled.sync());
        }
        for _ in 0..sent {
            // a sync that panicked sends nothing and leaves its results `None`: failures
            match rx.recv() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(_) => break,
            }
        }
        let mut first_err = collected.err();
        let mut ok = |r: Option<Result<usize>>| match r {
            Some(Ok(n)) => {
                self.fsyncs.fetch_add(n as u64, SeqCst);
                true
            }
            Some(Err(e)) => {
                first_err.get_or_insert(e);
                false
            }
            None => {
                first_err.get_or_insert(StoreError::Engine("a sync thread panicked".into()));
                false
            }
        };
        let mut results = results.into_iter();
        let file_results: Vec<bool> = results.by_ref().take(nf).map(&mut ok).collect();
        let mut files = files;
        let stream_files = files.split_off(n_log_files.min(files.len()));
        self.log
            .apply_sync_results(files.into_iter().zip(file_results[..n_log_files].iter().copied()));
        self.streams.apply_sync_results(
            stream_files
                .into_iter()
                .zip(file_results[n_log_files..].iter().copied()),
        );
        for (d, r) in dirs.into_iter().zip(results.by_ref().take(nd)) {
            if !ok(r) {
                round.dirs.push(d);
            }
        }
        if round.sled {
            if ok(results.next().flatten()) {
                round.sled = false;
            } else {
                self.sled.mark_broken();
            }
        }
        match first_err {
            None => {
                self.log.empty_trash(trash);
                Ok(())
            }
            Some(e) => {
                self.log.keep_trash(trash);
                Err(e)
            }
        }
    }
}

/// One sync of a round, owning what it needs so that a pool thread can run it.
enum SyncTask {
    File(crate::fault::FileKind, Arc<std::path::Path>, Arc<std::fs::File>),
    Dir(PathBuf),
}

impl SyncTask {
    fn run(self, faults: &Faults) -> Result<usize> {
        match self {
            SyncTask::File(kind, path, file) => {
                faults
                    .check(kind, crate::fault::FaultOp::Sync)
                    .map_err(io_err(&path))?;
                file.sync_data().map_err(io_err(&path))?;
                Ok(1)
            }
            SyncTask::Dir(dir) => seglog::sync_dir(&dir, faults).map(|_| 1),
        }
    }
}

pub(crate) fn flusher_loop(shared: Arc<Shared>) {
    // Not `ticket.load()`: writes may already have happened while this thread was starting.
    let mut flushed = 0;
    let mut retry = RETRY_MIN;
    loop {
        let shutdown = {
            let mut st = shared.wake.lock();
            loop {
                if st.shutdown {
                    break true;
                }
                if st.requested || shared.ticket.load(SeqCst) > flushed {
                    st.requested = false;
                    break false;
                }
                if shared.failing.load(SeqCst) {
                    // back in service without new writes once the cause is gone
                    if shared.cv.wait_for(&mut st, retry).timed_out() {
                        break false;
                    }
                    continue;
                }
                shared.sleeping.store(true, SeqCst);
                // Re-check after announcing we sleep: a writer that bumped before seeing
                // `sleeping` is caught here; one that bumped after will take the lock and notify.
                if shared.ticket.load(SeqCst) > flushed {
                    shared.sleeping.store(false, SeqCst);
                    continue;
                }
                shared.cv.wait(&mut st);
                shared.sleeping.store(false, SeqCst);
            }
        };
        let t = shared.ticket.load(SeqCst);
        // Either way the tickets up to `t` are settled now (durable or failed).
        flushed = flushed.max(t);
        match shared.flush_now() {
            Ok(()) => retry = RETRY_MIN,
            Err(_) => {
                if !shutdown {
                    std::thread::sleep(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        if shutdown {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_settles_ranges_and_merges_failed_rounds() {
        let mut d = Durability::default();
        assert_eq!(d.state(1), TicketState::Pending);
        assert!(d.settle(5, true));
        assert!(!d.settle(5, false), "nothing new");
        assert!(d.settle(8, false));
        assert!(d.settle(9, false));
        assert!(d.settle(12, true));
        assert!(d.settle(13, false));
        let states: Vec<_> = (1..=14).map(|t| d.state(t)).collect();
        use TicketState::*;
        assert_eq!(
            states,
            [
                Durable, Durable, Durable, Durable, Durable, Failed, Failed, Failed, Failed, Durable,
                Durable, Durable, Failed, Pending
            ]
        );
        assert_eq!(d.failed.len(), 2, "6..=9 merged");
        assert!(d.any_failed(1, 6) && !d.any_failed(10, 12) && d.any_failed(12, 13));
    }
}
