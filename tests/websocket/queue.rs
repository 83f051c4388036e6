//! The durable queue fed by both channels: the WebSocket client hands its events to the
//! same `Ingest` service the webhook route uses, with no code of its own. An event is
//! acknowledged on the socket (and the resume position advances) once it is stored, not
//! once a handler ran, and an event that arrives by both channels is stored once.

#![cfg(feature = "sqlite")]

use std::sync::Arc;

use crate::websocket_support::harness::{Statuses, fast_client};
use crate::websocket_support::webhook::{SECRET, Sender, WebhookServer};
use crate::websocket_support::{TestServer, event};
use axum::Router;
use axum::http::StatusCode;
use openmail_webhooks::VerifyOpenMailLayer;
use openmail_webhooks::queue::{Backend, Durability, EventStore, Ingest, SqliteStore};
use openmail_webhooks::websocket::ClientStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_events_go_through_the_same_ingest_and_are_stored_once() {
    let dir = std::env::temp_dir().join(format!("openmail-queue-ws-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(SqliteStore::open(dir.join("events.db"), Durability::default()).unwrap());
    let ingest = Ingest::new(Arc::clone(&store));
    let webhooks = WebhookServer::serve(
        Router::new()
            .route_service("/webhooks", ingest.clone())
            .layer(VerifyOpenMailLayer::new(SECRET).unwrap()),
    )
    .await;
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = tokio::spawn(
        fast_client(&server, &statuses).serve_with_shutdown(ingest, async {
            let _ = stopped.await;
        }),
    );
    server.wait_subscribed(1).await;

    let first = event("evt_ws_1", "inb_a", "message.received");
    server.push(&first);
    server.push(&event("evt_ws_2", "inb_a", "message.received"));
    statuses
        .wait("both events stored", 2, |status| {
            matches!(status, ClientStatus::EventHandled { .. })
        })
        .await;
    // Stored, not run: nothing has claimed them.
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.in_flight), (2, 0));
    let claimed = store
        .claim(8, std::time::Duration::from_secs(30), 8)
        .await
        .unwrap();
    assert!(
        claimed
            .iter()
            .all(|event| event.delivery().channel() == openmail_webhooks::Channel::WebSocket)
    );

    // The same event by webhook: acknowledged as a duplicate, not stored again.
    let (status, answer) = Sender::default()
        .deliver(webhooks.addr, SECRET, &first)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer.contains(r#""duplicate":true"#), "{answer}");
    assert_eq!(store.stats().await.unwrap().depth(), 2);

    let _ = stop.send(());
    let _ = client.await;
}
