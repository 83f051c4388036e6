use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, Visitor};

/// The tenant a body claims to belong to, read before the signature is checked.
///
/// Only the top-level `inbox_id` and `pod_id` are extracted: no tree is built and, unless
/// the JSON escapes them, no string is allocated. Other keys are skipped. The claim is
/// untrusted until the signature verifies under a secret of that tenant.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) inbox_id: Option<String>,
    pub(crate) pod_id: Option<String>,
}

/// Why a body's claim could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimError(pub(crate) String);

impl Claim {
    /// Reads the claim. A body that is not a JSON object, or that names `inbox_id` or
    /// `pod_id` twice or with a non-string value, has no trustworthy claim and is an error:
    /// two JSON parsers may disagree on which of two duplicate keys counts.
    pub(crate) fn read(body: &[u8]) -> Result<Self, ClaimError> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let claim = deserializer
            .deserialize_map(ClaimVisitor)
            .and_then(|claim| deserializer.end().map(|()| claim))
            .map_err(|error| ClaimError(error.to_string()))?;
        Ok(claim)
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
        let (mut seen_inbox, mut seen_pod) = (false, false);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let (slot, seen, name) = match key.as_ref() {
                "inbox_id" => (&mut claim.inbox_id, &mut seen_inbox, "inbox_id"),
                "pod_id" => (&mut claim.pod_id, &mut seen_pod, "pod_id"),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(seen, true) {
                return Err(de::Error::duplicate_field(name));
            }
            *slot = map
                .next_value::<Option<Cow<'de, str>>>()?
                .map(Cow::into_owned);
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
            br#"{"event":"message.received","message":{"inbox_id":"inb_nested"},"inbox_id":"inb_a","pod_id":null}"#,
        )
        .unwrap();
        assert_eq!(claim.inbox_id.as_deref(), Some("inb_a"));
        assert_eq!(claim.pod_id, None);
        let pod =
            Claim::read(br#"{"event":"pod.suspended","inbox_id":null,"pod_id":"pod_1"}"#).unwrap();
        assert_eq!((pod.inbox_id, pod.pod_id.as_deref()), (None, Some("pod_1")));
        let escaped = Claim::read(br#"{"inbox_id":"inb_\u0041"}"#).unwrap();
        assert_eq!(escaped.inbox_id.as_deref(), Some("inb_A"));
    }

    #[test]
    fn ambiguous_or_mistyped_claims_are_errors() {
        for body in [
            &br#"{"inbox_id":"inb_a","inbox_id":"inb_b"}"#[..],
            br#"{"inbox_id":42}"#,
            br#"["inbox_id","inb_a"]"#,
            b"not json",
        ] {
            assert!(
                Claim::read(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
