use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use crate::tenant::SecretScope;
use crate::Verified;

/// What the layer verified, as it puts it in the request extensions: the body's bytes and
/// the signature metadata. The parsed event is a separate extension, an `Arc<Event>`.
///
/// Cloning is one reference-count increment, so axum's `Extension<Delivery>`, which clones
/// on every extraction, costs nothing worth counting.
///
/// ```
/// use std::sync::Arc;
/// use axum::Extension;
/// use openmail_webhooks::{Delivery, Event};
///
/// async fn handle(
///     Extension(event): Extension<Arc<Event>>,
///     Extension(delivery): Extension<Delivery>,
/// ) {
///     println!(
///         "{} signed at {} with secret #{}",
///         event.event_type(),
///         delivery.timestamp(),
///         delivery.secret_index(),
///     );
/// }
/// ```
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    verified: Verified,
    scope: Option<SecretScope>,
    event_id_header: Option<HeaderValue>,
    body: Bytes,
}

impl Delivery {
    pub(crate) fn new(
        verified: Verified,
        scope: Option<SecretScope>,
        event_id_header: Option<HeaderValue>,
        body: Bytes,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                verified,
                scope,
                event_id_header,
                body,
            }),
        }
    }

    /// The verified body, byte for byte as received.
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }

    /// `X-Timestamp`, in Unix seconds. It is signed.
    pub fn timestamp(&self) -> i64 {
        self.inner.verified.timestamp()
    }

    /// The index of the secret that matched, in configuration order.
    pub fn secret_index(&self) -> usize {
        self.inner.verified.secret_index()
    }

    /// With per-tenant secrets, the scope of the secret that matched: the inbox, pod or
    /// account it belongs to. `None` with static secrets.
    pub fn scope(&self) -> Option<&SecretScope> {
        self.inner.scope.as_ref()
    }

    /// What the signature check established.
    pub fn verified(&self) -> Verified {
        self.inner.verified
    }

    /// The `X-Event-Id` header, if present and visible ASCII.
    ///
    /// It is **not** signed: anyone replaying a captured delivery can change it. Use the
    /// body's `event_id` ([`Event::event_id`](crate::Event::event_id)) for anything that matters, such as
    /// deduplication.
    pub fn event_id_header(&self) -> Option<&str> {
        self.inner
            .event_id_header
            .as_ref()
            .and_then(|value| value.to_str().ok())
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("timestamp", &self.timestamp())
            .field("secret_index", &self.secret_index())
            .field("scope", &self.scope())
            .field("event_id_header", &self.event_id_header())
            .field("body_len", &self.inner.body.len())
            .finish()
    }
}
