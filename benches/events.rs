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
//! `cargo bench --bench events`: after criterion's groups it prints the target's ratio
//! measured interleaved (see `interleaved`), which is the figure to compare with 1.3.
//! Criterion's own medians time `event` and `skim` seconds apart; on a shared machine
//! their ratio moves by ±30 % from run to run, so read them for absolute times.
//!
//! # Figures
//!
//! `event` ÷ `skim`, interleaved, two runs on a quiet two-core machine (they agreed within
//! 0.04), then the ratio of instructions executed per parse (callgrind):
//!
//! | body | 1 KiB | 4 KiB | 64 KiB | 1 MiB |
//! |---|---|---|---|---|
//! | `escaped_text`, CPU time | 1.27–1.29 | 1.25–1.26 | 1.24 | 1.24 |
//! | `escaped_text`, instructions | 1.10 | 1.00 | 0.97 | 0.97 |
//! | `documented`, CPU time | 1.25–1.26 | 1.25–1.26 | 1.14–1.16 | 1.14 |
//! | `documented`, instructions | 1.12 | 1.12 | 1.09 | 1.09 |
//!
//! Before the string scan was inlined and the usual timestamp form got its shortcut, the
//! instruction ratios were 1.17 to 1.31; before the parse indexed the body in place (an
//! eager serde parse into owned strings), the CPU-time ratios were 2.3 to 4.2.

mod support;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use openmail_webhooks::Event;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use support::{ThreadCpuTime, label};

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
        matches!(Event::parse(body.clone()), Event::MessageReceived(_)),
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

/// The target's ratio measured so that load on a shared machine cancels out: the parse and
/// the skim take turns on the same body, 41 rounds of about 2 ms each, and each keeps
/// its fastest round. Criterion's medians above time the two seconds apart, and on a
/// machine whose load shifts between them, their ratio moves by ±30 %; the interleaved
/// minimum moved by up to 0.07 between runs on a loaded machine, and by 0.04 on a quiet
/// one.
fn interleaved() {
    println!("\nevent ÷ skim, interleaved (fastest of 41 rounds each, thread CPU time)\n");
    println!("| body | size | event | skim | event ÷ skim |");
    println!("|---|---:|---:|---:|---:|");
    for size in SIZES {
        for (family, body) in [
            ("escaped_text", escaped_text(size)),
            ("documented", documented(size)),
        ] {
            let iterations = (2_000_000 / size).max(2);
            let mut fastest = [f64::MAX; 2];
            for _ in 0..41 {
                for (which, fastest) in fastest.iter_mut().enumerate() {
                    let start = cpu_time::ThreadTime::now();
                    for _ in 0..iterations {
                        if which == 0 {
                            black_box(Event::parse(black_box(body.clone())));
                        } else {
                            black_box(
                                serde_json::from_slice::<IgnoredAny>(black_box(&body)).is_ok(),
                            );
                        }
                    }
                    let each = start.elapsed().as_secs_f64() / iterations as f64;
                    *fastest = fastest.min(each);
                }
            }
            println!(
                "| {family} | {} | {:.2} µs | {:.2} µs | {:.2} |",
                label(size),
                fastest[0] * 1e6,
                fastest[1] * 1e6,
                fastest[0] / fastest[1],
            );
        }
    }
}

/// Criterion's options that take a value as the next argument.
const VALUED: [&str; 16] = [
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--profile-time",
    "--output-format",
    "--color",
    "--plotting-backend",
    "--format",
];

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes `--bench`. `cargo test --benches`, `--list` and profiling do not
    // want the table, and a filter means only some groups were asked for.
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut filtered = false;
    let mut value_next = false;
    for argument in &arguments {
        if value_next {
            value_next = false;
        } else if VALUED.contains(&argument.as_str()) {
            value_next = true;
        } else if !argument.starts_with('-') {
            filtered = true;
        }
    }
    let skip = ["--list", "--test", "--profile-time"];
    let measuring = arguments.iter().any(|argument| argument == "--bench")
        && !arguments.iter().any(|argument| {
            skip.iter()
                .any(|option| argument == option || argument.starts_with(&format!("{option}=")))
        });
    if measuring && !filtered {
        interleaved();
    }
}
