//! A crash refunds the attempts of prefetched events that never started: the SQLite store's
//! side (the store reopened after a crash hands back the leases), and the migration of a
//! file of schema version 1, which had no record of a start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openmail_webhooks::queue::{Backend, Durability, EventStore, SqliteStore, Workers};

use super::{open, scratch, stored};

const LEASE: Duration = Duration::from_secs(3600);

/// Opens the store again once the dropped one let go of the file, as a restarted process.
async fn reopen(dir: &Path) -> Arc<SqliteStore> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash) {
            Ok(store) => return Arc::new(store),
            Err(error) => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_crash_refunds_the_attempts_of_prefetched_events_that_never_started() {
    let dir = scratch("refund");
    let store = open(&dir);
    for id in ["evt_r1", "evt_r2", "evt_r3", "evt_r4"] {
        stored(&store, id).await;
    }
    // One free slot: the first event in due order starts at the claim, the rest are a
    // prefetch.
    let (_, claimed, _) = store
        .record_and_claim(Vec::new(), Vec::new(), 4, 1, LEASE, 8)
        .await
        .unwrap();
    let started: Vec<bool> = claimed.iter().map(|claimed| claimed.started()).collect();
    assert_eq!(started, [true, false, false, false]);
    assert!(claimed.iter().all(|claimed| claimed.attempt() == 1));
    // The second took a slot later: its start is recorded with the next call.
    store
        .record_and_claim(Vec::new(), vec![claimed[1].lease()], 0, 0, LEASE, 8)
        .await
        .unwrap();
    let first: Vec<[u8; 32]> = claimed
        .iter()
        .map(|claimed| *claimed.lease().key())
        .collect();
    drop(store);

    // As after a crash: the new process takes every lease back at once.
    let store = reopen(&dir).await;
    let again = store.claim(8, LEASE, 8).await.unwrap();
    assert!(
        again.iter().all(|claimed| claimed.taken_over()),
        "their holder died"
    );
    let attempts: HashMap<[u8; 32], u32> = again
        .iter()
        .map(|claimed| (*claimed.lease().key(), claimed.attempt()))
        .collect();
    let attempts: Vec<u32> = first.iter().map(|key| attempts[key]).collect();
    assert_eq!(
        attempts,
        [2, 2, 1, 1],
        "the started attempts stay counted, the prefetched ones that never started do not"
    );
}

#[tokio::test]
async fn a_prefetched_event_that_never_starts_is_never_dead_lettered_by_crashes() {
    let dir = scratch("refund-loop");
    let store = open(&dir);
    stored(&store, "evt_refund_loop").await;
    let max_attempts = 3;
    let mut store = store;
    for _ in 0..max_attempts + 2 {
        let (_, claimed, _) = store
            .record_and_claim(Vec::new(), Vec::new(), 1, 0, LEASE, max_attempts)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].attempt(), 1);
        assert!(!claimed[0].started());
        drop(store);
        store = reopen(&dir).await;
    }
    assert_eq!(store.stats().await.unwrap().dead_letters, 0);
}

/// Version 1 of the SQLite schema, as the store created it before it recorded starts.
const SCHEMA_V1: &str = "
CREATE TABLE openmail_events (
    id              INTEGER PRIMARY KEY,
    key             BLOB NOT NULL UNIQUE,
    state           INTEGER NOT NULL,
    received_ms     INTEGER NOT NULL,
    due_ms          INTEGER NOT NULL,
    leased          INTEGER NOT NULL DEFAULT 0,
    token           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    channel         INTEGER,
    scope_inbox     TEXT,
    timestamp       INTEGER,
    secret_index    INTEGER,
    event_id_header TEXT,
    body            BLOB,
    error           TEXT,
    finished_ms     INTEGER
);
CREATE INDEX openmail_events_due ON openmail_events (due_ms) WHERE state = 0;
CREATE INDEX openmail_events_finished ON openmail_events (finished_ms) WHERE state <> 0;
PRAGMA user_version = 1;
";

#[tokio::test]
async fn a_file_of_schema_version_1_is_migrated_and_its_leases_stay_counted() {
    let dir = scratch("migrate-v1");
    let path = dir.join("events.db");
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(SCHEMA_V1).unwrap();
        // An event leased by a version 1 process that died, with three attempts counted.
        db.execute(
            "INSERT INTO openmail_events (key, state, received_ms, due_ms, leased, token,
                 attempts, channel, body)
             VALUES (?1, 0, 0, 4102444800000, 1, 3, 3, 1, ?2)",
            rusqlite::params![&[7_u8; 32][..], &b"{}"[..]],
        )
        .unwrap();
    }
    let store = reopen(&dir).await;
    let claimed = store.claim(8, LEASE, 8).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].attempt(),
        4,
        "a version 1 lease counts as started"
    );
    drop(store);
    let store = reopen(&dir).await;
    drop(store);
    let db = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 4);
    let started: i64 = db
        .query_row("SELECT started FROM openmail_events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(started, 1);
    // Version 3: the completed events and the dead letters each have an index of their
    // own, in place of one for both.
    let mut indexes: Vec<String> = db
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            "openmail_events_completed",
            "openmail_events_dead",
            "openmail_events_due"
        ]
    );
}

#[tokio::test]
async fn the_reopen_hands_leases_back_due_in_the_order_their_events_arrived() {
    let dir = scratch("refund-order");
    let store = open(&dir);
    stored(&store, "evt_order_first").await;
    let claimed = store.claim(1, LEASE, 8).await.unwrap();
    let first = *claimed[0].lease().key();
    // Arrives while the first is leased: before the reopen, but after the first.
    tokio::time::sleep(Duration::from_millis(5)).await;
    stored(&store, "evt_order_second").await;
    drop(store);
    let store = reopen(&dir).await;
    let claimed = store.claim(1, LEASE, 8).await.unwrap();
    assert_eq!(claimed[0].lease().key(), &first);
}

/// The workers record the start of a prefetched event that took a slot: when the process
/// dies while it runs, its attempt stays counted, and the events still waiting in the
/// prefetch get theirs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_record_the_start_of_a_prefetched_event_that_took_a_slot() {
    use axum::{Extension, Router, routing::post};
    use openmail_webhooks::Delivery;
    use std::sync::Mutex;

    let dir = scratch("refund-workers");
    let store = open(&dir);
    // The first completes at once; the others hang, so the one that takes the freed slot
    // runs until the "crash" and the rest wait in the prefetch.
    for id in ["evt_w0", "evt_w1", "evt_w2", "evt_w3"] {
        stored(&store, id).await;
    }
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = {
        let ran = Arc::clone(&ran);
        Router::new().route(
            "/webhooks",
            post(move |Extension(delivery): Extension<Delivery>| {
                let ran = Arc::clone(&ran);
                async move {
                    let id = delivery.event_id().unwrap_or_default().to_owned();
                    ran.lock().unwrap().push(id.clone());
                    if id != "evt_w0" {
                        std::future::pending::<()>().await;
                    }
                }
            }),
        )
    };
    let workers = tokio::spawn(
        Workers::new(Arc::clone(&store), handler)
            .concurrency(1)
            .prefetch(3)
            .run(std::future::pending()),
    );
    // Until the store holds the completion of the first and the start of the second.
    let path = dir.join("events.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = rusqlite::Connection::open(&path).and_then(|db| {
            db.query_row(
                "SELECT sum(state = 1), sum(state = 0 AND leased = 1 AND started = 1)
                 FROM openmail_events",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
            )
        });
        if let Ok((1, 1)) = counts {
            break;
        }
        assert!(Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The crash: nothing is released.
    workers.abort();
    let _ = workers.await;
    drop(store);
    let running = ran.lock().unwrap()[1].clone();
    assert_eq!(ran.lock().unwrap().len(), 2);

    let store = reopen(&dir).await;
    let again = store.claim(8, LEASE, 8).await.unwrap();
    let mut attempts: Vec<(String, u32)> = again
        .iter()
        .map(|claimed| {
            (
                claimed.delivery().event_id().unwrap_or_default().to_owned(),
                claimed.attempt(),
            )
        })
        .collect();
    attempts.sort();
    assert_eq!(attempts.len(), 3);
    for (id, attempt) in attempts {
        let expected = if id == running { 2 } else { 1 };
        assert_eq!(attempt, expected, "{id}");
    }
}

/// A prefetched event taken over from a dead holder may be what killed it: the workers
/// record its start before its handler runs, not with their next call, so that its next
/// crash counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_event_taken_over_from_a_dead_holder_starts_recorded() {
    use axum::{Extension, Router, routing::post};
    use openmail_webhooks::Delivery;

    let dir = scratch("refund-taken-over");
    let store = open(&dir);
    stored(&store, "evt_t0").await;
    stored(&store, "evt_t1").await;
    // A process claims both as a prefetch and dies.
    let (_, claimed, _) = store
        .record_and_claim(Vec::new(), Vec::new(), 2, 0, LEASE, 8)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    drop(store);
    let store = reopen(&dir).await;

    let path = dir.join("events.db");
    let (seen, mut sightings) = tokio::sync::mpsc::unbounded_channel();
    let handler = Router::new().route(
        "/webhooks",
        post(move |Extension(delivery): Extension<Delivery>| {
            let (seen, path) = (seen.clone(), path.clone());
            async move {
                if delivery.event_id() == Some("evt_t1") {
                    // What the store holds while the handler runs.
                    let unstarted: i64 = rusqlite::Connection::open(&path)
                        .and_then(|db| {
                            db.query_row(
                                "SELECT count(*) FROM openmail_events
                                 WHERE state = 0 AND leased = 1 AND NOT started",
                                [],
                                |row| row.get(0),
                            )
                        })
                        .unwrap();
                    let _ = seen.send(unstarted);
                }
            }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // One slot: the first starts at the claim, the second waits in the prefetch.
    let workers = tokio::spawn(
        Workers::new(Arc::clone(&store), handler)
            .concurrency(1)
            .prefetch(1)
            .run(async {
                let _ = stopped.await;
            }),
    );
    let unstarted = tokio::time::timeout(Duration::from_secs(30), sightings.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        unstarted, 0,
        "its start was recorded before its handler ran"
    );
    let _ = stop.send(());
    workers.await.unwrap();
}

#[tokio::test]
async fn a_file_of_schema_version_2_gets_an_index_each_for_completed_and_dead_events() {
    let dir = scratch("migrate-v2");
    let path = dir.join("events.db");
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(SCHEMA_V1).unwrap();
        db.execute_batch(
            "ALTER TABLE openmail_events ADD COLUMN started INTEGER NOT NULL DEFAULT 1;
             PRAGMA user_version = 2;",
        )
        .unwrap();
        // A dead letter, then a completed event, both finished long ago.
        db.execute(
            "INSERT INTO openmail_events (key, state, received_ms, due_ms, attempts, error,
                 finished_ms, channel, body)
             VALUES (?1, 2, 0, 0, 8, 'gave up', 1000, 1, ?2)",
            rusqlite::params![&[2_u8; 32][..], &b"{}"[..]],
        )
        .unwrap();
        db.execute(
            "INSERT INTO openmail_events (key, state, received_ms, due_ms, finished_ms)
             VALUES (?1, 1, 0, 0, 2000)",
            rusqlite::params![&[1_u8; 32][..]],
        )
        .unwrap();
    }
    let store = reopen(&dir).await;
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error(), "gave up");
    assert_eq!(store.purge(Duration::from_secs(60)).await.unwrap(), 1);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.dead_letters), (0, 1));
    drop(store);
    let db = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = db
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, 4);
    let finished: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'openmail_events_finished'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(finished, 0, "the index of both is dropped");
    let new: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_schema
             WHERE name IN ('openmail_events_completed', 'openmail_events_dead')",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(new, 2, "each has its own index");
    let keys: i64 = db
        .query_row("SELECT count(*) FROM openmail_events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(keys, 1, "the dead letter stays");
}
