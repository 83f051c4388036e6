//! The WebSocket client with Redis, against a real `redis-server`: the resume position
//! survives a restart in `RedisResumeStore`, and two replicas plus the webhook, deduplicating
//! in one `RedisStore`, handle each event once.
//!
//! Each test starts its own `redis-server` from `PATH` on a free port. Without it the
//! tests skip loudly, unless `CI` is set.

#![cfg(all(feature = "websocket", feature = "redis"))]

use std::sync::Arc;
use std::time::Duration;

use crate::redis_server::RedisServer;
use crate::websocket_support::harness::{App, Running, Statuses, fast_client};
use crate::websocket_support::webhook::{SECRET, Sender, WebhookServer};
use crate::websocket_support::{TestServer, event};
use axum::http::StatusCode;
use openmail_webhooks::VerifyOpenMailLayer;
use openmail_webhooks::dedup::{DedupStore, DeduplicateLayer, RedisStore};
use openmail_webhooks::websocket::{ClientStatus, GapReason, RedisResumeStore, ResumeStore};
use tokio::task::JoinSet;

fn handled(event_id: &str) -> impl Fn(&ClientStatus) -> bool + '_ {
    move |status| matches!(status, ClientStatus::EventHandled { event_id: Some(id), .. } if id == event_id)
}

#[tokio::test]
async fn redis_resume_loads_what_it_saved_under_its_key() {
    let Some(redis) = RedisServer::start("a Redis resume test") else {
        return;
    };
    let store = RedisResumeStore::connect(&redis.url()).await.unwrap();
    assert_eq!(store.load().await.unwrap(), None);
    store.save("evt_1").await.unwrap();
    store.save("evt_2").await.unwrap();
    assert_eq!(store.load().await.unwrap().as_deref(), Some("evt_2"));
    let other = RedisResumeStore::connect(&redis.url())
        .await
        .unwrap()
        .key("replica-2:last_event_id");
    assert_eq!(other.load().await.unwrap(), None);
    assert!(!format!("{store:?}").contains("127.0.0.1"));
}

#[tokio::test]
async fn a_restarted_client_resumes_from_the_position_in_redis() {
    let Some(redis) = RedisServer::start("a Redis resume test") else {
        return;
    };
    let server = TestServer::start().await;
    let app = App::succeeding();

    let first = Statuses::default();
    let resume = RedisResumeStore::connect(&redis.url()).await.unwrap();
    let client = Running::spawn(
        fast_client(&server, &first).resume_store(resume),
        app.router(),
    );
    server.wait_subscribed(1).await;
    server.push_event("evt_1", "inb_a");
    server.push_event("evt_2", "inb_a");
    first.wait("evt_2", 1, handled("evt_2")).await;
    client.stop().await.unwrap();

    // While no client runs, two events occur.
    server.push_event("evt_3", "inb_a");
    server.push_event("evt_4", "inb_a");

    let second = Statuses::default();
    let resume = RedisResumeStore::connect(&redis.url()).await.unwrap();
    let client = Running::spawn(
        fast_client(&server, &second).resume_store(resume),
        app.router(),
    );
    second.wait("evt_4", 1, handled("evt_4")).await;
    assert_eq!(app.called(), ["evt_1", "evt_2", "evt_3", "evt_4"]);
    let resumed = second.picked(|status| match status {
        ClientStatus::Resumed { from } => Some(from.clone()),
        _ => None,
    });
    assert_eq!(resumed, ["evt_2"]);
    let gaps = second.picked(|status| match status {
        ClientStatus::PossibleGap { reason } => Some(reason.clone()),
        _ => None,
    });
    assert!(!gaps.contains(&GapReason::NoResumePosition), "{gaps:?}");
    client.stop().await.unwrap();
}

#[tokio::test]
async fn a_redis_that_cannot_save_is_reported_and_the_client_goes_on() {
    let Some(mut redis) = RedisServer::start("a Redis resume test") else {
        return;
    };
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let resume = RedisResumeStore::connect(&redis.url()).await.unwrap();
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(resume),
        App::succeeding().router(),
    );
    server.wait_subscribed(1).await;
    redis.kill();
    server.push_event("evt_1", "inb_a");
    statuses.wait("evt_1", 1, handled("evt_1")).await;
    statuses
        .wait("the failed save", 1, |s| {
            matches!(s, ClientStatus::ResumeSaveFailed { .. })
        })
        .await;
    server.push_event("evt_2", "inb_a");
    statuses.wait("evt_2", 1, handled("evt_2")).await;
    tokio::time::timeout(Duration::from_secs(20), client.stop())
        .await
        .expect("stopping waits at most the grace for a dead Redis")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_the_webhook_sharing_a_redis_store_handle_each_event_once() {
    let Some(redis) = RedisServer::start("a Redis exactly-once test") else {
        return;
    };
    let server = TestServer::start().await;
    let app = App::succeeding();
    let sender = Sender::default();
    let mut replicas = Vec::new();
    let mut webhook_servers = Vec::new();
    let mut all_statuses = Vec::new();
    for _ in 0..2 {
        // Each replica: its own Redis connection, router, layers, socket and webhook port.
        let store: Arc<dyn DedupStore> = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
        let inner = app.router().layer(DeduplicateLayer::from_shared(store));
        webhook_servers.push(
            WebhookServer::serve(
                inner
                    .clone()
                    .layer(VerifyOpenMailLayer::new(SECRET).unwrap()),
            )
            .await,
        );
        let statuses = Statuses::default();
        replicas.push(Running::spawn(
            fast_client(&server, &statuses).handler_retries(10, Duration::from_millis(20)),
            inner,
        ));
        all_statuses.push(statuses);
    }
    server.wait_subscribed(2).await;

    let event_ids: Vec<String> = (0..20).map(|index| format!("evt_{index:02}")).collect();
    let mut deliveries = JoinSet::new();
    for (index, event_id) in event_ids.iter().enumerate() {
        let body = event(event_id, "inb_a", "message.received");
        server.push(&body);
        // The webhook too, at either replica's port.
        let addr = webhook_servers[index % 2].addr;
        let sender = sender.clone();
        deliveries.spawn(async move { sender.deliver_until_settled(addr, SECRET, &body).await });
    }
    while let Some(answer) = deliveries.join_next().await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for statuses in &all_statuses {
        statuses
            .wait("every event's outcome", event_ids.len(), |status| {
                matches!(
                    status,
                    ClientStatus::EventHandled { .. } | ClientStatus::HandlerFailed { .. }
                )
            })
            .await;
        assert_eq!(
            statuses.count(|s| matches!(s, ClientStatus::HandlerFailed { .. })),
            0
        );
    }
    for event_id in &event_ids {
        assert_eq!(app.calls_for(event_id), 1, "{event_id}");
    }
    assert_eq!(app.calls().len(), event_ids.len());
    for replica in replicas {
        replica.stop().await.unwrap();
    }
}
