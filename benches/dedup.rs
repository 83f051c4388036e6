//! The per-request cost of deduplication, by store, over a trivial inner service.
//!
//! Each request carries the verified `Arc<Event>` as `VerifyOpenMailLayer` leaves it, so
//! these numbers add to the verification benchmarks'. `first` is a new event each time
//! (reserve, call, mark done); `duplicate` is an event already done (one lookup, no call).
//! The Redis cases start a `redis-server` from PATH on loopback and need `--features redis`:
//!
//! ```text
//! cargo bench --bench dedup --features redis
//! ```

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Request, Response};
use openmail_webhooks::dedup::{DedupStore, DeduplicateLayer, MemoryStore};
use openmail_webhooks::Event;
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};

#[cfg(feature = "redis")]
#[path = "../tests/dedup_support/redis_server.rs"]
mod redis_server;

fn request(event_id: &str) -> Request<()> {
    let body = format!(r#"{{"event":"message.received","event_id":"{event_id}"}}"#);
    let event = Event::parse(Bytes::from(body)).unwrap();
    let mut request = Request::new(());
    request.extensions_mut().insert(Arc::new(event));
    request
}

fn inner(
) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future = impl Send> + Clone
{
    service_fn(|_request: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) })
}

fn bench_store(c: &mut Criterion, runtime: &Runtime, name: &str, store: Arc<dyn DedupStore>) {
    let service = DeduplicateLayer::from_shared(store).layer(inner());
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

    let service = inner();
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
