//! The deduplication layer over the in-memory store: the shared behaviours, driven
//! through real HTTP servers, plus what does not depend on the store.

use std::sync::Arc;
use std::time::Duration;

use crate::dedup_behaviours;
use crate::dedup_support::{
    Backend, DecisionLog, Handler, Replica, ReplicaConfig, SECRET, Sender, delivery, event_body,
    key,
};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use openmail_webhooks::VerifyOpenMailLayer;
use openmail_webhooks::dedup::{DedupStore, DeduplicateLayer, MemoryStore, Reservation};
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
    assert!(
        sender
            .deliver_with_header(&replica, &body, Some("evt_header_a"))
            .await
            .processed()
    );
    assert!(
        sender
            .deliver_with_header(&replica, &body, Some("evt_header_b"))
            .await
            .duplicate()
    );
    // Same header, another signed event_id: a new event.
    assert!(
        sender
            .deliver_with_header(&replica, &event_body("evt_other"), Some("evt_header_a"))
            .await
            .processed()
    );
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
async fn a_request_without_a_delivery_is_refused_loudly_not_passed_through() {
    use std::sync::atomic::{AtomicU32, Ordering};

    let calls = Arc::new(AtomicU32::new(0));
    let log = DecisionLog::default();
    let store = MemoryStore::new();
    let handler = {
        let calls = Arc::clone(&calls);
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            "handled"
        }
    };
    let dedup = {
        let log = log.clone();
        DeduplicateLayer::new(store.clone()).on_decision(move |decision| log.record(decision))
    };
    // Two wiring mistakes: deduplication outside verification (with axum, the layer added
    // last runs first), and no verification at all.
    let outside = Router::new()
        .route("/webhooks", post(handler.clone()))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap())
        .layer(dedup.clone());
    let alone = Router::new().route("/webhooks", post(handler)).layer(dedup);
    for app in [outside, alone] {
        let replica = Replica::serve(app).await;
        let answer = Sender::default()
            .deliver(&replica, &event_body("evt_unwired"))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{answer:?}"
        );
        assert!(
            answer
                .body
                .contains("DeduplicateLayer must sit inside VerifyOpenMailLayer"),
            "{answer:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(log.kinds(), ["unverified", "unverified"]);
    assert!(store.is_empty());
}

#[tokio::test]
async fn the_decision_names_the_wiring_mistake() {
    let decisions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/webhooks", post(|| async { "handled" }))
        .layer(DeduplicateLayer::in_memory().on_decision({
            let decisions = Arc::clone(&decisions);
            move |decision| {
                assert!(!decision.reaches_inner());
                assert!(decision.key().is_none());
                decisions.lock().unwrap().push(decision.to_string());
            }
        }));
    let response = app
        .oneshot(delivery(&event_body("evt_1"), None))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let decisions = decisions.lock().unwrap();
    assert_eq!(decisions.len(), 1);
    assert!(
        decisions[0].contains("must sit inside VerifyOpenMailLayer"),
        "{decisions:?}"
    );
}

#[tokio::test]
async fn the_handler_sees_its_reservation_and_the_duplicate_answer_is_configurable() {
    let app = Router::new()
        .route(
            "/webhooks",
            post(
                |Extension(reservation): Extension<Reservation>| async move {
                    assert_eq!(reservation.token().len(), 32);
                    assert_eq!(reservation.key(), &key("evt_custom"));
                    assert_eq!(reservation.key().inbox_id(), Some("inb_1"));
                    reservation.key().event_id().to_owned()
                },
            ),
        )
        .layer(DeduplicateLayer::in_memory().duplicate_response(|key| {
            let body = format!("seen {} of {:?}", key.event_id(), key.inbox_id());
            let mut response = http::Response::new(Bytes::from(body));
            *response.status_mut() = StatusCode::ACCEPTED;
            response
        }))
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
        r#"seen evt_custom of Some("inb_1")"#
    );
}

#[tokio::test]
async fn a_store_full_of_reservations_fails_closed_by_default_and_open_on_request() {
    use openmail_webhooks::dedup::OnStoreError;
    use tower::{ServiceBuilder, service_fn};

    for (policy, expected) in [
        (OnStoreError::FailClosed, StatusCode::SERVICE_UNAVAILABLE),
        (OnStoreError::FailOpen, StatusCode::OK),
    ] {
        let store = MemoryStore::with_capacity(1);
        store
            .reserve(
                Reservation::new(key("evt_in_flight")),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let log = DecisionLog::default();
        let hook_log = log.clone();
        let service = ServiceBuilder::new()
            .layer(VerifyOpenMailLayer::new(SECRET).unwrap())
            .layer(
                DeduplicateLayer::new(store)
                    .on_store_error(policy)
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
        let passed_through = policy == OnStoreError::FailOpen;
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

/// Finding B9: a flood of signed events must not evict a processed event's marker. Once
/// the store is full, a new event is refused with 503 (OpenMail retries it), the processed
/// event's replay is still a duplicate, and the refused event is processed once room
/// frees up: nothing processed twice, nothing lost.
#[tokio::test]
async fn a_full_store_refuses_new_events_and_forgets_no_processed_one() {
    const CAPACITY: usize = 40;
    let retention = Duration::from_secs(3);
    let handler = Handler::succeeding();
    let log = DecisionLog::default();
    let mut config = ReplicaConfig::new(
        Arc::new(MemoryStore::with_capacity(CAPACITY)),
        &handler,
        &log,
    );
    config.configure = |layer| layer.retention(Duration::from_secs(3));
    let replica = config.start().await;
    let sender = Sender::default();

    let processed = event_body("evt_processed");
    assert!(sender.deliver(&replica, &processed).await.processed());
    for index in 1..CAPACITY {
        let answer = sender
            .deliver(&replica, &event_body(&format!("evt_flood_{index}")))
            .await;
        assert!(answer.processed(), "{answer:?}");
    }
    let start = std::time::Instant::now();

    let refused = sender.deliver(&replica, &event_body("evt_new")).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused:?}"
    );
    assert_eq!(refused.retry_after.as_deref(), Some("30"));
    assert_eq!(handler.attempts("evt_new"), 0);
    assert_eq!(
        log.count("store_failed: reserve full passed_through=false", "evt_new"),
        1
    );
    // The replay of the first event, captured and sent again inside the window.
    let replay = sender.deliver(&replica, &processed).await;
    assert!(replay.duplicate(), "{replay:?}");
    assert_eq!(handler.processed("evt_processed"), 1);

    // OpenMail's retry, once the markers' retention is over, is processed.
    tokio::time::sleep(
        (start + retention + Duration::from_millis(300)) - std::time::Instant::now(),
    )
    .await;
    assert!(
        sender
            .deliver(&replica, &event_body("evt_new"))
            .await
            .processed()
    );
    assert_eq!(handler.processed("evt_new"), 1);
}

const HOSTILE_BODY: &str = r#"{"event":"message.received","event_id":"evt_1\nhandled message.received evt_B inbox=inb_b\u001b[2J","inbox_id":"inb\nx"}"#;

/// Values a signer chose reach the hook's `Display` escaped and cut short.
#[tokio::test]
async fn ids_in_decisions_are_escaped_and_cut_short() {
    let shown = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let app = Router::new()
        .route("/webhooks", post(|| async { "ok" }))
        .layer(DeduplicateLayer::in_memory().on_decision({
            let shown = Arc::clone(&shown);
            move |decision| {
                shown.lock().unwrap().push(decision.to_string());
                shown.lock().unwrap().push(format!("{decision:?}"));
            }
        }))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    // JSON escapes: the event_id holds a real newline and an ANSI escape.
    let hostile = HOSTILE_BODY.to_owned();
    let huge = event_body(&"e".repeat(1 << 20));
    for body in [hostile, huge] {
        for _ in 0..2 {
            let response = app.clone().oneshot(delivery(&body, None)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    }
    let shown = shown.lock().unwrap();
    assert_eq!(shown.len(), 12, "{shown:?}");
    for line in shown.iter() {
        assert!(!line.contains('\n') && !line.contains('\x1b'), "{line}");
        assert!(line.len() < 1024, "{} bytes", line.len());
    }
    assert!(
        shown[0].starts_with(r"evt_1\nhandled message.received"),
        "{}",
        shown[0]
    );
}

#[cfg(feature = "tracing")]
#[tokio::test(flavor = "current_thread")]
async fn decisions_go_to_tracing() {
    // What this test's requests log (they run on this thread), at DEBUG and above.
    let captured = crate::logs::capture(tracing_subscriber::filter::LevelFilter::DEBUG);

    let app = Router::new()
        .route("/webhooks", post(|| async { "ok" }))
        .layer(DeduplicateLayer::in_memory())
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    for body in [event_body("evt_traced"), HOSTILE_BODY.to_owned()] {
        for _ in 0..2 {
            app.clone().oneshot(delivery(&body, None)).await.unwrap();
        }
    }
    // And a wiring mistake: no verification in front.
    let unwired = Router::new()
        .route("/webhooks", post(|| async { "ok" }))
        .layer(DeduplicateLayer::in_memory());
    unwired
        .oneshot(delivery(&event_body("evt_unwired"), None))
        .await
        .unwrap();

    let output = captured.text();
    for expected in [
        "DEBUG openmail_webhooks::dedup",
        "evt_traced (inbox inb_1): first delivery, reserved",
        "evt_traced (inbox inb_1): processed, marked done",
        "INFO openmail_webhooks::dedup",
        "evt_traced (inbox inb_1): duplicate of a processed event",
        "event_id=evt_traced inbox_id=inb_1",
        r"event_id=evt_1\nhandled message.received evt_B inbox=inb_b\u{1b}[2J inbox_id=inb\nx",
        "ERROR openmail_webhooks::dedup",
        "DeduplicateLayer must sit inside VerifyOpenMailLayer",
    ] {
        assert!(output.contains(expected), "{expected:?} not in {output}");
    }
    // One line per decision, whatever the ids held.
    assert_eq!(output.lines().count(), 7, "{output}");
    assert!(!output.contains('\x1b'), "{output}");
}

/// A request as `VerifyOpenMailLayer` hands it on, with its `Delivery`: the only way to
/// get one, since only the crate's verification makes it.
async fn verified_request(body: &str) -> http::Request<openmail_webhooks::body::VerifiedBody> {
    use std::sync::Mutex;
    use tower::{Layer, service_fn};

    let captured = Arc::new(Mutex::new(None));
    let capture = VerifyOpenMailLayer::new(SECRET).unwrap().layer(service_fn({
        let captured = Arc::clone(&captured);
        move |request: http::Request<_>| {
            *captured.lock().unwrap() = Some(request);
            async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
            }
        }
    }));
    let response = capture.oneshot(delivery(body, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    captured.lock().unwrap().take().unwrap()
}

#[tokio::test]
async fn a_response_future_polled_after_it_answered_answers_500_instead_of_hanging() {
    use std::future::{Future, poll_fn};
    use tower::{Layer, Service, service_fn};

    let mut service = DeduplicateLayer::in_memory().layer(service_fn(|_request| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
            b"handled",
        ))))
    }));
    // Through every stage: reserve, call, mark done; then a duplicate; then unverified.
    let requests = [
        verified_request(&event_body("evt_polled")).await,
        verified_request(&event_body("evt_polled")).await,
        http::Request::new(openmail_webhooks::body::VerifiedBody::default()),
    ];
    for (request, status) in requests.into_iter().zip([
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::INTERNAL_SERVER_ERROR,
    ]) {
        let mut future = Box::pin(service.call(request));
        let answer = future.as_mut().await.unwrap();
        assert_eq!(answer.status(), status);
        let again = poll_fn(|cx| future.as_mut().poll(cx)).await.unwrap();
        assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = again.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "response future polled after completion");
    }
}
