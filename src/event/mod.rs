//! OpenMail events, parsed once after verification.
//!
//! The layer parses every verified body into an [`Event`] and puts it in the request
//! extensions as an `Arc<Event>`, next to the [`Delivery`](crate::Delivery) that holds
//! the verified bytes. A handler takes it in one line,
//! `Extension(event): Extension<Arc<Event>>`, and matches:
//!
//! ```
//! use std::sync::Arc;
//! use axum::Extension;
//! use openmail_webhooks::Event;
//!
//! async fn handle(Extension(event): Extension<Arc<Event>>) -> &'static str {
//!     match &*event {
//!         Event::MessageReceived(received) => {
//!             let from = received.message.sender();
//!             println!("mail for {:?} from {:?}", received.inbox_id, from.map(|f| f.address()));
//!         }
//!         Event::InboxSuspended(lifecycle) => println!("pause {:?}", lifecycle.inbox_id),
//!         Event::Malformed(malformed) => eprintln!("{}: {}", malformed.event_type(), malformed.error()),
//!         other => println!("{} not handled", other.event_type()),
//!     }
//!     "ok"
//! }
//! ```
//!
//! # The model
//!
//! | `event` | variant | payload |
//! |---|---|---|
//! | `message.received` | [`Event::MessageReceived`] | [`MessageReceived`], with a [`Message`] and its [`Attachment`]s |
//! | `inbox.suspended`, `inbox.reactivated`, `pod.suspended`, `pod.reactivated` | one variant each | [`Lifecycle`], with a [`Reason`] |
//! | anything else, such as the dashboard's test event | [`Event::Unknown`] | [`UnknownEvent`]: the type and the raw JSON |
//! | a documented type whose fields don't fit | [`Event::Malformed`] | [`MalformedEvent`]: the raw JSON and what didn't fit |
//!
//! Times are [`Timestamp`]s: validated RFC 3339 that keep their original text; its docs
//! say why there is no date-time dependency. Addresses split into a [`Mailbox`] on demand.
//!
//! # A verified delivery is never lost
//!
//! [`Event::parse`] fails only when the body is not a JSON object with a string `event`
//! field; the layer answers that with `400`. Everything else reaches the handler: every
//! field but `event` and `event_id` is optional, unknown fields are ignored, and a known
//! type whose fields don't fit (a number where a string belongs, a malformed timestamp, a
//! missing `event_id`) arrives as [`Event::Malformed`] with the bytes intact. The
//! accessors on [`Event`] read the envelope from whichever variant arrived, so
//! deduplication on [`event_id`](Event::event_id) and routing on
//! [`inbox_id`](Event::inbox_id) work for all of them.
//!
//! # Cost
//!
//! The body is parsed once, in one serde pass over a flat private struct that reads only
//! the fields of the event's type and skips the rest; a second, envelope-only pass runs
//! only when the first fails. That costs less than parsing the same bytes into a
//! `serde_json::Value`, which allocates every key and every map: about two thirds of it on
//! the documented example. On a body made mostly of long attachment text both spend
//! nearly all their time validating and unescaping the same strings, and the typed parse
//! is only a few percent cheaper. The `events` benchmark measures both. The event sits
//! behind an `Arc`, so axum's `Extension`, which clones on every extraction, copies
//! nothing.
//!
//! # Equality and serialisation
//!
//! [`Event`] serialises to OpenMail's wire shape (snake_case, camelCase attachment keys,
//! timestamps as received); an unknown or malformed event serialises as its original JSON.
//! Parsing that output again gives an equal [`Event`]: equality compares content, never
//! the raw bytes' formatting.
//!
//! # Why there is no `axum` feature
//!
//! A `FromRequestParts` impl would save writing `Extension(event): Extension<Arc<Event>>`,
//! and would put axum, with its own release cycle, into this crate's dependency tree for
//! every user who enables it. The extension is already one line in axum and works the same
//! in any other tower stack (`request.extensions().get::<Arc<Event>>()`), so the crate does
//! not add it.

/// A string code with documented values and an `Unknown` fallback that keeps any other
/// value, so a new code on OpenMail's side never fails a delivery.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )*
            /// A value not listed above, exactly as received.
            ///
            /// Build values with `From<&str>`, which picks the documented variant when
            /// there is one: an `Unknown` holding a documented value is not equal to it.
            Unknown(String),
        }

        impl $name {
            /// The value as OpenMail writes it.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $text, )*
                    Self::Unknown(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $( $text => Self::$variant, )*
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct CodeVisitor;

                impl ::serde::de::Visitor<'_> for CodeVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str("a string code")
                    }

                    fn visit_str<E: ::serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        Ok($name::from(text))
                    }
                }

                deserializer.deserialize_str(CodeVisitor)
            }
        }
    };
}

mod address;
mod fallback;
mod lifecycle;
mod message;
mod time;
mod wire;

use std::fmt;

use bytes::Bytes;
use serde::{Serialize, Serializer};

pub use address::{Mailbox, Mailboxes};
pub use fallback::{MalformedEvent, UnknownEvent};
pub use lifecycle::{Lifecycle, Reason};
pub use message::{Attachment, ExtractionMethod, Message, MessageReceived};
pub use time::{Timestamp, TimestampError};

use fallback::Envelope;
use wire::{Kind, Pass, Wire};

/// A verified OpenMail event.
///
/// ```
/// use bytes::Bytes;
/// use openmail_webhooks::Event;
///
/// let body = Bytes::from_static(br#"{"event":"inbox.suspended","event_id":"evt_def456",
///     "occurred_at":"2024-03-21T10:05:00.000Z","inbox_id":"inb_92ma",
///     "inbox_address":"agent@yourdomain.com","pod_id":"pod_abc","reason":"high_bounce_rate"}"#);
/// let event = Event::parse(body)?;
/// assert_eq!(event.event_type(), "inbox.suspended");
/// assert_eq!(event.inbox_id(), Some("inb_92ma"));
/// let Event::InboxSuspended(suspended) = &event else { unreachable!() };
/// assert_eq!(suspended.reason, Some(openmail_webhooks::event::Reason::HighBounceRate));
/// # Ok::<(), openmail_webhooks::event::NotAnEvent>(())
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
    /// A documented type whose fields don't fit the model, kept whole with the reason.
    Malformed(MalformedEvent),
}

impl Event {
    /// Parses a verified body. Fails only when the body is not a JSON object with a string
    /// `event` field.
    pub fn parse(body: Bytes) -> Result<Self, NotAnEvent> {
        let failure = match wire::read(&body, Pass::Typed(None)) {
            Ok(wire) => return Ok(Self::typed(wire, body)),
            Err(failure) => failure,
        };
        let envelope = wire::read(&body, Pass::Envelope).map_err(|failure| NotAnEvent {
            detail: failure.error.to_string(),
        })?;
        let Some(kind) = envelope.kind else {
            return Ok(Self::Unknown(UnknownEvent {
                envelope: Self::envelope(envelope, body),
            }));
        };
        let failure = if failure.before_event {
            match wire::read(&body, Pass::Typed(Some(kind))) {
                Ok(wire) => return Ok(Self::typed(wire, body)),
                Err(failure) => failure,
            }
        } else {
            failure
        };
        Ok(Self::Malformed(MalformedEvent {
            envelope: Self::envelope(envelope, body),
            field: failure.field,
            error: failure.error.to_string(),
        }))
    }

    fn typed(mut wire: Wire, body: Bytes) -> Self {
        // Take the id only for a known type: an unknown one keeps it in its envelope.
        let event_id = wire.kind.and_then(|_| wire.event_id.take());
        let (Some(kind), Some(event_id)) = (wire.kind, event_id) else {
            // Not a typed event after all: an unknown type, or no usable `event_id`.
            let known = wire.kind.is_some();
            let envelope = Self::envelope(wire, body);
            return if known {
                Self::Malformed(MalformedEvent {
                    envelope,
                    field: Some("event_id"),
                    error: "missing field `event_id` (absent or null)".to_owned(),
                })
            } else {
                Self::Unknown(UnknownEvent { envelope })
            };
        };
        let raw = RawJson(body);
        match kind {
            Kind::MessageReceived => Self::MessageReceived(MessageReceived {
                event_id,
                occurred_at: wire.occurred_at,
                delivered_at: wire.delivered_at,
                attempt: wire.attempt,
                inbox_id: wire.inbox_id,
                thread_id: wire.thread_id,
                external_id: wire.external_id,
                message: wire.message.unwrap_or_default(),
                raw,
            }),
            Kind::InboxSuspended => Self::InboxSuspended(Self::lifecycle(wire, event_id, raw)),
            Kind::InboxReactivated => Self::InboxReactivated(Self::lifecycle(wire, event_id, raw)),
            Kind::PodSuspended => Self::PodSuspended(Self::lifecycle(wire, event_id, raw)),
            Kind::PodReactivated => Self::PodReactivated(Self::lifecycle(wire, event_id, raw)),
        }
    }

    fn lifecycle(wire: Wire, event_id: String, raw: RawJson) -> Lifecycle {
        Lifecycle {
            event_id,
            occurred_at: wire.occurred_at,
            inbox_id: wire.inbox_id,
            inbox_address: wire.inbox_address,
            pod_id: wire.pod_id,
            reason: wire.reason,
            raw,
        }
    }

    fn envelope(wire: Wire, body: Bytes) -> Envelope {
        Envelope {
            event_type: wire.event,
            event_id: wire.event_id,
            inbox_id: wire.inbox_id,
            occurred_at: wire.occurred_at,
            raw: RawJson(body),
        }
    }

    /// The `event` field, such as `message.received`.
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
            Self::MessageReceived(received) => Some(&received.event_id),
            Self::InboxSuspended(lifecycle)
            | Self::InboxReactivated(lifecycle)
            | Self::PodSuspended(lifecycle)
            | Self::PodReactivated(lifecycle) => Some(&lifecycle.event_id),
            Self::Unknown(unknown) => unknown.event_id(),
            Self::Malformed(malformed) => malformed.event_id(),
        }
    }

    /// The top-level `inbox_id`: the inbox the event concerns, and the key to route on.
    ///
    /// `None` on `pod.*` events, and when the body has no usable string `inbox_id`.
    pub fn inbox_id(&self) -> Option<&str> {
        match self {
            Self::MessageReceived(received) => received.inbox_id.as_deref(),
            Self::InboxSuspended(lifecycle)
            | Self::InboxReactivated(lifecycle)
            | Self::PodSuspended(lifecycle)
            | Self::PodReactivated(lifecycle) => lifecycle.inbox_id.as_deref(),
            Self::Unknown(unknown) => unknown.inbox_id(),
            Self::Malformed(malformed) => malformed.inbox_id(),
        }
    }

    /// When the event happened; use it to order events, which may arrive out of order.
    pub fn occurred_at(&self) -> Option<&Timestamp> {
        match self {
            Self::MessageReceived(received) => received.occurred_at.as_ref(),
            Self::InboxSuspended(lifecycle)
            | Self::InboxReactivated(lifecycle)
            | Self::PodSuspended(lifecycle)
            | Self::PodReactivated(lifecycle) => lifecycle.occurred_at.as_ref(),
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
    /// Writes OpenMail's wire shape; an unknown or malformed event writes its original
    /// JSON.
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
            Self::Unknown(unknown) => unknown
                .json()
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer),
            Self::Malformed(malformed) => malformed
                .json()
                .map_err(serde::ser::Error::custom)?
                .serialize(serializer),
        }
    }
}

/// The verified bytes, shown in `Debug` by length only: the fields already show the
/// content.
#[derive(Clone, Default)]
struct RawJson(Bytes);

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// A verified body that is not an OpenMail event: not JSON, not an object, or without a
/// string `event` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAnEvent {
    detail: String,
}

impl fmt::Display for NotAnEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the verified body is not a JSON object with a string `event` field: {}",
            self.detail
        )
    }
}

impl std::error::Error for NotAnEvent {}
