//! Parsing a verified body into an `Event` against parsing it into a `serde_json::Value`.
//!
//! The typed parse must cost less than the untyped one on the same bytes: a handler that
//! gets a typed event should not pay more than one that parses the body itself.
//!
//! Run with `cargo bench --bench events`; each group reports `typed` and `value` on one
//! body.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use openmail_webhooks::Event;
use serde::Serialize;
use serde_json::{json, Value};

fn fixture(name: &str) -> Bytes {
    let path = format!(
        "{}/tests/fixtures/events/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    match std::fs::read(&path) {
        Ok(bytes) => Bytes::from(bytes),
        Err(error) => panic!("{path}: {error}"),
    }
}

/// A message with several attachments whose extracted text is long, escaped and
/// non-ASCII, as an invoice run through PDF extraction and OCR produces: the heavy case.
/// Keys come in OpenMail's order, `event` first.
fn with_long_attachments() -> Bytes {
    #[derive(Serialize)]
    struct Body {
        event: &'static str,
        event_id: &'static str,
        occurred_at: &'static str,
        delivered_at: &'static str,
        attempt: u32,
        inbox_id: &'static str,
        thread_id: &'static str,
        message: Value,
    }

    let invoice_line =
        "Item 2847 — Consulting services (March), 12 h × €150.00\tsubtotal €1,800.00\n";
    let attachment = |name: &str, method: &str, lines: usize| {
        json!({
            "filename": name,
            "contentType": "application/pdf",
            "sizeBytes": 48_213 * lines,
            "url": format!("https://api.openmail.sh/v1/attachments/msg_4c8d5e6f/{name}"),
            "parsedText": invoice_line.repeat(lines),
            "extractionMethod": method,
        })
    };
    let body = Body {
        event: "message.received",
        event_id: "evt_7f3a9c",
        occurred_at: "2024-03-21T10:05:00.000Z",
        delivered_at: "2024-03-21T10:05:01.000Z",
        attempt: 1,
        inbox_id: "inb_92ma",
        thread_id: "thr_xyz",
        message: json!({
            "id": "msg_4c8d5e6f",
            "rfc_message_id": "<CAF=abc123@mail.example.com>",
            "from": "\"Lovelace, Ada\" <ada@example.com>",
            "to": "inbox@openmail.sh, Bob Stone <bob@example.com>",
            "cc": ["carol@example.com", "Dan Brown <dan@example.com>"],
            "subject": "Invoices for March",
            "body_text": "Hi,\n\nplease find the March invoices attached.\n\nThanks,\nAda\n".repeat(20),
            "attachments": [
                attachment("invoice-1.pdf", "pdf", 600),
                attachment("invoice-2.pdf", "pdf", 300),
                attachment("receipt.png", "ocr", 120),
                attachment("archive.zip", "unsupported", 0),
            ],
            "received_at": "2024-03-21T10:05:00.000Z",
        }),
    };
    match serde_json::to_vec(&body) {
        Ok(bytes) => Bytes::from(bytes),
        Err(error) => panic!("{error}"),
    }
}

fn parse(c: &mut Criterion) {
    let inputs = [
        ("documented_example", fixture("message_received")),
        (
            "documented_example_pretty",
            fixture("message_received_pretty"),
        ),
        ("long_attachments", with_long_attachments()),
        ("inbox_suspended", fixture("inbox_suspended")),
    ];
    for (name, body) in inputs {
        // Both must accept the body, or the comparison means nothing.
        assert!(matches!(
            Event::parse(body.clone()),
            Ok(Event::MessageReceived(_) | Event::InboxSuspended(_))
        ));
        assert!(serde_json::from_slice::<Value>(&body).is_ok());

        let mut group = c.benchmark_group(format!("parse/{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter("typed"), &body, |b, body| {
            b.iter(|| Event::parse(black_box(body.clone())))
        });
        group.bench_with_input(BenchmarkId::from_parameter("value"), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(body)))
        });
        group.finish();
    }
}

criterion_group!(benches, parse);
criterion_main!(benches);
