//! Reputation lifecycle events: `inbox.suspended`, `inbox.reactivated`, `pod.suspended`
//! and `pod.reactivated`.
//!
//! OpenMail's reputation engine (or its staff) can block an inbox, or a whole pod of
//! inboxes, from sending. The four events share one shape, [`Lifecycle`]; which of them
//! arrived is the [`Event`](super::Event) variant. A suspension never lifts by itself: the
//! matching `*.reactivated` event is the only signal that sending works again.

use bytes::Bytes;
use serde::Serialize;

use super::{RawJson, Timestamp};

/// The payload shared by the four lifecycle events.
///
/// On `pod.*` events `inbox_id` and `inbox_address` are `None`; on `*.reactivated` events
/// `reason` is `None`. Equality ignores [`raw`](Self::raw): two events are equal when they
/// carry the same fields, however the JSON was formatted.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Lifecycle {
    /// The event's id, stable across retries: deduplicate on it.
    pub event_id: String,
    /// When the suspension or reactivation happened.
    pub occurred_at: Option<Timestamp>,
    /// The inbox concerned; `None` on `pod.*` events.
    pub inbox_id: Option<String>,
    /// The inbox's address, such as `agent@yourdomain.com`; `None` on `pod.*` events.
    pub inbox_address: Option<String>,
    /// The pod concerned, or the pod the inbox belongs to, if any.
    pub pod_id: Option<String>,
    /// Why sending was blocked; `None` on `*.reactivated` events.
    pub reason: Option<Reason>,
    #[serde(skip)]
    pub(super) raw: RawJson,
}

impl Lifecycle {
    /// The verified body, byte for byte.
    pub fn raw(&self) -> &Bytes {
        &self.raw.0
    }
}

impl PartialEq for Lifecycle {
    fn eq(&self, other: &Self) -> bool {
        let Self {
            event_id,
            occurred_at,
            inbox_id,
            inbox_address,
            pod_id,
            reason,
            raw: _,
        } = self;
        *event_id == other.event_id
            && *occurred_at == other.occurred_at
            && *inbox_id == other.inbox_id
            && *inbox_address == other.inbox_address
            && *pod_id == other.pod_id
            && *reason == other.reason
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
