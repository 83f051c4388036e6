//! Deduplication: OpenMail delivers at least once; [`DeduplicateLayer`] makes the inner
//! service process each event once, on one replica or many.
//!
//! OpenMail retries every delivery it did not see answered `2xx` within 15 s, and a
//! captured delivery still verifies for as long as its timestamp is inside the replay
//! window. The layer keys on the **signed** body's `event_id`
//! ([`Event::event_id`](crate::Event::event_id)), never on the `X-Event-Id` header: whoever
//! replays a captured delivery can change a header, not the signed body.
//!
//! | delivery | the layer | answer |
//! |---|---|---|
//! | first | reserves the event (a lease), calls the inner service | the inner service's |
//! | first, inner service answers `2xx` | marks the event done for the retention | the inner service's |
//! | first, inner service answers otherwise, fails, or the request is dropped | releases the reservation, so OpenMail's retry is processed | the inner service's |
//! | duplicate of a processed event | does not call the inner service | `200` ([configurable](DeduplicateLayer::duplicate_response)) |
//! | duplicate while the first is in flight | does not call the inner service | `409` with `Retry-After` |
//! | the store fails | [fails closed](StoreFailure::FailClosed), by default | `503` with `Retry-After` |
//! | no verified event, or no `event_id` in it | passes it through, reports [`Unkeyed`] | the inner service's |
//!
//! **Why `409` for a duplicate in flight.** OpenMail retries anything but `2xx`, so the
//! only requirement is a non-`2xx` that says "not now". `409 Conflict` says what happened
//! (another delivery of the same event holds it) and reads right in OpenMail's delivery
//! log; `503` would look like an outage and `429` like rate limiting.
//!
//! **Why a layer of its own** rather than an option of
//! [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer): the store is the only part with
//! I/O, failure modes and a lifecycle of its own (a Redis connection, a database pool),
//! and an application that verifies on several routes may want deduplication on some of
//! them, or one store per tenant. As its own layer, user code reads as the pipeline it
//! is, verify and then deduplicate, and each layer's options stay short. It must sit
//! inside the verification layer, since it reads the verified `Arc<Event>`; with axum's
//! `Router::layer`, the layer added last is the outermost:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::post, Extension, Router};
//! use openmail_webhooks::dedup::DeduplicateLayer;
//! use openmail_webhooks::{Event, VerifyOpenMailLayer};
//!
//! async fn handle(Extension(event): Extension<Arc<Event>>) -> &'static str {
//!     // Runs once per event_id, however often OpenMail delivers it.
//!     println!("{} {:?}", event.event_type(), event.event_id());
//!     "ok"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/webhooks", post(handle))
//!     .layer(DeduplicateLayer::in_memory())
//!     .layer(VerifyOpenMailLayer::new("whsec_test")?);
//! # Ok::<(), openmail_webhooks::ConfigError>(())
//! ```
//!
//! A request with no `Arc<Event>` extension (the layer is outside verification, or event
//! parsing is off) or whose signed body has no `event_id` goes to the inner service
//! without deduplication, and the hook gets [`Decision::Unkeyed`] (a warning in `tracing`
//! for the missing extension, which is a wiring mistake). Refusing it instead would turn
//! a configuration slip into lost events.
//!
//! # Leases and retention
//!
//! A reservation is a lease of [`DEFAULT_LEASE`] (60 s), far beyond OpenMail's 15 s
//! timeout: if the replica that holds it crashes, a retry after the lease is processed.
//! A done marker lives for [`DEFAULT_RETENTION`] (30 min), which covers OpenMail's retries
//! (the last attempt starts at most 8 min 30 s after the first) plus the replay window of
//! that attempt's timestamp, with margin. The constants' docs give the arithmetic.
//!
//! # Readiness, errors and dropped requests
//!
//! The reservation comes first; only then does the response future drive the inner
//! service's readiness and call it (on the clone it drove), so a duplicate never takes the
//! inner service's capacity. The future marks the event done, or releases it, before it
//! answers: once a `2xx` leaves this layer, the next delivery is a duplicate.
//!
//! When the future is dropped before the inner service answered (the client went away, a
//! timeout outside the layer fired), it hands the reservation back synchronously through
//! [`DedupStore::abandon`]. [`MemoryStore`] releases at once. The Redis store needs I/O:
//! it spawns the release on the current tokio runtime when there is one, and otherwise
//! relies on the lease expiring. Dropped while marking the event done, the future leaves
//! the reservation alone: the event was processed, and a release would invite a second
//! run.
//!
//! Every decision goes to the hook set with [`DeduplicateLayer::on_decision`] and, with the
//! `tracing` feature, to `tracing`: [`Decision::First`], [`Completed`](Decision::Completed),
//! [`DuplicateDone`](Decision::DuplicateDone),
//! [`DuplicateInFlight`](Decision::DuplicateInFlight), [`Released`](Decision::Released),
//! [`StoreFailed`](Decision::StoreFailed) and [`Unkeyed`](Decision::Unkeyed).
//!
//! # Stores
//!
//! - [`MemoryStore`], the default: one process, bounded, about 21 MiB at its default
//!   capacity of 100,000 events.
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
mod layer;
mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;
mod service;
mod store;

pub use decision::{Decision, ReleaseReason, StoreStep, Unkeyed};
pub use future::ResponseFuture;
pub use layer::{
    DeduplicateLayer, StoreFailure, DEFAULT_LEASE, DEFAULT_RETENTION, DEFAULT_RETRY_AFTER,
};
pub use memory::{MemoryStore, DEFAULT_CAPACITY};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStore;
pub use service::Deduplicate;
pub use store::{DedupStore, Reservation, ReserveOutcome, StoreError, StoreFuture};

/// The longest lease or retention a store keeps; longer ones are cut to this, so that no
/// deadline overflows a clock and Redis accepts every expiry.
pub(crate) const LONGEST_TTL: std::time::Duration =
    std::time::Duration::from_secs(366 * 24 * 60 * 60);
