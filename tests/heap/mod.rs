//! A counting global allocator, for the tests that hold memory bounds: the system
//! allocator, with the bytes live now and the most live since the last [`reset_peak`].
//!
//! It counts the whole test process, server and clients alike, so the tests that use it
//! run one at a time and send from shared buffers, in a test binary that holds nothing
//! else (tests/security). [`freed_by`] counts one thread only, for a figure that other
//! threads' allocations cannot move: a binary whose tests run side by side may use it too
//! (tests/websocket). Include it with `#[path = "../heap/mod.rs"] mod heap;` in that
//! binary's `main.rs`; it installs itself as the binary's global allocator.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A block at least this large counts as a large one in [`Freed::large`].
pub const LARGE: usize = 128 * KIB;

thread_local! {
    /// Bytes and large blocks this thread has freed, for [`freed_by`]. `Cell`s of plain
    /// integers with a `const` initialiser: on the targets that have native thread-local
    /// storage (every one these tests run on), they allocate nothing and have no
    /// destructor, so the allocator may touch them at any time, thread teardown included.
    static FREED_HERE: Cell<usize> = const { Cell::new(0) };
    static LARGE_FREED_HERE: Cell<usize> = const { Cell::new(0) };
}

fn shrank(by: usize) {
    LIVE.fetch_sub(by, Ordering::Relaxed);
    let _ = FREED_HERE.try_with(|freed| freed.set(freed.get() + by));
    if by >= LARGE {
        let _ = LARGE_FREED_HERE.try_with(|large| large.set(large.get() + 1));
    }
}

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are plain atomics and never affect what is allocated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts a new measurement and returns the bytes live now.
pub fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// The most bytes live since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// The bytes live now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// What this thread freed while a piece of work ran: see [`freed_by`].
#[derive(Debug, Clone, Copy)]
pub struct Freed {
    /// Bytes freed (a `realloc` counts the old block as freed).
    pub bytes: usize,
    /// Blocks of at least [`LARGE`] bytes among them.
    pub large: usize,
}

/// Runs `work` on this thread and returns what this thread freed while it ran. Other
/// threads' allocations do not count, so the figure is exact while other tests of the
/// binary run: dropping a value here measures what it held and nothing else.
pub fn freed_by(work: impl FnOnce()) -> Freed {
    let before = (FREED_HERE.with(Cell::get), LARGE_FREED_HERE.with(Cell::get));
    work();
    Freed {
        bytes: FREED_HERE.with(Cell::get) - before.0,
        large: LARGE_FREED_HERE.with(Cell::get) - before.1,
    }
}

/// How far the peak rose above `baseline`, a value [`reset_peak`] returned.
pub fn peak_growth(baseline: usize) -> usize {
    peak().saturating_sub(baseline)
}

/// Peak resident memory of the process, as the kernel reports it, for the test's log.
pub fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM"))
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// One measuring test at a time: the counters are process-wide.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}
