//! The events the typed model does not cover, kept whole.
//!
//! A verified delivery is never dropped for its shape. An event type the crate does not
//! know (the dashboard's test event, or one OpenMail adds later) becomes an
//! [`UnknownEvent`]; a known type whose fields do not fit the documented shape becomes a
//! [`MalformedEvent`] that says what did not fit. Both keep the verified bytes, and both
//! pick out the envelope (`event_id`, `inbox_id`, `occurred_at`) when those fields are
//! usable, so deduplication and routing still work.

use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::json::Short;
use super::time::Stamp;
use super::{RawJson, Timestamp};

/// An event of a type the crate does not model, such as the dashboard's test event.
///
/// Equality compares the type and the JSON content, not its formatting.
///
/// ```
/// use bytes::Bytes;
/// use openmail_webhooks::Event;
///
/// let body = Bytes::from_static(br#"{"event":"setup.test","inbox_id":"inb_92ma","ok":true}"#);
/// let Event::Unknown(unknown) = Event::parse(body)? else { unreachable!() };
/// assert_eq!(unknown.event_type(), "setup.test");
/// assert_eq!(unknown.json()?["ok"], true);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct UnknownEvent {
    pub(super) envelope: Envelope,
}

/// A known event type whose fields do not fit the typed model: a number where a string
/// belongs, a malformed timestamp, a missing `event_id`.
///
/// The delivery verified, so it is OpenMail's: log [`error`](Self::error) and decide from
/// [`json`](Self::json) or [`raw`](Self::raw). Answering with an error status would only
/// make OpenMail send the same bytes again.
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
    fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.raw.0)
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
            && (self.raw.0 == other.raw.0
                || matches!((self.json(), other.json()), (Ok(a), Ok(b)) if a == b))
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

        /// The body as a JSON value, parsed now.
        ///
        /// It does not fail: [`Event::parse`](super::Event::parse) accepts only what
        /// `serde_json` reads into a `Value` (UTF-8 throughout, escapes that decode,
        /// numbers that fit an `f64`, at most 127 levels of nesting), in every field,
        /// including those the model does not read.
        pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
            self.envelope.json()
        }

        /// The body as the application's own type, parsed now: the way to handle an event
        /// type before this crate models it.
        pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
            serde_json::from_slice(&self.envelope.raw.0)
        }
    };
}

impl UnknownEvent {
    envelope_accessors!();
}

impl MalformedEvent {
    envelope_accessors!();

    /// What did not fit, as serde reported it, with the line and column in the body.
    pub fn error(&self) -> &str {
        &self.error
    }

    /// The top-level field that did not fit (such as `message`, `occurred_at` or
    /// `event_id`), when the error was in one.
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
