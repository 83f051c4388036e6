use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use crate::{Event, Verified};

/// A verified delivery, as the layer puts it in the request extensions.
///
/// Cloning is one reference-count increment, so axum's `Extension<Delivery>`, which clones
/// on every extraction, costs nothing worth counting.
///
/// ```
/// use axum::Extension;
/// use openmail_webhooks::Delivery;
///
/// async fn handle(Extension(delivery): Extension<Delivery>) {
///     let event = delivery.event();
///     println!("{} signed at {}", event.event_type(), delivery.timestamp());
/// }
/// ```
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    verified: Verified,
    event_id_header: Option<HeaderValue>,
    body: Bytes,
    event: Event,
}

impl Delivery {
    pub(crate) fn new(
        verified: Verified,
        event_id_header: Option<HeaderValue>,
        body: Bytes,
        event: Event,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                verified,
                event_id_header,
                body,
                event,
            }),
        }
    }

    /// The parsed event.
    pub fn event(&self) -> &Event {
        &self.inner.event
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

    /// What the signature check established.
    pub fn verified(&self) -> Verified {
        self.inner.verified
    }

    /// The `X-Event-Id` header, if present and visible ASCII.
    ///
    /// It is **not** signed: anyone replaying a captured delivery can change it. Use the
    /// body's `event_id` ([`Event::event_id`]) for anything that matters, such as
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
            .field("event_type", &self.inner.event.event_type())
            .field("event_id", &self.inner.event.event_id())
            .field("timestamp", &self.timestamp())
            .field("secret_index", &self.secret_index())
            .field("event_id_header", &self.event_id_header())
            .field("body_len", &self.inner.body.len())
            .finish()
    }
}
