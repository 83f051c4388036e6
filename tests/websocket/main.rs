//! The WebSocket channel and the developer tool, against the test OpenMail WebSocket server
//! (tests/websocket_support): the server itself, the client's behaviours, the API key kept
//! out of every output, exactly-once handling across channels and replicas, in memory and
//! over a real Redis, the `both_channels` example, and the `openmail-webhooks` tool.
//!
//! One test binary, one module per subject, so that the tokio, tungstenite, rustls and
//! axum code they all use is compiled and linked once instead of once per file. Run one
//! subject with its module path, for example `cargo test --test websocket client::`.
//!
//! Tests in here share a process, so none may depend on being alone in it: servers listen
//! on ephemeral loopback ports, each Redis test starts its own `redis-server`, child
//! processes get their environment per command, and no test sets environment variables or
//! the working directory. `secrets` installs the process's `log` logger and `tracing`
//! subscriber, which capture what every test logs from then on; it looks only for its own
//! API key, which no other test uses.
//!
//! [`heap`] is the binary's global allocator: `held` counts what dropping held events frees
//! on its own thread, which the other tests' allocations do not move.

#[path = "../heap/mod.rs"]
mod heap;
#[path = "../support/mod.rs"]
mod support;
#[path = "../websocket_support/mod.rs"]
mod websocket_support;

#[cfg(feature = "redis")]
#[path = "../dedup_support/redis_server.rs"]
#[allow(dead_code)] // shared with the deduplication tests, which pause and resume it
mod redis_server;

// The examples these tests run in process.
#[cfg(feature = "websocket")]
#[path = "../../examples/both_channels.rs"]
#[allow(dead_code)]
mod both_channels;
#[cfg(feature = "cli")]
#[path = "../../examples/receiver.rs"]
#[allow(dead_code)]
mod receiver;

mod client;
mod devtools;
mod exactly_once;
mod example;
mod held;
mod queue;
mod secrets;
mod server;
#[cfg(feature = "redis")]
mod with_redis;

/// Stands in for the Redis tests of `with_redis` when the `redis` feature is off, so that
/// a plain `cargo test` lists them as ignored and says how to run them.
#[cfg(not(feature = "redis"))]
mod with_redis {
    #[test]
    #[ignore = "needs the `redis` feature and redis-server on PATH: cargo test --features redis --test websocket with_redis::"]
    fn redis_tests_need_the_redis_feature() {
        panic!(
            "run with `--features redis`: cargo test --features redis --test websocket with_redis::"
        );
    }
}
