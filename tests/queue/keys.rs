//! The SQLite store's index of keys, written later than the events: the keys the writer
//! still held when its process died, a purge of a held key, and the migration of a file
//! of schema version 3 (whose table had a unique index of the keys).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use openmail_webhooks::queue::{Backend, EventStore, SqliteStore};

use super::{open, scratch, stored};

const LEASE: Duration = Duration::from_secs(3600);

/// Set in the child process of
/// [`the_keys_held_when_the_process_died_are_remembered_after_a_restart`]: the directory of
/// its store.
const CHILD: &str = "OPENMAIL_KEYS_TEST_CHILD";

fn count(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap()
}

/// Claims and completes every waiting event: how many completed.
async fn complete_all(store: &Arc<SqliteStore>) -> usize {
    let claimed = store.claim(1_000, LEASE, 8).await.unwrap();
    let mut completed = 0;
    for event in claimed {
        if store.complete(event.lease()).await.unwrap() {
            completed += 1;
        }
    }
    completed
}

/// Events the child process of
/// [`the_keys_held_when_the_process_died_are_remembered_after_a_restart`] stores before it
/// waits for the writer to record how far the keys are in the index: twice the keys it
/// holds at most at this size (1,024), so that the older ones are written.
const BEFORE_RECORD: usize = 2_000;

/// Events it stores after that wait.
const AFTER_RECORD: usize = 50;

#[tokio::test]
async fn the_keys_held_when_the_process_died_are_remembered_after_a_restart() {
    if let Ok(dir) = std::env::var(CHILD) {
        let store = open(Path::new(&dir));
        for n in 0..BEFORE_RECORD {
            assert!(stored(&store, &format!("evt_held_{n}")).await);
        }
        // The writer records how far every key is in the index at most once a second,
        // at a commit: the next events' commits record it.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        for n in BEFORE_RECORD..BEFORE_RECORD + AFTER_RECORD {
            assert!(stored(&store, &format!("evt_held_{n}")).await);
        }
        // Dies without dropping the store: the keys its writer held are not written.
        std::process::exit(0);
    }
    let total = BEFORE_RECORD + AFTER_RECORD;
    let dir = scratch("keys-held");
    let path = dir.join("events.db");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "keys::the_keys_held_when_the_process_died_are_remembered_after_a_restart",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, &dir)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        count(&path, "SELECT count(*) FROM openmail_events"),
        total as i64
    );
    let through = count(
        &path,
        "SELECT value FROM openmail_meta WHERE name = 'keys_indexed_through'",
    );
    let missing = |through_or_below: bool| {
        let rows = if through_or_below {
            "id <= ?1"
        } else {
            "id > ?1"
        };
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                &format!(
                    "SELECT count(*) FROM openmail_events e WHERE {rows}
                     AND NOT EXISTS (SELECT 1 FROM openmail_keys k WHERE k.key = e.key)"
                ),
                [through],
                |row| row.get::<_, i64>(0),
            )
            .unwrap()
    };
    assert!(through > 0, "no row was recorded as indexed");
    assert_eq!(
        missing(true),
        0,
        "a row at or below {through} lacks its key"
    );
    assert!(
        missing(false) > 0,
        "every key past {through} was in the index already: nothing was held to test"
    );
    let store = open(&dir);
    for n in 0..total {
        assert!(
            !stored(&store, &format!("evt_held_{n}")).await,
            "evt_held_{n} was stored twice"
        );
    }
    assert!(stored(&store, "evt_after_restart").await);
    assert_eq!(store.stats().await.unwrap().waiting, total as u64 + 1);
    // Found by their keys: their completions are recorded.
    let mut completed = 0;
    while completed < total + 1 {
        let done = complete_all(&store).await;
        assert!(done > 0, "{completed} completed, then none");
        completed += done;
    }
    assert_eq!(store.stats().await.unwrap().waiting, 0);
    drop(store);
    // A graceful stop writes every held key.
    assert_eq!(
        count(&path, "SELECT count(*) FROM openmail_keys"),
        total as i64 + 1
    );
    assert_eq!(
        count(
            &path,
            "SELECT value FROM openmail_meta WHERE name = 'keys_indexed_through'"
        ),
        count(&path, "SELECT max(id) FROM openmail_events")
    );
}

#[tokio::test]
async fn a_purged_key_still_held_is_forgotten_and_its_event_can_be_stored_again() {
    let dir = scratch("keys-purged");
    let store = open(&dir);
    assert!(stored(&store, "evt_purged").await);
    assert_eq!(complete_all(&store).await, 1);
    assert!(
        !stored(&store, "evt_purged").await,
        "remembered once completed"
    );
    // A purge forgets events completed before its millisecond: let the completion's pass.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 1);
    assert!(stored(&store, "evt_purged").await, "forgotten once purged");
    assert_eq!(complete_all(&store).await, 1);
    drop(store);
    let store = open(&dir);
    assert!(!stored(&store, "evt_purged").await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 1);
    drop(store);
    let path = dir.join("events.db");
    assert_eq!(count(&path, "SELECT count(*) FROM openmail_events"), 0);
    assert_eq!(count(&path, "SELECT count(*) FROM openmail_keys"), 0);
    // The new row's id is past the row recorded as indexed (2, at the first drop).
    let store = open(&dir);
    assert!(stored(&store, "evt_new").await);
    drop(store);
    assert_eq!(count(&path, "SELECT min(id) FROM openmail_events"), 3);
}

/// Turns a file of the current schema back into version 3's: the keys unique in the
/// table. The tables of version 4 are left, as a build of version 3 would ignore them.
const BACK_TO_V3: &str = "
CREATE TABLE openmail_events_v3 (
    id              INTEGER PRIMARY KEY,
    key             BLOB NOT NULL UNIQUE,
    state           INTEGER NOT NULL,
    received_ms     INTEGER NOT NULL,
    due_ms          INTEGER NOT NULL,
    leased          INTEGER NOT NULL DEFAULT 0,
    token           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    started         INTEGER NOT NULL DEFAULT 1,
    channel         INTEGER,
    scope_inbox     TEXT,
    timestamp       INTEGER,
    secret_index    INTEGER,
    event_id_header TEXT,
    body            BLOB,
    error           TEXT,
    finished_ms     INTEGER
);
INSERT INTO openmail_events_v3 SELECT id, key, state, received_ms, due_ms, leased, token,
    attempts, started, channel, scope_inbox, timestamp, secret_index, event_id_header, body,
    error, finished_ms FROM openmail_events;
DROP TABLE openmail_events;
ALTER TABLE openmail_events_v3 RENAME TO openmail_events;
CREATE INDEX openmail_events_due ON openmail_events (due_ms) WHERE state = 0;
CREATE INDEX openmail_events_completed ON openmail_events (finished_ms) WHERE state = 1;
CREATE INDEX openmail_events_dead ON openmail_events (finished_ms) WHERE state = 2;
PRAGMA user_version = 3;
";

#[tokio::test]
async fn a_file_of_schema_version_3_keeps_every_key_without_the_unique_index() {
    let dir = scratch("keys-v3");
    let path = dir.join("events.db");
    let store = open(&dir);
    for n in 0..30 {
        assert!(stored(&store, &format!("evt_v3_{n}")).await);
    }
    // Ten completed, twenty waiting.
    let claimed = store.claim(10, LEASE, 8).await.unwrap();
    for event in claimed {
        assert!(store.complete(event.lease()).await.unwrap());
    }
    drop(store);
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(BACK_TO_V3).unwrap();
    db.execute_batch("DROP TABLE openmail_keys; DROP TABLE openmail_meta;")
        .unwrap();
    drop(db);
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'sqlite_autoindex_openmail_events%'"
        ),
        1
    );
    let store = open(&dir);
    assert_eq!(store.stats().await.unwrap().waiting, 20);
    for n in 0..30 {
        assert!(!stored(&store, &format!("evt_v3_{n}")).await, "evt_v3_{n}");
    }
    assert!(stored(&store, "evt_v4").await);
    assert_eq!(complete_all(&store).await, 21);
    drop(store);
    assert_eq!(count(&path, "PRAGMA user_version"), 4);
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'sqlite_autoindex_openmail_events%'"
        ),
        0,
        "the table's unique index is gone"
    );
    assert_eq!(count(&path, "SELECT count(*) FROM openmail_keys"), 31);
    assert_eq!(
        count(
            &path,
            "SELECT count(*) FROM sqlite_schema WHERE name IN
                 ('openmail_events_due', 'openmail_events_completed', 'openmail_events_dead')"
        ),
        3
    );
}

/// Rows whose key is missing from the index of keys, or in it under another row, and
/// entries of the index with no row of that key.
fn mismatched_keys(path: &Path) -> (i64, i64) {
    let rows = count(
        path,
        "SELECT count(*) FROM openmail_events e WHERE NOT EXISTS
             (SELECT 1 FROM openmail_keys k WHERE k.key = e.key AND k.id = e.id)",
    );
    let entries = count(
        path,
        "SELECT count(*) FROM openmail_keys k WHERE NOT EXISTS
             (SELECT 1 FROM openmail_events e WHERE e.id = k.id AND e.key = k.key)",
    );
    (rows, entries)
}

#[tokio::test]
async fn a_file_taken_back_to_version_3_by_hand_gets_its_index_of_keys_written_again() {
    let dir = scratch("keys-v3-kept-tables");
    let path = dir.join("events.db");
    // Version 4: three events completed; the drop writes their keys into the index and
    // records the third row as the last indexed.
    let store = open(&dir);
    for n in 0..3 {
        assert!(stored(&store, &format!("evt_before_{n}")).await);
    }
    assert_eq!(complete_all(&store).await, 3);
    drop(store);
    // The row a build of version 3 would store for a new event: taken from another file.
    let other = scratch("keys-v3-kept-tables-other");
    let other_store = open(&other);
    assert!(stored(&other_store, "evt_under_v3").await);
    drop(other_store);
    // Back to version 3 by hand, leaving the tables of version 4 (which a build of
    // version 3 does not see). That build purges the completed events, which leaves their
    // keys in `openmail_keys`, and stores a new event, whose row id comes round to 1.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(BACK_TO_V3).unwrap();
    db.execute_batch("DELETE FROM openmail_events WHERE state = 1")
        .unwrap();
    db.execute(
        "ATTACH DATABASE ?1 AS other",
        [other.join("events.db").to_str().expect("a UTF-8 path")],
    )
    .unwrap();
    db.execute_batch(
        "INSERT INTO openmail_events (key, state, received_ms, due_ms, leased, token,
             attempts, started, channel, scope_inbox, timestamp, secret_index,
             event_id_header, body)
         SELECT key, state, received_ms, due_ms, leased, token, attempts, started, channel,
             scope_inbox, timestamp, secret_index, event_id_header, body
         FROM other.openmail_events;
         DETACH DATABASE other;",
    )
    .unwrap();
    drop(db);
    assert_eq!(count(&path, "SELECT max(id) FROM openmail_events"), 1);
    assert_eq!(count(&path, "SELECT count(*) FROM openmail_keys"), 3);

    // Version 4 again: the event stored under version 3 is known, and runs once.
    let store = open(&dir);
    assert!(
        !stored(&store, "evt_under_v3").await,
        "the event stored under version 3 is a duplicate"
    );
    assert_eq!(complete_all(&store).await, 1);
    assert_eq!(complete_all(&store).await, 0);
    // The purged events are forgotten, as under version 3.
    assert!(stored(&store, "evt_before_0").await);
    drop(store);
    assert_eq!(mismatched_keys(&path), (0, 0));
}
