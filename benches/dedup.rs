//! The per-request cost of deduplication, by store, over a trivial inner service.
//!
//! Deduplication keys on the `Delivery` that only the verification layer makes, so every
//! case runs behind `VerifyOpenMailLayer` (a static secret, parsing off, a 100-byte body),
//! and `dedup/none` is that verification alone: subtract it to get deduplication's own
//! cost. `first` is a new event each time (reserve, call, mark done); `duplicate` is an
//! event already done (one lookup, no call). The Redis cases start a `redis-server` from
//! PATH on loopback and need `--features redis`:
//!
//! ```text
//! cargo bench --bench dedup --features redis
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::dedup::{DedupStore, DeduplicateLayer, MemoryStore};
use openmail_webhooks::{VerifyOpenMailLayer, sign};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};

#[cfg(feature = "redis")]
#[path = "../tests/dedup_support/redis_server.rs"]
#[allow(dead_code)] // the benchmarks need only start and stop
mod redis_server;

const SECRET: &str = "whsec_dedup_bench";

/// A delivery of `event_id`, signed now.
fn request(event_id: &str) -> Request<Full<Bytes>> {
    let body =
        format!(r#"{{"event":"message.received","event_id":"{event_id}","inbox_id":"inb_bench"}}"#);
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let signature = sign(SECRET, &timestamp, body.as_bytes());
    Request::post("/webhooks")
        .header("x-timestamp", timestamp)
        .header("x-signature", signature)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn verify() -> VerifyOpenMailLayer {
    VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .parse_events(false)
}

fn inner() -> impl Service<
    Request<VerifiedBody>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_request: Request<VerifiedBody>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    })
}

fn bench_store(c: &mut Criterion, runtime: &Runtime, name: &str, store: Arc<dyn DedupStore>) {
    let service = verify().layer(DeduplicateLayer::from_shared(store).layer(inner()));
    let mut group = c.benchmark_group("dedup");
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = format!("{:x}", std::process::id());

    group.bench_function(format!("{name}/first"), |b| {
        b.iter_batched(
            || {
                request(&format!(
                    "evt_{run}_{}",
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ))
            },
            |request| runtime.block_on(service.clone().oneshot(request)).unwrap(),
            BatchSize::SmallInput,
        )
    });

    let done = format!("evt_{run}_done");
    runtime
        .block_on(service.clone().oneshot(request(&done)))
        .unwrap();
    group.bench_function(format!("{name}/duplicate"), |b| {
        b.iter_batched(
            || request(&done),
            |request| runtime.block_on(service.clone().oneshot(request)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn dedup(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let service = verify().layer(inner());
    c.bench_function("dedup/none", |b| {
        b.iter_batched(
            || request("evt_baseline"),
            |request| {
                runtime
                    .block_on(service.clone().oneshot(black_box(request)))
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });

    bench_store(c, &runtime, "memory", Arc::new(MemoryStore::new()));

    #[cfg(feature = "redis")]
    if let Some(server) = redis_server::RedisServer::start("the Redis deduplication benchmarks") {
        let store = runtime
            .block_on(openmail_webhooks::dedup::RedisStore::connect(&server.url()))
            .unwrap();
        bench_store(c, &runtime, "redis", Arc::new(store));
        drop(server);
    }
    #[cfg(not(feature = "redis"))]
    eprintln!("the Redis deduplication benchmarks need `--features redis`");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = dedup
}
criterion_main!(benches);
