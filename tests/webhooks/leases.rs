//! What a body being read leases from the memory budget, counted through
//! [`VerifyOpenMailLayer::buffered_bytes`]: about the bytes it holds, however it is framed.
//!
//! Issue 19, B.6: a body of two tiny frames leased a whole 16 KiB chunk, so 4,096 HTTP/2
//! streams that each sent two tiny frames and stalled filled the default 64 MiB budget,
//! and every genuine delivery got `503`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use openmail_webhooks::VerifyOpenMailLayer;
use openmail_webhooks::body::VerifiedBody;
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service};

use crate::support::{BODY, Frames, SECRET, Step, client, post, signed_headers, unix_now};

/// Bodies that stall after two tiny frames.
const STREAMS: usize = 64;

/// A budget that 64 whole 16 KiB chunks would overfill four times over, and that 64
/// bodies of a few hundred bytes leave mostly free.
const BUDGET: usize = 256 * 1024;

/// What a body of two tiny frames may lease: the smallest chunk they are gathered into.
const TWO_TINY_FRAMES: usize = 256;

fn layer() -> VerifyOpenMailLayer {
    VerifyOpenMailLayer::new(SECRET)
        .unwrap()
        .memory_budget(BUDGET)
        // The stalled bodies stay stalled throughout.
        .body_deadline(Duration::from_secs(600))
}

async fn ok(_: Request<VerifiedBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// Through the public API, one poll each: deterministic to the byte.
#[test]
fn bodies_of_two_tiny_frames_each_lease_the_smallest_chunk() {
    let layer = layer();
    let mut service = layer.layer(tower::service_fn(ok));
    let mut cx = Context::from_waker(Waker::noop());
    let mut waiting = Vec::new();
    for _ in 0..STREAMS {
        let (parts, _) = crate::support::signed(SECRET, unix_now(), BODY).into_parts();
        let body = Frames::new([
            Step::Data(Bytes::from_static(b"{\"event\":")),
            Step::Data(Bytes::from_static(b"\"message.received\"")),
            Step::Pending,
        ]);
        let mut future = Box::pin(service.call(Request::from_parts(parts, body)));
        if let Poll::Ready(response) = future.as_mut().poll(&mut cx) {
            panic!(
                "a stalled body was answered {} with {} bytes leased",
                response.unwrap().status(),
                layer.buffered_bytes()
            );
        }
        waiting.push(future);
    }
    assert_eq!(layer.buffered_bytes(), STREAMS * TWO_TINY_FRAMES);

    // A genuine delivery fits beside them.
    let mut genuine = Box::pin(service.call(crate::support::signed(SECRET, unix_now(), BODY)));
    let Poll::Ready(response) = genuine.as_mut().poll(&mut cx) else {
        panic!("a complete delivery is answered in one poll");
    };
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    drop(waiting);
    assert_eq!(layer.buffered_bytes(), 0);
}

/// A request body fed from a channel: sends what the test pushes, then waits for more.
struct ChannelBody(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

async fn serve_hyper(layer: VerifyOpenMailLayer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = layer.layer(tower::service_fn(ok));
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

/// Waits until `done` holds, for as long as a busy machine may need.
async fn until(mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > Duration::from_secs(20) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The same over real h2c: 64 streams on one connection, each sending one tiny frame, then
/// (once the server holds every first frame) another, then nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_of_two_tiny_frames_leave_the_budget_to_genuine_deliveries() {
    let layer = layer();
    let addr = serve_hyper(layer.clone()).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (client_h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..STREAMS {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let timestamp = unix_now().to_string();
        let request = Request::post("http://localhost/webhooks")
            .header("x-timestamp", &timestamp)
            .header("x-signature", "cd".repeat(32))
            .body(ChannelBody(receiver))
            .unwrap();
        let mut client_h2 = client_h2.clone();
        answers.push(tokio::spawn(async move {
            client_h2.ready().await.ok()?;
            client_h2
                .send_request(request)
                .await
                .ok()
                .map(|response| response.status().as_u16())
        }));
        sender.send(Bytes::from_static(b"{\"event\":")).unwrap();
        senders.push(sender);
    }
    // Each first frame, copied out of the server's read buffer once its stream waits,
    // leases the smallest chunk, as two tiny frames do.
    assert!(
        until(|| layer.buffered_bytes() == STREAMS * TWO_TINY_FRAMES).await,
        "the server never held every first frame: {} B",
        layer.buffered_bytes()
    );
    for sender in &senders {
        sender
            .send(Bytes::from_static(b"\"message.received\""))
            .unwrap();
    }
    let settled = until(|| {
        layer.buffered_bytes() == STREAMS * TWO_TINY_FRAMES
            || answers.iter().any(|answer| answer.is_finished())
    })
    .await;
    let refused = answers.iter().filter(|answer| answer.is_finished()).count();
    assert_eq!(
        refused,
        0,
        "{refused} of {STREAMS} stalled streams were answered, {} B leased",
        layer.buffered_bytes()
    );
    assert!(settled, "{} B leased", layer.buffered_bytes());
    assert_eq!(layer.buffered_bytes(), STREAMS * TWO_TINY_FRAMES);

    // A genuine delivery fits beside them.
    let (status, _) = post(
        &client(),
        addr,
        "/webhooks",
        &signed_headers(SECRET, unix_now(), BODY),
        BODY,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The streams end; their bodies verify as the forgeries they are.
    drop(senders);
    for answer in answers {
        assert_eq!(answer.await.unwrap(), Some(400));
    }
    assert!(until(|| layer.buffered_bytes() == 0).await);
}
