//! What one request costs in heap, counted by a global allocator rather than read off the
//! code:
//!
//! - a body that arrives in one frame is copied exactly once, once verified, into an
//!   allocation of its own (the frame is a slice of the server's read buffer, which a held
//!   delivery would otherwise keep);
//! - a body that arrives in several frames is copied exactly once, into one allocation of
//!   its final size: as the frames arrive when its length was declared (the buffer grows
//!   toward that length and stops at it), at the end when it was not;
//! - 16 deliveries of 3 MiB held together by a handler behind `axum::serve` cost at most
//!   1.15 × their bodies, hyper's buffers included;
//! - the heap a request adds at its peak is at most the body's size plus a small constant,
//!   with the event parse on or off: the typed event keeps the body's texts where they are
//!   and decodes them only when a handler reads them.
//!
//! The allocator counts only the thread that asked, and a lock serialises the tests, so the
//! figures are exact however the test harness schedules them. Requests run to completion
//! in one poll on the test thread: the bodies are ready and the inner service is trivial.

#[path = "../benches/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::{Delivery, Event, VerifyOpenMailLayer, sign};
use support::{FRAME, Frames, SECRET, complete, now_timestamp, payload};
use tower::{Layer, ServiceExt};

/// What the layer may add beyond the body itself: the request extensions, the `Delivery`,
/// the parsed event, the response.
const SMALL_CONSTANT: usize = 2 * 1024;

/// A multi-frame body of unknown length is kept as a list of its frames (one `Bytes`
/// handle, 32 bytes, per frame of 4 KiB or more; smaller frames are copied into chunks of
/// up to 16 KiB) and joined once at the end. The list grows by doubling, so it allocates
/// at most twice its final size. Under the default 4 MiB limit and hyper's 16 KiB frames
/// that is at most 256 handles.
fn frame_list(framing: Framing, size: usize) -> usize {
    match framing {
        Framing::FramesWithoutLength => {
            2 * size.div_ceil(FRAME).next_power_of_two() * std::mem::size_of::<Bytes>()
        }
        // Copied into one buffer as the frames arrive: no list.
        Framing::Frames | Framing::One => 0,
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Forwards to the system allocator and, on threads that turned tracking on, counts.
struct Counting;

thread_local! {
    // Const-initialised and without a destructor, so reading it never allocates.
    static TRACKING: Cell<bool> = const { Cell::new(false) };
}

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LARGE: AtomicUsize = AtomicUsize::new(0);
static LARGE_THRESHOLD: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn tracking() -> bool {
    TRACKING.try_with(Cell::get).unwrap_or(false)
}

fn record_allocation(size: usize, grows_live_by: isize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    ALLOCATED_BYTES.fetch_add(size, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size >= LARGE_THRESHOLD.load(Ordering::Relaxed) {
        LARGE.fetch_add(1, Ordering::Relaxed);
    }
    let live = LIVE.fetch_add(grows_live_by, Ordering::Relaxed) + grows_live_by;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn record_free(size: usize) {
    LIVE.fetch_sub(size as isize, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// bookkeeping around it touches only atomics and a const thread-local, and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received; the caller upholds `alloc`'s contract.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() && tracking() {
            record_allocation(layout.size(), layout.size() as isize);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received; the caller upholds `alloc_zeroed`'s contract.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() && tracking() {
            record_allocation(layout.size(), layout.size() as isize);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if tracking() {
            record_free(layout.size());
        }
        // SAFETY: forwarded as received; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received; the caller upholds `realloc`'s contract.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() && tracking() {
            // A reallocation may copy everything it holds, so it counts as an allocation
            // of the new size.
            record_allocation(new_size, new_size as isize - layout.size() as isize);
        }
        moved
    }
}

/// What one request did to the heap on this thread.
#[derive(Debug)]
struct HeapUse {
    allocations: usize,
    allocated_bytes: usize,
    largest: usize,
    /// Allocations of at least the threshold passed to [`measure`].
    large: usize,
    /// The most the live heap rose above where it started.
    peak: usize,
    /// What the live heap held above where it started when the work ended: what its
    /// output keeps.
    held: usize,
}

static SERIAL: Mutex<()> = Mutex::new(());

fn measure<T>(large_threshold: usize, work: impl FnOnce() -> T) -> (T, HeapUse) {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    ALLOCATIONS.store(0, Ordering::Relaxed);
    ALLOCATED_BYTES.store(0, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    LARGE.store(0, Ordering::Relaxed);
    LARGE_THRESHOLD.store(large_threshold, Ordering::Relaxed);
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    TRACKING.with(|tracking| tracking.set(true));
    let output = work();
    TRACKING.with(|tracking| tracking.set(false));
    let used = HeapUse {
        allocations: ALLOCATIONS.load(Ordering::Relaxed),
        allocated_bytes: ALLOCATED_BYTES.load(Ordering::Relaxed),
        largest: LARGEST.load(Ordering::Relaxed),
        large: LARGE.load(Ordering::Relaxed),
        peak: PEAK.load(Ordering::Relaxed).max(0) as usize,
        held: LIVE.load(Ordering::Relaxed).max(0) as usize,
    };
    (output, used)
}

#[derive(Clone, Copy, Debug)]
enum Framing {
    One,
    Frames,
    FramesWithoutLength,
}

struct Delivered {
    status: StatusCode,
    /// Where the body the inner service received starts, and where the `Delivery`'s does.
    body_at: usize,
    delivery_body_at: usize,
}

/// Sends one genuine delivery through the layer; the inner service records where the body
/// it received lives. Everything but the request's trip through the layer is built before
/// measuring.
fn deliver(body: &Bytes, framing: Framing, parse: bool) -> (Delivered, HeapUse) {
    let timestamp = now_timestamp();
    let signature = sign(SECRET, &timestamp, body);
    let body_at = Arc::new(AtomicUsize::new(0));
    let delivery_body_at = Arc::new(AtomicUsize::new(0));
    let inner = {
        let body_at = Arc::clone(&body_at);
        let delivery_body_at = Arc::clone(&delivery_body_at);
        tower::service_fn(move |request: Request<VerifiedBody>| {
            if let Some(delivery) = request.extensions().get::<Delivery>() {
                delivery_body_at.store(delivery.body().as_ptr() as usize, Ordering::Relaxed);
            }
            let bytes = request.into_body().into_bytes();
            body_at.store(bytes.as_ptr() as usize, Ordering::Relaxed);
            std::future::ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
        })
    };
    let service = VerifyOpenMailLayer::new(SECRET)
        .expect("a valid secret")
        .parse_events(parse)
        .layer(inner);
    let frames = match framing {
        Framing::One => Frames::one(body),
        Framing::Frames => Frames::split(body, FRAME),
        Framing::FramesWithoutLength => Frames::split(body, FRAME).without_length(),
    };
    let mut request = Request::post("/webhooks")
        .header("content-type", "application/json")
        .header("x-timestamp", timestamp.as_str())
        .header("x-signature", signature.as_str())
        .header("x-event-id", "evt_7f3a9c21d4")
        .body(frames)
        .expect("a valid request");
    if !matches!(framing, Framing::FramesWithoutLength) {
        request
            .headers_mut()
            .insert("content-length", body.len().into());
    }
    let (status, used) = measure(body.len() / 2, || {
        complete(service.oneshot(request))
            .expect("infallible")
            .status()
    });
    let delivered = Delivered {
        status,
        body_at: body_at.load(Ordering::Relaxed),
        delivery_body_at: delivery_body_at.load(Ordering::Relaxed),
    };
    (delivered, used)
}

const SIZES: [usize; 4] = [1024, 64 * 1024, 1024 * 1024, 4 * 1024 * 1024];
const FRAMINGS: [Framing; 3] = [Framing::One, Framing::Frames, Framing::FramesWithoutLength];

/// The body's bytes reach the inner service and the `Delivery` in one allocation of their
/// own, which both share: several frames are joined into it, and one frame, a slice of the
/// buffer the server read it into, is copied into it once verified, so that a handler that
/// holds the body does not hold the server's read buffer with it. This holds with and
/// without the event parse.
#[test]
fn the_body_is_handed_on_in_one_allocation_of_its_own() {
    for size in SIZES {
        let body = Bytes::from(payload(size));
        for framing in FRAMINGS {
            for parse in [false, true] {
                let (delivered, used) = deliver(&body, framing, parse);
                let context = format!("{size} B, {framing:?}, parse {parse}: {used:?}");
                assert_eq!(delivered.status, StatusCode::OK, "{context}");
                assert_eq!(delivered.delivery_body_at, delivered.body_at, "{context}");
                assert_ne!(delivered.body_at, body.as_ptr() as usize, "{context}");
            }
        }
    }
}

/// The layer's own handling of a body that came as one frame, without the event parse:
/// one copy, of exactly the body's size, and a small constant besides.
#[test]
fn a_single_frame_body_is_copied_exactly_once() {
    for size in SIZES {
        let body = Bytes::from(payload(size));
        let (delivered, used) = deliver(&body, Framing::One, false);
        let context = format!("{size} B: {used:?}");
        assert_eq!(delivered.status, StatusCode::OK, "{context}");
        assert_ne!(delivered.body_at, body.as_ptr() as usize, "{context}");
        assert_eq!((used.large, used.largest), (1, size), "{context}");
        assert!(used.allocated_bytes <= size + SMALL_CONSTANT, "{context}");
    }
}

#[test]
fn a_multi_frame_body_is_copied_exactly_once() {
    for size in SIZES.into_iter().filter(|size| *size > FRAME) {
        let body = Bytes::from(payload(size));
        for framing in [Framing::Frames, Framing::FramesWithoutLength] {
            let (delivered, used) = deliver(&body, framing, false);
            let context = format!("{size} B, {framing:?}: {used:?}");
            assert_eq!(delivered.status, StatusCode::OK, "{context}");
            // Exactly one allocation as large as half the body, of exactly the body's
            // size. Without a length the frames are kept and joined into it at the end;
            // with one they are copied as they arrive into a buffer that grows through
            // the length divided by fours, so every size before the last is at most a
            // quarter of the body and all together are at most four thirds of it (the
            // counter takes each reallocation for a copy, though the allocator may move
            // nothing).
            let grown = match framing {
                Framing::Frames => size + size / 3 + 64,
                _ => size,
            };
            assert_eq!(used.large, 1, "{context}");
            assert_eq!(used.largest, size, "{context}");
            assert!(
                used.allocated_bytes <= grown + SMALL_CONSTANT + frame_list(framing, size),
                "{context}"
            );
        }
    }
}

/// The heap one request adds at its peak, beyond the one copy of the body every framing
/// makes.
fn peak_over_the_copy(size: usize, used: &HeapUse) -> usize {
    used.peak.saturating_sub(size)
}

#[test]
fn peak_heap_per_request_is_the_body_plus_a_small_constant() {
    for size in SIZES {
        let body = Bytes::from(payload(size));
        for framing in FRAMINGS {
            let (delivered, used) = deliver(&body, framing, false);
            let context = format!("{size} B, {framing:?}: {used:?}");
            assert_eq!(delivered.status, StatusCode::OK, "{context}");
            let bound = size + SMALL_CONSTANT + frame_list(framing, size);
            assert!(used.peak <= bound, "{context}");
            eprintln!(
                "{size:>8} B  {:<19}  copies {}  peak {:>5} B over the copy  {:>2} allocations",
                format!("{framing:?}"),
                used.large,
                peak_over_the_copy(size, &used),
                used.allocations,
            );
        }
    }
}

/// With the event parse on, the event holds the body rather than copies of its strings:
/// `body_text` and each attachment's extracted text stay in the verified `Bytes` until a
/// handler reads them. So with parsing on, a request's peak is still the body plus a small
/// constant: the `Arc<Event>`, its attachment list and its short fields.
#[test]
fn with_parsing_peak_heap_is_still_the_body_plus_a_small_constant() {
    for size in SIZES {
        let body = Bytes::from(payload(size));
        for framing in FRAMINGS {
            let (delivered, used) = deliver(&body, framing, true);
            let context = format!("{size} B, {framing:?}, parse: {used:?}");
            assert_eq!(delivered.status, StatusCode::OK, "{context}");
            let bound = size + SMALL_CONSTANT + frame_list(framing, size);
            assert!(used.peak <= bound, "{context}");
            eprintln!(
                "{size:>8} B  {:<19}  parse  peak {:>5} B over the copy  {:>2} allocations",
                format!("{framing:?}"),
                peak_over_the_copy(size, &used),
                used.allocations,
            );
        }
    }
}

/// A `message.received` of `size` bytes whose `body_text` and attachment `parsedText`
/// (half each) are multi-line text, escaped as OpenMail writes it: newlines, tabs, quotes
/// and non-ASCII characters.
fn multi_line_message(size: usize) -> Bytes {
    // As it stands in the JSON: the escapes are backslash sequences.
    const LINE: &str =
        r#"Item 2847 — Consulting (March), 12 h × €150.00\tsubtotal \"€1,800.00\"\n"#;
    let lines = |bytes: usize| LINE.repeat(bytes / LINE.len());
    let head = concat!(
        r#"{"event":"message.received","event_id":"evt_7f3a9c21d4","occurred_at":"2024-03-21T10:05:00.000Z","#,
        r#""inbox_id":"inb_92ma","message":{"from":"Ada Lovelace <ada@example.com>","to":"inbox@openmail.sh","#,
        r#""subject":"Quarterly report","body_text":""#,
    );
    let middle = concat!(
        r#"","attachments":[{"filename":"report.pdf","contentType":"application/pdf","#,
        r#""sizeBytes":48213,"extractionMethod":"pdf","parsedText":""#,
    );
    let tail = r#""}]}}"#;
    let text = size - head.len() - middle.len() - tail.len();
    let body_text = lines(text / 2);
    let mut parsed_text = lines(text - body_text.len());
    while head.len() + body_text.len() + middle.len() + parsed_text.len() + tail.len() < size {
        parsed_text.push(' ');
    }
    let json = format!("{head}{body_text}{middle}{parsed_text}{tail}");
    assert_eq!(json.len(), size);
    Bytes::from(json)
}

/// The target from the lean-events work: a 3 MiB `message.received` with multi-line
/// `body_text` and `parsedText`, parsed by the layer for a handler that doesn't read the
/// texts, peaks at the body plus 64 KiB at most, in every framing.
#[test]
fn a_3_mib_message_parsed_but_unread_costs_the_body_plus_64_kib() {
    const ALLOWANCE: usize = 64 * 1024;
    let size = 3 * 1024 * 1024;
    let body = multi_line_message(size);
    for framing in FRAMINGS {
        let (delivered, used) = deliver(&body, framing, true);
        let context = format!("{framing:?}: {used:?}");
        assert_eq!(delivered.status, StatusCode::OK, "{context}");
        // The body itself, copied once whatever its framing (see
        // `the_body_is_handed_on_in_one_allocation_of_its_own`).
        let body_held = size;
        assert!(
            used.peak <= body_held + ALLOWANCE + frame_list(framing, size),
            "{context}"
        );
        // And far below it: nothing body-sized besides the one copy.
        assert_eq!(used.large, 1, "{context}");
        eprintln!(
            "3 MiB message  {:<19}  peak {:>5} B over the body held  {:>2} allocations",
            format!("{framing:?}"),
            used.peak.saturating_sub(body_held),
            used.allocations,
        );
    }
}

/// Reading a large text costs one allocation of the decoded text when it holds escapes,
/// and none when it holds none: the cost moves to the handler that asks.
#[test]
fn reading_a_text_decodes_it_then_and_only_then() {
    let body = multi_line_message(256 * 1024);
    let Event::MessageReceived(received) = Event::parse(body) else {
        panic!("a message.received");
    };
    let (length, used) = measure(64 * 1024, || {
        received.message.body_text().map_or(0, |text| text.len())
    });
    assert!(length > 100 * 1024, "{length}");
    assert_eq!((used.allocations, used.large), (1, 1), "{used:?}");
    assert!(used.largest <= 128 * 1024, "{used:?}");

    let plain = Bytes::from_static(
        br#"{"event":"message.received","event_id":"evt_1","message":{"body_text":"one plain line"}}"#,
    );
    let Event::MessageReceived(received) = Event::parse(plain) else {
        panic!("a message.received");
    };
    let (text, used) = measure(1, || received.message.body_text().map(|text| text.len()));
    assert_eq!(text, Some("one plain line".len()));
    assert_eq!(used.allocations, 0, "{used:?}");
}

/// A 4 MiB body, signed, whose lists are as long as the body allows: an event parsed from
/// it and held (as a queued handler holds it) costs the body plus the small constant, not
/// an index entry per list element. Each case is parsed and kept; the counter sees what
/// the event holds beyond the body, which was allocated before.
#[test]
fn a_held_event_costs_its_body_plus_a_small_constant_whatever_its_lists() {
    const SIZE: usize = 4 * 1024 * 1024;
    fn filled(head: &str, element: &str, tail: &str) -> Bytes {
        let count = (SIZE - head.len() - tail.len()) / (element.len() + 1);
        let mut json = String::with_capacity(SIZE);
        json.push_str(head);
        for index in 0..count {
            if index > 0 {
                json.push(',');
            }
            json.push_str(element);
        }
        json.push_str(tail);
        Bytes::from(json)
    }
    let message =
        r#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a","message":{"#;
    let cases = [
        (
            "empty attachments",
            filled(&format!(r#"{message}"attachments":["#), "{}", "]}}"),
        ),
        (
            "attachments with fields",
            filled(
                &format!(r#"{message}"attachments":["#),
                r#"{"filename":"a","url":"u","sizeBytes":1}"#,
                "]}}",
            ),
        ),
        (
            "empty cc entries",
            filled(&format!(r#"{message}"cc":["#), r#""""#, "]}}"),
        ),
        (
            "a duplicated field, over and over",
            filled(
                r#"{"event":"message.received","event_id":"evt_1","#,
                r#""attempt":1"#,
                "}",
            ),
        ),
        (
            "an unknown event's duplicated field",
            filled(
                r#"{"event":"later.type","event_id":"evt_1","#,
                r#""occurred_at":7"#,
                "}",
            ),
        ),
    ];
    for (name, body) in cases {
        assert!(body.len() > SIZE - 64 && body.len() <= SIZE, "{name}");
        let (event, used) = measure(SIZE / 2, || Event::parse(body.clone()));
        let context = format!("{name}: {used:?}");
        eprintln!(
            "4 MiB, {name:<36} held {:>5} B  peak {:>5} B over the body",
            used.held, used.peak
        );
        assert!(used.held <= SMALL_CONSTANT, "{context}");
        assert!(used.peak <= 64 * 1024, "{context}");
        if let Event::MessageReceived(received) = &event {
            // Still all there, read when asked for.
            let listed = received.message.attachments().count() + received.message.cc().count();
            assert!(listed > 100_000, "{context}: {listed}");
        }
        drop(event);
    }
    // What a held event adds beyond that: the decoded copy of a short field whose JSON
    // holds escapes, never longer than the escaped text. A 4 MiB subject of `\n,` is held
    // as 2.7 MiB of newlines and commas, besides the body.
    let body = filled(&format!(r#"{message}"subject":""#), r"\n", r#""}}"#);
    let escaped = body.len() - message.len() - r#""subject":""}}"#.len();
    let (event, used) = measure(SIZE / 4, || Event::parse(body.clone()));
    let Event::MessageReceived(received) = &event else {
        panic!("{event:?}")
    };
    assert!(received.message.subject().unwrap().len() > SIZE / 3);
    eprintln!("4 MiB, an escaped subject: held {} B", used.held);
    let decoded = escaped / 3 * 2;
    assert!(used.held >= decoded, "{used:?}");
    assert!(used.held <= decoded + SMALL_CONSTANT, "{used:?}");
}

/// The counter must see what it claims to: a copy of a large buffer is one large
/// allocation of its size, and the live heap's peak includes it.
#[test]
fn the_counter_sees_a_copy() {
    let body = Bytes::from(payload(64 * 1024));
    let (copy, used) = measure(body.len() / 2, || body.to_vec());
    assert_eq!(copy.len(), body.len());
    assert_eq!(used.large, 1, "{used:?}");
    assert_eq!(used.largest, body.len(), "{used:?}");
    assert!(used.peak >= body.len(), "{used:?}");
}

/// Deliveries the handler holds at once in the tests below.
const HELD: usize = 16;

/// The size of each.
const HELD_BODY: usize = 3 * 1024 * 1024;

/// What the client writes at a time: the body reaches the server in frames of about this
/// size or whatever hyper's reads gather, as from a real sender.
const CLIENT_WRITE: usize = 16 * 1024;

/// Serves the layer on `axum::serve` and sends it [`HELD`] genuine deliveries of
/// [`HELD_BODY`] bytes at once, each on its own connection with a `Content-Length`, written
/// [`CLIENT_WRITE`] bytes at a time from one shared buffer (the client allocates almost
/// nothing). The handler holds each delivery until all have arrived. Returns the statuses.
async fn held_deliveries(body: Bytes, hold: Arc<tokio::sync::Barrier>) -> Vec<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    held_deliveries_on(listener, body, hold, false).await
}

/// [`held_deliveries`] on a listener of the caller's, over HTTP/1.1 or, with `http2`,
/// over HTTP/2 without TLS (h2c), one connection per delivery, in DATA frames of
/// [`CLIENT_WRITE`] bytes.
async fn held_deliveries_on(
    listener: tokio::net::TcpListener,
    body: Bytes,
    hold: Arc<tokio::sync::Barrier>,
    http2: bool,
) -> Vec<u16> {
    use axum::Extension;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = listener.local_addr().unwrap();
    let layer = VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        // Room for every body: 64 MiB would refuse some of the 48 MiB of large bodies.
        .memory_budget(256 * 1024 * 1024);
    let app = axum::Router::new()
        .route(
            "/webhooks",
            axum::routing::post(move |Extension(delivery): Extension<Delivery>| {
                let hold = hold.clone();
                async move {
                    // Until every delivery has arrived: all of them are held together,
                    // whatever the machine's speed.
                    hold.wait().await;
                    drop(delivery);
                    StatusCode::OK
                }
            }),
        )
        .layer(layer);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let timestamp = now_timestamp();
    let head = format!(
        "POST /webhooks HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         x-timestamp: {timestamp}\r\nx-signature: {}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        sign(SECRET, &timestamp, &body),
        body.len(),
    );
    let head = Bytes::from(head);
    if http2 {
        let signature = sign(SECRET, &timestamp, &body);
        let mut clients = Vec::new();
        for _ in 0..HELD {
            let request = Request::post("http://localhost/webhooks")
                .header("content-type", "application/json")
                .header("x-timestamp", timestamp.as_str())
                .header("x-signature", signature.as_str())
                .header("content-length", body.len())
                .body(Frames::split(&body, CLIENT_WRITE))
                .unwrap();
            clients.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut sender, connection) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(stream),
                )
                .await
                .unwrap();
                tokio::spawn(connection);
                let response = sender.send_request(request).await.unwrap();
                response.status().as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for client in clients {
            statuses.push(client.await.unwrap());
        }
        server.abort();
        return statuses;
    }
    let mut clients = Vec::new();
    for _ in 0..HELD {
        let (head, body) = (head.clone(), body.clone());
        clients.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(&head).await.unwrap();
            for piece in body.chunks(CLIENT_WRITE) {
                stream.write_all(piece).await.unwrap();
                // Lets the server read it before the next: the body arrives in pieces, as
                // over a network, rather than as a socket buffer kept full.
                tokio::task::yield_now().await;
            }
            let mut answer = [0u8; 512];
            let mut read = 0;
            while read < answer.len() {
                match stream.read(&mut answer[read..]).await.unwrap() {
                    0 => break,
                    more => read += more,
                }
            }
            // "HTTP/1.1 200 OK"
            std::str::from_utf8(&answer[9..12])
                .ok()
                .and_then(|status| status.parse::<u16>().ok())
                .unwrap_or(0)
        }));
    }
    let mut statuses = Vec::new();
    for client in clients {
        statuses.push(client.await.unwrap());
    }
    server.abort();
    statuses
}

/// The goal from issue 21: 16 concurrent 3 MiB deliveries held by the handler cost at most
/// 1.15 × their bodies. Before, a multi-frame body was kept as its frames and joined once,
/// so the frames and the joined copy were alive together. Now, with a `Content-Length`,
/// the frames are copied into one buffer as they arrive and let go.
///
/// The heap is counted on the one thread that runs the server and the clients, so the
/// figure is every allocation both make, hyper's read buffers included: deterministic up to
/// how the kernel splits the reads, which the margin covers.
#[test]
fn concurrent_held_deliveries_cost_at_most_1_15_times_their_bodies() {
    let body = Bytes::from(payload(HELD_BODY));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hold = Arc::new(tokio::sync::Barrier::new(HELD));
    let (statuses, used) = measure(HELD_BODY / 2, || {
        runtime.block_on(held_deliveries(body.clone(), hold))
    });
    assert_eq!(statuses, vec![200; HELD], "{used:?}");
    let per_delivery = used.peak as f64 / (HELD * HELD_BODY) as f64;
    eprintln!(
        "{HELD} held deliveries of 3 MiB: peak heap {per_delivery:.3} × the body each; {used:?}"
    );
    assert!(
        per_delivery <= 1.15,
        "{per_delivery:.3} × the body: {used:?}"
    );
}

/// What the process holding the deliveries in [`held_deliveries_in_rss`] did before: the
/// state glibc's allocator is in when they arrive.
#[derive(Clone, Copy, Debug)]
enum Before {
    /// Nothing large: a fresh process, glibc's mmap threshold at its start (128 KiB), so
    /// every buffer over it is a mapping of its own, which grows in place.
    Nothing,
    /// A round of the same deliveries, held and let go. Freeing a mapped 3 MiB block whole
    /// would raise the threshold to 3 MiB, and the next bodies would grow in the heap,
    /// where a buffer that moves leaves its old place resident.
    LargeBodies,
    /// The application freed a 2 MiB block: the threshold is 2 MiB, so the 3 MiB bodies
    /// are mappings of their own but the buffers they grow out of come from the heap.
    /// Measured by hand, not held to the bound: what the application frees is not the
    /// layer's to decide.
    LargeFree,
}

/// Names the state [`held_deliveries_in_rss`] measures in: `nothing`, `large-bodies` or
/// `large-free`.
const HELD_RSS_BEFORE: &str = "OPENMAIL_HELD_RSS_BEFORE";

/// Set to `default` to leave the server's sockets their default receive buffer.
const HELD_RSS_SOCKETS: &str = "OPENMAIL_HELD_RSS_SOCKETS";

/// Set to `2` to send the deliveries over HTTP/2 (h2c) rather than HTTP/1.1.
const HELD_RSS_HTTP: &str = "OPENMAIL_HELD_RSS_HTTP";

/// The receive buffer of the server's sockets in [`held_deliveries_in_rss`]: hyper reads
/// at most this much at a time, so its read buffer stays small and the figure is what
/// the layer holds. With the default, a client that keeps the socket full lets hyper grow
/// each connection's read buffer toward its 400 KiB limit, up to 0.15 × more for 3 MiB
/// bodies: a cost of the server's `max_buf_size`, not of the layer.
const RECEIVE_BUFFER: u32 = 16 * 1024;

/// [`HELD`] deliveries of 3 MiB held together by the handler, in resident memory, as a
/// server sees it: a multi-threaded runtime, the layer alone on `axum::serve`, and the
/// process's peak RSS (`VmHWM`, reset first) over what it held idle, per delivery, over
/// the body.
///
/// RSS depends on what the allocator did before, so this runs in a process of its own,
/// in the state [`HELD_RSS_BEFORE`] names, and prints its figure;
/// [`held_deliveries_peak_rss_is_at_most_1_15_times_their_bodies`] starts it. By hand:
/// `OPENMAIL_HELD_RSS_BEFORE=large-bodies cargo test --test memory held_deliveries_in_rss
/// -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement in a process of its own, started by the test after it"]
fn held_deliveries_in_rss() {
    fn status_kib(field: &str) -> usize {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
    let before = match std::env::var(HELD_RSS_BEFORE).as_deref() {
        Ok("large-bodies") => Before::LargeBodies,
        Ok("large-free") => Before::LargeFree,
        _ => Before::Nothing,
    };
    let small_window = std::env::var(HELD_RSS_SOCKETS).as_deref() != Ok("default");
    let http2 = std::env::var(HELD_RSS_HTTP).as_deref() == Ok("2");
    let body = Bytes::from(built_in_place(HELD_BODY));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let round = |body: Bytes| {
        runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            if small_window {
                socket.set_recv_buffer_size(RECEIVE_BUFFER).unwrap();
            }
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let hold = Arc::new(tokio::sync::Barrier::new(HELD));
            let listener = socket.listen(1024).unwrap();
            let statuses = held_deliveries_on(listener, body, hold, http2).await;
            assert_eq!(statuses, [200; HELD]);
        })
    };
    // Touches the code, the threads' stacks and the runtime first, so the figure is the
    // deliveries' alone.
    round(Bytes::from(payload(4096)));
    let idle = status_kib("VmRSS:");
    match before {
        Before::Nothing => {}
        Before::LargeBodies => round(body.clone()),
        Before::LargeFree => drop(std::hint::black_box(vec![1u8; 2 * 1024 * 1024])),
    }
    // Resets VmHWM to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    round(body);
    let peak = status_kib("VmHWM:");
    let per_delivery = (peak - idle) as f64 * 1024.0 / (HELD * HELD_BODY) as f64;
    println!(
        "{before:?} before, {HELD} held deliveries of 3 MiB: RSS {idle} kB idle, peak \
         {peak} kB: {per_delivery:.3} × the body each"
    );
    println!("held-rss-ratio {per_delivery:.3}");
}

/// The goal from issue 21 in resident memory: 16 held 3 MiB deliveries peak at most at
/// 1.15 × their bodies each, in a fresh process and after a round of the same deliveries.
/// Before, the round's freed bodies raised glibc's mmap threshold, and the next bodies
/// doubled toward their length in the heap, where the buffers they grew out of stayed
/// resident: 1.13 to 1.27 × after a round over HTTP/1.1, 1.16 to 1.31 × over HTTP/2,
/// against 1.03 fresh.
///
/// Over HTTP/1.1 fresh and after a round, and over HTTP/2 (h2c) after a round (fresh it
/// measured 1.02 to 1.04 before as after). Each is measured three times, each in a process
/// of its own, and the median is held to the bound, so one run disturbed by the machine's
/// load decides nothing.
#[cfg(target_os = "linux")]
#[test]
fn held_deliveries_peak_rss_is_at_most_1_15_times_their_bodies() {
    let program = std::env::current_exe().unwrap();
    for (http, before) in [
        ("1.1", "nothing"),
        ("1.1", "large-bodies"),
        ("2", "large-bodies"),
    ] {
        let mut figures: Vec<f64> = (0..3)
            .map(|_| {
                let output = std::process::Command::new(&program)
                    .args(["held_deliveries_in_rss", "--exact", "--ignored"])
                    .args(["--nocapture", "--test-threads=1"])
                    .env(HELD_RSS_BEFORE, before)
                    .env(HELD_RSS_HTTP, http)
                    .env_remove(HELD_RSS_SOCKETS)
                    .output()
                    .unwrap();
                let stdout = String::from_utf8_lossy(&output.stdout);
                stdout
                    .lines()
                    .find_map(|line| line.strip_prefix("held-rss-ratio "))
                    .and_then(|figure| figure.parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "no figure from the measuring process: {stdout}{}",
                            String::from_utf8_lossy(&output.stderr)
                        )
                    })
            })
            .collect();
        figures.sort_by(f64::total_cmp);
        eprintln!("HTTP/{http}, {before} before: peak RSS {figures:?} × the body each");
        assert!(
            figures[1] <= 1.15,
            "HTTP/{http}, {before} before: peak RSS {figures:?} × the body each"
        );
    }
}

/// A `message.received` event of `size` bytes, written into one allocation of that size:
/// building it frees nothing large, so the process that holds the deliveries starts with
/// glibc's mmap threshold where a fresh process has it.
fn built_in_place(size: usize) -> Vec<u8> {
    let template = payload(4096);
    let field = b"\"body_text\":\"";
    let start = template
        .windows(field.len())
        .position(|window| window == field)
        .unwrap()
        + field.len();
    let end = start
        + template[start..]
            .iter()
            .position(|&byte| byte == b'"')
            .unwrap();
    let line_end = template[start..end]
        .windows(2)
        .position(|window| window == b"\\n")
        .unwrap()
        + 2;
    let line = &template[start..start + line_end];
    let tail = &template[end..];
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(&template[..start]);
    while body.len() + line.len() + tail.len() <= size {
        body.extend_from_slice(line);
    }
    body.resize(size - tail.len(), b'.');
    body.extend_from_slice(tail);
    body
}
