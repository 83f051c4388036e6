//! Measures what `MemoryStore` holds, with a counting allocator, to back the figures in its
//! documentation: 213 bytes an event at the default capacity, 20.4 MiB in all (budget
//! 21 MiB), the same whether the event ids are 32 bytes or 4 MiB, and nothing more once it
//! is full.
//!
//! One test in this binary: the allocator counts the whole process, so nothing else may run
//! while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use openmail_webhooks::dedup::{DedupKey, DedupStore, MemoryStore, Reservation, StoreError};

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

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Reserves and completes `event_id` in `store`, as a processed delivery does, and
/// returns what the store answered.
async fn process(store: &MemoryStore, event_id: &str) -> Result<(), StoreError> {
    let reservation = Reservation::new(DedupKey::new(Some("inb_0123456789abcdef"), event_id));
    store
        .reserve(reservation.clone(), Duration::from_secs(60))
        .await?;
    store.complete(reservation, Duration::from_secs(1800)).await
}

#[tokio::test(flavor = "current_thread")]
async fn memory_per_event_is_fixed_and_bounded() {
    // A full store of the default capacity, with OpenMail-style ids of 32 bytes.
    let store = MemoryStore::new();
    let capacity = store.capacity();
    assert_eq!(capacity, 100_000, "the default capacity the docs state");
    let before = live();
    for index in 0..capacity {
        process(&store, &format!("evt_{index:028}")).await.unwrap();
    }
    assert_eq!(store.len(), capacity);
    let held = live() - before;

    // Full: a new event is refused, nothing is evicted, and nothing more is held.
    for index in 0..1000 {
        let refused = process(&store, &format!("evt_extra_{index:022}")).await;
        assert!(
            matches!(refused, Err(StoreError::Full { .. })),
            "{refused:?}"
        );
    }
    let held_after_refusals = live() - before;
    // Printed only now: the test harness's capture of stderr allocates too.
    let per_event = held / capacity as isize;
    eprintln!(
        "MemoryStore at capacity: {held} bytes, {per_event} bytes an event, {:.1} MiB",
        held as f64 / (1024.0 * 1024.0)
    );
    assert!(per_event <= 215, "{per_event} bytes an event");
    assert!(held <= 21 * 1024 * 1024, "{held} bytes");
    assert_eq!(store.len(), capacity);
    assert!(
        held_after_refusals <= held,
        "{held_after_refusals} > {held}"
    );
    drop(store);

    // Ids of 64 KiB cost what ids of 32 bytes do, entry for entry.
    let entries = 1_000;
    let long_id = |index: usize| format!("evt_{index:028}{}", "x".repeat(64 * 1024));
    let mut held_by_length = Vec::new();
    for id in [
        &(|index: usize| format!("evt_{index:028}")) as &dyn Fn(usize) -> String,
        &long_id,
    ] {
        let store = MemoryStore::with_capacity(entries);
        let before = live();
        for index in 0..entries {
            process(&store, &id(index)).await.unwrap();
        }
        held_by_length.push(live() - before);
    }
    eprintln!("{entries} events, 32-byte and 64 KiB ids: {held_by_length:?} bytes");
    assert_eq!(held_by_length[0], held_by_length[1]);

    // And 4 MiB ids: eight of them leave a few KiB, not 32 MiB.
    let store = MemoryStore::with_capacity(8);
    let before = live();
    let huge = "e".repeat(4 << 20);
    for index in 0..8 {
        process(&store, &format!("{index}{huge}")).await.unwrap();
    }
    drop(huge);
    let held = live() - before;
    eprintln!("8 events with 4 MiB ids: {held} bytes");
    assert!(held < 8 * 1024, "{held} bytes");
}
