use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::{Delivery, LogSafe};

/// What separates this digest from any other SHA-256 of the same bytes, and names the
/// layout, so that a future layout can never produce a key that means something else.
const DOMAIN: &[u8] = b"openmail-webhooks dedup v1\0";

/// What deduplication keys on: the inbox the delivery was verified for, and its `event_id`,
/// both from the verified body's top level, kept as a fixed-size digest.
///
/// **Scoped to the inbox.** An inbox's own secret only ever verifies bodies that name that
/// inbox (its [`Tenant`](crate::tenant::Tenant) covers nothing else), so a
/// tenant holding one inbox's secret can only ever reserve keys under that inbox: it cannot
/// make another inbox's `evt_X` look like a duplicate by sending its own `evt_X` first. The
/// account (the account webhook's secret, or the API key of the WebSocket) is trusted for
/// every inbox, and the key leaves the channel and the secret out: the same event delivered
/// over the webhook and over the WebSocket, or signed by the account and by the inbox, is
/// one event. Pod events name no inbox, and only the account can sign them.
///
/// **Fixed size.** The key is the SHA-256 of the two ids, each prefixed with its length, so
/// a store holds 32 bytes per event (64 hex digits in Redis) however long the `event_id` a
/// signer chose. The layout is versioned and private; stores treat the
/// [`digest`](Self::digest) or its [`hex`](Self::hex) form as opaque.
///
/// The ids themselves stay readable for logs and handlers through
/// [`event_id`](Self::event_id) and [`inbox_id`](Self::inbox_id); `Display` and `Debug`
/// show them through [`LogSafe`]. Cloning is one reference-count increment.
///
/// ```
/// use openmail_webhooks::dedup::DedupKey;
///
/// let a = DedupKey::new(Some("inb_a"), "evt_X");
/// let b = DedupKey::new(Some("inb_b"), "evt_X");
/// assert_ne!(a, b); // the same event_id in two inboxes: two events
/// assert_eq!(a, DedupKey::new(Some("inb_a"), "evt_X"));
/// assert_eq!(a.hex().len(), 64);
/// assert_eq!(a.to_string(), "evt_X (inbox inb_a)");
/// ```
#[derive(Clone)]
pub struct DedupKey {
    inner: Arc<Inner>,
}

struct Inner {
    digest: [u8; 32],
    hex: [u8; 64],
    ids: Ids,
}

/// Where the ids are read from: the delivery itself (no copy of a signer's long id), or
/// ids given by the caller.
enum Ids {
    Delivery(Delivery),
    Given {
        inbox_id: Option<Box<str>>,
        event_id: Box<str>,
    },
}

impl DedupKey {
    /// The key of `event_id` in `inbox_id` (`None` for pod events, which name no inbox).
    ///
    /// For stores' own tests and for tools; the layer builds its keys with
    /// [`from_delivery`](Self::from_delivery).
    pub fn new(inbox_id: Option<&str>, event_id: &str) -> Self {
        Self::build(
            inbox_id,
            event_id,
            Ids::Given {
                inbox_id: inbox_id.map(Box::from),
                event_id: Box::from(event_id),
            },
        )
    }

    /// The key of a verified delivery: its body's top-level `inbox_id` (which the secret
    /// that vouched for it covers) and `event_id`. `None` when the body has no string
    /// `event_id`.
    pub fn from_delivery(delivery: &Delivery) -> Option<Self> {
        let event_id = delivery.event_id()?;
        Some(Self::build(
            delivery.inbox_id(),
            event_id,
            Ids::Delivery(delivery.clone()),
        ))
    }

    fn build(inbox_id: Option<&str>, event_id: &str, ids: Ids) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(DOMAIN);
        match inbox_id {
            None => hasher.update([0]),
            Some(inbox_id) => {
                hasher.update([1]);
                update_with_length(&mut hasher, inbox_id);
            }
        }
        update_with_length(&mut hasher, event_id);
        let digest: [u8; 32] = hasher.finalize().into();
        let mut hex = [b'0'; 64];
        // 32 bytes always fit in 64 hex digits.
        let _ = hex::encode_to_slice(digest, &mut hex);
        Self {
            inner: Arc::new(Inner { digest, hex, ids }),
        }
    }

    /// The SHA-256 digest that stores key on.
    pub fn digest(&self) -> &[u8; 32] {
        &self.inner.digest
    }

    /// The digest as 64 lowercase hex digits, for stores that key on text.
    pub fn hex(&self) -> &str {
        std::str::from_utf8(&self.inner.hex).unwrap_or_default()
    }

    /// The `event_id`, as the body has it. Print it through [`LogSafe`]: a signer chose it.
    pub fn event_id(&self) -> &str {
        match &self.inner.ids {
            // `from_delivery` made the key only when the delivery had an event_id, and a
            // delivery never changes.
            Ids::Delivery(delivery) => delivery.event_id().unwrap_or_default(),
            Ids::Given { event_id, .. } => event_id,
        }
    }

    /// The `inbox_id` the key is scoped to; `None` for events that name no inbox (pod
    /// events).
    pub fn inbox_id(&self) -> Option<&str> {
        match &self.inner.ids {
            Ids::Delivery(delivery) => delivery.inbox_id(),
            Ids::Given { inbox_id, .. } => inbox_id.as_deref(),
        }
    }
}

fn update_with_length(hasher: &mut Sha256, part: &str) {
    let length = u64::try_from(part.len()).unwrap_or(u64::MAX);
    hasher.update(length.to_be_bytes());
    hasher.update(part.as_bytes());
}

impl PartialEq for DedupKey {
    fn eq(&self, other: &Self) -> bool {
        self.inner.digest == other.inner.digest
    }
}

impl Eq for DedupKey {}

impl Hash for DedupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.digest.hash(state);
    }
}

/// The event id and, when there is one, the inbox, escaped and cut short:
/// `evt_X (inbox inb_a)`, or `evt_X` alone for pod events.
impl fmt::Display for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", LogSafe::new(self.event_id()))?;
        if let Some(inbox_id) = self.inbox_id() {
            write!(f, " (inbox {})", LogSafe::new(inbox_id))?;
        }
        Ok(())
    }
}

impl fmt::Debug for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupKey")
            .field("event_id", &LogSafe::new(self.event_id()))
            .field("inbox_id", &self.inbox_id().map(LogSafe::new))
            .field("hex", &self.hex())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    // Known answers from an independent implementation of the documented layout:
    //
    // python3 -c '
    // import hashlib
    // def key(inbox, event):
    //     m = b"openmail-webhooks dedup v1\x00"
    //     if inbox is None: m += b"\x00"
    //     else:
    //         b = inbox.encode(); m += b"\x01" + len(b).to_bytes(8, "big") + b
    //     e = event.encode(); m += len(e).to_bytes(8, "big") + e
    //     return hashlib.sha256(m).hexdigest()
    // print(key("inb_a", "evt_X"), key("inb_b", "evt_X"), key(None, "evt_X"), key("", "evt_X"))'
    const INB_A_EVT_X: &str = "5214c9e9c30aef9a072ab0fb8312bad015731df931d2122664e98c43366abe8f";
    const INB_B_EVT_X: &str = "29f0d14723b598dfbc1441e34ae054fad853e5dbd6fe13e91c36bd8234077670";
    const NO_INBOX_EVT_X: &str = "21e723ca1bbdf4e4a81aab71088173a8bf15abde1175eeead18114e139e58481";
    const EMPTY_INBOX_EVT_X: &str =
        "771cb6b4a8a8519204054375cacee0e74316a3d3dc35bd3ff679cc97c2f33eb6";

    #[test]
    fn the_digest_matches_an_independent_implementation() {
        assert_eq!(DedupKey::new(Some("inb_a"), "evt_X").hex(), INB_A_EVT_X);
        assert_eq!(DedupKey::new(Some("inb_b"), "evt_X").hex(), INB_B_EVT_X);
        assert_eq!(DedupKey::new(None, "evt_X").hex(), NO_INBOX_EVT_X);
        assert_eq!(DedupKey::new(Some(""), "evt_X").hex(), EMPTY_INBOX_EVT_X);
        let key = DedupKey::new(Some("inb_a"), "evt_X");
        assert_eq!(hex::encode(key.digest()), key.hex());
    }

    #[test]
    fn parts_cannot_run_into_each_other() {
        // Without length prefixes these two would hash the same bytes.
        assert_ne!(
            DedupKey::new(Some("inb_a"), "bc"),
            DedupKey::new(Some("inb_ab"), "c")
        );
        assert_ne!(
            DedupKey::new(None, "evt_X"),
            DedupKey::new(Some(""), "evt_X")
        );
    }

    #[test]
    fn the_same_event_keys_the_same_on_both_channels_and_from_given_ids() {
        let body = Bytes::from_static(br#"{"event":"x","event_id":"evt_X","inbox_id":"inb_a"}"#);
        let websocket = Delivery::websocket(body.clone(), None);
        let from_websocket = DedupKey::from_delivery(&websocket).unwrap();
        assert_eq!(from_websocket.hex(), INB_A_EVT_X);
        assert_eq!(from_websocket.event_id(), "evt_X");
        assert_eq!(from_websocket.inbox_id(), Some("inb_a"));

        let verifier = crate::Verifier::new("whsec_k").unwrap();
        let timestamp = verifier.now().to_string();
        let signature = crate::sign("whsec_k", &timestamp, &body);
        let verified = verifier.verify(&timestamp, signature, &body).unwrap();
        let webhook = Delivery::webhook(
            verified,
            crate::tenant::Tenant::Inbox("inb_a".into()),
            None,
            body,
            None,
        );
        assert_eq!(DedupKey::from_delivery(&webhook).unwrap(), from_websocket);

        let no_event_id = Delivery::websocket(Bytes::from_static(br#"{"event":"x"}"#), None);
        assert!(DedupKey::from_delivery(&no_event_id).is_none());
    }

    /// `evt_\ud800` and `evt_\udc00` are two events to OpenMail (JavaScript compares
    /// strings by their UTF-16 code units): their ids keep their escapes, so their keys
    /// differ, on the webhook (the parsed event) and on the claim alike.
    #[test]
    fn ids_with_lone_surrogates_key_apart() {
        let key = |event_id: &str| {
            let body =
                format!(r#"{{"event":"x","event_id":"{event_id}","inbox_id":"inb_\udc00"}}"#);
            let body = Bytes::from(body);
            let parsed = Arc::new(crate::Event::parse(body.clone()));
            let with_event = Delivery::websocket(body.clone(), Some(parsed));
            let without = Delivery::websocket(body, None);
            let key = DedupKey::from_delivery(&with_event).unwrap();
            assert_eq!(Some(&key), DedupKey::from_delivery(&without).as_ref());
            key
        };
        let high = key(r"evt_\ud800");
        let low = key(r"evt_\udc00");
        assert_ne!(high, low);
        assert_eq!(high.event_id(), r"evt_\ud800");
        assert_eq!(high.inbox_id(), Some(r"inb_\udc00"));
        assert_eq!(high, key(r"evt_\uD800"));
    }

    #[test]
    fn display_and_debug_escape_the_ids() {
        let key = DedupKey::new(Some("inb\n"), "evt_1\nhandled x\x1b[2J");
        for shown in [key.to_string(), format!("{key:?}")] {
            assert!(!shown.contains('\n') && !shown.contains('\x1b'), "{shown}");
        }
        let huge = DedupKey::new(None, &"e".repeat(1 << 20));
        assert!(huge.to_string().len() < 200);
        assert!(format!("{huge:?}").len() < 400);
    }
}
