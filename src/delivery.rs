//! [`Delivery`]: what every verified OpenMail event carries to its handler, whichever
//! channel it came by.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::HeaderValue;

use crate::protocol::{Claim, Verified};
use crate::tenant::Tenant;
use crate::{Event, LogSafe};

/// How an event reached the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Channel {
    /// A signed webhook `POST`, verified by
    /// [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer).
    Webhook,
    /// OpenMail's WebSocket, authenticated by the account's API key over TLS. Such events
    /// carry no signature.
    WebSocket,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Webhook => "webhook",
            Self::WebSocket => "websocket",
        })
    }
}

/// What the crate established about one event, as it puts it in the request extensions:
/// the body's bytes, the channel, who vouched for it, and the top-level ids of the body.
/// The parsed event, when parsing is on, is a separate extension: an
/// `Arc<`[`Event`](crate::Event)`>`.
///
/// Cloning is one reference-count increment, so axum's `Extension<Delivery>`, which clones
/// on every extraction, costs nothing worth counting.
///
/// ```
/// use std::sync::Arc;
/// use axum::Extension;
/// use openmail_webhooks::{Delivery, Event, LogSafe};
///
/// async fn handle(
///     Extension(event): Extension<Arc<Event>>,
///     Extension(delivery): Extension<Delivery>,
/// ) {
///     println!(
///         "{} {} by {}, signed at {:?}",
///         event.event_type(),
///         LogSafe::or_dash(delivery.event_id()),
///         delivery.channel(),
///         delivery.timestamp(),
///     );
/// }
/// ```
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    verified: Option<Verified>,
    scope: Tenant,
    event_id_header: Option<HeaderValue>,
    body: Bytes,
    /// The parsed event, when the layer parsed one: the ids are read from it.
    event: Option<Arc<Event>>,
    /// Otherwise the claim, read from the body at most once.
    claim: OnceLock<Option<Claim>>,
}

impl Delivery {
    /// A webhook delivery whose signature verified.
    pub(crate) fn webhook(
        verified: Verified,
        scope: Tenant,
        event_id_header: Option<HeaderValue>,
        body: Bytes,
        event: Option<Arc<Event>>,
    ) -> Self {
        Self::new(
            Channel::Webhook,
            Some(verified),
            scope,
            event_id_header,
            body,
            event,
        )
    }

    /// An event that arrived over the account's WebSocket.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) fn websocket(body: Bytes, event: Option<Arc<Event>>) -> Self {
        Self::new(Channel::WebSocket, None, Tenant::Account, None, body, event)
    }

    /// A delivery an event store kept, as it was verified, with its event parsed again
    /// (every verified body parses to an event, if only `Malformed`).
    // Only the stores build one.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn stored(
        channel: Channel,
        verified: Option<Verified>,
        scope: Tenant,
        event_id_header: Option<HeaderValue>,
        body: Bytes,
    ) -> Self {
        let event = Some(Arc::new(Event::parse(body.clone())));
        Self::new(channel, verified, scope, event_id_header, body, event)
    }

    /// The parsed event, when there is one.
    #[cfg_attr(not(feature = "queue"), allow(dead_code))]
    pub(crate) fn event(&self) -> Option<&Arc<Event>> {
        self.inner.event.as_ref()
    }

    fn new(
        channel: Channel,
        verified: Option<Verified>,
        scope: Tenant,
        event_id_header: Option<HeaderValue>,
        body: Bytes,
        event: Option<Arc<Event>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                channel,
                verified,
                scope,
                event_id_header,
                body,
                event,
                claim: OnceLock::new(),
            }),
        }
    }

    /// The event's JSON, byte for byte as received (and, for a webhook, as signed).
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }

    /// The channel the event came by.
    pub fn channel(&self) -> Channel {
        self.inner.channel
    }

    /// The webhook signature check's result; `None` for WebSocket events, which carry no
    /// signature.
    pub fn verified(&self) -> Option<Verified> {
        self.inner.verified
    }

    /// `X-Timestamp`, in Unix seconds (it is signed); `None` for WebSocket events.
    pub fn timestamp(&self) -> Option<i64> {
        self.inner.verified.map(|verified| verified.timestamp())
    }

    /// The index of the secret that matched, in configuration order; `None` for WebSocket
    /// events.
    pub fn secret_index(&self) -> Option<usize> {
        self.inner.verified.map(|verified| verified.secret_index())
    }

    /// Who vouched for the event: [`Tenant::Account`] for the account's webhook
    /// secret or API key, [`Tenant::Inbox`] for an inbox's own webhook secret. That
    /// scope covers [`inbox_id`](Self::inbox_id).
    pub fn scope(&self) -> &Tenant {
        &self.inner.scope
    }

    /// The body's top-level `event_id`: signed for webhooks, and, with
    /// [`inbox_id`](Self::inbox_id), the key deduplication uses. `None` when the body has
    /// none (or is not a JSON object).
    pub fn event_id(&self) -> Option<&str> {
        match &self.inner.event {
            Some(event) => event.event_id(),
            None => self
                .claim()
                .and_then(|claim| claim.event_id(&self.inner.body)),
        }
    }

    /// The body's top-level `inbox_id`, which [`scope`](Self::scope) covers. `None` on pod
    /// events.
    pub fn inbox_id(&self) -> Option<&str> {
        match &self.inner.event {
            Some(event) => event.inbox_id(),
            None => self
                .claim()
                .and_then(|claim| claim.inbox_id(&self.inner.body)),
        }
    }

    /// The `X-Event-Id` header, if present and visible ASCII.
    ///
    /// It is **not** signed: anyone replaying a captured delivery can change it. Use
    /// [`event_id`](Self::event_id), from the signed body, for anything that matters.
    pub fn event_id_header(&self) -> Option<&str> {
        self.inner
            .event_id_header
            .as_ref()
            .and_then(|value| value.to_str().ok())
    }

    /// The claim, read from the body the first time it is asked for.
    fn claim(&self) -> Option<&Claim> {
        self.inner
            .claim
            .get_or_init(|| Claim::read(&self.inner.body).ok())
            .as_ref()
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("channel", &self.channel())
            .field("timestamp", &self.timestamp())
            .field("secret_index", &self.secret_index())
            .field("scope", &self.scope())
            .field("event_id", &self.event_id().map(LogSafe::new))
            .field("event_id_header", &self.event_id_header().map(LogSafe::new))
            .field("body_len", &self.inner.body.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_body_never_the_header() {
        let body = Bytes::from_static(br#"{"event":"x","event_id":"evt_body","inbox_id":"inb_a"}"#);
        let delivery = Delivery::websocket(body, None);
        assert_eq!(delivery.event_id(), Some("evt_body"));
        assert_eq!(delivery.inbox_id(), Some("inb_a"));
        assert_eq!(delivery.channel(), Channel::WebSocket);
        assert_eq!(delivery.timestamp(), None);
        assert_eq!(delivery.scope(), &Tenant::Account);
        let unreadable = Delivery::websocket(Bytes::from_static(b"[1,2]"), None);
        assert_eq!(unreadable.event_id(), None);
    }

    #[test]
    fn debug_escapes_ids() {
        let body = Bytes::from_static(b"{\"event_id\":\"a\\nb\"}");
        let shown = format!("{:?}", Delivery::websocket(body, None));
        assert!(!shown.contains('\n'), "{shown}");
    }
}
