//! Verification against the hardware limit and hand-written code.
//!
//! Every group is one body size; inside it, each function does the same job a different
//! way, so ratios within a group compare like with like in one run:
//!
//! - `limit`: raw HMAC-SHA256 from a pre-keyed state over `X-Timestamp.` plus the body;
//!   nothing can verify faster;
//! - `core`: [`Verifier::verify`], the pure check;
//! - `layer/{one_frame,frames_16k}/{no_parse,parse}`: the whole tower layer through
//!   `ServiceExt::oneshot` with a trivial inner service, the body in one frame or in 16 KiB
//!   frames as hyper delivers it, with and without the event parse;
//! - `by_hand`, `by_hand_parse`: the documentation's recipe ported literally;
//! - `harness`: the same request through `oneshot` to the trivial service without the
//!   layer, which is the part of every `layer/…` figure that any server pays anyway.
//!
//! The `refusal` group times what a forged 1 MiB stale request and an over-limit
//! `Content-Length` cost, and proves neither body is ever polled.
//!
//! Times are the benchmark thread's CPU time (see `support::ThreadCpuTime`), so other
//! processes on a shared machine disturb them less.
//!
//! The comparison with svix needs OpenSSL, so it is a workspace of its own:
//! `benches/compare/benches/svix.rs`, on the same bodies.
//!
//! `cargo bench --bench verify`; `python3 benches/report.py` tabulates the ratios and
//! draws the chart.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{KeyInit, Mac};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::{Verifier, VerifyOpenMailLayer, sign};
use std::hint::black_box;
use support::{
    FRAME, Frames, SECRET, SIZES, ThreadCpuTime, complete, label, now_timestamp, payload,
};
use tower::{Layer, Service, ServiceExt};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The documentation's recipe, ported literally: build the message with `format!`,
/// key a fresh HMAC, hex-encode it, compare the strings, check the window, then parse
/// the body into `serde_json::Value`.
fn by_hand(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    parse: bool,
) -> Result<Option<serde_json::Value>, &'static str> {
    let body = std::str::from_utf8(body).map_err(|_| "body is not UTF-8")?;
    let message = format!("{timestamp}.{body}");
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| "bad key")?;
    mac.update(message.as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    if expected != signature {
        return Err("invalid signature");
    }
    let sent: i64 = timestamp.parse().map_err(|_| "invalid timestamp")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "clock")?
        .as_secs() as i64;
    if (now - sent).abs() > 300 {
        return Err("stale timestamp");
    }
    if parse {
        serde_json::from_str(body)
            .map(Some)
            .map_err(|_| "invalid JSON")
    } else {
        Ok(None)
    }
}

fn trivial_inner() -> impl Service<
    Request<VerifiedBody>,
    Response = Response<Empty<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|request: Request<VerifiedBody>| async move {
        black_box(&request);
        Ok::<_, Infallible>(Response::new(Empty::new()))
    })
}

fn signed_request(
    timestamp: &str,
    signature: &str,
    length: usize,
    body: Frames,
) -> Request<Frames> {
    Request::post("/webhooks")
        .header("content-type", "application/json")
        .header("content-length", length)
        .header("x-timestamp", timestamp)
        .header("x-signature", signature)
        .header("x-event-id", "evt_7f3a9c21d4")
        .body(body)
        .expect("a valid request")
}

fn verification(c: &mut Criterion<ThreadCpuTime>) {
    let verifier = Verifier::new(SECRET).expect("a valid secret");
    let keyed = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("any key length");

    for size in SIZES {
        let body = Bytes::from(payload(size));
        // Fresh per size, so the replay window holds however long the run takes.
        let timestamp = now_timestamp();
        let signature = sign(SECRET, &timestamp, &body);

        let mut group = c.benchmark_group(format!("verify/{}", label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        if size >= 1024 * 1024 {
            group.sample_size(20);
        }

        group.bench_function("limit", |b| {
            b.iter(|| {
                let mut mac = keyed.clone();
                mac.update(black_box(timestamp.as_bytes()));
                mac.update(b".");
                mac.update(black_box(&body));
                mac.finalize().into_bytes()
            })
        });

        assert!(verifier.verify(&timestamp, &signature, &body).is_ok());
        group.bench_function("core", |b| {
            b.iter(|| {
                verifier
                    .verify(
                        black_box(&timestamp),
                        black_box(&signature),
                        black_box(&body),
                    )
                    .is_ok()
            })
        });

        // The harness alone: the same request through `oneshot` to a trivial service that
        // drops it, with no layer. What the layer adds is `layer - harness`.
        let bare = tower::service_fn(|request: Request<Frames>| async move {
            black_box(&request);
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
        group.bench_function("harness", |b| {
            b.iter_batched(
                || signed_request(&timestamp, &signature, size, Frames::one(&body)),
                |request| complete(bare.oneshot(request)),
                BatchSize::SmallInput,
            )
        });

        for parse in [false, true] {
            let service = VerifyOpenMailLayer::new(SECRET)
                .expect("a valid secret")
                .parse_events(parse)
                .layer(trivial_inner());
            for (framing, frame) in [("one_frame", usize::MAX), ("frames_16k", FRAME)] {
                let request = || {
                    let frames = if frame == usize::MAX {
                        Frames::one(&body)
                    } else {
                        Frames::split(&body, frame)
                    };
                    signed_request(&timestamp, &signature, size, frames)
                };
                let response = complete(service.clone().oneshot(request())).expect("infallible");
                assert_eq!(response.status(), StatusCode::OK, "{framing} parse={parse}");
                let parsing = if parse { "parse" } else { "no_parse" };
                group.bench_function(format!("layer/{framing}/{parsing}"), |b| {
                    b.iter_batched(
                        request,
                        |request| complete(service.clone().oneshot(request)),
                        BatchSize::SmallInput,
                    )
                });
            }
        }

        for parse in [false, true] {
            assert!(by_hand(SECRET, &timestamp, &signature, &body, parse).is_ok());
            let name = if parse { "by_hand_parse" } else { "by_hand" };
            group.bench_function(name, |b| {
                b.iter(|| {
                    by_hand(
                        SECRET,
                        black_box(&timestamp),
                        black_box(&signature),
                        black_box(&body),
                        parse,
                    )
                })
            });
        }

        group.finish();
    }
}

/// A forged, stale 1 MiB delivery and an over-limit `Content-Length` are refused from the
/// head alone. Every body counts its polls; the count must stay at zero. The bodies are one
/// frame each, so that the figure is the refusal and not the fixture's many frames being
/// dropped.
fn refusal(c: &mut Criterion<ThreadCpuTime>) {
    let service = VerifyOpenMailLayer::new(SECRET)
        .expect("a valid secret")
        .layer(trivial_inner());
    let mut group = c.benchmark_group("refusal");

    let stale_polls = Arc::new(AtomicUsize::new(0));
    let forged = Bytes::from(payload(1024 * 1024));
    let stale = (SystemTime::now() - Duration::from_secs(3600))
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        .to_string();
    let stale_request = || {
        signed_request(
            &stale,
            "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",
            forged.len(),
            Frames::one(&forged).counting(Arc::clone(&stale_polls)),
        )
    };
    let response = complete(service.clone().oneshot(stale_request())).expect("infallible");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    group.bench_function("stale_forged_1MiB", |b| {
        b.iter_batched(
            stale_request,
            |request| complete(service.clone().oneshot(request)),
            BatchSize::SmallInput,
        )
    });
    assert_eq!(
        stale_polls.load(Ordering::Relaxed),
        0,
        "a stale body was read"
    );

    // Genuinely signed and fresh: only the declared size gives it away.
    let oversized_polls = Arc::new(AtomicUsize::new(0));
    let oversized = Bytes::from(vec![b' '; 8 * 1024 * 1024]);
    let timestamp = now_timestamp();
    let signature = sign(SECRET, &timestamp, &oversized);
    let oversized_request = || {
        signed_request(
            &timestamp,
            &signature,
            oversized.len(),
            Frames::one(&oversized).counting(Arc::clone(&oversized_polls)),
        )
    };
    let response = complete(service.clone().oneshot(oversized_request())).expect("infallible");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    group.bench_function("content_length_8MiB_over_4MiB_limit", |b| {
        b.iter_batched(
            oversized_request,
            |request| complete(service.clone().oneshot(request)),
            BatchSize::SmallInput,
        )
    });
    assert_eq!(
        oversized_polls.load(Ordering::Relaxed),
        0,
        "an oversized body was read"
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30);
    targets = verification, refusal
}
criterion_main!(benches);
