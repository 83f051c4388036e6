//! What a handler that holds the events of the WebSocket channel keeps.

#![cfg(feature = "websocket")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Extension, Router};
use openmail_webhooks::websocket::ClientStatus;
use openmail_webhooks::{Delivery, Event};
use serde_json::json;

use crate::websocket_support::TestServer;
use crate::websocket_support::harness::{Running, Statuses, fast_client};

/// What the handler keeps: every event and delivery it was handed.
type Held = Arc<Mutex<Vec<(Arc<Event>, Delivery)>>>;

/// What a held event may keep beyond its body: the event's and the delivery's fixed parts.
const HELD_EXTRA: usize = 4 * 1024;

/// BREACH (held memory, WebSocket). tungstenite hands a message's text on as a slice of
/// the connection's 128 KiB read buffer, and the client handed that slice on as the event's
/// body: a handler that held a few small events held the whole buffer with them. Held
/// events must cost their body plus a small constant, on this channel as on webhooks.
///
/// What dropping the held events frees is counted on this thread only, so the other tests
/// of the binary do not move it; a read buffer would be a block of 128 KiB or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_keep_no_read_buffer() {
    const EVENTS: usize = 8;
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let held: Held = Arc::default();
    let keep = Arc::clone(&held);
    let handle = move |Extension(event): Extension<Arc<Event>>,
                       Extension(delivery): Extension<Delivery>| {
        let keep = Arc::clone(&keep);
        async move {
            keep.lock().unwrap().push((event, delivery));
            "ok"
        }
    };
    let router = Router::new().route("/webhooks", post(handle));
    let client = Running::spawn(fast_client(&server, &statuses), router);
    server.wait_subscribed(1).await;
    let bodies: Vec<String> = (0..EVENTS)
        .map(|index| {
            json!({
                "event": "message.received",
                "event_id": format!("evt_held_{index}"),
                "inbox_id": "inb_1",
                "note": "n".repeat(1024),
            })
            .to_string()
        })
        .collect();
    for body in &bodies {
        server.push(body);
    }
    statuses
        .wait("every event handled", EVENTS, |status| {
            matches!(status, ClientStatus::EventHandled { .. })
        })
        .await;
    client.stop().await.unwrap();
    drop(server);

    let events = std::mem::take(&mut *held.lock().unwrap());
    assert_eq!(events.len(), EVENTS);
    // Two handles on each event stay: the held one and the delivery's.
    let settle = Instant::now() + Duration::from_secs(10);
    while events.iter().any(|(event, _)| Arc::strong_count(event) > 2) {
        assert!(Instant::now() < settle, "the client still holds an event");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (event, delivery) in &events {
        assert!(
            bodies
                .iter()
                .any(|body| body.as_bytes() == &event.raw()[..])
        );
        assert_eq!(delivery.body(), event.raw());
    }
    let bodies_len: usize = bodies.iter().map(String::len).sum();
    let freed = crate::heap::freed_by(|| drop(events));
    assert_eq!(
        freed.large, 0,
        "dropping {EVENTS} held events of about 1 KiB freed {} blocks of 128 KiB or more \
         ({} bytes in all)",
        freed.large, freed.bytes
    );
    assert!(
        freed.bytes >= bodies_len,
        "dropping the held events freed {} bytes, less than their bodies' {bodies_len}",
        freed.bytes
    );
    let extra = (freed.bytes - bodies_len) / EVENTS;
    eprintln!("{extra} bytes per held event beyond its body");
    assert!(
        extra <= HELD_EXTRA,
        "a held event keeps {extra} bytes beyond its body"
    );
}
