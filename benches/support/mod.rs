//! Shared fixtures for the benchmarks: realistic signed deliveries and request bodies
//! that arrive the way hyper delivers them.
#![allow(dead_code)]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The secret every benchmark signs and verifies with.
pub const SECRET: &str = "whsec_bench_9f1c2a7e4b6d8035";

/// Body sizes from the issue: 256 B to 4 MiB.
pub const SIZES: [usize; 6] = [
    256,
    1024,
    16 * 1024,
    256 * 1024,
    1024 * 1024,
    4 * 1024 * 1024,
];

/// The frame size hyper hands a service when it reads a large body.
pub const FRAME: usize = 16 * 1024;

/// A readable label for a body size: `256B`, `16KiB`, `4MiB`.
pub fn label(size: usize) -> String {
    if size >= 1024 * 1024 {
        format!("{}MiB", size / (1024 * 1024))
    } else if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// A `message.received` event of exactly `size` bytes, as OpenMail sends it: the
/// documented fields, with the plain-text body (escaped newlines included) filling the rest.
pub fn payload(size: usize) -> Vec<u8> {
    const FULL: &str = concat!(
        r#"{"event":"message.received","event_id":"evt_7f3a9c21d4","occurred_at":"2024-03-21T10:05:00.000Z","#,
        r#""delivered_at":"2024-03-21T10:05:01.000Z","attempt":1,"inbox_id":"inb_92ma","thread_id":"thr_xyz","#,
        r#""message":{"id":"msg_4c8d5e6f","rfc_message_id":"<original@message.id>","#,
        r#""from":"Ada Lovelace <ada@example.com>","to":"inbox@openmail.sh","cc":["carol@example.com"],"#,
        r#""subject":"Quarterly invoice and the notes from Tuesday","body_text":"@@","#,
        r#""attachments":[{"filename":"document.pdf","contentType":"application/pdf","sizeBytes":12345,"#,
        r#""url":"https://api.openmail.sh/v1/attachments/msg_4c8d5e6f/document.pdf","#,
        r#""parsedText":"Invoice #2847","extractionMethod":"pdf"}],"#,
        r#""received_at":"2024-03-21T10:05:00.000Z"}}"#,
    );
    const COMPACT: &str = concat!(
        r#"{"event":"message.received","event_id":"evt_7f3a9c21d4","inbox_id":"inb_92ma","#,
        r#""message":{"id":"msg_4c8d5e6f","from":"ada@example.com","to":"inbox@openmail.sh","#,
        r#""subject":"Hi","body_text":"@@"}}"#,
    );
    let template = if size >= FULL.len() + 64 {
        FULL
    } else {
        COMPACT
    };
    let base = template.len() - 2;
    assert!(
        size >= base,
        "{size} bytes is too small for a realistic event"
    );
    let text = body_text(size - base);
    let json = template.replacen("@@", &text, 1);
    assert_eq!(json.len(), size);
    json.into_bytes()
}

/// JSON-escaped prose of exactly `length` bytes.
fn body_text(length: usize) -> String {
    const LINE: &str = "Hello Ada, please find the invoice attached. Payment is due within 30 days; \
                        the reference is INV-2847. Thanks for the notes from Tuesday.\\n";
    let mut text = String::with_capacity(length);
    while text.len() + LINE.len() <= length {
        text.push_str(LINE);
    }
    while text.len() < length {
        text.push('.');
    }
    text
}

/// The current Unix time, as OpenMail writes it in `X-Timestamp`.
pub fn now_timestamp() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
        .to_string()
}

/// A request body that yields prepared frames, with an exact size hint as hyper gives for
/// a `Content-Length` body, and counts how often it is polled.
pub struct Frames {
    frames: std::vec::IntoIter<Bytes>,
    remaining: u64,
    exact: bool,
    polls: Option<Arc<AtomicUsize>>,
}

impl Frames {
    /// `body` split into frames of `frame` bytes (zero-copy slices of one buffer).
    pub fn split(body: &Bytes, frame: usize) -> Self {
        let mut frames = Vec::with_capacity(body.len().div_ceil(frame.max(1)));
        let mut start = 0;
        while start < body.len() {
            let end = (start + frame).min(body.len());
            frames.push(body.slice(start..end));
            start = end;
        }
        Self::new(frames)
    }

    /// The whole body as one frame.
    pub fn one(body: &Bytes) -> Self {
        Self::new(vec![body.clone()])
    }

    /// Prepared frames.
    pub fn new(frames: Vec<Bytes>) -> Self {
        let remaining = frames.iter().map(|frame| frame.len() as u64).sum();
        Self {
            frames: frames.into_iter(),
            remaining,
            exact: true,
            polls: None,
        }
    }

    /// Hides the length, as a chunked upload without `Content-Length` does.
    pub fn without_length(mut self) -> Self {
        self.exact = false;
        self
    }

    /// Counts every `poll_frame` into `polls`.
    pub fn counting(mut self, polls: Arc<AtomicUsize>) -> Self {
        self.polls = Some(polls);
        self
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(polls) = &self.polls {
            polls.fetch_add(1, Ordering::Relaxed);
        }
        let next = self.frames.next();
        if let Some(frame) = &next {
            self.remaining -= frame.len() as u64;
        }
        Poll::Ready(next.map(|frame| Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.frames.len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Polls a future that has everything it needs once: with ready bodies and a trivial
/// inner service the layer completes in a single poll, and needs no runtime.
pub fn complete<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future did not complete in one poll"),
    }
}

/// Criterion measurement by the benchmark thread's CPU time rather than wall-clock time.
///
/// On a shared machine another process can take the CPU in the middle of a sample; wall
/// time counts that, the thread's CPU time does not. Everything measured here runs on the
/// benchmark thread (the layer completes in one poll, with no runtime), so nothing is
/// missed. Values are nanoseconds, as with criterion's wall clock.
pub struct ThreadCpuTime;

impl criterion::measurement::Measurement for ThreadCpuTime {
    type Intermediate = cpu_time::ThreadTime;
    type Value = std::time::Duration;

    fn start(&self) -> Self::Intermediate {
        cpu_time::ThreadTime::now()
    }

    fn end(&self, start: Self::Intermediate) -> Self::Value {
        start.elapsed()
    }

    fn add(&self, v1: &Self::Value, v2: &Self::Value) -> Self::Value {
        *v1 + *v2
    }

    fn zero(&self) -> Self::Value {
        std::time::Duration::ZERO
    }

    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        &Nanoseconds
    }
}

/// Formats nanoseconds and byte throughputs the way criterion's wall clock does.
struct Nanoseconds;

impl criterion::measurement::ValueFormatter for Nanoseconds {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e-3, "µs")
        } else if typical < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        values.iter_mut().for_each(|value| *value *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &criterion::Throughput,
        values: &mut [f64],
    ) -> &'static str {
        use criterion::Throughput;
        let (units, divisor, unit) = match *throughput {
            Throughput::Bytes(bytes) | Throughput::BytesDecimal(bytes) => {
                let per_second = bytes as f64 * 1e9 / typical;
                let (divisor, unit) = if per_second < 1024.0 * 1024.0 * 1024.0 {
                    (1024.0 * 1024.0, "MiB/s")
                } else {
                    (1024.0 * 1024.0 * 1024.0, "GiB/s")
                };
                (bytes as f64, divisor, unit)
            }
            Throughput::Bits(bits) => (bits as f64, 1e6, "Mbit/s"),
            Throughput::Elements(elements) | Throughput::ElementsAndBytes { elements, .. } => {
                (elements as f64, 1e6, "Melem/s")
            }
        };
        values
            .iter_mut()
            .for_each(|value| *value = units * 1e9 / *value / divisor);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
