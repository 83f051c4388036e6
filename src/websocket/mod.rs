//! OpenMail events over its WebSocket, handed to the same tower `Service` that serves
//! verified webhooks: no public URL, one handler for both channels.
//!
//! A webhook needs a public URL; the WebSocket needs none, since the client connects out.
//! [`WebSocketClient`] connects to `wss://api.openmail.sh/v1/ws` with the account's API
//! key, subscribes, and turns each event into a `POST` request to the dispatch path
//! (`/webhooks`) carrying what [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer) puts in
//! a verified webhook's extensions: a [`Delivery`](crate::Delivery), whose
//! [`channel`](crate::Delivery::channel) is [`Channel::WebSocket`](crate::Channel), and the
//! parsed `Arc<`[`Event`](crate::Event)`>`. The body is the event's JSON, byte for byte as
//! received, which is what the webhook carries too. A handler written for webhooks runs
//! unchanged.
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{routing::post, Extension, Router};
//! use openmail_webhooks::websocket::WebSocketClient;
//! use openmail_webhooks::dedup::DeduplicateLayer;
//! use openmail_webhooks::{Event, VerifyOpenMailLayer};
//!
//! async fn handle(Extension(event): Extension<Arc<Event>>) -> &'static str {
//!     println!("{} {:?}", event.event_type(), event.event_id());
//!     "ok"
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // One router, deduplicated in one store, fed by both channels.
//! let inner = Router::new()
//!     .route("/webhooks", post(handle))
//!     .layer(DeduplicateLayer::in_memory());
//! // Webhooks: signature-checked, then the inner router.
//! let webhooks = inner.clone().layer(VerifyOpenMailLayer::new("whsec_...")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! tokio::spawn(async move { axum::serve(listener, webhooks).await });
//! // The WebSocket: authenticated by the API key over TLS, straight to the inner router.
//! WebSocketClient::new(std::env::var("OPENMAIL_API_KEY")?)?
//!     .serve(inner)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! `examples/both_channels.rs` is the complete version.
//!
//! The service's response body type must be `'static` (it is for axum and hyper bodies):
//! each event is handled on a task of its own.
//!
//! # Exactly once, across channels and replicas
//!
//! OpenMail can deliver an event more than once: while no WebSocket is connected it falls
//! back to the webhook (when a webhook URL is set), and after a reconnect the WebSocket
//! replays what came after the resume position, so the same event may come by both.
//! Every connection whose subscription matches receives every event, so two replicas each
//! holding a connection both receive it. Put the service behind one
//! [`DeduplicateLayer`](crate::dedup::DeduplicateLayer), shared by the webhook route and the
//! WebSocket, with one store shared by the replicas (a
//! [`RedisStore`](crate::dedup::RedisStore)): it keys on the event's `event_id`, whichever
//! channel it came by. The dedup layer answers a duplicate `200`, which counts as handled
//! here, and one still in flight `409`, which is not a failure: it is tried again on the
//! retry schedule, up to 8 times, without using the event's
//! retries, by when the first copy is usually done. (Any `409` counts as "in flight
//! elsewhere", the service's own included.) A `409` past that bound counts as a failure.
//!
//! # Handling, retries, and the resume position
//!
//! - A `2xx` means handled; any other status, an error or a panic means failed.
//! - Events are handled concurrently, at most [`concurrency`](WebSocketClient::concurrency)
//!   at once (16 by default), so one slow or failing event does not hold up later ones.
//!   The socket keeps being read meanwhile (which also answers the server's pings); only
//!   when more than 64 MiB of events, or 10,000 events since the resume position,
//!   wait does the client stop reading, until some finish.
//! - A failed event is retried in process: [`handler_retries`](WebSocketClient::handler_retries)
//!   more attempts (3 by default), 1 s, 2 s, then 4 s apart, with jitter. Then the client
//!   **gives up on it**: it is reported ([`ClientStatus::HandlerFailed`], which carries the
//!   event and its bytes: the dead letter), and the resume position moves past it.
//! - **The socket does not redeliver**: OpenMail counts an event as delivered once it is
//!   sent. So the resume position, the `last_event_id` the next connection sends, is a
//!   low watermark: the last event of the longest run of settled events (handled, or
//!   given up on and reported), in the order they arrived. An event still being handled
//!   holds it, however many later events succeed, and so does one that a shutdown
//!   interrupted. The next connection (after any disconnect, or after a restart when the
//!   position is persisted) asks for the events after it. Those come back: the ones this
//!   process has settled or is handling are recognised and not handed to the service
//!   again ([`ClientStatus::AlreadyHandled`]); across processes, the dedup layer recognises
//!   them.
//! - **A deliberate departure from OpenMail's guidance.** OpenMail's docs say to resume
//!   from the last event "successfully handled". Taken literally, one event that fails
//!   for good (a bug, a poison message) pins the position for ever: every later event
//!   stays tracked behind it, the replay after a reconnect or a restart brings at most
//!   100 of them, and past 10,000 tracked events the socket is no longer read at all.
//!   Events would be lost silently, many of them, for one failure. This client instead
//!   loses none silently: the failure is reported and dead-lettered, with the event's
//!   bytes, and the stream goes on. An application that wants such an event retried
//!   keeps it from the [status hook](WebSocketClient::on_status) and runs it again later.
//! - The position is loaded from a [`ResumeStore`] before the first connection and saved
//!   each time it advances. [`MemoryResumeStore`], the default, survives reconnections but not a
//!   restart; [`RedisResumeStore`] (with the `redis` feature) or your own store survives both.
//! - Events without an `event_id` are handled like the others, but cannot be a position.
//!
//! # When events may be missed
//!
//! A replay brings at most 100 events. OpenMail delivers events that
//! occur while no WebSocket is connected by webhook, **but only if a webhook URL is set**
//! for the account or the inbox; without one, they are stored and marked failed, and the
//! 101st and later are lost to this client. The client reports
//! [`ClientStatus::PossibleGap`] when:
//! - it starts with no stored position ([`GapReason::NoResumePosition`]): nothing before
//!   this connection is replayed;
//! - the server answers the `subscribe` that carries the position with an `error`
//!   five times in a row, on new connections with backoff
//!   ([`WebSocketError::PositionRefused`], reported as reconnections), and the client then
//!   subscribes without a replay ([`GapReason::PositionUnknown`]). The tries come first
//!   because the server's `error` does not say whether it does not know the event or is
//!   failing for a moment, and dropping the position loses up to 100 events;
//! - a replay brings 100 events: more may have occurred after them
//!   ([`GapReason::ReplayLimitReached`]). The replay is counted from the `subscribe` until
//!   the stream has been quiet for a second after `subscribed`, so heavy live traffic right
//!   after a reconnect can raise it too, which errs on the side of warning;
//! - events it received but has not handled lie more than 100 events after the position,
//!   where no replay reaches ([`GapReason::BeyondReplay`]).
//!
//! With the `tracing` feature, these are logged as warnings.
//!
//! # The connection
//!
//! - **Authentication**: the API key goes in `Authorization: Bearer <key>` on the upgrade
//!   request, never in the URL. It is not the webhook secret. It appears in no `Debug`,
//!   `Display`, error or log of this crate, and the upgrade request is written by this
//!   crate rather than by tungstenite, whose client handshake logs the request's headers
//!   at `trace` level.
//! - **Transport**: `wss://` with the certificate verified by rustls against Mozilla's
//!   roots ([`tls_config`](WebSocketClient::tls_config) replaces them). WebSocket events
//!   carry no signature, so plain `ws://` is allowed only to literal loopback addresses
//!   (`127.0.0.0/8`, `::1`), for tests and local tools; the name `localhost` means
//!   `127.0.0.1` and is never resolved. Even so, any local process that holds the port
//!   can send events, which the client hands to the service as genuine: use `ws://` only
//!   to a server you started.
//! - **Subscribing**: the [`Subscription`] is sent as soon as the connection is open, with
//!   `last_event_id` when there is a position, and the client waits for `subscribed`
//!   ([`subscribe_timeout`](WebSocketClient::subscribe_timeout), 10 s) before counting the
//!   connection as good. Events that arrive before `subscribed` are handled. An `error`
//!   in answer to a `subscribe` without a position (an inbox the account does not own)
//!   stops the client with [`WebSocketError::SubscribeRefused`].
//! - **Liveness**: the server's protocol pings are answered as the socket is read. The
//!   client also sends an application-level `ping` every 30 s and replaces a connection
//!   whose `pong` takes more than 10 s. That is two of the 30 messages per 10 s a
//!   connection may send.
//! - **Reconnecting**: with exponential backoff and jitter, 1 s doubling to 30 s, back to
//!   1 s after a connection that got `subscribed`
//!   ([`reconnect_backoff`](WebSocketClient::reconnect_backoff)).
//!
//! | the connection ends with | the client |
//! |---|---|
//! | close code `4001` (invalid or revoked key), or `401`/`403` on the upgrade | stops: [`serve`](WebSocketClient::serve) returns [`WebSocketError::Unauthorized`] |
//! | close code `4008` (too many connections) | reports it, reconnects after the longest delay (15 to 30 s) |
//! | close code `4029` (rate limit) | reconnects after at least the third step (2 to 4 s) |
//! | `1001` (server shutting down), any other code, a dropped connection, no `pong`, no `subscribed` | reconnects with backoff |
//!
//! - **Messages**: control messages (`subscribed`, `unsubscribed`, `error`, `pong`) have a
//!   `type`; events have `event` and `event_id` and no `type`. By the same rule as a
//!   verified webhook, every text message that is not a control message reaches the
//!   service as an event, as [`Event::Malformed`](crate::Event::Malformed) when the model
//!   cannot read it (not JSON, no string `event`). A control message of an unknown type or
//!   with fields that don't fit it, and a binary frame, are reported as
//!   [`ClientStatus::SkippedMessage`] and skipped; none ends the stream.
//!
//! # Stopping
//!
//! [`serve_with_shutdown`](WebSocketClient::serve_with_shutdown) closes the connection when
//! its future completes, lets the events being handled finish their current attempt
//! (within [`shutdown_grace`](WebSocketClient::shutdown_grace), 10 s), saves the position
//! and returns. Events it did not finish stay after the position, for the next run.

mod backoff;
mod client;
mod dispatch;
mod endpoint;
mod error;
mod message;
mod resume;
mod run;
mod status;
mod subscription;
mod tracker;
mod transport;

use std::time::Duration;

pub use client::WebSocketClient;
pub use error::WebSocketError;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use resume::RedisResumeStore;
pub use resume::{MemoryResumeStore, ResumeStore};
pub use status::{ClientStatus, GapReason, HandlerFailure, SkipReason};
pub use subscription::Subscription;
/// The rustls the client is built with, for [`WebSocketClient::tls_config`].
pub use tokio_rustls::rustls;

/// OpenMail's WebSocket endpoint.
pub(crate) const DEFAULT_URL: &str = "wss://api.openmail.sh/v1/ws";

/// The most events OpenMail replays after `last_event_id`.
pub(crate) const REPLAY_LIMIT: usize = 100;

/// Events handled at once unless [`WebSocketClient::concurrency`] says otherwise.
pub(crate) const DEFAULT_CONCURRENCY: usize = 16;

/// Retries of a failed event unless [`WebSocketClient::handler_retries`] says otherwise.
pub(crate) const DEFAULT_HANDLER_RETRIES: u32 = 3;

/// How many times an event answered `409` (the same event in flight elsewhere, as the
/// deduplication layer answers) is tried again before it counts as failed. These tries
/// follow the [`handler_retries`](WebSocketClient::handler_retries) schedule (1 s
/// doubling to 30 s, with jitter, by default: 1 to 2 min in all) and use none of its
/// retries.
pub(crate) const DEFAULT_IN_FLIGHT_RETRIES: u32 = 8;

/// How long connecting may take unless [`WebSocketClient::connect_timeout`] says
/// otherwise.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `subscribed` may take unless [`WebSocketClient::subscribe_timeout`] says
/// otherwise.
pub(crate) const DEFAULT_SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the client pings unless [`WebSocketClient::ping_interval`] says otherwise:
/// as often as the server pings.
pub(crate) const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a `pong` may take unless [`WebSocketClient::pong_timeout`] says otherwise:
/// what the server allows the client.
pub(crate) const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest message accepted unless [`WebSocketClient::max_message_size`] says
/// otherwise: 16 MiB, four times the webhook layer's default body limit.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// How long stopping waits for events being handled unless
/// [`WebSocketClient::shutdown_grace`] says otherwise.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Bytes of events received and not yet handled past which the client stops reading the
/// socket until some are: the memory bound of the events in flight (plus one message).
pub(crate) const MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

/// Events received since the resume position past which the client stops reading the
/// socket: the bound of what it tracks. An event still being handled holds the position
/// and keeps later events tracked; at this many, the client stops reading until some
/// finish. (A failed event does not hold it: the client gives up on it after its
/// retries; see the module docs.)
pub(crate) const MAX_TRACKED_EVENTS: usize = 10_000;
