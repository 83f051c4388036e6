//! What the SQLite store's files hold: shared by the attack tests on real receiver
//! processes and the store's own log tests.

use std::path::Path;

/// The files in `dir` (the database, its write-ahead log, its lock file) that contain
/// `needle`.
pub fn containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if bytes.windows(needle.len()).any(|window| window == needle) {
            found.push(path.display().to_string());
        }
    }
    found
}
