//! The boundary attacked again over real HTTP/1.1 and HTTP/2 (h2c, raw frames with `h2`),
//! against the layer alone: the README quickstart on `axum::serve` and the layer on plain
//! hyper-util, with their defaults or small budgets and deadlines. What must hold:
//!
//! - every request is answered (or its connection closed) by its deadline plus slack,
//!   whatever it stalls on: the head's body, the middle of the body, the end of a chunked
//!   body, a secret lookup that never answers;
//! - a signed body reaches the handler, whatever its JSON holds;
//! - what a body leases from the budget is about the bytes it sent, so streams that each
//!   send a couple of bytes cannot turn genuine deliveries away with `503`.
//!
//! Deadlines here are 1 s with the slack of a busy two-core machine (10 s and more), and
//! memory is asserted in bytes counted, never in time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::tenant::InboxSecrets;
use openmail_webhooks::tenant::{CachedResolver, SecretResolver, Tenant};
use openmail_webhooks::{Delivery, Event, VerifyOpenMailLayer, sign};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;

use crate::support::{SECRET, unix_now};
use crate::wire::read_response;

/// What a resolver's `lookup` returns.
type ResolveFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Option<openmail_webhooks::tenant::TenantSecrets>, tower::BoxError>,
            > + Send,
    >,
>;

/// The deadline the attacked servers get: short, so that a test waits seconds, not tens.
const DEADLINE: Duration = Duration::from_secs(1);

/// How long past its deadline a request may take to be answered on a busy machine. A hang
/// (no answer at all) is what the tests tell apart from an answer, not one latency from
/// another.
const SLACK: Duration = Duration::from_secs(12);

/// What the handler saw: the bodies it was handed, and the event types.
#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<Bytes>>,
    types: Mutex<Vec<String>>,
}

/// The README quickstart: the layer alone around an axum route, on `axum::serve` (which
/// speaks HTTP/1.1 and h2c).
async fn quickstart(layer: VerifyOpenMailLayer) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let recorder = Arc::clone(&seen);
    let handle = move |Extension(event): Extension<Arc<Event>>, body: Bytes| {
        let recorder = Arc::clone(&recorder);
        async move {
            recorder.bodies.lock().unwrap().push(body);
            recorder
                .types
                .lock()
                .unwrap()
                .push(event.event_type().to_owned());
            "ok"
        }
    };
    let app = Router::new().route("/webhooks", post(handle)).layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// The README's plain hyper 1.x server: the layer around a `service_fn`, each connection
/// served by hyper-util's auto builder (HTTP/1.1 and h2c).
async fn plain_hyper(layer: VerifyOpenMailLayer) -> SocketAddr {
    async fn handle(request: Request<VerifiedBody>) -> Result<Response<Full<Bytes>>, Infallible> {
        let event = request
            .extensions()
            .get::<Arc<Event>>()
            .map(|event| event.event_type().to_owned());
        Ok(Response::new(Full::new(Bytes::from(format!("{event:?}")))))
    }
    let service = ServiceBuilder::new().layer(layer).service_fn(handle);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn event_body(event_id: &str, inbox_id: &str) -> Vec<u8> {
    format!(r#"{{"event":"message.received","event_id":"{event_id}","inbox_id":"{inbox_id}"}}"#)
        .into_bytes()
}

/// An HTTP/1.1 head signed now over `signed` with `secret`, with `framing` as its
/// `Content-Length` or `Transfer-Encoding` line(s).
fn h1_head(secret: &str, signed: &[u8], framing: &str) -> Vec<u8> {
    let timestamp = unix_now().to_string();
    let signature = sign(secret, &timestamp, signed);
    format!(
        "POST /webhooks HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         x-timestamp: {timestamp}\r\nx-signature: {signature}\r\n{framing}\r\n"
    )
    .into_bytes()
}

/// A whole signed HTTP/1.1 request.
fn h1_signed(secret: &str, body: &[u8]) -> Vec<u8> {
    let mut request = h1_head(secret, body, &format!("content-length: {}\r\n", body.len()));
    request.extend_from_slice(body);
    request
}

/// Writes `bytes` on a new connection and reads one answer, within `within`.
async fn exchange_within(addr: SocketAddr, bytes: &[u8], within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(bytes).await.ok()?;
        read_response(&mut stream)
            .await
            .map(|(status, _, _)| status)
    })
    .await
    .ok()
    .flatten()
}

/// How an HTTP/1.1 client stalls after its head.
#[derive(Clone, Copy, Debug)]
enum H1Stall {
    /// Declares a length and sends nothing.
    NoBody,
    /// Sends half of its declared length.
    HalfBody,
    /// Sends a whole chunked body but never its last (`0`) chunk.
    ChunkedWithoutEnd,
    /// Sends one byte every 200 ms in chunks of one byte, for ever.
    Trickle,
    /// Declares more than it sends, then sends the rest after the deadline.
    LateRest,
}

/// Runs one stalling client: `Some(status)` when it was answered, `None` when the server
/// closed the connection without an answer; panics (through the caller's timeout) on a
/// hang.
async fn stall(addr: SocketAddr, how: H1Stall, index: usize) -> Option<u16> {
    let body = event_body(&format!("evt_stall_{index}"), "inb_1");
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let head = match how {
        H1Stall::NoBody | H1Stall::HalfBody | H1Stall::LateRest => h1_head(
            SECRET,
            &body,
            &format!("content-length: {}\r\n", body.len()),
        ),
        H1Stall::ChunkedWithoutEnd | H1Stall::Trickle => {
            h1_head(SECRET, &body, "transfer-encoding: chunked\r\n")
        }
    };
    stream.write_all(&head).await.ok()?;
    match how {
        H1Stall::NoBody => {}
        H1Stall::HalfBody | H1Stall::LateRest => {
            stream.write_all(&body[..body.len() / 2]).await.ok()?;
        }
        H1Stall::ChunkedWithoutEnd => {
            let chunk = format!("{:x}\r\n", body.len());
            stream.write_all(chunk.as_bytes()).await.ok()?;
            stream.write_all(&body).await.ok()?;
            stream.write_all(b"\r\n").await.ok()?;
        }
        H1Stall::Trickle => {
            let (mut reader, mut writer) = stream.into_split();
            let writing = tokio::spawn(async move {
                for byte in body.iter().cycle().take(10_000) {
                    let chunk = [b'1', b'\r', b'\n', *byte, b'\r', b'\n'];
                    if writer.write_all(&chunk).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            let mut stream_back = Vec::new();
            let answer = read_split(&mut reader, &mut stream_back).await;
            writing.abort();
            return answer;
        }
    }
    if let H1Stall::LateRest = how {
        let (mut reader, mut writer) = stream.into_split();
        let rest = body[body.len() / 2..].to_vec();
        let writing = tokio::spawn(async move {
            tokio::time::sleep(DEADLINE * 3).await;
            let _ = writer.write_all(&rest).await;
            // Keep the write half open: a closed one would end the wait by itself.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let mut stream_back = Vec::new();
        let answer = read_split(&mut reader, &mut stream_back).await;
        writing.abort();
        return answer;
    }
    read_response(&mut stream)
        .await
        .map(|(status, _, _)| status)
}

/// [`read_response`] for a read half.
async fn read_split(reader: &mut tokio::net::tcp::OwnedReadHalf, got: &mut Vec<u8>) -> Option<u16> {
    let mut buffer = [0u8; 1024];
    loop {
        if let Some(end) = got.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            return head.get(9..12)?.parse().ok();
        }
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => got.extend_from_slice(&buffer[..read]),
        }
    }
}

/// HELD. The quickstart on `axum::serve` with a 1 s deadline and a small budget: clients
/// that stall at every stage of the body, eight of each at once, are each answered `408`
/// (or cut off) well within the deadline plus slack, and a genuine delivery afterwards
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_h1_stalls_at_every_stage_are_answered_by_the_deadline() {
    let _serial = crate::heap::serial().await;
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .body_deadline(DEADLINE)
        .memory_budget(256 * 1024);
    let (addr, seen) = quickstart(layer).await;
    let kinds = [
        H1Stall::NoBody,
        H1Stall::HalfBody,
        H1Stall::ChunkedWithoutEnd,
        H1Stall::Trickle,
        H1Stall::LateRest,
    ];
    let clients: Vec<_> = kinds
        .iter()
        .flat_map(|kind| (0..8).map(move |index| (*kind, index)))
        .map(|(kind, index)| {
            tokio::spawn(async move {
                let answer = tokio::time::timeout(DEADLINE + SLACK, stall(addr, kind, index)).await;
                (kind, answer)
            })
        })
        .collect();
    for client in clients {
        let (kind, answer) = client.await.unwrap();
        let answer = answer.unwrap_or_else(|_| panic!("{kind:?}: no answer by the deadline"));
        assert!(
            matches!(answer, Some(408) | None),
            "{kind:?}: answered {answer:?}"
        );
    }
    let genuine = exchange_within(
        addr,
        &h1_signed(SECRET, &event_body("evt_after_stalls", "inb_1")),
        SLACK,
    )
    .await;
    assert_eq!(genuine, Some(200));
    assert_eq!(seen.bodies.lock().unwrap().len(), 1, "only the genuine one");
}

// =======================================================================================
// HTTP/2 (h2c, prior knowledge), raw frames.

/// An h2c connection to `addr`, its driver spawned.
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client
}

/// An HTTP/2 request head signed now over `signed`, declaring `length` bytes when given.
fn h2_head(secret: &str, signed: &[u8], length: Option<usize>) -> Request<()> {
    let timestamp = unix_now().to_string();
    let signature = sign(secret, &timestamp, signed);
    let mut request = Request::post("http://localhost/webhooks")
        .header("content-type", "application/json")
        .header("x-timestamp", timestamp)
        .header("x-signature", signature);
    if let Some(length) = length {
        request = request.header("content-length", length.to_string());
    }
    request.body(()).unwrap()
}

/// A genuine delivery of about 32 KiB (a message with a body text), the size of an
/// ordinary email.
fn ordinary_delivery(event_id: &str) -> Vec<u8> {
    let text = "Lorem ipsum dolor sit amet. ".repeat(32 * 1024 / 28);
    format!(
        r#"{{"event":"message.received","event_id":"{event_id}","inbox_id":"inb_1","message":{{"subject":"hi","body_text":"{text}"}}}}"#
    )
    .into_bytes()
}

/// BREACH (issue 19, finding 6: two tiny frames lease a 16 KiB chunk). On the quickstart
/// with a 1 MiB budget, 100 HTTP/2 streams each send two DATA frames of one byte and
/// stall: 200 bytes in all. Each stream's buffer leased a whole 16 KiB chunk for its
/// second byte, so 64 of them held the 1 MiB budget and an ordinary 32 KiB genuine
/// delivery got `503` while they lasted (20 times the bytes at the default 64 MiB, with
/// 4,096 streams: 21 connections of axum's 200). What a body leases must be about what it
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_one_byte_frames_per_stream_do_not_hold_the_budget() {
    let _serial = crate::heap::serial().await;
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .memory_budget(1024 * 1024)
        // The stalled streams last the whole test.
        .body_deadline(Duration::from_secs(60))
        .min_body_rate(1, Duration::from_secs(60));
    let (addr, seen) = quickstart(layer).await;
    let body = event_body("evt_tiny", "inb_1");
    let mut held = Vec::new();
    let mut client = h2_connect(addr).await;
    for _ in 0..100 {
        client = client.ready().await.unwrap();
        let (response, mut stream) = client
            .send_request(h2_head(SECRET, &body, Some(body.len())), false)
            .unwrap();
        stream.send_data(Bytes::from_static(b"{"), false).unwrap();
        stream.send_data(Bytes::from_static(b"\""), false).unwrap();
        held.push((response, stream));
    }
    // Time for the server to read the frames. (Were it too short on a busy machine, the
    // deliveries would only pass sooner, never fail.)
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut statuses = Vec::new();
    for index in 0..3 {
        let genuine = ordinary_delivery(&format!("evt_ordinary_{index}"));
        statuses.push(exchange_within(addr, &h1_signed(SECRET, &genuine), SLACK).await);
    }
    drop(held);
    assert_eq!(
        statuses,
        [Some(200); 3],
        "200 bytes on 100 stalled streams turned genuine deliveries away"
    );
    assert_eq!(seen.bodies.lock().unwrap().len(), 3);
}

/// How an HTTP/2 stream stalls after its head.
#[derive(Clone, Copy, Debug)]
enum H2Stall {
    /// Declares a length, sends no DATA.
    NoBody,
    /// One DATA frame of one byte, then nothing.
    OneByte,
    /// The whole body, without END_STREAM.
    NoEndStream,
    /// Half the body, then a RST_STREAM.
    Reset,
}

/// HELD. The layer on plain hyper-util, over HTTP/2: streams that stall at every stage of
/// the body, many on one connection, are each answered (or reset) by the deadline plus
/// slack, and the connection then serves a genuine delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_hyper_h2_stalls_at_every_stage_are_answered_by_the_deadline() {
    let _serial = crate::heap::serial().await;
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .body_deadline(DEADLINE)
        .memory_budget(256 * 1024);
    let addr = plain_hyper(layer).await;
    let mut client = h2_connect(addr).await;
    let kinds = [
        H2Stall::NoBody,
        H2Stall::OneByte,
        H2Stall::NoEndStream,
        H2Stall::Reset,
    ];
    let mut waiting = Vec::new();
    for index in 0..40 {
        let kind = kinds[index % kinds.len()];
        let body = event_body(&format!("evt_h2_stall_{index}"), "inb_1");
        client = client.ready().await.unwrap();
        let (response, mut stream) = client
            .send_request(h2_head(SECRET, &body, Some(body.len())), false)
            .unwrap();
        match kind {
            H2Stall::NoBody => {}
            H2Stall::OneByte => stream.send_data(Bytes::from_static(b"{"), false).unwrap(),
            H2Stall::NoEndStream => stream.send_data(Bytes::from(body), false).unwrap(),
            H2Stall::Reset => {
                stream
                    .send_data(Bytes::copy_from_slice(&body[..body.len() / 2]), false)
                    .unwrap();
                stream.send_reset(h2::Reason::CANCEL);
            }
        }
        waiting.push((kind, response, stream));
    }
    for (kind, response, stream) in waiting {
        let answer = tokio::time::timeout(DEADLINE + SLACK, response)
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: no answer by the deadline"));
        match (kind, answer) {
            (H2Stall::Reset, _) => {}
            (_, Ok(response)) => {
                assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT, "{kind:?}")
            }
            (_, Err(error)) => panic!("{kind:?}: {error}"),
        }
        drop(stream);
    }
    let body = event_body("evt_h2_after", "inb_1");
    client = client.ready().await.unwrap();
    let (response, mut stream) = client
        .send_request(h2_head(SECRET, &body, Some(body.len())), false)
        .unwrap();
    stream.send_data(Bytes::from(body), true).unwrap();
    let response = tokio::time::timeout(SLACK, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A resolver whose lookups never answer, counting them.
#[derive(Default)]
struct NeverAnswers {
    lookups: AtomicUsize,
}

impl SecretResolver for NeverAnswers {
    fn lookup(&self, _tenant: &Tenant) -> ResolveFuture {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

/// HELD. A secret store that never answers, behind the cache, on plain hyper over
/// HTTP/1.1 and HTTP/2: every delivery waiting on it (genuine or forged, one inbox or
/// several, the client gone or not) is answered `503` with `Retry-After` by its lookup
/// deadline plus slack, and once they are answered no lookup is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_that_never_answers_is_cut_off_and_leaves_nothing_running() {
    let _serial = crate::heap::serial().await;
    let store = Arc::new(NeverAnswers::default());
    let cache = Arc::new(CachedResolver::new(Arc::clone(&store)).max_lookups_in_flight(4));
    let layer = VerifyOpenMailLayer::with_resolver(Arc::clone(&cache)).body_deadline(DEADLINE);
    let addr = plain_hyper(layer).await;
    // The body's deadline, then the lookup's own.
    let within = DEADLINE * 2 + SLACK;

    let mut clients = Vec::new();
    for index in 0..12 {
        let inbox = format!("inb_{}", index % 3);
        let body = event_body(&format!("evt_never_{index}"), &inbox);
        let secret = if index % 2 == 0 {
            SECRET
        } else {
            "whsec_attacker"
        };
        let request = h1_signed(secret, &body);
        clients.push(tokio::spawn(async move {
            exchange_within(addr, &request, within).await
        }));
    }
    // Clients that leave while their lookup runs.
    for index in 0..4 {
        let request = h1_signed(SECRET, &event_body(&format!("evt_gone_{index}"), "inb_0"));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        drop(stream);
    }
    let mut client = h2_connect(addr).await;
    let mut streams = Vec::new();
    for index in 0..8 {
        let body = event_body(
            &format!("evt_never_h2_{index}"),
            &format!("inb_{}", index % 5),
        );
        client = client.ready().await.unwrap();
        let (response, mut stream) = client
            .send_request(h2_head(SECRET, &body, Some(body.len())), false)
            .unwrap();
        stream.send_data(Bytes::from(body), true).unwrap();
        streams.push((response, stream));
    }
    for client in clients {
        let status = client.await.unwrap();
        assert_eq!(
            status,
            Some(503),
            "an HTTP/1.1 delivery waiting on the store"
        );
    }
    for (response, _stream) in streams {
        let response = tokio::time::timeout(within, response)
            .await
            .expect("an HTTP/2 delivery waiting on the store is answered")
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
    }
    // The clients that left are cut off by the same deadline; bounded wait for them.
    for _ in 0..200 {
        if cache.lookups_in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cache.lookups_in_flight(),
        0,
        "a lookup outlived its waiters"
    );
    let lookups = store.lookups.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&lookups),
        "{lookups} lookups for 5 inboxes"
    );
}

// =======================================================================================
// Signed bodies: what reaches the handler, and what a held event costs.

/// What a holding handler keeps of one delivery: its event (none with
/// `parse_events(false)`) and the delivery.
type Kept = (Option<Arc<Event>>, Delivery);

/// What a holding handler keeps: every event and delivery it was handed.
type Held = Arc<Mutex<Vec<Kept>>>;

/// A server whose handler keeps every event and delivery it is handed, as a queue of
/// handlers that hold events for minutes would. It asks each delivery for its
/// `event_id`, as deduplication does.
async fn holding(layer: VerifyOpenMailLayer) -> (SocketAddr, Held) {
    let held: Held = Arc::default();
    let keep = Arc::clone(&held);
    let handle = move |event: Option<Extension<Arc<Event>>>,
                       Extension(delivery): Extension<Delivery>| {
        let keep = Arc::clone(&keep);
        async move {
            assert!(delivery.event_id().is_some());
            keep.lock()
                .unwrap()
                .push((event.map(|Extension(event)| event), delivery));
            "ok"
        }
    };
    let app = Router::new().route("/webhooks", post(handle)).layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, held)
}

/// Sends each body signed with `secret`, one after the other, each on a connection of its
/// own.
async fn send_each(addr: SocketAddr, secret: &str, bodies: &[Vec<u8>]) {
    for body in bodies {
        let request = h1_signed(secret, body);
        assert_eq!(exchange_within(addr, &request, SLACK).await, Some(200));
    }
}

/// Checks that the events that `held` took keep at most [`HELD_EXTRA`] beyond their bodies
/// (each at least [`crate::heap::LARGE`] bytes), per event, and drops them. `what` names
/// the case in messages; `live_before` is the heap's live bytes before the bodies were
/// sent; `check` looks at the held events first.
///
/// The figure is what dropping them frees, counted on this thread only
/// ([`crate::heap::freed_by`]), so other tests of the binary, which allocate at the same
/// time, do not move it. Dropping them must free each body, as the one large block each
/// takes: that shows they were the last to hold them, and a second large block (a copy of
/// a long field, a read buffer it keeps) fails the check whatever its size. A copy the
/// server keeps elsewhere is not freed here: the process's heap, once the held events are
/// gone, must be back within half a body per event of where it was.
async fn assert_held_beyond_bodies_is_small(
    held: &Mutex<Vec<Kept>>,
    bodies: &[Vec<u8>],
    live_before: usize,
    what: &str,
    check: impl FnOnce(&[Kept]),
) {
    assert!(bodies.iter().all(|body| body.len() >= crate::heap::LARGE));
    let events = std::mem::take(&mut *held.lock().unwrap());
    assert_eq!(events.len(), bodies.len());
    // The server lets go of its own handles once each exchange is over; wait for that.
    // Two handles stay: the held one and the delivery's (a `Delivery` reads its ids from
    // the event). If that ever changes, the checks on what the drop frees below fail.
    let settle = Instant::now() + SLACK;
    let server_holds = |(event, _): &Kept| event.as_ref().is_some_and(|e| Arc::strong_count(e) > 2);
    while events.iter().any(server_holds) {
        assert!(
            Instant::now() < settle,
            "the server still holds a delivered event"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check(&events);
    let bodies_len: usize = bodies.iter().map(Vec::len).sum();
    let freed = crate::heap::freed_by(|| drop(events));
    assert_eq!(
        freed.large,
        bodies.len(),
        "dropping {} held events freed {} large blocks ({} bytes in all): one per body expected",
        bodies.len(),
        freed.large,
        freed.bytes
    );
    assert!(
        freed.bytes >= bodies_len,
        "dropping the held events freed {} bytes, less than their bodies' {bodies_len}",
        freed.bytes
    );
    // The server's connections free their buffers once they have seen each client leave,
    // which on a busy machine takes a while: the least growth seen within 10 s counts.
    let allowed = bodies_len / 2;
    let settle = Instant::now() + Duration::from_secs(10);
    let mut left = usize::MAX;
    while left > allowed && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = left.min(crate::heap::live().saturating_sub(live_before));
    }
    assert!(
        left <= allowed,
        "with the held events gone, the heap kept {left} bytes more than before they were sent"
    );
    let extra = (freed.bytes - bodies_len) / bodies.len();
    eprintln!("{what}: {extra} bytes per held event beyond its body");
    assert!(
        extra <= HELD_EXTRA,
        "{what}: a held event keeps {extra} bytes beyond its body"
    );
}

/// What a held event may keep beyond its body: the event's and the delivery's fixed parts.
const HELD_EXTRA: usize = 4 * 1024;

fn with_event_id(index: usize, event_id: &str) -> Vec<u8> {
    format!(r#"{{"event":"message.received","event_id":"{index}_{event_id}","inbox_id":"inb_1"}}"#)
        .into_bytes()
}

/// BREACH (held memory, per-inbox secrets). A tenant-signed 1 MiB body whose `event_id`
/// is long: with a resolver, the layer read the body's claim to route it, and handed that
/// claim (a copy of the `event_id`) to the `Delivery` next to the event, which reads the
/// same ids from the body. A held event kept its body twice (measured then as the heap's
/// growth: 1,048,858 bytes beyond the body, against 407 with a static secret).
///
/// BREACH (held memory, `parse_events(false)`, as the deduplication docs set it). With no
/// event, a `Delivery` read its ids from the body into a claim of its own the first time
/// it was asked (as deduplication asks for every delivery): a copy of the `event_id` held
/// beside the body. Held events must cost their body plus a small constant, in every mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_event_with_a_long_event_id_costs_its_body_once() {
    let _serial = crate::heap::serial().await;
    let long = "a".repeat(1024 * 1024);
    let bodies: Vec<Vec<u8>> = (0..4).map(|index| with_event_id(index, &long)).collect();
    let account = || InboxSecrets::new().account([SECRET]).unwrap();
    // Each mode: its name, whether its layer parses events, the layer.
    let modes = [
        (
            "a static secret",
            true,
            VerifyOpenMailLayer::new(SECRET).unwrap(),
        ),
        (
            "a resolver",
            true,
            VerifyOpenMailLayer::with_resolver(account()),
        ),
        (
            "no event parsed",
            false,
            VerifyOpenMailLayer::new(SECRET)
                .unwrap()
                .parse_events(false),
        ),
        (
            "a resolver and no event parsed",
            false,
            VerifyOpenMailLayer::with_resolver(account()).parse_events(false),
        ),
    ];
    for (mode, parsed, layer) in modes {
        let (addr, held) = holding(layer).await;
        let before = crate::heap::live();
        send_each(addr, SECRET, &bodies).await;
        assert_held_beyond_bodies_is_small(&held, &bodies, before, mode, |events| {
            for (index, (event, delivery)) in events.iter().enumerate() {
                assert_eq!(event.is_some(), parsed);
                if let Some(event) = event {
                    assert_eq!(delivery.event_id(), event.event_id());
                }
                let expected = format!("{index}_{long}");
                assert_eq!(delivery.event_id(), Some(expected.as_str()));
                assert_eq!(delivery.inbox_id(), Some("inb_1"));
            }
        })
        .await;
    }
}

/// BREACH (held memory, `X-Event-Id` and one-frame bodies). OpenMail sends `X-Event-Id`
/// with every delivery, and the `Delivery` keeps it. hyper hands a request's header values
/// on as slices of the connection's read buffer, and a body that arrives in one frame too,
/// so a held delivery that kept either as it came kept that whole buffer: on a kept-alive
/// connection, the buffer a large body before it had grown (78,314 bytes beyond each held
/// 256 KiB body with the header copied and the body not; 15 large blocks for 8 deliveries
/// with neither). Held deliveries must cost their body plus a small constant, whatever
/// came on their connection before them, with a static secret and with a resolver (the
/// two paths that copy a verified one-frame body).
///
/// It relies on hyper reading each later 256 KiB body into its grown buffer in one frame;
/// were hyper to split them, the one-frame copy would go unexercised here (the in-memory
/// framings of tests/memory.rs still exercise it with a static secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_delivery_keeps_no_read_buffer_through_its_event_id_header_or_body() {
    let _serial = crate::heap::serial().await;
    let bodies: Vec<Vec<u8>> = (0..8)
        .map(|index| with_event_id(index, &"a".repeat(256 * 1024)))
        .collect();
    let account = || InboxSecrets::new().account([SECRET]).unwrap();
    let modes = [
        ("a static secret", VerifyOpenMailLayer::new(SECRET).unwrap()),
        ("a resolver", VerifyOpenMailLayer::with_resolver(account())),
    ];
    for (mode, layer) in modes {
        let (addr, held) = holding(layer).await;
        let before = crate::heap::live();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        for (index, body) in bodies.iter().enumerate() {
            let framing = format!(
                "x-event-id: evt_{index}\r\ncontent-length: {}\r\n",
                body.len()
            );
            let mut request = h1_head(SECRET, body, &framing);
            request.extend_from_slice(body);
            stream.write_all(&request).await.unwrap();
            let answer = tokio::time::timeout(SLACK, read_response(&mut stream))
                .await
                .unwrap();
            assert_eq!(answer.map(|(status, _, _)| status), Some(200), "{mode}");
        }
        drop(stream);
        assert_held_beyond_bodies_is_small(&held, &bodies, before, mode, |events| {
            for (index, (_, delivery)) in events.iter().enumerate() {
                assert_eq!(delivery.event_id_header(), Some(&*format!("evt_{index}")));
            }
        })
        .await;
    }
}

/// FINDING (held memory, escaped fields): not fixed here. A signed body whose short fields
/// are written with `\u` escapes keeps their decoded text next to the body, for as long as
/// the event is held: the event's `decoded` string (src/json.rs `Short::decode`, appended
/// to by src/event/wire.rs for every escaped id, address, subject, `cc` entry, filename,
/// type). Measured on 1 MiB bodies: an `event_id` of lone surrogates (`\ud800`, kept as
/// its escape) +1.0 × the body; a subject, a `cc` list or an unknown event type of
/// `\u0800` escapes +0.5 ×. The changelog's "body plus at most 2 KiB" holds only for
/// bodies without escapes. Bounding it needs the short fields decoded on access, as
/// `body_text` is: a change to the event module's accessors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reason: finding 2 (escaped short fields are decoded and held beside the body)"]
async fn a_held_event_with_escaped_fields_costs_its_body_plus_a_constant() {
    let _serial = crate::heap::serial().await;
    const SIZE: usize = 1024 * 1024;
    type Shape = (&'static str, fn(usize) -> Vec<u8>);
    let shapes: [Shape; 3] = [
        ("lone-surrogate event_id", |index| {
            with_event_id(index, &r"\ud800".repeat(SIZE / 6))
        }),
        ("escaped subject", |index| {
            format!(
                r#"{{"event":"message.received","event_id":"e{index}","message":{{"subject":"{}"}}}}"#,
                r"\u0800".repeat(SIZE / 6)
            )
            .into_bytes()
        }),
        ("escaped cc", |index| {
            format!(
                r#"{{"event":"message.received","event_id":"e{index}","message":{{"cc":[{}]}}}}"#,
                vec![r#""\u0800\u0800""#; SIZE / 15].join(",")
            )
            .into_bytes()
        }),
    ];
    for (name, make) in shapes {
        let (addr, held) = holding(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
        let bodies: Vec<Vec<u8>> = (0..4).map(make).collect();
        let before = crate::heap::live();
        send_each(addr, SECRET, &bodies).await;
        assert_held_beyond_bodies_is_small(&held, &bodies, before, name, |_| {}).await;
    }
}

/// Hostile JSON a tenant or the account can sign: every shape the event model cannot read.
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    vec![
        ("nesting past the reader's limit", format!(r#"{{"event":"message.received","event_id":"e1","x":{}}}"#, deep(100_000)).into_bytes()),
        ("nesting at the top", deep(50_000).into_bytes()),
        ("a huge array of {}", format!(r#"{{"event":"message.received","event_id":"e2","message":{{"attachments":[{}]}}}}"#, vec!["{}"; 200_000].join(",")).into_bytes()),
        ("a huge array of strings", format!(r#"{{"event":"message.received","event_id":"e3","message":{{"cc":[{}]}}}}"#, vec![r#""a""#; 200_000].join(",")).into_bytes()),
        ("duplicate envelope keys", br#"{"event":"message.received","event_id":"e4","event_id":"e5","inbox_id":"inb_1"}"#.to_vec()),
        ("duplicate message keys", br#"{"event":"message.received","event_id":"e6","message":{"subject":"a","subject":"b"}}"#.to_vec()),
        ("lone surrogates in ids and texts", br#"{"event":"message.received\ud800","event_id":"evt_\ud800","inbox_id":"inb_\udc00","message":{"subject":"\ud83d","body_text":"cut \ud83d","cc":["\udc00"]}}"#.to_vec()),
        ("NUL escapes and raw control bytes", b"{\"event\":\"message.received\",\"event_id\":\"e\\u0000\",\"message\":{\"subject\":\"a\x00b\x01\"}}".to_vec()),
        ("invalid UTF-8", b"{\"event\":\"message.received\",\"event_id\":\"e\xff\xfe\",\"message\":{\"subject\":\"\xc3\"}}".to_vec()),
        ("numbers out of range", br#"{"event":"message.received","event_id":"e7","attempt":1e999,"message":{"attachments":[{"sizeBytes":-99999999999999999999999}]}}"#.to_vec()),
        ("attempt past u32", br#"{"event":"message.received","event_id":"e8","attempt":4294967296}"#.to_vec()),
        ("wrong types everywhere", br#"{"event":"message.received","event_id":7,"inbox_id":[],"message":"x","occurred_at":{}}"#.to_vec()),
        ("event not a string", br#"{"event":null}"#.to_vec()),
        ("not JSON", b"<html>\x00\xff".to_vec()),
        ("empty", Vec::new()),
        ("whitespace only", b" \r\n\t ".to_vec()),
        ("trailing garbage", br#"{"event":"message.received","event_id":"e9"} {"#.to_vec()),
        ("a bare string", br#""message.received""#.to_vec()),
        ("a lifecycle event with a message", br#"{"event":"inbox.suspended","event_id":"e10","reason":{"x":1},"message":{}}"#.to_vec()),
        ("timestamps out of range", br#"{"event":"message.received","event_id":"e11","occurred_at":"99999-99-99T99:99:99Z","message":{"received_at":"-0001-01-01T00:00:00.000Z"}}"#.to_vec()),
    ]
}

/// HELD (the lossless rule). Hostile JSON signed with the account secret reaches the
/// handler with its exact bytes, over HTTP/1.1 and HTTP/2, on the quickstart: never a 4xx
/// or 5xx, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_hostile_json_reaches_the_handler_over_both_protocols() {
    let _serial = crate::heap::serial().await;
    let (addr, seen) = quickstart(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let bodies = hostile_bodies();
    for (name, body) in &bodies {
        let status = exchange_within(addr, &h1_signed(SECRET, body), SLACK).await;
        assert_eq!(status, Some(200), "HTTP/1.1, {name}");
    }
    let mut client = h2_connect(addr).await;
    for (name, body) in &bodies {
        client = client.ready().await.unwrap();
        let (response, mut stream) = client
            .send_request(h2_head(SECRET, body, Some(body.len())), false)
            .unwrap();
        // Split into small DATA frames, so the body is gathered from many.
        let mut frames = body.chunks(997).peekable();
        if frames.peek().is_none() {
            stream.send_data(Bytes::new(), true).unwrap();
        }
        while let Some(frame) = frames.next() {
            let last = frames.peek().is_none();
            stream
                .send_data(Bytes::copy_from_slice(frame), last)
                .unwrap();
        }
        let response = tokio::time::timeout(SLACK, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "HTTP/2, {name}");
    }
    let handled = seen.bodies.lock().unwrap().clone();
    assert_eq!(handled.len(), bodies.len() * 2);
    for (index, (name, body)) in bodies.iter().enumerate() {
        assert_eq!(handled[index], body[..], "HTTP/1.1 bytes, {name}");
        assert_eq!(
            handled[bodies.len() + index],
            body[..],
            "HTTP/2 bytes, {name}"
        );
    }
}

// =======================================================================================
// The receiver example with per-inbox secrets (`OPENMAIL_INBOX_SECRETS`).

/// The receiver example's app and server, with inbox secrets for `inb_a` and `inb_b`,
/// and the account's when `account` is set.
async fn receiver_with_inboxes(account: bool) -> SocketAddr {
    let mut secrets = InboxSecrets::parse("inb_a:whsec_inbox_a,inb_b:whsec_inbox_b").unwrap();
    if account {
        secrets = secrets.account(["whsec_account"]).unwrap();
    }
    let app = crate::receiver::app(VerifyOpenMailLayer::with_resolver(secrets));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::receiver::serve(listener, app));
    addr
}

/// Status, headers but `date`, and body of one answer over HTTP/1.1.
async fn whole_answer(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let answer = tokio::time::timeout(SLACK, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_response(&mut stream).await
    })
    .await
    .unwrap()
    .expect("an answer");
    let (status, head, body) = answer;
    let head = head
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\n");
    (status, head, body)
}

/// HELD (tenant enumeration). On the receiver with per-inbox secrets, with and without an
/// account secret, every refusal an anonymous client or another tenant can cause (a known
/// inbox, an unknown one, another tenant's secret, an unreadable claim, an oversized inbox
/// id, a pod event signed by an inbox) gets the same status, headers and body. Genuine
/// deliveries of hostile content signed by an inbox reach the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_inbox_refusals_all_look_alike_and_signed_hostile_content_passes() {
    let _serial = crate::heap::serial().await;
    for account in [true, false] {
        let addr = receiver_with_inboxes(account).await;
        let long_inbox = "i".repeat(300);
        let refusals: Vec<(&str, Vec<u8>)> = vec![
            ("known inbox, forged", h1_signed("whsec_attacker", &event_body("e1", "inb_a"))),
            ("unknown inbox, forged", h1_signed("whsec_attacker", &event_body("e2", "inb_zz"))),
            ("unknown inbox, a tenant's secret", h1_signed("whsec_inbox_a", &event_body("e3", "inb_zz"))),
            ("another tenant's secret", h1_signed("whsec_inbox_b", &event_body("e4", "inb_a"))),
            (
                "unreadable claim, a tenant's secret",
                h1_signed("whsec_inbox_a", br#"{"event":"message.received","event_id":"e5","inbox_id":"inb_a","inbox_id":"inb_a"}"#),
            ),
            ("oversized inbox id", h1_signed("whsec_attacker", &event_body("e6", &long_inbox))),
            (
                "pod event, an inbox's secret",
                h1_signed("whsec_inbox_a", br#"{"event":"pod.suspended","event_id":"e7","inbox_id":null,"pod_id":"pod_1"}"#),
            ),
            ("not JSON, forged", h1_signed("whsec_attacker", b"\xff\x00 not json")),
        ];
        let mut answers = Vec::new();
        for (name, request) in &refusals {
            answers.push((*name, whole_answer(addr, request).await));
        }
        let (_, first) = &answers[0];
        assert_eq!(first.0, 400, "account {account}");
        for (name, answer) in &answers {
            assert_eq!(answer, first, "account {account}: {name} is told apart");
        }
        let genuine: Vec<(&str, &str, Vec<u8>)> = vec![
            ("an inbox's own event", "whsec_inbox_a", br#"{"event":"message.received","event_id":"g1","inbox_id":"inb_a","message":{"body_text":"cut \ud83d","cc":["\udc00"]}}"#.to_vec()),
            ("a huge list", "whsec_inbox_b", format!(r#"{{"event":"message.received","event_id":"g2","inbox_id":"inb_b","message":{{"attachments":[{}]}}}}"#, vec!["{}"; 100_000].join(",")).into_bytes()),
            ("a future event", "whsec_inbox_a", br#"{"event":"inbox.renamed","event_id":"g3","inbox_id":"inb_a","new":[1,2,{"x":null}]}"#.to_vec()),
            ("a lone surrogate in the id", "whsec_inbox_a", br#"{"event":"message.received","event_id":"g4\ud800","inbox_id":"inb_a"}"#.to_vec()),
        ];
        for (name, secret, body) in genuine {
            let (status, _, answer) = whole_answer(addr, &h1_signed(secret, &body)).await;
            assert_eq!(
                status,
                200,
                "account {account}: {name}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }
}

/// A resolver whose lookups answer only when `open` is set, so that deliveries wait on it.
struct Gate {
    open: tokio::sync::watch::Receiver<bool>,
    secrets: openmail_webhooks::tenant::TenantSecrets,
}

impl SecretResolver for Gate {
    fn lookup(&self, _tenant: &Tenant) -> ResolveFuture {
        let mut open = self.open.clone();
        let secrets = self.secrets.clone();
        Box::pin(async move {
            let _ = open.wait_for(|open| *open).await;
            Ok(Some(secrets))
        })
    }
}

/// Forgeries of about 60 KiB (under the large-body threshold, so they may share the whole
/// budget) whose bulk is in `field`: the event_id, or a field nobody reads.
fn padded_forgery(index: usize, in_id: bool) -> Vec<u8> {
    let bulk = "a".repeat(60 * 1024);
    let body = if in_id {
        format!(r#"{{"event":"message.received","event_id":"{index}{bulk}","inbox_id":"inb_1"}}"#)
    } else {
        format!(
            r#"{{"event":"message.received","event_id":"{index}","inbox_id":"inb_1","x":"{bulk}"}}"#
        )
    };
    h1_signed("whsec_attacker", body.as_bytes())
}

/// BREACH (memory outside the budget, per-inbox secrets). While a delivery waits for its
/// secret lookup, the layer kept the body's claim: copies of its `event_id` and `inbox_id`
/// as long as the body, which the budget does not count. With a 4 MiB budget, 80
/// forgeries of 60 KiB waiting on a slow store held 12.8 MiB of heap with their bulk in
/// the `event_id`, against 8.6 MiB with it in a field nobody reads (the rest is hyper's
/// per-connection buffers): the budget again, uncounted. Anonymous requests must hold
/// what the budget counts, whatever field their bytes are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgeries_waiting_on_a_lookup_hold_no_more_than_the_budget_counts() {
    let _serial = crate::heap::serial().await;
    const BUDGET: usize = 4 * 1024 * 1024;
    let mut growth = Vec::new();
    for in_id in [false, true] {
        let (open, gate) = tokio::sync::watch::channel(false);
        let secrets = openmail_webhooks::tenant::TenantSecrets::for_account([SECRET]).unwrap();
        let layer = VerifyOpenMailLayer::with_resolver(Gate {
            open: gate,
            secrets,
        })
        .memory_budget(BUDGET)
        .body_deadline(Duration::from_secs(60));
        let (addr, _seen) = quickstart(layer).await;
        let requests: Vec<Vec<u8>> = (0..80).map(|index| padded_forgery(index, in_id)).collect();
        let before = crate::heap::live();
        let mut streams = Vec::new();
        for request in &requests {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request).await.unwrap();
            streams.push(stream);
        }
        // Time for the server to read them all; too little only lowers the figure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held = crate::heap::live().saturating_sub(before);
        open.send(true).unwrap();
        let mut statuses = Vec::new();
        for stream in &mut streams {
            let answer = tokio::time::timeout(SLACK, read_response(stream))
                .await
                .unwrap();
            let status = answer.map(|(status, _, _)| status);
            assert!(matches!(status, Some(400 | 503)), "{status:?}");
            statuses.push(status);
        }
        eprintln!("bulk in the event_id {in_id}: heap +{held} bytes while waiting; {statuses:?}");
        growth.push(held);
    }
    let (control, attack) = (growth[0], growth[1]);
    assert!(
        attack <= control + BUDGET / 4,
        "forgeries waiting on a lookup held {attack} bytes with their bulk in the event_id, \
         {control} with it elsewhere (budget {BUDGET})"
    );
}

/// HELD (connection slots, the receiver). `receiver::serve` counted a connection with a
/// request in flight as busy and closed only idle ones when its 1,024 slots were full, so
/// HTTP/2 connections that each always keep a stalled stream open (a HEADERS frame every
/// half second, each stream cut off with `408` after the 2 s grace) held every slot, and a
/// genuine delivery waited, unaccepted, until the attack stopped. Now a connection that
/// has had no request answered below `400` for `EVICTION_GRACE` is closed to make room,
/// whatever it has in flight. 16 more attacking connections than there are slots (the
/// rest wait in the backlog and take each freed slot), and three genuine deliveries to a
/// handler that takes a moment are each answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_keep_no_connection_slot_from_a_genuine_delivery() {
    let _serial = crate::heap::serial().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The receiver's routes, with a handler that takes a moment, as an agent does
    // (`RECEIVER_WORK_MS`).
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        "ok"
    };
    let app = Router::new()
        .route("/webhooks", post(slow))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    tokio::spawn(crate::receiver::serve(listener, app));

    let (opened, answered) = deliver_under_attack(addr, Attack::H2Streams, "evt_h2_slot", 3).await;
    eprintln!("{opened} attacking connections opened before the deliveries; {answered:?}");
    assert!(
        opened > crate::receiver::CONNECTION_LIMIT,
        "the attack never filled the slots: {opened} connections"
    );
    assert!(
        all_answered(&answered),
        "a genuine delivery was not answered while connections kept stalled streams \
         open: {answered:?}"
    );
}

/// How the attacking connections stall, each opened again when the server closes it.
#[derive(Clone, Copy)]
enum Attack {
    /// HTTP/2, keeping stalled streams open: a HEADERS frame every half second, no body.
    H2Streams,
    /// HTTP/1.1, a request head declaring a body that never comes.
    H1Heads,
}

/// Starts `CONNECTION_LIMIT + 16` attacking connections, waits 4 s (past the 2 s grace:
/// the first stalled requests were cut off and replaced, and every slot is taken), then
/// tries `count` genuine deliveries while the attack goes on. The connections the attack
/// opened before the deliveries, and each delivery's tries.
async fn deliver_under_attack(
    addr: SocketAddr,
    attack: Attack,
    prefix: &str,
    count: usize,
) -> (usize, Vec<Vec<Try>>) {
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let attackers: Vec<_> = (0..crate::receiver::CONNECTION_LIMIT + 16)
        .map(|_| {
            let stopped = Arc::clone(&stopped);
            let connects = Arc::clone(&connects);
            tokio::spawn(async move {
                while !stopped.load(Ordering::SeqCst) {
                    let Ok(tcp) = TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    match attack {
                        Attack::H2Streams => stall_h2_streams(tcp, &stopped, &connects).await,
                        Attack::H1Heads => stall_h1_head(tcp, &connects).await,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let opened = connects.load(Ordering::SeqCst);
    let answered = genuine_deliveries_while_attacked(addr, prefix, count).await;
    stopped.store(true, Ordering::SeqCst);
    for attacker in attackers {
        attacker.abort();
    }
    (opened, answered)
}

/// Keeps stalled HTTP/2 streams open on `tcp` until the server closes it.
async fn stall_h2_streams(
    tcp: TcpStream,
    stopped: &std::sync::atomic::AtomicBool,
    connects: &AtomicUsize,
) {
    let Ok((mut client, connection)) = h2::client::handshake(tcp).await else {
        return;
    };
    connects.fetch_add(1, Ordering::SeqCst);
    let driver = tokio::spawn(connection);
    let mut open = std::collections::VecDeque::new();
    while !stopped.load(Ordering::SeqCst) {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let Ok(stream) = client.send_request(h2_head(SECRET, b"{}", Some(100)), false) else {
            break;
        };
        open.push_back(stream);
        if open.len() > 5 {
            open.pop_front();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    driver.abort();
}

/// Sends a head declaring a body that never comes, and waits until the server answers or
/// closes the connection.
async fn stall_h1_head(mut tcp: TcpStream, connects: &AtomicUsize) {
    connects.fetch_add(1, Ordering::SeqCst);
    let head = h1_head(SECRET, b"{}", "content-length: 100\r\n");
    if tcp.write_all(&head).await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    while matches!(tcp.read(&mut sink).await, Ok(read) if read > 0) {}
}

/// What one try of a genuine delivery came to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Try {
    Answered(u16),
    /// The server closed the connection without an answer.
    Closed,
    /// No answer within the try's bound (the connection may still wait in the backlog).
    TimedOut,
}

/// `count` genuine deliveries, each tried as a sender would while an attack goes on: on a
/// new connection each time, each try bounded, for up to 40 s. On a busy two-core machine
/// the attacking connections take most of the CPU, so a single try may miss its bound;
/// what matters is that each delivery gets through while the attack lasts. Each one's
/// tries, in order.
async fn genuine_deliveries_while_attacked(
    addr: SocketAddr,
    prefix: &str,
    count: usize,
) -> Vec<Vec<Try>> {
    let mut deliveries = Vec::new();
    for delivery in 0..count {
        let request = h1_signed(
            SECRET,
            &event_body(&format!("{prefix}_{delivery}"), "inb_1"),
        );
        let budget = Instant::now() + Duration::from_secs(40);
        let mut tries = Vec::new();
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    return Try::Closed;
                };
                if stream.write_all(&request).await.is_err() {
                    return Try::Closed;
                }
                match read_response(&mut stream).await {
                    Some((status, _, _)) => Try::Answered(status),
                    None => Try::Closed,
                }
            })
            .await
            .unwrap_or(Try::TimedOut);
            tries.push(attempt);
            if attempt == Try::Answered(200) || Instant::now() >= budget {
                break;
            }
            // A refusal can be immediate: pace the retries as a sender would.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        deliveries.push(tries);
    }
    deliveries
}

/// Whether every delivery's last try was answered `200`.
fn all_answered(deliveries: &[Vec<Try>]) -> bool {
    deliveries
        .iter()
        .all(|tries| tries.last() == Some(&Try::Answered(200)))
}

/// HELD (connection slots, the receiver, HTTP/1.1). With its 1,024 slots full of
/// connections whose request heads came without a body (cut off with `408` after the 2 s
/// grace, and opened again at once), `receiver::serve` closed the only connection with no
/// request in flight to make room: the newest, whose delivery had not been read yet, so
/// about half of the genuine deliveries were closed without an answer. A connection is now
/// kept for `EVICTION_GRACE` after it opens. Eight genuine deliveries are answered `200`,
/// and no try of theirs is closed unanswered (the code before closed about half).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_never_get_a_new_delivery_closed_unanswered() {
    let _serial = crate::heap::serial().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/webhooks", post(|| async { "ok" }))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    tokio::spawn(crate::receiver::serve(listener, app));

    let (opened, answered) = deliver_under_attack(addr, Attack::H1Heads, "evt_h1_slot", 8).await;
    eprintln!("{opened} attacking connections opened before the deliveries; {answered:?}");
    assert!(
        opened > crate::receiver::CONNECTION_LIMIT,
        "the attack never filled the slots: {opened} connections"
    );
    assert!(
        all_answered(&answered)
            && !answered
                .iter()
                .flatten()
                .any(|attempt| *attempt == Try::Closed),
        "a genuine delivery was closed unanswered, or not answered, while stalled heads held \
         the slots: {answered:?}"
    );
}

/// `receiver::serve` on a loopback port, with a handler that takes 3 s for the events whose
/// id starts with `evt_slow` and answers the others at once.
async fn serve_slow_deliveries() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(
            "/webhooks",
            post(
                |Extension(event): Extension<Arc<openmail_webhooks::Event>>| async move {
                    if event
                        .event_id()
                        .is_some_and(|id| id.starts_with("evt_slow"))
                    {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    "ok"
                },
            ),
        )
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    tokio::spawn(crate::receiver::serve(listener, app));
    addr
}

/// Waits until the connections opened so far are past their grace, then opens as many
/// connections as there are slots (fresh, so within theirs): every slot is taken and more
/// wait, so the server looks for one to close.
async fn fill_the_slots_past_the_grace(addr: SocketAddr) -> Vec<TcpStream> {
    tokio::time::sleep(crate::receiver::EVICTION_GRACE + Duration::from_millis(300)).await;
    let mut others = Vec::new();
    for _ in 0..crate::receiver::CONNECTION_LIMIT {
        others.push(TcpStream::connect(addr).await.unwrap());
    }
    others
}

/// HELD (connection slots, the receiver). Making room must never cut off a delivery that
/// is being handled: with the slots full of fresh connections (each within its grace), a
/// delivery whose handler takes 3 s on a new connection, and another on a connection that
/// carried a delivery 2.5 s before, are both answered. (A first version of the policy
/// above closed both: neither had had a request answered in the last 2 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_being_handled_is_never_cut_off_to_make_room() {
    let _serial = crate::heap::serial().await;
    let addr = serve_slow_deliveries().await;

    let mut reused = TcpStream::connect(addr).await.unwrap();
    reused
        .write_all(&h1_signed(SECRET, &event_body("evt_quick", "inb_1")))
        .await
        .unwrap();
    let first = read_response(&mut reused)
        .await
        .map(|(status, _, _)| status);
    assert_eq!(first, Some(200));
    // Quiet for longer than the grace, as between two deliveries.
    tokio::time::sleep(crate::receiver::EVICTION_GRACE + Duration::from_millis(500)).await;
    reused
        .write_all(&h1_signed(SECRET, &event_body("evt_slow_reused", "inb_1")))
        .await
        .unwrap();
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    fresh
        .write_all(&h1_signed(SECRET, &event_body("evt_slow_fresh", "inb_1")))
        .await
        .unwrap();
    // Both past the grace, then every slot taken, and more waiting.
    let others = fill_the_slots_past_the_grace(addr).await;
    for (name, stream) in [("reused", &mut reused), ("fresh", &mut fresh)] {
        let answer = tokio::time::timeout(Duration::from_secs(10), read_response(stream))
            .await
            .map(|answer| answer.map(|(status, _, _)| status));
        assert_eq!(
            answer,
            Ok(Some(200)),
            "the delivery on the {name} connection was cut off"
        );
    }
    drop(others);
}

/// HELD (connection slots, the receiver, HTTP/2). One new HTTP/2 connection carries two
/// genuine deliveries: the first whole, its handler taking 3 s, the second a 512 KiB body
/// still arriving (at more than the layer's minimum rate). With the slots full of fresh
/// connections, the connection is not closed for the body still arriving: the first
/// delivery is answered. (The policy before counted the connection as waiting for a body,
/// and closed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_being_handled_keeps_its_http2_connection_while_another_body_arrives() {
    let _serial = crate::heap::serial().await;
    let addr = serve_slow_deliveries().await;

    let mut client = h2_connect(addr).await;
    let whole = event_body("evt_slow_h2", "inb_1");
    let (handled, mut stream) = client
        .send_request(h2_head(SECRET, &whole, Some(whole.len())), false)
        .unwrap();
    stream.send_data(Bytes::from(whole), true).unwrap();
    let arriving = format!(
        r#"{{"event":"message.received","event_id":"evt_big_h2","inbox_id":"inb_1","pad":"{}"}}"#,
        "x".repeat(512 * 1024)
    )
    .into_bytes();
    client = client.ready().await.unwrap();
    let (_uploaded, mut upload) = client
        .send_request(h2_head(SECRET, &arriving, Some(arriving.len())), false)
        .unwrap();
    // 16 KiB every 100 ms: 160 KiB/s, about 3.3 s for the whole body.
    let uploading = tokio::spawn(async move {
        for chunk in arriving.chunks(16 * 1024) {
            upload.reserve_capacity(chunk.len());
            if upload
                .send_data(Bytes::copy_from_slice(chunk), false)
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = upload.send_data(Bytes::new(), true);
    });
    // Past the grace, then every slot taken, and more waiting.
    let others = fill_the_slots_past_the_grace(addr).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), handled).await;
    let status = answer
        .as_ref()
        .ok()
        .and_then(|response| response.as_ref().ok())
        .map(|response| response.status());
    assert_eq!(
        status,
        Some(StatusCode::OK),
        "the delivery being handled was cut off: {answer:?}"
    );
    uploading.abort();
    drop(others);
}
