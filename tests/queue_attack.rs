//! Attacks on the receiver's queue mode over SQLite, with real receiver processes: what a
//! completed event leaves in the store's files, and which requests get stored.
//!
//! `cargo test --test queue_attack`

#[path = "queue_attack_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::{Receiver, SECRET, TempDir, client, deliver, free_port, receiver_binary};

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
        let large = support::files::containing(&dir.0, b"PRIVATE-LARGE-");
        let small = support::files::containing(&dir.0, b"PRIVATE-SMALL");
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

/// The stored events' `(leased, attempts, state)`, read from the file beside the receiver
/// (or after it died).
fn stored_events(store: &std::path::Path) -> Vec<(bool, i64, i64)> {
    let connection =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    connection.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut statement = connection
        .prepare("SELECT leased, attempts, state FROM openmail_events")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// An attempt is counted when an event is claimed, so that an event that crashes the
/// process each time ends in the dead letters. The workers also claim events ahead of free
/// slots (the prefetch): those wait here and never start a handler before a crash, so a
/// crash that counts an attempt for them too makes a crash loop dead-letter healthy events
/// that never ran. The receiver runs 8 handlers at once, so a `SIGKILL` interrupts at most
/// 8 runs: after 8 crashes, at most 8 events (those that were running each time) may be
/// dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_does_not_dead_letter_events_that_never_started() {
    const EVENTS: usize = 16;
    const CONCURRENCY: i64 = 8;
    const CRASHES: i64 = 8;
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("prefetch-crash");
    let store = dir.0.join("events.db");
    let url = format!("sqlite:{}", store.display());
    let port = free_port();
    let client = client();

    // Handlers that never finish within the test: every claimed event is running or waiting
    // for a slot when the process dies.
    let mut receiver = Some(Receiver::start(&binary, &url, port, 600_000));
    // The attempts stored after each crash; at most 8 more each time would be exact.
    let mut counted = Vec::new();
    for index in 0..EVENTS {
        let body = format!(
            r#"{{"event":"message.received","event_id":"evt_{index}","inbox_id":"inb_1"}}"#
        );
        let (status, _) = deliver(
            &client,
            receiver.as_ref().unwrap().address(),
            Method::POST,
            body.as_bytes(),
            SECRET,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    for crash in 1..=CRASHES {
        // The workers' first call claims for every free slot in one transaction: once 8
        // events are leased, this process's claims are all committed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while stored_events(&store).iter().filter(|e| e.0).count() < CONCURRENCY as usize {
            assert!(Instant::now() < deadline, "the events were never claimed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(receiver.take()); // SIGKILL
        counted.push(stored_events(&store).iter().map(|e| e.1).sum::<i64>());
        if crash < CRASHES {
            receiver = Some(Receiver::start(&binary, &url, port, 600_000));
        }
    }

    // Handlers that finish at once: the events that never ran are still handled.
    let _receiver = Receiver::start(&binary, &url, port, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_events(&store).iter().any(|e| e.2 == 0) {
        assert!(Instant::now() < deadline, "events still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = stored_events(&store).iter().filter(|e| e.2 == 2).count();
    assert!(
        dead <= CONCURRENCY as usize,
        "{dead} of {EVENTS} events are dead letters after {CRASHES} crashes that \
         interrupted at most {CONCURRENCY} runs each (attempts stored after each crash: \
         {counted:?})"
    );
}

/// An event that crashes the process each time ends in the dead letters once its attempts
/// are used up; docs/durable.md promises that such an event, like one whose last attempt
/// failed, is reported to `Workers::on_dead_letter` (the receiver prints a `queue: dead
/// letter` line on stderr). Here the crashes are `SIGKILL`s while the handler runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_crashed_every_attempt_is_reported_as_a_dead_letter() {
    const MAX_ATTEMPTS: usize = 8;
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("crash-dead-letter");
    let store = dir.0.join("events.db");
    let url = format!("sqlite:{}", store.display());
    let port = free_port();
    let client = client();
    let mut receiver = Some(Receiver::start(&binary, &url, port, 600_000));
    let body = r#"{"event":"message.received","event_id":"evt_poison","inbox_id":"inb_1"}"#;
    let (status, _) = deliver(
        &client,
        receiver.as_ref().unwrap().address(),
        Method::POST,
        body.as_bytes(),
        SECRET,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for crash in 1..=MAX_ATTEMPTS {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Claimed by this process: its attempt counted. (The lease of the process killed
        // before stays in the row until this one takes the event over.)
        while !stored_events(&store)
            .iter()
            .any(|e| e.0 && e.1 == crash as i64)
        {
            assert!(Instant::now() < deadline, "the event was never claimed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(receiver.take()); // SIGKILL while its handler runs
        if crash < MAX_ATTEMPTS {
            receiver = Some(Receiver::start(&binary, &url, port, 600_000));
        }
    }
    let receiver = Receiver::start(&binary, &url, port, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_events(&store).iter().any(|e| e.2 == 0) {
        assert!(Instant::now() < deadline, "the event is still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored_events(&store),
        vec![(false, MAX_ATTEMPTS as i64, 2)],
        "not a dead letter after {MAX_ATTEMPTS} crashed attempts"
    );
    assert_eq!(receiver.handled("evt_poison"), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !receiver
        .stderr()
        .iter()
        .any(|line| line.starts_with("queue: dead letter evt_poison"))
    {
        assert!(
            Instant::now() < deadline,
            "the dead letter was never reported: {:?}",
            receiver.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `SIGTERM` is graceful: running handlers finish within the grace (10 s), the events
/// claimed ahead of free slots are handed back with their attempts uncounted, and none of
/// it runs twice. A receiver restarted afterwards runs exactly what had not run, and one
/// restarted with nothing pending handles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_running_handlers_and_hands_back_the_prefetched_events() {
    const EVENTS: usize = 16;
    const WORK_MS: u64 = 3000;
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("sigterm-prefetch");
    let store = dir.0.join("events.db");
    let url = format!("sqlite:{}", store.display());
    let port = free_port();
    let client = client();
    let mut first = Receiver::start(&binary, &url, port, WORK_MS);
    let ids: Vec<String> = (0..EVENTS)
        .map(|index| format!("evt_term_{index}"))
        .collect();
    for id in &ids {
        let body =
            format!(r#"{{"event":"message.received","event_id":"{id}","inbox_id":"inb_1"}}"#);
        let (status, _) = deliver(
            &client,
            first.address(),
            Method::POST,
            body.as_bytes(),
            SECRET,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // All 16 claimed: 8 running, 8 waiting for a slot.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_events(&store).iter().filter(|e| e.0).count() < EVENTS {
        assert!(
            Instant::now() < deadline,
            "the events were never all claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        first.lines().len(),
        0,
        "handlers finished before the SIGTERM"
    );
    let stopping = Instant::now();
    assert_eq!(first.terminate(), Some(0));
    let stopped_in = stopping.elapsed();
    // Within the grace and a generous margin for a loaded machine.
    assert!(
        stopped_in < Duration::from_secs(30),
        "SIGTERM took {stopped_in:?}"
    );
    let ran_first: Vec<&String> = ids.iter().filter(|id| first.handled(id) > 0).collect();
    assert_eq!(
        ran_first.len(),
        8,
        "the 8 running handlers must finish within the grace, and nothing waiting may start: {:?}",
        first.lines()
    );
    let events = stored_events(&store);
    assert_eq!(events.iter().filter(|e| e.2 == 1).count(), 8, "{events:?}");
    for (leased, attempts, state) in &events {
        assert!(!leased, "a lease survived the graceful stop: {events:?}");
        if *state == 0 {
            assert_eq!(
                *attempts, 0,
                "a handed-back event kept an attempt: {events:?}"
            );
        }
    }

    // The rest run once after a restart; a second restart handles nothing.
    let mut second = Receiver::start(&binary, &url, port, 0);
    for id in ids.iter().filter(|id| first.handled(id) == 0) {
        second.wait_handled(id, Duration::from_secs(30)).await;
    }
    assert_eq!(second.lines().len(), 8, "{:?}", second.lines());
    assert_eq!(second.terminate(), Some(0));
    let third = Receiver::start(&binary, &url, port, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(third.lines(), Vec::<String>::new());
    for id in &ids {
        assert_eq!(first.handled(id) + second.handled(id), 1, "{id}");
    }
}

/// Kill and restart cycles under load: deliveries keep arriving (two concurrent copies of
/// each) while `SIGKILL` falls at a random moment, during group commits, checkpoints and
/// prefetched claims. OpenMail's part is played by resending every delivery that got no
/// `2xx`. Then: every acknowledged event was handled; no process printed an event twice;
/// an event printed well before a kill (its completion committed by then) was not handled
/// again; and after a graceful stop, a restart handles nothing.
///
/// `OPENMAIL_ATTACK_CYCLES=50 cargo test --test queue_attack kill_and_restart` hunts longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_under_load_loses_nothing_and_repeats_only_crashed_runs() {
    // More for a longer hunt: OPENMAIL_ATTACK_CYCLES=50.
    let cycles: usize = std::env::var("OPENMAIL_ATTACK_CYCLES")
        .ok()
        .and_then(|cycles| cycles.parse().ok())
        .unwrap_or(4);
    const PER_CYCLE: usize = 40;
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("kill-cycles");
    let store = dir.0.join("events.db");
    let url = format!("sqlite:{}", store.display());
    let port = free_port();
    let client = client();
    let body = |id: &str| {
        format!(r#"{{"event":"message.received","event_id":"{id}","inbox_id":"inb_1"}}"#)
    };
    let mut random = kill_moments();

    let mut acknowledged = std::collections::HashSet::new();
    let mut unacknowledged: Vec<String> = Vec::new();
    let mut finished: Vec<Receiver> = Vec::new();
    // Events each killed process had printed 1.5 s before its kill: committed by then.
    let mut settled_before_kill: Vec<Vec<String>> = Vec::new();
    for cycle in 0..cycles {
        let receiver = Receiver::start(&binary, &url, port, 100);
        let address = receiver.address();
        let mut ids: Vec<String> = std::mem::take(&mut unacknowledged);
        ids.extend((0..PER_CYCLE).map(|index| format!("evt_{cycle}_{index}")));
        let sender = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for id in ids {
                    let text = body(&id);
                    let copy = |client: support::HttpClient, text: String| async move {
                        let timestamp = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs()
                            .to_string();
                        let request = http::Request::builder()
                            .method(Method::POST)
                            .uri(format!("http://{address}/webhooks"))
                            .header("content-type", "application/json")
                            .header("x-timestamp", &timestamp)
                            .header(
                                "x-signature",
                                openmail_webhooks::sign(SECRET, &timestamp, text.as_bytes()),
                            )
                            .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                            .unwrap();
                        match client.request(request).await {
                            Ok(response) => Some(response.status()),
                            Err(_) => None,
                        }
                    };
                    let (first, second) = tokio::join!(
                        copy(client.clone(), text.clone()),
                        copy(client.clone(), text)
                    );
                    let statuses = [first, second];
                    for status in statuses.iter().flatten() {
                        assert!(
                            *status == StatusCode::OK,
                            "{id} was answered {status} while the store was reachable"
                        );
                    }
                    outcomes.push((id, statuses.contains(&Some(StatusCode::OK))));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                outcomes
            })
        };
        tokio::time::sleep(Duration::from_millis(1500 + random(1500))).await;
        let printed: Vec<String> = receiver
            .lines()
            .iter()
            .filter_map(|line| line.split(' ').nth(2).map(str::to_owned))
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut killed = receiver;
        let _ = killed.child.kill();
        let _ = killed.child.wait();
        settled_before_kill.push(printed);
        for (id, acked) in sender.await.unwrap() {
            if acked {
                acknowledged.insert(id);
            } else {
                unacknowledged.push(id);
            }
        }
        finished.push(killed);
    }

    let last = Receiver::start(&binary, &url, port, 100);
    let last = handles_the_rest(
        &client,
        last,
        &body,
        &finished,
        acknowledged,
        unacknowledged,
    )
    .await;
    for (index, printed) in settled_before_kill.iter().enumerate() {
        for id in printed {
            let later: usize = finished[index + 1..]
                .iter()
                .map(|r| r.handled(id))
                .sum::<usize>()
                + last.handled(id);
            assert_eq!(
                later, 0,
                "{id} completed 1.5 s before process {index} was killed, and ran again"
            );
        }
    }
    let after = Receiver::start(&binary, &url, port, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        after.lines(),
        Vec::<String>::new(),
        "a restart with nothing pending"
    );
}

/// A completed event's body leaves the files also while deliveries keep arriving and
/// completing, with the checkpointer copying the log beside the writer: the freed space
/// in the file is zeroed (`secure_delete`; the test fails without it) and the log's frames
/// that held it are overwritten or truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_body_leaves_the_sqlite_files_under_a_steady_load() {
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("erase-load");
    let store = dir.0.join("events.db");
    let receiver = Receiver::start(
        &binary,
        &format!("sqlite:{}", store.display()),
        free_port(),
        0,
    );
    let address = receiver.address();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for connection in 0..4 {
        let stop = std::sync::Arc::clone(&stop);
        load.push(tokio::spawn(async move {
            let client = client();
            let mut index = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = format!(
                    r#"{{"event":"message.received","event_id":"evt_load_{connection}_{index}","inbox_id":"inb_1","message":{{"body_text":"{}"}}}}"#,
                    "public ".repeat(200)
                );
                assert_eq!(support::post(&client, address, &body).await, StatusCode::OK);
                index += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = client();
    let private = format!("PRIVATE-UNDER-LOAD-{}", "y".repeat(10_000));
    let body = serde_json::json!({
        "event": "message.received",
        "event_id": "evt_private",
        "inbox_id": "inb_1",
        "message": { "body_text": private },
    })
    .to_string();
    assert_eq!(support::post(&client, address, &body).await, StatusCode::OK);
    receiver
        .wait_handled("evt_private", Duration::from_secs(30))
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = support::files::containing(&dir.0, b"PRIVATE-UNDER-LOAD-");
        if found.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a completed body still readable under load in {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(receiver.handled("evt_load_0_0") <= 1);
}

/// Sends `body` once; `None` when the receiver could not be reached or the exchange broke.
async fn try_post(
    client: &support::HttpClient,
    address: std::net::SocketAddr,
    body: String,
) -> Option<StatusCode> {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{address}/webhooks"))
        .header("content-type", "application/json")
        .header("x-timestamp", &timestamp)
        .header(
            "x-signature",
            openmail_webhooks::sign(SECRET, &timestamp, body.as_bytes()),
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    client
        .request(request)
        .await
        .ok()
        .map(|response| response.status())
}

/// Large bodies (256 KiB) from 8 connections fill the 64 MiB write-ahead log within a
/// second or two, so that a SIGKILL at a random moment lands while the checkpointer
/// catches up, just after the log started over in place, or while the writer truncates
/// it. After each kill the file opens again, every acknowledged event is handled, and no
/// process handles an event twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_while_large_bodies_fill_the_log_loses_nothing() {
    let cycles: usize = std::env::var("OPENMAIL_ATTACK_CYCLES")
        .ok()
        .and_then(|cycles| cycles.parse().ok())
        .unwrap_or(2);
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("kill-long-log");
    let store = dir.0.join("events.db");
    let url = format!("sqlite:{}", store.display());
    let port = free_port();
    let client = client();
    let filler = "f".repeat(256 * 1024);
    let body = move |id: &str| {
        format!(
            r#"{{"event":"message.received","event_id":"{id}","inbox_id":"inb_1","message":{{"body_text":"{filler}"}}}}"#
        )
    };
    let mut random = kill_moments();
    let mut acknowledged = std::collections::HashSet::new();
    let mut unacknowledged: Vec<String> = Vec::new();
    let mut finished: Vec<Receiver> = Vec::new();
    for cycle in 0..cycles {
        let receiver = Receiver::start(&binary, &url, port, 10);
        let address = receiver.address();
        let mut senders = Vec::new();
        for connection in 0..8 {
            let client = client.clone();
            let body = body.clone();
            senders.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for index in 0.. {
                    let id = format!("evt_{cycle}_{connection}_{index}");
                    let status = try_post(&client, address, body(&id)).await;
                    if let Some(status) = status {
                        assert_eq!(status, StatusCode::OK, "{id} while the store was reachable");
                    }
                    outcomes.push((id, status.is_some()));
                    if status.is_none() {
                        break;
                    }
                }
                outcomes
            }));
        }
        tokio::time::sleep(Duration::from_millis(1000 + random(2000))).await;
        let wal = std::fs::metadata(dir.0.join("events.db-wal")).map_or(0, |meta| meta.len());
        let mut killed = receiver;
        let _ = killed.child.kill();
        let _ = killed.child.wait();
        for sender in senders {
            for (id, acked) in sender.await.unwrap() {
                if acked {
                    acknowledged.insert(id);
                } else {
                    unacknowledged.push(id);
                }
            }
        }
        eprintln!(
            "cycle {cycle}: log {} MiB at the kill, {} acknowledged",
            wal >> 20,
            acknowledged.len()
        );
        finished.push(killed);
    }
    let last = Receiver::start(&binary, &url, port, 0);
    handles_the_rest(
        &client,
        last,
        &body,
        &finished,
        acknowledged,
        unacknowledged,
    )
    .await;
}

/// A cheap pseudo-random sequence below a bound, seeded from the clock: the kill moments
/// differ from run to run.
fn kill_moments() -> impl FnMut(u64) -> u64 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    }
}

/// After the killed processes (`finished`), the `last` one gets everything: the retries
/// of the deliveries never acknowledged, then every stored event. Each acknowledged event
/// is handled by some process within 60 s, and no process handles one twice. Returns
/// `last`, stopped.
async fn handles_the_rest(
    client: &support::HttpClient,
    mut last: Receiver,
    body: &dyn Fn(&str) -> String,
    finished: &[Receiver],
    mut acknowledged: std::collections::HashSet<String>,
    unacknowledged: Vec<String>,
) -> Receiver {
    for id in unacknowledged {
        assert_eq!(
            support::post(client, last.address(), &body(&id)).await,
            StatusCode::OK
        );
        acknowledged.insert(id);
    }
    let total = |id: &str| finished.iter().map(|r| r.handled(id)).sum::<usize>() + last.handled(id);
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &acknowledged {
        while total(id) == 0 {
            assert!(
                Instant::now() < deadline,
                "{id} was acknowledged and never handled: {:?}",
                last.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(last.terminate(), Some(0));
    for (index, process) in finished.iter().chain(std::iter::once(&last)).enumerate() {
        for id in &acknowledged {
            assert!(
                process.handled(id) <= 1,
                "process {index} handled {id} {} times",
                process.handled(id)
            );
        }
    }
    last
}

/// A graceful stop right after a completion: the process exits before the writer's
/// truncation after a pause in the commits, and must not leave the completed body in the
/// write-ahead log (where it would stay for as long as the receiver is down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_body_does_not_outlive_a_graceful_stop_in_the_log() {
    let binary = receiver_binary(&[]);
    let dir = TempDir::new("erase-stop");
    let store = dir.0.join("events.db");
    let client = client();
    for round in 0..3 {
        let mut receiver = Receiver::start(
            &binary,
            &format!("sqlite:{}", store.display()),
            free_port(),
            0,
        );
        let id = format!("evt_stop_{round}");
        let body = serde_json::json!({
            "event": "message.received",
            "event_id": id,
            "inbox_id": "inb_1",
            "message": { "body_text": format!("PRIVATE-STOP-{}", "s".repeat(10_000)) },
        })
        .to_string();
        assert_eq!(
            support::post(&client, receiver.address(), &body).await,
            StatusCode::OK
        );
        receiver.wait_handled(&id, Duration::from_secs(30)).await;
        assert_eq!(receiver.terminate(), Some(0));
        let found = support::files::containing(&dir.0, b"PRIVATE-STOP-");
        assert!(
            found.is_empty(),
            "round {round}: a completed body left after a graceful stop in {found:?}"
        );
    }
}
