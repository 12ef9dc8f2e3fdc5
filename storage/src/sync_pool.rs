//! The flusher's sync threads: they live as long as the store, so a flush round that syncs several files at
//! once hands them its syncs instead of starting threads of its own. (Spawning them per round cost 10–14 %
//! of the broker's CPU per message in S3: docs/performance.md, "Hot path: issue 13's targets on a quiet
//! machine".) A thread is started the first time it is needed; one that is gone is started again.

use std::sync::mpsc;

use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct SyncPool {
    name: &'static str,
    threads: Mutex<Vec<Option<mpsc::Sender<Job>>>>,
}

impl SyncPool {
    pub(crate) fn new(name: &'static str) -> SyncPool {
        SyncPool {
            name,
            threads: Mutex::new(Vec::new()),
        }
    }

    fn start(&self) -> Option<mpsc::Sender<Job>> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .ok()?;
        Some(tx)
    }

    /// Runs `job` on thread `n` of the pool. Gives the job back if no thread can take it (the caller runs
    /// it itself).
    pub(crate) fn run_on(&self, n: usize, job: Job) -> std::result::Result<(), Job> {
        let mut threads = self.threads.lock();
        if threads.len() <= n {
            threads.resize_with(n + 1, || None);
        }
        let mut job = job;
        for _ in 0..2 {
            if threads[n].is_none() {
                threads[n] = self.start();
            }
            let Some(tx) = &threads[n] else { return Err(job) };
            match tx.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(j)) => {
                    // the thread is gone (a job panicked through it): start another
                    threads[n] = None;
                    job = j;
                }
            }
        }
        Err(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    #[test]
    fn jobs_run_on_long_lived_threads_and_a_dead_thread_is_replaced() {
        let pool = SyncPool::new("test-sync-pool");
        let names = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            let (names, tx) = (names.clone(), tx.clone());
            pool.run_on(
                1,
                Box::new(move || {
                    names.lock().push(std::thread::current().id());
                    tx.send(()).unwrap();
                }),
            )
            .unwrap_or_else(|_| panic!("taken"));
            rx.recv().unwrap();
        }
        let ids = names.lock().clone();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "one thread served them all");
        // a job that panics kills its thread; the next job gets a new one
        pool.run_on(1, Box::new(|| panic!("a sync panicked")))
            .unwrap_or_else(|_| panic!("taken"));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..50 {
            let (d, tx) = (done.clone(), tx.clone());
            let r = pool.run_on(
                1,
                Box::new(move || {
                    d.fetch_add(1, SeqCst);
                    tx.send(()).unwrap();
                }),
            );
            if r.is_ok() && rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok() {
                break;
            }
        }
        assert_eq!(done.load(SeqCst), 1);
    }
}
