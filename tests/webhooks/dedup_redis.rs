//! The deduplication layer over a real `redis-server`: the shared behaviours (two
//! replicas with their own connections to one Redis, failure, crash), plus Redis outages.
//!
//! Each test starts its own `redis-server` from `PATH` on a free port and stops it when it
//! ends. Without `redis-server` the tests skip loudly, unless `CI` is set.
//!
//! `cargo test --features redis --test webhooks dedup_redis::` (Rust 1.88 or later, as the
//! Redis client needs). Without the feature, a plain `cargo test` lists one ignored test
//! here that says so.

/// Stands in for the Redis tests when the `redis` feature is off, so that a plain
/// `cargo test` lists them as ignored and says how to run them.
#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs the `redis` feature and redis-server on PATH: cargo test --features redis --test webhooks dedup_redis::"]
fn redis_tests_need_the_redis_feature() {
    panic!(
        "run with `--features redis`: cargo test --features redis --test webhooks dedup_redis::"
    );
}

#[cfg(feature = "redis")]
mod with_redis {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::StatusCode;
    use openmail_webhooks::dedup::{DedupStore, OnStoreError, RedisStore, Reservation};
    use redis::aio::MultiplexedConnection;

    use crate::dedup_behaviours;
    use crate::dedup_support::redis_server::RedisServer;
    use crate::dedup_support::{
        Action, Backend, DecisionLog, Handler, ReplicaConfig, Sender, event_body, key,
    };

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

    /// A connection of its own, to look at what the store left in Redis.
    async fn inspect(server: &RedisServer) -> MultiplexedConnection {
        redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn keys(connection: &mut MultiplexedConnection) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(connection)
            .await
            .unwrap();
        keys.sort();
        keys
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
        open.configure = |layer| layer.on_store_error(OnStoreError::FailOpen);
        let open = open.start().await;
        let sender = Sender::default();

        assert!(
            sender
                .deliver(&closed, &event_body("evt_before"))
                .await
                .processed()
        );
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
            .reserve(Reservation::new(key("evt_lazy")), Duration::from_secs(1))
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
        let reservation = Reservation::new(key("evt_ttl"));
        store
            .reserve(reservation.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        let mut connection = inspect(&backend.server).await;
        // The SHA-256 of the documented layout for ("inb_1", "evt_ttl"), from python3's
        // hashlib (see the known answers in src/dedup/key.rs).
        let expected = "app1:66a72c96ec6b686f8797b3818b7f8703927007d0f52f1c0bf06c5c826ca4f71b";
        assert_eq!(keys(&mut connection).await, [expected]);
        let (value, ttl): (String, i64) = redis::pipe()
            .get(expected)
            .pttl(expected)
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
            .get(expected)
            .pttl(expected)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(value, "done");
        assert!((1_799_000..=1_800_000).contains(&ttl), "{ttl}");
    }

    /// Finding B9, for Redis: a key and its value cost the same whatever the event_id. A
    /// 1 MiB event_id leaves one key of the prefix and 64 hex digits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_event_id_costs_redis_a_fixed_size_key() {
        let Some(backend) = redis() else { return };
        let handler = Handler::succeeding();
        let log = DecisionLog::default();
        let replica = ReplicaConfig::new(backend.store().await, &handler, &log)
            .start()
            .await;
        let long_id = format!("evt_{}", "x".repeat(1 << 20));
        let body = event_body(&long_id);
        let sender = Sender::default();
        assert!(sender.deliver(&replica, &body).await.processed());
        assert!(sender.deliver(&replica, &body).await.duplicate());

        let mut connection = inspect(&backend.server).await;
        let keys = keys(&mut connection).await;
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0], format!("openmail:dedup:{}", key(&long_id).hex()));
        assert_eq!(keys[0].len(), "openmail:dedup:".len() + 64);
        let value: String = redis::cmd("GET")
            .arg(&keys[0])
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(value, "done");
    }

    /// Finding C12: a request dropped while its `SET NX` is in flight (sent, not yet
    /// answered) must not leave a lease behind that answers OpenMail's retries with 409.
    /// Redis is paused so the `SET` waits in its socket; a timeout outside the layer drops
    /// the request; Redis resumes and runs the `SET`, then the release sent after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_dropped_mid_reserve_leaves_no_lease() {
        let Some(backend) = redis() else { return };
        let handler = Handler::succeeding();
        let log = DecisionLog::default();
        let mut config = ReplicaConfig::new(backend.store().await, &handler, &log);
        config.timeout = Some(Duration::from_millis(200));
        let replica = config.start().await;
        let sender = Sender::default();
        let body = event_body("evt_mid_reserve");
        let mut connection = inspect(&backend.server).await;

        backend.server.pause();
        let dropped = sender.deliver(&replica, &body).await;
        backend.server.resume();
        assert_eq!(dropped.status, StatusCode::GATEWAY_TIMEOUT, "{dropped:?}");
        assert_eq!(handler.attempts("evt_mid_reserve"), 0);

        // Both commands ran: nothing is left, and OpenMail's retry is processed.
        tokio::time::timeout(Duration::from_secs(20), async {
            while !keys(&mut connection).await.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the dropped request's reservation is still in Redis");
        let retry = sender.deliver(&replica, &body).await;
        assert!(retry.processed(), "{retry:?}");
        assert_eq!(handler.processed("evt_mid_reserve"), 1);
        assert_eq!(
            log.count(
                "released: the request was dropped before it was answered",
                "evt_mid_reserve"
            ),
            1,
            "{:?}",
            log.kinds()
        );
    }

    /// A Redis that hangs (stopped, not crashed: connections stay open) must not hang the
    /// delivery: the client's response timeout turns it into a 503 with Retry-After, and
    /// the reservation that may land once Redis wakes up is released, so the retry is
    /// processed rather than answered 409.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_redis_answers_503_in_bounded_time_and_leaves_no_lease() {
        let Some(backend) = redis() else { return };
        let handler = Handler::succeeding();
        let log = DecisionLog::default();
        let replica = ReplicaConfig::new(backend.store().await, &handler, &log)
            .start()
            .await;
        let sender = Sender::default();
        let mut connection = inspect(&backend.server).await;
        assert!(
            sender
                .deliver(&replica, &event_body("evt_before"))
                .await
                .processed()
        );

        backend.server.pause();
        let started = std::time::Instant::now();
        let refused = tokio::time::timeout(
            Duration::from_secs(10),
            sender.deliver(&replica, &event_body("evt_hung")),
        )
        .await
        .expect("the delivery hung with Redis");
        let waited = started.elapsed();
        backend.server.resume();
        eprintln!("a hung Redis was answered 503 after {waited:?}");
        assert_eq!(
            refused.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{refused:?}"
        );
        assert_eq!(refused.retry_after.as_deref(), Some("30"));
        // The response timeout is 1 s; a loose bound, not a benchmark, that only tells
        // the timeout from a wait for Redis.
        assert!(waited < Duration::from_secs(8), "answered after {waited:?}");
        assert_eq!(handler.attempts("evt_hung"), 0);
        assert_eq!(
            log.count(
                "store_failed: reserve unavailable passed_through=false",
                "evt_hung"
            ),
            1
        );

        // Redis ran the late SET NX and then the release: only evt_before's marker is left.
        let before = format!("openmail:dedup:{}", key("evt_before").hex());
        tokio::time::timeout(Duration::from_secs(20), async {
            while keys(&mut connection).await != [before.clone()] {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the timed-out reservation is still in Redis");
        let retry = sender.deliver(&replica, &event_body("evt_hung")).await;
        assert!(retry.processed(), "{retry:?}");
    }

    /// A Redis that hangs while the handler runs: the handler's answer goes out once the
    /// marking times out, and the failure is reported.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_that_hangs_while_marking_done_does_not_hold_the_answer() {
        let Some(backend) = redis() else { return };
        let gate = Arc::new(tokio::sync::Notify::new());
        let handler = Handler::new({
            let gate = Arc::clone(&gate);
            move |_| Action::SucceedAfter(Arc::clone(&gate))
        });
        let log = DecisionLog::default();
        let replica = Arc::new(
            ReplicaConfig::new(backend.store().await, &handler, &log)
                .start()
                .await,
        );
        let sender = Sender::default();
        let delivery = {
            let (replica, sender) = (Arc::clone(&replica), sender.clone());
            tokio::spawn(async move { sender.deliver(&replica, &event_body("evt_slow")).await })
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            while handler.attempts("evt_slow") == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        backend.server.pause();
        gate.notify_one();
        let answer = tokio::time::timeout(Duration::from_secs(10), delivery)
            .await
            .expect("the answer waited for a hung Redis")
            .unwrap();
        backend.server.resume();
        assert!(answer.processed(), "{answer:?}");
        assert_eq!(
            log.count(
                "store_failed: complete unavailable passed_through=true",
                "evt_slow"
            ),
            1,
            "{:?}",
            log.kinds()
        );
    }
}
