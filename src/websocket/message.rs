//! The server's messages: control messages, told from events by their `type` field, and
//! events, which have `event` and `event_id` and no `type`.
//!
//! Everything the server sends that is not a control message is an event, and goes to the
//! service, as a webhook delivery whose signature verified does: a text frame that is not
//! JSON, or an object without a string `event`, arrives as
//! [`Event::Malformed`](crate::Event::Malformed) rather than being dropped. Only a frame that
//! is recognisably a control message (an object with a `type`) is not an event.

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

/// Sorts one text frame. Never fails: a control message, a malformed control message
/// (skipped, with a reason), or else an event, which [`Event::parse`] always gives.
pub(crate) fn classify(text: Bytes) -> Incoming {
    // serde reads a struct from a JSON array too; only an object is a control message.
    let first = text.iter().find(|byte| !byte.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Incoming::Event(Event::parse(text));
    }
    let kind =
        match serde_json::from_slice::<Probe<'_>>(&crate::json::without_lone_surrogates(&text)) {
            Ok(probe) => probe.kind.map(Cow::into_owned),
            Err(error) if error.is_data() => {
                // Valid JSON whose `type` is not a string.
                return Incoming::Skip(SkipReason::MalformedControl {
                    kind: String::new(),
                    detail: error.to_string(),
                });
            }
            // Not JSON: no `type` can be read, so it is not a control message.
            Err(_) => None,
        };
    match kind {
        Some(kind) => control(&kind, &text),
        None => Incoming::Event(Event::parse(text)),
    }
}

fn control(kind: &str, text: &[u8]) -> Incoming {
    let malformed = |detail: String| {
        Incoming::Skip(SkipReason::MalformedControl {
            kind: kind.to_owned(),
            detail,
        })
    };
    let fields: ControlFields =
        match serde_json::from_slice(&crate::json::without_lone_surrogates(text)) {
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
    fn what_is_not_a_control_message_is_an_event_even_if_the_model_cannot_read_it() {
        for text in [
            "",
            "not json",
            "[1,2]",
            r#"["pong"]"#,
            r#"{"type":"pong""#,
            r#"{"event_id":"evt_1"}"#,
            r#"{"event":7}"#,
        ] {
            match sort(text) {
                Incoming::Event(Event::Malformed(malformed)) => {
                    assert_eq!(malformed.event_type(), "", "{text}");
                    assert_eq!(malformed.raw().as_ref(), text.as_bytes());
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // A lone surrogate anywhere, as JSON.stringify writes it, is still an event.
        let text =
            r#"{"event":"message.received","event_id":"evt_1","message":{"body_text":"\ud83d"}}"#;
        let Incoming::Event(Event::MessageReceived(received)) = sort(text) else {
            panic!("{text}");
        };
        assert_eq!(received.message.body_text().as_deref(), Some("\u{fffd}"));
        assert_eq!(
            control_of(r#"{"type":"error","message":"cut \ud83d"}"#),
            Control::Error {
                message: "cut \u{fffd}".into()
            }
        );
    }

    #[test]
    fn malformed_control_messages_are_skipped_with_a_reason() {
        assert!(matches!(
            skipped(r#"{"type":7}"#),
            SkipReason::MalformedControl { .. }
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
