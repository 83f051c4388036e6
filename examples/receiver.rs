//! A production-shaped OpenMail webhook receiver on axum. Copy it and replace `handle`.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... PORT=3000 cargo run --example receiver
//! OPENMAIL_WEBHOOK_SECRET=whsec_... REDIS_URL=redis://127.0.0.1:6379/ \
//!     cargo run --example receiver --features redis
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
//!   `handled <event type> <event_id> inbox=<inbox_id or ->`, with `-` for an id the body
//!   does not have. Every verified delivery is handled, even one whose body is not an
//!   OpenMail event at all (not JSON, or no string `event`): its type is then `-`.
//!   Nothing else goes to stdout; rejections and diagnostics go to stderr.
//! - A rejected delivery gets `400` (or `413` when too large) with a short plain-text
//!   reason; the precise reason is printed to stderr.
//! - Deduplication is on, keyed on the signed body's `event_id` within its inbox: an event is handled (and
//!   its stdout line printed) once, however often OpenMail delivers it. A duplicate of a
//!   handled event gets `200` with `{"ok":true,"duplicate":true,"event_id":"<id>"}`; one
//!   that arrives while the first is still being handled gets `409` with `Retry-After`.
//!   Neither is handled, so neither prints a stdout line. Decisions other than the
//!   ordinary first delivery are printed to stderr.
//! - The deduplication state is in memory unless `REDIS_URL` (`redis://host:port/`) is
//!   set, which shares it between every receiver pointing at that Redis (several
//!   replicas behind a load balancer); that needs `--features redis`. While Redis is
//!   unreachable, deliveries get `503` and OpenMail retries them later; a malformed
//!   `REDIS_URL` stops the receiver from starting (exit code 2).
//! - Resources are bounded in bytes and seconds, not in requests (see `serve` and
//!   `app_with_store` for the numbers, and SECURITY.md for the tests that hold them):
//!   the bodies being read share a [`MEMORY_BUDGET`]; a body must arrive at 64 KiB/s after
//!   a 2 s grace and within [`BODY_DEADLINE`], or it gets `408`; when the budget is full a
//!   delivery gets `503` with `Retry-After` and OpenMail retries it. At most
//!   [`CONNECTION_LIMIT`] connections are served at once; HTTP/1.1 heads must arrive within
//!   [`HEADER_READ_TIMEOUT`], and HTTP/2 (also over cleartext, h2c) gets small flow-control
//!   windows, so a connection holds at most [`H2_CONNECTION_WINDOW`] of unread body outside
//!   the layer. When every connection slot is taken, a connection that has had no request
//!   answered below `400` for [`EVICTION_GRACE`] is closed to make room (idle ones first,
//!   then those waiting for a body that has not come), and one idle for [`IDLE_TIMEOUT`]
//!   is closed anyway, so sockets that send nothing, or keep stalled requests in flight,
//!   cannot hold the slots deliveries need.
//! - Every value from a delivery printed to stdout or stderr is escaped and cut short
//!   (`openmail_webhooks::LogSafe`), so a hostile `event_id` cannot forge a line of this
//!   contract.
//! - `RECEIVER_WORK_MS=N` makes the handler wait N ms (an async wait) before it completes,
//!   standing in for an agent calling a model; 0 by default. Not a number: exit code 2.
//!
//! Queue mode (ack fast, process durably; see docs/durable.md):
//!
//! - `OPENMAIL_QUEUE_URL` unset: the handler runs inside the request, as above.
//! - `OPENMAIL_QUEUE_URL=sqlite:/absolute/path`: the embedded store, a SQLite file created
//!   (mode 0600) when missing, used by one process at a time: a file another process uses
//!   stops the receiver at start with a message on stderr and exit code 1 (so does a full
//!   disk that keeps the store from opening; what it stored is kept for the next start).
//! - `OPENMAIL_QUEUE_URL=postgres://USER@HOST:PORT/DB`: the PostgreSQL store, shared by
//!   replicas (needs `--features postgres`), committing with the server's
//!   `synchronous_commit` (`on` if it is `off`), so that an acknowledged event survives a
//!   crash of PostgreSQL too. A database that cannot be reached at start (within 5 s)
//!   stops the receiver with the cause on stderr and exit code 1; once running, an
//!   unreachable database answers `503`. Any other value: exit code 2.
//! - A verified delivery gets `200` with `{"ok":true,"event":"<type>","event_id":"<id>"}`
//!   once the event is committed to the store, and every copy of it, concurrent or while
//!   its handler runs or after it completed, gets `200` with `"duplicate":true` added: no
//!   `409`. A `503` with `Retry-After` comes only when the store fails or is full.
//!   The store replaces the deduplication above for that route; `REDIS_URL` with
//!   `OPENMAIL_QUEUE_URL` is refused at start (exit code 2).
//! - Workers run the handler, 8 at once, and print its stdout line when it finishes; one
//!   process never prints an event twice. A receiver killed (even with `SIGKILL`) and
//!   restarted on the same store runs every stored event that had not completed. An
//!   event is tried at most 8 times, and an attempt cut short by a crash counts: one
//!   whose handler crashes the process every time is set aside as a dead letter after 8
//!   crashes (9 at most, when its first crash came as it left the prefetch, before its
//!   start was recorded: see docs/durable.md) instead of looping, kept in the store and
//!   reported on stderr (`queue: dead letter <event_id> after <n> attempts: <reason>`).
//!   Completed events are remembered for 7 days: a replay with a fresh signature gets `200`
//!   and is not handled again. `SIGTERM` or Ctrl-C stops taking events, lets running
//!   handlers finish for 10 s, and hands the rest back to the store.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Json, Router, routing::post};
use bytes::Bytes;
use http::{HeaderValue, Response, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use openmail_webhooks::dedup::{Decision, DedupStore, DeduplicateLayer, MemoryStore};
use openmail_webhooks::queue::{Durability, EventStore, Ingest, SqliteStore, Workers};
use openmail_webhooks::tenant::InboxSecrets;
use openmail_webhooks::{Event, LogSafe, VerifyOpenMailLayer};
use serde_json::{Value, json};

/// How long a body may take to arrive after its headers, at most. OpenMail wants an answer
/// within 15 seconds; the layer's minimum rate (64 KiB/s after 2 s) cuts slow bodies off
/// much sooner.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);

/// The memory the bodies being read may hold together: 64 MiB. Bodies over 64 KiB share
/// half of it, so large uploads never crowd out small deliveries.
pub const MEMORY_BUDGET: usize = 64 * 1024 * 1024;

/// How many connections are served at once; more wait, unaccepted, in the kernel's
/// backlog. Sized for file descriptors, not for memory, which the budget bounds.
pub const CONNECTION_LIMIT: usize = 1024;

/// How long an HTTP/1.1 request head may take to arrive.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 flow-control windows: how much of a stream's body, and of all of a connection's
/// streams together, a client may send before the receiver reads it. Small, so unread data
/// outside the layer is bounded per connection.
pub const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// See [`H2_STREAM_WINDOW`].
pub const H2_CONNECTION_WINDOW: u32 = 128 * 1024;
/// Concurrent HTTP/2 streams per connection. OpenMail sends one delivery per request.
pub const H2_MAX_STREAMS: u32 = 16;

/// The receiver's routes, behind the verification layer, deduplicated in memory.
pub fn app(layer: VerifyOpenMailLayer) -> Router {
    app_with_store(layer, Arc::new(MemoryStore::new()))
}

/// The verification layer with the receiver's deadline, memory budget and rejection log.
fn bounded(layer: VerifyOpenMailLayer) -> VerifyOpenMailLayer {
    layer
        .body_deadline(BODY_DEADLINE)
        .memory_budget(MEMORY_BUDGET)
        .on_rejection(|rejection| log_line(format_args!("rejected: {rejection}")))
}

/// The receiver's routes, behind the verification layer with its deadline and memory
/// budget, deduplicated in `store`.
pub fn app_with_store(layer: VerifyOpenMailLayer, store: Arc<dyn DedupStore>) -> Router {
    let layer = bounded(layer);
    let dedup = DeduplicateLayer::from_shared(store)
        .on_decision(|decision| match decision {
            Decision::First { .. } | Decision::Completed { .. } => {}
            _ => log_line(format_args!("dedup: {decision}")),
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
    // The layer added last runs first: verify, then deduplicate, then handle.
    Router::new()
        .route("/webhooks", post(handle))
        .layer(dedup)
        .layer(layer)
}

/// Queue mode's routes: the verification layer, then [`Ingest`], which stores the event
/// and answers once it is committed. [`handler`] runs it later, in the workers.
pub fn queue_app<S: EventStore>(layer: VerifyOpenMailLayer, store: Arc<S>) -> Router {
    let ingest =
        Ingest::new(store).on_error(|error| log_line(format_args!("queue: {}", chain(error))));
    // POST alone, as inline: a signed GET or PUT gets `405` and is neither stored nor
    // handled.
    Router::new()
        .route("/webhooks", axum::routing::post_service(ingest))
        .layer(bounded(layer))
}

/// The handler as the workers call it: the same `handle`, with no layer in front (the
/// request carries the extensions verification put in it).
pub fn handler() -> Router {
    Router::new().route("/webhooks", post(handle))
}

/// Serves `app` on `listener` until the listener fails, with the connection limit, the
/// HTTP/1.1 head timeout and the HTTP/2 windows above.
///
/// Connections are what the layer cannot bound, so the server does: any connection idle
/// for [`IDLE_TIMEOUT`] is closed, and when every one of the [`CONNECTION_LIMIT`] slots is
/// taken, one connection is closed to make room, among those that have not had a request
/// answered below `400` for [`EVICTION_GRACE`] (nor been opened in that time):
///
/// 1. the one with no request in flight for longest;
/// 2. else the oldest of those that never had a request answered below `400` and whose
///    requests in flight all still wait for their body.
///
/// Only a verified delivery is answered below `400`, so sockets that send nothing (or half
/// an HTTP/2 preface), and connections that keep requests whose body never comes, cannot
/// hold the slots that deliveries need. A request whose body has all arrived (it is being
/// verified or handled, however long that takes), with the other requests of its
/// connection, and any request on a connection that carried a verified delivery, is never
/// cut off; a new connection has [`EVICTION_GRACE`] for its delivery's body to arrive.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTION_LIMIT));
    let connections = Arc::new(Connections::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        // When the slots are full, one connection is closed to make room, and looked for
        // again while none frees: connections age into candidates as they wait.
        let permit = loop {
            if let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
                break permit;
            }
            connections.close_one();
            let free = Arc::clone(&permits).acquire_owned();
            match tokio::time::timeout(Duration::from_millis(250), free).await {
                Ok(Ok(permit)) => break permit,
                Ok(Err(_closed)) => return Ok(()),
                Err(_elapsed) => {}
            }
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors or a connection reset before it was accepted: wait a
            // moment and carry on rather than stop serving.
            Err(error) if is_transient(&error) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let (id, connection) = connections.open();
        let service = TowerToHyperService::new(Tracked {
            app: app.clone(),
            connection: Arc::clone(&connection),
        });
        let builder = Arc::clone(&builder);
        let connections = Arc::clone(&connections);
        tokio::spawn(async move {
            let serving = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(serving);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    // Errors here are a client's broken connection: nothing to report.
                    _ = &mut serving => break,
                    () = connection.closing.notified() => break,
                    _ = tick.tick() => {
                        if connection.idle_for() >= IDLE_TIMEOUT {
                            break;
                        }
                    }
                }
            }
            connections.close(id);
            drop(permit);
        });
    }
}

/// How long a connection may stay open with no request in flight.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a connection is kept, when the slots are full, after it was opened or last had
/// a request answered below `400`: the layer's own grace before it cuts off a slow body.
pub const EVICTION_GRACE: Duration = Duration::from_secs(2);

/// The connections being served, to choose the one to close when the slots run out.
#[derive(Default)]
struct Connections {
    open: std::sync::Mutex<std::collections::HashMap<u64, Arc<Connection>>>,
    next: std::sync::atomic::AtomicU64,
}

/// One connection: its requests in flight (and how many of them still receive their
/// body), since when it has had none, when it was opened or last had a request answered
/// below `400` (and whether it ever had), and a way to close it.
struct Connection {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Requests in flight whose body has not all arrived.
    receiving: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<std::time::Instant>,
    answered: std::sync::Mutex<Answered>,
    closing: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

/// When a connection was opened or last had a request answered below `400`, and whether
/// it ever had one.
#[derive(Clone, Copy)]
struct Answered {
    at: std::time::Instant,
    ever: bool,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<Connection>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn open(&self) -> (u64, Arc<Connection>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::Instant::now();
        let connection = Arc::new(Connection {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            receiving: std::sync::atomic::AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(now),
            answered: std::sync::Mutex::new(Answered {
                at: now,
                ever: false,
            }),
            closing: tokio::sync::Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        self.lock().insert(id, Arc::clone(&connection));
        (id, connection)
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes one connection to make room, as [`serve`] says, if any is past its grace.
    fn close_one(&self) {
        let open = self.lock();
        let chosen = open
            .values()
            .filter_map(|connection| Some((connection.rank()?, connection)))
            .max_by_key(|(rank, _)| *rank);
        if let Some((_, connection)) = chosen {
            connection
                .closed
                .store(true, std::sync::atomic::Ordering::Release);
            connection.closing.notify_one();
        }
    }
}

impl Connection {
    /// Where the connection stands among those to close to make room (the greatest
    /// first), or `None` while it is within its [`EVICTION_GRACE`], already closing, or
    /// has a request in flight that is being answered (see [`serve`]).
    fn rank(&self) -> Option<(u8, Duration)> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let answered = *self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = answered.at.elapsed();
        if since < EVICTION_GRACE {
            return None;
        }
        let idle = self.idle_for();
        if idle > Duration::ZERO {
            return Some((2, idle));
        }
        // A connection that carried a verified delivery, or has a request in flight whose
        // body has all arrived (it is being verified or handled), is being answered.
        let receiving = self.receiving.load(std::sync::atomic::Ordering::Acquire);
        let in_flight = self.in_flight.load(std::sync::atomic::Ordering::Acquire);
        if answered.ever || in_flight > receiving {
            return None;
        }
        Some((1, since))
    }

    /// A request was answered below `400`: only a verified delivery is.
    fn answered(&self) {
        *self
            .answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Answered {
            at: std::time::Instant::now(),
            ever: true,
        };
    }

    /// How long the connection has had no request in flight; zero while it has one.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        since.elapsed().max(Duration::from_nanos(1))
    }
}

/// Counts a connection's requests in flight, until each one's response is ready or it is
/// dropped.
struct InFlight(Arc<Connection>);

impl InFlight {
    fn start(connection: &Arc<Connection>) -> Self {
        connection
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(Arc::clone(connection))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The app, counting each connection's requests in flight.
#[derive(Clone)]
struct Tracked {
    app: Router,
    connection: Arc<Connection>,
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Tracked {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // A Router is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.connection);
        let request = request.map(|body| Receiving::new(body, &self.connection));
        let response = tower::Service::call(&mut self.app, request);
        Box::pin(async move {
            let response = response.await;
            if matches!(&response, Ok(response) if response.status().as_u16() < 400) {
                in_flight.0.answered();
            }
            drop(in_flight);
            response
        })
    }
}

/// A request's body, counted in its connection's `receiving` until it has all arrived,
/// failed, or been dropped.
struct Receiving {
    body: hyper::body::Incoming,
    connection: Option<Arc<Connection>>,
}

impl Receiving {
    fn new(body: hyper::body::Incoming, connection: &Arc<Connection>) -> Self {
        let connection = (!http_body::Body::is_end_stream(&body)).then(|| {
            connection
                .receiving
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            Arc::clone(connection)
        });
        Self { body, connection }
    }

    fn arrived(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection
                .receiving
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.arrived();
    }
}

impl http_body::Body for Receiving {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        let ended = match &polled {
            std::task::Poll::Ready(None | Some(Err(_))) => true,
            std::task::Poll::Ready(Some(Ok(_))) => http_body::Body::is_end_stream(&self.body),
            std::task::Poll::Pending => false,
        };
        if ended {
            self.arrived();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || error.raw_os_error() == Some(24) // EMFILE
        || error.raw_os_error() == Some(23) // ENFILE
}

/// How long the handler works before it completes (`RECEIVER_WORK_MS`).
static WORK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

async fn handle(Extension(event): Extension<Arc<Event>>) -> Json<Value> {
    let work = WORK.get().copied().unwrap_or_default();
    if !work.is_zero() {
        tokio::time::sleep(work).await;
    }
    println!(
        "handled {} {} inbox={}",
        // A body without a type (Event::Malformed) has the empty string as its type.
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

/// Writes `line` and a newline to stderr in one `write`. Stderr is unbuffered, so
/// `eprintln!` makes a system call for each piece of its format: seven for the duplicate
/// line, which cost as much CPU as verifying the duplicate (26 before `LogSafe` wrote
/// its runs whole).
fn log_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut text = line.to_string();
    text.push('\n');
    // As `eprintln!` does, minus its panic: a closed stderr must not take a request down.
    let _ = std::io::stderr().write_all(text.as_bytes());
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
                .map_err(|error| format!("OPENMAIL_INBOX_SECRETS: {}", chain(&error)))?;
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

/// An error and its causes, one after the other.
fn chain(error: &dyn std::error::Error) -> String {
    let mut shown = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        shown.push_str(": ");
        shown.push_str(&error.to_string());
        cause = error.source();
    }
    shown
}

/// The deduplication store: Redis when `REDIS_URL` is set, memory otherwise.
async fn store_from_env() -> Result<Arc<dyn DedupStore>, String> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("receiver: deduplicating in memory (set REDIS_URL to share it between replicas)");
        return Ok(Arc::new(MemoryStore::new()));
    };
    redis_store(&url).await
}

#[cfg(feature = "redis")]
async fn redis_store(url: &str) -> Result<Arc<dyn DedupStore>, String> {
    use openmail_webhooks::dedup::RedisStore;
    match RedisStore::connect(url).await {
        Ok(store) => {
            eprintln!("receiver: deduplicating in Redis");
            Ok(Arc::new(store))
        }
        // Reachable later is as good: deliveries get 503 until then, and OpenMail retries.
        Err(error) => {
            let store = RedisStore::connect_lazy(url).map_err(|_| {
                "REDIS_URL is not a Redis URL; expected redis://[:password@]host:port/".to_owned()
            })?;
            eprintln!("receiver: Redis is not reachable yet ({error}); answering 503 until it is");
            Ok(Arc::new(store))
        }
    }
}

#[cfg(not(feature = "redis"))]
async fn redis_store(_url: &str) -> Result<Arc<dyn DedupStore>, String> {
    Err("REDIS_URL is set, but this build has no Redis support; \
         run with `--features redis`, or unset REDIS_URL to deduplicate in memory"
        .to_owned())
}

fn port_from_env() -> Result<u16, String> {
    match std::env::var("PORT") {
        Err(_) => Ok(3000),
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT must be a number from 0 to 65535, not {port:?}")),
    }
}

fn work_from_env() -> Result<Duration, String> {
    match std::env::var("RECEIVER_WORK_MS") {
        Err(_) => Ok(Duration::ZERO),
        Ok(ms) => ms
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("RECEIVER_WORK_MS must be a number of milliseconds, not {ms:?}")),
    }
}

/// Where queue mode keeps events, from `OPENMAIL_QUEUE_URL`.
enum QueueUrl {
    Sqlite(std::path::PathBuf),
    // Read only by builds with the `postgres` feature.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres(String),
}

fn queue_from_env() -> Result<Option<QueueUrl>, String> {
    let Ok(url) = std::env::var("OPENMAIL_QUEUE_URL") else {
        return Ok(None);
    };
    if std::env::var_os("REDIS_URL").is_some() {
        return Err(
            "REDIS_URL and OPENMAIL_QUEUE_URL are both set; the queue's store \
                    deduplicates by itself, and stacking Redis deduplication on it would \
                    answer 409 to copies of running events: unset REDIS_URL"
                .to_owned(),
        );
    }
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = std::path::PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!(
                "OPENMAIL_QUEUE_URL must name an absolute path, as sqlite:/var/lib/receiver/events.db, not {url:?}"
            ));
        }
        return Ok(Some(QueueUrl::Sqlite(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Some(QueueUrl::Postgres(url)));
    }
    Err(format!(
        "OPENMAIL_QUEUE_URL must be sqlite:/absolute/path or postgres://user@host:port/db, not {:?}",
        LogSafe::new(&url)
    ))
}

/// Serves queue mode until `SIGTERM` or Ctrl-C, then stops the workers gracefully.
async fn serve_queue<S: EventStore>(
    listener: tokio::net::TcpListener,
    layer: VerifyOpenMailLayer,
    store: Arc<S>,
) -> ExitCode {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = Workers::new(Arc::clone(&store), handler())
        .concurrency(8)
        .on_dead_letter(|dead| {
            log_line(format_args!(
                "queue: dead letter {} after {} attempts: {}",
                LogSafe::or_dash(dead.delivery().event_id()),
                dead.attempts(),
                dead.error()
            ));
        });
    let mut stopped_workers = stopped.clone();
    let workers = tokio::spawn(workers.run(async move {
        let _ = stopped_workers.wait_for(|stop| *stop).await;
    }));
    let code = tokio::select! {
        served = serve(listener, queue_app(layer, store)) => match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("receiver: {error}");
                ExitCode::FAILURE
            }
        },
        () = terminated() => {
            eprintln!("receiver: stopping; running handlers get 10 s to finish");
            ExitCode::SUCCESS
        }
    };
    let _ = stop.send(true);
    drop(stopped);
    let _ = workers.await;
    code
}

/// Completes on `SIGTERM` or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
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
    let (work, queue) = match (work_from_env(), queue_from_env()) {
        (Ok(work), Ok(queue)) => (work, queue),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("receiver: {message}");
            return ExitCode::from(2);
        }
    };
    let _ = WORK.set(work);
    if let Some(queue) = queue {
        return match queue {
            QueueUrl::Sqlite(path) => {
                let store = match SqliteStore::open(&path, Durability::ProcessCrash) {
                    Ok(store) => Arc::new(store),
                    Err(error) => {
                        eprintln!("receiver: {}", chain(&error));
                        return ExitCode::FAILURE;
                    }
                };
                eprintln!("receiver: queueing events in {}", path.display());
                match listen(port).await {
                    Some(listener) => serve_queue(listener, layer, store).await,
                    None => ExitCode::FAILURE,
                }
            }
            #[cfg(feature = "postgres")]
            QueueUrl::Postgres(url) => {
                use openmail_webhooks::queue::PostgresStore;
                // Creates the tables when missing; replicas starting together all succeed.
                // Each acknowledged commit is flushed before the `200`, whatever the
                // `Durability`: PostgreSQL's own process crashes lose nothing acknowledged.
                let store = match PostgresStore::connect(&url, Durability::ProcessCrash).await {
                    Ok(store) => Arc::new(store),
                    Err(error) => {
                        eprintln!("receiver: {}", chain(&error));
                        return ExitCode::FAILURE;
                    }
                };
                eprintln!("receiver: queueing events in PostgreSQL");
                match listen(port).await {
                    Some(listener) => serve_queue(listener, layer, store).await,
                    None => ExitCode::FAILURE,
                }
            }
            #[cfg(not(feature = "postgres"))]
            QueueUrl::Postgres(_) => {
                eprintln!(
                    "receiver: OPENMAIL_QUEUE_URL names PostgreSQL, which this build does not \
                     support; run with `--features postgres`"
                );
                ExitCode::from(2)
            }
        };
    }
    let store = match store_from_env().await {
        Ok(store) => store,
        Err(message) => {
            eprintln!("receiver: {message}");
            return ExitCode::from(2);
        }
    };
    let Some(listener) = listen(port).await else {
        return ExitCode::FAILURE;
    };
    match serve(listener, app_with_store(layer, store)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("receiver: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Listens on `127.0.0.1:port`, or says why not.
async fn listen(port: u16) -> Option<tokio::net::TcpListener> {
    let listener =
        match tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("receiver: cannot listen on 127.0.0.1:{port}: {error}");
                return None;
            }
        };
    if let Ok(addr) = listener.local_addr() {
        eprintln!("receiver: listening on http://{addr}/webhooks");
    }
    Some(listener)
}
