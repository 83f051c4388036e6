//! Exactly-once handling across the two channels and across replicas: events that arrive
//! by webhook and by WebSocket, or on two replicas' connections, reach the application
//! once, through one `DeduplicateLayer` store. Here the store is a `MemoryStore` shared
//! through an `Arc`; `with_redis` does the same with Redis.

#![cfg(feature = "websocket")]

use std::sync::Arc;

use crate::websocket_support::harness::{App, Running, Statuses, fast_client};
use crate::websocket_support::webhook::{SECRET, Sender, WebhookServer};
use crate::websocket_support::{TestServer, event};
use axum::http::StatusCode;
use openmail_webhooks::dedup::MemoryStore;
use openmail_webhooks::dedup::{DedupStore, DeduplicateLayer};
use openmail_webhooks::websocket::ClientStatus;
use openmail_webhooks::{Channel, VerifyOpenMailLayer};
use tokio::task::JoinSet;

const EVENTS: usize = 30;

fn event_ids() -> Vec<String> {
    (0..EVENTS).map(|index| format!("evt_{index:02}")).collect()
}

/// Waits until the client reported an outcome for every event: handled (by the
/// application, or answered as a duplicate) or failed.
async fn wait_outcomes(statuses: &Statuses, count: usize) {
    statuses
        .wait("every event's outcome", count, |status| {
            matches!(
                status,
                ClientStatus::EventHandled { .. } | ClientStatus::HandlerFailed { .. }
            )
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_by_webhook_and_websocket_are_handled_once() {
    let server = TestServer::start().await;
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let app = App::succeeding();
    // One router, one deduplication layer: the WebSocket calls it directly, webhooks
    // reach it through the verification layer.
    let inner = app.router().layer(DeduplicateLayer::from_shared(store));
    let webhooks = WebhookServer::serve(
        inner
            .clone()
            .layer(VerifyOpenMailLayer::new(SECRET).unwrap()),
    )
    .await;
    let statuses = Statuses::default();
    let client = Running::spawn(fast_client(&server, &statuses), inner);
    server.wait_subscribed(1).await;

    // A third of the events come by webhook first, a third by WebSocket first, and a
    // third by both at once.
    let sender = Sender::default();
    let mut deliveries = JoinSet::new();
    for (index, event_id) in event_ids().iter().enumerate() {
        let body = event(event_id, "inb_a", "message.received");
        let (sender, addr) = (sender.clone(), webhooks.addr);
        let webhook_body = body.clone();
        let delivery = async move {
            sender
                .deliver_until_settled(addr, SECRET, &webhook_body)
                .await
        };
        match index % 3 {
            0 => {
                let (status, answer) = delivery.await;
                assert_eq!(status, StatusCode::OK, "{answer}");
                server.push(&body);
            }
            1 => {
                server.push(&body);
                statuses
                    .wait("the WebSocket copy", 1, |status| {
                        matches!(status, ClientStatus::EventHandled { event_id: Some(id), .. } if id == event_id)
                    })
                    .await;
                deliveries.spawn(delivery);
            }
            _ => {
                server.push(&body);
                deliveries.spawn(delivery);
            }
        }
    }
    while let Some(answer) = deliveries.join_next().await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    wait_outcomes(&statuses, EVENTS).await;

    for event_id in event_ids() {
        assert_eq!(
            app.calls_for(&event_id),
            1,
            "{event_id}: {:?}",
            app.called()
        );
    }
    assert_eq!(app.calls().len(), EVENTS);
    assert_eq!(
        statuses.count(|s| matches!(s, ClientStatus::HandlerFailed { .. })),
        0
    );
    let by_webhook = app
        .calls()
        .iter()
        .filter(|call| call.channel == Channel::Webhook)
        .count();
    assert!(by_webhook >= EVENTS / 3, "{by_webhook} by webhook");
    assert!(by_webhook <= EVENTS * 2 / 3, "{by_webhook} by webhook");

    // Later deliveries, by either channel, are duplicates.
    let (status, _) = sender
        .deliver(
            webhooks.addr,
            SECRET,
            &event("evt_00", "inb_a", "message.received"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.calls_for("evt_00"), 1);
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_a_memory_store_handle_each_event_once() {
    let server = TestServer::start().await;
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let app = App::succeeding();
    let mut replicas = Vec::new();
    let mut all_statuses = Vec::new();
    for _ in 0..2 {
        // Each replica has its own router and layer, over the one store.
        let inner = app
            .router()
            .layer(DeduplicateLayer::from_shared(Arc::clone(&store)));
        let statuses = Statuses::default();
        replicas.push(Running::spawn(fast_client(&server, &statuses), inner));
        all_statuses.push(statuses);
    }
    server.wait_subscribed(2).await;
    for event_id in event_ids() {
        server.push_event(&event_id, "inb_a");
    }
    // Both connections receive every event, and each replica settles every one.
    for statuses in &all_statuses {
        wait_outcomes(statuses, EVENTS).await;
        assert_eq!(
            statuses.count(|s| matches!(s, ClientStatus::HandlerFailed { .. })),
            0
        );
    }
    for event_id in event_ids() {
        assert_eq!(app.calls_for(&event_id), 1, "{event_id}");
    }
    for replica in replicas {
        replica.stop().await.unwrap();
    }
}
