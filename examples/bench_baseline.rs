//! Benchmark fixture for `benches/http.sh`: the axum servers the receiver example is
//! compared with. Not an example to copy.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... PORT=3001 cargo run --release --example bench_baseline -- unverified
//! OPENMAIL_WEBHOOK_SECRET=whsec_... PORT=3002 cargo run --release --example bench_baseline -- by-hand
//! OPENMAIL_WEBHOOK_SECRET=whsec_... PORT=3003 cargo run --release --example bench_baseline -- quickstart
//! OPENMAIL_WEBHOOK_SECRET=whsec_... PORT=3004 cargo run --release --example bench_baseline -- stack
//! ```
//!
//! - `unverified`: `POST /webhooks` reads the body and answers, verifying nothing. It is the
//!   ceiling: no verifier can beat it.
//! - `by-hand`: the documentation's recipe, as users write it without this crate: build
//!   the message with `format!`, key a fresh HMAC, hex-encode it, compare the strings,
//!   check the replay window, parse the body into `serde_json::Value`.
//! - `quickstart`: the README's quickstart, `VerifyOpenMailLayer` on the route and a
//!   handler that reads the typed event: the layer alone, without the receiver example's
//!   deduplication and connection management.
//! - `stack`: the receiver example's stack, served by `axum::serve`: the layer with its
//!   deadline, memory budget and rejection log, in-memory deduplication that logs the
//!   duplicate line to stderr as the receiver does (one `write` per line) and answers
//!   duplicates with the same JSON, and the same handler. What the receiver adds is its
//!   connection management, so the ratio of the two is what that costs.
//!
//! All of them answer a delivery as the receiver example does (one line on stdout, `200` with
//! `{"ok":true,"event":…,"event_id":…}`, the quickstart adding its `signed_at`), so that
//! the only difference left is how the delivery is checked and parsed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router, body::Bytes, routing::post};
use hmac::{KeyInit, Mac};
use openmail_webhooks::dedup::{Decision, DeduplicateLayer};
use openmail_webhooks::{Delivery, Event, LogSafe, VerifyOpenMailLayer};
use serde_json::{Value, json};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

async fn unverified(body: Bytes) -> Json<Value> {
    // Read, not parsed: this route trusts and inspects nothing.
    let _ = body.len();
    println!("handled - - inbox=-");
    Json(json!({ "ok": true, "event": null, "event_id": null }))
}

async fn by_hand(State(secret): State<Arc<String>>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(timestamp), Some(signature)) = (header("x-timestamp"), header("x-signature")) else {
        return (StatusCode::BAD_REQUEST, "missing headers").into_response();
    };
    let Ok(body) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not UTF-8").into_response();
    };
    let message = format!("{timestamp}.{body}");
    let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    mac.update(message.as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    if expected != signature {
        return (StatusCode::BAD_REQUEST, "invalid signature").into_response();
    }
    let Ok(sent) = timestamp.parse::<i64>() else {
        return (StatusCode::BAD_REQUEST, "invalid timestamp").into_response();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    if (now - sent).abs() > 300 {
        return (StatusCode::BAD_REQUEST, "stale timestamp").into_response();
    }
    let Ok(event) = serde_json::from_str::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, "invalid JSON").into_response();
    };
    println!(
        "handled {} {} inbox={}",
        event["event"].as_str().unwrap_or("-"),
        event["event_id"].as_str().unwrap_or("-"),
        event["inbox_id"].as_str().unwrap_or("-"),
    );
    Json(json!({
        "ok": true,
        "event": event["event"],
        "event_id": event["event_id"],
    }))
    .into_response()
}

async fn quickstart(
    Extension(event): Extension<Arc<Event>>,
    Extension(delivery): Extension<Delivery>,
) -> Json<Value> {
    // The type of an unknown event is the sender's text: escaped like the ids.
    println!(
        "handled {} {} inbox={}",
        LogSafe::new(event.event_type()),
        LogSafe::or_dash(event.event_id()),
        LogSafe::or_dash(event.inbox_id()),
    );
    Json(json!({
        "ok": true,
        "event": event.event_type(),
        "event_id": event.event_id(),
        "signed_at": delivery.timestamp(),
    }))
}

/// The receiver example's handler.
async fn stack(Extension(event): Extension<Arc<Event>>) -> Json<Value> {
    println!(
        "handled {} {} inbox={}",
        LogSafe::or_dash(Some(event.event_type()).filter(|kind| !kind.is_empty())),
        LogSafe::or_dash(event.event_id()),
        LogSafe::or_dash(event.inbox_id()),
    );
    Json(json!({
        "ok": true,
        "event": event.event_type(),
        "event_id": event.event_id(),
    }))
}

/// The receiver example's layers and log lines.
fn stack_app(layer: VerifyOpenMailLayer) -> Router {
    let layer = layer
        .body_deadline(std::time::Duration::from_secs(10))
        .memory_budget(64 * 1024 * 1024)
        .on_rejection(|rejection| log_line(format_args!("rejected: {rejection}")));
    let dedup = DeduplicateLayer::in_memory()
        .on_decision(|decision| match decision {
            Decision::First { .. } | Decision::Completed { .. } => {}
            _ => log_line(format_args!("dedup: {decision}")),
        })
        .duplicate_response(|key| {
            let body = json!({ "ok": true, "duplicate": true, "event_id": key.event_id() });
            let mut response = axum::http::Response::new(Bytes::from(body.to_string()));
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
            response
        });
    Router::new()
        .route("/webhooks", post(stack))
        .layer(dedup)
        .layer(layer)
}

/// The receiver example's way to write a line to stderr: in one `write`.
fn log_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut text = line.to_string();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

#[tokio::main]
async fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let secret = std::env::var("OPENMAIL_WEBHOOK_SECRET").unwrap_or_default();
    let port: u16 = match std::env::var("PORT").map(|port| port.parse()) {
        Err(_) => 3000,
        Ok(Ok(port)) => port,
        Ok(Err(_)) => {
            eprintln!("bench_baseline: PORT must be a number from 0 to 65535");
            return ExitCode::from(2);
        }
    };
    let app = match mode.as_str() {
        "unverified" => Router::new().route("/webhooks", post(unverified)),
        "by-hand" if !secret.is_empty() => Router::new()
            .route("/webhooks", post(by_hand))
            .with_state(Arc::new(secret)),
        "quickstart" | "stack" => match VerifyOpenMailLayer::new(secret) {
            Ok(layer) if mode == "stack" => stack_app(layer),
            Ok(layer) => Router::new()
                .route("/webhooks", post(quickstart))
                .layer(layer),
            Err(error) => {
                eprintln!("bench_baseline: {error}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!(
                "usage: bench_baseline unverified|by-hand|quickstart|stack \
                 (all but unverified need OPENMAIL_WEBHOOK_SECRET)"
            );
            return ExitCode::from(2);
        }
    };
    let listener =
        match tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("bench_baseline: cannot listen on 127.0.0.1:{port}: {error}");
                return ExitCode::FAILURE;
            }
        };
    eprintln!("bench_baseline: {mode} on http://127.0.0.1:{port}/webhooks");
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_baseline: {error}");
            ExitCode::FAILURE
        }
    }
}
