//! The receiver example in queue mode, as real processes on a real SQLite file: slow
//! handlers, concurrent copies of each delivery and a few forgeries, a `SIGKILL` in the
//! middle of the work, and a restart on the same store and port.
//!
//! A binary of its own (it starts processes and waits for handlers for seconds), run with
//! `cargo test --test queue_crash`. It runs the receiver example's binary, building it
//! first when `cargo test` has not (with `--test queue_crash`, cargo builds no examples).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::test_util::Sample;

const SECRET: &str = "whsec_crash_test";
const EVENTS: usize = 40;
const COPIES: usize = 3;
const WORK_MS: u64 = 1500;

/// The receiver example's binary, built once per test run.
fn receiver_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let debug = deps.parent().unwrap().parent().unwrap();
    let binary = debug.join("examples").join("receiver");
    let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["build", "--quiet", "--example", "receiver"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the receiver example failed");
    assert!(binary.exists(), "no receiver at {}", binary.display());
    binary
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One receiver process, its stdout lines collected as they come.
struct Receiver {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(binary: &Path, store: &Path, port: u16) -> Self {
        let mut child = Command::new(binary)
            .env_clear()
            .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
            .env("PORT", port.to_string())
            .env("OPENMAIL_QUEUE_URL", format!("sqlite:{}", store.display()))
            .env("RECEIVER_WORK_MS", WORK_MS.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let collected = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        let err = BufReader::new(child.stderr.take().unwrap());
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the receiver exited with {status}: {:?}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(Instant::now() < deadline, "the receiver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The event ids of the `handled` lines so far.
    fn handled(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                assert_eq!(fields[0], "handled", "not a contract line: {line}");
                assert_eq!(fields.len(), 4, "not a contract line: {line}");
                fields[2].to_owned()
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn deliver(client: &HttpClient, addr: SocketAddr, body: &str, secret: &str) -> StatusCode {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let request = Request::post(format!("http://{addr}/webhooks"))
        .header("content-type", "application/json")
        .header("x-timestamp", &timestamp)
        .header(
            "x-signature",
            openmail_webhooks::sign(secret, &timestamp, body.as_bytes()),
        )
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

fn count(ids: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_receiver_runs_every_acknowledged_event_after_restart() {
    let binary = receiver_binary();
    let dir = std::env::temp_dir().join(format!("openmail-queue-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("events.db");
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let mut first = Receiver::start(&binary, &store, port);
    first.wait_listening(port);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the store holds email: owner only");
    }

    // Every event in COPIES concurrent copies, each signed afresh; forgeries between them.
    let bodies: Vec<(String, String)> = (0..EVENTS)
        .map(|index| {
            let id = format!("evt_crash_{index}");
            (
                id.clone(),
                Sample::message_received().event_id(id).to_json(),
            )
        })
        .collect();
    let mut sends = Vec::new();
    for (id, body) in &bodies {
        for _ in 0..COPIES {
            let (client, id, body) = (client.clone(), id.clone(), body.clone());
            sends.push(tokio::spawn(async move {
                (id, deliver(&client, addr, &body, SECRET).await)
            }));
        }
    }
    for index in 0..5 {
        let body = Sample::message_received()
            .event_id(format!("evt_forged_{index}"))
            .to_json();
        let status = deliver(&client, addr, &body, "whsec_not_the_secret").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "a forgery is refused");
    }
    let mut acknowledged = HashSet::new();
    for send in sends {
        let (id, status) = send.await.unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "every copy of {id} gets 2xx at its first try"
        );
        acknowledged.insert(id);
    }
    assert_eq!(acknowledged.len(), EVENTS);

    // Kill it while handlers are running (40 events, 8 at a time, 1.5 s each: ~7.5 s).
    tokio::time::sleep(Duration::from_millis(WORK_MS + 700)).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let before = first.handled();
    assert!(
        before.len() < EVENTS,
        "the kill came after all the work; nothing was tested"
    );
    for (id, times) in count(&before) {
        assert_eq!(times, 1, "{id} printed twice by one process");
    }

    // Restart on the same store and port: every event not completed runs, within 60 s.
    let mut second = Receiver::start(&binary, &store, port);
    second.wait_listening(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all: HashSet<String> = before.iter().cloned().collect();
        all.extend(second.handled());
        if all.len() >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s, {} of {EVENTS} events were handled",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A second process on the same file is refused at start, with a clear message.
    let mut third = Receiver::start(&binary, &store, free_port());
    let status = third.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    std::thread::sleep(Duration::from_millis(100));
    let message = third.stderr.lock().unwrap().join("\n");
    assert!(
        message.contains("in use by another process"),
        "unclear refusal: {message}"
    );

    // A replay of a completed event, freshly signed, is acknowledged and not handled again.
    let (replayed, body) = &bodies[0];
    let runs_before_replay = count(&second.handled()).get(replayed).copied();
    assert_eq!(deliver(&client, addr, body, SECRET).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(WORK_MS + 1000)).await;

    let after = second.handled();
    for (id, times) in count(&after) {
        assert_eq!(times, 1, "{id} printed twice by one process");
    }
    let mut total = count(&before);
    for id in &after {
        *total.entry(id.clone()).or_insert(0) += 1;
    }
    for id in &acknowledged {
        let times = total.get(id).copied().unwrap_or(0);
        assert!(times >= 1, "{id} was acknowledged and never handled");
        assert!(times <= 2, "{id} handled {times} times across one crash");
    }
    assert_eq!(
        count(&after).get(replayed).copied(),
        runs_before_replay,
        "the replay of {replayed} was handled again"
    );
    assert!(total.keys().all(|id| !id.starts_with("evt_forged")));

    // SIGTERM: the receiver stops gracefully; then the file holds exactly the 40 events.
    let pid = second.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "SIGTERM did not stop the receiver"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(second.child.wait().unwrap().code(), Some(0));
    let db = rusqlite::Connection::open(&store).unwrap();
    let (rows, with_body): (i64, i64) = db
        .query_row(
            "SELECT count(*), count(body) FROM openmail_events",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        rows, EVENTS as i64,
        "one row per event: no copy, no forgery"
    );
    assert_eq!(
        with_body, 0,
        "completed events keep their key, not their body"
    );
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn queue_mode_refuses_redis_beside_it_and_urls_it_cannot_use() {
    let binary = receiver_binary();
    let refused = |vars: &[(&str, &str)], says: &str| {
        let output = Command::new(&binary)
            .env_clear()
            .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
            .env("PORT", free_port().to_string())
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert!(stderr.contains(says), "{vars:?}: {stderr}");
        assert!(output.stdout.is_empty());
    };
    refused(
        &[
            ("OPENMAIL_QUEUE_URL", "sqlite:/tmp/never-created.db"),
            ("REDIS_URL", "redis://127.0.0.1:6379/"),
        ],
        "REDIS_URL and OPENMAIL_QUEUE_URL are both set",
    );
    refused(
        &[("OPENMAIL_QUEUE_URL", "sqlite:relative.db")],
        "absolute path",
    );
    refused(&[("OPENMAIL_QUEUE_URL", "mysql://db/")], "must be sqlite:");
    refused(&[("RECEIVER_WORK_MS", "soon")], "RECEIVER_WORK_MS");
}
