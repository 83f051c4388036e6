//! The deduplication layer over the in-memory store: the shared behaviours, driven
//! through real HTTP servers, plus what does not depend on the store.

mod dedup_support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use dedup_support::{
    delivery, event_body, Backend, DecisionLog, Handler, ReplicaConfig, Sender, SECRET,
};
use http_body_util::{BodyExt, Full};
use openmail_webhooks::dedup::{DedupStore, DeduplicateLayer, MemoryStore, Reservation};
use openmail_webhooks::VerifyOpenMailLayer;
use tower::ServiceExt;

/// Every "replica" shares one `MemoryStore`, as layers in one process would.
struct Memory(MemoryStore);

impl Backend for Memory {
    async fn store(&self) -> Arc<dyn DedupStore> {
        Arc::new(self.0.clone())
    }
}

fn memory() -> Option<Memory> {
    Some(Memory(MemoryStore::new()))
}

dedup_behaviours!(memory());

#[tokio::test]
async fn the_key_is_the_signed_event_id_not_the_header() {
    let handler = Handler::succeeding();
    let log = DecisionLog::default();
    let replica = ReplicaConfig::new(Arc::new(MemoryStore::new()), &handler, &log)
        .start()
        .await;
    let sender = Sender::default();

    // Same signed event_id, different headers: a duplicate.
    let body = event_body("evt_signed");
    assert!(sender
        .deliver_with_header(&replica, &body, Some("evt_header_a"))
        .await
        .processed());
    assert!(sender
        .deliver_with_header(&replica, &body, Some("evt_header_b"))
        .await
        .duplicate());
    // Same header, another signed event_id: a new event.
    assert!(sender
        .deliver_with_header(&replica, &event_body("evt_other"), Some("evt_header_a"))
        .await
        .processed());
    assert_eq!(handler.processed("evt_signed"), 1);
    assert_eq!(handler.processed("evt_other"), 1);
}

#[tokio::test]
async fn a_signed_body_without_an_event_id_passes_through_every_time() {
    let handler = Handler::succeeding();
    let log = DecisionLog::default();
    let replica = ReplicaConfig::new(Arc::new(MemoryStore::new()), &handler, &log)
        .start()
        .await;
    let sender = Sender::default();
    let body = r#"{"event":"setup.test"}"#;

    assert!(sender.deliver(&replica, body).await.processed());
    assert!(sender.deliver(&replica, body).await.processed());
    assert_eq!(handler.processed("<none>"), 2);
    assert_eq!(log.kinds(), ["unkeyed: NoEventId", "unkeyed: NoEventId"]);
}

#[tokio::test]
async fn without_a_verified_event_the_layer_passes_through_and_says_why() {
    let log = DecisionLog::default();
    let hook_log = log.clone();
    let store = MemoryStore::new();
    // Parsing off: no Arc<Event> reaches the deduplication layer.
    let app = Router::new()
        .route("/webhooks", post(|| async { "handled" }))
        .layer(
            DeduplicateLayer::new(store.clone()).on_decision(move |decision| {
                assert!(decision.to_string().contains("inside VerifyOpenMailLayer"));
                hook_log.record(decision);
            }),
        )
        .layer(
            VerifyOpenMailLayer::new(SECRET)
                .unwrap()
                .parse_events(false),
        );
    for _ in 0..2 {
        let response = app
            .clone()
            .oneshot(delivery(&event_body("evt_unparsed"), None))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(log.kinds(), ["unkeyed: NoEvent", "unkeyed: NoEvent"]);
    assert!(store.is_empty());
}

#[tokio::test]
async fn the_handler_sees_its_reservation_and_the_duplicate_answer_is_configurable() {
    let app = Router::new()
        .route(
            "/webhooks",
            post(
                |Extension(reservation): Extension<Reservation>| async move {
                    assert_eq!(reservation.token().len(), 32);
                    reservation.event_id().to_owned()
                },
            ),
        )
        .layer(
            DeduplicateLayer::in_memory().duplicate_response(|event_id| {
                let mut response = http::Response::new(Bytes::from(format!("seen {event_id}")));
                *response.status_mut() = StatusCode::ACCEPTED;
                response
            }),
        )
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    let body = event_body("evt_custom");

    let first = app.clone().oneshot(delivery(&body, None)).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.into_body().collect().await.unwrap().to_bytes(),
        "evt_custom"
    );
    let second = app.oneshot(delivery(&body, None)).await.unwrap();
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    assert_eq!(
        second.into_body().collect().await.unwrap().to_bytes(),
        "seen evt_custom"
    );
}

#[tokio::test]
async fn a_store_full_of_reservations_fails_closed_by_default_and_open_on_request() {
    use openmail_webhooks::dedup::StoreFailure;
    use tower::{service_fn, ServiceBuilder};

    for (policy, expected) in [
        (StoreFailure::FailClosed, StatusCode::SERVICE_UNAVAILABLE),
        (StoreFailure::FailOpen, StatusCode::OK),
    ] {
        let store = MemoryStore::with_capacity(1);
        store
            .reserve(Reservation::new("evt_in_flight"), Duration::from_secs(60))
            .await
            .unwrap();
        let log = DecisionLog::default();
        let hook_log = log.clone();
        let service = ServiceBuilder::new()
            .layer(VerifyOpenMailLayer::new(SECRET).unwrap())
            .layer(
                DeduplicateLayer::new(store)
                    .on_store_failure(policy)
                    .retry_after(Duration::from_millis(1500))
                    .on_decision(move |decision| hook_log.record(decision)),
            )
            .service(service_fn(|_request: http::Request<_>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    Bytes::from_static(b"ok"),
                )))
            }));
        let response = service
            .oneshot(delivery(&event_body("evt_next"), None))
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
        let passed_through = policy == StoreFailure::FailOpen;
        if !passed_through {
            assert_eq!(response.headers()["retry-after"], "2");
        }
        assert_eq!(
            log.kinds(),
            [format!(
                "store_failed: reserve full passed_through={passed_through}"
            )]
        );
    }
}

#[cfg(feature = "tracing")]
#[tokio::test(flavor = "current_thread")]
async fn decisions_go_to_tracing() {
    use std::io::Write;
    use std::sync::Mutex;
    use tracing_subscriber::util::SubscriberInitExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let captured = Captured::default();
    let writer = captured.clone();
    let _guard = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish()
        .set_default();

    let app = Router::new()
        .route("/webhooks", post(|| async { "ok" }))
        .layer(DeduplicateLayer::in_memory())
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    for _ in 0..2 {
        app.clone()
            .oneshot(delivery(&event_body("evt_traced"), None))
            .await
            .unwrap();
    }
    let output = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for expected in [
        "DEBUG openmail_webhooks::dedup",
        "evt_traced: first delivery, reserved",
        "evt_traced: processed, marked done",
        "INFO openmail_webhooks::dedup",
        "evt_traced: duplicate of a processed event",
    ] {
        assert!(output.contains(expected), "{expected:?} not in {output}");
    }
}
