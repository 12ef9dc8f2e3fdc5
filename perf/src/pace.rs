//! Sleeping until a message is due with microsecond precision.
//!
//! tokio's timer has a resolution of 1 ms, so a producer paced at 10 k msg/s with it sends about
//! ten messages in one write each millisecond. A `timerfd` (an `hrtimer` in the kernel) wakes the
//! producer within a few µs of each message's own due time instead, so `--rate` spaces messages
//! evenly, as many independent clients would.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A one-shot `timerfd` on `CLOCK_MONOTONIC`, re-armed for every wait.
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
}

impl Pacer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; the result is checked before it is owned.
        let raw =
            unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the `OwnedFd` keeps the descriptor open, and the same, for as long as the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Pacer { fd })
    }

    /// Returns at `until` (at once if it has passed).
    pub async fn sleep_until(&self, until: Instant) -> io::Result<()> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        self.arm(left)?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64 that lives across the call.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    8,
                )
            };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(e);
        }
    }

    fn arm(&self, after: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                // A zero it_value would disarm the timer.
                tv_nsec: (after.subsec_nanos().max(1)) as libc::c_long,
            },
        };
        // SAFETY: both pointers are to live values; the old value is not asked for.
        let r =
            unsafe { libc::timerfd_settime(self.fd.get_ref().as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_until_the_instant_and_not_much_past_it() {
        let p = Pacer::new().unwrap();
        for us in [0u64, 150, 900, 2_500] {
            let until = Instant::now() + Duration::from_micros(us);
            p.sleep_until(until).await.unwrap();
            assert!(Instant::now() >= until, "woke before {us} µs");
        }
    }
}
