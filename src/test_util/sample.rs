//! [`Sample`]: a realistic body for every event type OpenMail sends, with the ids a test
//! varies.

use std::sync::atomic::{AtomicU64, Ordering};

use super::TestDelivery;
use crate::protocol::{Clock, SystemClock};

/// A realistic OpenMail event body, built in one line, for the tests of your handlers.
///
/// There is one constructor per event type OpenMail documents, and one for the test event
/// the dashboard's "Test webhook" button sends. The builders set what a test usually varies:
/// the [`event_id`](Self::event_id) (fresh by default, so two samples are two events), the
/// [`inbox_id`](Self::inbox_id), the suspension [`reason`](Self::reason), the delivery
/// [`attempt`](Self::attempt), and the time it is sent [`at`](Self::at).
///
/// The body is compact JSON in OpenMail's field order, as it arrives over either channel.
/// The `message.received` sample is what real mail looks like: a display name, a `cc`
/// array, non-ASCII text, and a PDF attachment with its camelCase keys (`contentType`,
/// `sizeBytes`, `parsedText`, `extractionMethod`).
///
/// [`deliver`](Self::deliver) signs it: a [`TestDelivery`], with its genuine request and
/// its forgeries.
///
/// ```
/// use openmail_webhooks::test_util::Sample;
/// use openmail_webhooks::Event;
///
/// // A signed `message.received` for inbox inb_x, as OpenMail would POST it.
/// let request = Sample::message_received().inbox_id("inb_x").deliver("whsec_test").request();
/// assert_eq!(request.headers()["content-type"], "application/json");
///
/// // An `inbox.suspended` for a reason of your choosing, as bytes for `Event::parse`.
/// let json = Sample::inbox_suspended().event_id("evt_1").reason("spam_complaints").to_json();
/// let event = Event::parse(json.into());
/// assert_eq!(event.event_type(), "inbox.suspended");
/// assert_eq!(event.event_id(), Some("evt_1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    kind: Kind,
    event_id: String,
    inbox_id: Option<String>,
    reason: Option<String>,
    attempt: u32,
    at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MessageReceived,
    InboxSuspended,
    InboxReactivated,
    PodSuspended,
    PodReactivated,
    SetupTest,
}

impl Kind {
    const ALL: [Self; 6] = [
        Self::MessageReceived,
        Self::InboxSuspended,
        Self::InboxReactivated,
        Self::PodSuspended,
        Self::PodReactivated,
        Self::SetupTest,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::MessageReceived => "message.received",
            Self::InboxSuspended => "inbox.suspended",
            Self::InboxReactivated => "inbox.reactivated",
            Self::PodSuspended => "pod.suspended",
            Self::PodReactivated => "pod.reactivated",
            Self::SetupTest => "setup.test",
        }
    }
}

impl Sample {
    /// The `inbox_id` of every sample but the pod events, unless
    /// [`inbox_id`](Self::inbox_id) changes it.
    pub const DEFAULT_INBOX_ID: &'static str = "inb_92ma";

    /// The event types a sample can take, in the order of [`Sample::of_type`]: the five
    /// OpenMail documents, then `setup.test`, the dashboard's test event.
    pub const EVENT_TYPES: [&'static str; 6] = [
        "message.received",
        "inbox.suspended",
        "inbox.reactivated",
        "pod.suspended",
        "pod.reactivated",
        "setup.test",
    ];

    fn new(kind: Kind) -> Self {
        let pod = matches!(kind, Kind::PodSuspended | Kind::PodReactivated);
        Self {
            kind,
            event_id: fresh_event_id(),
            inbox_id: (!pod).then(|| Self::DEFAULT_INBOX_ID.to_owned()),
            reason: match kind {
                Kind::InboxSuspended => Some("high_bounce_rate".to_owned()),
                Kind::PodSuspended => Some("high_complaint_rate".to_owned()),
                _ => None,
            },
            attempt: 1,
            at: None,
        }
    }

    /// `message.received`: an email from Ada Lovelace with a PDF invoice attached, to inbox
    /// `inb_92ma`, first attempt.
    pub fn message_received() -> Self {
        Self::new(Kind::MessageReceived)
    }

    /// `inbox.suspended`: inbox `inb_92ma` blocked for `high_bounce_rate`.
    pub fn inbox_suspended() -> Self {
        Self::new(Kind::InboxSuspended)
    }

    /// `inbox.reactivated`: inbox `inb_92ma` may send again (`reason` is `null`).
    pub fn inbox_reactivated() -> Self {
        Self::new(Kind::InboxReactivated)
    }

    /// `pod.suspended`: pod `pod_abc` blocked for `high_complaint_rate`. Pod events carry
    /// `inbox_id: null`.
    pub fn pod_suspended() -> Self {
        Self::new(Kind::PodSuspended)
    }

    /// `pod.reactivated`: pod `pod_abc` may send again.
    pub fn pod_reactivated() -> Self {
        Self::new(Kind::PodReactivated)
    }

    /// `setup.test`, the event the dashboard's "Test webhook" button sends. Its body is
    /// undocumented: this is the envelope every event shares (`event`, `event_id`,
    /// `occurred_at`, `inbox_id`).
    pub fn setup_test() -> Self {
        Self::new(Kind::SetupTest)
    }

    /// The sample of `event_type`, one of [`EVENT_TYPES`](Self::EVENT_TYPES); `None` for
    /// any other type.
    ///
    /// ```
    /// use openmail_webhooks::test_util::Sample;
    ///
    /// for event_type in Sample::EVENT_TYPES {
    ///     assert_eq!(Sample::of_type(event_type).unwrap().event_type(), event_type);
    /// }
    /// assert!(Sample::of_type("message.sent").is_none());
    /// ```
    pub fn of_type(event_type: &str) -> Option<Self> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == event_type)
            .map(Self::new)
    }

    /// Sets the `event_id`. Without it, each sample gets a fresh one, different from every
    /// other sample's; give two samples the same id to test deduplication.
    pub fn event_id(self, event_id: impl Into<String>) -> Self {
        Self {
            event_id: event_id.into(),
            ..self
        }
    }

    /// Sets the `inbox_id` (by default `inb_92ma`). OpenMail sends `null` on pod events;
    /// setting one there builds a body OpenMail would not send.
    pub fn inbox_id(self, inbox_id: impl Into<String>) -> Self {
        Self {
            inbox_id: Some(inbox_id.into()),
            ..self
        }
    }

    /// Sets the `reason` of an `inbox.*` or `pod.*` event, such as `"spam_complaints"`
    /// (by default `high_bounce_rate` for an inbox, `high_complaint_rate` for a pod, `null`
    /// on reactivations). The other events carry no reason: it changes nothing there.
    pub fn reason(self, reason: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.into()),
            ..self
        }
    }

    /// Sets the `attempt` of a `message.received` (by default 1): OpenMail counts its
    /// deliveries of one event from 1. The other events carry no attempt: it changes
    /// nothing there.
    pub fn attempt(self, attempt: u32) -> Self {
        Self { attempt, ..self }
    }

    /// Sends the event at `unix_secs`: `delivered_at` is that second, `occurred_at` the one
    /// before, and [`deliver`](Self::deliver) signs at it. Pair it with a layer whose clock
    /// is pinned to the same time. Without it, the time is the system clock's at the moment
    /// the body is written.
    pub fn at(self, unix_secs: i64) -> Self {
        Self {
            at: Some(unix_secs),
            ..self
        }
    }

    /// The event type, such as `"message.received"`.
    pub fn event_type(&self) -> &'static str {
        self.kind.as_str()
    }

    /// The body, as OpenMail sends it.
    pub fn to_json(&self) -> String {
        self.json_at(self.at.unwrap_or_else(|| SystemClock.now()))
    }

    /// The body signed with `secret` at the sample's time: a [`TestDelivery`], whose
    /// [`request`](TestDelivery::request) is the genuine delivery.
    ///
    /// ```
    /// use openmail_webhooks::test_util::Sample;
    ///
    /// let delivery = Sample::pod_suspended().at(1_790_000_000).deliver("whsec_test");
    /// assert_eq!(delivery.unix_timestamp(), 1_790_000_000);
    /// assert!(delivery.body().contains(r#""inbox_id":null"#));
    /// ```
    pub fn deliver(&self, secret: impl AsRef<[u8]>) -> TestDelivery {
        let now = self.at.unwrap_or_else(|| SystemClock.now());
        TestDelivery::new(secret, self.json_at(now)).timestamp(now)
    }

    fn json_at(&self, now: i64) -> String {
        let string = |value: &str| serde_json::Value::from(value).to_string();
        let optional = |value: &Option<String>| value.as_deref().map_or("null".to_owned(), string);
        let occurred_at = string(&rfc3339(now.saturating_sub(1)));
        let event = string(self.event_type());
        let event_id = string(&self.event_id);
        let inbox_id = optional(&self.inbox_id);
        match self.kind {
            Kind::MessageReceived => format!(
                concat!(
                    r#"{{"event":{event},"event_id":{event_id},"occurred_at":{occurred_at},"#,
                    r#""delivered_at":{delivered_at},"attempt":{attempt},"inbox_id":{inbox_id},"#,
                    r#""thread_id":"thr_7f3a9c","message":{{"id":"msg_4c8d5e6f","#,
                    r#""rfc_message_id":"<CAF=3xq9.7d1@mail.example.com>","#,
                    r#""from":"Ada Lovelace <ada@example.com>","to":"agent@yourdomain.com","#,
                    r#""cc":["carol@example.com"],"subject":"Invoice #2847 – March","#,
                    r#""body_text":"Hi,\n\nThe March invoice is attached: €1,280.00, due on the 30th.\n\nAda","#,
                    r#""attachments":[{{"filename":"invoice-2847.pdf","contentType":"application/pdf","#,
                    r#""sizeBytes":48213,"#,
                    r#""url":"https://api.openmail.sh/v1/attachments/msg_4c8d5e6f/invoice-2847.pdf","#,
                    r#""parsedText":"Invoice #2847\nAmount due: €1,280.00","extractionMethod":"pdf"}}],"#,
                    r#""received_at":{occurred_at}}}}}"#,
                ),
                event = event,
                event_id = event_id,
                occurred_at = occurred_at,
                delivered_at = string(&rfc3339(now)),
                attempt = self.attempt,
                inbox_id = inbox_id,
            ),
            Kind::InboxSuspended | Kind::InboxReactivated => format!(
                concat!(
                    r#"{{"event":{},"event_id":{},"occurred_at":{},"inbox_id":{},"#,
                    r#""inbox_address":"agent@yourdomain.com","pod_id":"pod_abc","reason":{}}}"#,
                ),
                event,
                event_id,
                occurred_at,
                inbox_id,
                optional(&self.reason),
            ),
            Kind::PodSuspended | Kind::PodReactivated => format!(
                concat!(
                    r#"{{"event":{},"event_id":{},"occurred_at":{},"inbox_id":{},"#,
                    r#""inbox_address":null,"pod_id":"pod_abc","reason":{}}}"#,
                ),
                event,
                event_id,
                occurred_at,
                inbox_id,
                optional(&self.reason),
            ),
            Kind::SetupTest => format!(
                r#"{{"event":{event},"event_id":{event_id},"occurred_at":{occurred_at},"inbox_id":{inbox_id}}}"#
            ),
        }
    }
}

/// A fresh event id: the time, the process and a counter, so that no two samples share one
/// unless a test says so.
fn fresh_event_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("evt_{nanos:x}{:x}{count:x}", std::process::id())
}

/// `unix` seconds as RFC 3339 UTC with milliseconds, as OpenMail writes times.
fn rfc3339(unix: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm, for the proleptic Gregorian calendar. The
    // divisions are by non-zero constants; the sums stay far inside i64 for any `unix`
    // (|unix| / 86 400 plus six-digit constants).
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    #[allow(clippy::arithmetic_side_effects)] // doe < 146 097: every term is small.
    let (year_of_era, day_of_year) = {
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        (yoe, doe - (365 * yoe + yoe / 4 - yoe / 100))
    };
    #[allow(clippy::arithmetic_side_effects)] // day_of_year < 366, secs < 86 400.
    let (month, day, hour, minute, second) = {
        let mp = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        (month, day, secs / 3_600, secs % 3_600 / 60, secs % 60)
    };
    let year = era
        .saturating_mul(400)
        .saturating_add(year_of_era)
        .saturating_add(i64::from(month <= 2));
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.000Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    #[test]
    fn rfc3339_matches_python_datetime() {
        // python3: datetime.fromtimestamp(t, timezone.utc)
        for (unix, expected) in [
            (1_790_000_000, "2026-09-21T14:13:20.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (-31_536_000, "1969-01-01T00:00:00.000Z"),
            (0, "1970-01-01T00:00:00.000Z"),
        ] {
            assert_eq!(rfc3339(unix), expected);
        }
        // Far outside any real time, still no panic.
        let _ = rfc3339(i64::MAX);
        let _ = rfc3339(i64::MIN);
    }

    #[test]
    fn every_sample_parses_as_its_own_type_with_the_ids_given() {
        for event_type in Sample::EVENT_TYPES {
            let sample = Sample::of_type(event_type).unwrap();
            assert_eq!(sample.event_type(), event_type);
            let json = sample.clone().event_id("evt_x").at(1_790_000_000).to_json();
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(value["event"], event_type);
            assert_eq!(value["event_id"], "evt_x");
            assert_eq!(value["occurred_at"], "2026-09-21T14:13:19.000Z");
            let event = Event::parse(json.into());
            assert_eq!(event.event_type(), event_type);
            assert_eq!(event.event_id(), Some("evt_x"));
        }
    }

    #[test]
    fn the_message_received_sample_has_the_documented_shape() {
        let json = Sample::message_received()
            .event_id("evt_shape")
            .inbox_id("inb_shape")
            .attempt(3)
            .at(1_790_000_000)
            .to_json();
        let sent: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(sent["inbox_id"], "inb_shape");
        assert_eq!(sent["attempt"], 3);
        assert_eq!(sent["delivered_at"], "2026-09-21T14:13:20.000Z");
        assert_eq!(sent["message"]["received_at"], "2026-09-21T14:13:19.000Z");
        assert!(sent["message"]["cc"].is_array());
        let attachment = &sent["message"]["attachments"][0];
        for key in [
            "filename",
            "contentType",
            "sizeBytes",
            "url",
            "parsedText",
            "extractionMethod",
        ] {
            assert!(!attachment[key].is_null(), "attachment key {key}");
        }
        assert!(
            !json.is_ascii(),
            "non-ASCII text, raw UTF-8 as OpenMail sends it"
        );
        let event = Event::parse(json.into());
        let received = event.as_message_received().unwrap();
        assert_eq!(received.message.attachments().len(), 1);
    }

    #[test]
    fn lifecycle_samples_carry_their_reason_and_pods_no_inbox() {
        let value = |sample: Sample| -> serde_json::Value {
            serde_json::from_str(&sample.to_json()).unwrap()
        };
        let suspended = value(Sample::inbox_suspended());
        assert_eq!(suspended["reason"], "high_bounce_rate");
        assert_eq!(suspended["inbox_id"], Sample::DEFAULT_INBOX_ID);
        let spam = value(Sample::inbox_suspended().reason("spam_complaints"));
        assert_eq!(spam["reason"], "spam_complaints");
        assert!(value(Sample::inbox_reactivated())["reason"].is_null());
        let pod = value(Sample::pod_suspended());
        assert!(pod["inbox_id"].is_null());
        assert!(pod["inbox_address"].is_null());
        assert_eq!(pod["reason"], "high_complaint_rate");
        assert!(value(Sample::pod_reactivated())["reason"].is_null());
        // A message carries no reason, and a lifecycle event no attempt.
        let message = value(Sample::message_received().reason("x"));
        assert!(message.get("reason").is_none());
        let lifecycle = value(Sample::inbox_suspended().attempt(4));
        assert!(lifecycle.get("attempt").is_none());
    }

    #[test]
    fn ids_are_fresh_unless_given_and_values_are_escaped() {
        assert_ne!(
            Sample::setup_test().to_json(),
            Sample::setup_test().to_json()
        );
        let json = Sample::message_received()
            .event_id("evt_\"quoted\"\n")
            .inbox_id("inb_\\")
            .to_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["event_id"], "evt_\"quoted\"\n");
        assert_eq!(value["inbox_id"], "inb_\\");
    }

    #[test]
    fn deliver_signs_at_the_samples_time() {
        let delivery = Sample::message_received()
            .event_id("evt_d")
            .at(1_790_000_000)
            .deliver("whsec_test");
        assert_eq!(delivery.unix_timestamp(), 1_790_000_000);
        let request = delivery.request();
        assert_eq!(request.headers()["x-event-id"], "evt_d");
        assert_eq!(request.headers()["x-timestamp"], "1790000000");
        assert!(
            request
                .body()
                .contains("\"delivered_at\":\"2026-09-21T14:13:20.000Z\"")
        );
    }
}
