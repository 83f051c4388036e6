use std::fmt;

use crate::LogSafe;
use crate::json::{Reader, Span, Syntax, line_column};

/// The longest `inbox_id` a claim may route on, in bytes. OpenMail's ids are a few dozen
/// bytes; a longer one never keys a lookup, a cache entry or a log line: the layer routes
/// such a delivery as if it named no inbox, so only the account's secret can verify it.
pub(crate) const MAX_CLAIMED_ID_LEN: usize = 255;

/// What a body says about itself at its top level: its `event_id` and the `inbox_id` it
/// belongs to, read before (or without) a full parse.
///
/// Only the top-level object is visited: no tree is built, other values are checked and
/// skipped, and, unless the JSON escapes them, the ids are not copied: a claim holds where
/// they are, and its accessors read them from the same body. Until the signature verifies
/// under a secret whose [`Tenant`](crate::tenant::Tenant) covers it, a claim is untrusted.
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
    event_id: Option<Id>,
    inbox_id: Option<Id>,
}

/// Where a claimed id is: in the body as it came, or decoded when the JSON escapes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Id {
    InBody(Span),
    Decoded(Box<str>),
}

impl Id {
    fn text<'a>(&'a self, body: &'a [u8]) -> &'a str {
        match self {
            // The reader checked the body: the text is UTF-8. A claim read from another
            // body reads that body's bytes at the same offsets, or nothing; never a panic.
            Self::InBody(span) => std::str::from_utf8(span.raw(body)).unwrap_or_default(),
            Self::Decoded(text) => text,
        }
    }
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
                *slot = Some(if span.escaped() {
                    Id::Decoded(span.decode_id(body).into())
                } else {
                    Id::InBody(span)
                });
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

    /// The top-level `event_id`, when it is a string. `body` is the one the claim was
    /// read from.
    pub(crate) fn event_id<'a>(&'a self, body: &'a [u8]) -> Option<&'a str> {
        self.event_id.as_ref().map(|id| id.text(body))
    }

    /// The top-level `inbox_id`, when it is a string (`null` on pod events). `body` is the
    /// one the claim was read from.
    pub(crate) fn inbox_id<'a>(&'a self, body: &'a [u8]) -> Option<&'a str> {
        self.inbox_id.as_ref().map(|id| id.text(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_top_level_fields() {
        let body = br#"{"event":"message.received","message":{"inbox_id":"inb_nested"},"event_id":"evt_1","inbox_id":"inb_a","pod_id":null}"#;
        let claim = Claim::read(body).unwrap();
        assert_eq!(claim.inbox_id(body), Some("inb_a"));
        assert_eq!(claim.event_id(body), Some("evt_1"));
        let pod = br#"{"event":"pod.suspended","inbox_id":null,"pod_id":"pod_1"}"#;
        assert_eq!(Claim::read(pod).unwrap().inbox_id(pod), None);
        let escaped = br#"{"inbox_id":"inb_\u0041"}"#;
        assert_eq!(
            Claim::read(escaped).unwrap().inbox_id(escaped),
            Some("inb_A")
        );
        // Not a string: absent.
        let mistyped = br#"{"inbox_id":42,"event_id":["e"]}"#;
        let claim = Claim::read(mistyped).unwrap();
        assert_eq!(
            (claim.event_id(mistyped), claim.inbox_id(mistyped)),
            (None, None)
        );
        // A long id is read; the layer does not route on it.
        let long = format!(r#"{{"inbox_id":"{}"}}"#, "i".repeat(MAX_CLAIMED_ID_LEN + 1));
        assert!(Claim::read(long.as_bytes()).is_ok());
    }

    #[test]
    fn lone_surrogates_keep_their_escape_in_ids_and_are_allowed_elsewhere() {
        let body =
            br#"{"event":"x\ud800","event_id":"evt_\uD800","inbox_id":"inb_\udc00","note":"\ud83d"}"#;
        let claim = Claim::read(body).unwrap();
        assert_eq!(claim.event_id(body), Some(r"evt_\ud800"));
        assert_eq!(claim.inbox_id(body), Some(r"inb_\udc00"));
    }

    #[test]
    fn ids_without_escapes_are_read_from_the_body_not_copied() {
        let body = br#"{"event_id":"evt_1","inbox_id":"inb_\u0041"}"#;
        let claim = Claim::read(body).unwrap();
        assert!(matches!(claim.event_id, Some(Id::InBody(_))));
        assert!(matches!(claim.inbox_id, Some(Id::Decoded(_))));
        let event_id = claim.event_id(body).unwrap();
        assert!(body.as_ptr_range().contains(&event_id.as_ptr()));
        // Read with another body, an id reads as that body's bytes or empty; no panic.
        assert_eq!(claim.event_id(b"{}"), Some(""));
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
