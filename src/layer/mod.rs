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
//! | `Content-Length`, or the bytes streamed so far, over the limit | `413` |
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

mod body;
mod buffer;
mod delivery;
mod future;
#[allow(clippy::module_inception)]
mod layer;
mod rejection;
mod service;

pub use body::{ResponseBody, VerifiedBody};
pub use delivery::Delivery;
pub use future::ResponseFuture;
pub use layer::{VerifyOpenMailLayer, DEFAULT_BODY_LIMIT};
pub use rejection::{BoxError, Rejection};
pub use service::VerifyOpenMail;

pub(crate) use layer::{Config, SecretSource};
