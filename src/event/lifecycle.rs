//! Reputation lifecycle events: `inbox.suspended`, `inbox.reactivated`, `pod.suspended`
//! and `pod.reactivated`.
//!
//! OpenMail's reputation engine (or its staff) can block an inbox, or a whole pod of
//! inboxes, from sending. The four events share one shape, [`Lifecycle`]; which of them
//! arrived is the [`Event`](super::Event) variant. A suspension never lifts by itself: the
//! matching `*.reactivated` event is the only signal that sending works again.

use std::fmt;

use bytes::Bytes;
use serde::{Serialize, Serializer};

use super::time::Stamp;
use super::{RawJson, Timestamp};
use crate::json::Short;

/// The payload shared by the four lifecycle events.
///
/// On `pod.*` events `inbox_id` and `inbox_address` are `None`; on `*.reactivated` events
/// `reason` is `None`. Equality ignores how the JSON was formatted: two events are equal
/// when they carry the same fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct Lifecycle {
    pub(super) event_id: Short,
    pub(super) occurred_at: Option<Stamp>,
    pub(super) inbox_id: Option<Short>,
    pub(super) inbox_address: Option<Short>,
    pub(super) pod_id: Option<Short>,
    pub(super) reason: Option<Short>,
    /// The short fields that held escapes, decoded.
    pub(super) decoded: String,
    pub(super) raw: RawJson,
}

impl Lifecycle {
    fn short(&self, field: Option<Short>) -> Option<&str> {
        field.map(|short| short.get(&self.raw.0, &self.decoded))
    }

    /// The event's id, stable across retries: deduplicate on it.
    pub fn event_id(&self) -> &str {
        self.event_id.get(&self.raw.0, &self.decoded)
    }

    /// When the suspension or reactivation happened.
    pub fn occurred_at(&self) -> Option<Timestamp> {
        self.occurred_at
            .and_then(|stamp| stamp.timestamp(&self.raw.0, &self.decoded))
    }

    /// The inbox concerned; `None` on `pod.*` events.
    pub fn inbox_id(&self) -> Option<&str> {
        self.short(self.inbox_id)
    }

    /// The inbox's address, such as `agent@yourdomain.com`; `None` on `pod.*` events.
    pub fn inbox_address(&self) -> Option<&str> {
        self.short(self.inbox_address)
    }

    /// The pod concerned, or the pod the inbox belongs to, if any.
    pub fn pod_id(&self) -> Option<&str> {
        self.short(self.pod_id)
    }

    /// Why sending was blocked; `None` on `*.reactivated` events.
    pub fn reason(&self) -> Option<Reason> {
        self.short(self.reason).map(Reason::from)
    }

    /// The verified body, byte for byte.
    pub fn raw(&self) -> &Bytes {
        &self.raw.0
    }
}

impl PartialEq for Lifecycle {
    fn eq(&self, other: &Self) -> bool {
        self.event_id() == other.event_id()
            && self.occurred_at() == other.occurred_at()
            && self.inbox_id() == other.inbox_id()
            && self.inbox_address() == other.inbox_address()
            && self.pod_id() == other.pod_id()
            && self.reason() == other.reason()
    }
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("event_id", &self.event_id())
            .field("occurred_at", &self.occurred_at())
            .field("inbox_id", &self.inbox_id())
            .field("inbox_address", &self.inbox_address())
            .field("pod_id", &self.pod_id())
            .field("reason", &self.reason())
            .field("raw", &self.raw)
            .finish()
    }
}

impl Serialize for Lifecycle {
    /// The wire shape without the `event` tag; [`Event`](super::Event) adds it. Absent
    /// fields are written as `null`.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "Lifecycle")]
        struct Wire<'a> {
            event_id: &'a str,
            occurred_at: Option<Timestamp>,
            inbox_id: Option<&'a str>,
            inbox_address: Option<&'a str>,
            pod_id: Option<&'a str>,
            reason: Option<&'a str>,
        }

        Wire {
            event_id: self.event_id(),
            occurred_at: self.occurred_at(),
            inbox_id: self.inbox_id(),
            inbox_address: self.inbox_address(),
            pod_id: self.pod_id(),
            reason: self.short(self.reason),
        }
        .serialize(serializer)
    }
}

string_enum! {
    /// Why an inbox or pod was suspended.
    ///
    /// The six documented codes are variants; any other code arrives intact as
    /// [`Reason::Unknown`], so a new code on OpenMail's side never fails a delivery.
    ///
    /// ```
    /// use openmail_webhooks::event::Reason;
    ///
    /// assert_eq!(Reason::from("high_bounce_rate"), Reason::HighBounceRate);
    /// assert_eq!(Reason::from("other"), Reason::Other);
    /// assert_eq!(Reason::from("spam_trap").as_str(), "spam_trap");
    /// ```
    Reason {
        /// `high_bounce_rate`: too many messages bounced.
        HighBounceRate => "high_bounce_rate",
        /// `high_complaint_rate`: too many recipients marked messages as spam.
        HighComplaintRate => "high_complaint_rate",
        /// `abuse`: the sending was judged abusive.
        Abuse => "abuse",
        /// `pod_degraded`: the inbox's pod is in poor standing.
        PodDegraded => "pod_degraded",
        /// `manual_review`: OpenMail staff suspended it for review.
        ManualReview => "manual_review",
        /// `other`: the documented catch-all code.
        Other => "other",
    }
}
