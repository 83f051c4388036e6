//! The crate's check against svix, with the raw-HMAC limit measured in the same run.
//!
//! Every group is one body size, with the sizes and bodies of the crate's own
//! `benches/verify.rs`:
//!
//! - `limit`: raw HMAC-SHA256 from a pre-keyed state over `X-Timestamp.` plus the body;
//! - `core`: `Verifier::verify`, the crate's pure check;
//! - `svix`: `svix::webhooks::Webhook::verify`, a different scheme doing the same job.
//!
//! Times are the benchmark thread's CPU time, as in the crate's own benches.
//!
//! `cargo bench --bench svix`, in `benches/compare`; `python3 benches/report.py` at the
//! crate's root reads the results with those of `verify`.

#[path = "../../support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{KeyInit, Mac};
use openmail_webhooks::{Verifier, sign};
use support::{SECRET, SIZES, ThreadCpuTime, label, now_timestamp, payload};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn against_svix(c: &mut Criterion<ThreadCpuTime>) {
    let verifier = Verifier::new(SECRET).expect("a valid secret");
    let keyed = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("any key length");
    let svix = svix::webhooks::Webhook::from_bytes(SECRET.as_bytes().to_vec()).expect("a key");

    for size in SIZES {
        let body = Bytes::from(payload(size));
        // Fresh per size, so the replay windows hold however long the run takes.
        let timestamp = now_timestamp();
        let signature = sign(SECRET, &timestamp, &body);

        let mut headers = http::HeaderMap::new();
        let svix_signature = svix
            .sign("msg_2Lh9yW1kq", timestamp.parse().expect("digits"), &body)
            .expect("UTF-8 body");
        headers.insert("svix-id", "msg_2Lh9yW1kq".parse().expect("ASCII"));
        headers.insert("svix-timestamp", timestamp.parse().expect("ASCII"));
        headers.insert("svix-signature", svix_signature.parse().expect("ASCII"));

        // Each accepts its own genuine delivery before it is timed.
        assert!(verifier.verify(&timestamp, &signature, &body).is_ok());
        assert!(svix.verify(&body, &headers).is_ok());

        let mut group = c.benchmark_group(format!("compare/{}", label(size)));
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
        group.bench_function("svix", |b| {
            b.iter(|| svix.verify(black_box(&body), black_box(&headers)).is_ok())
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30);
    targets = against_svix
}
criterion_main!(benches);
