//! The typed event model: every documented shape, the never-lose cases, the round trip,
//! and the event as a handler behind the layer receives it over real HTTP.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::event::{
    Attachment, ExtractionMethod, Lifecycle, Mailbox, MessageReceived, Reason, Timestamp,
};
use openmail_webhooks::{Delivery, Event, VerifyOpenMailLayer, sign};
use proptest::prelude::*;
use serde_json::{Value, json};

const FIXTURES: &[&str] = &[
    "message_received",
    "message_received_pretty",
    "message_received_escaped",
    "message_received_cc_display_name_retry",
    "message_received_failed_extraction",
    "message_received_legacy",
    "inbox_suspended",
    "inbox_reactivated",
    "pod_suspended",
    "pod_reactivated",
    "unknown_setup_test",
    "unknown_future_type",
    "draft_inbox_suspended_reputation",
    "malformed_number_for_string",
    "malformed_timestamp",
    "malformed_missing_event_id",
];

fn fixture(name: &str) -> Bytes {
    let path = format!(
        "{}/tests/fixtures/events/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    Bytes::from(std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}")))
}

fn parse(name: &str) -> Event {
    Event::parse(fixture(name))
}

fn message_received(name: &str) -> MessageReceived {
    match parse(name) {
        Event::MessageReceived(received) => received,
        other => panic!("{name}: expected message.received, got {other:?}"),
    }
}

fn timestamp(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn names<'a>(mailboxes: impl Iterator<Item = Mailbox<'a>>) -> Vec<(Option<String>, String)> {
    mailboxes
        .map(|mailbox| {
            (
                mailbox.name().map(str::to_owned),
                mailbox.address().to_owned(),
            )
        })
        .collect()
}

#[test]
fn documented_example() {
    let event = parse("message_received");
    assert_eq!(event.event_type(), "message.received");
    assert_eq!(event.event_id(), Some("evt_abc123"));
    assert_eq!(event.inbox_id(), Some("inb_92ma"));
    assert_eq!(event.occurred_at(), Some(timestamp("2024-03-21T10:05:00Z")));
    assert_eq!(event.raw(), &fixture("message_received"));

    let received = event.as_message_received().unwrap();
    assert_eq!(
        received.delivered_at().unwrap().unix_seconds(),
        1_711_015_501
    );
    assert_eq!(received.attempt(), Some(1));
    assert_eq!(received.thread_id(), Some("thr_xyz"));
    assert_eq!(received.external_id(), None);

    let message = &received.message;
    assert_eq!(message.id(), Some("msg_4c8d5e6f"));
    assert_eq!(message.rfc_message_id(), Some("<original@message.id>"));
    let sender = message.sender().unwrap();
    assert_eq!(sender.name(), Some("Ada Lovelace"));
    assert_eq!(sender.address(), "ada@example.com");
    let to: Vec<_> = message.to_mailboxes().map(|m| m.address()).collect();
    assert_eq!(to, ["inbox@openmail.sh"]);
    assert_eq!(message.cc().collect::<Vec<_>>(), ["carol@example.com"]);
    assert_eq!(message.subject(), Some("Email subject"));
    assert_eq!(message.body_text().as_deref(), Some("Plain text body"));
    assert_eq!(
        message.received_at().as_ref().map(Timestamp::as_str),
        Some("2024-03-21T10:05:00.000Z")
    );

    let attachments: Vec<Attachment> = message.attachments().collect();
    let [attachment] = attachments.as_slice() else {
        panic!("one attachment expected: {:?}", message.attachments())
    };
    assert_eq!(attachment.filename(), Some("document.pdf"));
    assert_eq!(attachment.content_type(), Some("application/pdf"));
    assert_eq!(attachment.size_bytes(), Some(12_345));
    assert_eq!(
        attachment.url(),
        Some("https://api.openmail.sh/v1/attachments/msg_4c8d5e6f/document.pdf")
    );
    assert_eq!(attachment.parsed_text().as_deref(), Some("Invoice #2847"));
    assert_eq!(attachment.extraction_method(), Some(ExtractionMethod::Pdf));
    assert!(attachment.text_extracted());
}

#[test]
fn pretty_and_compact_are_the_same_event() {
    let compact = parse("message_received");
    let pretty = parse("message_received_pretty");
    assert_eq!(compact, pretty);
    assert_ne!(compact.raw(), pretty.raw());
    assert_eq!(pretty.raw(), &fixture("message_received_pretty"));
}

#[test]
fn cc_display_names_and_second_attempt() {
    let received = message_received("message_received_cc_display_name_retry");
    assert_eq!(received.attempt(), Some(2));
    assert_eq!(received.event_id(), "evt_cc7788");
    let message = &received.message;

    let sender = message.sender().unwrap();
    assert_eq!(sender.name(), Some("Lovelace, Ada"));
    assert_eq!(sender.address(), "ada@example.com");

    let some = |name: &str, address: &str| (Some(name.to_owned()), address.to_owned());
    assert_eq!(
        names(message.to_mailboxes()),
        [
            (None, "inbox@openmail.sh".to_owned()),
            some("Bob Stone", "bob@example.com"),
            some("Smith, Jane", "jane@example.com"),
        ]
    );
    assert_eq!(
        names(message.cc_mailboxes()),
        [
            (None, "carol@example.com".to_owned()),
            some("Dan Brown", "dan@example.com"),
            some("O'Neil, Erin", "erin@example.com"),
        ]
    );
    assert_eq!(message.subject(), Some("Re: Q3 numbers — “final” ✅"));
    assert_eq!(
        message.body_text().as_deref(),
        Some("Hi,\n\nsee below.\n\n> quoted line\n")
    );
    assert!(message.attachments().is_empty());
}

#[test]
fn failed_extraction_has_no_text() {
    let received = message_received("message_received_failed_extraction");
    let summary: Vec<(&str, bool, Option<ExtractionMethod>)> = received
        .message
        .attachments()
        .map(|attachment: Attachment| {
            (
                attachment.filename().unwrap(),
                attachment.text_extracted(),
                attachment.extraction_method(),
            )
        })
        .collect();
    let keynote = ExtractionMethod::Unknown("keynote_beta".to_owned());
    assert_eq!(
        summary,
        [
            ("photo.heic", false, Some(ExtractionMethod::Unsupported)),
            ("scan.pdf", false, Some(ExtractionMethod::SkippedTooLarge)),
            ("broken.pdf", false, Some(ExtractionMethod::PdfError)),
            ("notes.txt", true, Some(ExtractionMethod::Text)),
            ("slides.key", false, Some(keynote.clone())),
        ]
    );
    assert_eq!(keynote.as_str(), "keynote_beta");
}

#[test]
fn legacy_payload_with_external_id_and_extra_fields() {
    let received = message_received("message_received_legacy");
    assert_eq!(received.external_id(), Some("user_abc123"));
    assert_eq!(received.inbox_id(), Some("inb_old1"));
    let sender = received.message.sender().unwrap();
    assert_eq!(
        (sender.name(), sender.address()),
        (None, "sender@example.com")
    );
    assert!(received.message.cc().len() == 0);
    let attachments: Vec<Attachment> = received.message.attachments().collect();
    let [attachment] = attachments.as_slice() else {
        panic!("one attachment expected")
    };
    assert_eq!(attachment.parsed_text(), None);
    assert_eq!(attachment.extraction_method(), None);
    assert!(!attachment.text_extracted());
    // `category`, `auto_replyable`, `verdict` and `spam_score` are not modelled, and stay
    // in the raw body.
    let raw: Value = serde_json::from_slice(received.raw()).unwrap();
    assert_eq!(raw["message"]["spam_score"], 0.4);
}

fn lifecycle(event: &Event) -> &Lifecycle {
    event
        .as_lifecycle()
        .unwrap_or_else(|| panic!("expected a lifecycle event, got {event:?}"))
}

#[test]
fn lifecycle_events_with_their_nulls() {
    let suspended = parse("inbox_suspended");
    assert!(matches!(suspended, Event::InboxSuspended(_)));
    let payload = lifecycle(&suspended);
    assert_eq!(payload.event_id(), "evt_def456");
    assert_eq!(payload.inbox_id(), Some("inb_92ma"));
    assert_eq!(payload.inbox_address(), Some("agent@yourdomain.com"));
    assert_eq!(payload.pod_id(), Some("pod_abc"));
    assert_eq!(payload.reason(), Some(Reason::HighBounceRate));
    assert_eq!(payload.occurred_at().unwrap().unix_seconds(), 1_711_015_500);

    let reactivated = parse("inbox_reactivated");
    assert!(matches!(reactivated, Event::InboxReactivated(_)));
    assert_eq!(reactivated.inbox_id(), Some("inb_92ma"));
    assert_eq!(lifecycle(&reactivated).reason(), None);

    let pod_suspended = parse("pod_suspended");
    assert!(matches!(pod_suspended, Event::PodSuspended(_)));
    assert_eq!(pod_suspended.event_type(), "pod.suspended");
    assert_eq!(pod_suspended.inbox_id(), None);
    let payload = lifecycle(&pod_suspended);
    assert_eq!(payload.inbox_address(), None);
    assert_eq!(payload.pod_id(), Some("pod_abc"));
    assert_eq!(payload.reason(), Some(Reason::PodDegraded));

    let pod_reactivated = parse("pod_reactivated");
    assert!(matches!(pod_reactivated, Event::PodReactivated(_)));
    assert_eq!(pod_reactivated.event_id(), Some("evt_pod002"));
    assert_eq!(lifecycle(&pod_reactivated).reason(), None);
    assert_eq!(lifecycle(&pod_reactivated).inbox_id(), None);
}

#[test]
fn reason_codes() {
    for (code, reason) in [
        ("high_bounce_rate", Reason::HighBounceRate),
        ("high_complaint_rate", Reason::HighComplaintRate),
        ("abuse", Reason::Abuse),
        ("pod_degraded", Reason::PodDegraded),
        ("manual_review", Reason::ManualReview),
        ("other", Reason::Other),
        ("spam_trap_hit", Reason::Unknown("spam_trap_hit".to_owned())),
    ] {
        let body = json!({
            "event": "inbox.suspended", "event_id": "evt_1", "reason": code,
        });
        let event = Event::parse(Bytes::from(body.to_string()));
        assert_eq!(lifecycle(&event).reason().as_ref(), Some(&reason), "{code}");
        assert_eq!(reason.as_str(), code);
    }
}

#[test]
fn unknown_types_arrive_intact() {
    let setup = parse("unknown_setup_test");
    let Event::Unknown(unknown) = &setup else {
        panic!("expected Unknown, got {setup:?}")
    };
    assert_eq!(unknown.event_type(), "setup.test");
    assert_eq!(setup.event_id(), None);
    assert_eq!(setup.inbox_id(), Some("inb_92ma"));
    assert_eq!(setup.occurred_at(), None);
    assert_eq!(setup.raw(), &fixture("unknown_setup_test"));
    assert_eq!(
        unknown.json()["message"],
        "This is a test webhook from OpenMail"
    );

    // A future type whose fields clash with documented ones (`attempt` as a string) is
    // still unknown, not malformed, and keeps its envelope.
    let future = parse("unknown_future_type");
    let Event::Unknown(unknown) = &future else {
        panic!("expected Unknown, got {future:?}")
    };
    assert_eq!(future.event_type(), "message.bounced");
    assert_eq!(future.event_id(), Some("evt_fut001"));
    assert_eq!(
        future.occurred_at(),
        Some(timestamp("2024-03-22T09:00:00Z"))
    );

    #[derive(serde::Deserialize)]
    struct Bounced {
        bounce: Bounce,
    }
    #[derive(serde::Deserialize)]
    struct Bounce {
        recipient: String,
    }
    let bounced: Bounced = unknown.deserialize().unwrap();
    assert_eq!(bounced.bounce.recipient, "gone@example.com");
}

#[test]
fn unusable_envelope_fields_are_dropped_not_fatal() {
    let unknown = json!({"event": "domain.verified", "event_id": 5, "inbox_id": ["x"],
                         "occurred_at": "yesterday"});
    let event = Event::parse(Bytes::from(unknown.to_string()));
    assert!(matches!(event, Event::Unknown(_)), "{event:?}");
    assert_eq!(
        (event.event_id(), event.inbox_id(), event.occurred_at()),
        (None, None, None)
    );

    let malformed = json!({"event": "inbox.suspended", "event_id": {"id": "evt_1"},
                           "inbox_id": "inb_1", "occurred_at": "2024-03-21T10:05:00Z"});
    let event = Event::parse(Bytes::from(malformed.to_string()));
    let Event::Malformed(malformed) = &event else {
        panic!("{event:?}")
    };
    assert_eq!(malformed.field(), Some("event_id"));
    assert_eq!(event.event_id(), None);
    assert_eq!(event.inbox_id(), Some("inb_1"));
    assert!(event.occurred_at().is_some());
}

#[test]
fn debug_shows_the_body_by_length() {
    let event = parse("message_received");
    let debug = format!("{event:?}");
    assert!(
        debug.contains(&format!("<{} bytes>", event.raw().len())),
        "{debug}"
    );
    assert_eq!(debug.matches("Invoice #2847").count(), 1, "{debug}");
}

#[test]
fn superseded_draft_with_reputation_object_still_arrives() {
    let event = parse("draft_inbox_suspended_reputation");
    let Event::InboxSuspended(payload) = &event else {
        panic!("expected inbox.suspended, got {event:?}")
    };
    assert_eq!(payload.event_id(), "evt_draft01");
    assert_eq!(payload.inbox_id(), Some("inb_92ma"));
    assert_eq!(payload.reason(), None);
    let raw: Value = serde_json::from_slice(event.raw()).unwrap();
    assert_eq!(
        raw["reputation"]["reason"],
        "bounce_rate_7d_above_threshold"
    );
}

#[test]
fn number_where_a_string_belongs_is_malformed_not_lost() {
    let event = parse("malformed_number_for_string");
    let Event::Malformed(malformed) = &event else {
        panic!("expected Malformed, got {event:?}")
    };
    assert_eq!(event.event_type(), "message.received");
    assert_eq!(event.event_id(), Some("evt_bad01"));
    assert_eq!(event.inbox_id(), Some("inb_92ma"));
    assert_eq!(event.occurred_at(), Some(timestamp("2024-03-21T10:05:00Z")));
    assert_eq!(malformed.field(), Some("message"));
    assert!(
        malformed.error().contains("invalid type: integer `42`"),
        "{}",
        malformed.error()
    );
    assert!(
        malformed.error().contains("column"),
        "{}",
        malformed.error()
    );
    assert_eq!(event.raw(), &fixture("malformed_number_for_string"));
    assert_eq!(malformed.json()["message"]["from"], 42);
}

#[test]
fn malformed_timestamp_is_malformed_not_lost() {
    let event = parse("malformed_timestamp");
    let Event::Malformed(malformed) = &event else {
        panic!("expected Malformed, got {event:?}")
    };
    assert_eq!(malformed.field(), Some("occurred_at"));
    assert!(
        malformed.error().contains("`2024-03-21 10:05:00`"),
        "{}",
        malformed.error()
    );
    assert!(
        malformed.error().contains("RFC 3339"),
        "{}",
        malformed.error()
    );
    assert_eq!(event.event_id(), Some("evt_bad02"));
    assert_eq!(event.occurred_at(), None);
    assert_eq!(event.inbox_id(), Some("inb_92ma"));
}

#[test]
fn missing_event_id_is_malformed_not_lost() {
    let event = parse("malformed_missing_event_id");
    let Event::Malformed(malformed) = &event else {
        panic!("expected Malformed, got {event:?}")
    };
    assert_eq!(malformed.field(), Some("event_id"));
    assert!(
        malformed.error().contains("event_id"),
        "{}",
        malformed.error()
    );
    assert_eq!(event.event_id(), None);
    assert_eq!(event.inbox_id(), Some("inb_92ma"));

    let null_id = json!({"event": "pod.reactivated", "event_id": null, "pod_id": "pod_abc"});
    let event = Event::parse(Bytes::from(null_id.to_string()));
    assert!(matches!(event, Event::Malformed(_)), "{event:?}");
}

#[test]
fn more_shapes_that_do_not_fit() {
    for (body, field) in [
        (
            json!({"event": "message.received", "event_id": "e", "attempt": -1}),
            "attempt",
        ),
        (
            json!({"event": "message.received", "event_id": "e", "attempt": "2"}),
            "attempt",
        ),
        (
            json!({"event": "message.received", "event_id": 7}),
            "event_id",
        ),
        (
            json!({"event": "message.received", "event_id": "e", "message": "hi"}),
            "message",
        ),
        (
            json!({"event": "message.received", "event_id": "e", "message": {"cc": "a@b.c"}}),
            "message",
        ),
        (
            json!({"event": "message.received", "event_id": "e",
                   "message": {"attachments": [{"sizeBytes": "12kB"}]}}),
            "message",
        ),
        (
            json!({"event": "inbox.suspended", "event_id": "e", "reason": 3}),
            "reason",
        ),
        (
            json!({"event": "pod.suspended", "event_id": "e", "occurred_at": 1_711_015_500}),
            "occurred_at",
        ),
    ] {
        let event = Event::parse(Bytes::from(body.to_string()));
        let Event::Malformed(malformed) = &event else {
            panic!("{body}: expected Malformed, got {event:?}")
        };
        assert_eq!(
            malformed.field(),
            Some(field),
            "{body}: {}",
            malformed.error()
        );
    }
}

#[test]
fn tolerant_of_nulls_absences_and_unknown_fields() {
    let body = json!({
        "event": "message.received",
        "event_id": "evt_min",
        "inbox_id": null,
        "message": {"cc": null, "attachments": null, "verdict": {"spam": true}, "from": null},
        "brand_new_field": [1, 2, 3],
    });
    let received = match Event::parse(Bytes::from(body.to_string())) {
        Event::MessageReceived(received) => received,
        other => panic!("{other:?}"),
    };
    assert_eq!(received.inbox_id(), None);
    assert!(received.message.cc().len() == 0);
    assert!(received.message.attachments().is_empty());
    assert_eq!(received.message.sender(), None);
    assert_eq!(received.message.to_mailboxes().count(), 0);

    let bare = Event::parse(Bytes::from_static(
        br#"{"event":"message.received","event_id":"evt_bare"}"#,
    ));
    assert_eq!(
        bare.as_message_received().unwrap().message,
        Default::default()
    );
}

#[test]
fn key_order_does_not_change_the_outcome() {
    // `reason` is a lifecycle field; on message.received it is ignored, whether it comes
    // before or after `event`.
    let first =
        r#"{"event":"message.received","event_id":"e","reason":{"x":1},"inbox_id":"inb_1"}"#;
    let later =
        r#"{"reason":{"x":1},"inbox_id":"inb_1","event_id":"e","event":"message.received"}"#;
    let first = Event::parse(Bytes::from_static(first.as_bytes()));
    let later = Event::parse(Bytes::from_static(later.as_bytes()));
    assert!(matches!(first, Event::MessageReceived(_)), "{first:?}");
    assert_eq!(first, later);
    assert_eq!(later.inbox_id(), Some("inb_1"));

    // A field that does not fit is found wherever `event` is.
    let late_bad = r#"{"attempt":"x","event_id":"e","event":"message.received"}"#;
    let event = Event::parse(Bytes::from_static(late_bad.as_bytes()));
    let Event::Malformed(malformed) = &event else {
        panic!("{event:?}")
    };
    assert_eq!(malformed.field(), Some("attempt"));
}

/// Nothing is rejected: a body that names no type arrives as malformed, with the empty
/// string as its type and a reason that says what the body is.
#[test]
fn a_body_without_a_string_event_is_malformed_without_a_type() {
    for body in [
        &b""[..],
        b"   ",
        b"not json",
        b"null",
        b"42",
        b"\"message.received\"",
        b"[]",
        br#"["message.received","evt_1"]"#,
        br#"{}"#,
        br#"{"event_id":"evt_1"}"#,
        br#"{"event":42}"#,
        br#"{"event":null}"#,
        br#"{"event":{"type":"message.received"}}"#,
        br#"{"event":"message.received","event":"pod.suspended"}"#,
        br#"{"event":"message.received"} trailing"#,
        br#"{"event":"message.received","#,
        b"{\"event\":\"message.received\",\"event_id\":\"\xff\"}",
    ] {
        let event = Event::parse(Bytes::copy_from_slice(body));
        let Event::Malformed(malformed) = &event else {
            panic!("{}: {event:?}", String::from_utf8_lossy(body))
        };
        assert_eq!(event.event_type(), "");
        assert_eq!(event.raw().as_ref(), body);
        let error = malformed.error();
        assert!(
            error.starts_with("the body is not JSON")
                || error.starts_with("the body is JSON, but not an object")
                || error.starts_with("the body has no `event` field")
                || error.starts_with("`event` is not a string")
                || error.contains("the body names its `event` twice"),
            "{error}"
        );
        // Never a serde message alone, never about surrogates that are allowed.
        assert!(!error.contains("surrogate"), "{error}");
    }
}

#[test]
fn round_trip_every_fixture() {
    for name in FIXTURES {
        let event = parse(name);
        let serialized = serde_json::to_vec(&event).unwrap();
        let again = Event::parse(Bytes::from(serialized.clone()));
        assert_eq!(event, again, "{name}");
        assert_eq!(
            std::mem::discriminant(&event),
            std::mem::discriminant(&again)
        );
        assert_eq!(event.event_id(), again.event_id(), "{name}");
        assert_eq!(event.inbox_id(), again.inbox_id(), "{name}");
        // Timestamps keep their text, not just their instant.
        assert_eq!(
            event.occurred_at().as_ref().map(Timestamp::as_str),
            again.occurred_at().as_ref().map(Timestamp::as_str),
            "{name}"
        );
    }
}

#[test]
fn serialising_documented_shapes_loses_nothing() {
    for name in [
        "message_received",
        "message_received_cc_display_name_retry",
        "message_received_failed_extraction",
        "inbox_suspended",
        "inbox_reactivated",
        "pod_suspended",
        "pod_reactivated",
        "unknown_setup_test",
        "malformed_timestamp",
    ] {
        let original: Value = serde_json::from_slice(&fixture(name)).unwrap();
        let serialized = serde_json::to_value(parse(name)).unwrap();
        assert_eq!(serialized, original, "{name}");
    }
}

#[test]
fn equality_is_by_content() {
    let a = parse("inbox_suspended");
    let mut changed: Value = serde_json::from_slice(&fixture("inbox_suspended")).unwrap();
    changed["reason"] = json!("abuse");
    let b = Event::parse(Bytes::from(changed.to_string()));
    assert_ne!(a, b);

    let unknown_a = parse("unknown_setup_test");
    let mut changed: Value = serde_json::from_slice(&fixture("unknown_setup_test")).unwrap();
    changed["sent_at"] = json!(1_790_000_001);
    let unknown_b = Event::parse(Bytes::from(changed.to_string()));
    assert_ne!(unknown_a, unknown_b);
    assert_eq!(unknown_a, unknown_a.clone());
}

/// What each fixture serialised to before the parse held the body instead of owned
/// strings (`tests/fixtures/events/serialized/`): the same bytes today.
#[test]
fn serialising_is_byte_for_byte_what_it_was() {
    for name in FIXTURES {
        let path = format!(
            "{}/tests/fixtures/events/serialized/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let expected = std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
        let serialized = serde_json::to_vec(&parse(name)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&serialized),
            String::from_utf8_lossy(&expected),
            "{name}"
        );
    }
}

#[test]
fn escaped_fields_decode() {
    let received = message_received("message_received_escaped");
    // An escaped id is decoded as it is read.
    assert_eq!(received.inbox_id(), Some("inb_92ma"));
    let message = &received.message;
    assert_eq!(message.subject(), Some("Re: the \"final\" numbers — Q3 📈"));
    assert_eq!(
        message.cc().collect::<Vec<_>>(),
        [
            "\"O'Neil, Erin\" <erin@example.com>",
            "René <rene@example.com>"
        ]
    );
    let body_text = message.body_text().unwrap();
    assert!(matches!(body_text, Cow::Owned(_)));
    assert_eq!(
        body_text,
        "Hi,\n\nthe numbers are attached.\r\n\tTotal: €1,280.00\n> quoted \"line\" with a back\\slash\n\nAda 😀\n"
    );
    let attachments: Vec<Attachment> = message.attachments().collect();
    let [report, notes] = attachments.as_slice() else {
        panic!("two attachments expected")
    };
    assert_eq!(
        report.url(),
        Some("https://api.openmail.sh/v1/attachments/msg_9e1f/q3.pdf")
    );
    assert_eq!(
        report.parsed_text().as_deref(),
        Some(
            "Q3 REPORT\n=========\n\nItem\tQty\tPrice\nConsulting\t12 h\t€150.00\n\"Travel\"\t1\t€80.00\n"
        )
    );
    // A text without escapes is borrowed from the body, not copied.
    let plain = notes.parsed_text().unwrap();
    assert!(matches!(plain, Cow::Borrowed("plain text without escapes")));
    let body = received.raw();
    let Cow::Borrowed(plain) = plain else {
        unreachable!()
    };
    let offset = plain.as_ptr() as usize - body.as_ptr() as usize;
    assert!(offset < body.len());
}

/// Cases recorded from the parse this one replaced: the same field, and the same reason
/// word for word, line and column included.
#[test]
fn what_does_not_fit_is_reported_as_it_was() {
    let path = format!(
        "{}/tests/fixtures/events/malformed_reasons.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let recorded: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = recorded["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let body = case["body"].as_str().unwrap();
        let event = Event::parse(Bytes::copy_from_slice(body.as_bytes()));
        let Event::Malformed(malformed) = &event else {
            panic!("{body}: expected Malformed, got {event:?}")
        };
        assert_eq!(malformed.field(), case["field"].as_str(), "{body}");
        assert_eq!(malformed.error(), case["error"].as_str().unwrap(), "{body}");
    }
}

/// A value quoted in a reason is cut short and escaped, so that a huge or hostile field
/// cannot flood or forge a log line that prints the reason.
#[test]
fn reasons_quote_values_short_and_escaped() {
    let long = format!("{}\u{1b}[31m\nfake line", "x".repeat(5000));
    for body in [
        json!({"event": "message.received", "event_id": "e", "attempt": long}),
        json!({"event": "message.received", "event_id": "e", "occurred_at": long}),
        json!({"event": "message.received", "event_id": "e", "occurred_at": "\u{1b}[31m\nfake"}),
    ] {
        let event = Event::parse(Bytes::from(body.to_string()));
        let Event::Malformed(malformed) = &event else {
            panic!("{event:?}")
        };
        let error = malformed.error();
        assert!(error.len() < 300, "{error}");
        assert!(!error.contains(['\n', '\u{1b}']), "{error:?}");
    }
}

/// The whole body is checked as JSON, read or not, as serde_json checks it, but for lone
/// surrogates; a body that fails is malformed, without a type.
#[test]
fn the_whole_body_is_strict_json_read_or_not() {
    let event = |unread: &str| {
        format!(r#"{{"event":"inbox.suspended","event_id":"evt_1","extra":{unread},"x":0}}"#)
    };
    // Each of these sits in a field the model never reads.
    for (unread, accepted) in [
        (r#""plain""#.to_owned(), true),
        (r#""\ud83d\ude00 pair""#.to_owned(), true),
        (r#""\ud83d lone high""#.to_owned(), true),
        (r#""\ude00 lone low""#.to_owned(), true),
        (r#""\q""#.to_owned(), false),
        ("1e308".to_owned(), true),
        ("1e999".to_owned(), false),
        ("-1e999".to_owned(), false),
        ("1e-999".to_owned(), true),
        (format!("1{}", "0".repeat(400)), false),
        ("01".to_owned(), false),
        ("[1,]".to_owned(), false),
        ("\"tab\tinside\"".to_owned(), false),
        // Nesting: the object itself is one level, so 126 more make serde_json's 127.
        (format!("{}{}", "[".repeat(126), "]".repeat(126)), true),
        (format!("{}{}", "[".repeat(127), "]".repeat(127)), false),
    ] {
        let body = event(&unread);
        let ours = Event::parse(Bytes::from(body.clone()));
        let lone = unread.contains("lone");
        let theirs = serde_json::from_str::<Value>(&body);
        assert_eq!(
            ours.event_type() == "inbox.suspended",
            accepted,
            "{unread:.60}"
        );
        assert_eq!(theirs.is_ok(), accepted && !lone, "{unread:.60}");
    }
    for bytes in [
        &b"\xff"[..],
        b"\xc3",
        b"\xed\xa0\x80",
        b"\xc0\xaf",
        b"\xf4\x90\x80\x80",
    ] {
        let mut body = br#"{"event":"setup.test","note":""#.to_vec();
        body.extend_from_slice(bytes);
        body.extend_from_slice(br#""}"#);
        assert_eq!(
            Event::parse(Bytes::from(body.clone())).event_type(),
            "",
            "{bytes:x?}"
        );
        assert!(
            serde_json::from_slice::<Value>(&body).is_err(),
            "{bytes:x?}"
        );
    }
}

/// `json()` is documented not to fail on a parsed body: it holds at the edges of what the
/// parse accepts.
#[test]
fn json_of_an_accepted_body_does_not_fail() {
    let deep = format!(
        r#"{{"event":"setup.test","deep":{}{}}}"#,
        "[".repeat(126),
        "]".repeat(126)
    );
    for body in [
        deep,
        r#"{"event":"setup.test","n":1e308,"s":"\ud83d\ude00","u":"\u0000"}"#.to_owned(),
        r#"{"event":"message.received","event_id":7,"n":-0}"#.to_owned(),
        r#"{"event":"setup.test","lone":"a\ud83d","\udc00":["\ud800\u0041"]}"#.to_owned(),
        "not json".to_owned(),
        r#"{"event":"message.received","event_id":"e","x":"\ud83d"} trailing"#.to_owned(),
    ] {
        let event = Event::parse(Bytes::from(body.clone()));
        let json = match &event {
            Event::Unknown(unknown) => unknown.json(),
            Event::Malformed(malformed) => malformed.json(),
            other => panic!("{other:?}"),
        };
        assert!(!json.is_null(), "{body:.60}");
        assert!(serde_json::to_vec(&event).is_ok(), "{body:.60}");
    }
    let lone = r#"{"event":"setup.test","lone":"a\ud83d","\udc00":["\ud800\u0041"]}"#;
    let Event::Unknown(unknown) = Event::parse(Bytes::from_static(lone.as_bytes())) else {
        panic!()
    };
    assert_eq!(
        unknown.json(),
        serde_json::json!({"event": "setup.test", "lone": "a\u{fffd}", "\u{fffd}": ["\u{fffd}A"]})
    );
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Lone {
        lone: String,
    }
    assert_eq!(
        unknown.deserialize::<Lone>().unwrap(),
        Lone {
            lone: "a\u{fffd}".into()
        }
    );
    // Not JSON: the string of its text.
    let Event::Malformed(text) = Event::parse(Bytes::from_static(b"a\xffb")) else {
        panic!()
    };
    assert_eq!(text.json(), Value::String("a\u{fffd}b".into()));
}

/// A body naming an envelope key twice has no envelope one can trust: malformed, without
/// a type or ids, and the claim reader cannot read it either.
#[test]
fn a_duplicated_envelope_key_leaves_the_envelope_unread() {
    for body in [
        r#"{"event":"message.received","event":"pod.suspended"}"#,
        r#"{"event":"message.received","event_id":"e_F","event_id":null}"#,
        r#"{"event":"message.received","event_id":"e_F","event_id":"e_G"}"#,
        r#"{"event":"setup.test","inbox_id":"inb_a","inbox_id":"inb_b"}"#,
        r#"{"event":"pod.suspended","event_id":"e","pod_id":"pod_a","pod_id":"pod_b"}"#,
        r#"{"event":"inbox.suspended","event_id":"e","inbox_id":null,"inbox_id":"inb_b"}"#,
        // The same key spelt with an escape is the same key.
        r#"{"event":"message.received","event_id":"e","event\u005fid":"f"}"#,
        r#"{"\u0065vent":"message.received","event":"message.received"}"#,
    ] {
        let event = Event::parse(Bytes::from_static(body.as_bytes()));
        let Event::Malformed(malformed) = &event else {
            panic!("{body}: {event:?}")
        };
        assert!(malformed.error().contains("duplicate field"), "{body}");
        assert!(malformed.error().contains("twice"), "{body}");
        assert_eq!(
            (event.event_type(), event.event_id(), event.inbox_id()),
            ("", None, None),
            "{body}"
        );
        // The claim reader, which reads the same fields before the signature is checked,
        // refuses the same bodies: they name no tenant but the account.
        assert_eq!(
            openmail_webhooks::tenant::Tenant::claimed_by(body.as_bytes()),
            openmail_webhooks::tenant::Tenant::Account,
            "{body}"
        );
    }
}

#[test]
fn other_duplicates_are_malformed_or_left_alone() {
    // A field the type reads: malformed, whatever the values.
    for (body, field) in [
        (
            r#"{"event":"message.received","event_id":"e","attempt":1,"attempt":2}"#,
            "attempt",
        ),
        (
            r#"{"event":"inbox.suspended","event_id":"e","reason":null,"reason":"abuse"}"#,
            "reason",
        ),
        (
            r#"{"event":"message.received","event_id":"e","message":{"body_text":"a","body_text":"b"}}"#,
            "message",
        ),
        (
            r#"{"event":"message.received","event_id":"e","message":{"attachments":[{"url":"a","url":"b"}]}}"#,
            "message",
        ),
    ] {
        let event = Event::parse(Bytes::from_static(body.as_bytes()));
        let Event::Malformed(malformed) = &event else {
            panic!("{body}: {event:?}")
        };
        assert_eq!(malformed.field(), Some(field), "{body}");
        assert!(malformed.error().starts_with("duplicate field"), "{body}");
        assert_eq!(event.event_id(), Some("e"));
    }

    // A field the type doesn't read: no effect on the event.
    let body =
        r#"{"event":"inbox.suspended","event_id":"e","attempt":1,"attempt":2,"note":1,"note":2}"#;
    let event = Event::parse(Bytes::from_static(body.as_bytes()));
    assert!(matches!(event, Event::InboxSuspended(_)), "{event:?}");

    // An unread duplicate stays in the raw body, where serde_json keeps the last.
    let body = r#"{"event":"setup.test","note":1,"note":2}"#;
    let Event::Unknown(unknown) = Event::parse(Bytes::from_static(body.as_bytes())) else {
        panic!("unknown expected")
    };
    assert_eq!(unknown.json()["note"], 2);

    // A duplicated `occurred_at` is not used by an unknown event.
    let body = r#"{"event":"setup.test","occurred_at":"2024-03-21T10:05:00Z","occurred_at":"2024-03-21T10:06:00Z"}"#;
    let event = Event::parse(Bytes::from_static(body.as_bytes()));
    assert_eq!(event.occurred_at(), None);
}

#[test]
fn a_message_or_attachment_must_be_an_object() {
    for (body, reason) in [
        (
            r#"{"event":"message.received","event_id":"e","message":["id","rfc"]}"#,
            "invalid type: sequence, expected struct Message",
        ),
        (
            r#"{"event":"message.received","event_id":"e","message":{"attachments":[["a.pdf"]]}}"#,
            "invalid type: sequence, expected struct Attachment",
        ),
        (
            r#"{"event":"message.received","event_id":"e","message":{"attachments":[null]}}"#,
            "invalid type: null, expected struct Attachment",
        ),
        (
            r#"{"event":"message.received","event_id":"e","message":{"cc":[null]}}"#,
            "invalid type: null, expected a string",
        ),
    ] {
        let event = Event::parse(Bytes::from_static(body.as_bytes()));
        let Event::Malformed(malformed) = &event else {
            panic!("{body}: {event:?}")
        };
        assert_eq!(malformed.field(), Some("message"));
        assert!(
            malformed.error().starts_with(reason),
            "{}",
            malformed.error()
        );
    }
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        Just(json!("2024-03-21T10:05:00.000Z")),
        Just(json!("high_bounce_rate")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Mostly documented keys, so the typed paths are exercised.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "event_id",
            "occurred_at",
            "delivered_at",
            "attempt",
            "inbox_id",
            "thread_id",
            "external_id",
            "message",
            "inbox_address",
            "pod_id",
            "reason",
            "from",
            "to",
            "cc",
            "attachments",
            "parsedText",
            "sizeBytes",
            "extractionMethod",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "message.received",
            "inbox.suspended",
            "inbox.reactivated",
            "pod.suspended",
            "pod.reactivated",
        ])
        .prop_map(str::to_owned),
        "[a-z.]{0,16}",
    ]
}

proptest! {
    #![proptest_config(crate::proptest_config(ProptestConfig::default()))]

    #[test]
    fn any_object_with_a_string_event_is_an_event(
        event in event_type(),
        fields in prop::collection::btree_map(key(), json_value(), 0..8),
        message in prop::option::of(prop::collection::btree_map(key(), json_value(), 0..6)),
    ) {
        let mut object: serde_json::Map<String, Value> = fields.into_iter().collect();
        if let Some(message) = message {
            object.insert("message".to_owned(), Value::Object(message.into_iter().collect()));
        }
        object.insert("event".to_owned(), Value::String(event.clone()));
        let body = Bytes::from(Value::Object(object).to_string());

        let parsed = Event::parse(body.clone());
        prop_assert_eq!(parsed.event_type(), event.as_str());
        prop_assert_eq!(parsed.raw(), &body);
        let again = Event::parse(Bytes::from(serde_json::to_vec(&parsed).unwrap()));
        prop_assert_eq!(&parsed, &again);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Event::parse(Bytes::from(body));
    }

    #[test]
    fn arbitrary_addresses_never_panic(text in "\\PC{0,64}") {
        let _ = Mailbox::parse(&text);
        let _ = Mailbox::list(&text).count();
    }

    #[test]
    fn timestamps_agree_with_a_day_counting_reference(
        year in 0_i64..=9999,
        month in 1_u32..=12,
        day in 1_u32..=28,
        hour in 0_u32..24,
        minute in 0_u32..60,
        second in 0_u32..60,
        offset in -1439_i64..=1439,
    ) {
        let sign = if offset < 0 { '-' } else { '+' };
        let text = format!(
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{sign}{:02}:{:02}",
            offset.abs() / 60,
            offset.abs() % 60
        );
        let parsed = Timestamp::parse(&text).unwrap();
        // Count days one year and one month at a time: slow, but a different method.
        let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let mut days = 0_i64;
        if year >= 1970 {
            for y in 1970..year { days += if leap(y) { 366 } else { 365 }; }
        } else {
            for y in year..1970 { days -= if leap(y) { 366 } else { 365 }; }
        }
        let lengths = [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        days += lengths[..(month as usize - 1)].iter().sum::<i64>() + i64::from(day) - 1;
        let expected = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset * 60;
        prop_assert_eq!(parsed.unix_seconds(), expected, "{}", text);
    }
}

// ---------------------------------------------------------------------------------------
// Over HTTP: the layer parses, the handler receives the typed variant.

/// What the handler saw, as one line the test can compare.
async fn summarise(
    Extension(event): Extension<Arc<Event>>,
    Extension(delivery): Extension<Delivery>,
) -> String {
    // The event is parsed from exactly the bytes that verified.
    assert_eq!(event.raw(), delivery.body());
    let detail = match &*event {
        Event::MessageReceived(received) => format!(
            "message from={} to={} attachments={}",
            received
                .message
                .sender()
                .map_or("-", |sender| sender.address()),
            received.message.to_mailboxes().count(),
            received.message.attachments().len()
        ),
        Event::InboxSuspended(lifecycle) | Event::PodSuspended(lifecycle) => format!(
            "suspended reason={}",
            lifecycle.reason().as_ref().map_or("-", Reason::as_str)
        ),
        Event::InboxReactivated(_) | Event::PodReactivated(_) => "reactivated".to_owned(),
        Event::Unknown(unknown) => format!("unknown bytes={}", unknown.raw().len()),
        Event::Malformed(malformed) => format!("malformed field={:?}", malformed.field()),
        other => format!("unexpected {other:?}"),
    };
    format!(
        "{} id={} inbox={} {detail}",
        event.event_type(),
        event.event_id().unwrap_or("-"),
        event.inbox_id().unwrap_or("-")
    )
}

const SECRET: &str = "whsec_test";
const NOW: i64 = 1_790_000_000;

async fn serve() -> SocketAddr {
    let app = Router::new()
        .route("/webhooks", post(summarise))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap().clock(|| NOW));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

async fn post_signed(address: SocketAddr, body: Bytes) -> (u16, String) {
    let timestamp = NOW.to_string();
    let request = http::Request::post(format!("http://{address}/webhooks"))
        .header("content-type", "application/json")
        .header("x-timestamp", &timestamp)
        .header("x-signature", sign(SECRET, &timestamp, &body))
        .header("x-event-id", "evt_header")
        .body(Full::new(body))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn handlers_receive_typed_events_over_http() {
    let address = serve().await;
    for (name, expected) in [
        (
            "message_received",
            "message.received id=evt_abc123 inbox=inb_92ma message from=ada@example.com to=1 attachments=1",
        ),
        (
            "message_received_pretty",
            "message.received id=evt_abc123 inbox=inb_92ma message from=ada@example.com to=1 attachments=1",
        ),
        (
            "message_received_cc_display_name_retry",
            "message.received id=evt_cc7788 inbox=inb_92ma message from=ada@example.com to=3 attachments=0",
        ),
        (
            "inbox_suspended",
            "inbox.suspended id=evt_def456 inbox=inb_92ma suspended reason=high_bounce_rate",
        ),
        (
            "inbox_reactivated",
            "inbox.reactivated id=evt_def457 inbox=inb_92ma reactivated",
        ),
        (
            "pod_suspended",
            "pod.suspended id=evt_pod001 inbox=- suspended reason=pod_degraded",
        ),
        (
            "pod_reactivated",
            "pod.reactivated id=evt_pod002 inbox=- reactivated",
        ),
        (
            "draft_inbox_suspended_reputation",
            "inbox.suspended id=evt_draft01 inbox=inb_92ma suspended reason=-",
        ),
        (
            "unknown_setup_test",
            &format!(
                "setup.test id=- inbox=inb_92ma unknown bytes={}",
                fixture("unknown_setup_test").len()
            ),
        ),
        (
            "malformed_timestamp",
            "message.received id=evt_bad02 inbox=inb_92ma malformed field=Some(\"occurred_at\")",
        ),
        (
            "malformed_missing_event_id",
            "message.received id=- inbox=inb_92ma malformed field=Some(\"event_id\")",
        ),
    ] {
        let (status, summary) = post_signed(address, fixture(name)).await;
        assert_eq!(status, 200, "{name}: {summary}");
        assert_eq!(summary, expected, "{name}");
    }

    // A verified body that is not an event reaches the handler too, malformed, typeless.
    let (status, summary) = post_signed(address, Bytes::from_static(b"[1,2]")).await;
    assert_eq!(status, 200);
    assert_eq!(summary, " id=- inbox=- malformed field=None");
}

/// The lists are read out of the body when asked for: in either direction, by index, with
/// whitespace around the elements and escapes in their fields, they give what a
/// `serde_json::Value` of the body holds.
#[test]
fn lists_read_the_same_forwards_backwards_and_by_index() {
    let body = Bytes::from_static(
        br#"{"event":"message.received","event_id":"e","message":{ "cc" : [ "a@x" ,
        "B\u00e9 <b@x>" , "\"c\" <c@x>" ] , "subject":"s\n", "attachments" : [
        { "filename" : "one\t.txt" , "sizeBytes" : 1 } ,
        {"filename":"two","parsedText":"2\n2","contentType":"text/\u0070lain"} ,
        { } ] }}"#,
    );
    let value: Value = serde_json::from_slice(&body).unwrap();
    let Event::MessageReceived(received) = Event::parse(body) else {
        panic!()
    };
    let message = &received.message;
    let cc: Vec<_> = message.cc().collect();
    assert_eq!(cc, ["a@x", "Bé <b@x>", "\"c\" <c@x>"]);
    let mut backwards: Vec<_> = message.cc().rev().collect();
    backwards.reverse();
    assert_eq!(backwards, cc);
    assert_eq!(message.subject(), Some("s\n"));
    let files: Vec<_> = message.attachments().map(|a| a.filename()).collect();
    assert_eq!(files, [Some("one\t.txt"), Some("two"), None]);
    let mut backwards: Vec<_> = message.attachments().rev().collect();
    backwards.reverse();
    assert!(
        backwards
            .iter()
            .eq(message.attachments().collect::<Vec<_>>().iter())
    );
    let attachments = message.attachments();
    assert_eq!(attachments.len(), 3);
    let second = attachments.get(1).unwrap();
    assert_eq!(second.content_type(), Some("text/plain"));
    assert_eq!(second.parsed_text().as_deref(), Some("2\n2"));
    assert!(attachments.get(3).is_none());
    let mut walked = message.attachments();
    walked.next();
    assert_eq!(walked.get(1).unwrap().filename(), None);
    assert_eq!(
        value["message"]["attachments"][1]["contentType"],
        second.content_type().unwrap()
    );
    assert_eq!(
        serde_json::to_value(message).unwrap()["attachments"][0]["filename"],
        value["message"]["attachments"][0]["filename"]
    );
}

/// docs/events.md: the parse checks more than `serde_json`'s `IgnoredAny` skim, which the
/// `events` benchmark compares it with: the skim lets invalid UTF-8 through in a string it
/// skips, the parse does not (the body is not JSON, so it is malformed without a type).
#[test]
fn the_parse_refuses_invalid_utf8_that_the_ignored_any_skim_lets_through() {
    let body = b"{\"event\":\"message.received\",\"event_id\":\"evt_1\",\"note\":\"\xff\"}";
    assert!(serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok());
    let event = Event::parse(Bytes::from_static(body));
    let Event::Malformed(malformed) = &event else {
        panic!("{event:?}")
    };
    assert_eq!(event.event_type(), "");
    assert!(
        malformed.error().starts_with("the body is not JSON"),
        "{}",
        malformed.error()
    );
}
