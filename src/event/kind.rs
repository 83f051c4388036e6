//! [`Event`]: the sum of OpenMail's event types, and what every variant answers.

use bytes::Bytes;
use serde::{Serialize, Serializer};

use super::{Lifecycle, MalformedEvent, MessageReceived, Timestamp, UnknownEvent, wire};

/// A verified OpenMail event.
///
/// ```
/// use bytes::Bytes;
/// use openmail_webhooks::Event;
///
/// let body = Bytes::from_static(br#"{"event":"inbox.suspended","event_id":"evt_def456",
///     "occurred_at":"2024-03-21T10:05:00.000Z","inbox_id":"inb_92ma",
///     "inbox_address":"agent@yourdomain.com","pod_id":"pod_abc","reason":"high_bounce_rate"}"#);
/// let event = Event::parse(body);
/// assert_eq!(event.event_type(), "inbox.suspended");
/// assert_eq!(event.inbox_id(), Some("inb_92ma"));
/// let Event::InboxSuspended(suspended) = &event else { unreachable!() };
/// assert_eq!(suspended.reason(), Some(openmail_webhooks::event::Reason::HighBounceRate));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// One event per request, behind the Delivery's `Arc`: boxing the large variant would add
// an allocation and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// `message.received`: a new inbound email reached an inbox.
    MessageReceived(MessageReceived),
    /// `inbox.suspended`: an inbox was blocked from sending.
    InboxSuspended(Lifecycle),
    /// `inbox.reactivated`: a suspended inbox may send again.
    InboxReactivated(Lifecycle),
    /// `pod.suspended`: every inbox of a pod was blocked from sending.
    PodSuspended(Lifecycle),
    /// `pod.reactivated`: a suspended pod may send again.
    PodReactivated(Lifecycle),
    /// A type the crate does not model, such as the dashboard's test event, kept whole.
    Unknown(UnknownEvent),
    /// A verified body the model cannot read, kept whole with the reason: a documented type
    /// whose fields don't fit, or a body with no string `event` (not JSON, not an object).
    Malformed(MalformedEvent),
}

impl Event {
    /// Parses a verified body. It cannot fail: what the model cannot read is
    /// [`Event::Malformed`] (see [A verified delivery is never lost](crate::event#a-verified-delivery-is-never-lost)).
    ///
    /// The whole body is checked as JSON, as `serde_json` would read it into a `Value`,
    /// in the fields the model reads and in all others (UTF-8 throughout, escapes that
    /// decode, numbers that fit an `f64`, at most 127 levels of nesting), except that a
    /// lone surrogate escape is allowed. A body that is not such JSON, not an object, has
    /// no string `event` field, names `event`, `event_id`, `inbox_id` or `pod_id` twice at
    /// the top level, or is over 2 GiB (beyond what the index can address; the layer's
    /// default limit is 4 MiB) is malformed.
    ///
    /// Short fields are decoded here; the large texts stay in the body until they are read
    /// (see [`Message::body_text`](super::Message::body_text)).
    pub fn parse(body: Bytes) -> Self {
        wire::parse(body)
    }

    /// The `event` field, such as `message.received`; the empty string when the body has
    /// no string `event` (it is then [`Event::Malformed`]).
    pub fn event_type(&self) -> &str {
        match self {
            Self::MessageReceived(_) => "message.received",
            Self::InboxSuspended(_) => "inbox.suspended",
            Self::InboxReactivated(_) => "inbox.reactivated",
            Self::PodSuspended(_) => "pod.suspended",
            Self::PodReactivated(_) => "pod.reactivated",
            Self::Unknown(unknown) => unknown.event_type(),
            Self::Malformed(malformed) => malformed.event_type(),
        }
    }

    /// The body's `event_id`, which the signature covers: deduplicate on it.
    ///
    /// `None` only for an unknown or malformed event that has no string `event_id`, such
    /// as the dashboard's test event.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            Self::MessageReceived(received) => Some(received.event_id()),
            Self::InboxSuspended(lifecycle)
            | Self::InboxReactivated(lifecycle)
            | Self::PodSuspended(lifecycle)
            | Self::PodReactivated(lifecycle) => Some(lifecycle.event_id()),
            Self::Unknown(unknown) => unknown.event_id(),
            Self::Malformed(malformed) => malformed.event_id(),
        }
    }

    /// The top-level `inbox_id`: the inbox the event concerns, and the key to route on.
    ///
    /// `None` on `pod.*` events, and when the body has no usable string `inbox_id`.
    pub fn inbox_id(&self) -> Option<&str> {
        match self {
            Self::MessageReceived(received) => received.inbox_id(),
            Self::InboxSuspended(lifecycle)
            | Self::InboxReactivated(lifecycle)
            | Self::PodSuspended(lifecycle)
            | Self::PodReactivated(lifecycle) => lifecycle.inbox_id(),
            Self::Unknown(unknown) => unknown.inbox_id(),
            Self::Malformed(malformed) => malformed.inbox_id(),
        }
    }

    /// When the event happened; use it to order events, which may arrive out of order.
    pub fn occurred_at(&self) -> Option<Timestamp> {
        match self {
            Self::MessageReceived(received) => received.occurred_at(),
            Self::InboxSuspended(lifecycle)
            | Self::InboxReactivated(lifecycle)
            | Self::PodSuspended(lifecycle)
            | Self::PodReactivated(lifecycle) => lifecycle.occurred_at(),
            Self::Unknown(unknown) => unknown.occurred_at(),
            Self::Malformed(malformed) => malformed.occurred_at(),
        }
    }

    /// The verified body, byte for byte.
    pub fn raw(&self) -> &Bytes {
        match self {
            Self::MessageReceived(received) => received.raw(),
            Self::InboxSuspended(lifecycle)
            | Self::InboxReactivated(lifecycle)
            | Self::PodSuspended(lifecycle)
            | Self::PodReactivated(lifecycle) => lifecycle.raw(),
            Self::Unknown(unknown) => unknown.raw(),
            Self::Malformed(malformed) => malformed.raw(),
        }
    }

    /// The `message.received` payload, if that is what this is.
    pub fn as_message_received(&self) -> Option<&MessageReceived> {
        match self {
            Self::MessageReceived(received) => Some(received),
            _ => None,
        }
    }

    /// The lifecycle payload of an `inbox.*` or `pod.*` event, if that is what this is.
    pub fn as_lifecycle(&self) -> Option<&Lifecycle> {
        match self {
            Self::InboxSuspended(lifecycle)
            | Self::InboxReactivated(lifecycle)
            | Self::PodSuspended(lifecycle)
            | Self::PodReactivated(lifecycle) => Some(lifecycle),
            _ => None,
        }
    }
}

impl Serialize for Event {
    /// Writes OpenMail's wire shape; an unknown or malformed event writes its
    /// [`json`](MalformedEvent::json). It fails only where the serializer does.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            event: &'a str,
            #[serde(flatten)]
            payload: &'a T,
        }

        let event = self.event_type();
        match self {
            Self::MessageReceived(payload) => Tagged { event, payload }.serialize(serializer),
            Self::InboxSuspended(payload)
            | Self::InboxReactivated(payload)
            | Self::PodSuspended(payload)
            | Self::PodReactivated(payload) => Tagged { event, payload }.serialize(serializer),
            Self::Unknown(unknown) => unknown.json().serialize(serializer),
            Self::Malformed(malformed) => malformed.json().serialize(serializer),
        }
    }
}
