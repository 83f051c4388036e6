//! The receiver example in queue mode as two real replicas on one real PostgreSQL: started
//! at the same moment on an empty database, slow handlers, concurrent copies of each
//! delivery sent to both replicas and a few forgeries, one replica killed with `SIGKILL`
//! in the middle of the work and restarted at once on its port while the other keeps
//! running.
//!
//! A binary of its own (it starts processes and waits out a lease, about 40 s), run with
//! `cargo test --features postgres --test postgres_crash`. It builds the receiver example
//! with the features this test was built with, so that the crate is not rebuilt, and
//! starts PostgreSQL as `tests/postgres_support` describes.

#![cfg(feature = "postgres")]

#[path = "postgres_support/mod.rs"]
mod postgres_support;

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

const SECRET: &str = "whsec_postgres_crash_test";
const EVENTS: usize = 64;
const COPIES: usize = 3;
const WORK_MS: u64 = 1500;

/// The receiver example's binary, built with this test's features.
fn receiver_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let debug = deps.parent().unwrap().parent().unwrap();
    let binary = debug.join("examples").join("receiver");
    let features: Vec<&str> = [
        ("tracing", cfg!(feature = "tracing")),
        ("test-util", cfg!(feature = "test-util")),
        ("redis", cfg!(feature = "redis")),
        ("websocket", cfg!(feature = "websocket")),
        ("cli", cfg!(feature = "cli")),
        ("queue", cfg!(feature = "queue")),
        ("sqlite", cfg!(feature = "sqlite")),
        ("postgres", cfg!(feature = "postgres")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["build", "--quiet", "--example", "receiver", "--features"])
        .arg(features.join(","))
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

/// One receiver process, its stdout and stderr lines collected as they come.
struct Receiver {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(binary: &Path, url: &str, port: u16) -> Self {
        let mut child = Command::new(binary)
            .env_clear()
            .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
            .env("PORT", port.to_string())
            .env("OPENMAIL_QUEUE_URL", url)
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
            port,
            lines,
            stderr,
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
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

    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "SIGTERM did not stop the receiver"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
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

fn count<'a>(ids: impl IntoIterator<Item = &'a String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_killed_and_restarted_run_every_acknowledged_event() {
    let Some(url) = postgres_support::database("the PostgreSQL crash test").await else {
        return;
    };
    let binary = receiver_binary();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // Two replicas at the same moment, on an empty database: both create the schema.
    let mut killed = Receiver::start(&binary, &url, free_port());
    let mut survivor = Receiver::start(&binary, &url, free_port());
    killed.wait_listening();
    survivor.wait_listening();
    let replicas = [killed.address(), survivor.address()];

    // Every event in COPIES concurrent copies, each signed afresh, spread over both
    // replicas; forgeries between them.
    let bodies: Vec<(String, String)> = (0..EVENTS)
        .map(|index| {
            let id = format!("evt_pg_crash_{index}");
            (
                id.clone(),
                Sample::message_received().event_id(id).to_json(),
            )
        })
        .collect();
    let mut sends = Vec::new();
    for (index, (id, body)) in bodies.iter().enumerate() {
        for copy in 0..COPIES {
            let addr = replicas[(index + copy) % 2];
            let (client, id, body) = (client.clone(), id.clone(), body.clone());
            sends.push(tokio::spawn(async move {
                (id, deliver(&client, addr, &body, SECRET).await)
            }));
        }
    }
    for (index, addr) in replicas.iter().enumerate() {
        let body = Sample::message_received()
            .event_id(format!("evt_forged_{index}"))
            .to_json();
        let status = deliver(&client, *addr, &body, "whsec_not_the_secret").await;
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

    // Kill one while handlers run on both (64 events, 16 at a time, 1.5 s each: ~6 s),
    // and restart it at once on the same port while the other still works.
    tokio::time::sleep(Duration::from_millis(WORK_MS + 700)).await;
    let port = killed.port;
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let before_kill = killed.handled();
    let mut restarted = Receiver::start(&binary, &url, port);
    restarted.wait_listening();
    assert!(
        before_kill.len() + survivor.handled().len() < EVENTS,
        "the kill came after all the work; nothing was tested"
    );

    // The killed replica's claims run again once their leases (30 s) expire, on either.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let handled: HashSet<String> = before_kill
            .iter()
            .chain(&survivor.handled())
            .chain(&restarted.handled())
            .cloned()
            .collect();
        if handled.len() >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s, {} of {EVENTS} events were handled",
            handled.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A replay of a completed event, freshly signed, to each replica: acknowledged, not
    // handled again.
    let (replayed, body) = &bodies[0];
    for addr in [survivor.address(), restarted.address()] {
        assert_eq!(deliver(&client, addr, body, SECRET).await, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(WORK_MS + 1000)).await;

    let (survived, after_restart) = (survivor.handled(), restarted.handled());
    eprintln!(
        "handled: {} by the killed replica, {} by the survivor, {} after the restart",
        before_kill.len(),
        survived.len(),
        after_restart.len()
    );
    for lines in [&before_kill, &survived, &after_restart] {
        for (id, times) in count(lines) {
            assert_eq!(times, 1, "{id} printed twice by one process");
        }
    }
    let total = count(before_kill.iter().chain(&survived).chain(&after_restart));
    for id in &acknowledged {
        let times = total.get(id).copied().unwrap_or(0);
        assert!(times >= 1, "{id} was acknowledged and never handled");
        assert!(times <= 2, "{id} handled {times} times across one crash");
    }
    // Neither live replica crashed, so none of their events ran on the other: a replica
    // that starts never takes over an event a live replica is still running.
    let survived: HashSet<&String> = survived.iter().collect();
    for id in &after_restart {
        assert!(
            !survived.contains(id),
            "{id} ran on the survivor and on the restarted replica"
        );
    }
    assert_eq!(total.get(replayed).copied(), Some(1), "{replayed} replayed");
    assert!(total.keys().all(|id| !id.starts_with("evt_forged")));

    // Both stop gracefully; the table holds exactly one row per event, without bodies.
    survivor.terminate();
    restarted.terminate();
    let (sql, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = sql
        .query_one(
            "SELECT count(*), count(body), count(*) FILTER (WHERE state = 1) FROM openmail_events",
            &[],
        )
        .await
        .unwrap();
    let (rows, with_body, completed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        rows, EVENTS as i64,
        "one row per event: no copy, no forgery"
    );
    assert_eq!(
        with_body, 0,
        "completed events keep their key, not their body"
    );
    assert_eq!(completed, EVENTS as i64);
}
