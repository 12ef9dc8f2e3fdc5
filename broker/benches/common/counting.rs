//! The allocation-counting global allocator of the per-message benches (`alloc_per_message`,
//! `stream_per_message`): every allocation and reallocation bumps `ALLOCS`, then goes to the broker
//! binary's allocator (src/main.rs), so that instruction counts are the binary's. Included with `#[path]`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

use mimalloc::MiMalloc;

pub struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

/// Allocations so far.
pub fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        MiMalloc.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        MiMalloc.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        MiMalloc.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
