//! The deduplication layer over a real `redis-server`: the shared behaviours (two
//! replicas with their own connections to one Redis, failure, crash), plus Redis outages.
//!
//! Each test starts its own `redis-server` from `PATH` on a free port and stops it when it
//! ends. Without `redis-server` the tests skip loudly, unless `CI` is set.
//!
//! `cargo test --features redis --test dedup_redis` (Rust 1.88 or later, as the Redis
//! client needs). Without the feature, a plain `cargo test` lists one ignored test here
//! that says so.

mod dedup_support;

/// Stands in for the Redis tests when the `redis` feature is off, so that a plain
/// `cargo test` lists them as ignored and says how to run them.
#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs the `redis` feature and redis-server on PATH: cargo test --features redis --test dedup_redis"]
fn redis_tests_need_the_redis_feature() {
    panic!("run with `--features redis`: cargo test --features redis --test dedup_redis");
}

#[cfg(feature = "redis")]
mod with_redis {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::StatusCode;
    use openmail_webhooks::dedup::{DedupStore, RedisStore, StoreFailure};

    use crate::dedup_behaviours;
    use crate::dedup_support::redis_server::RedisServer;
    use crate::dedup_support::{event_body, Backend, DecisionLog, Handler, ReplicaConfig, Sender};

    /// One Redis; every `store()` is a new replica's own connection to it.
    struct Redis {
        server: RedisServer,
    }

    impl Backend for Redis {
        async fn store(&self) -> Arc<dyn DedupStore> {
            Arc::new(RedisStore::connect(&self.server.url()).await.unwrap())
        }
    }

    fn redis() -> Option<Redis> {
        RedisServer::start("a Redis deduplication test").map(|server| Redis { server })
    }

    dedup_behaviours!(redis());

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_fails_closed_with_503_by_default_and_open_on_request() {
        let Some(mut backend) = redis() else { return };
        let handler = Handler::succeeding();
        let log = DecisionLog::default();
        let closed = ReplicaConfig::new(backend.store().await, &handler, &log)
            .start()
            .await;
        let mut open = ReplicaConfig::new(backend.store().await, &handler, &log);
        open.configure = |layer| layer.on_store_failure(StoreFailure::FailOpen);
        let open = open.start().await;
        let sender = Sender::default();

        assert!(sender
            .deliver(&closed, &event_body("evt_before"))
            .await
            .processed());
        backend.server.kill();

        let refused = sender.deliver(&closed, &event_body("evt_during")).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.retry_after.as_deref(), Some("30"));
        assert_eq!(handler.attempts("evt_during"), 0);
        assert_eq!(
            log.count(
                "store_failed: reserve unavailable passed_through=false",
                "evt_during"
            ),
            1
        );

        let processed = sender.deliver(&open, &event_body("evt_during")).await;
        assert!(processed.processed(), "{processed:?}");
        assert_eq!(
            log.count(
                "store_failed: reserve unavailable passed_through=true",
                "evt_during"
            ),
            1
        );
    }

    #[tokio::test]
    async fn connecting_to_no_redis_fails_with_a_useful_error() {
        let Some(mut backend) = redis() else { return };
        let url = backend.server.url();
        backend.server.kill();
        let error = RedisStore::connect(&url).await.unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("check that it is running and reachable"),
            "{message}"
        );

        // The lazy store starts all the same and fails per call.
        let store = RedisStore::connect_lazy(&url).unwrap();
        let result = store
            .reserve(
                openmail_webhooks::dedup::Reservation::new("evt_lazy"),
                Duration::from_secs(1),
            )
            .await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn keys_carry_the_prefix_and_the_lease_as_ttl() {
        let Some(backend) = redis() else { return };
        let store = RedisStore::connect(&backend.server.url())
            .await
            .unwrap()
            .key_prefix("app1:");
        let reservation = openmail_webhooks::dedup::Reservation::new("evt_ttl");
        store
            .reserve(reservation.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        let client = redis::Client::open(backend.server.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let (value, ttl): (String, i64) = redis::pipe()
            .get("app1:evt_ttl")
            .pttl("app1:evt_ttl")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(value, reservation.token());
        assert!((59_000..=60_000).contains(&ttl), "{ttl}");

        store
            .complete(reservation, Duration::from_secs(1800))
            .await
            .unwrap();
        let (value, ttl): (String, i64) = redis::pipe()
            .get("app1:evt_ttl")
            .pttl("app1:evt_ttl")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(value, "done");
        assert!((1_799_000..=1_800_000).contains(&ttl), "{ttl}");
    }
}
