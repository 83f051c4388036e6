//! The store's statements keep their plans when PostgreSQL's statistics are stale: after a
//! bulk load that `ANALYZE` saw with nothing completed, and after a quiet spell that it saw
//! with nothing waiting, before a backlog. Autovacuum is off for the table, as it is in
//! effect until it next analyses a large one. What the statements read is counted by the
//! server (`pg_stat_user_indexes`), not timed.

use std::time::{Duration, Instant};

use openmail_webhooks::queue::{Backend, Lease, PostgresStore};

use crate::postgres_support;
use crate::store::{awkward_body, delivery, inspect, key_of, replica};

const LEASE: Duration = Duration::from_secs(60);
const MAX_ATTEMPTS: u32 = 8;

/// Rows that stand for a backlog or for completed events: many more than the store's
/// statements below touch, so that one read of a whole partial index shows.
const ROWS: i64 = 20_000;

/// At most this many index entries of the partial indexes may be read by the statements
/// below: their claims read the few due events, nothing else should read those indexes.
const READS: i64 = 2_000;

#[tokio::test]
async fn statements_by_key_read_the_primary_key_when_the_statistics_are_stale() {
    let Some(url) = postgres_support::database("a PostgreSQL plan test").await else {
        return;
    };
    let store = replica(&url).await;
    let setup = inspect(&url).await;
    // Filled rows are told apart by a column no index has, so that setting them up reads
    // no index the test counts.
    setup
        .batch_execute(&format!(
            "ALTER TABLE openmail_events SET (autovacuum_enabled = false);
             INSERT INTO openmail_events (key, channel, timestamp, secret_index, body, due_at)
             SELECT sha256(convert_to('filled_' || i, 'UTF8')), 0, 0, -1, '\\x00',
                 now() + interval '1 hour'
             FROM generate_series(1, {ROWS}) AS i;
             ANALYZE openmail_events;"
        ))
        .await
        .unwrap();
    // A bulk load analysed before any completed; then the workers completed them.
    setup
        .batch_execute(
            "UPDATE openmail_events SET state = 1, finished_at = now(), body = NULL
             WHERE secret_index = -1",
        )
        .await
        .unwrap();
    vacuum(&setup).await;
    let leases = claim_new(&store, "evt_plan_completed", 4).await;
    let (recorded, ..) = store
        .complete_and_claim(leases, 8, LEASE, MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(recorded, [true; 4]);

    // Analysed in a quiet spell with nothing waiting; then a backlog (here: retries due in
    // an hour, so that the claims leave them alone).
    setup
        .batch_execute("ANALYZE openmail_events")
        .await
        .unwrap();
    setup
        .batch_execute(
            "UPDATE openmail_events SET state = 0, finished_at = NULL
             WHERE secret_index = -1",
        )
        .await
        .unwrap();
    vacuum(&setup).await;
    let mut leases = claim_new(&store, "evt_plan_backlog", 6).await.into_iter();
    let (Some(renewed), Some(failed), Some(released), Some(completed), Some(dead)) = (
        leases.next(),
        leases.next(),
        leases.next(),
        leases.next(),
        leases.next(),
    ) else {
        panic!("six events were claimed");
    };
    assert!(store.renew(renewed, LEASE).await.unwrap());
    assert!(
        store
            .fail(failed, Some(Duration::from_secs(3600)), "retry".into())
            .await
            .unwrap()
    );
    assert!(store.release(released).await.unwrap());
    assert!(store.complete(completed).await.unwrap());
    assert!(store.fail(dead, None, "dead".into()).await.unwrap());
    let grouped: Vec<_> = std::iter::once(renewed).chain(leases).collect();
    let (recorded, ..) = store
        .complete_and_claim(grouped, 8, LEASE, MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(recorded, [true; 2]);

    // The store's connections report what they read when they close.
    drop(store);
    let reads = index_reads(&setup).await;
    let read = |index: &str| {
        reads
            .iter()
            .find(|(name, _)| name == index)
            .map_or(0, |(_, read)| *read)
    };
    let (due, completed) = (
        read("openmail_events_due"),
        read("openmail_events_completed"),
    );
    assert!(
        due <= READS && completed <= READS,
        "the store's statements read {due} entries of openmail_events_due and {completed} \
         of openmail_events_completed (at most {READS} each expected; {ROWS} rows were in \
         each in turn): a statement by key used a partial index instead of the primary key"
    );
}

/// Clears the dead index entries the setup left, so that the claims' scans do not read
/// them; `VACUUM` does not analyse.
async fn vacuum(client: &tokio_postgres::Client) {
    client
        .batch_execute("VACUUM openmail_events")
        .await
        .unwrap();
}

/// Inserts `count` new events and claims them.
async fn claim_new(store: &PostgresStore, prefix: &str, count: usize) -> Vec<Lease> {
    for number in 0..count {
        let event = delivery(&awkward_body(&format!("{prefix}_{number}"))).await;
        store.insert(key_of(&event), event, u64::MAX).await.unwrap();
    }
    let claimed = store.claim(count, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(claimed.len(), count);
    claimed.iter().map(|claimed| claimed.lease()).collect()
}

/// The index entries read per index of the table, once every other connection to the
/// database has closed (a closing connection reports its counts first).
async fn index_reads(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let others: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if others == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store's connections did not close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .query(
            "SELECT indexrelname::text, idx_tup_read FROM pg_stat_user_indexes
             WHERE relname = 'openmail_events'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}
