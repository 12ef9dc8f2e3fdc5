//! The publishing phase of a run, shared by producers (who end it), consumers (who count
//! what they receive while it lasts) and the runner (who waits for it to end).
//!
//! Publishing starts when the producers are started together and **stops when the last
//! producer leaves its publish loop** (its duration or count is reached, or it is stopped).
//! A producer *finishes* later, once its last buffered publishes are written and its
//! confirms are in (bounded by the drain timeout).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use tokio::sync::Notify;

use crate::tracker::mono_ns;

/// Where the run is, as far as publishing goes.
#[derive(Debug)]
pub struct PublishClock {
    publishing: AtomicUsize,
    unfinished: AtomicUsize,
    /// `mono_ns()` when publishing started.
    start_ns: AtomicU64,
    /// `mono_ns()` when the last producer stopped publishing; 0 while publishing.
    end_ns: AtomicU64,
    stopped: Notify,
    finished: Notify,
}

impl PublishClock {
    /// A clock for `producers` producers. With none, publishing is over at once.
    pub fn new(producers: usize) -> PublishClock {
        let now = if producers == 0 { mono_ns() } else { 0 };
        PublishClock {
            publishing: AtomicUsize::new(producers),
            unfinished: AtomicUsize::new(producers),
            start_ns: AtomicU64::new(now),
            end_ns: AtomicU64::new(now),
            stopped: Notify::new(),
            finished: Notify::new(),
        }
    }

    /// Marks the start of publishing (now).
    pub fn start(&self) {
        self.start_ns.store(mono_ns(), Relaxed);
    }

    /// `mono_ns()` at the start of publishing.
    pub fn start_ns(&self) -> u64 {
        self.start_ns.load(Relaxed)
    }

    /// `mono_ns()` at which publishing stopped, if it did.
    pub fn end_ns(&self) -> Option<u64> {
        Some(self.end_ns.load(Relaxed)).filter(|e| *e > 0)
    }

    /// Whether a delivery handled at `now` (a `mono_ns()` reading) came while publishers
    /// were publishing.
    #[inline]
    pub fn publishing_at(&self, now: u64) -> bool {
        let end = self.end_ns.load(Relaxed);
        end == 0 || now <= end
    }

    /// Producers still publishing.
    pub fn publishing(&self) -> usize {
        self.publishing.load(Relaxed)
    }

    fn stopped_one(&self) {
        if self.publishing.fetch_sub(1, Relaxed) == 1 {
            self.end_ns.store(mono_ns(), Relaxed);
            self.stopped.notify_one();
        }
    }

    fn finished_one(&self) {
        if self.unfinished.fetch_sub(1, Relaxed) == 1 {
            self.finished.notify_one();
        }
    }

    /// Returns once every producer stopped publishing.
    pub async fn wait_stopped(&self) {
        while self.end_ns().is_none() {
            self.stopped.notified().await;
        }
    }

    /// Returns once every producer finished (its last publishes written, confirms in).
    pub async fn wait_finished(&self) {
        while self.unfinished.load(Relaxed) > 0 {
            self.finished.notified().await;
        }
    }
}

/// A producer's part in the clock: reports "stopped publishing" and "finished" exactly
/// once each, also when the producer fails early (on drop).
pub struct ProducerPhase<'a> {
    clock: &'a PublishClock,
    stopped: bool,
    finished: bool,
}

impl<'a> ProducerPhase<'a> {
    /// The phase of one of the clock's producers.
    pub fn new(clock: &'a PublishClock) -> Self {
        ProducerPhase {
            clock,
            stopped: false,
            finished: false,
        }
    }

    /// This producer left its publish loop.
    pub fn stopped(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.clock.stopped_one();
        }
    }

    /// This producer's publishes are all written and confirmed (or given up on).
    pub fn finished(&mut self) {
        self.stopped();
        if !self.finished {
            self.finished = true;
            self.clock.finished_one();
        }
    }

    /// Whether [`ProducerPhase::finished`] was called.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

impl Drop for ProducerPhase<'_> {
    fn drop(&mut self) {
        self.finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn last_producer_ends_publishing() {
        let c = PublishClock::new(2);
        c.start();
        assert!(c.start_ns() > 0);
        let mut a = ProducerPhase::new(&c);
        let mut b = ProducerPhase::new(&c);
        assert!(c.publishing_at(mono_ns()) && c.end_ns().is_none());
        a.stopped();
        a.stopped(); // once only
        assert_eq!(c.publishing(), 1);
        assert!(c.end_ns().is_none());
        b.stopped();
        let end = c.end_ns().expect("ended");
        assert!(c.publishing_at(end) && !c.publishing_at(end + 1));
        c.wait_stopped().await;
        a.finished();
        assert!(a.is_finished() && !b.is_finished());
        drop(b); // a producer that fails still counts as finished
        c.wait_finished().await;
    }

    #[tokio::test]
    async fn no_producers_means_publishing_is_over() {
        let c = PublishClock::new(0);
        assert!(c.end_ns().is_some());
        c.wait_stopped().await;
        c.wait_finished().await;
    }

    #[tokio::test]
    async fn waiter_wakes_when_the_last_one_stops() {
        let c = std::sync::Arc::new(PublishClock::new(1));
        let w = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_stopped().await })
        };
        tokio::task::yield_now().await;
        ProducerPhase::new(&c).stopped();
        w.await.unwrap();
    }
}
