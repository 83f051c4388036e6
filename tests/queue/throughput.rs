//! A measurement, not a check (ignored by default): acknowledged deliveries per second and
//! acknowledgement latency over real HTTP/1.1, the inline layer against `Ingest` on the
//! SQLite store with 100,000 events waiting, for both durabilities, in one run.
//!
//! ```text
//! cargo test --release --test queue throughput -- --ignored --nocapture
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::queue::{Durability, EventStore, Ingest, SqliteStore};
use openmail_webhooks::{VerifyOpenMailLayer, sign};

use crate::{SECRET, scratch};

const SENDERS: usize = 32;
const ROUND: Duration = Duration::from_secs(4);
const WAITING: i64 = 100_000;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// Sends freshly signed, distinct deliveries from [`SENDERS`] connections for [`ROUND`];
/// returns the `200`s per second and the median and 99th percentile latency.
async fn load(address: SocketAddr, label: &str) -> (f64, Duration, Duration) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let stop = Arc::new(AtomicBool::new(false));
    let sequence = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (client, stop, sequence) = (client.clone(), Arc::clone(&stop), Arc::clone(&sequence));
        let label = label.to_owned();
        senders.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    r#"{{"event":"message.received","event_id":"evt_{label}_{n}","inbox_id":"inb_1","attempt":1,"data":{{"subject":"{}"}}}}"#,
                    "x".repeat(600)
                );
                let timestamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    .to_string();
                let signature = sign(SECRET, &timestamp, body.as_bytes());
                let request = Request::post(format!("http://{address}/webhooks"))
                    .header("content-type", "application/json")
                    .header("x-timestamp", timestamp)
                    .header("x-signature", signature)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let start = Instant::now();
                let response = client.request(request).await.unwrap();
                let status = response.status();
                let _ = response.into_body().collect().await;
                if status == StatusCode::OK {
                    latencies.push(start.elapsed());
                } else {
                    refused += 1;
                }
            }
            (latencies, refused)
        }));
    }
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut refused = 0;
    for sender in senders {
        let (mine, not_ok) = sender.await.unwrap();
        latencies.extend(mine);
        refused += not_ok;
    }
    assert_eq!(
        refused, 0,
        "{label}: {refused} deliveries were not acknowledged"
    );
    latencies.sort();
    let rate = latencies.len() as f64 / ROUND.as_secs_f64();
    let median = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    (rate, median, p99)
}

/// A store with [`WAITING`] events already waiting, filled by one bulk insert.
async fn filled(name: &str, durability: Durability) -> Arc<SqliteStore> {
    let dir = scratch(name);
    let path = dir.join("events.db");
    drop(SqliteStore::open(&path, durability).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let db = loop {
        match rusqlite::Connection::open(&path).and_then(|db| {
            db.execute_batch("BEGIN IMMEDIATE")?;
            Ok(db)
        }) {
            Ok(db) => break db,
            Err(error) => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO openmail_events (key, state, received_ms, due_ms, channel, timestamp,
             secret_index, body)
         SELECT randomblob(32), 0, 0, 9000000000000, 0, 0, 0, zeroblob(700) FROM n",
        [WAITING],
    )
    .unwrap();
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let store = loop {
        match SqliteStore::open(&path, durability) {
            Ok(store) => break store,
            Err(error) => {
                assert!(Instant::now() < deadline, "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(store.stats().await.unwrap().depth(), WAITING as u64);
    Arc::new(store)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: cargo test --release --test queue throughput -- --ignored --nocapture"]
async fn throughput_inline_and_sqlite_with_100k_events_waiting() {
    let layer = || VerifyOpenMailLayer::new(SECRET).unwrap();
    let inline = serve(
        Router::new()
            .route("/webhooks", post(|| async { "ok" }))
            .layer(layer()),
    )
    .await;
    let mut stores = Vec::new();
    for (name, durability) in [
        ("ProcessCrash", Durability::ProcessCrash),
        ("PowerLoss", Durability::PowerLoss),
    ] {
        let store = filled(&format!("throughput-{name}"), durability).await;
        let address = serve(
            Router::new()
                .route_service("/webhooks", Ingest::new(store))
                .layer(layer()),
        )
        .await;
        stores.push((name, address));
    }
    for round in 1..=2 {
        let (inline_rate, inline_median, inline_p99) =
            load(inline, &format!("inline{round}")).await;
        println!(
            "round {round}: inline: {inline_rate:.0}/s, median {inline_median:?}, p99 {inline_p99:?}"
        );
        for (name, address) in &stores {
            let (rate, median, p99) = load(*address, &format!("{name}{round}")).await;
            println!(
                "round {round}: sqlite {name}: {rate:.0}/s ({:.2} x inline), median {median:?}, p99 {p99:?}",
                rate / inline_rate
            );
        }
    }
}
