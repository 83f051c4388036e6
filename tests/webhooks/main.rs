//! The webhook channel, tested the way users host it: the layer and its rejection table,
//! the examples' stacks over real HTTP, per-inbox secrets, secrets kept out of every output,
//! the typed events, properties over generated inputs, and deduplication in memory, in the
//! receiver example and over a real Redis.
//!
//! One test binary, one module per subject, so that the tokio, hyper and axum code they
//! all use is compiled and linked once instead of once per file. Run one subject with its
//! module path, for example `cargo test --test webhooks tenants::`.
//!
//! Tests in here share a process, so none may depend on being alone in it:
//! - servers listen on ephemeral loopback ports, and each Redis test starts its own
//!   `redis-server` on a free port;
//! - no test sets environment variables or the working directory;
//! - `tracing` output is captured per test through [`logs`], never by a subscriber of a
//!   test's own.
//!
//! The heap-measuring attacks (`tests/security`) and the allocation counts
//! (`tests/memory.rs`, `tests/dedup_memory_size.rs`) have binaries of their own: each
//! installs a counting global allocator, which every other test's allocations would
//! disturb.

#[path = "../dedup_support/mod.rs"]
mod dedup_support;
mod logs;
#[path = "../support/mod.rs"]
mod support;

// The examples these tests serve over real HTTP, compiled once for every module here.
#[path = "../../examples/hyper_service.rs"]
#[allow(dead_code)]
mod hyper_service;
#[path = "../../examples/receiver.rs"]
#[allow(dead_code)]
mod receiver;
#[path = "../../examples/tenants_sqlite.rs"]
#[allow(dead_code)]
mod tenants_sqlite;
#[path = "../../examples/tonic_side_by_side.rs"]
#[allow(dead_code)]
mod tonic_side_by_side;

mod deadlines;
mod dedup_memory;
mod dedup_receiver;
mod dedup_redis;
mod events;
mod http;
mod layer;
mod leases;
mod lossless;
mod properties;
mod secrets;
mod tenants;

/// `config`, with the failures proptest finds saved next to the module that found them
/// (`properties.rs` to `properties.proptest-regressions`) and replayed from there first.
/// Proptest's default would look for the nearest `main.rs` and save them under
/// `tests/proptest-regressions/` instead.
fn proptest_config(config: proptest::prelude::ProptestConfig) -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..config
    }
}
