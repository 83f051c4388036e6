//! The PostgreSQL event store against a real PostgreSQL: the store's contract, replicas
//! claiming and creating the schema at the same moment, and PostgreSQL restarted mid-run.
//!
//! A test binary of its own, since it starts servers: one PostgreSQL shared by the binary
//! (a fresh database per test) and one of its own for each test that restarts it. See
//! `tests/postgres_support` for how they are started, and for `OPENMAIL_TEST_POSTGRES_URL`.
//! Without PostgreSQL the tests skip loudly, unless `CI` is set.
//!
//! `cargo test --features postgres --test postgres`

/// Stands in for the PostgreSQL tests when the `postgres` feature is off, so that a plain
/// `cargo test` lists them as ignored and says how to run them.
#[cfg(not(feature = "postgres"))]
#[test]
#[ignore = "needs the `postgres` feature and PostgreSQL installed: cargo test --features postgres --test postgres"]
fn postgres_tests_need_the_postgres_feature() {
    panic!("run with `--features postgres`: cargo test --features postgres --test postgres");
}

#[cfg(feature = "postgres")]
#[path = "../postgres_support/mod.rs"]
mod postgres_support;

#[cfg(feature = "postgres")]
mod guide;
#[cfg(feature = "postgres")]
mod plans;
#[cfg(feature = "postgres")]
mod refund;
#[cfg(feature = "postgres")]
mod restart;
#[cfg(feature = "postgres")]
mod store;
#[cfg(feature = "postgres")]
mod throughput;
