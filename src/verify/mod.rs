//! The tower middleware: [`VerifyOpenMailLayer`] and the types around it.
//!
//! The layer reads and checks `X-Timestamp` and `X-Signature` first, so a forged or stale
//! delivery is refused before a byte of its body is read. It then reads the body under a
//! size limit, a deadline and a memory budget, buffering it once, and checks the MAC over
//! the buffered bytes: one path, whether the secrets are fixed or looked up per inbox. Only
//! then does it drive the inner service's readiness and call it, with the verified bytes as the body
//! ([`VerifiedBody`](crate::body::VerifiedBody)) and two values in the request extensions:
//! the parsed event as an `Arc<`[`Event`](crate::Event)`>`, and the
//! [`Delivery`](crate::Delivery) (the verified bytes, the signature metadata and the
//! body's ids).
//!
//! | outcome | status |
//! |---|---|
//! | verified, whatever the body holds (see below) | the inner service's |
//! | missing, repeated or malformed header, stale timestamp, wrong signature | `400` |
//! | per-inbox secrets: unknown inbox, another tenant's secret, an inbox's secret on a body whose claim cannot be read | `400 signature mismatch`, the same as a wrong signature |
//! | the body stream failed | `400` |
//! | the body missed its deadline, or arrived slower than the minimum rate | `408` |
//! | `Content-Length`, or the bytes streamed so far, over the limit | `413` |
//! | the memory budget is full | `503` with `Retry-After` |
//! | per-inbox secrets: the resolver failed, too many lookups, or the lookup missed the deadline | `503` with `Retry-After` |
//! | polled again after answering (a caller's bug) | `500` |
//!
//! **The lossless rule:** once a delivery's signature verifies, its event reaches the inner
//! service. A body the typed model cannot read (not JSON, no string `event`, a lone
//! surrogate escape) arrives as [`Event::Malformed`](crate::Event::Malformed) with the
//! verified bytes, never as a `4xx`, which OpenMail would retry and then mark failed. Only
//! what fails authentication is refused.
//!
//! **And:** no request's content ever causes a 5xx. A `503` with `Retry-After` means a
//! dependency (the secret store) is down or slow, or the memory budget is full: a state of
//! the receiver, which OpenMail's retry resolves.
//!
//! With per-inbox secrets ([`VerifyOpenMailLayer::with_resolver`]) the secret is looked up
//! once the body has been read and its claimed inbox is known; the head is still checked
//! first. See the [`tenant`](crate::tenant) module.
//!
//! `X-Timestamp` and `X-Signature` must each appear exactly once. A request that carries
//! either twice is refused as ambiguous (`400`, [`VerifyError::DuplicateHeader`]) rather
//! than checked on its first copy: OpenMail sends one of each, and a proxy or client that
//! adds a second is not something to guess about.
//!
//! A rejection carries a short plain-text reason; the precise [`Rejection`] goes to the
//! hook set with [`VerifyOpenMailLayer::on_rejection`], and to `tracing` when that feature
//! is on, with every value from the request escaped and cut short.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::post, Extension, Router};
//! use openmail_webhooks::{Event, LogSafe, VerifyOpenMailLayer};
//!
//! async fn handle(Extension(event): Extension<Arc<Event>>) -> &'static str {
//!     println!("{} {}", event.event_type(), LogSafe::or_dash(event.event_id()));
//!     "ok"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/webhooks", post(handle))
//!     .layer(VerifyOpenMailLayer::new("whsec_test")?);
//! # Ok::<(), openmail_webhooks::ConfigError>(())
//! ```
//!
//! # Bounded resources
//!
//! Until its signature is checked, a request is anonymous: anyone can send well-formed,
//! fresh headers and a body that is read to its last byte before it proves forged. What
//! such requests can hold is bounded in bytes and seconds, not in requests:
//!
//! - **Memory:** the bodies being read share a
//!   [`memory_budget`](VerifyOpenMailLayer::memory_budget) (64 MiB by default). Each body
//!   leases about the bytes it has received, whatever the framing: frames under 4 KiB are
//!   gathered as they arrive into chunks that grow with the body (256 bytes to 16 KiB), so
//!   a body of 1-byte chunks holds what its bytes weigh, not one allocation per frame, and
//!   one of two tiny frames holds 256 bytes; a small first frame is copied out of the
//!   server's read buffer once its body has to wait, so a stalled byte never holds that
//!   buffer. A multi-frame body with a declared
//!   `Content-Length` is copied as it arrives into one buffer that grows toward that
//!   length (at most four times the bytes received) and stops at it, each frame let go
//!   once copied, so the frames and the body are never held together; one of unknown
//!   length is joined once at its end. Either way the body ends in one allocation of its
//!   size; one that came in a single frame is copied into one once it verifies, so that a
//!   handler that holds a delivery never holds the server's read buffer with it. A
//!   declared `Content-Length` that cannot fit in what is free is refused before the body
//!   is read, but reserves nothing: a head that never sends its body holds no memory.
//!   Bodies over 64 KiB share half the budget, so large uploads cannot crowd out
//!   OpenMail's small deliveries. When the budget is full the answer is `503` with
//!   `Retry-After`.
//! - **Time:** a body must arrive within the
//!   [`body_deadline`](VerifyOpenMailLayer::body_deadline) (10 s), and, after a 2 s grace,
//!   at the [`min_body_rate`](VerifyOpenMailLayer::min_body_rate) (64 KiB/s), so a stalled
//!   or trickling upload of a 4 KiB body is cut off after about 2 s (`408`). The deadline
//!   bounds the secret lookup of per-inbox secrets too, counted again from the end of the
//!   body (`503`). It needs no async runtime and no help from the server: the layer's own
//!   timer wakes a waiting request by its deadline, so a server that never polls a waiting
//!   connection again (`axum::serve`, hyper-util's) still answers it.
//! - **Work:** the head is checked before the body is read, one MAC runs per secret, the
//!   parse runs only on verified bodies, and per-inbox lookups are bounded by
//!   [`CachedResolver`](crate::tenant::CachedResolver).
//!
//! What the layer cannot bound is what the server holds before the request reaches it:
//! connections, their read buffers and HTTP/2 flow-control windows. The `receiver` example
//! shows the server settings that complete the bound (a connection limit sized for file
//! descriptors, an HTTP/1.1 head timeout, small HTTP/2 windows), and `SECURITY.md` lists
//! every bound with the test that holds it.
//!
//! The layer itself is always ready: it drives the inner service's readiness only after a
//! body has verified, so stalled uploads never hold the inner service's capacity.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::post, Router};
//! use openmail_webhooks::VerifyOpenMailLayer;
//!
//! let verify = VerifyOpenMailLayer::new("whsec_test")?
//!     .body_deadline(Duration::from_secs(8))
//!     .min_body_rate(32 * 1024, Duration::from_secs(2))
//!     .memory_budget(128 * 1024 * 1024);
//! let app: Router = Router::new()
//!     .route("/webhooks", post(|| async { "ok" }))
//!     .layer(verify);
//! # Ok::<(), openmail_webhooks::ConfigError>(())
//! ```

mod budget;
mod buffer;
mod deadline;
mod future;
pub(crate) mod layer;
mod rejection;
mod service;

pub use future::ResponseFuture;
pub use rejection::Rejection;
pub use service::VerifyOpenMail;

#[cfg(feature = "websocket")]
pub(crate) use buffer::own;
pub(crate) use layer::{Config, SecretSource, VerifyOpenMailLayer};

#[cfg(doc)]
use crate::VerifyError;
