//! Test-only fault injection: make the store's own writes and syncs of one kind of file fail with
//! a chosen errno (ENOSPC, EIO, …), to test what a failed write or sync does (docs/failure-handling.md,
//! "Write and sync failures").
//!
//! Every write and sync the store makes goes through `Faults::check` first. In a normal build the
//! check is an empty inline function; with `cfg(test)` or the `fault-injection` feature a test can
//! arm rules through `Store::faults()`. sled's own writes cannot be reached from here, so a `Sled`
//! write fault fails the store's call into sled *as if* sled had failed (and marks sled broken, as
//! sled 0.34 does after a real I/O error); a `Sled` sync fault fails the store's flush and fsync of
//! sled's files.

use std::io;

/// The kinds of file the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Message segment files (`*.seg`).
    Segment,
    /// Ack files (`*.ack`).
    Ack,
    /// sled: the store's calls that write to sled, and the flush + fsync of sled's files.
    Sled,
    /// The queue definition copies (`queue.def`).
    Definition,
    /// Directory fsyncs (after a create, rename or unlink).
    Directory,
}

/// What fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// Creating or writing a file (for `Sled`: the store's write calls into sled).
    Write,
    /// `fdatasync`/`fsync` of a file or directory (for `Sled`: `Db::flush` and the fsyncs after it).
    Sync,
}

#[cfg(any(test, feature = "fault-injection"))]
mod imp {
    use super::*;
    use parking_lot::Mutex;

    struct Rule {
        kind: FileKind,
        op: FaultOp,
        errno: i32,
        /// Failures left; `None`: until cleared.
        left: Option<u32>,
        /// Matching calls to let through before failing.
        skip: u32,
    }

    /// The armed rules of one store.
    #[derive(Default)]
    pub struct Faults {
        rules: Mutex<Vec<Rule>>,
        hits: std::sync::atomic::AtomicU64,
    }

    impl Faults {
        /// From now on, `kind`'s `op` fails with `errno`, `times` times (`None`: until `clear`).
        pub fn fail(&self, kind: FileKind, op: FaultOp, errno: i32, times: Option<u32>) {
            self.fail_after(kind, op, errno, 0, times);
        }

        /// Like `fail`, after letting `skip` matching calls succeed.
        pub fn fail_after(&self, kind: FileKind, op: FaultOp, errno: i32, skip: u32, times: Option<u32>) {
            self.rules.lock().push(Rule {
                kind,
                op,
                errno,
                left: times,
                skip,
            });
        }

        /// Disarms every rule: the cause has gone.
        pub fn clear(&self) {
            self.rules.lock().clear();
        }

        /// How many calls failed because of a rule.
        pub fn hits(&self) -> u64 {
            self.hits.load(std::sync::atomic::Ordering::SeqCst)
        }

        pub(crate) fn check(&self, kind: FileKind, op: FaultOp) -> io::Result<()> {
            let mut rules = self.rules.lock();
            let Some(i) = rules.iter().position(|r| r.kind == kind && r.op == op) else {
                return Ok(());
            };
            let r = &mut rules[i];
            if r.skip > 0 {
                r.skip -= 1;
                return Ok(());
            }
            let errno = r.errno;
            match &mut r.left {
                Some(0) => {
                    rules.remove(i);
                    return Ok(());
                }
                Some(n) => {
                    *n -= 1;
                    if *n == 0 {
                        rules.remove(i);
                    }
                }
                None => {}
            }
            self.hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

#[cfg(not(any(test, feature = "fault-injection")))]
mod imp {
    use super::*;

    /// Fault injection is compiled out: every check passes.
    #[derive(Default)]
    pub struct Faults {
        _none: (),
    }

    impl Faults {
        #[inline(always)]
        pub(crate) fn check(&self, _kind: FileKind, _op: FaultOp) -> io::Result<()> {
            Ok(())
        }
    }
}

pub use imp::Faults;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fail_the_given_number_of_times_after_skipping() {
        let f = Faults::default();
        assert!(f.check(FileKind::Segment, FaultOp::Sync).is_ok());
        f.fail_after(FileKind::Segment, FaultOp::Sync, libc_enospc(), 1, Some(2));
        assert!(f.check(FileKind::Segment, FaultOp::Write).is_ok());
        assert!(f.check(FileKind::Ack, FaultOp::Sync).is_ok());
        assert!(f.check(FileKind::Segment, FaultOp::Sync).is_ok()); // skipped
        let e = f.check(FileKind::Segment, FaultOp::Sync).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_enospc()));
        assert!(f.check(FileKind::Segment, FaultOp::Sync).is_err());
        assert!(f.check(FileKind::Segment, FaultOp::Sync).is_ok());
        assert_eq!(f.hits(), 2);
        f.fail(FileKind::Sled, FaultOp::Write, 5, None);
        for _ in 0..10 {
            assert!(f.check(FileKind::Sled, FaultOp::Write).is_err());
        }
        f.clear();
        assert!(f.check(FileKind::Sled, FaultOp::Write).is_ok());
    }

    fn libc_enospc() -> i32 {
        28
    }
}
