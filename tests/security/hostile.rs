//! Hostile clients against a real hyper server on loopback: stalled, aborted and lying
//! uploads written byte by byte over raw TCP, odd headers, many deliveries at once, and
//! a slowloris with a flood of near-limit forged bodies against the example receiver's
//! stack, with the process's heap measured while it lasts.
//!
//! The tests here run one at a time (see [`serial`]) so that the heap measurement sees only
//! the attack it is measuring.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Frames, SECRET, Step, unix_now};
use crate::{receiver, support};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::verify::Rejection;
use openmail_webhooks::{Delivery, Event, VerifyOpenMailLayer, sign};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::wire::read_text_response as read_response;
use tower::{Layer, ServiceBuilder, ServiceExt};

// ---------------------------------------------------------------------------------------
// Heap measurement.

/// The system allocator, counting the bytes live now and the most live since the last
/// [`reset_peak`]. It counts this whole test process, server and clients alike, which is
/// why the clients below send from shared buffers and the tests run one at a time.
use crate::heap::{MIB, peak, reset_peak, serial, vm_hwm};

// ---------------------------------------------------------------------------------------
// A hyper server with the layer, and what it saw.

#[derive(Default)]
struct Seen {
    /// The body's `event_id` of every request the inner service received.
    events: Mutex<Vec<String>>,
    /// `X-Event-Id` as the inner service saw it, `None` when it was not visible ASCII.
    event_id_headers: Mutex<Vec<Option<String>>>,
    /// The status and client message of every rejection.
    rejections: Mutex<Vec<(u16, &'static str)>>,
}

impl Seen {
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    fn rejections(&self) -> Vec<(u16, &'static str)> {
        self.rejections.lock().unwrap().clone()
    }
}

/// Serves `layer` around a handler that records what it receives, with hyper's HTTP/1.1
/// server on an ephemeral loopback port.
async fn start(layer: VerifyOpenMailLayer) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let hook = Arc::clone(&seen);
    let layer = layer.on_rejection(move |rejection: &Rejection| {
        hook.rejections
            .lock()
            .unwrap()
            .push((rejection.status().as_u16(), rejection.client_message()));
    });
    let handler_seen = Arc::clone(&seen);
    let service =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |request: Request<VerifiedBody>| {
                let seen = Arc::clone(&handler_seen);
                async move {
                    let event = request.extensions().get::<Arc<Event>>().cloned().unwrap();
                    let delivery = request.extensions().get::<Delivery>().cloned().unwrap();
                    let id = event.event_id().unwrap_or("-").to_owned();
                    seen.events.lock().unwrap().push(id.clone());
                    seen.event_id_headers
                        .lock()
                        .unwrap()
                        .push(delivery.event_id_header().map(str::to_owned));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "verified {id}"
                    )))))
                }
            });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                // A connection that a client breaks ends here with an error; that is the
                // client's doing and the server goes on.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn event_body(id: &str) -> Vec<u8> {
    format!(r#"{{"event":"message.received","event_id":"{id}","inbox_id":"inb_hostile"}}"#)
        .into_bytes()
}

/// A request head written by hand, so that anything at all can go on the wire.
fn head(headers: &[(&str, &[u8])]) -> Vec<u8> {
    let mut head = b"POST /webhooks HTTP/1.1\r\nhost: localhost\r\n".to_vec();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The head of a delivery signed now over `signed_body`, declaring `content_length`.
fn signed_head(signed_body: &[u8], content_length: usize, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let timestamp = unix_now().to_string();
    let signature = sign(SECRET, &timestamp, signed_body);
    let length = content_length.to_string();
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/json"),
        ("x-timestamp", timestamp.as_bytes()),
        ("x-signature", signature.as_bytes()),
        ("content-length", length.as_bytes()),
    ];
    headers.extend_from_slice(extra);
    head(&headers)
}

/// Writes `bytes` on a new connection and reads one response.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_response(&mut stream).await
}

/// Whether a response has arrived on `stream` yet, without waiting for one.
async fn answered(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(1), stream.peek(&mut byte)).await,
        Ok(Ok(_))
    )
}

// ---------------------------------------------------------------------------------------
// Slow, aborted and lying uploads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_stalled_uploads_do_not_delay_a_genuine_delivery() {
    let _serial = serial().await;
    // A deadline far beyond the test, so the stalled uploads stay stalled throughout.
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .body_deadline(Duration::from_secs(600));
    let (addr, seen) = start(layer).await;

    let body = event_body("evt_stalled");
    let mut stalled = Vec::new();
    for _ in 0..96 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(&signed_head(&body, body.len(), &[]))
            .await
            .unwrap();
        stream.write_all(&body[..body.len() / 2]).await.unwrap();
        stalled.push(stream);
    }

    let genuine = event_body("evt_genuine");
    let mut request = signed_head(&genuine, genuine.len(), &[]);
    request.extend_from_slice(&genuine);
    let response = exchange(addr, &request).await;
    assert_eq!(
        response,
        Some((200, "verified evt_genuine".to_owned())),
        "the genuine delivery is answered"
    );
    // ...while every stalled upload is still waiting for its body, unanswered.
    for stream in &mut stalled {
        assert!(!answered(stream).await, "a stalled upload was answered");
    }
    assert_eq!(seen.events(), ["evt_genuine"]);
    assert!(seen.rejections().is_empty());
}

#[tokio::test]
async fn aborted_uploads_are_refused_and_the_server_carries_on() {
    let _serial = serial().await;
    let (addr, seen) = start(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let body = event_body("evt_aborted");
    for _ in 0..32 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(&signed_head(&body, body.len(), &[]))
            .await
            .unwrap();
        stream.write_all(&body[..10]).await.unwrap();
        // Gone mid-body, with no goodbye.
        drop(stream);
    }
    // Each abort reaches the layer as a failed body stream; give the server a moment.
    let started = Instant::now();
    while seen.rejections().len() < 32 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen.rejections(),
        vec![(400, "request body could not be read"); 32]
    );

    let genuine = event_body("evt_after");
    let mut request = signed_head(&genuine, genuine.len(), &[]);
    request.extend_from_slice(&genuine);
    assert_eq!(
        exchange(addr, &request).await,
        Some((200, "verified evt_after".to_owned()))
    );
    assert_eq!(seen.events(), ["evt_after"]);
}

#[tokio::test]
async fn a_content_length_longer_than_the_body_is_refused() {
    let _serial = serial().await;
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .body_deadline(Duration::from_millis(500));
    let (addr, seen) = start(layer).await;
    let body = event_body("evt_short");

    // The client stops sending and closes its side: the body ends early.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&signed_head(&body, body.len() + 10, &[]))
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        Some((400, "request body could not be read".to_owned()))
    );

    // The client stops sending and keeps the connection open: the deadline ends it.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&signed_head(&body, body.len() + 10, &[]))
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        Some((408, "request body timed out".to_owned()))
    );
    assert!(seen.events().is_empty());
}

#[tokio::test]
async fn a_content_length_shorter_than_the_body_verifies_only_what_it_declares() {
    let _serial = serial().await;
    let (addr, seen) = start(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let body = event_body("evt_long");
    let extra = b"EXTRA BYTES THAT ARE NOT A REQUEST\r\n\r\n";

    // Signed over the whole body but declaring less: the layer checks exactly the
    // declared bytes, which do not match.
    let mut request = signed_head(&body, body.len() - 5, &[]);
    request.extend_from_slice(&body);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        Some((400, "signature mismatch".to_owned()))
    );

    // Signed over exactly the declared bytes, with garbage after them: the delivery
    // verifies, and hyper refuses the garbage as a malformed next request, never as a 5xx.
    let mut request = signed_head(&body, body.len(), &[]);
    request.extend_from_slice(&body);
    request.extend_from_slice(extra);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        Some((200, "verified evt_long".to_owned()))
    );
    if let Some((status, _)) = read_response(&mut stream).await {
        assert!((400..500).contains(&status), "{status}");
    }
    assert_eq!(seen.events(), ["evt_long"]);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_a_413_however_long_it_goes_on() {
    let _serial = serial().await;
    let limit = 64 * 1024;
    let layer = VerifyOpenMailLayer::new(SECRET).unwrap().body_limit(limit);
    let (addr, seen) = start(layer).await;
    let timestamp = unix_now().to_string();
    let signature = sign(SECRET, &timestamp, b"whatever");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&head(&[
            ("x-timestamp", timestamp.as_bytes()),
            ("x-signature", signature.as_bytes()),
            ("transfer-encoding", b"chunked"),
        ]))
        .await
        .unwrap();
    // 8 KiB chunks, up to 16 times the limit: the server answers long before the end,
    // and may then close, which makes further writes fail.
    let chunk = vec![b'x'; 8 * 1024];
    for _ in 0..(16 * limit / chunk.len()) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    assert_eq!(
        read_response(&mut stream).await,
        Some((413, "payload too large".to_owned()))
    );
    assert_eq!(seen.rejections(), [(413, "payload too large")]);
}

// ---------------------------------------------------------------------------------------
// Odd headers.

#[tokio::test]
async fn header_values_with_non_ascii_bytes_are_refused_or_ignored_never_a_5xx() {
    let _serial = serial().await;
    let (addr, seen) = start(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let body = event_body("evt_bytes");
    let length = body.len().to_string();
    let timestamp = unix_now().to_string();
    let signature = sign(SECRET, &timestamp, &body);

    let mut bad_signature = signature.clone().into_bytes();
    bad_signature[10] = 0xff;
    let mut non_ascii_timestamp = timestamp.clone().into_bytes();
    non_ascii_timestamp.push(0xe9);

    type Headers<'a> = Vec<(&'a str, &'a [u8])>;
    let cases: Vec<(Headers, u16, &str)> = vec![
        (
            vec![
                ("x-timestamp", &non_ascii_timestamp),
                ("x-signature", signature.as_bytes()),
            ],
            400,
            "malformed X-Timestamp",
        ),
        (
            vec![
                ("x-timestamp", timestamp.as_bytes()),
                ("x-signature", &bad_signature),
            ],
            400,
            "malformed X-Signature",
        ),
        (
            // Unsigned headers may hold anything; the delivery still verifies.
            vec![
                ("x-timestamp", timestamp.as_bytes()),
                ("x-signature", signature.as_bytes()),
                ("x-event-id", b"\xc3\xa9vt_\xff"),
                ("content-type", b"application/json; charset=\xe9"),
            ],
            200,
            "verified evt_bytes",
        ),
    ];
    for (headers, status, message) in cases {
        let mut headers = headers;
        headers.push(("content-length", length.as_bytes()));
        let mut request = head(&headers);
        request.extend_from_slice(&body);
        assert_eq!(
            exchange(addr, &request).await,
            Some((status, message.to_owned())),
            "{headers:?}"
        );
    }
    assert_eq!(seen.events(), ["evt_bytes"]);
    // A non-ASCII X-Event-Id is not handed on as text.
    assert_eq!(*seen.event_id_headers.lock().unwrap(), [None]);
}

#[tokio::test]
async fn a_four_kib_signature_header_is_malformed() {
    let _serial = serial().await;
    let (addr, seen) = start(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let body = event_body("evt_big_header");
    let timestamp = unix_now().to_string();
    // The genuine signature, followed by filler up to 4 KiB.
    let mut signature = sign(SECRET, &timestamp, &body).into_bytes();
    signature.resize(4096, b'0');
    let length = body.len().to_string();
    let mut request = head(&[
        ("x-timestamp", timestamp.as_bytes()),
        ("x-signature", &signature),
        ("content-length", length.as_bytes()),
    ]);
    request.extend_from_slice(&body);
    assert_eq!(
        exchange(addr, &request).await,
        Some((400, "malformed X-Signature".to_owned()))
    );
    assert!(seen.events().is_empty());
}

/// The decision: `X-Signature` (and `X-Timestamp`) must appear exactly once. A second copy
/// makes the request ambiguous, and it is refused whatever the copies hold, even when one
/// of them, or both, are genuine.
#[tokio::test]
async fn two_signature_headers_are_refused_as_ambiguous() {
    let _serial = serial().await;
    let (addr, seen) = start(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let body = event_body("evt_twice");
    let length = body.len().to_string();
    let timestamp = unix_now().to_string();
    let genuine = sign(SECRET, &timestamp, &body);
    let forged = sign("whsec_forger", &timestamp, &body);
    let pairs: [(&str, &str); 3] = [
        (&genuine, &genuine),
        (&genuine, &forged),
        (&forged, &genuine),
    ];
    for (first, second) in pairs {
        let mut request = head(&[
            ("x-timestamp", timestamp.as_bytes()),
            ("x-signature", first.as_bytes()),
            ("x-signature", second.as_bytes()),
            ("content-length", length.as_bytes()),
        ]);
        request.extend_from_slice(&body);
        assert_eq!(
            exchange(addr, &request).await,
            Some((400, "duplicate signature header".to_owned()))
        );
    }
    let mut request = head(&[
        ("x-timestamp", timestamp.as_bytes()),
        ("x-timestamp", timestamp.as_bytes()),
        ("x-signature", genuine.as_bytes()),
        ("content-length", length.as_bytes()),
    ]);
    request.extend_from_slice(&body);
    assert_eq!(
        exchange(addr, &request).await,
        Some((400, "duplicate signature header".to_owned()))
    );
    assert!(seen.events().is_empty());
}

// ---------------------------------------------------------------------------------------
// Load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_deliveries_over_sixteen_connections_all_verify() {
    let _serial = serial().await;
    let (addr, seen) = start(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let mut connections = Vec::new();
    for connection in 0..16 {
        connections.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(driver);
            let mut answers = Vec::new();
            // 1,000 = 16 × 62 + 8: the first eight connections carry one more.
            let count = if connection < 8 { 63 } else { 62 };
            for index in 0..count {
                let id = format!("evt_{connection}_{index}");
                let body = event_body(&id);
                let timestamp = unix_now().to_string();
                let request = Request::post("/webhooks")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .header("x-timestamp", &timestamp)
                    .header("x-signature", sign(SECRET, &timestamp, &body))
                    .header("x-event-id", &id)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                let status = response.status();
                let text = response.into_body().collect().await.unwrap().to_bytes();
                answers.push((id, status, text));
            }
            answers
        }));
    }
    let mut sent = HashSet::new();
    for connection in connections {
        for (id, status, text) in connection.await.unwrap() {
            assert_eq!(status, StatusCode::OK, "{id}");
            assert_eq!(text, format!("verified {id}"));
            sent.insert(id);
        }
    }
    assert_eq!(sent.len(), 1000);
    let received: HashSet<String> = seen.events().into_iter().collect();
    assert_eq!(
        received, sent,
        "every delivery reached the handler exactly once"
    );
    assert_eq!(seen.events().len(), 1000);
    // X-Event-Id arrived with each, as sent.
    let headers = seen.event_id_headers.lock().unwrap();
    assert!(headers.iter().all(Option::is_some));
    assert!(seen.rejections().is_empty());
}

// ---------------------------------------------------------------------------------------
// The body deadline.

/// An inner service that is never reached in these tests.
async fn unreachable_handler(
    _: Request<VerifiedBody>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"reached"))))
}

#[tokio::test]
async fn the_body_deadline_answers_408_for_a_stalled_body() {
    let _serial = serial().await;
    let body = event_body("evt_stall");
    let request = {
        let (parts, _) = support::signed(SECRET, unix_now(), &body).into_parts();
        Request::from_parts(
            parts,
            Frames::new([
                Step::Data(Bytes::copy_from_slice(&body[..8])),
                Step::Pending,
            ]),
        )
    };
    let rejections = Arc::new(Mutex::new(Vec::new()));
    let hook = Arc::clone(&rejections);
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .body_deadline(Duration::from_millis(200))
        .on_rejection(move |rejection| hook.lock().unwrap().push(rejection.to_string()));
    let service = layer.layer(tower::service_fn(unreachable_handler));
    let response = tokio::time::timeout(Duration::from_secs(30), service.oneshot(request))
        .await
        .expect("the deadline ends a body that never comes")
        .unwrap();
    assert_eq!(
        support::read(response).await,
        (StatusCode::REQUEST_TIMEOUT, "request body timed out".into())
    );
    let rejections = rejections.lock().unwrap();
    assert_eq!(rejections.len(), 1);
    assert!(
        rejections[0]
            .starts_with("the body did not arrive in time (8 bytes received; deadline 200 ms"),
        "{rejections:?}"
    );
}

#[tokio::test]
async fn a_body_within_the_deadline_verifies() {
    let _serial = serial().await;
    let body = event_body("evt_in_time");
    let request = support::signed(SECRET, unix_now(), &body);
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .body_deadline(Duration::from_secs(5));
    let service = layer.layer(tower::service_fn(unreachable_handler));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(
        support::read(response).await,
        (StatusCode::OK, "reached".into())
    );
}

/// A trickle of bytes does not reset the deadline: it covers the whole body.
#[tokio::test]
async fn a_slowloris_trickle_gets_408_over_real_http() {
    let _serial = serial().await;
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .body_deadline(Duration::from_millis(600));
    let (addr, seen) = start(layer).await;
    let body = event_body("evt_trickle");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&signed_head(&body, body.len(), &[]))
        .await
        .unwrap();
    let mut answer = None;
    let mut sent = 0;
    for byte in &body {
        if stream.write_all(&[*byte]).await.is_err() || answered(&mut stream).await {
            answer = read_response(&mut stream).await;
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer, Some((408, "request body timed out".to_owned())));
    // It was cut off by the deadline, not by the end of the body: counted in bytes, not
    // in wall-clock time, which a busy machine stretches.
    assert!(sent < body.len(), "{sent} of {} bytes sent", body.len());
    assert_eq!(seen.rejections(), [(408, "request body timed out")]);
}

/// tower-http's body deadline, placed outside the layer, bounds the time too, but its
/// error reaches the layer as an ordinary body failure: `400`, not `408`. That is why the
/// layer has its own deadline.
#[tokio::test]
async fn tower_https_body_deadline_composes_but_answers_400() {
    let _serial = serial().await;
    let body = event_body("evt_tower_http");
    let request = {
        let (parts, _) = support::signed(SECRET, unix_now(), &body).into_parts();
        Request::from_parts(
            parts,
            Frames::new([
                Step::Data(Bytes::copy_from_slice(&body[..8])),
                Step::Pending,
            ]),
        )
    };
    let service = ServiceBuilder::new()
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_millis(200),
        ))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap())
        .service_fn(unreachable_handler);
    let response = tokio::time::timeout(Duration::from_secs(30), service.oneshot(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        support::read(response).await,
        (
            StatusCode::BAD_REQUEST,
            "request body could not be read".into()
        )
    );
}

// ---------------------------------------------------------------------------------------
// The example receiver under attack.

/// Sends the head of a delivery that declares `declared` bytes, then trickles one byte
/// every `every` until the server answers or closes. Returns the answer.
async fn slowloris(addr: SocketAddr, declared: usize, every: Duration) -> Option<(u16, String)> {
    let timestamp = unix_now().to_string();
    // Well-formed and fresh, so the layer has to read the body to find out.
    let signature = sign("whsec_slowloris", &timestamp, b"");
    let length = declared.to_string();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(&head(&[
            ("x-timestamp", timestamp.as_bytes()),
            ("x-signature", signature.as_bytes()),
            ("content-length", length.as_bytes()),
        ]))
        .await
        .ok()?;
    // Two bytes at once, so the layer sees a second frame and reserves the declared length:
    // the worst case for memory.
    let _ = stream.write_all(b"{\"").await;
    loop {
        tokio::time::sleep(every).await;
        if answered(&mut stream).await || stream.write_all(b" ").await.is_err() {
            return read_response(&mut stream).await;
        }
    }
}

/// Sends a near-limit body whose signature is well-formed, fresh and wrong, from a buffer
/// shared by every sender so that the clients add nothing to the heap.
async fn forged(addr: SocketAddr, body: Arc<Vec<u8>>) -> Option<(u16, String)> {
    let timestamp = unix_now().to_string();
    let signature = sign("whsec_forger", &timestamp, b"");
    let length = body.len().to_string();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(&head(&[
            ("x-timestamp", timestamp.as_bytes()),
            ("x-signature", signature.as_bytes()),
            ("content-length", length.as_bytes()),
        ]))
        .await
        .ok()?;
    stream.write_all(&body).await.ok()?;
    read_response(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_survives_a_slowloris_and_a_forged_flood_with_bounded_memory() {
    let _serial = serial().await;
    const LIMIT: usize = MIB;
    const SLOWLORIS: usize = 96;
    const FLOOD: usize = 192;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = VerifyOpenMailLayer::new(SECRET).unwrap().body_limit(LIMIT);
    tokio::spawn(async move { receiver::serve(listener, receiver::app(layer)).await });
    let flood_body = Arc::new(vec![b' '; LIMIT - 1024]);

    let baseline = reset_peak();
    let started = Instant::now();

    // More trickling uploads than the receiver reads at once, each declaring a near-limit
    // body.
    let slow: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(slowloris(addr, LIMIT - 1, Duration::from_millis(500))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A flood of near-limit forgeries, all at once.
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| tokio::spawn(forged(addr, Arc::clone(&flood_body))))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A genuine delivery in the middle of it all.
    let genuine = event_body("evt_survivor");
    let timestamp = unix_now().to_string();
    let mut request = head(&[
        ("content-type", b"application/json"),
        ("x-timestamp", timestamp.as_bytes()),
        ("x-signature", sign(SECRET, &timestamp, &genuine).as_bytes()),
        ("content-length", genuine.len().to_string().as_bytes()),
    ]);
    request.extend_from_slice(&genuine);
    let answer = exchange(addr, &request).await;
    let genuine_after = started.elapsed();

    let mut flood_statuses = Vec::new();
    for task in flood {
        flood_statuses.push(task.await.unwrap().map(|(status, _)| status));
    }
    let mut slow_statuses = Vec::new();
    for task in slow {
        slow_statuses.push(task.await.unwrap().map(|(status, _)| status));
    }
    let peak_growth = peak().saturating_sub(baseline);
    eprintln!(
        "genuine answered after {genuine_after:?}; heap peak grew by {:.1} MiB; {}; \
         whole attack {:?}",
        peak_growth as f64 / MIB as f64,
        vm_hwm(),
        started.elapsed()
    );

    let (status, text) = answer.expect("the genuine delivery is answered");
    assert_eq!(status, 200, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["event_id"], "evt_survivor");
    // Every forgery was read and refused (400), or turned away while the budget was full
    // (503, which OpenMail would retry); none crashed the server.
    assert!(
        flood_statuses
            .iter()
            .all(|status| matches!(status, Some(400 | 503))),
        "{flood_statuses:?}"
    );
    // Every trickling upload was cut off by the minimum rate, or never admitted.
    assert!(
        slow_statuses
            .iter()
            .all(|status| matches!(status, Some(408 | 503))),
        "{slow_statuses:?}"
    );
    // The bound: the memory budget for bodies, plus each open connection's HTTP/1.1 read
    // buffer at its largest, plus a margin for the runtime and the clients. Without the
    // budget the flood alone could hold FLOOD × LIMIT = 192 MiB.
    let connections = SLOWLORIS + FLOOD + 1;
    let bound = receiver::MEMORY_BUDGET + connections * 64 * 1024 + 24 * MIB;
    assert!(
        peak_growth <= bound,
        "the heap grew by {peak_growth} bytes, over the {bound}-byte bound"
    );
}
