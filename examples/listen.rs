//! Watches OpenMail deliveries arrive: a receiver for development that prints everything.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... PORT=3000 cargo run --example listen
//! ```
//!
//! Point a tunnel at it (`ngrok http 127.0.0.1:3000`, `cloudflared tunnel --url http://127.0.0.1:3000`)
//! and press "Test webhook" in the OpenMail dashboard, or send it deliveries with the `send`
//! example. For production, start from the `receiver` example instead.
//!
//! - `OPENMAIL_WEBHOOK_SECRET` is required (exit code 2 without it). `PORT` defaults to 3000.
//!   It listens on `127.0.0.1` only.
//! - Every request, on any path and with any method, goes through the real verification
//!   layer with its defaults, so a wrong path in the dashboard shows up here rather than as a
//!   silent 404.
//! - Each request prints one block to stdout: the time, method and path, the verdict, the
//!   headers (`X-Signature` shortened, credentials hidden), and the body. A verified event is
//!   pretty-printed with its keys in the order they arrived; a rejection carries the precise
//!   reason, such as `X-Timestamp is 412 s old (tolerance 300 s)`, and the body exactly as
//!   received.
//! - A verified event gets `200` with `{"ok":true,"event":..,"event_id":..}`; a rejection
//!   gets the layer's `400` or `413` and its short reason.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use openmail_webhooks::layer::DEFAULT_BODY_LIMIT;
use openmail_webhooks::{Clock, Delivery, Event, SystemClock, VerifyOpenMailLayer};
use serde_json::json;

/// Where each printed block goes.
pub type Report = Arc<dyn Fn(String) + Send + Sync>;

/// How much of a rejected body is printed.
const REJECTED_BODY_SHOWN: usize = 4096;

/// The event types OpenMail documents.
const DOCUMENTED: [&str; 5] = [
    "message.received",
    "inbox.suspended",
    "inbox.reactivated",
    "pod.suspended",
    "pod.reactivated",
];

/// The precise reason for a rejection, carried from the layer to the printer.
#[derive(Clone)]
struct Rejected(Arc<str>);

/// What the layer verified, carried from the handler to the printer.
#[derive(Clone)]
struct Accepted {
    event: Option<Arc<Event>>,
    delivery: Delivery,
}

/// The listener: every request goes through `layer`, and each one's block goes to `report`.
pub fn app(layer: VerifyOpenMailLayer, report: impl Fn(String) + Send + Sync + 'static) -> Router {
    let layer = layer.rejection_response(|rejection| {
        let mut response = rejection.default_response();
        response
            .extensions_mut()
            .insert(Rejected(rejection.to_string().into()));
        response
    });
    let report: Report = Arc::new(report);
    Router::new()
        .fallback(handle)
        .layer(layer)
        .layer(from_fn_with_state(report, watch))
}

async fn handle(
    event: Option<Extension<Arc<Event>>>,
    Extension(delivery): Extension<Delivery>,
) -> Response {
    let event = event.map(|Extension(event)| event);
    let mut response = Json(json!({
        "ok": true,
        "event": event.as_ref().map(|event| event.event_type()),
        "event_id": event.as_ref().and_then(|event| event.event_id()),
    }))
    .into_response();
    response
        .extensions_mut()
        .insert(Accepted { event, delivery });
    response
}

/// Keeps what arrived, lets the layer judge it, and prints the verdict.
async fn watch(State(report): State<Report>, request: Request, next: Next) -> Response {
    let arrived = SystemClock.now();
    let (parts, body) = request.into_parts();
    let line = format!(
        "━━ {} {} {}",
        clock_time(arrived),
        parts.method,
        parts.uri.path_and_query().map_or("/", |path| path.as_str()),
    );
    let headers = parts.headers.clone();
    // Buffered here so that a rejected body can be shown as received.
    let bytes = match axum::body::to_bytes(body, DEFAULT_BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(error) => {
            report(format!(
                "{line}  REJECTED 413\n   the body could not be read within {DEFAULT_BODY_LIMIT} \
                 bytes: {error}\n{}\n",
                print_headers(&headers)
            ));
            return (StatusCode::PAYLOAD_TOO_LARGE, "payload too large").into_response();
        }
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes.clone())))
        .await;

    let block = if let Some(accepted) = response.extensions().get::<Accepted>() {
        verified_block(&line, arrived, accepted, &headers)
    } else if let Some(Rejected(reason)) = response.extensions().get::<Rejected>() {
        format!(
            "{line}  REJECTED {}\n   {reason}\n{}\n{}\n",
            response.status().as_u16(),
            print_headers(&headers),
            raw_body(&bytes),
        )
    } else {
        format!(
            "{line}  answered {} without a verdict\n{}\n",
            response.status(),
            print_headers(&headers)
        )
    };
    report(block);
    response
}

fn verified_block(line: &str, arrived: i64, accepted: &Accepted, headers: &HeaderMap) -> String {
    let delivery = &accepted.delivery;
    let age = arrived.saturating_sub(delivery.timestamp().unwrap_or(arrived));
    let age = match age {
        0 => "signed this second".to_owned(),
        age if age > 0 => format!("signed {age} s ago"),
        age => format!("signed {} s in the future", age.unsigned_abs()),
    };
    let mut block = match &accepted.event {
        Some(event) => {
            let kind = if DOCUMENTED.contains(&event.event_type()) {
                ""
            } else {
                " (not a documented type: the dashboard's test event, or a newer one)"
            };
            format!(
                "{line}  VERIFIED {}{kind}\n   event_id {}  inbox {}\n",
                event.event_type(),
                event.event_id().unwrap_or("(none)"),
                event.inbox_id().unwrap_or("(none)"),
            )
        }
        None => format!("{line}  VERIFIED (not parsed)\n"),
    };
    block.push_str(&format!(
        "   secret #{}  X-Timestamp {} ({age})  {} bytes\n",
        delivery.secret_index().unwrap_or(0),
        delivery.timestamp().unwrap_or(arrived),
        delivery.body().len(),
    ));
    let body_id = accepted.event.as_ref().and_then(|event| event.event_id());
    match (delivery.event_id_header(), body_id) {
        (Some(header), Some(body)) if header != body => block.push_str(&format!(
            "   note: X-Event-Id {header} differs from the body's event_id {body}; \
             deduplicate on the body's, which is signed\n"
        )),
        (None, _) => block.push_str("   note: no X-Event-Id header\n"),
        _ => {}
    }
    block.push_str(&print_headers(headers));
    block.push_str("\nbody:\n");
    match std::str::from_utf8(delivery.body()) {
        Ok(text) => block.push_str(&indent(&pretty_json(text))),
        Err(_) => block.push_str(&raw_body(delivery.body())),
    }
    block.push('\n');
    block
}

fn print_headers(headers: &HeaderMap) -> String {
    let mut text = String::from("headers:");
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        let shown = match name.as_str() {
            "authorization" | "proxy-authorization" | "cookie" => "(hidden)".to_owned(),
            "x-signature" if value.len() > 12 => {
                let prefix: String = value.chars().take(12).collect();
                format!("{prefix}… ({} chars)", value.chars().count())
            }
            _ => value.into_owned(),
        };
        text.push_str(&format!("\n   {name}: {shown}"));
    }
    text
}

fn raw_body(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "body: (empty)".to_owned();
    }
    let shown = bytes.get(..REJECTED_BODY_SHOWN).unwrap_or(bytes);
    let mut text = format!(
        "body ({} bytes, as received):\n{}",
        bytes.len(),
        indent(&String::from_utf8_lossy(shown))
    );
    if shown.len() < bytes.len() {
        text.push_str("\n   …");
    }
    text
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("   {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Re-indents JSON text without parsing it into a map, so keys keep the order they arrived
/// in and every value is shown as sent.
pub fn pretty_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = raw.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|next| next.is_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// `HH:MM:SS` UTC.
fn clock_time(unix: i64) -> String {
    let secs = unix.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let secret = match std::env::var("OPENMAIL_WEBHOOK_SECRET") {
        Ok(secret) if !secret.is_empty() => secret,
        _ => {
            eprintln!(
                "listen: OPENMAIL_WEBHOOK_SECRET is not set; copy the webhook secret from the \
                 OpenMail dashboard (whsec_ prefix included)"
            );
            return ExitCode::from(2);
        }
    };
    let port = match std::env::var("PORT").map(|port| port.parse::<u16>()) {
        Err(_) => 3000,
        Ok(Ok(port)) => port,
        Ok(Err(_)) => {
            eprintln!("listen: PORT must be a number from 0 to 65535");
            return ExitCode::from(2);
        }
    };
    let layer = match VerifyOpenMailLayer::new(secret) {
        Ok(layer) => layer,
        Err(error) => {
            eprintln!("listen: OPENMAIL_WEBHOOK_SECRET: {error}");
            return ExitCode::from(2);
        }
    };
    let listener =
        match tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("listen: cannot listen on 127.0.0.1:{port}: {error}");
                return ExitCode::FAILURE;
            }
        };
    let port = listener.local_addr().map_or(port, |addr| addr.port());
    eprintln!(
        "listen: verifying deliveries on http://127.0.0.1:{port} (any path)\n\
         listen: expose it with a tunnel, such as `ngrok http 127.0.0.1:{port}`, and set the webhook URL \
         to the tunnel's https address"
    );
    let report = |block: String| {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{block}");
        let _ = stdout.flush();
    };
    match axum::serve(listener, app(layer, report)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("listen: {error}");
            ExitCode::FAILURE
        }
    }
}
