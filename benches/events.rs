//! The layer's event parse against a validating skim of the same bytes.
//!
//! Each group is one body; inside it, three functions read the same bytes, so their ratios
//! compare like with like in one run:
//!
//! - `event`: [`Event::parse`], what the layer runs on every verified body (the event is
//!   dropped inside the timing, as the layer's would be);
//! - `skim`: `serde_json::from_slice::<IgnoredAny>`, which checks the JSON's syntax and
//!   builds nothing: the floor for any parse that must look at every byte;
//! - `value`: `serde_json::from_slice::<Value>`, what a handler pays that parses the body
//!   itself.
//!
//! The target is `event` ≤ 1.3 × `skim` at every size, on two families of bodies:
//!
//! - `escaped_text/<size>`: a `message.received` made mostly of multi-line text, in
//!   `body_text` and in an attachment's `parsedText`, with escaped newlines, tabs and
//!   quotes and raw non-ASCII characters, as OpenMail sends an email with a report
//!   attached;
//! - `documented/<size>`: the documented example, with its attachment repeated to fill
//!   the size: many small fields, the case that costs the most per byte to index.
//!
//! `fixture/<name>` runs the documented fixtures at their own size.
//!
//! Times are the benchmark thread's CPU time (`support::ThreadCpuTime`). Run
//! `cargo bench --bench events`, then print the ratios from criterion's output:
//!
//! ```text
//! for group in target/criterion/parse_*; do
//!   for f in event skim; do
//!     printf '%s %s ' "$(basename "$group")" $f
//!     python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' \
//!       "$group/$f/new/estimates.json"
//!   done
//! done
//! ```
//!
//! # Figures
//!
//! `event` ÷ `skim`, the median of five runs on a shared two-core machine (load 4 to 7,
//! so single runs vary by ±20 %), then the ratio of instructions executed per parse
//! (callgrind, which the load does not disturb):
//!
//! | body | 1 KiB | 4 KiB | 64 KiB | 1 MiB |
//! |---|---|---|---|---|
//! | `escaped_text`, CPU time | 1.58 | 1.43 | 1.31 | 1.24 |
//! | `escaped_text`, instructions | 1.31 | 1.21 | 1.17 | 1.17 |
//! | `documented`, CPU time | 1.62 | 1.53 | 1.33 | 1.42 |
//! | `documented`, instructions | 1.31 | 1.30 | 1.26 | 1.26 |
//!
//! Before the parse indexed the body in place (an eager serde parse into owned
//! strings), the same CPU-time ratios were 2.3 to 4.2.

mod support;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openmail_webhooks::Event;
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use support::{label, ThreadCpuTime};

/// The sizes the target is stated at.
const SIZES: [usize; 4] = [1024, 4 * 1024, 64 * 1024, 1024 * 1024];

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

/// Pads the JSON text of `message` to exactly `size` bytes by growing `body_text`, whose
/// value must end in `@@` in `template`.
fn fill(template: &Value, size: usize, pad: &str) -> Bytes {
    let text = template.to_string();
    let base = text.len() - 2;
    assert!(
        size >= base,
        "{size} B is too small for this body ({base} B)"
    );
    let mut padding = String::with_capacity(size - base);
    while padding.len() + pad.len() <= size - base {
        padding.push_str(pad);
    }
    while padding.len() < size - base {
        padding.push(' ');
    }
    let body = text.replacen("@@", &padding, 1);
    assert_eq!(body.len(), size);
    Bytes::from(body)
}

/// A `message.received` of `size` bytes made mostly of multi-line text with escapes:
/// half of it in `body_text`, half in an attachment's `parsedText`.
fn escaped_text(size: usize) -> Bytes {
    const LINE: &str = "Item 2847 — Consulting (March), 12 h × €150.00\tsubtotal €1,800.00\n\
                        > \"Thanks\", she wrote, \"see C:\\\\reports\\\\q3\".\n";
    // Each JSON-escaped line is this long on the wire.
    let wire_line = serde_json::to_string(LINE).expect("a string").len() - 2;
    let envelope = json!({
        "event": "message.received",
        "event_id": "evt_7f3a9c21d4",
        "occurred_at": "2024-03-21T10:05:00.000Z",
        "delivered_at": "2024-03-21T10:05:01.000Z",
        "attempt": 1,
        "inbox_id": "inb_92ma",
        "thread_id": "thr_xyz",
        "message": {
            "id": "msg_4c8d5e6f",
            "rfc_message_id": "<original@message.id>",
            "from": "Ada Lovelace <ada@example.com>",
            "to": "inbox@openmail.sh",
            "cc": ["carol@example.com"],
            "subject": "Quarterly report",
            "body_text": "@@",
            "attachments": [{
                "filename": "report.pdf",
                "contentType": "application/pdf",
                "sizeBytes": 48_213,
                "url": "https://api.openmail.sh/v1/attachments/msg_4c8d5e6f/report.pdf",
                "parsedText": LINE.repeat((size / 2).saturating_sub(400) / wire_line),
                "extractionMethod": "pdf",
            }],
            "received_at": "2024-03-21T10:05:00.000Z",
        },
    });
    let pad = serde_json::to_string(LINE).expect("a string");
    fill(&envelope, size, pad.trim_matches('"'))
}

/// The documented example with its attachment repeated until the body is `size` bytes.
fn documented(size: usize) -> Bytes {
    let mut example: Value =
        serde_json::from_slice(&fixture("message_received")).expect("the fixture is JSON");
    let attachment = example["message"]["attachments"][0].clone();
    let attachment_len = attachment.to_string().len() + 1;
    let base = example.to_string().len();
    let count = (size.saturating_sub(base + 64) / attachment_len).max(1);
    example["message"]["attachments"] = Value::Array(vec![attachment; count]);
    example["message"]["body_text"] = json!("@@");
    fill(&example, size, "Plain text body. ")
}

fn group(c: &mut Criterion<ThreadCpuTime>, name: &str, body: &Bytes) {
    // All three must accept the body, or the comparison means nothing.
    assert!(
        matches!(Event::parse(body.clone()), Ok(Event::MessageReceived(_))),
        "{name}"
    );
    assert!(serde_json::from_slice::<Value>(body).is_ok());

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("event", |b| {
        b.iter(|| Event::parse(black_box(body.clone())))
    });
    group.bench_function("skim", |b| {
        b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(body)))
    });
    group.bench_function("value", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(body)))
    });
    group.finish();
}

fn parse(c: &mut Criterion<ThreadCpuTime>) {
    for size in SIZES {
        group(
            c,
            &format!("parse_escaped_text/{}", label(size)),
            &escaped_text(size),
        );
        group(
            c,
            &format!("parse_documented/{}", label(size)),
            &documented(size),
        );
    }
    for name in [
        "message_received",
        "message_received_pretty",
        "message_received_escaped",
    ] {
        group(c, &format!("parse_fixture/{name}"), &fixture(name));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30);
    targets = parse
}
criterion_main!(benches);
