//! The durable queue in one process: `Ingest` behind the verification layer over real
//! HTTP, `Workers` with handlers that fail, panic and hang, and the SQLite store's
//! guarantees (one process per file, mode 0600, bodies deleted on completion).
//! The crash test with real processes is `tests/queue_crash.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{Extension, Router, routing::post};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::queue::{
    Backend, Claimed, DeadLetter, Durability, EventStore, Ingest, Inserted, Lease, QueueError,
    QueueStats, SqliteStore, WorkerAttempt, Workers,
};
use openmail_webhooks::test_util::Sample;
use openmail_webhooks::{Channel, Delivery, Event, VerifyOpenMailLayer};
use tokio::sync::{mpsc, watch};

#[path = "../queue_attack_support/files.rs"]
mod files;
mod grouping;
mod keys;
mod log;
#[path = "../webhooks/logs.rs"]
mod logs;
mod refund;
mod running;
mod throughput;

const SECRET: &str = "whsec_queue_test";

/// A fresh directory for one test's store.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("openmail-queue-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn open(dir: &Path) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap())
}

/// Serves `Ingest` behind the verification layer on a loopback port.
async fn serve<S: EventStore>(ingest: Ingest<S>) -> SocketAddr {
    let app = Router::new()
        .route_service("/webhooks", ingest)
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn deliver(addr: SocketAddr, body: &str) -> (StatusCode, Option<String>, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let request = Request::post(format!("http://{addr}/webhooks"))
        .header("content-type", "application/json")
        .header("x-timestamp", &timestamp)
        .header("x-event-id", "evt_header")
        .header(
            "x-signature",
            openmail_webhooks::sign(SECRET, &timestamp, body.as_bytes()),
        )
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn event(id: &str) -> String {
    Sample::message_received().event_id(id).to_json()
}

async fn stats(store: &impl EventStore) -> QueueStats {
    store.stats().await.unwrap()
}

#[tokio::test]
async fn a_duplicate_gets_200_and_is_not_stored_twice() {
    let dir = scratch("duplicate");
    let store = open(&dir);
    let addr = serve(Ingest::new(Arc::clone(&store))).await;
    let body = event("evt_dup");
    let copies: Vec<_> = (0..6)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move { deliver(addr, &body).await })
        })
        .collect();
    let mut duplicates = 0;
    for copy in copies {
        let (status, _, answer) = copy.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(answer.contains(r#""event_id":"evt_dup""#), "{answer}");
        assert!(answer.contains(r#""event":"message.received""#), "{answer}");
        duplicates += usize::from(answer.contains(r#""duplicate":true"#));
    }
    assert_eq!(
        duplicates, 5,
        "one copy stored, five acknowledged as duplicates"
    );
    assert_eq!(stats(&*store).await.waiting, 1);
}

#[tokio::test]
async fn over_the_depth_limit_a_new_event_gets_503_with_retry_after() {
    let dir = scratch("depth");
    let store = open(&dir);
    let ingest = Ingest::new(Arc::clone(&store))
        .depth_limit(2)
        .retry_after(Duration::from_secs(7));
    let addr = serve(ingest).await;
    assert_eq!(deliver(addr, &event("evt_d1")).await.0, StatusCode::OK);
    assert_eq!(deliver(addr, &event("evt_d2")).await.0, StatusCode::OK);
    let (status, retry_after, _) = deliver(addr, &event("evt_d3")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("7"));
    // A copy of a stored event is still a duplicate, not "full".
    let (status, _, answer) = deliver(addr, &event("evt_d1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(answer.contains(r#""duplicate":true"#));
    assert_eq!(stats(&*store).await.depth(), 2);
}

/// A store whose every call fails, as one whose database is gone.
struct Unreachable;

fn down<T>() -> Result<T, QueueError> {
    Err(QueueError::Unavailable("connection refused".into()))
}

impl Backend for Unreachable {
    async fn insert(&self, _: [u8; 32], _: Delivery, _: u64) -> Result<Inserted, QueueError> {
        down()
    }
    async fn claim(&self, _: usize, _: Duration, _: u32) -> Result<Vec<Claimed>, QueueError> {
        down()
    }
    async fn renew(&self, _: Lease, _: Duration) -> Result<bool, QueueError> {
        down()
    }
    async fn complete(&self, _: Lease) -> Result<bool, QueueError> {
        down()
    }
    async fn fail(&self, _: Lease, _: Option<Duration>, _: String) -> Result<bool, QueueError> {
        down()
    }
    async fn release(&self, _: Lease) -> Result<bool, QueueError> {
        down()
    }
    async fn queue_stats(&self) -> Result<QueueStats, QueueError> {
        down()
    }
    async fn list_dead_letters(&self, _: usize) -> Result<Vec<DeadLetter>, QueueError> {
        down()
    }
    async fn requeue_dead_letter(&self, _: [u8; 32]) -> Result<bool, QueueError> {
        down()
    }
    async fn settle_dead_letter(&self, _: [u8; 32]) -> Result<bool, QueueError> {
        down()
    }
    async fn purge(&self, _: Duration) -> Result<u64, QueueError> {
        down()
    }
}

#[tokio::test]
async fn an_unreachable_store_gets_503_with_retry_after_and_reports_it() {
    let (errors, mut reported) = mpsc::unbounded_channel();
    let ingest = Ingest::new(Arc::new(Unreachable)).on_error(move |error| {
        let _ = errors.send(format!("{error}: {:?}", std::error::Error::source(error)));
    });
    let addr = serve(ingest).await;
    let (status, retry_after, _) = deliver(addr, &event("evt_down")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("30"));
    let error = reported.recv().await.unwrap();
    assert!(error.contains("connection refused"), "{error}");
}

#[tokio::test]
async fn a_forgery_is_refused_before_the_store() {
    let dir = scratch("forgery");
    let store = open(&dir);
    let app = Router::new()
        .route_service("/webhooks", Ingest::new(Arc::clone(&store)))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    let forged = Sample::message_received()
        .event_id("evt_forged")
        .deliver("whsec_wrong")
        .request();
    let response = tower::ServiceExt::oneshot(app, forged).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(stats(&*store).await, QueueStats::default());
}

/// What the handler saw of one run.
#[derive(Debug, Clone)]
struct Seen {
    event_id: String,
    attempt: u32,
    channel: Channel,
    timestamp: Option<i64>,
    header: Option<String>,
}

/// A handler that reports each run and then does what `behave` says for that attempt.
fn handler(seen: mpsc::UnboundedSender<Seen>, behave: fn(u32) -> Behaviour) -> Router {
    Router::new().route(
        "/webhooks",
        post(
            move |Extension(event): Extension<Arc<Event>>,
                  Extension(delivery): Extension<Delivery>,
                  Extension(attempt): Extension<WorkerAttempt>| async move {
                let _ = seen.send(Seen {
                    event_id: event.event_id().unwrap_or_default().to_owned(),
                    attempt: attempt.number(),
                    channel: delivery.channel(),
                    timestamp: delivery.timestamp(),
                    header: delivery.event_id_header().map(str::to_owned),
                });
                match behave(attempt.number()) {
                    Behaviour::Succeed => StatusCode::OK,
                    Behaviour::Fail => StatusCode::INTERNAL_SERVER_ERROR,
                    Behaviour::Panic => panic!("the handler panicked on purpose"),
                    Behaviour::Hang => {
                        std::future::pending::<()>().await;
                        StatusCode::OK
                    }
                }
            },
        ),
    )
}

enum Behaviour {
    Succeed,
    Fail,
    Panic,
    Hang,
}

/// Stores `id` through the verification layer and Ingest, in process, leaving no server
/// that holds the store: whether it was stored (false: `Ingest` answered it as a
/// duplicate).
async fn stored(store: &Arc<SqliteStore>, id: &str) -> bool {
    let app = Router::new()
        .route_service("/webhooks", Ingest::new(Arc::clone(store)))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    let request = Sample::message_received()
        .event_id(id)
        .deliver(SECRET)
        .request();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    body.get("duplicate").is_none()
}

fn start<H>(workers: Workers<SqliteStore, H>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>)
where
    H: tower::Service<
            Request<openmail_webhooks::body::VerifiedBody>,
            Response = axum::response::Response,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    H::Future: Send,
{
    let (stop, mut stopped) = watch::channel(false);
    let running = tokio::spawn(workers.run(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    (stop, running)
}

#[tokio::test]
async fn the_handler_gets_the_delivery_as_verified_and_completes_it_once() {
    let dir = scratch("handled");
    let store = open(&dir);
    stored(&store, "evt_once").await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let (stop, running) = start(Workers::new(
        Arc::clone(&store),
        handler(seen, |_| Behaviour::Succeed),
    ));
    let run = runs.recv().await.unwrap();
    assert_eq!(run.event_id, "evt_once");
    assert_eq!(run.attempt, 1);
    assert_eq!(run.channel, Channel::Webhook);
    assert!(run.timestamp.is_some());
    assert_eq!(run.header.as_deref(), Some("evt_once"), "X-Event-Id, kept");
    let mut done = stats(&*store).await;
    while done.depth() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = stats(&*store).await;
    }
    // A replay after completion is acknowledged and not run again.
    stored(&store, "evt_once").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(runs.try_recv().is_err(), "run twice without a crash");
    stop.send(true).unwrap();
    running.await.unwrap();
}

async fn retried_after(behave: fn(u32) -> Behaviour, name: &str) {
    let dir = scratch(name);
    let store = open(&dir);
    stored(&store, "evt_retry").await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let workers = Workers::new(Arc::clone(&store), handler(seen, behave))
        .backoff(Duration::from_millis(10))
        .attempt_timeout(Duration::from_millis(300));
    let (stop, running) = start(workers);
    assert_eq!(runs.recv().await.unwrap().attempt, 1);
    assert_eq!(runs.recv().await.unwrap().attempt, 2);
    let store_ = Arc::clone(&store);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(&*store_).await.depth() > 0 {
        assert!(Instant::now() < deadline, "the retry never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats(&*store).await.dead_letters, 0);
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_is_retried() {
    retried_after(
        |attempt| {
            if attempt == 1 {
                Behaviour::Panic
            } else {
                Behaviour::Succeed
            }
        },
        "panic",
    )
    .await;
}

#[tokio::test]
async fn a_hanging_handler_is_cancelled_at_its_time_limit_and_retried() {
    retried_after(
        |attempt| {
            if attempt == 1 {
                Behaviour::Hang
            } else {
                Behaviour::Succeed
            }
        },
        "hang",
    )
    .await;
}

#[tokio::test]
async fn after_the_last_attempt_the_event_is_a_dead_letter_kept_for_a_retry() {
    let dir = scratch("dead");
    let store = open(&dir);
    stored(&store, "evt_dead").await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let (dead, mut reported) = mpsc::unbounded_channel();
    let workers = Workers::new(Arc::clone(&store), handler(seen, |_| Behaviour::Fail))
        .backoff(Duration::from_millis(10))
        .max_attempts(3)
        .on_dead_letter(move |letter| {
            let _ = dead.send((letter.attempts(), letter.error().to_owned()));
        });
    let (stop, running) = start(workers);
    let (attempts, error) = reported.recv().await.unwrap();
    assert_eq!(attempts, 3);
    assert!(error.contains("500"), "{error}");
    let attempts: Vec<u32> = std::iter::from_fn(|| runs.try_recv().ok())
        .map(|run| run.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].delivery().event_id(), Some("evt_dead"));
    assert!(
        !letters[0].delivery().body().is_empty(),
        "kept with its body"
    );
    let current = stats(&*store).await;
    assert_eq!((current.dead_letters, current.depth()), (1, 0));
    // A manual retry runs it again, from attempt 1.
    assert!(store.retry_dead_letter(*letters[0].key()).await.unwrap());
    assert_eq!(runs.recv().await.unwrap().attempt, 1);
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn shutdown_releases_the_events_still_running_after_the_grace() {
    let dir = scratch("shutdown");
    let store = open(&dir);
    stored(&store, "evt_slow").await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let workers = Workers::new(Arc::clone(&store), handler(seen, |_| Behaviour::Hang))
        .shutdown_grace(Duration::from_millis(100));
    let (stop, running) = start(workers);
    assert_eq!(runs.recv().await.unwrap().attempt, 1);
    stop.send(true).unwrap();
    running.await.unwrap();
    let after = stats(&*store).await;
    assert_eq!((after.waiting, after.in_flight), (1, 0), "{after:?}");
    // The attempt was handed back uncounted: the next claim is attempt 1 again.
    let claimed = store.claim(8, Duration::from_secs(30), 8).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt(), 1);
}

#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_the_stale_holder_cannot_complete() {
    let dir = scratch("lease");
    let store = open(&dir);
    stored(&store, "evt_lease").await;
    let lease = Duration::from_millis(200);
    let first = store.claim(8, lease, 8).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(store.claim(8, lease, 8).await.unwrap().is_empty(), "leased");
    assert_eq!(stats(&*store).await.in_flight, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = store.claim(8, lease, 8).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt(), 2, "the attempt is counted at claim");
    assert!(
        !store.complete(first[0].lease()).await.unwrap(),
        "stale holder"
    );
    assert!(!store.renew(first[0].lease(), lease).await.unwrap());
    assert!(store.complete(second[0].lease()).await.unwrap());
}

#[tokio::test]
async fn an_event_whose_last_attempt_never_finished_becomes_a_dead_letter() {
    let dir = scratch("crashloop");
    let store = open(&dir);
    stored(&store, "evt_crashes").await;
    let lease = Duration::from_millis(100);
    for _ in 0..2 {
        assert_eq!(store.claim(8, lease, 2).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(store.claim(8, lease, 2).await.unwrap().is_empty());
    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts(), 2);
}

#[tokio::test]
async fn the_grouped_claim_returns_the_events_it_dead_lettered() {
    let dir = scratch("crashloop-grouped");
    let store = open(&dir);
    stored(&store, "evt_crashes").await;
    let lease = Duration::from_millis(100);
    for _ in 0..2 {
        let (_, claimed, dead) = store
            .complete_and_claim(Vec::new(), 8, lease, 2)
            .await
            .unwrap();
        assert_eq!((claimed.len(), dead.len()), (1, 0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, claimed, dead) = store
        .complete_and_claim(Vec::new(), 8, lease, 2)
        .await
        .unwrap();
    assert!(claimed.is_empty());
    assert_eq!(dead.len(), 1, "the dead letter was not returned");
    assert_eq!(dead[0].attempts(), 2);
    assert_eq!(
        dead[0].error(),
        "attempt 2 of 2 never finished: its process stopped or lost the lease"
    );
    assert_eq!(
        dead[0].delivery().event_id(),
        Some("evt_crashes"),
        "the dead letter carries its delivery"
    );
    assert_eq!(store.dead_letters(10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn completion_deletes_the_body_and_keeps_the_key_until_the_retention() {
    let dir = scratch("body");
    let store = open(&dir);
    stored(&store, "evt_private").await;
    let claimed = store.claim(8, Duration::from_secs(30), 8).await.unwrap();
    assert!(store.complete(claimed[0].lease()).await.unwrap());
    assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    drop(claimed);
    drop(store);
    // The store's thread closes the file once its last handle is gone.
    let path = dir.join("events.db");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (keys, bodies): (i64, i64) = loop {
        let read = rusqlite::Connection::open(&path).and_then(|db| {
            db.query_row(
                "SELECT count(*), count(body) FROM openmail_events",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        });
        match read {
            Ok(counts) => break counts,
            Err(error) => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!((keys, bodies), (1, 0));
    // Past the retention the key goes too, and a replay would be stored again. The first
    // store's threads let go of the file's lock once they closed it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match SqliteStore::open(&path, Durability::ProcessCrash) {
            Ok(store) => break Arc::new(store),
            Err(error) => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge(Duration::ZERO).await.unwrap(), 1);
    stored(&store, "evt_private").await;
    assert_eq!(stats(&*store).await.waiting, 1);
}

#[tokio::test]
async fn a_store_in_use_is_refused_at_open_and_the_file_is_private() {
    let dir = scratch("locked");
    let path = dir.join("events.db");
    let store = SqliteStore::open(&path, Durability::PowerLoss).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let error = SqliteStore::open(&path, Durability::ProcessCrash).unwrap_err();
    assert!(matches!(error, QueueError::Locked { .. }), "{error:?}");
    assert!(
        error.to_string().contains("in use by another process"),
        "{error}"
    );
    drop(store);
}

/// The store's own lock file refuses a second store on the same path; the lock on the
/// database file refuses one through another name of the file (a hard link) and while
/// another program holds `flock` on it; the first store works on after each refusal.
#[cfg(unix)]
#[tokio::test]
async fn a_store_is_refused_through_a_link_and_under_a_foreign_flock() {
    let dir = scratch("links");
    let path = dir.join("events.db");
    let store = SqliteStore::open(&path, Durability::ProcessCrash).unwrap();
    let own = dir.join("events.db-lock");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&own).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let link = dir.join("linked.db");
    std::fs::hard_link(&path, &link).unwrap();
    let error = SqliteStore::open(&link, Durability::ProcessCrash).unwrap_err();
    assert!(matches!(error, QueueError::Locked { .. }), "{error:?}");
    let store = Arc::new(store);
    stored(&store, "evt_after_link").await;
    assert_eq!(store.stats().await.unwrap().waiting, 1);
    drop(store);

    // Another program's `flock` on the database file.
    let other = dir.join("other.db");
    drop(SqliteStore::open(&other, Durability::ProcessCrash).unwrap());
    let held = std::fs::File::open(&other).unwrap();
    let mut refused = false;
    for _ in 0..100 {
        // The dropped store's threads release their locks shortly after the drop.
        if held.try_lock().is_ok() {
            let error = SqliteStore::open(&other, Durability::ProcessCrash).unwrap_err();
            assert!(matches!(error, QueueError::Locked { .. }), "{error:?}");
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the dropped store kept its lock");
    held.unlock().unwrap();
}

#[tokio::test]
async fn a_store_of_a_newer_schema_is_refused() {
    let dir = scratch("schema");
    let path = dir.join("events.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    let error = SqliteStore::open(&path, Durability::ProcessCrash).unwrap_err();
    assert!(
        matches!(
            error,
            QueueError::Schema {
                found: 99,
                supported: 4
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn concurrent_inserts_all_commit() {
    let dir = scratch("group");
    let store = open(&dir);
    let addr = serve(Ingest::new(Arc::clone(&store))).await;
    let sends: Vec<_> = (0..64)
        .map(|index| {
            tokio::spawn(async move { deliver(addr, &event(&format!("evt_g{index}"))).await.0 })
        })
        .collect();
    for send in sends {
        assert_eq!(send.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(stats(&*store).await.waiting, 64);
}

#[tokio::test]
async fn reopening_the_store_takes_back_the_leases_of_the_process_before() {
    let dir = scratch("reopen");
    let store = open(&dir);
    stored(&store, "evt_reopen").await;
    let lease = Duration::from_secs(3600);
    assert_eq!(store.claim(8, lease, 8).await.unwrap().len(), 1);
    drop(store);
    // As after a crash: the lease had an hour to run, and the new process takes it at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash) {
            Ok(store) => break store,
            Err(error) => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let claimed = store.claim(8, lease, 8).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt(), 2, "the crashed attempt stays counted");
}
