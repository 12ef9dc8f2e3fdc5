//! Group commit: one flusher thread per store writes out the message log's buffers, syncs every
//! file written since its last round (concurrently), flushes sled if it was written, and then
//! publishes the highest ticket the round covered.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::seglog::{self, MsgLog};
use crate::{io_err, Result, StoreError};

/// A flush round syncs up to this many files at once.
const SYNC_THREADS: usize = 8;

pub(crate) struct WakeState {
    pub(crate) requested: bool,
    pub(crate) shutdown: bool,
}

/// The flusher's carry-over between rounds: syncs that failed and are retried.
#[derive(Default)]
pub(crate) struct Unsynced {
    pub(crate) files: Vec<(PathBuf, Arc<File>)>,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) sled: bool,
}

pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) log: MsgLog,
    /// sled was written since the last flush round took this flag.
    pub(crate) sled_dirty: AtomicBool,
    /// Held for a whole flush round: rounds never overlap (a round publishes only after every
    /// earlier round's syncs completed).
    pub(crate) round: Mutex<Unsynced>,
    pub(crate) ticket: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) flush_errors: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) messages_appended: AtomicU64,
    pub(crate) messages_deleted: AtomicU64,
    pub(crate) durable_tx: watch::Sender<u64>,
    pub(crate) wake: Mutex<WakeState>,
    pub(crate) cv: Condvar,
    /// Set by the flusher (under `wake`) just before it waits; writers only take the lock to
    /// notify when it is set.
    pub(crate) sleeping: AtomicBool,
}

impl Shared {
    /// Called after a sled write has returned: marks sled dirty, takes the next ticket.
    pub(crate) fn bump_sled(&self, bytes: usize) -> u64 {
        self.sled_dirty.store(true, SeqCst);
        self.bump(bytes)
    }

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

    pub(crate) fn publish(&self, t: u64) {
        self.durable_tx.send_if_modified(|d| {
            if t > *d {
                *d = t;
                true
            } else {
                false
            }
        });
    }

    /// One group commit. The ticket is read first: every write with a ticket <= T was applied
    /// (to a log buffer or to sled) before, so writing out the buffers, syncing the files written
    /// and flushing sled afterwards makes all of them durable before T is published.
    pub(crate) fn flush_now(&self) -> Result<()> {
        let mut round = self.round.lock();
        let t = self.ticket.load(SeqCst);
        match self.sync_round(&mut round) {
            Ok(()) => {
                self.flushes.fetch_add(1, SeqCst);
                self.publish(t);
                Ok(())
            }
            Err(e) => {
                self.flush_errors.fetch_add(1, SeqCst);
                Err(e)
            }
        }
    }

    /// Syncs everything collected, up to `SYNC_THREADS` at a time: one queue's files are
    /// independent of another's, and concurrent fsyncs share the file system's journal commits,
    /// so a round costs about one fsync, not one per queue. What fails stays in `u` for the next
    /// round.
    pub(crate) fn sync_round(&self, u: &mut Unsynced) -> Result<()> {
        self.log.collect_for_sync(&mut u.files, &mut u.dirs)?;
        if self.sled_dirty.swap(false, SeqCst) {
            u.sled = true;
        }
        let (nf, nd) = (u.files.len(), u.dirs.len());
        let total = nf + nd + u.sled as usize;
        let run = |i: usize| -> Result<()> {
            if i < nf {
                let (path, f) = &u.files[i];
                f.sync_data().map_err(io_err(path))
            } else if i < nf + nd {
                seglog::sync_dir(&u.dirs[i - nf])
            } else {
                self.db.flush().map(drop).map_err(StoreError::from)
            }
        };
        let mut results: Vec<Option<Result<()>>> = (0..total).map(|_| None).collect();
        let workers = total.min(SYNC_THREADS);
        if workers <= 1 {
            for (i, r) in results.iter_mut().enumerate() {
                *r = Some(run(i));
            }
        } else {
            let run = &run;
            std::thread::scope(|sc| {
                let handles: Vec<_> = (1..workers)
                    .map(|w| {
                        sc.spawn(move || {
                            (w..total)
                                .step_by(workers)
                                .map(|i| (i, run(i)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for i in (0..total).step_by(workers) {
                    results[i] = Some(run(i));
                }
                for h in handles {
                    // a panicking sync leaves its results `None`: retried as failures
                    for (i, r) in h.join().unwrap_or_default() {
                        results[i] = Some(r);
                    }
                }
            });
        }
        let mut first_err = None;
        let mut ok = |i: usize| match results[i].take() {
            Some(Ok(())) => {
                self.fsyncs.fetch_add(1, SeqCst);
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
        let mut i = 0;
        u.files.retain(|_| {
            i += 1;
            !ok(i - 1)
        });
        u.dirs.retain(|_| {
            i += 1;
            !ok(i - 1)
        });
        if u.sled && ok(i) {
            u.sled = false;
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

pub(crate) fn flusher_loop(shared: Arc<Shared>) {
    // Not `ticket.load()`: writes may already have happened while this thread was starting.
    let mut flushed = 0;
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
        match shared.flush_now() {
            Ok(()) => flushed = flushed.max(t),
            Err(e) => {
                tracing::error!(error = %e, "storage flush failed; retrying");
                if !shutdown {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        if shutdown {
            return;
        }
    }
}
