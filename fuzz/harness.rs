//! The fuzz harness, shared by the cargo-fuzz targets in `fuzz_targets/` and by
//! `tests/fuzz_corpus.rs`, which replays the committed corpus under `cargo test` on the
//! stable toolchain.
//!
//! Each entry point takes raw fuzzer bytes, decodes them with [`Input`] (no `arbitrary`
//! crate, so the replay test needs no extra dependency), runs the crate on them and checks
//! the outcome against an oracle written independently of the crate's own code. A panic, in
//! the crate or in an assertion here, is a finding.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::tenant::Tenant;
use openmail_webhooks::{Delivery, Event, Verifier, VerifyOpenMailLayer, sign};
use tower::{Layer, ServiceExt};

/// Reads structured values off the front of the fuzzer's bytes. Running out of bytes is not
/// an error: every read then yields zeros or an empty slice, so every input decodes.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((first, rest)) => {
                self.data = rest;
                *first
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        for byte in &mut bytes {
            *byte = self.u8();
        }
        u64::from_le_bytes(bytes)
    }

    pub fn i64(&mut self) -> i64 {
        self.u64() as i64
    }

    /// Up to `len` bytes.
    pub fn take(&mut self, len: usize) -> &'a [u8] {
        let len = len.min(self.data.len());
        let (taken, rest) = self.data.split_at(len);
        self.data = rest;
        taken
    }

    /// A byte string prefixed by a one-byte length.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.u8());
        self.take(len)
    }

    /// A byte string prefixed by a two-byte length.
    pub fn long_bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16());
        self.take(len)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// What `X-Timestamp` means, decided without the crate's parser: an optional `-` and ASCII
/// digits, whose value fits an `i64`. `Err(true)` when it is digits that overflow.
pub fn reference_timestamp(raw: &[u8]) -> Result<i64, bool> {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(false);
    }
    // `str::parse` would also take a leading `+`, which the check above has excluded.
    std::str::from_utf8(raw)
        .map_err(|_| false)?
        .parse::<i64>()
        .map_err(|_| true)
}

/// `|now - timestamp| <= tolerance`, in exact arithmetic.
pub fn reference_fresh(timestamp: i64, now: i64, tolerance: u64) -> bool {
    (i128::from(now) - i128::from(timestamp)).unsigned_abs() <= u128::from(tolerance)
}

/// Whether `signature` is `sign(secret, timestamp, body)`, in either hex case.
pub fn reference_signature(secret: &[u8], timestamp: &[u8], body: &[u8], signature: &[u8]) -> bool {
    signature.len() == 64
        && signature.to_ascii_lowercase() == sign(secret, timestamp, body).as_bytes()
}

/// The core check on arbitrary secrets, timestamp, signature, body, clock and tolerance. It
/// must never panic, and it accepts exactly when the timestamp is a decimal `i64` within the
/// tolerance and the signature is `sign(...)` of those inputs under one of the secrets.
pub fn check_core(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let secret = input.short_bytes();
    let other_secret = input.short_bytes();
    let now = input.i64();
    let tolerance = input.u64();
    let offset = input.u8() as i8;
    let flip = input.u16();
    let raw_timestamp = input.short_bytes();
    let raw_signature = input.short_bytes();
    let body = input.rest();

    // Steer towards acceptance some of the time: a timestamp near `now`, a genuine signature.
    let near = now.saturating_add(i64::from(offset)).to_string();
    let timestamp: &[u8] = if flags & 1 != 0 {
        near.as_bytes()
    } else {
        raw_timestamp
    };
    let signing_secret = if flags & 2 != 0 { other_secret } else { secret };
    let mut signature = if flags & 4 != 0 {
        sign(signing_secret, timestamp, body).into_bytes()
    } else {
        raw_signature.to_vec()
    };
    if flags & 8 != 0 {
        signature.make_ascii_uppercase();
    }
    if flags & 16 != 0 && !signature.is_empty() {
        let bit = usize::from(flip) % (signature.len() * 8);
        signature[bit / 8] ^= 1 << (bit % 8);
    }

    let rotation = flags & 32 != 0;
    let secrets: Vec<&[u8]> = if rotation {
        vec![secret, other_secret]
    } else {
        vec![secret]
    };
    let verifier = match Verifier::with_secrets(&secrets) {
        Ok(verifier) => verifier,
        Err(_) => {
            assert!(secrets.iter().any(|secret| refused_secret(secret)));
            return;
        }
    };
    assert!(secrets.iter().all(|secret| !refused_secret(secret)));
    let verifier = verifier
        .tolerance(Duration::from_secs(tolerance))
        .clock(move || now);

    let result = verifier.verify(timestamp, &signature, body);

    let parsed = reference_timestamp(timestamp);
    let matching = secrets
        .iter()
        .position(|secret| reference_signature(secret, timestamp, body, &signature));
    let expected = match parsed {
        Ok(parsed) if reference_fresh(parsed, now, tolerance) => {
            matching.map(|index| (parsed, index))
        }
        _ => None,
    };
    match (&result, expected) {
        (Ok(verified), Some((parsed, _))) => {
            assert_eq!(verified.timestamp(), parsed);
            let index = verified.secret_index();
            assert!(reference_signature(
                secrets[index],
                timestamp,
                body,
                &signature
            ));
        }
        (Err(error), None) => {
            assert!(!error.client_message().is_empty());
            let shown = format!("{error} {error:?}");
            assert!(!shown.is_empty());
        }
        (result, expected) => panic!(
            "verdict {result:?} but the reference says {expected:?} \
             (timestamp {timestamp:?}, now {now}, tolerance {tolerance})"
        ),
    }
}

/// The top-level keys of a JSON object, decoded, in order: read with serde_json, not the
/// crate, to check its duplicate rule.
struct TopKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for TopKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;

        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = TopKeys;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(TopKeys(keys))
            }
        }

        deserializer.deserialize_map(Keys)
    }
}

/// `data` with each `\u` escape of a lone surrogate, inside a string, rewritten as
/// `\ufffd`: what JavaScript's decoders make of one, in a form serde_json accepts. Written
/// here, apart from the crate's own rewrite, as a byte-at-a-time walk.
pub fn reference_without_lone_surrogates(data: &[u8]) -> Vec<u8> {
    fn unit(digits: Option<&[u8]>) -> Option<u16> {
        let digits = std::str::from_utf8(digits?).ok()?;
        if digits.len() != 4 || !digits.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(digits, 16).ok()
    }
    let mut out = data.to_vec();
    let mut inside = false;
    let mut index = 0;
    while index < data.len() {
        match data[index] {
            b'"' => inside = !inside,
            b'\\' if inside => {
                if data.get(index + 1) != Some(&b'u') {
                    index += 2;
                    continue;
                }
                match unit(data.get(index + 2..index + 6)) {
                    Some(high @ 0xD800..=0xDBFF) => {
                        let low = (data.get(index + 6..index + 8) == Some(&b"\\u"[..]))
                            .then(|| unit(data.get(index + 8..index + 12)))
                            .flatten();
                        if matches!(low, Some(0xDC00..=0xDFFF)) {
                            index += 12;
                            continue;
                        }
                        let _ = high;
                        out[index + 2..index + 6].copy_from_slice(b"fffd");
                    }
                    Some(0xDC00..=0xDFFF) => out[index + 2..index + 6].copy_from_slice(b"fffd"),
                    _ => {}
                }
                index += 6;
                continue;
            }
            _ => {}
        }
        index += 1;
    }
    out
}

/// What serde_json alone says of a body, by the crate's documented rule: `None` when its
/// envelope cannot be read (not JSON once lone surrogates read as U+FFFD, not an object,
/// or `event`, `event_id`, `inbox_id` or `pod_id` more than once), else the string
/// `event`, if there is one.
pub fn reference_envelope(data: &[u8]) -> Option<Option<String>> {
    let data = reference_without_lone_surrogates(data);
    let value: serde_json::Value = serde_json::from_slice(&data).ok()?;
    let event = value
        .as_object()?
        .get("event")
        .and_then(|event| event.as_str());
    let TopKeys(keys) = serde_json::from_slice(&data).ok()?;
    for envelope in ["event", "event_id", "inbox_id", "pod_id"] {
        if keys.iter().filter(|key| *key == envelope).count() > 1 {
            return None;
        }
    }
    Some(event.map(str::to_owned))
}

/// Event parsing on arbitrary bytes: it must never panic, and every body is an event (the
/// lossless rule). Its type is the reference's string `event`, or empty and malformed
/// when there is none. The claim reader agrees with the parse: it reads a claim exactly
/// when the reference reads the envelope, with the parse's ids; where it cannot, the
/// event is malformed and has no ids (seen through [`Tenant::claimed_by`], the claim's
/// public face: the inbox it names, or the account). Serialising never fails. When the body's envelope
/// is readable, what it writes parses into an event of the same type, and into an equal
/// event unless it is an unknown or malformed one (written from its `serde_json::Value`)
/// whose numbers do not survive serde_json's own write and read (a 150-digit integer may
/// come back a different `f64`).
pub fn parse_event(data: &[u8]) {
    let event = Event::parse(Bytes::copy_from_slice(data));
    let reference = reference_envelope(data);
    let claim = Tenant::claimed_by(data);
    match &reference {
        Some(Some(event_type)) => assert_eq!(event.event_type(), event_type),
        _ => {
            assert_eq!(event.event_type(), "");
            assert!(matches!(event, Event::Malformed(_)), "{event:?}");
        }
    }
    match (&claim, &reference) {
        (Tenant::Inbox(inbox), Some(_)) => assert_eq!(Some(inbox.as_str()), event.inbox_id()),
        (Tenant::Account, Some(_)) => assert!(
            event.inbox_id().is_none_or(|inbox| inbox.len() > 255),
            "{event:?}"
        ),
        (Tenant::Account, None) => {
            assert!(matches!(event, Event::Malformed(_)), "{event:?}");
            assert_eq!((event.event_id(), event.inbox_id()), (None, None));
        }
        (claim, reference) => {
            panic!("the claim reader says {claim:?}, the reference says {reference:?}")
        }
    }
    match &event {
        Event::Unknown(unknown) => {
            let _ = unknown.json();
        }
        Event::Malformed(malformed) => {
            let _ = malformed.json();
            assert!(!malformed.error().is_empty());
        }
        _ => {}
    }
    let serialized = serde_json::to_vec(&event).expect("an event serialises");
    let again = Event::parse(Bytes::from(serialized.clone()));
    // A body whose envelope names a field twice is written with the last of each (as any
    // `serde_json::Value` keeps it), which may then read as a type.
    if reference.is_some() {
        assert_eq!(again.event_type(), event.event_type());
    }
    let value = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).ok();
    let fallback = matches!(event, Event::Unknown(_) | Event::Malformed(_));
    if reference.is_some() && (!fallback || value(&serialized) == value(data)) {
        assert_eq!(event, again);
    }
    let _ = format!("{event:?}");
}

pub const LAYER_SECRET: &str = "whsec_fuzz";
pub const LAYER_NOW: i64 = 1_790_000_000;

/// One step of a body played to the layer.
#[derive(Debug, Clone)]
enum Step {
    Data(Bytes),
    Trailers,
    Error,
    /// Not ready this time; wakes itself at once, as a slow socket would later.
    Pending,
}

/// A request body that plays a script, with a size hint that may lie.
struct Script {
    steps: VecDeque<Step>,
    hint: SizeHint,
}

#[derive(Debug)]
struct ScriptError;

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted body failure")
    }
}

impl std::error::Error for ScriptError {}

impl Body for Script {
    type Data = Bytes;
    type Error = ScriptError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ScriptError>>> {
        match self.steps.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Data(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Step::Trailers) => {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-trailer", HeaderValue::from_static("1"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Some(Step::Error) => Poll::Ready(Some(Err(ScriptError))),
            Some(Step::Pending) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

const HEADER_NAMES: [&str; 7] = [
    "x-timestamp",
    "x-signature",
    "x-event-id",
    "content-length",
    "content-type",
    "transfer-encoding",
    "x-other",
];

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| {
        let mut runtime = runtime.borrow_mut();
        let runtime = runtime.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
        });
        runtime.block_on(future)
    })
}

/// The whole layer, on a tokio runtime, with arbitrary headers, an arbitrary split of the
/// body into frames, stalls, trailers, body errors and lying size hints. It must never panic
/// and never answer 5xx, and it lets a request through exactly when an independent
/// reading of the request says it should.
pub fn drive_layer(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let limit = usize::from(input.u16() % 2048);
    let parse_events = flags & 1 != 0;
    let signed = flags & 2 != 0;
    // A body deadline that never fires, or one already over, which may cut the body off at
    // any frame.
    let deadline = match flags >> 5 {
        0b001 | 0b101 => Some(Duration::from_secs(3600)),
        0b011 | 0b111 => Some(Duration::ZERO),
        _ => None,
    };
    let offset = i64::from(input.u16() as i16);

    let mut headers = HeaderMap::new();
    let header_count = input.u8() % 8;
    for _ in 0..header_count {
        let kind = usize::from(input.u8());
        let value = input.short_bytes();
        let name = match HEADER_NAMES.get(kind % 8) {
            Some(name) => HeaderName::from_static(name),
            None => match HeaderName::from_bytes(input.short_bytes()) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let body = Bytes::copy_from_slice(input.long_bytes());
    if signed {
        let timestamp = (LAYER_NOW + offset).to_string();
        let signature = sign(LAYER_SECRET, &timestamp, &body);
        // Appended, so that copies already there make the request ambiguous.
        headers.append("x-timestamp", HeaderValue::from_str(&timestamp).unwrap());
        headers.append("x-signature", HeaderValue::from_str(&signature).unwrap());
    }

    // Split the body by the remaining bytes: each is a step.
    let mut steps = VecDeque::new();
    let mut remaining = body.clone();
    let mut failed_before_end = false;
    for &byte in input.rest() {
        match byte >> 6 {
            0b11 => steps.push_back(Step::Pending),
            0b10 if byte & 0x3f == 0 => {
                steps.push_back(Step::Error);
                failed_before_end = true;
                break;
            }
            0b10 if byte & 0x3f == 1 => steps.push_back(Step::Trailers),
            _ => {
                let size = usize::from(byte & 0x7f).min(remaining.len());
                steps.push_back(Step::Data(remaining.split_to(size)));
            }
        }
    }
    if !failed_before_end && !remaining.is_empty() {
        steps.push_back(Step::Data(remaining));
    }
    let body_len = body.len() as u64;
    let hint = match (flags >> 3) & 3 {
        0 => SizeHint::default(),
        1 => SizeHint::with_exact(body_len),
        2 => {
            let mut hint = SizeHint::new();
            hint.set_lower(body_len / 2);
            hint
        }
        _ => {
            // A lie: the declared length is not what is sent.
            let mut hint = SizeHint::new();
            hint.set_lower(u64::from(input_seed(data)) % 4096);
            hint
        }
    };

    let mut request = Request::post("/webhooks")
        .body(Script { steps, hint })
        .unwrap();
    *request.headers_mut() = headers.clone();

    let layer = VerifyOpenMailLayer::new(LAYER_SECRET)
        .unwrap()
        .clock(|| LAYER_NOW)
        .body_limit(limit)
        .parse_events(parse_events);
    let layer = match deadline {
        Some(deadline) => layer.body_deadline(deadline),
        None => layer,
    };
    let called = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&called);
    let expected_body = body.clone();
    let inner = tower::service_fn(move |request: Request<VerifiedBody>| {
        let seen = Arc::clone(&seen);
        let expected_body = expected_body.clone();
        async move {
            seen.store(true, Ordering::SeqCst);
            let delivery = request
                .extensions()
                .get::<Delivery>()
                .cloned()
                .expect("a verified request carries its Delivery");
            assert_eq!(
                request.extensions().get::<Arc<Event>>().is_some(),
                parse_events
            );
            let received = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                received, expected_body,
                "the inner service gets the exact body"
            );
            assert_eq!(delivery.body(), &expected_body);
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::new())))
        }
    });
    let service = layer.layer(inner);
    let status = block_on(async move {
        let response = service.oneshot(request).await.unwrap();
        let status = response.status();
        // The body must be readable too.
        let _ = response.into_body().collect().await;
        status
    });

    assert!(!status.is_server_error(), "{status}");
    let accepted = status == StatusCode::OK;
    assert_eq!(accepted, called.load(Ordering::SeqCst));
    if status == StatusCode::REQUEST_TIMEOUT {
        assert_eq!(
            deadline,
            Some(Duration::ZERO),
            "408 without a deadline that could fire"
        );
        return;
    }
    if !accepted {
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
            "{status}"
        );
    }

    // The independent verdict.
    let declared = headers
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let limit_u64 = limit as u64;
    let within_limit = body.len() <= limit
        && declared.is_none_or(|declared| declared <= limit_u64)
        && hint.lower() <= limit_u64;
    let single = |name: &str| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => Some(value.as_bytes()),
            _ => None,
        }
    };
    let signature_ok = match (single("x-timestamp"), single("x-signature")) {
        (Some(timestamp), Some(signature)) => {
            matches!(reference_timestamp(timestamp), Ok(parsed) if reference_fresh(parsed, LAYER_NOW, 300))
                && reference_signature(LAYER_SECRET.as_bytes(), timestamp, &body, signature)
        }
        _ => false,
    };
    // The lossless rule: a verified body reaches the service whatever it holds, parsed or
    // not.
    let expected = signature_ok && within_limit && !failed_before_end;
    assert_eq!(
        accepted, expected,
        "status {status}: signature_ok={signature_ok} within_limit={within_limit} \
         failed={failed_before_end}"
    );
}

fn input_seed(data: &[u8]) -> u16 {
    data.iter()
        .fold(0u16, |seed, byte| seed.rotate_left(3) ^ u16::from(*byte))
}

/// Whether the crate refuses `secret` as configuration: empty, or with whitespace at either
/// end (a trailing newline from a file or `echo`).
fn refused_secret(secret: &[u8]) -> bool {
    match (secret.first(), secret.last()) {
        (Some(first), Some(last)) => first.is_ascii_whitespace() || last.is_ascii_whitespace(),
        _ => true,
    }
}
