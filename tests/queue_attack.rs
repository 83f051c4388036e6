//! Attacks on the receiver's queue mode over SQLite, with real receiver processes: what a
//! completed event leaves in the store's files, and which requests get stored.
//!
//! `cargo test --test queue_attack`

#[path = "queue_attack_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::{Receiver, SECRET, TempDir, client, deliver, free_port, receiver_binary};

/// Whether `needle` occurs in any of the store's files (the database, its WAL).
fn files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
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

/// The stored bodies are users' email, deleted once the event completes: not only from
/// the row, but from the file's free pages and the write-ahead log too, where anyone who
/// can read the file would find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_events_body_does_not_stay_readable_in_the_sqlite_files() {
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("erase");
    let store = dir.0.join("events.db");
    let receiver = Receiver::start(
        &binary,
        &format!("sqlite:{}", store.display()),
        free_port(),
        0,
    );
    let client = client();

    // A large text (overflow pages) and a small one (inside the row's page).
    let large = format!("PRIVATE-LARGE-{}", "x".repeat(20_000));
    for (event_id, text) in [
        ("evt_large", large.as_str()),
        ("evt_small", "PRIVATE-SMALL"),
    ] {
        let body = serde_json::json!({
            "event": "message.received",
            "event_id": event_id,
            "inbox_id": "inb_1",
            "message": { "body_text": text },
        })
        .to_string();
        let (status, _) = deliver(
            &client,
            receiver.address(),
            Method::POST,
            body.as_bytes(),
            SECRET,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    receiver
        .wait_handled("evt_large", Duration::from_secs(30))
        .await;
    receiver
        .wait_handled("evt_small", Duration::from_secs(30))
        .await;

    // Both completed; within a generous bound, neither text is in any file of the store.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let large = files_contain(&dir.0, b"PRIVATE-LARGE-");
        let small = files_contain(&dir.0, b"PRIVATE-SMALL");
        if large.is_empty() && small.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "completed bodies still readable: large in {large:?}, small in {small:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    #[cfg(unix)]
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{:?} is readable by others", entry.path());
    }
    drop(receiver);
}

/// Inline, the receiver answers anything but `POST` with `405` and handles nothing. Queue
/// mode must not store (and then handle) a signed `GET` or `PUT`: OpenMail only POSTs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_stores_only_posts() {
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("methods");
    let store = dir.0.join("events.db");
    let receiver = Receiver::start(
        &binary,
        &format!("sqlite:{}", store.display()),
        free_port(),
        0,
    );
    let client = client();
    for (method, event_id) in [
        (Method::GET, "evt_get"),
        (Method::PUT, "evt_put"),
        (Method::DELETE, "evt_delete"),
    ] {
        let body =
            format!(r#"{{"event":"message.received","event_id":"{event_id}","inbox_id":"inb_1"}}"#);
        let (status, _) = deliver(
            &client,
            receiver.address(),
            method.clone(),
            body.as_bytes(),
            SECRET,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} was answered {status}"
        );
    }
    // A POST after them is handled; by then the others would have been too.
    let body = r#"{"event":"message.received","event_id":"evt_post","inbox_id":"inb_1"}"#;
    let (status, _) = deliver(
        &client,
        receiver.address(),
        Method::POST,
        body.as_bytes(),
        SECRET,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    receiver
        .wait_handled("evt_post", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.lines().len(), 1, "{:?}", receiver.lines());
}
