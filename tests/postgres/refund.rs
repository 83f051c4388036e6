//! A crash refunds the attempts of prefetched events that never started, on PostgreSQL:
//! a replica dies holding leases, another claims them once they expire. And the migration
//! of a database of schema version 1.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use openmail_webhooks::queue::{Backend, Claimed, Durability, PostgresStore};

use crate::postgres_support;
use crate::store::{awkward_body, delivery, inspect, key_of, replica};

const LEASE: Duration = Duration::from_secs(60);

/// Claims on `store` until `count` events came back (their leases expire meanwhile).
async fn claim_expired(store: &PostgresStore, count: usize) -> Vec<Claimed> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut claimed = Vec::new();
    while claimed.len() < count {
        claimed.extend(store.claim(count, LEASE, 8).await.unwrap());
        assert!(Instant::now() < deadline, "only {} claimed", claimed.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    claimed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_of_a_prefetched_event_that_never_started_gets_its_attempt_back() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let (dying, surviving) = (replica(&url).await, replica(&url).await);
    let mut keys = Vec::new();
    for id in ["evt_r1", "evt_r2", "evt_r3", "evt_r4"] {
        let event = delivery(&awkward_body(id)).await;
        keys.push(key_of(&event));
        dying.insert(key_of(&event), event, 1_000).await.unwrap();
    }
    // One free slot: the first event in due order starts at the claim, the rest are a
    // prefetch. Short leases, which the dying replica never renews.
    let (_, claimed, _) = dying
        .record_and_claim(Vec::new(), Vec::new(), 4, 1, Duration::from_secs(1), 8)
        .await
        .unwrap();
    let started: HashMap<[u8; 32], bool> = claimed
        .iter()
        .map(|claimed| (*claimed.lease().key(), claimed.started()))
        .collect();
    let started: Vec<bool> = keys.iter().map(|key| started[key]).collect();
    assert_eq!(started, [true, false, false, false], "in due order");
    // The second took a slot later: its start is recorded with the next call.
    let second = claimed
        .iter()
        .find(|claimed| claimed.lease().key() == &keys[1])
        .unwrap()
        .lease();
    dying
        .record_and_claim(Vec::new(), vec![second], 0, 0, Duration::from_secs(1), 8)
        .await
        .unwrap();
    drop(dying);

    assert!(claimed.iter().all(|claimed| !claimed.taken_over()));
    let again = claim_expired(&surviving, 4).await;
    assert!(again.iter().all(Claimed::taken_over), "their holder died");
    let attempts: HashMap<[u8; 32], u32> = again
        .iter()
        .map(|claimed| (*claimed.lease().key(), claimed.attempt()))
        .collect();
    let attempts: Vec<u32> = keys.iter().map(|key| attempts[key]).collect();
    assert_eq!(
        attempts,
        [2, 2, 1, 1],
        "the started attempts stay counted, the prefetched ones that never started do not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_event_that_never_starts_is_never_dead_lettered_by_expiries() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let event = delivery(&awkward_body("evt_refund_loop")).await;
    store.insert(key_of(&event), event, 1_000).await.unwrap();
    let max_attempts = 2;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut claims = 0;
    while claims < max_attempts + 2 {
        let (_, claimed, _) = store
            .record_and_claim(
                Vec::new(),
                Vec::new(),
                1,
                0,
                Duration::from_millis(200),
                max_attempts,
            )
            .await
            .unwrap();
        if let Some(claimed) = claimed.first() {
            assert_eq!(claimed.attempt(), 1);
            claims += 1;
        }
        assert!(Instant::now() < deadline, "{claims} claims");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        openmail_webhooks::queue::EventStore::stats(&store)
            .await
            .unwrap()
            .dead_letters,
        0
    );
}

/// Version 1 of the schema, as version 1 of the store created it (and docs/durable.md
/// showed it).
const SCHEMA_V1: &str = "\
CREATE TABLE openmail_schema (
    component text   PRIMARY KEY,
    version   bigint NOT NULL
);
CREATE TABLE openmail_events (
    key             bytea       PRIMARY KEY,
    state           smallint    NOT NULL DEFAULT 0,
    leased          boolean     NOT NULL DEFAULT false,
    token           bigint      NOT NULL DEFAULT 0,
    attempts        integer     NOT NULL DEFAULT 0,
    received_at     timestamptz NOT NULL DEFAULT now(),
    due_at          timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    channel         smallint,
    scope_inbox     text,
    timestamp       bigint,
    secret_index    bigint,
    event_id_header text,
    body            bytea,
    error           text
);
CREATE INDEX openmail_events_due ON openmail_events (due_at) WHERE state = 0;
CREATE INDEX openmail_events_completed ON openmail_events (finished_at) WHERE state = 1;
CREATE INDEX openmail_events_dead ON openmail_events (finished_at) WHERE state = 2;
INSERT INTO openmail_schema (component, version) VALUES ('events', 1);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_version_1_is_migrated_and_its_leases_stay_counted() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let sql = inspect(&url).await;
    sql.batch_execute(SCHEMA_V1).await.unwrap();
    // An event leased by a version 1 replica that died, with three attempts counted.
    sql.execute(
        "INSERT INTO openmail_events (key, leased, token, attempts, due_at, channel, body)
         VALUES ($1, true, 3, 3, now() - interval '1 second', 1, '\\x7b7d')",
        &[&&[7_u8; 32][..]],
    )
    .await
    .unwrap();
    // Replicas starting together: one migrates, the others find version 2.
    let connects = (0..3).map(|_| PostgresStore::connect(&url, Durability::ProcessCrash));
    let stores = futures_util::future::join_all(connects).await;
    let stores: Vec<PostgresStore> = stores.into_iter().map(Result::unwrap).collect();
    let version: i64 = sql
        .query_one(
            "SELECT version FROM openmail_schema WHERE component = 'events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
    let claimed = stores[0].claim(8, LEASE, 8).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].attempt(),
        4,
        "a version 1 lease counts as started"
    );
}
