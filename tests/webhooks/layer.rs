//! The layer driven through `tower::ServiceExt::oneshot`, with scripted bodies: the full
//! rejection table, body handling, extensions and readiness.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{BODY, Frames, NOW, SECRET, Step, read, signed};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::verify::Rejection;
use openmail_webhooks::{Delivery, Event, VerifyError, VerifyOpenMailLayer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// What the inner service saw, echoed back as text.
async fn echo(request: Request<VerifiedBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let delivery = request.extensions().get::<Delivery>().cloned();
    let event = request.extensions().get::<Arc<Event>>().cloned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let summary = match delivery {
        Some(delivery) => {
            assert_eq!(
                delivery.body(),
                &body,
                "extension and body hold the same bytes"
            );
            format!(
                "ok ts={} secret={} header={:?} event={:?} id={:?} len={}",
                delivery.timestamp().unwrap(),
                delivery.secret_index().unwrap(),
                delivery.event_id_header(),
                event.as_ref().map(|event| event.event_type().to_owned()),
                event
                    .as_ref()
                    .and_then(|event| event.event_id().map(str::to_owned)),
                body.len()
            )
        }
        None => "no delivery".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(summary))))
}

fn layer() -> VerifyOpenMailLayer {
    VerifyOpenMailLayer::new(SECRET).unwrap().clock(|| NOW)
}

async fn send(layer: VerifyOpenMailLayer, request: Request<Frames>) -> (StatusCode, String) {
    let service = layer.layer(tower::service_fn(echo));
    read(service.oneshot(request).await.unwrap()).await
}

fn with_headers(
    mut request: Request<Frames>,
    edit: impl FnOnce(&mut http::HeaderMap),
) -> Request<Frames> {
    edit(request.headers_mut());
    request
}

#[tokio::test]
async fn a_genuine_delivery_reaches_the_inner_service_with_its_extensions() {
    let (status, text) = send(layer(), signed(SECRET, NOW, BODY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        text,
        format!(
            "ok ts={NOW} secret=0 header=Some(\"evt_header\") event=Some(\"message.received\") \
             id=Some(\"evt_1\") len={}",
            BODY.len()
        )
    );
}

#[tokio::test]
async fn the_rejection_table() {
    let good = signed(SECRET, NOW, BODY);
    let cases: Vec<(&str, Request<Frames>, StatusCode, &str)> = vec![
        (
            "tampered body",
            {
                let (parts, _) = signed(SECRET, NOW, BODY).into_parts();
                Request::from_parts(parts, Frames::once(Bytes::from_static(br#"{"event":"x"}"#)))
            },
            StatusCode::BAD_REQUEST,
            "signature mismatch",
        ),
        (
            "wrong secret",
            signed("whsec_wrong", NOW, BODY),
            StatusCode::BAD_REQUEST,
            "signature mismatch",
        ),
        (
            "stale",
            signed(SECRET, NOW - 301, BODY),
            StatusCode::BAD_REQUEST,
            "X-Timestamp outside tolerance",
        ),
        (
            "future",
            signed(SECRET, NOW + 301, BODY),
            StatusCode::BAD_REQUEST,
            "X-Timestamp outside tolerance",
        ),
        (
            "missing timestamp",
            with_headers(signed(SECRET, NOW, BODY), |headers| {
                headers.remove("x-timestamp");
            }),
            StatusCode::BAD_REQUEST,
            "missing X-Timestamp header",
        ),
        (
            "missing signature",
            with_headers(signed(SECRET, NOW, BODY), |headers| {
                headers.remove("x-signature");
            }),
            StatusCode::BAD_REQUEST,
            "missing X-Signature header",
        ),
        (
            "prefixed signature",
            with_headers(signed(SECRET, NOW, BODY), |headers| {
                let value = format!("sha256={}", headers["x-signature"].to_str().unwrap());
                headers.insert("x-signature", value.parse().unwrap());
            }),
            StatusCode::BAD_REQUEST,
            "malformed X-Signature",
        ),
        (
            "non-numeric timestamp",
            with_headers(signed(SECRET, NOW, BODY), |headers| {
                headers.insert("x-timestamp", "yesterday".parse().unwrap());
            }),
            StatusCode::BAD_REQUEST,
            "malformed X-Timestamp",
        ),
        (
            "two signatures",
            with_headers(good, |headers| {
                let value = headers["x-signature"].clone();
                headers.append("x-signature", value);
            }),
            StatusCode::BAD_REQUEST,
            "duplicate signature header",
        ),
    ];
    for (name, request, status, message) in cases {
        assert_eq!(
            send(layer(), request).await,
            (status, message.to_owned()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_tolerance_boundary_is_inclusive_both_ways() {
    for timestamp in [NOW - 300, NOW + 300] {
        let (status, _) = send(layer(), signed(SECRET, timestamp, BODY)).await;
        assert_eq!(status, StatusCode::OK, "{timestamp}");
    }
    let narrow = layer().tolerance(Duration::from_secs(10));
    assert_eq!(
        send(narrow.clone(), signed(SECRET, NOW - 10, BODY)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(narrow, signed(SECRET, NOW - 11, BODY)).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn header_rejections_never_read_the_body() {
    let request = signed(SECRET, NOW - 1_000, BODY);
    let polls = request.body().polls();
    assert_eq!(send(layer(), request).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(polls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn multi_frame_and_chunked_bodies_verify() {
    for size in [1, 7, 16, 1024] {
        let (parts, _) = signed(SECRET, NOW, BODY).into_parts();
        let request = Request::from_parts(parts.clone(), Frames::chunked(BODY, size));
        assert_eq!(
            send(layer(), request).await.0,
            StatusCode::OK,
            "chunked by {size}"
        );
        let exact = Frames::chunked(BODY, size).exact(BODY.len() as u64);
        let request = Request::from_parts(parts, exact);
        assert_eq!(
            send(layer(), request).await.0,
            StatusCode::OK,
            "sized, by {size}"
        );
    }
}

#[tokio::test]
async fn non_utf8_bodies_verify_when_parsing_is_off() {
    let body = b"\xff\x00\x80 raw bytes";
    let (status, text) = send(layer().parse_events(false), signed(SECRET, NOW, body)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("event=None"), "{text}");
    assert!(text.ends_with(&format!("len={}", body.len())), "{text}");
}

#[tokio::test]
async fn a_body_that_fails_mid_stream_is_a_400() {
    let (parts, _) = signed(SECRET, NOW, BODY).into_parts();
    let body = Frames::new([
        Step::Data(Bytes::copy_from_slice(&BODY[..10])),
        Step::Error("connection reset"),
    ]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook = {
        let seen = Arc::clone(&seen);
        move |rejection: &Rejection| {
            use std::error::Error as _;
            let cause = rejection.source().map(ToString::to_string);
            seen.lock().unwrap().push((rejection.to_string(), cause));
        }
    };
    let (status, text) = send(layer().on_rejection(hook), Request::from_parts(parts, body)).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_REQUEST, "request body could not be read")
    );
    // The cause is the error's source, not repeated in its Display.
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(
            "the request body failed while streaming".to_owned(),
            Some("connection reset".to_owned())
        )]
    );
}

#[tokio::test]
async fn the_limit_exactly_hit_passes_and_one_byte_more_is_a_413() {
    let limit = BODY.len();
    let (status, _) = send(layer().body_limit(limit), signed(SECRET, NOW, BODY)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(layer().body_limit(limit - 1), signed(SECRET, NOW, BODY)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed, with no length given in advance: refused at the frame that crosses.
    let (parts, _) = signed(SECRET, NOW, BODY).into_parts();
    let mut parts = parts;
    parts.headers.remove("content-length");
    let body = Frames::chunked(BODY, 8);
    let polls = body.polls();
    let request = Request::from_parts(parts, body);
    let (status, text) = send(layer().body_limit(20), request).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload too large")
    );
    assert_eq!(
        polls.load(Ordering::SeqCst),
        3,
        "8 + 8 + 8 bytes crosses 20 at the third frame"
    );
}

#[tokio::test]
async fn content_length_over_the_limit_is_refused_before_reading() {
    let request = with_headers(signed(SECRET, NOW, BODY), |headers| {
        headers.insert("content-length", "5000000".parse().unwrap());
    });
    let polls = request.body().polls();
    let (status, _) = send(layer(), request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(polls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_content_length_that_understates_the_body_does_not_beat_the_limit() {
    // The header claims 10 bytes; the body streams 80. The limit still applies to what
    // arrives, and the signature still covers every byte.
    let (mut parts, _) = signed(SECRET, NOW, BODY).into_parts();
    parts
        .headers
        .insert("content-length", "10".parse().unwrap());
    let request = Request::from_parts(parts.clone(), Frames::chunked(BODY, 16));
    assert_eq!(
        send(layer().body_limit(32), request).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let request = Request::from_parts(parts, Frames::chunked(BODY, 16));
    assert_eq!(send(layer(), request).await.0, StatusCode::OK);
}

#[tokio::test]
async fn uppercase_hex_is_accepted() {
    let request = with_headers(signed(SECRET, NOW, BODY), |headers| {
        let upper = headers["x-signature"]
            .to_str()
            .unwrap()
            .to_ascii_uppercase();
        headers.insert("x-signature", upper.parse().unwrap());
    });
    assert_eq!(send(layer(), request).await.0, StatusCode::OK);
}

#[tokio::test]
async fn rotation_accepts_both_secrets_and_says_which_matched() {
    let rotating = VerifyOpenMailLayer::with_secrets(["whsec_new", "whsec_old"])
        .unwrap()
        .clock(|| NOW);
    let (_, new) = send(rotating.clone(), signed("whsec_new", NOW, BODY)).await;
    let (_, old) = send(rotating.clone(), signed("whsec_old", NOW, BODY)).await;
    let (status, _) = send(rotating, signed("whsec_retired", NOW, BODY)).await;
    assert!(new.contains("secret=0"), "{new}");
    assert!(old.contains("secret=1"), "{old}");
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_hook_sees_the_precise_reason_and_the_response_can_be_replaced() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = layer()
        .on_rejection({
            let seen = Arc::clone(&seen);
            move |rejection| {
                seen.lock()
                    .unwrap()
                    .push((rejection.verify_error().cloned(), rejection.to_string()))
            }
        })
        .rejection_response(|rejection| {
            let mut response =
                Response::new(Bytes::from(format!("no: {}", rejection.client_message())));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        });
    let (status, text) = send(layer, signed(SECRET, NOW - 412, BODY)).await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::UNAUTHORIZED,
            "no: X-Timestamp outside tolerance"
        )
    );
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen[0].0,
        Some(VerifyError::TimestampOutsideTolerance {
            offset: 412,
            tolerance: 300
        })
    );
    assert!(
        seen[0]
            .1
            .starts_with("X-Timestamp is 412 s old (tolerance 300 s)"),
        "{}",
        seen[0].1
    );
}

#[tokio::test]
async fn a_stalled_upload_does_not_hold_the_inner_services_capacity() {
    // The inner service admits one request at a time. A forged or slow upload that never
    // finishes must not take that one slot: the layer only drives the inner service's
    // readiness once the body is verified. `ConcurrencyLimit` also panics if it is called
    // without having been polled ready, which guards the clone-in-call trap.
    let service = ServiceBuilder::new()
        .layer(layer())
        .concurrency_limit(1)
        .service_fn(echo);

    let (parts, _) = signed(SECRET, NOW, BODY).into_parts();
    let stalled = Frames::new([
        Step::Data(Bytes::copy_from_slice(&BODY[..5])),
        Step::Pending,
    ]);
    let mut first = service.clone();
    let stalled = tokio::spawn(async move {
        ServiceExt::<Request<Frames>>::ready(&mut first)
            .await
            .unwrap();
        first.call(Request::from_parts(parts, stalled)).await
    });

    for _ in 0..3 {
        let genuine = service.clone().oneshot(signed(SECRET, NOW, BODY));
        let response = tokio::time::timeout(Duration::from_secs(20), genuine)
            .await
            .expect("a genuine delivery must not wait behind a stalled upload")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(!stalled.is_finished());
    stalled.abort();
}

#[tokio::test]
async fn the_inner_service_is_called_once_per_verified_request() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |request: Request<VerifiedBody>| {
            calls.fetch_add(1, Ordering::SeqCst);
            echo(request)
        })
    };
    let service = layer().layer(counting);
    for request in [
        signed(SECRET, NOW, BODY),
        signed("whsec_wrong", NOW, BODY),
        signed(SECRET, NOW - 999, BODY),
        signed(SECRET, NOW, BODY),
    ] {
        let _ = service.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
