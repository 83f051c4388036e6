//! The tower middleware: [`VerifyOpenMailLayer`] and the types around it.
//!
//! The layer reads and checks `X-Timestamp` and `X-Signature` first, so a forged or stale
//! delivery is refused before a byte of its body is read. It then streams the body into the
//! MAC under a size limit, buffering it once. Only then does it drive the inner service's
//! readiness and call it, with the verified bytes as the body and two values in the
//! request extensions: the parsed event as an `Arc<`[`Event`](crate::Event)`>`, and the
//! [`Delivery`] (the verified bytes and the signature metadata).
//!
//! | outcome | status |
//! |---|---|
//! | verified, and the body is a JSON object with a string `event` | the inner service's |
//! | missing, repeated or malformed header, stale timestamp, wrong signature | `400` |
//! | verified body that is not an OpenMail event | `400` |
//! | the body stream failed | `400` |
//! | the body missed its deadline (`body_deadline`, with the `tokio` feature) | `408` |
//! | `Content-Length`, or the bytes streamed so far, over the limit | `413` |
//! | per-inbox secrets: no secret for the tenant, or the matching secret is another tenant's | `400` |
//! | per-inbox secrets: the resolver failed | `503` |
//!
//! With per-inbox secrets ([`VerifyOpenMailLayer::with_resolver`]) the secret is known only
//! once the body has been read, so the MAC runs over the buffered bytes instead of while
//! they stream in; the head is still checked first. See the [`tenant`](crate::tenant)
//! module.
//!
//! `X-Timestamp` and `X-Signature` must each appear exactly once. A request that carries
//! either twice is refused as ambiguous (`400`, [`VerifyError::DuplicateHeader`]) rather
//! than checked on its first copy: OpenMail sends one of each, and a proxy or client that
//! adds a second is not something to guess about.
//!
//! A rejection carries a short plain-text reason; the precise [`Rejection`] goes to the
//! hook set with [`VerifyOpenMailLayer::on_rejection`], and to `tracing` when that feature
//! is on.
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::post, Extension, Router};
//! use openmail_webhooks::{Event, VerifyOpenMailLayer};
//!
//! async fn handle(Extension(event): Extension<Arc<Event>>) -> &'static str {
//!     println!("{} {:?}", event.event_type(), event.event_id());
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
//! The layer buffers each body until its signature is checked, so the memory it can hold
//! at once is at worst
//!
//! > **body limit × requests being read concurrently**
//!
//! (4 MiB × 64 = 256 MiB with the default [`DEFAULT_BODY_LIMIT`] and the concurrency limit
//! below). A body that declares more than the limit is refused before a byte is read, and a
//! streamed one at the frame that crosses it, but anyone can send a well-formed signature
//! header with a fresh timestamp and a near-limit body, and it is held until its last byte
//! proves it forged. Two more controls bound the product:
//!
//! - **A concurrency limit around the layer**, such as tower's
//!   `GlobalConcurrencyLimitLayer`. OpenMail delivers one event per request with retries
//!   spread over minutes, so a receiver rarely needs more than a few dozen requests in
//!   flight; 64 is a generous start. Requests beyond it wait, unread, in the server's
//!   connection buffers.
//! - **A deadline for the body**, so a stalled or trickling upload (a slowloris) cannot
//!   hold a slot forever: `VerifyOpenMailLayer::body_deadline`, with the `tokio` feature,
//!   answering `408`. OpenMail wants an answer within 15 seconds; 10 seconds is a good
//!   deadline. tower-http's `RequestBodyTimeoutLayer` and `RequestBodyDeadlineLayer` also
//!   bound the time when placed outside this layer, but their error reaches it as an
//!   ordinary body failure, answered `400`; the layer cannot tell their timeout apart
//!   without depending on tower-http, hence the built-in deadline.
//!
//! The layer itself is always ready: it drives the inner service's readiness only after a
//! body has verified, so stalled uploads never hold the inner service's capacity.
//!
//! ```
//! # #[cfg(feature = "tokio")] {
//! use std::time::Duration;
//! use axum::{routing::post, Router};
//! use openmail_webhooks::VerifyOpenMailLayer;
//! use tower::limit::GlobalConcurrencyLimitLayer;
//!
//! let verify = VerifyOpenMailLayer::new("whsec_test")?.body_deadline(Duration::from_secs(10));
//! let app: Router = Router::new()
//!     .route("/webhooks", post(|| async { "ok" }))
//!     // The last layer added is the outermost: the limit wraps the verification.
//!     .layer(verify)
//!     .layer(GlobalConcurrencyLimitLayer::new(64));
//! # }
//! # Ok::<(), openmail_webhooks::ConfigError>(())
//! ```

mod budget;
mod buffer;
mod deadline;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod rejection;
mod service;

pub use future::ResponseFuture;
pub use layer::{VerifyOpenMailLayer, DEFAULT_BODY_LIMIT};
pub use rejection::{Rejection, RETRY_AFTER_SECS};
pub use service::VerifyOpenMail;

pub(crate) use layer::{Config, SecretSource};

#[cfg(doc)]
use crate::VerifyError;
