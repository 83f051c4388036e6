use std::fmt;

use crate::LogSafe;
use crate::json::{Reader, Syntax, line_column};

/// The longest `inbox_id` a claim may route on, in bytes. OpenMail's ids are a few dozen
/// bytes; a longer one never keys a lookup, a cache entry or a log line: the layer routes
/// such a delivery as if it named no inbox, so only the account's secret can verify it.
pub(crate) const MAX_CLAIMED_ID_LEN: usize = 255;

/// What a body says about itself at its top level: its `event_id` and the `inbox_id` it
/// belongs to, read before (or without) a full parse.
///
/// Only the top-level object is visited: no tree is built, other values are checked and
/// skipped, and, unless the JSON escapes them, no string is copied twice. Until the
/// signature verifies under a secret whose [`Tenant`](crate::tenant::Tenant) covers it, a
/// claim is untrusted.
///
/// A body that is not JSON, whose top level is not an object, or that names `event`,
/// `event_id`, `inbox_id` or `pod_id` more than once, has no claim one can trust: two JSON
/// parsers may disagree on which of two duplicate keys counts. An `event_id` or `inbox_id`
/// that is not a string reads as absent. The claim reads the body with the event parse's
/// own JSON reader, so the two accept the same bodies and read the same ids: where the
/// claim cannot be read, the [`Event`](crate::Event) is malformed and has no ids either.
/// An id holding a lone surrogate escape keeps that escape, as the event's does (see
/// [the event docs](crate::event#json-and-lone-surrogates)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Claim {
    event_id: Option<String>,
    inbox_id: Option<String>,
}

/// Why a body's [`Claim`] could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimError {
    reason: String,
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the body's top-level event_id or inbox_id cannot be read: {}",
            LogSafe::new(&self.reason)
        )
    }
}

impl std::error::Error for ClaimError {}

/// The envelope fields a claim checks for duplicates.
const ENVELOPE: [&str; 4] = ["event", "event_id", "inbox_id", "pod_id"];

impl Claim {
    /// Reads the claim from a body exactly as received.
    pub(crate) fn read(body: &[u8]) -> Result<Self, ClaimError> {
        let not_json = |syntax: Syntax| {
            let (line, column) = line_column(body, syntax.at);
            ClaimError {
                reason: format!(
                    "the body is not JSON: {} at line {line} column {}",
                    syntax.code,
                    column.saturating_add(1)
                ),
            }
        };
        let mut reader = Reader::new(body);
        if reader.peek() != Some(b'{') {
            reader
                .skip()
                .and_then(|()| reader.end())
                .map_err(not_json)?;
            return Err(ClaimError {
                reason: "the body is JSON, but not an object".to_owned(),
            });
        }
        let mut claim = Claim::default();
        let mut seen = [false; 4];
        let mut duplicate = None;
        reader
            .object(|reader, key| {
                let name = key.decode(body);
                let Some(index) = ENVELOPE.iter().position(|field| *field == name) else {
                    return reader.skip();
                };
                if seen
                    .get_mut(index)
                    .is_some_and(|seen| std::mem::replace(seen, true))
                {
                    duplicate = duplicate.or(ENVELOPE.get(index).copied());
                    return reader.skip();
                }
                let slot = match index {
                    1 => &mut claim.event_id,
                    2 => &mut claim.inbox_id,
                    _ => return reader.skip(),
                };
                if reader.peek() != Some(b'"') {
                    return reader.skip();
                }
                let span = reader.string()?;
                *slot = Some(span.decode_id(body).into_owned());
                Ok(())
            })
            .and_then(|()| reader.end())
            .map_err(not_json)?;
        if let Some(name) = duplicate {
            return Err(ClaimError {
                reason: format!("the body names `{name}` twice"),
            });
        }
        Ok(claim)
    }

    /// The top-level `event_id`, when it is a string.
    pub(crate) fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// The top-level `inbox_id`, when it is a string (`null` on pod events).
    pub(crate) fn inbox_id(&self) -> Option<&str> {
        self.inbox_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_top_level_fields() {
        let claim = Claim::read(
            br#"{"event":"message.received","message":{"inbox_id":"inb_nested"},"event_id":"evt_1","inbox_id":"inb_a","pod_id":null}"#,
        )
        .unwrap();
        assert_eq!(claim.inbox_id(), Some("inb_a"));
        assert_eq!(claim.event_id(), Some("evt_1"));
        let pod =
            Claim::read(br#"{"event":"pod.suspended","inbox_id":null,"pod_id":"pod_1"}"#).unwrap();
        assert_eq!(pod.inbox_id(), None);
        let escaped = Claim::read(br#"{"inbox_id":"inb_\u0041"}"#).unwrap();
        assert_eq!(escaped.inbox_id(), Some("inb_A"));
        // Not a string: absent.
        let mistyped = Claim::read(br#"{"inbox_id":42,"event_id":["e"]}"#).unwrap();
        assert_eq!((mistyped.event_id(), mistyped.inbox_id()), (None, None));
        // A long id is read; the layer does not route on it.
        let long = format!(r#"{{"inbox_id":"{}"}}"#, "i".repeat(MAX_CLAIMED_ID_LEN + 1));
        assert!(Claim::read(long.as_bytes()).is_ok());
    }

    #[test]
    fn lone_surrogates_keep_their_escape_in_ids_and_are_allowed_elsewhere() {
        let claim = Claim::read(
            br#"{"event":"x\ud800","event_id":"evt_\uD800","inbox_id":"inb_\udc00","note":"\ud83d"}"#,
        )
        .unwrap();
        assert_eq!(claim.event_id(), Some(r"evt_\ud800"));
        assert_eq!(claim.inbox_id(), Some(r"inb_\udc00"));
    }

    #[test]
    fn ambiguous_or_unreadable_claims_are_errors() {
        for body in [
            &br#"{"inbox_id":"inb_a","inbox_id":"inb_b"}"#[..],
            br#"{"event_id":"e_F","event_id":null}"#,
            br#"{"event":"a","event":"b"}"#,
            br#"{"pod_id":"p","pod_id":"q"}"#,
            br#"{"inbox_id":"inb_a","inbox_\u0069d":"inb_b"}"#,
            br#"["inbox_id","inb_a"]"#,
            br#"{"inbox_id":"inb_a"} trailing"#,
            br#"{"inbox_id":"inb_a","x":1e999}"#,
            b"not json",
            b"",
        ] {
            assert!(
                Claim::read(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_error_never_prints_raw_input() {
        let error = Claim::read(b"{\"inbox_id\":\"a\nb\",\"inbox_id\":1}").unwrap_err();
        assert!(!error.to_string().contains('\n'), "{error}");
    }
}
