//! Calls into sled that may never return, made on a worker thread and given up after a deadline.
//!
//! After an I/O error inside sled 0.34, a `Db::flush` can wait forever for a log position that no
//! write will ever reach: seen under `make test-write-faults` (1 in 100 writes and syncs failing
//! with EIO), with the flusher parked in `sled::pagecache::iobuf::make_stable_inner` while every
//! sled I/O thread was idle. A flusher stuck there settles no ticket again (no confirm, no nack),
//! and a rebuild stuck there holds sled's lock so that every definition change blocks. So the
//! flusher's and the rebuild's sled calls (open, flush, drop) run here: if one does not return
//! within the deadline it is abandoned on its thread (which is left behind, with the sled handle it
//! holds), the caller gets an error, sled is marked broken, and the next round rebuilds it from
//! memory into fresh files. A later call gets a fresh worker thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::{Result, StoreError};

type Job = Box<dyn FnOnce() + Send>;

struct Worker {
    jobs: mpsc::Sender<Job>,
    _thread: JoinHandle<()>,
}

pub(crate) struct SledWorker {
    name: &'static str,
    deadline: Duration,
    worker: Mutex<Option<Worker>>,
    /// A call was abandoned since the last `clear_stuck`: sled may hold a lock that a new call would
    /// wait on forever.
    stuck: AtomicBool,
}

impl SledWorker {
    pub(crate) fn new(name: &'static str, deadline: Duration) -> SledWorker {
        SledWorker {
            name,
            deadline,
            worker: Mutex::new(None),
            stuck: AtomicBool::new(false),
        }
    }

    /// Whether a call was abandoned since `clear_stuck`.
    pub(crate) fn is_stuck(&self) -> bool {
        self.stuck.load(SeqCst)
    }

    /// sled was rebuilt: the abandoned calls hold only the old one.
    pub(crate) fn clear_stuck(&self) {
        self.stuck.store(false, SeqCst);
    }

    fn spawn(&self) -> Result<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| StoreError::Engine(format!("starting a sled worker thread: {e}")))?;
        Ok(Worker {
            jobs: tx,
            _thread: thread,
        })
    }

    /// Runs `job` on the worker thread and waits for it, at most the deadline. A panic in `job`
    /// (sled has `unwrap`s on I/O results) is an error too.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        what: &str,
        job: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let mut slot = self.worker.lock();
        if slot.is_none() {
            *slot = Some(self.spawn()?);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let r = catch_unwind(AssertUnwindSafe(job))
                .unwrap_or_else(|_| Err(StoreError::Engine("sled panicked (see the log above)".into())));
            let _ = tx.send(r);
        });
        let sent = slot.as_ref().is_some_and(|w| w.jobs.send(job).is_ok());
        if !sent {
            *slot = None;
            return Err(StoreError::Engine(format!("the sled worker for {what} is gone")));
        }
        match rx.recv_timeout(self.deadline) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Left behind: the next call starts a new thread.
                *slot = None;
                self.stuck.store(true, SeqCst);
                tracing::error!(
                    what,
                    deadline_s = self.deadline.as_secs_f64(),
                    "sled did not return in time; the call is abandoned and sled will be rebuilt"
                );
                Err(StoreError::Engine(format!(
                    "sled did not return from {what} within {:?}",
                    self.deadline
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                *slot = None;
                Err(StoreError::Engine(format!("the sled worker for {what} died")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;

    #[test]
    fn a_call_that_never_returns_is_abandoned_and_the_next_one_runs() {
        let w = SledWorker::new("test-sled-worker", Duration::from_millis(100));
        assert_eq!(w.run("a", || Ok(1)).unwrap(), 1);
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let e = w
            .run("a stuck call", move || {
                while !r.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            })
            .unwrap_err();
        assert!(e.to_string().contains("did not return"), "{e}");
        assert!(w.is_stuck());
        // a fresh thread serves the next call while the stuck one still hangs
        assert_eq!(w.run("b", || Ok(2)).unwrap(), 2);
        release.store(true, SeqCst);
    }

    #[test]
    fn a_panic_is_an_error_and_the_worker_lives_on() {
        let w = SledWorker::new("test-sled-worker", Duration::from_secs(10));
        let e = w.run::<()>("p", || panic!("sled's unwrap")).unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
        assert_eq!(w.run("q", || Ok(3)).unwrap(), 3);
    }
}
