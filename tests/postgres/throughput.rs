//! A measurement, not a check (ignored by default): acknowledged deliveries per second and
//! acknowledgement latency over real HTTP/1.1, the inline layer against `Ingest` on the
//! PostgreSQL store with 100,000 events waiting, for both durabilities, in one run.
//!
//! `synchronous_commit` only matters on a server that flushes, so point it at one
//! (the servers the tests start run with `fsync=off`):
//!
//! ```text
//! OPENMAIL_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo test --release --features postgres --test postgres throughput -- --ignored --nocapture
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
use openmail_webhooks::queue::{Durability, Ingest, PostgresStore};
use openmail_webhooks::{VerifyOpenMailLayer, sign};

use crate::postgres_support;
use crate::store::{SECRET, inspect};

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

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: cargo test --release --features postgres --test postgres throughput -- --ignored --nocapture"]
async fn throughput_inline_and_postgres_with_100k_events_waiting() {
    let Some(url) = postgres_support::database("the PostgreSQL throughput measurement").await
    else {
        return;
    };
    let layer = || VerifyOpenMailLayer::new(SECRET).unwrap();
    let inline = serve(
        Router::new()
            .route("/webhooks", post(|| async { "ok" }))
            .layer(layer()),
    )
    .await;
    let crash_store = Arc::new(
        PostgresStore::connect(&url, Durability::ProcessCrash)
            .await
            .unwrap(),
    );
    let power_store = Arc::new(
        PostgresStore::connect(&url, Durability::PowerLoss)
            .await
            .unwrap(),
    );
    let sql = inspect(&url).await;
    sql.execute(
        "INSERT INTO openmail_events (key, channel, timestamp, secret_index, body) \
         SELECT sha256(('fill ' || i)::bytea), 0, 0, 0, convert_to(repeat('x', 700), 'UTF8') \
         FROM generate_series(1, $1::int8) AS i",
        &[&WAITING],
    )
    .await
    .unwrap();
    sql.batch_execute("VACUUM ANALYZE openmail_events")
        .await
        .unwrap();
    let process_crash = serve(
        Router::new()
            .route_service("/webhooks", Ingest::new(crash_store))
            .layer(layer()),
    )
    .await;
    let power_loss = serve(
        Router::new()
            .route_service("/webhooks", Ingest::new(power_store))
            .layer(layer()),
    )
    .await;

    for round in 1..=2 {
        let (inline_rate, inline_median, inline_p99) =
            load(inline, &format!("inline{round}")).await;
        println!(
            "round {round}: inline: {inline_rate:.0}/s, median {inline_median:?}, p99 {inline_p99:?}"
        );
        for (name, address) in [("ProcessCrash", process_crash), ("PowerLoss", power_loss)] {
            let (rate, median, p99) = load(address, &format!("{name}{round}")).await;
            println!(
                "round {round}: postgres {name}: {rate:.0}/s ({:.2} x inline), median {median:?}, p99 {p99:?}",
                rate / inline_rate
            );
        }
    }
}
