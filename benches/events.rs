//! The layer's event parse against a validating skim of the same bytes.
//!
//! Each group is one body; inside it, four functions read the same bytes, so their ratios
//! compare like with like in one run:
//!
//! - `event`: [`Event::parse`], what the layer runs on every verified body (the event is
//!   dropped inside the timing, as the layer's would be);
//! - `serde`: the same model read by `serde_json` into borrowed `#[derive(Deserialize)]`
//!   structs (`support/serde_event.rs`), the candidate to replace the crate's own reader.
//!   Before timing anything, the bench checks that it exposes what [`Event::parse`]
//!   exposes, field for field, on every body here, on the documented fixtures, and on
//!   bodies that must still become events (lone surrogates, not JSON, no string `event`);
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
//! `cargo bench --bench events`: after criterion's groups it prints both parses' ratios to
//! the skim measured interleaved (see `interleaved`), which are the figures to compare
//! with 1.3 (the crate's target) and 1.5 (the bar a serde parse had to clear to replace
//! it), and the memory each parsed event holds beyond its body, counted by the allocator.
//! Criterion's own medians time the functions seconds apart; on a shared machine their
//! ratio moves by ±30 % from run to run, so read them for absolute times.
//!
//! The interleaved table adds a third family, `lone_surrogate/<size>`: `escaped_text`
//! with a lone surrogate escape in its subject, which serde_json refuses in a string it
//! decodes, so the serde parse pays its fallback. BENCHMARKS.md ("The parse: serde_json
//! borrowed against the bespoke reader") has the figures and the decision.
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

#[path = "../tests/heap/mod.rs"]
mod heap;
#[path = "support/serde_event.rs"]
mod serde_event;

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use openmail_webhooks::Event;
use serde::de::IgnoredAny;
use serde_event::{SerdeEvent, assert_same};
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
    // The serde parse must expose what the crate's does, or its time means nothing.
    assert_same(body);

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("event", |b| {
        b.iter(|| Event::parse(black_box(body.clone())))
    });
    group.bench_function("serde", |b| {
        b.iter(|| SerdeEvent::parse(black_box(body.clone())))
    });
    group.bench_function("skim", |b| {
        b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(body)))
    });
    group.bench_function("value", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(body)))
    });
    group.finish();
}

/// The serde parse keeps the lossless rule as the crate's does: every documented fixture,
/// and bodies serde_json alone would refuse, become the same event (malformed ones
/// compared by what they keep: type, ids, time).
fn same_on_the_corpus() {
    let directory = format!("{}/tests/fixtures/events", env!("CARGO_MANIFEST_DIR"));
    let mut fixtures = 0;
    for entry in std::fs::read_dir(&directory).expect("the fixtures") {
        let path = entry.expect("a fixture").path();
        if path
            .extension()
            .is_some_and(|extension| extension == "json")
        {
            assert_same(&Bytes::from(std::fs::read(&path).expect("a fixture")));
            fixtures += 1;
        }
    }
    assert!(fixtures >= 10, "{fixtures} fixtures in {directory}");
    let bodies: [&[u8]; 14] = [
        // Lone surrogates: in a short text, in an id, in a large text, in a key.
        br#"{"event":"message.received","event_id":"evt_1","message":{"subject":"cut \ud83d"}}"#,
        br#"{"event":"message.received","event_id":"evt_\ud800","inbox_id":"inb_\uDC00x"}"#,
        br#"{"event":"message.received","event_id":"evt_1","message":{"body_text":"a\ud83d\nb"}}"#,
        br#"{"event":"setup.test","event_id":"evt_1","note\ud800":"x"}"#,
        // Not JSON, not UTF-8, not an object, no string `event`.
        b"<html>",
        b"{\"event\":\"message.received\",\"event_id\":\"evt_\xff\"}",
        b"[1,2]",
        br#"{"event_id":"evt_1","inbox_id":"inb_1"}"#,
        br#"{"event":7,"event_id":"evt_1","occurred_at":"2024-03-21T10:05:00Z"}"#,
        // A known type whose fields don't fit; a duplicated envelope field.
        br#"{"event":"message.received","event_id":"evt_1","message":{"subject":5}}"#,
        br#"{"event":"inbox.suspended","event_id":"evt_1","occurred_at":"2024-02-30T00:00:00Z"}"#,
        br#"{"event":"inbox.suspended","inbox_id":"inb_1"}"#,
        br#"{"event":"inbox.suspended","event_id":"evt_1","event_id":"evt_2"}"#,
        // A field another type reads, of the wrong shape: ignored.
        br#"{"event":"pod.suspended","event_id":"evt_1","attempt":"x","message":[]}"#,
    ];
    for body in bodies {
        assert_same(&Bytes::copy_from_slice(body));
    }
}

fn parse(c: &mut Criterion<ThreadCpuTime>) {
    same_on_the_corpus();
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

/// The target's ratio measured so that load on a shared machine cancels out: the parses
/// and the skim take turns on the same body, 41 rounds of about 2 ms each, and each keeps
/// its fastest round. Criterion's medians above time them seconds apart, and on a machine
/// whose load shifts between them, their ratio moves by ±30 %; the interleaved minimum
/// moved by up to 0.07 between runs on a loaded machine, and by 0.04 on a quiet one.
///
/// Two parses: `bespoke`, the crate's [`Event::parse`], and `serde`, the same model read
/// by `serde_json` (`support/serde_event.rs`). `held` is what the parsed event keeps
/// beyond the body, counted by the allocator (`tests/heap`), as a multiple of the body:
/// the issue's target for a held delivery is at most 1.15.
fn interleaved() {
    println!(
        "\nbespoke and serde parses ÷ skim, interleaved (fastest of 41 rounds each, thread CPU \
         time); held = (body + what the event keeps) ÷ body\n"
    );
    println!(
        "| body | size | bespoke | serde | skim | bespoke ÷ skim | serde ÷ skim | held, bespoke | held, serde |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in SIZES {
        for (family, body) in [
            ("escaped_text", escaped_text(size)),
            ("documented", documented(size)),
            ("lone_surrogate", lone_surrogate(size)),
        ] {
            assert_same(&body);
            let iterations = (2_000_000 / size).max(2);
            let mut fastest = [f64::MAX; 3];
            for _ in 0..41 {
                for (which, fastest) in fastest.iter_mut().enumerate() {
                    let start = cpu_time::ThreadTime::now();
                    for _ in 0..iterations {
                        match which {
                            0 => drop(black_box(Event::parse(black_box(body.clone())))),
                            1 => drop(black_box(SerdeEvent::parse(black_box(body.clone())))),
                            _ => {
                                black_box(
                                    serde_json::from_slice::<IgnoredAny>(black_box(&body)).is_ok(),
                                );
                            }
                        }
                    }
                    let each = start.elapsed().as_secs_f64() / iterations as f64;
                    *fastest = fastest.min(each);
                }
            }
            let held = |kept: usize| (body.len() + kept) as f64 / body.len() as f64;
            println!(
                "| {family} | {} | {:.2} µs | {:.2} µs | {:.2} µs | {:.2} | {:.2} | {:.3} | {:.3} |",
                label(size),
                fastest[0] * 1e6,
                fastest[1] * 1e6,
                fastest[2] * 1e6,
                fastest[0] / fastest[2],
                fastest[1] / fastest[2],
                held(kept(&body, Event::parse)),
                held(kept(&body, SerdeEvent::parse)),
            );
        }
    }
}

/// The bytes an event parsed from `body` keeps on the heap beyond the body itself.
fn kept<T>(body: &Bytes, parse: fn(Bytes) -> T) -> usize {
    // A clone of a body made from a `Vec` shares it on the first clone, which allocates;
    // the layer's body is shared already.
    let body = body.clone();
    let before = heap::live();
    let event = parse(body.clone());
    let kept = heap::live().saturating_sub(before);
    drop(event);
    kept
}

/// An `escaped_text` body whose subject was cut inside an emoji, as `JSON.stringify`
/// writes it: a lone surrogate escape, which serde_json refuses in a string it decodes.
fn lone_surrogate(size: usize) -> Bytes {
    let body = escaped_text(size);
    let text = std::str::from_utf8(&body).expect("UTF-8");
    let cut = text.replacen(
        r#""subject":"Quarterly report""#,
        r#""subject":"Quarterly report \ud83d""#,
        1,
    );
    assert_ne!(cut, text);
    Bytes::from(cut)
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
