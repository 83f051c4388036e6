//! Measures what `MemoryStore` holds at capacity, with a counting allocator, to back the
//! figure in its documentation (211 bytes an event with 32-byte ids, within a 21 MiB
//! budget at the default capacity).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use openmail_webhooks::dedup::{DedupStore, MemoryStore, Reservation, DEFAULT_CAPACITY};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; the counter is a side
// effect that never touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::test(flavor = "current_thread")]
async fn a_full_default_store_stays_within_the_documented_memory() {
    let store = MemoryStore::new();
    let before = LIVE.load(Ordering::Relaxed);
    for index in 0..DEFAULT_CAPACITY {
        // OpenMail-style ids of 32 bytes: "evt_" and 28 characters.
        let reservation = Reservation::new(format!("evt_{index:028}"));
        store
            .reserve(reservation.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        store
            .complete(reservation, Duration::from_secs(1800))
            .await
            .unwrap();
    }
    assert_eq!(store.len(), DEFAULT_CAPACITY);
    let held = LIVE.load(Ordering::Relaxed) - before;
    let per_event = held / DEFAULT_CAPACITY as isize;
    eprintln!(
        "MemoryStore at capacity: {held} bytes, {per_event} bytes an event, {:.1} MiB",
        held as f64 / (1024.0 * 1024.0)
    );
    assert!(per_event <= 215, "{per_event} bytes an event");
    assert!(held <= 21 * 1024 * 1024, "{held} bytes");
    // Eviction keeps it there.
    for index in 0..1000 {
        let reservation = Reservation::new(format!("evt_extra_{index:022}"));
        store
            .reserve(reservation.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        store
            .complete(reservation, Duration::from_secs(1800))
            .await
            .unwrap();
    }
    assert_eq!(store.len(), DEFAULT_CAPACITY);
    assert!(LIVE.load(Ordering::Relaxed) - before <= held + 64 * 1024);
}
