//! The lock around what a route depends on (a vhost's router and its queue map), with an epoch that
//! every write moves on. A connection keeps the queues its last route reached (`session::RouteCache`)
//! and uses them again while the epoch is unchanged, instead of routing and looking the queues up
//! under two shared locks per publish.
//!
//! Every write guard bumps the epoch when it is dropped, while it still holds the lock: a reader that
//! sees the new epoch and then takes the read lock sees the change, and a route computed before the
//! change was tagged with an older epoch (read before routing) and is not used again. An edit's reply
//! (bind-ok, delete-ok, ...) is sent after its guard is gone, so a publish that follows it, on any
//! connection, routes by the new topology.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// An `RwLock` whose writes move a shared epoch on (`Epoch`).
pub struct TopologyLock<T> {
    lock: RwLock<T>,
    epoch: Arc<Epoch>,
}

/// A vhost's topology epoch, shared by its router and queue map locks.
#[derive(Debug)]
pub struct Epoch(AtomicU64);

impl Default for Epoch {
    fn default() -> Self {
        // 0 is never current: an empty cache holds it.
        Epoch(AtomicU64::new(1))
    }
}

impl Epoch {
    /// The current epoch.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl<T> TopologyLock<T> {
    pub fn new(value: T, epoch: Arc<Epoch>) -> Self {
        TopologyLock {
            lock: RwLock::new(value),
            epoch,
        }
    }

    #[inline]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.lock.read()
    }

    /// The write lock; the epoch moves on when the guard is dropped.
    pub fn write(&self) -> TopologyWriteGuard<'_, T> {
        TopologyWriteGuard {
            guard: self.lock.write(),
            epoch: &self.epoch,
        }
    }
}

pub struct TopologyWriteGuard<'a, T> {
    guard: RwLockWriteGuard<'a, T>,
    epoch: &'a Epoch,
}

impl<T> Deref for TopologyWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for TopologyWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for TopologyWriteGuard<'_, T> {
    fn drop(&mut self) {
        // Before the lock is released (see the module comment): a struct's fields, `guard` among them,
        // are dropped after its `drop` has run.
        self.epoch.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_moves_the_shared_epoch_on_and_reads_do_not() {
        let epoch = Arc::new(Epoch::default());
        let a = TopologyLock::new(1, epoch.clone());
        let b = TopologyLock::new(String::new(), epoch.clone());
        let e0 = epoch.get();
        assert_ne!(e0, 0, "0 is the empty cache's epoch");
        assert_eq!(*a.read(), 1);
        assert_eq!(epoch.get(), e0);
        *a.write() += 1;
        assert_eq!(epoch.get(), e0 + 1);
        b.write().push('x');
        assert_eq!(epoch.get(), e0 + 2);
        // a write guard taken and dropped unused still counts (the caller may have changed nothing, or
        // may have: the epoch does not look)
        drop(a.write());
        assert_eq!(epoch.get(), e0 + 3);
        assert_eq!((*a.read(), b.read().as_str()), (2, "x"));
    }

    #[test]
    fn the_epoch_moves_before_the_lock_is_released() {
        let epoch = Arc::new(Epoch::default());
        let lock = Arc::new(TopologyLock::new(0u64, epoch.clone()));
        let e0 = epoch.get();
        let (l2, ep2) = (lock.clone(), epoch.clone());
        let writer = std::thread::spawn(move || {
            for _ in 0..10_000 {
                *l2.write() += 1;
            }
            drop(ep2);
        });
        // Whoever reads the value under the read lock sees an epoch at least one past every write it saw.
        for _ in 0..10_000 {
            let g = lock.read();
            let seen = *g;
            let e = epoch.get();
            drop(g);
            assert!(e >= e0 + seen, "epoch {e} behind {seen} writes");
        }
        writer.join().unwrap();
        assert_eq!(epoch.get(), e0 + 10_000);
    }
}
