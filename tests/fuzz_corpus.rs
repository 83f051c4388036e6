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
