//! The SQLite store's write-ahead log under attack, through the store's API: a completed
//! body must leave every file of the store while commits never pause, after a long log
//! started over in place (its older frames, past the new write position, still hold
//! bodies), the log must stay bounded under large bodies, and a store dropped while its
//! checkpointer catches up must let go of the file.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use openmail_webhooks::VerifyOpenMailLayer;
use openmail_webhooks::queue::{Backend, Durability, EventStore, Ingest, SqliteStore};
use openmail_webhooks::test_util::TestDelivery;

use super::{SECRET, scratch};

/// Taken by the test that keeps a core busy with reads and by the one whose log's bound
/// depends on the checkpointer keeping up: run together, the second's log grew past its
/// bound in one run of three.
static BUSY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Stores an event whose body carries `text`, through the verification layer and Ingest.
async fn store_text(store: &Arc<SqliteStore>, id: &str, text: &str) {
    let app = axum::Router::new()
        .route_service("/webhooks", Ingest::new(Arc::clone(store)))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    let body = serde_json::json!({
        "event": "message.received",
        "event_id": id,
        "inbox_id": "inb_1",
        "message": { "body_text": text },
    })
    .to_string();
    let request = TestDelivery::new(SECRET, body).request();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

fn wal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("events.db-wal")).map_or(0, |meta| meta.len())
}

/// Claims and completes every event the store holds, `batch` at a time.
async fn complete_all(store: &Arc<SqliteStore>) -> usize {
    let mut completed = 0;
    loop {
        let claimed = store.claim(64, Duration::from_secs(60), 8).await.unwrap();
        if claimed.is_empty() {
            return completed;
        }
        for event in &claimed {
            assert!(store.complete(event.lease()).await.unwrap());
            completed += 1;
        }
    }
}

/// Keeps a commit coming every `every` (a small public event) until `stop`.
fn steady(
    store: &Arc<SqliteStore>,
    every: Duration,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let store = Arc::clone(store);
    let stop = Arc::clone(stop);
    tokio::spawn(async move {
        let mut index = 0u64;
        while !stop.load(Ordering::Relaxed) {
            store_text(&store, &format!("evt_tick_{index}"), "public").await;
            index += 1;
            tokio::time::sleep(every).await;
        }
    })
}

/// Asks for the statistics back to back, from `callers` tasks at once, until `stop`.
fn polling(
    store: &Arc<SqliteStore>,
    callers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..callers)
        .map(|_| {
            let store = Arc::clone(store);
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut asked = 0;
                while !stop.load(Ordering::Relaxed) {
                    store.stats().await.unwrap();
                    asked += 1;
                }
                asked
            })
        })
        .collect()
}

/// Once the load runs, stores a private body that starts with `marker`, completes it, and
/// waits (at most 30 s) until no file of the store holds it; returns how long that took.
async fn erase_one(store: &Arc<SqliteStore>, dir: &Path, marker: &str) -> Duration {
    tokio::time::sleep(Duration::from_millis(600)).await;
    store_text(
        store,
        "evt_private",
        &format!("{marker}{}", "z".repeat(10_000)),
    )
    .await;
    assert!(complete_all(store).await >= 1);
    gone(dir, marker.as_bytes(), Duration::from_secs(30)).await
}

/// Waits until no file of the store holds `needle`; returns how long that took.
async fn gone(dir: &Path, needle: &[u8], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let found = super::files::containing(dir, needle);
        if found.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "a completed body still readable after {:?} in {found:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The events waiting (not due) in [`a_completed_body_leaves_the_files_while_the_statistics_are_asked_back_to_back`].
const WAITING: u64 = 300_000;

/// The same with the statistics asked back to back by four callers: each read holds the
/// log open while it runs, and SQLite does not truncate a log that a read holds, so the
/// reads must let the writer in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_body_leaves_the_files_while_the_statistics_are_asked_back_to_back() {
    let _alone = BUSY.lock().await;
    let dir = scratch("log-polled");
    let path = dir.join("events.db");
    // Events that wait far in the future, so that each count takes a while: a read open
    // on the log for most of the time.
    drop(SqliteStore::open(&path, Durability::ProcessCrash).unwrap());
    let started = Instant::now();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO openmail_events (key, state, received_ms, due_ms, body)
             SELECT randomblob(32), 0, 0, 4102444800000, x'7b7d' FROM n",
            [i64::try_from(WAITING).unwrap()],
        )
        .unwrap();
    let store = Arc::new(SqliteStore::open(&path, Durability::ProcessCrash).unwrap());
    let counted = Instant::now();
    assert_eq!(store.stats().await.unwrap().waiting, WAITING);
    eprintln!(
        "filled in {:?}, one count took {:?}",
        counted - started,
        counted.elapsed()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady(&store, Duration::from_millis(100), &stop);
    let pollers = polling(&store, 4, &stop);
    let took = erase_one(&store, &dir, "PRIVATE-POLLED-").await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let mut asked = 0;
    for poller in pollers {
        asked += poller.await.unwrap();
    }
    eprintln!("erased after {took:?}, {asked} statistics asked meanwhile");
    assert!(asked > 0);
}

/// Commits every 200 ms: never a pause of 250 ms, so the body leaves the log only through
/// the truncation under load, about 5 s after the completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_body_leaves_the_files_while_commits_come_every_200_ms() {
    let dir = scratch("log-200ms");
    let store =
        Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady(&store, Duration::from_millis(200), &stop);
    let took = erase_one(&store, &dir, "PRIVATE-200-").await;
    eprintln!("erased after {took:?}");
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
}

/// Stores `count` events of `size` bytes each carrying `marker`, from 16 tasks at once.
async fn fill(store: &Arc<SqliteStore>, prefix: &str, marker: &str, count: usize, size: usize) {
    let mut tasks = Vec::new();
    for task in 0..16 {
        let store = Arc::clone(store);
        let text = format!("{marker}{}", "w".repeat(size));
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            for index in (task..count).step_by(16) {
                store_text(&store, &format!("evt_{prefix}_{index}"), &text).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Above what the log's file reaches while the copies keep up (at most 160 MiB before a
/// copy, plus what commits during the catch-up), below the 256 MiB where the writer holds
/// commits for a log that outgrows the checkpointer's copies.
const BOUND: u64 = 240 << 20;

/// Above the 256 MiB past which the writer holds commits until the log is truncated (plus
/// a group), below what a load that outgrows the copies reached without the hold (330 to
/// 1,119 MiB in three runs).
const HELD_BOUND: u64 = 288 << 20;

/// Samples the log's size until `stop`, returning the largest seen.
fn watch_wal(dir: &Path, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let dir = dir.to_path_buf();
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let mut largest = 0;
        while !stop.load(Ordering::Relaxed) {
            largest = largest.max(wal_len(&dir));
            std::thread::sleep(Duration::from_millis(5));
        }
        largest
    })
}

/// Bodies completed, then a long log of large bodies that starts over in place while
/// commits never pause: the older frames past the new write position held the completed
/// bodies, and must not keep them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fills hundreds of MiB (tens of seconds in a debug build): cargo test --test queue log:: -- --ignored --nocapture"]
async fn completed_bodies_leave_a_long_log_that_started_over_in_place() {
    let dir = scratch("log-long");
    let store =
        Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(false));
    let largest = watch_wal(&dir, &watching);
    let load = steady(&store, Duration::from_millis(200), &stop);
    let start = Instant::now();
    fill(&store, "private", "PRIVATE-LONG-", 200, 100_000).await;
    complete_all(&store).await;
    let completed = Instant::now();
    let erased = {
        let dir = dir.clone();
        tokio::spawn(async move { gone(&dir, b"PRIVATE-LONG-", Duration::from_secs(60)).await })
    };
    fill(&store, "public", "PUBLIC-", 700, 100_000).await;
    eprintln!(
        "filled in {:?}, completed at {:?}",
        start.elapsed(),
        completed - start
    );
    let took = erased.await.unwrap();
    eprintln!("erased {took:?} after the completions");
    watching.store(true, Ordering::Relaxed);
    let largest = largest.join().unwrap();
    eprintln!("largest log {} MiB", largest >> 20);
    assert!(largest < BOUND, "the log grew to {largest} bytes");
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
}

/// A sustained load of large bodies, none completed: the log starts over in place once a
/// copy finds it past 64 MiB (copies come at least every second, and at once past
/// 160 MiB), and grows past that only by what commits while the checkpointer catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes a GiB: cargo test --release --all-features --test queue log:: -- --ignored --nocapture"]
async fn the_log_stays_bounded_under_a_sustained_load_of_large_bodies() {
    let dir = scratch("log-bound");
    let store =
        Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
    let watching = Arc::new(AtomicBool::new(false));
    let largest = watch_wal(&dir, &watching);
    let start = Instant::now();
    // An optimised build commits faster than the checkpointer's copies take the frames on
    // a shared machine's disk (a debug one seldom does): the log grew to 330, 630 and
    // 1,119 MiB in three runs before the writer held commits past a long log (now
    // 256 MiB).
    let total: usize = if cfg!(debug_assertions) { 160 } else { 1000 };
    let done = Arc::new(AtomicBool::new(false));
    let completing = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut completed = 0;
            while !done.load(Ordering::Relaxed) {
                completed += complete_all(&store).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            completed
        })
    };
    fill(&store, "large", "LARGE-", total * 4, 256 * 1024).await;
    done.store(true, Ordering::Relaxed);
    eprintln!("completed {}", completing.await.unwrap());
    watching.store(true, Ordering::Relaxed);
    let largest = largest.join().unwrap();
    eprintln!(
        "{total} MiB in {:?}, largest log {} MiB",
        start.elapsed(),
        largest >> 20
    );
    assert!(largest < HELD_BOUND, "the log grew to {largest} bytes");
}

/// A store dropped while its checkpointer catches up with a long log (past 64 MiB), then
/// stores opened and dropped in a loop: the drop waits for both threads, so the file is
/// free (and its log truncated) once the drop returns, and a store opens on it again at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_dropped_while_its_checkpointer_catches_up_frees_the_file_at_once() {
    let dir = scratch("log-drop");
    let path = dir.join("events.db");
    for round in 0..20 {
        let store = Arc::new(SqliteStore::open(&path, Durability::ProcessCrash).unwrap());
        let (count, size) = if round == 0 {
            (280, 256 * 1024)
        } else {
            (4, 10_000)
        };
        fill(&store, &format!("drop{round}"), "DROP-", count, size).await;
        assert_eq!(complete_all(&store).await, count);
        let store = Arc::into_inner(store).unwrap();
        let dropping = tokio::task::spawn_blocking(move || drop(store));
        tokio::time::timeout(Duration::from_secs(30), dropping)
            .await
            .expect("the drop ends")
            .unwrap();
        // No wait: the file is free.
        let reopened = SqliteStore::open(&path, Durability::ProcessCrash)
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        assert_eq!(
            wal_len(&dir),
            0,
            "round {round}: the log outlived the store"
        );
        drop(reopened);
    }
    assert!(super::files::containing(&dir, b"DROP-").is_empty());
}

/// Many small bodies, stored inside their rows: inserts split and rebalance the table's
/// pages, moving the rows (bodies included) from page to page before they complete. No
/// completed body may stay in the free space of a page it once lived in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_moved_by_page_splits_leave_the_files_once_completed() {
    let dir = scratch("log-small");
    let store =
        Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
    fill(&store, "small", "SMALL-SECRET-", 1500, 300).await;
    assert_eq!(complete_all(&store).await, 1500);
    let took = gone(&dir, b"SMALL-SECRET-", Duration::from_secs(30)).await;
    eprintln!("erased after {took:?}");
}

/// The longest acknowledgement under a steady load that the disk sustains (a 64 KiB body
/// every 5 ms, about 13 MB/s, each completed at once), over 12 s: the log starts over in
/// place and is truncated under load every 5 s. A measurement: the numbers depend on the
/// machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --release --all-features --test queue log::the_longest -- --ignored --nocapture"]
async fn the_longest_acknowledgement_under_a_steady_load() {
    let dir = scratch("log-stall");
    let store =
        Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let completing = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                complete_all(&store).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let text = format!("STALL-{}", "v".repeat(64 * 1024));
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut index = 0;
    while start.elapsed() < Duration::from_secs(12) {
        let sent = Instant::now();
        store_text(&store, &format!("evt_stall_{index}"), &text).await;
        latencies.push(sent.elapsed());
        index += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done.store(true, Ordering::Relaxed);
    completing.await.unwrap();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    eprintln!(
        "{} acknowledgements: median {:?}, p99 {:?}, p99.9 {:?}, longest {:?}",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        latencies.last().unwrap()
    );
}

/// Another program reading the file (the `sqlite3` shell, which the store's locks do not
/// keep out) with a transaction open pins the log: nothing can truncate it while the
/// reader's snapshot, which still holds the body, lives. Once the reader ends, the
/// completed body leaves the files within the usual bound, under a steady load too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_body_leaves_the_files_once_an_outside_reader_ends() {
    let dir = scratch("log-reader");
    let path = dir.join("events.db");
    let store = Arc::new(SqliteStore::open(&path, Durability::ProcessCrash).unwrap());
    store_text(
        &store,
        "evt_private",
        &format!("PRIVATE-READER-{}", "r".repeat(10_000)),
    )
    .await;
    let reader = rusqlite::Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let count: i64 = reader
        .query_row("SELECT count(*) FROM openmail_events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady(&store, Duration::from_millis(100), &stop);
    assert!(complete_all(&store).await >= 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The reader's snapshot holds the body: the log cannot be truncated yet.
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    let took = gone(&dir, b"PRIVATE-READER-", Duration::from_secs(30)).await;
    eprintln!("erased {took:?} after the reader ended");
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
}

/// Under a steady load with no body to erase, the write-ahead log is never truncated: once
/// a copy (at least every second) finds it past its limit (64 MiB), the checkpointer
/// catches up and the log starts over in place, in pages the file system already
/// allocated, so the file stays bounded without shrinking. (A truncation stops the writer
/// for as long as it copies and flushes what is left, and makes every later frame an
/// append.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_starts_over_in_place_instead_of_being_truncated() {
    let _alone = BUSY.lock().await;
    let dir = scratch("in-place");
    let store =
        Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
    // 4,000 events of 64 KiB each: over 300 MiB of log written (about 80 KiB an event),
    // past the 256 MiB at which the writer would truncate a log that never started over.
    let filler: String = (0..64 * 1024)
        .map(|index| char::from(b'a' + (index % 26) as u8))
        .collect();
    let mut largest = 0;
    let mut shrank = None;
    for index in 0..4_000 {
        store_text(
            &store,
            &format!("evt_in_place_{index}"),
            &format!("{index}{filler}"),
        )
        .await;
        let size = wal_len(&dir);
        if size < largest && shrank.is_none() {
            shrank = Some((index, largest, size));
        }
        largest = largest.max(size);
    }
    assert_eq!(shrank, None, "the log was truncated: (event, from, to)");
    // Started over in place: never truncated (above), and never holding what was written.
    assert!(
        largest <= 250 * 1024 * 1024,
        "the log grew to {largest} bytes: it did not start over"
    );
    assert!(
        largest >= 60 * 1024 * 1024,
        "the log never reached its limit: {largest} bytes"
    );
    assert_eq!(super::stats(&*store).await.waiting, 4_000);
}

/// The workers ask the store for events every 100 ms while a slot is free; those claims
/// write nothing, so they do not keep the store from being quiet: a completed body leaves
/// the write-ahead log about 250 ms after the writes pause, not only at the 5 s bound
/// that holds under a load that never pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_body_leaves_the_log_soon_after_the_writes_pause_while_workers_poll() {
    use super::{Behaviour, handler, start};
    let dir = scratch("quiet-erase");
    let store =
        Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
    let (seen, mut runs) = tokio::sync::mpsc::unbounded_channel();
    let (stop, running) = start(openmail_webhooks::queue::Workers::new(
        Arc::clone(&store),
        handler(seen, |_| Behaviour::Succeed),
    ));
    store_text(&store, "evt_quiet_erase", "PRIVATE-QUIET-ERASE").await;
    assert_eq!(runs.recv().await.unwrap().event_id, "evt_quiet_erase");
    // Generous against the 250 ms of the design, short of the 5 s bound under load.
    gone(&dir, b"PRIVATE-QUIET-ERASE", Duration::from_secs(3)).await;
    stop.send(true).unwrap();
    running.await.unwrap();
}

/// A dead letter given up on ([`EventStore::discard_dead_letter`]) loses its body from every
/// file of the store, as a completed event does, and keeps its key: a replay is a
/// duplicate, not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_dead_letter_leaves_the_files_and_its_replay_is_a_duplicate() {
    let dir = scratch("discard");
    let store =
        Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
    store_text(&store, "evt_discard", "PRIVATE-DISCARDED-LETTER").await;
    let key = |claimed: &openmail_webhooks::queue::Claimed| *claimed.lease().key();
    let claimed = store.claim(1, Duration::from_secs(60), 1).await.unwrap();
    let discarded = key(&claimed[0]);
    assert!(
        !store.discard_dead_letter(discarded).await.unwrap(),
        "a leased event is not a dead letter"
    );
    assert!(
        store
            .fail(claimed[0].lease(), None, "gave up".into())
            .await
            .unwrap()
    );
    store_text(&store, "evt_waits", "public").await;
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
    assert!(
        !super::files::containing(&dir, b"PRIVATE-DISCARDED-LETTER").is_empty(),
        "the dead letter's body is in the files before the discard"
    );
    // The death's time moved to 1 ms after the epoch, so that a discard that kept it shows
    // without a comparison of clock readings.
    let planted = rusqlite::Connection::open(dir.join("events.db")).unwrap();
    planted.busy_timeout(Duration::from_secs(10)).unwrap();
    let moved = planted
        .execute(
            "UPDATE openmail_events SET finished_ms = 1 WHERE state = 2",
            [],
        )
        .unwrap();
    assert_eq!(moved, 1);
    drop(planted);

    assert!(store.discard_dead_letter(discarded).await.unwrap());
    assert!(!store.discard_dead_letter(discarded).await.unwrap(), "once");
    assert!(
        !store.retry_dead_letter(discarded).await.unwrap(),
        "no longer a dead letter to retry"
    );
    assert!(store.dead_letters(10).await.unwrap().is_empty());
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.waiting, stats.in_flight, stats.dead_letters),
        (1, 0, 0),
        "the other event still waits"
    );
    let (completed_ms, cleared) = finished(&dir, 1);
    assert_ne!(
        completed_ms, 1,
        "the retention runs from the discard, not from the death"
    );
    assert!(cleared, "the body and the delivery's columns are deleted");
    // The erasure waits for a pause in the writes: 30 s, as the other erasure tests
    // allow, for a machine kept busy by other work.
    gone(&dir, b"PRIVATE-DISCARDED-LETTER", Duration::from_secs(30)).await;

    // A replay: answered 200, and the store holds no new event for it.
    store_text(&store, "evt_discard", "PRIVATE-DISCARDED-LETTER").await;
    let next = store.claim(8, Duration::from_secs(60), 8).await.unwrap();
    assert_eq!(next.len(), 1, "only the other event runs");
    assert_ne!(key(&next[0]), discarded);
    assert_eq!(next[0].delivery().event_id(), Some("evt_waits"));

    // Its key goes with the retention, as a completed event's does: a replay is then
    // stored again.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge(Duration::from_millis(10)).await.unwrap(), 1);
    store_text(&store, "evt_discard", "again").await;
    let replayed = store.claim(8, Duration::from_secs(60), 8).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].delivery().event_id(), Some("evt_discard"));
}

/// The one event in `state`, read by a connection of its own (closed before returning, so
/// that it pins no log): when it finished, and whether its body and its delivery's columns
/// are all deleted.
fn finished(dir: &Path, state: i64) -> (i64, bool) {
    let reader = rusqlite::Connection::open(dir.join("events.db")).unwrap();
    reader
        .query_row(
            "SELECT finished_ms, body IS NULL AND channel IS NULL AND scope_inbox IS NULL
                 AND timestamp IS NULL AND secret_index IS NULL
                 AND event_id_header IS NULL AND error IS NULL
             FROM openmail_events WHERE state = ?1",
            [state],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap()
}
