//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same harness
//! functions the cargo-fuzz targets call, so every input that once found new coverage, and
//! every reproducer of a past crash, is checked again on the stable toolchain.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

/// Runs `check` on every file of `fuzz/corpus/<target>/` and says how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in &entries {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        if let Err(panic) = outcome {
            eprintln!("fuzz input {} failed", path.display());
            std::panic::resume_unwind(panic);
        }
    }
    entries.len()
}

#[test]
fn the_core_check_corpus_replays() {
    assert!(replay("verify", harness::check_core) >= 10);
}

#[test]
fn the_event_corpus_replays() {
    assert!(replay("event", harness::parse_event) >= 10);
}

#[test]
fn the_layer_corpus_replays() {
    assert!(replay("layer", harness::drive_layer) >= 10);
}

mod mutations {
    //! Beyond the corpus: valid events with a few bytes changed, checked by the same
    //! harness, so that the parse and serde_json keep agreeing on what is JSON near every
    //! kind of token.

    use super::harness;
    use proptest::prelude::*;

    /// Bytes that matter to a JSON reader, and some that must be refused.
    const ALPHABET: &[u8] = b"\"\\/{}[],:0123456789-+.eEtrufalsn \t\n\r\x00\x1f\x7f\x80\xbf\xc3\xa9\xe2\xed\xf0\xf4\xffbu";

    const TEMPLATES: &[&str] = &[
        r#"{"event":"message.received","event_id":"evt_1","occurred_at":"2024-03-21T10:05:00.000Z","attempt":1,"inbox_id":"inb_a","message":{"from":"Ada <ada@example.com>","cc":["b@example.com"],"body_text":"Hi,\n\"there\"\u00e9\ud83d\ude00","attachments":[{"sizeBytes":12,"parsedText":"x\ty","extractionMethod":"pdf"}]}}"#,
        r#"{"event":"inbox.suspended","event_id":"evt_2","inbox_id":"inb_a","pod_id":"pod_p","reason":"abuse","extra":[1.5e3,-0,true,null,{"k":[]}]}"#,
        r#"{"event":"setup.test","inbox_id":"inb_a","n":12345678901234567890,"f":-1.25E-7}"#,
        // Lone surrogates, as JSON.stringify writes them, in ids, texts and keys.
        r#"{"event":"message.received","event_id":"evt_\ud800","inbox_id":"inb_\udc00","message":{"subject":"\udc00","body_text":"cut \ud83d","cc":["\ud83d"]},"\ud800":1}"#,
    ];

    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(TEMPLATES),
            prop::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    prop::sample::select(ALPHABET),
                    0..3_u8,
                ),
                0..4,
            ),
        )
            .prop_map(|(template, edits)| {
                let mut body = template.as_bytes().to_vec();
                for (at, byte, kind) in edits {
                    let at = at.index(body.len() + 1);
                    match kind {
                        0 => body.insert(at, byte),
                        1 if at < body.len() => body[at] = byte,
                        _ if at < body.len() => {
                            body.remove(at);
                        }
                        _ => body.push(byte),
                    }
                }
                body
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn the_parse_agrees_with_serde_json_near_every_token(body in mutated()) {
            harness::parse_event(&body);
        }
    }
}
