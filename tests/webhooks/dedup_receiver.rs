//! The receiver example's deduplication contract over real HTTP: an event is handled once
//! however often it is delivered, in memory and across two receivers sharing a Redis.
//!
//! The handler is the only code that prints the stdout line and the only code that answers
//! `{"ok":true,"event":..}`; a duplicate answers `{"ok":true,"duplicate":true,..}`. So
//! counting the handler's answers counts the stdout lines.

use crate::dedup_support::{Answer, Replica, SECRET, Sender, event_body};
use crate::receiver;
use axum::http::StatusCode;
use openmail_webhooks::VerifyOpenMailLayer;
use serde_json::Value;

fn handled(answer: &Answer) -> bool {
    let json: Value = serde_json::from_str(&answer.body).unwrap();
    answer.status == StatusCode::OK && json["event"].is_string() && json["duplicate"].is_null()
}

fn duplicate(answer: &Answer, event_id: &str) -> bool {
    let json: Value = serde_json::from_str(&answer.body).unwrap();
    answer.status == StatusCode::OK && json["duplicate"] == true && json["event_id"] == event_id
}

#[tokio::test]
async fn the_receiver_handles_each_event_once_in_memory() {
    let receiver = Replica::serve(receiver::app(VerifyOpenMailLayer::new(SECRET).unwrap())).await;
    let sender = Sender::default();
    let body = event_body("evt_receiver");

    assert!(handled(&sender.deliver(&receiver, &body).await));
    for _ in 0..3 {
        let answer = sender.deliver(&receiver, &body).await;
        assert!(duplicate(&answer, "evt_receiver"), "{answer:?}");
    }
    assert!(handled(
        &sender.deliver(&receiver, &event_body("evt_next")).await
    ));
    // An event without an event_id cannot be deduplicated: handled every time.
    let test_event = r#"{"event":"setup.test"}"#;
    assert!(handled(&sender.deliver(&receiver, test_event).await));
    assert!(handled(&sender.deliver(&receiver, test_event).await));
}

/// Stands in for the Redis test below when the `redis` feature is off.
#[cfg(not(feature = "redis"))]
#[test]
#[ignore = "needs the `redis` feature and redis-server on PATH: cargo test --features redis --test webhooks dedup_receiver::"]
fn two_receivers_sharing_redis_need_the_redis_feature() {
    panic!(
        "run with `--features redis`: cargo test --features redis --test webhooks dedup_receiver::"
    );
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_sharing_redis_handle_each_event_once() {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::dedup_support::redis_server::RedisServer;
    use openmail_webhooks::dedup::RedisStore;
    use tokio::task::JoinSet;

    let Some(redis) = RedisServer::start("the receiver's Redis deduplication test") else {
        return;
    };
    let mut receivers = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(&redis.url()).await.unwrap();
        let app =
            receiver::app_with_store(VerifyOpenMailLayer::new(SECRET).unwrap(), Arc::new(store));
        receivers.push(Replica::serve(app).await);
    }
    let receivers = Arc::new(receivers);
    let sender = Sender::default();

    let mut deliveries = JoinSet::new();
    for delivery in 0..20 {
        let (receivers, sender) = (Arc::clone(&receivers), sender.clone());
        deliveries.spawn(async move {
            sender
                .deliver_until_settled(
                    &receivers[delivery % 2],
                    &event_body("evt_shared"),
                    250,
                    Duration::from_millis(20),
                )
                .await
        });
    }
    let mut handled_count = 0;
    while let Some(answer) = deliveries.join_next().await {
        let answer = answer.unwrap();
        if handled(&answer) {
            handled_count += 1;
        } else {
            assert!(duplicate(&answer, "evt_shared"), "{answer:?}");
        }
    }
    assert_eq!(handled_count, 1);
}
