//! A poison event, whose handler aborts the process, in a crash loop of real processes on
//! one SQLite file: it ends in the dead letters, and the events prefetched beside it, which
//! never started, keep their attempts and are handled once it is gone.
//!
//! The processes are this test binary itself, run again with `OPENMAIL_POISON_STORE` set:
//! the child test then runs `Workers` on the store until nothing waits, and its handler
//! aborts the process on the poison event.
//!
//! `cargo test --features sqlite,test-util --test queue_poison`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{Extension, Router, routing::post};
use http::StatusCode;
use openmail_webhooks::queue::{Durability, EventStore, Ingest, SqliteStore, Workers};
use openmail_webhooks::test_util::Sample;
use openmail_webhooks::{Delivery, VerifyOpenMailLayer};

const SECRET: &str = "whsec_poison_test";
const POISON: &str = "evt_poison";
const NEIGHBOURS: usize = 16;
const MAX_ATTEMPTS: u32 = 8;
const CHILD: &str = "OPENMAIL_POISON_STORE";

fn open(path: &Path) -> SqliteStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SqliteStore::open(path, Durability::ProcessCrash) {
            Ok(store) => return store,
            Err(error) => {
                assert!(Instant::now() < deadline, "{error}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

async fn stored(store: &Arc<SqliteStore>, id: &str) {
    let app = Router::new()
        .route_service("/webhooks", Ingest::new(Arc::clone(store)))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    let request = Sample::message_received()
        .event_id(id)
        .deliver(SECRET)
        .request();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// The child process: one slot and a prefetch of every neighbour, so that the poison
/// event, first in due order, takes the slot and the neighbours wait in the prefetch
/// when it aborts the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_runs_workers_whose_handler_aborts_on_the_poison_event() {
    let Some(path) = std::env::var_os(CHILD) else {
        return;
    };
    let store = Arc::new(open(Path::new(&path)));
    let handler = Router::new().route(
        "/webhooks",
        post(|Extension(delivery): Extension<Delivery>| async move {
            if delivery.event_id() == Some(POISON) {
                std::process::abort();
            }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let workers = tokio::spawn(
        Workers::new(Arc::clone(&store), handler)
            .concurrency(1)
            .prefetch(NEIGHBOURS)
            .max_attempts(MAX_ATTEMPTS)
            .run(async {
                let _ = stopped.await;
            }),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.stats().await.unwrap().depth() > 0 {
        assert!(
            Instant::now() < deadline,
            "the workers did not drain the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    workers.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_ends_in_the_dead_letters_and_its_prefetched_neighbours_keep_their_attempts()
{
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("openmail-poison-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.db");
    {
        let store = Arc::new(open(&path));
        // The poison event first, due before its neighbours.
        stored(&store, POISON).await;
        for neighbour in 0..NEIGHBOURS {
            stored(&store, &format!("evt_neighbour_{neighbour}")).await;
        }
    }

    let mut crashes = 0;
    loop {
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_runs_workers_whose_handler_aborts_on_the_poison_event",
                "--test-threads=1",
                "--quiet",
            ])
            .env(CHILD, &path)
            .status()
            .unwrap();
        if status.success() {
            break;
        }
        crashes += 1;
        assert!(
            crashes <= MAX_ATTEMPTS,
            "the poison event still ran after {crashes} crashes"
        );
    }
    assert_eq!(crashes, MAX_ATTEMPTS, "one crash per counted attempt");

    let store = open(&path);
    let dead = store.dead_letters(100).await.unwrap();
    assert_eq!(dead.len(), 1, "only the poison event is a dead letter");
    assert_eq!(dead[0].delivery().event_id(), Some(POISON));
    assert_eq!(dead[0].attempts(), MAX_ATTEMPTS);
    drop(store);
    std::thread::sleep(Duration::from_millis(200));
    let db = rusqlite::Connection::open(&path).unwrap();
    let completed: Vec<(i64, i64)> = db
        .prepare("SELECT state, attempts FROM openmail_events WHERE state <> 2")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(completed.len(), NEIGHBOURS);
    assert!(
        completed
            .iter()
            .all(|&(state, attempts)| state == 1 && attempts == 1),
        "every neighbour completed at its first counted attempt: {completed:?}"
    );
}
