//! Shared helpers for the integration tests: signed requests, scripted bodies and a small
//! HTTP client for servers on loopback.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

pub const SECRET: &str = "whsec_integration";
pub const NOW: i64 = 1_790_000_000;
pub const BODY: &[u8] = br#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_1"}"#;

/// A request signed at `timestamp` with `secret`, carrying `body` in one frame.
pub fn signed(secret: &str, timestamp: i64, body: &[u8]) -> Request<Frames> {
    let timestamp = timestamp.to_string();
    Request::post("/webhooks")
        .header("content-type", "application/json")
        .header("x-timestamp", &timestamp)
        .header(
            "x-signature",
            openmail_webhooks::sign(secret, &timestamp, body),
        )
        .header("x-event-id", "evt_header")
        .body(Frames::once(Bytes::copy_from_slice(body)))
        .unwrap()
}

/// One step of a scripted body.
#[derive(Debug, Clone)]
pub enum Step {
    Data(Bytes),
    Error(&'static str),
    Pending,
}

/// A request body that plays a script of frames, errors and stalls, and counts its polls.
#[derive(Debug, Clone)]
pub struct Frames {
    steps: VecDeque<Step>,
    hint: SizeHint,
    polls: Arc<AtomicUsize>,
}

impl Frames {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            hint: SizeHint::default(),
            polls: Arc::default(),
        }
    }

    /// One frame with an exact size hint, as hyper gives a `Content-Length` body.
    pub fn once(bytes: Bytes) -> Self {
        let length = bytes.len() as u64;
        Self::new([Step::Data(bytes)]).exact(length)
    }

    /// `body` split into frames of `size` bytes, with no size hint, as a chunked upload.
    pub fn chunked(body: &[u8], size: usize) -> Self {
        Self::new(
            body.chunks(size.max(1))
                .map(|chunk| Step::Data(Bytes::copy_from_slice(chunk))),
        )
    }

    pub fn exact(mut self, length: u64) -> Self {
        self.hint = SizeHint::with_exact(length);
        self
    }

    /// A handle that counts how often the body was polled.
    pub fn polls(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.polls)
    }
}

#[derive(Debug)]
pub struct ScriptedError(&'static str);

impl std::fmt::Display for ScriptedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ScriptedError {}

impl Body for Frames {
    type Data = Bytes;
    type Error = ScriptedError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ScriptedError>>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        match self.steps.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Data(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Some(Step::Error(message)) => Poll::Ready(Some(Err(ScriptedError(message)))),
            Some(Step::Pending) => {
                // Stall forever: nothing will wake this task again.
                self.steps.push_front(Step::Pending);
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Reads a whole response into its status and body text.
pub async fn read<B>(response: Response<B>) -> (StatusCode, String)
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub type HttpClient = Client<HttpConnector, http_body_util::Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// POSTs `body` to `addr` with the given headers over real HTTP/1.1.
pub async fn post(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<Bytes>,
) -> (StatusCode, String) {
    let mut request = Request::post(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(http_body_util::Full::new(body.into()))
        .unwrap();
    read(client.request(request).await.unwrap()).await
}

/// The headers OpenMail would send for `body` at `timestamp`.
pub fn signed_headers(secret: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let timestamp = timestamp.to_string();
    vec![
        ("content-type", "application/json".to_owned()),
        (
            "x-signature",
            openmail_webhooks::sign(secret, &timestamp, body),
        ),
        ("x-timestamp", timestamp),
        ("x-event-id", "evt_header".to_owned()),
    ]
}

/// The current Unix time, for servers that use the system clock.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A body type that never fails, for services that answer with a fixed string.
pub type Never = Infallible;

/// Writes a request head that declares `length` body bytes, sends none of them, and returns
/// the answer's status. A server that refuses on the head alone answers at once.
pub async fn send_head_only(
    addr: SocketAddr,
    headers: &[(&str, String)],
    length: usize,
) -> StatusCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head =
        format!("POST /webhooks HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {length}\r\n");
    for (name, value) in headers.iter().filter(|(name, _)| *name != "content-length") {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut answer))
        .await
        .expect("the server answers without waiting for the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}
