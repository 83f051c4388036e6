//! What choosing the secret per delivery costs, on top of the verification itself: a static
//! secret, a map of 1,000 inboxes, and an async resolver behind the cache (hits) and without
//! it. Every request is a genuine 1 KiB `message.received` delivery through the whole layer.
//!
//! And what refusing a forgery of 4 MiB costs, naming a configured inbox and an unknown
//! one: the times should agree, since both run the same 4 MACs (the tests count them;
//! this measures them).
//!
//! `cargo bench --bench tenants`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::tenant::TenantSecrets;
use openmail_webhooks::tenant::{CachedResolver, InboxSecrets, SecretResolver, Tenant};
use openmail_webhooks::{VerifyOpenMailLayer, sign};
use tower::{Layer, Service, ServiceExt};

/// What a resolver's `lookup` returns.
type ResolveFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Option<openmail_webhooks::tenant::TenantSecrets>, tower::BoxError>,
            > + Send,
    >,
>;

const NOW: i64 = 1_790_000_000;

/// A valid `message.received` body of exactly 1 KiB.
fn body(inbox: &str) -> Bytes {
    let frame = |padding: &str| {
        format!(
            r#"{{"event":"message.received","event_id":"evt_1","inbox_id":"{inbox}","message":{{"body_text":"{padding}"}}}}"#
        )
    };
    let padding = "x".repeat(1024usize.saturating_sub(frame("").len()));
    Bytes::from(frame(&padding))
}

fn request(secret: &str, body: &Bytes) -> Request<Full<Bytes>> {
    Request::post("/webhooks")
        .header("x-timestamp", NOW.to_string())
        .header("x-signature", sign(secret, NOW.to_string(), body))
        .header("content-length", body.len())
        .body(Full::new(body.clone()))
        .unwrap()
}

async fn ok(_: Request<VerifiedBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::default()))
}

/// Stands in for a database: the answer is computed, after one trip through the scheduler.
struct AsyncLookup;

impl SecretResolver for AsyncLookup {
    fn lookup(&self, tenant: &Tenant) -> ResolveFuture {
        let tenant = tenant.clone();
        Box::pin(async move {
            tokio::task::yield_now().await;
            match tenant {
                Tenant::Inbox(inbox) => Ok(Some(TenantSecrets::for_inbox(
                    inbox.clone(),
                    [format!("whsec_{inbox}")],
                )?)),
                _ => Ok(None),
            }
        })
    }
}

fn tenants(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Parsing is off: this measures the secret choice, not the event model.
    let mut map = InboxSecrets::new();
    for index in 0..1_000 {
        map = map
            .inbox(format!("inb_{index}"), [format!("whsec_inb_{index}")])
            .unwrap();
    }
    let body = body("inb_500");
    let layers = [
        (
            "static secret",
            VerifyOpenMailLayer::new("whsec_inb_500").unwrap(),
        ),
        (
            "map of 1,000 inboxes",
            VerifyOpenMailLayer::with_resolver(map),
        ),
        (
            "async resolver, cached",
            VerifyOpenMailLayer::with_resolver(CachedResolver::new(AsyncLookup)),
        ),
        (
            "async resolver, uncached",
            VerifyOpenMailLayer::with_resolver(AsyncLookup),
        ),
    ];
    let mut group = c.benchmark_group("secret choice per 1 KiB delivery");
    group.measurement_time(Duration::from_secs(3));
    for (name, layer) in layers {
        let service = layer
            .clock(|| NOW)
            .parse_events(false)
            .layer(tower::service_fn(ok));
        // Warm the cache and check the setup before measuring.
        let status = runtime
            .block_on(service.clone().oneshot(request("whsec_inb_500", &body)))
            .unwrap()
            .status();
        assert!(status.is_success(), "{name}: {status}");
        group.bench_function(name, |b| {
            b.iter_batched(
                || request("whsec_inb_500", &body),
                |request| {
                    let mut service = service.clone();
                    runtime.block_on(async move { black_box(service.call(request).await.unwrap()) })
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// Refusals of a forged 4 MiB delivery, for a configured inbox (its own secret and the
/// account's) and for an unknown one, with fixed secrets and behind a warm cache.
fn refusals(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let secrets = || {
        InboxSecrets::new()
            .inbox("inb_known", ["whsec_known"])
            .unwrap()
            .account(["whsec_account"])
            .unwrap()
    };
    let layers = [
        (
            "fixed secrets",
            VerifyOpenMailLayer::with_resolver(secrets()),
        ),
        (
            "cached",
            VerifyOpenMailLayer::with_resolver(CachedResolver::new(secrets())),
        ),
    ];
    let forged = |inbox: &str| {
        let pad = "a".repeat(4 * 1024 * 1024 - 1024);
        Bytes::from(format!(
            r#"{{"event":"message.received","event_id":"evt_1","inbox_id":"{inbox}","pad":"{pad}"}}"#
        ))
    };
    let bodies = [
        ("known inbox", forged("inb_known")),
        ("unknown inbox", forged("inb_nobody")),
    ];
    let mut group = c.benchmark_group("refusal of a forged 4 MiB delivery");
    group.measurement_time(Duration::from_secs(5));
    for (layer_name, layer) in layers {
        let service = layer
            .clock(|| NOW)
            .parse_events(false)
            .layer(tower::service_fn(ok));
        for (inbox_name, body) in &bodies {
            // Warm the cache, and check the setup.
            let status = runtime
                .block_on(service.clone().oneshot(request("whsec_attacker", body)))
                .unwrap()
                .status();
            assert_eq!(status, http::StatusCode::BAD_REQUEST, "{layer_name}");
            group.bench_function(format!("{layer_name}, {inbox_name}"), |b| {
                b.iter_batched(
                    || request("whsec_attacker", body),
                    |request| {
                        let mut service = service.clone();
                        runtime.block_on(
                            async move { black_box(service.call(request).await.unwrap()) },
                        )
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, tenants, refusals);
criterion_main!(benches);
