//! The server's messages: control messages, told from events by their `type` field, and
//! events, which have `event` and `event_id` and no `type`.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::status::SkipReason;
use crate::Event;

/// One text frame from the server, sorted.
// Short-lived, one at a time: boxing the event would add an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Incoming {
    Event(Event),
    Control(Control),
    Skip(SkipReason),
}

/// The control messages the protocol defines.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Control {
    Subscribed {
        inbox_ids: Vec<String>,
        event_types: Vec<String>,
    },
    Unsubscribed {
        inbox_ids: Vec<String>,
    },
    Error {
        message: String,
    },
    Pong,
}

/// Reads only `type`; serde skips every other field without building it.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// A control message's fields, leniently: each is checked only for the type that uses it.
#[derive(Deserialize)]
struct ControlFields {
    #[serde(default)]
    inbox_ids: Option<Value>,
    #[serde(default)]
    event_types: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

/// Sorts one text frame. Never fails: what is not understood is a [`Incoming::Skip`].
pub(crate) fn classify(text: Bytes) -> Incoming {
    // serde reads a struct from a JSON array too; only an object is a message.
    let first = text.iter().find(|byte| !byte.is_ascii_whitespace());
    if first != Some(&b'{') {
        let detail = match first {
            None => "empty".to_owned(),
            Some(_) => match serde_json::from_slice::<serde::de::IgnoredAny>(&text) {
                Ok(_) => "valid JSON, but not an object".to_owned(),
                Err(error) => error.to_string(),
            },
        };
        return Incoming::Skip(SkipReason::NotJson { detail });
    }
    let probe: Probe<'_> = match serde_json::from_slice(&text) {
        Ok(probe) => probe,
        Err(error) if error.is_data() => {
            // Valid JSON whose `type` is not a string.
            return Incoming::Skip(SkipReason::MalformedControl {
                kind: String::new(),
                detail: error.to_string(),
            });
        }
        Err(error) => {
            return Incoming::Skip(SkipReason::NotJson {
                detail: error.to_string(),
            });
        }
    };
    match probe.kind {
        Some(kind) => control(&kind, &text),
        None => match Event::parse(text.clone()) {
            Ok(event) => Incoming::Event(event),
            Err(error) => Incoming::Skip(SkipReason::NotAnEvent {
                detail: error.to_string(),
            }),
        },
    }
}

fn control(kind: &str, text: &[u8]) -> Incoming {
    let malformed = |detail: String| {
        Incoming::Skip(SkipReason::MalformedControl {
            kind: kind.to_owned(),
            detail,
        })
    };
    let fields: ControlFields = match serde_json::from_slice(text) {
        Ok(fields) => fields,
        Err(error) => return malformed(error.to_string()),
    };
    let list = |field: &'static str, value: Option<Value>| -> Result<Vec<String>, String> {
        match value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(item) => Ok(item),
                    _ => Err(format!("`{field}` holds a value that is not a string")),
                })
                .collect(),
            Some(_) => Err(format!("`{field}` is not an array")),
        }
    };
    let parsed = match kind {
        "subscribed" => list("inbox_ids", fields.inbox_ids).and_then(|inbox_ids| {
            let event_types = list("event_types", fields.event_types)?;
            Ok(Control::Subscribed {
                inbox_ids,
                event_types,
            })
        }),
        "unsubscribed" => {
            list("inbox_ids", fields.inbox_ids).map(|inbox_ids| Control::Unsubscribed { inbox_ids })
        }
        "error" => match fields.message {
            Some(Value::String(message)) => Ok(Control::Error { message }),
            None | Some(Value::Null) => Ok(Control::Error {
                message: String::new(),
            }),
            // Still an error from the server: show what it said.
            Some(other) => Ok(Control::Error {
                message: other.to_string(),
            }),
        },
        "pong" => Ok(Control::Pong),
        _ => {
            return Incoming::Skip(SkipReason::UnknownType {
                kind: kind.to_owned(),
            });
        }
    };
    match parsed {
        Ok(control) => Incoming::Control(control),
        Err(detail) => malformed(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sort(text: &str) -> Incoming {
        classify(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn control_of(text: &str) -> Control {
        match sort(text) {
            Incoming::Control(control) => control,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn skipped(text: &str) -> SkipReason {
        match sort(text) {
            Incoming::Skip(reason) => reason,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn control_messages_are_told_by_their_type() {
        assert_eq!(
            control_of(r#"{"type":"subscribed","inbox_ids":["inb_a"],"event_types":[]}"#),
            Control::Subscribed {
                inbox_ids: vec!["inb_a".into()],
                event_types: vec![]
            }
        );
        assert_eq!(
            control_of(r#"{"type":"unsubscribed","inbox_ids":["inb_a"]}"#),
            Control::Unsubscribed {
                inbox_ids: vec!["inb_a".into()]
            }
        );
        assert_eq!(
            control_of(r#"{"type":"error","message":"rate limit exceeded"}"#),
            Control::Error {
                message: "rate limit exceeded".into()
            }
        );
        assert_eq!(control_of(r#" {"type":"pong"}"#), Control::Pong);
    }

    #[test]
    fn events_have_no_type() {
        let text = r#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a"}"#;
        match sort(text) {
            Incoming::Event(event) => {
                assert_eq!(event.event_id(), Some("evt_1"));
                assert_eq!(event.raw().as_ref(), text.as_bytes());
            }
            other => panic!("{other:?}"),
        }
        // An event with a `type` would be a control message: the protocol says so.
        assert!(matches!(
            skipped(r#"{"type":"message.received","event_id":"evt_1"}"#),
            SkipReason::UnknownType { .. }
        ));
    }

    #[test]
    fn what_is_not_understood_is_skipped_with_a_reason() {
        assert!(matches!(skipped(""), SkipReason::NotJson { .. }));
        assert!(matches!(skipped("not json"), SkipReason::NotJson { .. }));
        assert!(matches!(skipped("[1,2]"), SkipReason::NotJson { .. }));
        assert!(matches!(skipped(r#"["pong"]"#), SkipReason::NotJson { .. }));
        assert!(matches!(
            skipped(r#"{"type":"pong""#),
            SkipReason::NotJson { .. }
        ));
        assert!(matches!(
            skipped(r#"{"type":7}"#),
            SkipReason::MalformedControl { .. }
        ));
        assert!(matches!(
            skipped(r#"{"event_id":"evt_1"}"#),
            SkipReason::NotAnEvent { .. }
        ));
        assert!(matches!(
            skipped(r#"{"event":7}"#),
            SkipReason::NotAnEvent { .. }
        ));
        assert!(matches!(
            skipped(r#"{"type":"subscribed","inbox_ids":"inb_a"}"#),
            SkipReason::MalformedControl { .. }
        ));
        assert!(matches!(
            skipped(r#"{"type":"subscribed","inbox_ids":[1]}"#),
            SkipReason::MalformedControl { .. }
        ));
        assert!(matches!(
            skipped(r#"{"type":"dance"}"#),
            SkipReason::UnknownType { .. }
        ));
    }
}
