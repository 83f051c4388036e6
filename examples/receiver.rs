//! A production-shaped OpenMail webhook receiver on axum. Copy it and replace `handle`.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... PORT=3000 cargo run --example receiver
//! ```
//!
//! Contract (other tools and tests rely on it):
//!
//! - `OPENMAIL_WEBHOOK_SECRET` is the account webhook's secret. Without it, and without
//!   `OPENMAIL_INBOX_SECRETS`, the receiver refuses to start, with a message on stderr and
//!   exit code 2. `PORT` defaults to 3000. It listens on `127.0.0.1` only; put a reverse
//!   proxy or a tunnel in front of it.
//! - `OPENMAIL_INBOX_SECRETS="inb_a:secret_a,inb_b:secret_b"` configures per-inbox secrets
//!   (an inbox listed twice is rotating). Each delivery is then checked against the secrets
//!   of the inbox its body names, and `OPENMAIL_WEBHOOK_SECRET` becomes optional: when set,
//!   it is the account fallback (pod events, and inboxes with no secret of their own).
//!   One inbox's secret never authenticates another inbox's events.
//! - `POST /webhooks` verifies the delivery. A verified event gets `200` with a JSON body
//!   `{"ok":true,"event":"<type>","event_id":"<id or null>"}`.
//! - Each handled event prints exactly one line to stdout:
//!   `handled <event type> <event_id> inbox=<inbox_id or ->`.
//!   Nothing else goes to stdout; rejections and diagnostics go to stderr.
//! - A rejected delivery gets `400` (or `413` when too large) with a short plain-text
//!   reason; the precise reason is printed to stderr.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::{routing::post, Extension, Json, Router};
use openmail_webhooks::tenant::InboxSecrets;
use openmail_webhooks::{Event, VerifyOpenMailLayer};
use serde_json::{json, Value};

/// The receiver's routes, behind the verification layer.
pub fn app(layer: VerifyOpenMailLayer) -> Router {
    let layer = layer.on_rejection(|rejection| eprintln!("rejected: {rejection}"));
    Router::new().route("/webhooks", post(handle)).layer(layer)
}

async fn handle(Extension(event): Extension<Arc<Event>>) -> Json<Value> {
    println!(
        "handled {} {} inbox={}",
        event.event_type(),
        event.event_id().unwrap_or("-"),
        event.inbox_id().unwrap_or("-"),
    );
    Json(json!({
        "ok": true,
        "event": event.event_type(),
        "event_id": event.event_id(),
    }))
}

/// Reads the configuration from the environment, or says what is missing.
fn layer_from_env() -> Result<VerifyOpenMailLayer, String> {
    let account = std::env::var("OPENMAIL_WEBHOOK_SECRET").ok();
    let inboxes = std::env::var("OPENMAIL_INBOX_SECRETS").ok();
    match (account, inboxes) {
        (None, None) => Err(
            "OPENMAIL_WEBHOOK_SECRET is not set; copy the webhook secret from \
             the OpenMail dashboard (it starts with whsec_), or set OPENMAIL_INBOX_SECRETS to \
             inb_a:secret_a,inb_b:secret_b for per-inbox webhooks"
                .to_owned(),
        ),
        (Some(secret), None) => VerifyOpenMailLayer::new(secret)
            .map_err(|error| format!("OPENMAIL_WEBHOOK_SECRET: {error}")),
        (account, Some(list)) => {
            let mut secrets = InboxSecrets::parse(&list)
                .map_err(|error| format!("OPENMAIL_INBOX_SECRETS: {error}"))?;
            if let Some(account) = account {
                secrets = secrets
                    .account([account])
                    .map_err(|error| format!("OPENMAIL_WEBHOOK_SECRET: {error}"))?;
            }
            eprintln!(
                "receiver: per-inbox secrets for {} inboxes",
                secrets.inbox_count()
            );
            Ok(VerifyOpenMailLayer::with_resolver(secrets))
        }
    }
}

fn port_from_env() -> Result<u16, String> {
    match std::env::var("PORT") {
        Err(_) => Ok(3000),
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a number from 0 to 65535, not {port:?}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let (layer, port) = match (layer_from_env(), port_from_env()) {
        (Ok(layer), Ok(port)) => (layer, port),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("receiver: {message}");
            return ExitCode::from(2);
        }
    };
    let listener =
        match tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("receiver: cannot listen on 127.0.0.1:{port}: {error}");
                return ExitCode::FAILURE;
            }
        };
    if let Ok(addr) = listener.local_addr() {
        eprintln!("receiver: listening on http://{addr}/webhooks");
    }
    match axum::serve(listener, app(layer)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("receiver: {error}");
            ExitCode::FAILURE
        }
    }
}
