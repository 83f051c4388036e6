//! The events the typed model does not cover, kept whole.
//!
//! A verified delivery is never dropped for its content. An event type the crate does not
//! know (the dashboard's test event, or one OpenMail adds later) becomes an
//! [`UnknownEvent`]; a known type whose fields do not fit the documented shape, and a body
//! that names no type at all (not JSON, not an object, no string `event`), become a
//! [`MalformedEvent`] that says what did not fit. Both keep the verified bytes, and both
//! pick out the envelope (`event_id`, `inbox_id`, `occurred_at`) when those fields are
//! usable, so deduplication and routing still work.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::time::Stamp;
use super::{RawJson, Timestamp};
use crate::json::Short;

/// An event of a type the crate does not model, such as the dashboard's test event.
///
/// Equality compares the type and the JSON content, not its formatting.
///
/// ```
/// use bytes::Bytes;
/// use openmail_webhooks::Event;
///
/// let body = Bytes::from_static(br#"{"event":"setup.test","inbox_id":"inb_92ma","ok":true}"#);
/// let Event::Unknown(unknown) = Event::parse(body) else { unreachable!() };
/// assert_eq!(unknown.event_type(), "setup.test");
/// assert_eq!(unknown.json()["ok"], true);
/// ```
#[derive(Debug, Clone)]
pub struct UnknownEvent {
    pub(super) envelope: Envelope,
}

/// A verified body the typed model cannot read: a known event type whose fields do not fit
/// (a number where a string belongs, a malformed timestamp, a missing `event_id`), or a
/// body that names no type at all.
///
/// The delivery verified, so it is OpenMail's: log [`error`](Self::error) and decide from
/// [`json`](Self::json) or [`raw`](Self::raw). Answering with an error status would only
/// make OpenMail send the same bytes again.
///
/// A body without a string `event` (not JSON at all, JSON but not an object, an object
/// without `event` or with a number there) has the empty string as its
/// [`event_type`](Self::event_type), and [`field`](Self::field) is `event` when the body
/// is an object. A body whose envelope cannot be read (not JSON, not an object, or
/// naming `event`, `event_id`, `inbox_id` or `pod_id` twice) has no `event_id`, `inbox_id`
/// nor `occurred_at` either, as the claim the layer reads before the signature is checked
/// has none for it.
///
/// ```
/// use bytes::Bytes;
/// use openmail_webhooks::Event;
///
/// let Event::Malformed(malformed) = Event::parse(Bytes::from_static(b"<html>")) else {
///     unreachable!()
/// };
/// assert_eq!((malformed.event_type(), malformed.event_id()), ("", None));
/// assert!(malformed.error().starts_with("the body is not JSON"));
/// // Not JSON: its JSON is the body's text, as a string.
/// assert_eq!(malformed.json(), "<html>");
/// ```
///
/// Equality compares the type and the JSON content, not its formatting nor where in it the
/// error was found.
#[derive(Debug, Clone)]
pub struct MalformedEvent {
    pub(super) envelope: Envelope,
    pub(super) field: Option<&'static str>,
    pub(super) error: String,
}

/// What the fallbacks keep: the type, the usable envelope fields, the bytes.
#[derive(Clone)]
pub(super) struct Envelope {
    pub(super) event_type: Short,
    pub(super) event_id: Option<Short>,
    pub(super) inbox_id: Option<Short>,
    pub(super) occurred_at: Option<Stamp>,
    /// The short fields that held escapes, decoded.
    pub(super) decoded: String,
    pub(super) raw: RawJson,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("event_type", &self.event_type())
            .field("event_id", &self.short(self.event_id))
            .field("inbox_id", &self.short(self.inbox_id))
            .field("occurred_at", &self.occurred_at())
            .field("raw", &self.raw)
            .finish()
    }
}

impl Envelope {
    fn json(&self) -> serde_json::Value {
        crate::json::value(&self.raw.0).unwrap_or_else(|| {
            serde_json::Value::String(String::from_utf8_lossy(&self.raw.0).into_owned())
        })
    }

    fn event_type(&self) -> &str {
        self.event_type.get(&self.raw.0, &self.decoded)
    }

    fn short(&self, field: Option<Short>) -> Option<&str> {
        field.map(|short| short.get(&self.raw.0, &self.decoded))
    }

    fn occurred_at(&self) -> Option<Timestamp> {
        self.occurred_at
            .and_then(|stamp| stamp.timestamp(&self.raw.0, &self.decoded))
    }

    /// Same type, same JSON value.
    fn same_content(&self, other: &Self) -> bool {
        self.event_type() == other.event_type()
            && (self.raw.0 == other.raw.0 || self.json() == other.json())
    }
}

macro_rules! envelope_accessors {
    () => {
        /// The `event` field.
        pub fn event_type(&self) -> &str {
            self.envelope.event_type()
        }

        /// The `event_id` field, when it is a string.
        pub fn event_id(&self) -> Option<&str> {
            self.envelope.short(self.envelope.event_id)
        }

        /// The top-level `inbox_id` field, when it is a string.
        pub fn inbox_id(&self) -> Option<&str> {
            self.envelope.short(self.envelope.inbox_id)
        }

        /// The `occurred_at` field, when it appears once and is a valid RFC 3339
        /// timestamp.
        pub fn occurred_at(&self) -> Option<Timestamp> {
            self.envelope.occurred_at()
        }

        /// The verified body, byte for byte.
        pub fn raw(&self) -> &Bytes {
            &self.envelope.raw.0
        }

        /// The body as a JSON value, parsed now. It cannot fail.
        ///
        /// A lone surrogate escape (`\ud83d` where a text was cut inside an emoji), which
        /// `serde_json` refuses, reads as U+FFFD, as JavaScript reads it. A body that is
        /// not JSON at all is the string of its text (invalid UTF-8 as U+FFFD), so that
        /// what the event serialises to is JSON that parses again into an equal event.
        /// Of a key named twice, the last counts, as in any `serde_json::Value`.
        pub fn json(&self) -> serde_json::Value {
            self.envelope.json()
        }

        /// The body as the application's own type, parsed now: the way to handle an event
        /// type before this crate models it. A lone surrogate reads as U+FFFD, as in
        /// [`json`](Self::json).
        pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
            serde_json::from_slice(&crate::json::without_lone_surrogates(&self.envelope.raw.0))
        }
    };
}

impl UnknownEvent {
    envelope_accessors!();
}

impl MalformedEvent {
    envelope_accessors!();

    /// What did not fit, and where: the line and column in the body.
    pub fn error(&self) -> &str {
        &self.error
    }

    /// The top-level field that did not fit (such as `message`, `occurred_at`, `event_id`,
    /// or `event` when there is no string type), when the error was in one.
    pub fn field(&self) -> Option<&str> {
        self.field
    }
}

impl PartialEq for UnknownEvent {
    fn eq(&self, other: &Self) -> bool {
        self.envelope.same_content(&other.envelope)
    }
}

impl PartialEq for MalformedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.envelope.same_content(&other.envelope)
    }
}
