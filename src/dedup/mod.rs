//! Deduplication: OpenMail delivers at least once; [`DeduplicateLayer`] makes the inner
//! service process each event once, on one replica or many, over the webhook and the
//! WebSocket alike.
//!
//! OpenMail retries every delivery it did not see answered `2xx` within 15 s, and a
//! captured delivery still verifies for as long as its timestamp is inside the replay
//! window. The layer keys on the [`Delivery`](crate::Delivery) that verification leaves in
//! the request extensions: the verified body's top-level `inbox_id` and `event_id`
//! ([`DedupKey`]), never the `X-Event-Id` header, which whoever replays a captured delivery
//! can change. It needs no parsed event, so it works with
//! [`parse_events(false)`](crate::VerifyOpenMailLayer::parse_events).
//!
//! | delivery | the layer | answer |
//! |---|---|---|
//! | first | reserves the event (a lease), calls the inner service | the inner service's |
//! | first, inner service answers `2xx` | marks the event done for the retention | the inner service's |
//! | first, inner service answers otherwise, fails, or the request is dropped | releases the reservation, so OpenMail's retry is processed | the inner service's |
//! | duplicate of a processed event | does not call the inner service | `200` ([configurable](DeduplicateLayer::duplicate_response)) |
//! | duplicate while the first is in flight | does not call the inner service | `409` with `Retry-After` |
//! | the store fails, does not answer in time, or is full | [fails closed](OnStoreError::FailClosed), by default | `503` with `Retry-After` |
//! | verified, but the body has no `event_id` | passes it through, reports [`Decision::NoEventId`] | the inner service's |
//! | not verified: no [`Delivery`](crate::Delivery) in the extensions | refuses it, reports [`Decision::Unverified`] | `500` |
//!
//! **Why `409` for a duplicate in flight.** OpenMail retries anything but `2xx`, so the
//! only requirement is a non-`2xx` that says "not now". `409 Conflict` says what happened
//! (another delivery of the same event holds it) and reads right in OpenMail's delivery
//! log; `503` would look like an outage and `429` like rate limiting.
//!
//! **Why `500` without a `Delivery`.** Only the crate's verification makes a `Delivery`,
//! so a request without one was vouched for by nobody: the layer sits outside
//! verification, or on a route without it. Passing such requests through would make the
//! mistake silent and deduplication a no-op; a `500` makes it loud at the first delivery
//! (and, with the `tracing` feature, an `ERROR` event), and OpenMail retries once it is
//! fixed.
//!
//! # The key: one tenant cannot touch another's events
//!
//! The key is the verified `inbox_id` (none for pod events) and the `event_id`, hashed to a
//! fixed 32 bytes ([`DedupKey`]). An inbox's own secret only ever verifies bodies that
//! name that inbox, so a tenant holding one inbox's secret can reserve keys only under
//! that inbox: its signed `evt_X` never makes another inbox's `evt_X` a duplicate. The
//! account (the account webhook's secret, or the WebSocket's API key) is trusted for every
//! inbox, and the key leaves out the channel and the secret, so the same event delivered
//! over both the webhook and the WebSocket is processed once. Because the key is a digest,
//! a signer's 4 MiB `event_id` costs a store what a short one does.
//!
//! # Where it goes
//!
//! **Why a layer of its own** rather than an option of
//! [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer): the store is the only part with
//! I/O, failure modes and a lifecycle of its own (a Redis connection, a database pool),
//! and an application that verifies on several routes may want deduplication on some of
//! them, or one store per tenant. As its own layer, user code reads as the pipeline it
//! is, verify and then deduplicate, and each layer's options stay short. It must sit
//! inside the verification layer; with axum's `Router::layer`, the layer added last is the
//! outermost:
//!
//! ```
//! use axum::{routing::post, Extension, Router};
//! use openmail_webhooks::dedup::DeduplicateLayer;
//! use openmail_webhooks::{Delivery, LogSafe, VerifyOpenMailLayer};
//!
//! async fn handle(Extension(delivery): Extension<Delivery>) -> &'static str {
//!     // Runs once per event, however often OpenMail delivers it.
//!     println!("{}", LogSafe::or_dash(delivery.event_id()));
//!     "ok"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/webhooks", post(handle))
//!     .layer(DeduplicateLayer::in_memory())
//!     .layer(VerifyOpenMailLayer::new("whsec_test")?.parse_events(false));
//! # Ok::<(), openmail_webhooks::ConfigError>(())
//! ```
//!
//! # Leases and retention
//!
//! A reservation is a [lease](DeduplicateLayer::lease) of 60 s, far beyond OpenMail's 15 s
//! timeout: if the replica that holds it crashes, a retry after the lease is processed.
//! A done marker lives for the [retention](DeduplicateLayer::retention), 30 min, which
//! covers OpenMail's retries (the last attempt starts at most 8 min 30 s after the first)
//! plus the replay window of that attempt's timestamp, with margin. The builder methods'
//! docs give the arithmetic. No
//! store forgets a reservation or a marker before then: a full [`MemoryStore`] refuses new
//! events with `503` rather than evict a live marker, which would let a replay through.
//!
//! # Readiness, errors and dropped requests
//!
//! The reservation comes first; only then does the response future drive the inner
//! service's readiness and call it (on the clone it drove), so a duplicate never takes the
//! inner service's capacity. The future marks the event done, or releases it, before it
//! answers: once a `2xx` leaves this layer, the next delivery is a duplicate.
//!
//! The release is armed before `reserve` is sent. When the future is dropped (the client
//! went away, a timeout outside the layer fired) while `reserve` is in flight or before the
//! inner service answered, it hands the reservation back synchronously through
//! [`DedupStore::abandon`]; when `reserve` fails, it does the same, since the command may
//! have landed before the failure. Releases compare the reservation's token, so releasing
//! one that never landed changes nothing. [`MemoryStore`] releases at once. The Redis store
//! needs I/O: it spawns the release on the current tokio runtime when there is one, and
//! otherwise relies on the lease expiring. Dropped while marking the event done, the future
//! leaves the reservation alone: the event was processed, and a release would invite a
//! second run.
//!
//! The layer has no timer: it needs no async runtime. A store bounds its own calls, and
//! a call that fails or times out is a store failure (`503` with `Retry-After` by default).
//! `RedisStore` answers within about a second when Redis is down or hung.
//!
//! Every decision goes to the hook set with [`DeduplicateLayer::on_decision`] and, with the
//! `tracing` feature, to `tracing`: [`Decision::First`], [`Completed`](Decision::Completed),
//! [`DuplicateDone`](Decision::DuplicateDone),
//! [`DuplicateInFlight`](Decision::DuplicateInFlight), [`Released`](Decision::Released),
//! [`ReserveFailed`](Decision::ReserveFailed), [`CompleteFailed`](Decision::CompleteFailed),
//! [`ReleaseFailed`](Decision::ReleaseFailed), [`NoEventId`](Decision::NoEventId) and
//! [`Unverified`](Decision::Unverified). Their `Display`, and the fields logged with them,
//! show ids through [`LogSafe`](crate::LogSafe): escaped and cut short.
//!
//! # Stores
//!
//! - [`MemoryStore`], the default: one process, bounded, 213 bytes an event whatever its
//!   ids, about 20 MiB at its default capacity of 100,000 events.
#![cfg_attr(
    feature = "redis",
    doc = "- [`RedisStore`], behind the `redis` feature: several replicas behind a load balancer."
)]
#![cfg_attr(
    not(feature = "redis"),
    doc = "- `RedisStore`, behind the `redis` feature: several replicas behind a load balancer."
)]
//! - Your own database, through [`DedupStore`], whose docs show how to mark the event done
//!   in the same transaction as the handler's writes (the transactional inbox).

mod decision;
mod future;
mod key;
mod layer;
mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
mod service;
mod store;

pub use decision::{Decision, ReleaseReason};
pub use future::ResponseFuture;
pub use key::DedupKey;
pub use layer::{DeduplicateLayer, OnStoreError};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStore;
pub use service::Deduplicate;
pub use store::{DedupStore, Reservation, ReserveOutcome, StoreError};

pub(crate) use store::StoreFuture;

/// The longest lease or retention a store keeps; longer ones are cut to this, so that no
/// deadline overflows a clock and Redis accepts every expiry.
pub(crate) const LONGEST_TTL: std::time::Duration =
    std::time::Duration::from_secs(366 * 24 * 60 * 60);
