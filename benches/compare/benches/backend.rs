//! HMAC-SHA256 implementations on the same messages: `sha2` (the crate's default backend,
//! through `hmac`) against `ring`, each from a pre-keyed state over `X-Timestamp.` plus the
//! body, and the crate's own check with whichever backend it was built with.
//!
//! On a CPU with SHA extensions both use them. `no-sha-ni.sh`, next to this workspace's
//! `Cargo.toml`, runs this bench a second time as a CPU without them would: sha2 forced to
//! its portable code, and ring with the SHA-extension path switched off, so ring falls
//! back to its AVX/SSSE3 assembly.
//!
//! `cargo bench --bench backend`, in `benches/compare`.

#[path = "../../support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hmac::{KeyInit, Mac};
use openmail_webhooks::{Verifier, sign};
use support::{SECRET, SIZES, ThreadCpuTime, label, now_timestamp, payload};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn backends(c: &mut Criterion<ThreadCpuTime>) {
    let sha2_keyed = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("any key length");
    let ring_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let verifier = Verifier::new(SECRET).expect("a valid secret");

    for size in SIZES {
        let body = payload(size);
        let timestamp = now_timestamp();
        let signature = sign(SECRET, &timestamp, &body);

        // Both implementations must agree before either is timed.
        let mut sha2_mac = sha2_keyed.clone();
        sha2_mac.update(timestamp.as_bytes());
        sha2_mac.update(b".");
        sha2_mac.update(&body);
        let mut ring_mac = ring::hmac::Context::with_key(&ring_key);
        ring_mac.update(timestamp.as_bytes());
        ring_mac.update(b".");
        ring_mac.update(&body);
        assert_eq!(
            hex::encode(sha2_mac.finalize().into_bytes()),
            hex::encode(ring_mac.sign().as_ref())
        );
        assert!(verifier.verify(&timestamp, &signature, &body).is_ok());

        let mut group = c.benchmark_group(format!("backend/{}", label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        if size >= 1024 * 1024 {
            group.sample_size(20);
        }
        group.bench_function("sha2", |b| {
            b.iter(|| {
                let mut mac = sha2_keyed.clone();
                mac.update(black_box(timestamp.as_bytes()));
                mac.update(b".");
                mac.update(black_box(&body));
                mac.finalize().into_bytes()
            })
        });
        group.bench_function("ring", |b| {
            b.iter(|| {
                let mut mac = ring::hmac::Context::with_key(&ring_key);
                mac.update(black_box(timestamp.as_bytes()));
                mac.update(b".");
                mac.update(black_box(&body));
                mac.sign()
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
    targets = backends
}
criterion_main!(benches);
