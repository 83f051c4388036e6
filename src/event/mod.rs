//! OpenMail events, parsed once after verification.
//!
//! (Envelope only for now: the typed model lands with the typed-events work.)

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;

/// A verified OpenMail event.
#[derive(Debug, Clone)]
pub struct Event {
    event_type: String,
    event_id: Option<String>,
    inbox_id: Option<String>,
    raw: Bytes,
}

impl Event {
    /// Parses a verified body. Fails only when the body is not a JSON object with a string
    /// `event` field.
    pub fn parse(body: Bytes) -> Result<Self, NotAnEvent> {
        #[derive(Deserialize)]
        struct Envelope {
            event: String,
            #[serde(default)]
            event_id: Option<serde_json::Value>,
            #[serde(default)]
            inbox_id: Option<serde_json::Value>,
        }
        let envelope: Envelope = serde_json::from_slice(&body).map_err(|error| NotAnEvent {
            detail: error.to_string(),
        })?;
        Ok(Self {
            event_type: envelope.event,
            event_id: match envelope.event_id {
                Some(serde_json::Value::String(id)) => Some(id),
                _ => None,
            },
            inbox_id: match envelope.inbox_id {
                Some(serde_json::Value::String(id)) => Some(id),
                _ => None,
            },
            raw: body,
        })
    }

    /// The `event` field, such as `message.received`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The body's `event_id`, which the signature covers.
    pub fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// The inbox the event is about; absent on pod events.
    pub fn inbox_id(&self) -> Option<&str> {
        self.inbox_id.as_deref()
    }

    /// The verified body.
    pub fn raw(&self) -> &Bytes {
        &self.raw
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
