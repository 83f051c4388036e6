use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use crate::LogSafe;

/// The longest `inbox_id` a claim may name, in bytes. OpenMail's ids are a few dozen
/// bytes; a longer one is refused before it can key a lookup, a cache entry or a log line.
pub const MAX_CLAIMED_ID_LEN: usize = 255;

/// What a body says about itself at its top level: its `event_id` and the `inbox_id` it
/// belongs to, read before (or without) a full parse.
///
/// Only the top-level object is visited: no tree is built, other keys are skipped, and,
/// unless the JSON escapes them, no string is copied twice. Until the signature verifies
/// under a secret whose [`SecretScope`](super::SecretScope) covers it, a claim is
/// untrusted.
///
/// A body whose top level is not an object, or that names `event`, `event_id`, `inbox_id`
/// or `pod_id` more than once, has no claim one can trust: two JSON parsers may disagree on
/// which of two duplicate keys counts. The typed event parser refuses the same bodies.
///
/// ```
/// use openmail_webhooks::protocol::Claim;
///
/// let claim = Claim::read(br#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a"}"#)?;
/// assert_eq!(claim.event_id(), Some("evt_1"));
/// assert_eq!(claim.inbox_id(), Some("inb_a"));
/// assert!(Claim::read(br#"{"inbox_id":"inb_a","inbox_id":"inb_b"}"#).is_err());
/// # Ok::<(), openmail_webhooks::protocol::ClaimError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    event_id: Option<String>,
    inbox_id: Option<String>,
}

/// Why a body's [`Claim`] could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimError {
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

impl Claim {
    /// Reads the claim from a body exactly as received.
    pub fn read(body: &[u8]) -> Result<Self, ClaimError> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let claim = deserializer
            .deserialize_map(ClaimVisitor)
            .and_then(|claim| deserializer.end().map(|()| claim))
            .map_err(|error| ClaimError {
                reason: error.to_string(),
            })?;
        if claim
            .inbox_id
            .as_ref()
            .is_some_and(|inbox| inbox.len() > MAX_CLAIMED_ID_LEN)
        {
            return Err(ClaimError {
                reason: format!("inbox_id is longer than {MAX_CLAIMED_ID_LEN} bytes"),
            });
        }
        Ok(claim)
    }

    /// The top-level `event_id`, when it is a string.
    pub fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// The top-level `inbox_id`, when it is a string (`null` on pod events).
    pub fn inbox_id(&self) -> Option<&str> {
        self.inbox_id.as_deref()
    }
}

/// Visits the top-level object only: an array, unlike with a derived `Deserialize`, is
/// not read as a tuple of fields.
struct ClaimVisitor;

impl<'de> Visitor<'de> for ClaimVisitor {
    type Value = Claim;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claim, A::Error> {
        let mut claim = Claim::default();
        // event, event_id, inbox_id, pod_id
        let mut seen = [false; 4];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let (index, name, slot) = match key.as_ref() {
                "event" => (0, "event", None),
                "event_id" => (1, "event_id", Some(&mut claim.event_id)),
                "inbox_id" => (2, "inbox_id", Some(&mut claim.inbox_id)),
                "pod_id" => (3, "pod_id", None),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if let Some(flag) = seen.get_mut(index) {
                if std::mem::replace(flag, true) {
                    return Err(de::Error::duplicate_field(name));
                }
            }
            match slot {
                Some(slot) => {
                    *slot = map
                        .next_value::<Option<Cow<'de, str>>>()?
                        .map(Cow::into_owned);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(claim)
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
    }

    #[test]
    fn ambiguous_mistyped_or_oversized_claims_are_errors() {
        let long = format!(r#"{{"inbox_id":"{}"}}"#, "i".repeat(MAX_CLAIMED_ID_LEN + 1));
        let just_fits = format!(r#"{{"inbox_id":"{}"}}"#, "i".repeat(MAX_CLAIMED_ID_LEN));
        assert!(Claim::read(just_fits.as_bytes()).is_ok());
        for body in [
            &br#"{"inbox_id":"inb_a","inbox_id":"inb_b"}"#[..],
            br#"{"event_id":"e_F","event_id":null}"#,
            br#"{"event":"a","event":"b"}"#,
            br#"{"pod_id":"p","pod_id":"q"}"#,
            br#"{"inbox_id":42}"#,
            br#"["inbox_id","inb_a"]"#,
            br#"{"inbox_id":"inb_a"} trailing"#,
            b"not json",
            long.as_bytes(),
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
