//! [`PostgresStore`] through the [`EventStore`] contract, with deliveries verified by the
//! real layer, and replicas as stores of their own on one database.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::dedup::DedupKey;
use openmail_webhooks::queue::{
    Backend, Durability, EventStore, Inserted, PostgresStore, QueueError, QueueStats,
};
use openmail_webhooks::test_util::TestDelivery;
use openmail_webhooks::{Channel, Delivery, VerifyOpenMailLayer};
use tower::{Layer, ServiceExt};

use crate::postgres_support;

pub const SECRET: &str = "whsec_postgres_store_tests";

/// A body whose bytes `jsonb` and `text` would refuse or change: a lone surrogate escape,
/// an escaped NUL, and key order and spacing that only the bytes keep.
pub fn awkward_body(event_id: &str) -> String {
    format!(
        "{{\"event\":\"message.received\", \"event_id\":\"{event_id}\",\"inbox_id\":\"inb_1\",\
         \"attempt\":1,  \"subject\":\"\\ud800 and \\u0000\"}}"
    )
}

/// The [`Delivery`] the verification layer hands the inner service for `body`, signed now.
/// Event parsing is off: serde_json refuses the lone surrogate of [`awkward_body`], and
/// the store is about the bytes.
pub async fn delivery(body: &str) -> Delivery {
    let seen: Arc<Mutex<Option<Delivery>>> = Arc::default();
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |request: Request<VerifiedBody>| {
            let seen = Arc::clone(&seen);
            async move {
                *seen.lock().unwrap() = request.extensions().get::<Delivery>().cloned();
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
    };
    let service = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .parse_events(false)
        .layer(inner);
    let response = service
        .oneshot(TestDelivery::new(SECRET, body).request())
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the layer refused {body}");
    let delivery = seen.lock().unwrap().take();
    delivery.expect("the layer verified the body and handed on a Delivery")
}

/// The store's key for a delivery: the scoped event id, as the queue's Ingest computes it.
pub fn key_of(delivery: &Delivery) -> [u8; 32] {
    *DedupKey::from_delivery(delivery).unwrap().digest()
}

/// A store on `url`, as one replica.
pub async fn replica(url: &str) -> PostgresStore {
    PostgresStore::connect(url, Durability::ProcessCrash)
        .await
        .unwrap()
}

/// A connection of the test's own, to look at what the store left in the database.
pub async fn inspect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The id of the server process behind `session`.
async fn backend_pid(session: &impl tokio_postgres::GenericClient) -> i32 {
    session
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// How many sessions wait for a lock that the server process `pid` holds.
async fn blocked_by(db: &tokio_postgres::Client, pid: i32) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        &[&pid],
    )
    .await
    .unwrap()
    .get(0)
}

const LEASE: Duration = Duration::from_secs(60);
const MAX_ATTEMPTS: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_the_verified_bytes_and_hands_back_the_delivery_as_verified() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let body = awkward_body("evt_bytes");
    let stored = delivery(&body).await;
    let key = key_of(&stored);
    assert_eq!(
        store.insert(key, stored.clone(), 1_000).await.unwrap(),
        Inserted::Stored
    );

    let claimed = store.claim(10, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let claim = &claimed[0];
    assert_eq!(claim.attempt(), 1);
    assert_eq!(claim.lease().key(), &key);
    let delivery = claim.delivery();
    assert_eq!(
        delivery.body().as_ref(),
        body.as_bytes(),
        "the bytes, exactly"
    );
    assert_eq!(delivery.channel(), Channel::Webhook);
    assert_eq!(delivery.scope(), stored.scope());
    assert_eq!(delivery.verified(), stored.verified());
    assert_eq!(delivery.event_id(), Some("evt_bytes"));
    assert_eq!(delivery.inbox_id(), Some("inb_1"));

    let sql = inspect(&url).await;
    let row = sql
        .query_one(
            "SELECT body, state, leased, attempts FROM openmail_events WHERE key = $1",
            &[&&key[..]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<u8>>(0), body.as_bytes());
    assert_eq!(row.get::<_, i16>(1), 0);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, i32>(3), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_stored_once_across_replicas_and_kept_after_completion_without_its_body() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let (first, second) = (replica(&url).await, replica(&url).await);
    let event = delivery(&awkward_body("evt_once")).await;
    let key = key_of(&event);

    // Concurrent copies on both replicas: one is stored, the others are duplicates.
    let copies = (0..8).map(|copy| {
        let store = if copy % 2 == 0 { &first } else { &second };
        store.insert(key, event.clone(), 1_000)
    });
    let outcomes = futures_util::future::join_all(copies).await;
    let stored = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(Inserted::Stored)))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Ok(Inserted::Duplicate)))
        .count();
    assert_eq!((stored, duplicates), (1, 7), "{outcomes:?}");

    let claimed = second.claim(10, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        first.insert(key, event.clone(), 1_000).await.unwrap(),
        Inserted::Duplicate,
        "while it runs"
    );
    assert!(first.complete(claimed[0].lease()).await.unwrap());
    assert!(
        !first.complete(claimed[0].lease()).await.unwrap(),
        "completed once"
    );
    assert_eq!(
        second.insert(key, event, 1_000).await.unwrap(),
        Inserted::Duplicate,
        "a replay after completion"
    );
    assert!(
        first
            .claim(10, LEASE, MAX_ATTEMPTS)
            .await
            .unwrap()
            .is_empty()
    );

    let sql = inspect(&url).await;
    let row = sql
        .query_one(
            "SELECT body IS NULL, channel IS NULL, scope_inbox IS NULL, event_id_header IS NULL, \
             state FROM openmail_events WHERE key = $1",
            &[&&key[..]],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the body is deleted at completion");
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2) && row.get::<_, bool>(3));
    assert_eq!(row.get::<_, i16>(4), 1);
    assert_eq!(first.stats().await.unwrap(), QueueStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_claimed_again_and_its_stale_holder_can_no_longer_settle_it() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let (first, second) = (replica(&url).await, replica(&url).await);
    let event = delivery(&awkward_body("evt_lease")).await;
    first.insert(key_of(&event), event, 1_000).await.unwrap();

    // Long enough for the checks below on a busy machine, short enough to wait out.
    let stale = first
        .claim(1, Duration::from_secs(3), MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    assert!(
        second
            .claim(1, LEASE, MAX_ATTEMPTS)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    let stats = second.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.in_flight), (0, 1));

    let taken = claim_within(&second, Duration::from_secs(30)).await;
    assert_eq!(taken.attempt(), 2, "the expired attempt counted");
    assert_ne!(taken.lease(), stale[0].lease());
    assert_eq!(taken.lease().key(), stale[0].lease().key());

    let old = stale[0].lease();
    assert!(!first.renew(old, LEASE).await.unwrap());
    assert!(!first.complete(old).await.unwrap());
    assert!(!first.fail(old, None, "stale".into()).await.unwrap());
    assert!(!first.release(old).await.unwrap());
    assert!(second.complete(taken.lease()).await.unwrap());
}

/// Claims on `store` until one event comes back.
async fn claim_within(
    store: &PostgresStore,
    deadline: Duration,
) -> openmail_webhooks::queue::Claimed {
    let start = Instant::now();
    loop {
        let mut claimed = store.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
        if let Some(claim) = claimed.pop() {
            return claim;
        }
        assert!(start.elapsed() < deadline, "nothing to claim");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_lease_is_not_claimed_by_another_replica() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let (first, second) = (replica(&url).await, replica(&url).await);
    let event = delivery(&awkward_body("evt_renew")).await;
    first.insert(key_of(&event), event, 1_000).await.unwrap();
    let claimed = first
        .claim(1, Duration::from_millis(500), MAX_ATTEMPTS)
        .await
        .unwrap();
    assert!(first.renew(claimed[0].lease(), LEASE).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(
        second
            .claim(1, LEASE, MAX_ATTEMPTS)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(second.stats().await.unwrap().in_flight, 1);
    assert!(first.complete(claimed[0].lease()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_dead_letter_with_the_body_and_a_dead_letter_can_be_retried() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let body = awkward_body("evt_fail");
    let event = delivery(&body).await;
    let key = key_of(&event);
    store.insert(key, event, 1_000).await.unwrap();

    let first = store.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert!(
        store
            .fail(
                first[0].lease(),
                Some(Duration::from_secs(3600)),
                "later".into()
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .claim(1, LEASE, MAX_ATTEMPTS)
            .await
            .unwrap()
            .is_empty(),
        "not due before its retry time"
    );
    assert_eq!(store.stats().await.unwrap().waiting, 1);
    let sql = inspect(&url).await;
    sql.execute(
        "UPDATE openmail_events SET due_at = now() WHERE key = $1",
        &[&&key[..]],
    )
    .await
    .unwrap();

    let second = store.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(second[0].attempt(), 2);
    // A message with NUL, as a handler's panic message quoting the event may carry.
    assert!(
        store
            .fail(second[0].lease(), None, "the handler panicked: \0".into())
            .await
            .unwrap()
    );
    assert!(
        store
            .claim(1, LEASE, MAX_ATTEMPTS)
            .await
            .unwrap()
            .is_empty()
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.waiting, stats.in_flight, stats.dead_letters),
        (0, 0, 1)
    );

    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key(), &key);
    assert_eq!(letters[0].attempts(), 2);
    assert!(letters[0].error().starts_with("the handler panicked"));
    assert_eq!(letters[0].delivery().body().as_ref(), body.as_bytes());

    assert!(store.retry_dead_letter(key).await.unwrap());
    assert!(
        !store.retry_dead_letter(key).await.unwrap(),
        "no longer dead"
    );
    let again = store.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(again[0].attempt(), 1, "attempts reset");
    assert!(store.complete(again[0].lease()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_dead_letter_loses_its_body_and_keeps_its_key_for_the_retention() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let event = delivery(&awkward_body("evt_discarded")).await;
    let key = key_of(&event);
    let waiting = delivery(&awkward_body("evt_still_waiting")).await;
    store.insert(key, event.clone(), 1_000).await.unwrap();
    assert!(
        !store.discard_dead_letter(key).await.unwrap(),
        "a waiting event is not a dead letter"
    );
    let claimed = store.claim(1, LEASE, 1).await.unwrap();
    assert!(
        !store.discard_dead_letter(key).await.unwrap(),
        "a leased event is not a dead letter"
    );
    assert!(
        store
            .fail(claimed[0].lease(), None, "gave up".into())
            .await
            .unwrap()
    );
    store
        .insert(key_of(&waiting), waiting, 1_000)
        .await
        .unwrap();
    let sql = inspect(&url).await;
    let finished = || async {
        sql.query_one(
            "SELECT state, finished_at,
                    num_nonnulls(body, channel, scope_inbox, timestamp, secret_index,
                                 event_id_header, error)
             FROM openmail_events WHERE key = $1",
            &[&&key[..]],
        )
        .await
        .map(|row| {
            (
                row.get::<_, i16>(0),
                row.get::<_, std::time::SystemTime>(1),
                row.get::<_, i32>(2),
            )
        })
        .unwrap()
    };
    // The death's time moved to the epoch, so that a discard that kept it shows without a
    // comparison of clock readings.
    let moved = sql
        .execute(
            "UPDATE openmail_events SET finished_at = 'epoch' WHERE key = $1 AND state = 2",
            &[&&key[..]],
        )
        .await
        .unwrap();
    assert_eq!(moved, 1, "a dead letter");

    assert!(store.discard_dead_letter(key).await.unwrap());
    assert!(!store.discard_dead_letter(key).await.unwrap(), "once");
    assert!(
        !store.retry_dead_letter(key).await.unwrap(),
        "no longer a dead letter to retry"
    );
    assert!(store.dead_letters(10).await.unwrap().is_empty());
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.waiting, stats.in_flight, stats.dead_letters),
        (1, 0, 0),
        "the other event still waits"
    );
    let (state, discarded_at, kept) = finished().await;
    assert_eq!(state, 1, "completed");
    assert_ne!(
        discarded_at,
        std::time::UNIX_EPOCH,
        "the retention runs from the discard, not from the death"
    );
    assert_eq!(kept, 0, "the body and the delivery's columns are deleted");
    assert_eq!(
        store.insert(key, event.clone(), 1_000).await.unwrap(),
        Inserted::Duplicate,
        "a replay within the retention"
    );
    let next = store.claim(8, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(next.len(), 1, "only the other event runs");
    assert_ne!(next[0].lease().key(), &key);

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge(Duration::from_millis(10)).await.unwrap(), 1);
    assert_eq!(
        store.insert(key, event, 1_000).await.unwrap(),
        Inserted::Stored,
        "forgotten after the retention, as a completed event's key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_last_attempt_never_finished_is_dead_lettered_at_the_next_claim() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let event = delivery(&awkward_body("evt_crashes")).await;
    let key = key_of(&event);
    store.insert(key, event, 1_000).await.unwrap();
    // Two attempts, each holder dying with its lease.
    for attempt in 1..=2 {
        let claimed = store.claim(1, Duration::from_millis(1), 2).await.unwrap();
        assert_eq!(claimed[0].attempt(), attempt);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.claim(1, LEASE, 2).await.unwrap().is_empty());
    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key(), &key);
    assert_eq!(
        letters[0].error(),
        "attempt 2 of 2 never finished: its process stopped or lost the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_due_at_once_with_its_attempt_uncounted() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let (first, second) = (replica(&url).await, replica(&url).await);
    let event = delivery(&awkward_body("evt_release")).await;
    first.insert(key_of(&event), event, 1_000).await.unwrap();
    let claimed = first.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert!(first.release(claimed[0].lease()).await.unwrap());
    let again = second.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(again[0].attempt(), 1);
    assert!(
        !first.complete(claimed[0].lease()).await.unwrap(),
        "the released lease is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_limit_refuses_new_events_and_still_tells_duplicates() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let mut outcomes = Vec::new();
    for n in 0..3 {
        let event = delivery(&awkward_body(&format!("evt_depth_{n}"))).await;
        outcomes.push(store.insert(key_of(&event), event, 2).await.unwrap());
    }
    assert_eq!(
        outcomes,
        [Inserted::Stored, Inserted::Stored, Inserted::Full]
    );
    let first = delivery(&awkward_body("evt_depth_0")).await;
    assert_eq!(
        store.insert(key_of(&first), first, 2).await.unwrap(),
        Inserted::Duplicate
    );
    assert_eq!(store.stats().await.unwrap().depth(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_forgets_completed_keys_past_the_retention_only() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let done = delivery(&awkward_body("evt_done")).await;
    let waiting = delivery(&awkward_body("evt_waiting")).await;
    store
        .insert(key_of(&done), done.clone(), 1_000)
        .await
        .unwrap();
    let claimed = store.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert!(store.complete(claimed[0].lease()).await.unwrap());
    store
        .insert(key_of(&waiting), waiting.clone(), 1_000)
        .await
        .unwrap();

    assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge(Duration::from_millis(10)).await.unwrap(), 1);
    assert_eq!(
        store.insert(key_of(&done), done, 1_000).await.unwrap(),
        Inserted::Stored,
        "forgotten, so stored again"
    );
    assert_eq!(
        store
            .insert(key_of(&waiting), waiting, 1_000)
            .await
            .unwrap(),
        Inserted::Duplicate,
        "a waiting event is never purged"
    );
}

/// More expired keys than one statement of the purge takes: it goes on batch after batch,
/// and forgets no dead letter and no waiting event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_forgets_every_expired_key_in_batches_and_nothing_else() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let db = inspect(&url).await;
    // 2,500 keys completed an hour ago (a statement takes 1,000), a dead letter older than
    // all of them, and a key completed a minute ago.
    db.batch_execute(
        "INSERT INTO openmail_events (key, state, finished_at)
         SELECT decode(md5(i::text) || md5('x' || i::text), 'hex'), 1,
             now() - interval '1 hour' + i * interval '1 millisecond'
         FROM generate_series(1, 2500) AS i;
         INSERT INTO openmail_events (key, state, finished_at, attempts, error)
         VALUES (decode(repeat('ab', 32), 'hex'), 2, now() - interval '2 hours', 8, 'gave up');
         INSERT INTO openmail_events (key, state, finished_at)
         VALUES (decode(repeat('cd', 32), 'hex'), 1, now() - interval '1 minute');",
    )
    .await
    .unwrap();
    let waiting = delivery(&awkward_body("evt_purge_waiting")).await;
    store
        .insert(key_of(&waiting), waiting.clone(), 10_000)
        .await
        .unwrap();

    assert_eq!(store.purge(Duration::from_secs(600)).await.unwrap(), 2_500);
    let left: Vec<(i16, i64)> = db
        .query(
            "SELECT state, count(*) FROM openmail_events GROUP BY state ORDER BY state",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(left, [(0, 1), (1, 1), (2, 1)]);
    assert_eq!(store.stats().await.unwrap().dead_letters, 1);
}

/// An operator's questions do not wait behind the workers' statements: a completion that
/// waits for a row lock holds up the connection the workers share, and the statistics and
/// the dead letters still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_questions_do_not_wait_behind_the_workers_statements() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = Arc::new(replica(&url).await);
    let event = delivery(&awkward_body("evt_held_completion")).await;
    let key = key_of(&event);
    assert_eq!(
        store.insert(key, event, 10_000).await.unwrap(),
        Inserted::Stored
    );
    let claimed = store.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let lease = claimed[0].lease();

    // The operator's connection opens at the first question.
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.in_flight), (0, 1));

    // Another session locks the event's row: the completion waits for it, on the
    // workers' connection, for at most the store's 5 s.
    let mut locker = inspect(&url).await;
    let lock = locker.transaction().await.unwrap();
    let locker_pid = backend_pid(&lock).await;
    lock.execute(
        "SELECT 1 FROM openmail_events WHERE key = $1 FOR UPDATE",
        &[&&key[..]],
    )
    .await
    .unwrap();
    let mut completing = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.complete(lease).await }
    });
    let db = inspect(&url).await;
    while blocked_by(&db, locker_pid).await == 0 {
        assert!(
            !completing.is_finished(),
            "the completion never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Behind the completion, these would answer only once it ended: when the lock is let
    // go below, or when the store gave up on it (an error, after 5 s).
    let questions = async { (store.stats().await, store.dead_letters(10).await) };
    let (stats, letters) = tokio::select! {
        biased;
        answered = questions => answered,
        ended = &mut completing => {
            panic!("the questions waited behind the workers' statement, which ended: {ended:?}")
        }
    };
    let stats = stats.unwrap();
    assert_eq!((stats.waiting, stats.in_flight), (0, 1));
    assert!(letters.unwrap().is_empty());
    assert!(
        !completing.is_finished(),
        "the completion ended before the lock was let go"
    );

    lock.rollback().await.unwrap();
    assert!(completing.await.unwrap().unwrap());
    assert_eq!(store.stats().await.unwrap().depth(), 0);
}

/// A question the store gave up on (after its 5 s) does not go on in the server: an
/// operator who asks again while the database is slow does not pile up counts there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_the_store_gave_up_on_ends_in_the_server_too() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = Arc::new(replica(&url).await);
    assert_eq!(store.stats().await.unwrap().depth(), 0);

    // Another session holds the table: the count waits for it, until the store gives up
    // on it after its 5 s.
    let mut locker = inspect(&url).await;
    let lock = locker.transaction().await.unwrap();
    let locker_pid = backend_pid(&lock).await;
    lock.batch_execute("LOCK TABLE openmail_events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let asking = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.stats().await }
    });
    let db = inspect(&url).await;
    while blocked_by(&db, locker_pid).await == 0 {
        assert!(!asking.is_finished(), "the count never waited for the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcome = asking.await.unwrap();
    assert!(
        matches!(outcome, Err(QueueError::Unavailable(_))),
        "{outcome:?}"
    );

    // The server ended the count too: nothing waits for the lock any more, while the
    // lock is still held.
    let started = Instant::now();
    while blocked_by(&db, locker_pid).await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the abandoned count still waits in the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock.rollback().await.unwrap();
    assert_eq!(store.stats().await.unwrap().depth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_claiming_at_once_never_get_the_same_event() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    const EVENTS: usize = 300;
    let replicas = [Arc::new(replica(&url).await), Arc::new(replica(&url).await)];
    for n in 0..EVENTS {
        let event = delivery(&format!(
            r#"{{"event":"message.received","event_id":"evt_{n}","inbox_id":"inb_1"}}"#
        ))
        .await;
        let inserted = replicas[n % 2]
            .insert(key_of(&event), event, 10_000)
            .await
            .unwrap();
        assert_eq!(inserted, Inserted::Stored);
    }

    // Four workers per replica, each claiming a few at a time and completing them, all
    // starting together.
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut workers = Vec::new();
    for (replica_index, store) in replicas.iter().enumerate() {
        for _ in 0..4 {
            let (store, start) = (Arc::clone(store), Arc::clone(&start));
            workers.push(tokio::spawn(async move {
                start.wait().await;
                let mut seen = Vec::new();
                loop {
                    let claimed = store.claim(3, LEASE, MAX_ATTEMPTS).await.unwrap();
                    if claimed.is_empty() {
                        return seen;
                    }
                    for claim in claimed {
                        assert!(store.complete(claim.lease()).await.unwrap());
                        seen.push((replica_index, *claim.lease().key()));
                    }
                }
            }));
        }
    }
    let mut claims: HashMap<[u8; 32], usize> = HashMap::new();
    let mut per_replica = [0usize; 2];
    for worker in workers {
        for (replica_index, key) in worker.await.unwrap() {
            *claims.entry(key).or_default() += 1;
            per_replica[replica_index] += 1;
        }
    }
    assert_eq!(claims.len(), EVENTS, "every event was claimed");
    assert!(
        claims.values().all(|&count| count == 1),
        "no event was claimed twice"
    );
    assert!(
        per_replica.iter().all(|&count| count > 0),
        "both replicas claimed: {per_replica:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_creating_the_schema_at_the_same_moment_all_succeed() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let connects = (0..6).map(|_| PostgresStore::connect(&url, Durability::ProcessCrash));
    let stores = futures_util::future::join_all(connects).await;
    for store in &stores {
        assert!(store.is_ok(), "{store:?}");
    }
    let sql = inspect(&url).await;
    let version: i64 = sql
        .query_one(
            "SELECT version FROM openmail_schema WHERE component = 'events'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
    let rows = sql
        .query("SELECT count(*) FROM openmail_schema", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_a_newer_version_is_refused() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    drop(replica(&url).await);
    let sql = inspect(&url).await;
    sql.execute("UPDATE openmail_schema SET version = 3", &[])
        .await
        .unwrap();
    let error = PostgresStore::connect(&url, Durability::ProcessCrash)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            QueueError::Schema {
                found: 3,
                supported: 2
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_names_the_database_and_never_the_password() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let config: tokio_postgres::Config = url.parse().unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else {
        panic!("a TCP host");
    };
    let database = config.get_dbname().unwrap();
    // The servers the tests start trust loopback connections, so any password connects;
    // a server of the user's own gets the password its URL has.
    let password = config
        .get_password()
        .map_or("hunter2_not_shown".to_owned(), |password| {
            String::from_utf8(password.to_vec()).unwrap()
        });
    let with_password = format!(
        "host={host} port={} user={} password={password} dbname={database}",
        config.get_ports()[0],
        config.get_user().unwrap(),
    );
    let store = replica(&with_password).await;
    let debug = format!("{store:?}");
    assert!(debug.contains(database), "{debug}");
    assert!(!debug.contains(&password), "{debug}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_share_transactions() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    const INSERTS: usize = 64;
    let store = Arc::new(replica(&url).await);
    let mut events = Vec::new();
    for n in 0..INSERTS {
        events.push(delivery(&awkward_body(&format!("evt_group_{n}"))).await);
    }
    let inserts = events.into_iter().map(|event| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.insert(key_of(&event), event, 10_000).await })
    });
    for insert in futures_util::future::join_all(inserts).await {
        assert_eq!(insert.unwrap().unwrap(), Inserted::Stored);
    }
    // Each row's `xmin` is the transaction that inserted it: one per commit.
    let sql = inspect(&url).await;
    let row = sql
        .query_one(
            "SELECT count(*), count(DISTINCT xmin::text) FROM openmail_events",
            &[],
        )
        .await
        .unwrap();
    let (rows, transactions): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(rows, INSERTS as i64);
    assert!(
        transactions <= INSERTS as i64 / 2,
        "{INSERTS} concurrent inserts took {transactions} commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_the_next_claim_are_one_statement_and_one_commit() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    const EVENTS: usize = 12;
    let store = replica(&url).await;
    for n in 0..EVENTS {
        let event = delivery(&awkward_body(&format!("evt_settle_{n}"))).await;
        store.insert(key_of(&event), event, 10_000).await.unwrap();
    }
    let (recorded, first, _) = store
        .complete_and_claim(Vec::new(), 8, LEASE, MAX_ATTEMPTS)
        .await
        .unwrap();
    assert!(recorded.is_empty());
    assert_eq!(first.len(), 8, "one call claims for every free slot");
    assert!(first.iter().all(|claim| claim.attempt() == 1));

    // Eight completions (one of them completed before, which counts as recorded: nothing
    // is left for the workers to remember) and a claim of the rest, together.
    let completed: Vec<_> = first.iter().map(|claim| claim.lease()).collect();
    assert!(
        store.complete(completed[7]).await.unwrap(),
        "completed alone first"
    );
    let (recorded, rest, _) = store
        .complete_and_claim(completed.clone(), 8, LEASE, MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(recorded, [true; 8]);
    assert_eq!(rest.len(), EVENTS - 8);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.in_flight), (0, (EVENTS - 8) as u64));

    // Each row's `xmin` is the transaction that last wrote it: the seven completions and
    // the four claims are one commit.
    let sql = inspect(&url).await;
    let mut written: Vec<Vec<u8>> = completed[..7]
        .iter()
        .map(|lease| lease.key().to_vec())
        .collect();
    written.extend(rest.iter().map(|claim| claim.lease().key().to_vec()));
    let row = sql
        .query_one(
            "SELECT count(*), count(DISTINCT xmin::text) FROM openmail_events \
             WHERE key = ANY($1::bytea[])",
            &[&written],
        )
        .await
        .unwrap();
    let (rows, transactions): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((rows, transactions), (11, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_lease_just_expired_is_recorded_and_not_claimed_again() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let event = delivery(&awkward_body("evt_settle_expired")).await;
    store.insert(key_of(&event), event, 1_000).await.unwrap();
    let claimed = store
        .claim(1, Duration::from_millis(100), MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // Its lease ended, nobody claimed it since: it is due, and still this holder's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (recorded, again, _) = store
        .complete_and_claim(vec![claimed[0].lease()], 8, LEASE, MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(recorded, [true]);
    assert!(
        again.is_empty(),
        "claimed the event it completed: {again:?}"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.in_flight), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grouped_claim_returns_the_events_it_dead_lettered() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let body = awkward_body("evt_crashes_grouped");
    let event = delivery(&body).await;
    let key = key_of(&event);
    store.insert(key, event, 1_000).await.unwrap();
    // Two attempts, each holder dying with its lease.
    for attempt in 1..=2 {
        let (_, claimed, dead) = store
            .complete_and_claim(Vec::new(), 1, Duration::from_millis(1), 2)
            .await
            .unwrap();
        assert_eq!(claimed[0].attempt(), attempt);
        assert!(dead.is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, claimed, dead) = store
        .complete_and_claim(Vec::new(), 1, LEASE, 2)
        .await
        .unwrap();
    assert!(claimed.is_empty());
    assert_eq!(dead.len(), 1, "the dead letter was not returned");
    assert_eq!(dead[0].key(), &key);
    assert_eq!(dead[0].attempts(), 2);
    assert_eq!(
        dead[0].error(),
        "attempt 2 of 2 never finished: its process stopped or lost the lease"
    );
    assert_eq!(dead[0].delivery().body().as_ref(), body.as_bytes());
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
}

/// The documented pattern of completing in the handler's own transaction: the workers'
/// grouped completion that follows finds the event completed, and says so (`true`), so
/// that the workers need not remember its key (they would, forever, one key per event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_the_handler_committed_itself_counts_as_recorded() {
    let Some(url) = postgres_support::database("a PostgreSQL store test").await else {
        return;
    };
    let store = replica(&url).await;
    let event = delivery(&awkward_body("evt_completed_by_handler")).await;
    store.insert(key_of(&event), event, 1_000).await.unwrap();
    let claimed = store.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let lease = claimed[0].lease();
    // docs/durable.md, "Completing in your own transaction".
    let changed = inspect(&url)
        .await
        .execute(
            "UPDATE openmail_events
             SET state = 1, leased = false, finished_at = now(), body = NULL, channel = NULL,
                 scope_inbox = NULL, timestamp = NULL, secret_index = NULL,
                 event_id_header = NULL, error = NULL
             WHERE key = $1 AND token = $2 AND state + 0 = 0 AND leased",
            &[&&lease.key()[..], &lease.token()],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let (recorded, claimed, _) = store
        .complete_and_claim(vec![lease], 8, LEASE, MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(
        recorded,
        [true],
        "an event completed before was not reported"
    );
    assert!(claimed.is_empty());
    // A lease another claim took over, of an event still waiting, stays unrecorded.
    let event = delivery(&awkward_body("evt_taken_over")).await;
    store.insert(key_of(&event), event, 1_000).await.unwrap();
    let first = store
        .claim(1, Duration::from_millis(1), MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = store.claim(1, LEASE, MAX_ATTEMPTS).await.unwrap();
    assert_eq!(second.len(), 1);
    let (recorded, _, _) = store
        .complete_and_claim(vec![first[0].lease()], 0, LEASE, MAX_ATTEMPTS)
        .await
        .unwrap();
    assert_eq!(recorded, [false]);
}
