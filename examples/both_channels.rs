//! One axum router fed by both of OpenMail's channels, the webhook and the WebSocket,
//! deduplicated in one store: each event is handled once, however it arrives.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... OPENMAIL_API_KEY=om_... \
//!     cargo run --example both_channels --features websocket
//! ```
//!
//! Contract (the `receiver` example's, plus the WebSocket; tests rely on it):
//!
//! - `OPENMAIL_WEBHOOK_SECRET` is the account webhook's secret; without it the example
//!   refuses to start, with a message on stderr and exit code 2. `PORT` defaults to 3000.
//!   It listens on `127.0.0.1` only.
//! - `POST /webhooks` verifies the delivery. A verified event gets `200` with a JSON body
//!   `{"ok":true,"event":"<type>","event_id":"<id or null>"}`; a rejected one `400` (or
//!   `413`) with a short plain-text reason, and the precise reason on stderr.
//! - When `OPENMAIL_API_KEY` is set, it also connects to OpenMail's WebSocket
//!   (`OPENMAIL_WS_URL` overrides the URL) and hands every event to the same router,
//!   behind the same deduplication. A refused key (close code `4001`), a refused
//!   subscription, or an unusable key or URL stops it, with exit code 2.
//! - Each handled event prints exactly one line to stdout, whichever channel brought it:
//!   `handled <event type> <event_id> inbox=<inbox_id or ->`, each value escaped and cut
//!   short. An event that arrives by both channels (OpenMail falls back to the webhook
//!   while the socket is down, and replays after it reconnects) prints one line. Nothing
//!   else goes to stdout; the WebSocket's status, rejections and deduplication decisions
//!   go to stderr.
//! - A duplicate of a handled event gets `200` with
//!   `{"ok":true,"duplicate":true,"event_id":"<id>"}`; one that arrives while the first is
//!   being handled gets `409` with `Retry-After` (the WebSocket side retries it).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json, Router, routing::post};
use bytes::Bytes;
use http::{HeaderValue, Response, header};
use openmail_webhooks::dedup::{Decision, DedupStore, DeduplicateLayer, MemoryStore};
use openmail_webhooks::websocket::{ClientStatus, WebSocketClient};
use openmail_webhooks::{Event, LogSafe, VerifyOpenMailLayer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::limit::GlobalConcurrencyLimitLayer;

/// How many webhook deliveries are read and verified at once (see the `receiver` example).
pub const CONCURRENCY_LIMIT: usize = 64;

/// How long a webhook body may take to arrive after its headers.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// Where each `handled …` line goes: stdout in the binary, a buffer in tests.
pub type Lines = Arc<dyn Fn(String) + Send + Sync>;

/// Where the WebSocket's statuses go: stderr in the binary.
pub type Statuses = Arc<dyn Fn(&ClientStatus) + Send + Sync>;

/// What the environment configures.
#[derive(Debug, Clone)]
pub struct Settings {
    pub webhook_secret: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub ws_url: Option<String>,
}

impl Settings {
    /// Reads the settings through `var`, or says what is wrong.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let webhook_secret = var("OPENMAIL_WEBHOOK_SECRET").ok_or(
            "OPENMAIL_WEBHOOK_SECRET is not set; copy the webhook secret from the OpenMail \
             dashboard (it starts with whsec_)",
        )?;
        let port = match var("PORT") {
            None => 3000,
            Some(port) => port
                .parse()
                .map_err(|_| format!("PORT must be a number from 0 to 65535, not {port:?}"))?,
        };
        Ok(Self {
            webhook_secret,
            port,
            api_key: var("OPENMAIL_API_KEY").filter(|key| !key.trim().is_empty()),
            ws_url: var("OPENMAIL_WS_URL"),
        })
    }
}

/// The application: `POST /webhooks` handled once per event, behind one deduplication
/// layer over `store`. The WebSocket calls this router directly.
pub fn inner(store: Arc<dyn DedupStore>, lines: Lines) -> Router {
    let dedup = DeduplicateLayer::from_shared(store)
        .on_decision(|decision| match decision {
            Decision::First { .. } | Decision::Completed { .. } => {}
            _ => eprintln!("dedup: {decision}"),
        })
        .duplicate_response(|key| {
            let body = json!({ "ok": true, "duplicate": true, "event_id": key.event_id() });
            let mut response = Response::new(Bytes::from(body.to_string()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        });
    Router::new()
        .route("/webhooks", post(handle))
        .with_state(lines)
        .layer(dedup)
}

/// The webhook side: `inner` behind a concurrency limit and the verification layer.
pub fn webhook_app(layer: VerifyOpenMailLayer, inner: Router) -> Router {
    let layer = layer
        .body_deadline(BODY_DEADLINE)
        .on_rejection(|rejection| eprintln!("rejected: {rejection}"));
    inner
        .layer(layer)
        .layer(GlobalConcurrencyLimitLayer::new(CONCURRENCY_LIMIT))
}

/// The WebSocket side, when an API key is configured.
pub fn websocket_client(
    settings: &Settings,
    statuses: Statuses,
) -> Result<Option<WebSocketClient>, String> {
    let Some(api_key) = &settings.api_key else {
        return Ok(None);
    };
    let mut client = WebSocketClient::new(api_key.as_str())
        .map_err(|error| format!("OPENMAIL_API_KEY: {error}"))?;
    if let Some(url) = &settings.ws_url {
        client = client
            .url(url)
            .map_err(|error| format!("OPENMAIL_WS_URL: {error}"))?;
    }
    Ok(Some(client.on_status(move |status| statuses(status))))
}

async fn handle(
    State(lines): State<Lines>,
    Extension(event): Extension<Arc<Event>>,
) -> Json<Value> {
    lines(format!(
        "handled {} {} inbox={}",
        // A body without a type (Event::Malformed) has the empty string as its type.
        LogSafe::or_dash(Some(event.event_type()).filter(|kind| !kind.is_empty())),
        LogSafe::or_dash(event.event_id()),
        LogSafe::or_dash(event.inbox_id()),
    ));
    Json(json!({
        "ok": true,
        "event": event.event_type(),
        "event_id": event.event_id(),
    }))
}

/// Serves webhooks on `listener` and, with an API key, the WebSocket, until either stops.
/// `client` is the WebSocket side ([`websocket_client`]), configured further if need be.
pub async fn run(
    settings: &Settings,
    listener: TcpListener,
    client: Option<WebSocketClient>,
    lines: Lines,
) -> Result<(), String> {
    let layer = VerifyOpenMailLayer::new(settings.webhook_secret.as_str())
        .map_err(|error| format!("OPENMAIL_WEBHOOK_SECRET: {error}"))?;
    let inner = inner(Arc::new(MemoryStore::new()), lines);
    let webhooks = axum::serve(listener, webhook_app(layer, inner.clone()));
    match client {
        None => webhooks.await.map_err(|error| error.to_string()),
        Some(client) => tokio::select! {
            served = webhooks => served.map_err(|error| error.to_string()),
            connected = client.serve(inner) => match connected {
                Ok(()) => Ok(()),
                Err(error) => Err(format!("WebSocket: {error}")),
            },
        },
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_vars(|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("both_channels: {message}");
            return ExitCode::from(2);
        }
    };
    let statuses: Statuses = Arc::new(|status| eprintln!("websocket: {status}"));
    let client = match websocket_client(&settings, statuses) {
        Ok(client) => client,
        Err(message) => {
            eprintln!("both_channels: {message}");
            return ExitCode::from(2);
        }
    };
    if client.is_none() {
        eprintln!("both_channels: OPENMAIL_API_KEY is not set; serving webhooks only");
    }
    let address = SocketAddr::from(([127, 0, 0, 1], settings.port));
    let listener = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("both_channels: cannot listen on {address}: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Ok(address) = listener.local_addr() {
        eprintln!("both_channels: listening on http://{address}/webhooks");
    }
    let lines: Lines = Arc::new(|line| println!("{line}"));
    match run(&settings, listener, client, lines).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("both_channels: {message}");
            ExitCode::from(2)
        }
    }
}
