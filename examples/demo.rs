//! The crate doing its job, with no setup: `cargo run --example demo`.
//!
//! Starts a verifying receiver on an ephemeral loopback port with a secret generated for
//! this run, sends it real HTTP requests (a genuine delivery and the usual forgeries), and
//! prints what happened to each. Exits 0 when every outcome is as expected, 1 otherwise.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use axum::{Extension, Router, routing::post};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::{Event, VerifyOpenMailLayer, sign};

/// The layer's default body limit, 4 MiB (`VerifyOpenMailLayer::body_limit`).
const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

const SAMPLE: &str = r#"{"event":"message.received","event_id":"evt_demo_1","occurred_at":"2026-11-28T10:05:00.000Z","inbox_id":"inb_demo","thread_id":"thr_demo","message":{"id":"msg_demo","from":"Ada Lovelace <ada@example.com>","to":"agent@openmail.sh","cc":[],"subject":"Hello","body_text":"Hi there","attachments":[]}}"#;

struct Case {
    name: &'static str,
    secret: String,
    timestamp: i64,
    signed_body: Vec<u8>,
    sent_body: Vec<u8>,
    omit_signature: bool,
    /// Send only the head and wait for the answer: the receiver must refuse the declared
    /// size without waiting for the body.
    head_only: bool,
    expected: StatusCode,
}

/// A secret that exists only for this run.
fn generated_secret() -> String {
    let mut hex = String::from("whsec_demo_");
    for _ in 0..2 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(std::process::id().into());
        hex.push_str(&format!("{:016x}", hasher.finish()));
    }
    hex
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

#[tokio::main]
async fn main() -> ExitCode {
    let secret = generated_secret();
    let rejections = Arc::new(Mutex::new(Vec::<String>::new()));
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));

    let layer = VerifyOpenMailLayer::new(&secret)
        .expect("a generated secret is never empty")
        .on_rejection({
            let rejections = Arc::clone(&rejections);
            move |rejection| rejections.lock().unwrap().push(rejection.to_string())
        });
    let app = Router::new()
        .route(
            "/webhooks",
            post({
                let handled = Arc::clone(&handled);
                move |Extension(event): Extension<Arc<Event>>| async move {
                    handled.lock().unwrap().push(format!(
                        "handled {} {}",
                        event.event_type(),
                        event.event_id().unwrap_or("-")
                    ));
                    "ok"
                }
            }),
        )
        .layer(layer);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding an ephemeral loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("receiver listening on http://{addr}/webhooks, secret generated for this run\n");

    let now = unix_now();
    let sample = SAMPLE.as_bytes().to_vec();
    let mut tampered = sample.clone();
    if let Some(byte) = tampered.iter_mut().find(|byte| **byte == b'H') {
        *byte = b'J';
    }
    let oversized = vec![b' '; DEFAULT_BODY_LIMIT + 1];
    let case =
        |name, secret: &str, timestamp, signed_body: &[u8], sent_body: &[u8], expected| Case {
            name,
            secret: secret.to_owned(),
            timestamp,
            signed_body: signed_body.to_vec(),
            sent_body: sent_body.to_vec(),
            omit_signature: false,
            head_only: false,
            expected,
        };
    let cases = vec![
        case(
            "genuine delivery",
            &secret,
            now,
            &sample,
            &sample,
            StatusCode::OK,
        ),
        case(
            "tampered body",
            &secret,
            now,
            &sample,
            &tampered,
            StatusCode::BAD_REQUEST,
        ),
        case(
            "wrong secret",
            "whsec_not_ours",
            now,
            &sample,
            &sample,
            StatusCode::BAD_REQUEST,
        ),
        case(
            "stale timestamp",
            &secret,
            now - 412,
            &sample,
            &sample,
            StatusCode::BAD_REQUEST,
        ),
        Case {
            omit_signature: true,
            ..case(
                "missing header",
                &secret,
                now,
                &sample,
                &sample,
                StatusCode::BAD_REQUEST,
            )
        },
        Case {
            head_only: true,
            ..case(
                "oversized body",
                &secret,
                now,
                &oversized,
                &oversized,
                StatusCode::PAYLOAD_TOO_LARGE,
            )
        },
    ];

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    println!(
        "{:<18} {:>8} {:>4}  {:<6} detail",
        "case", "expected", "got", "result"
    );
    let mut all_as_expected = true;
    for case in cases {
        let timestamp = case.timestamp.to_string();
        let signature =
            (!case.omit_signature).then(|| sign(&case.secret, &timestamp, &case.signed_body));
        rejections.lock().unwrap().clear();
        handled.lock().unwrap().clear();
        let status = if case.head_only {
            send_head_only(addr, &timestamp, signature.as_deref(), case.sent_body.len()).await
        } else {
            send(
                &client,
                addr,
                &timestamp,
                signature.as_deref(),
                case.sent_body,
            )
            .await
        };
        let ok = status == Some(case.expected);
        all_as_expected &= ok;
        let detail = handled
            .lock()
            .unwrap()
            .iter()
            .chain(rejections.lock().unwrap().iter())
            .next()
            .cloned()
            .unwrap_or_default();
        println!(
            "{:<18} {:>8} {:>4}  {:<6} {}",
            case.name,
            case.expected.as_u16(),
            status.map_or("-".to_owned(), |status| status.as_u16().to_string()),
            if ok { "ok" } else { "WRONG" },
            detail,
        );
    }
    println!();
    if all_as_expected {
        println!("every outcome was as expected");
        ExitCode::SUCCESS
    } else {
        println!("some outcomes were not as expected");
        ExitCode::FAILURE
    }
}

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: std::net::SocketAddr,
    timestamp: &str,
    signature: Option<&str>,
    body: Vec<u8>,
) -> Option<StatusCode> {
    let mut request = Request::post(format!("http://{addr}/webhooks"))
        .header("content-type", "application/json")
        .header("x-timestamp", timestamp)
        .header("x-event-id", "evt_demo_1");
    if let Some(signature) = signature {
        request = request.header("x-signature", signature);
    }
    let request = request.body(Full::new(Bytes::from(body))).ok()?;
    match client.request(request).await {
        Ok(response) => {
            let status = response.status();
            let _ = response.into_body().collect().await;
            Some(status)
        }
        Err(error) => {
            println!("request failed: {error}");
            None
        }
    }
}

/// Writes a request head that declares `length` body bytes, sends none of them, and reads
/// the status line of the answer.
async fn send_head_only(
    addr: std::net::SocketAddr,
    timestamp: &str,
    signature: Option<&str>,
    length: usize,
) -> Option<StatusCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /webhooks HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-timestamp: {timestamp}\r\nx-signature: {}\r\ncontent-length: {length}\r\n\r\n",
        signature.unwrap_or_default()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    let mut answer = [0u8; 64];
    let read = stream.read(&mut answer).await.ok()?;
    let line = std::str::from_utf8(answer.get(..read)?).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}
