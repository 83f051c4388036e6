//! Real receiver processes in queue mode for the attack tests: started with the receiver
//! example's binary, their stdout lines collected, killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub mod files;

pub const SECRET: &str = "whsec_attack_test";

/// The receiver example's binary, built with `features` (once per test binary and
/// feature set; cargo does nothing when it is up to date).
pub fn receiver_binary(features: &[&str]) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let debug = deps.parent().unwrap().parent().unwrap();
    let binary = debug.join("examples").join("receiver");
    let mut command = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    command.args(["build", "--quiet", "--example", "receiver"]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the receiver example failed");
    binary
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory, deleted when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("openmail-attack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One receiver process, its stdout and stderr lines collected as they come.
pub struct Receiver {
    pub child: Child,
    pub port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    /// Starts the receiver on `queue_url` and waits until it listens.
    pub fn start(binary: &Path, queue_url: &str, port: u16, work_ms: u64) -> Self {
        let mut child = Command::new(binary)
            .env_clear()
            .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
            .env("PORT", port.to_string())
            .env("OPENMAIL_QUEUE_URL", queue_url)
            .env("RECEIVER_WORK_MS", work_ms.to_string())
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
        let mut receiver = Self {
            child,
            port,
            lines,
            stderr,
        };
        receiver.wait_listening();
        receiver
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the receiver exited with {status}: {:?}", self.stderr());
            }
            assert!(Instant::now() < deadline, "the receiver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// How many `handled` lines name `event_id`.
    pub fn handled(&self, event_id: &str) -> usize {
        self.lines()
            .iter()
            .filter(|line| line.split(' ').nth(2) == Some(event_id))
            .count()
    }

    /// Waits (up to `limit`) until `event_id` was handled at least once.
    pub async fn wait_handled(&self, event_id: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.handled(event_id) == 0 {
            assert!(
                Instant::now() < deadline,
                "{event_id} not handled within {limit:?}: {:?} {:?}",
                self.lines(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit (up to 60 s) and returns its code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "SIGTERM did not stop the receiver"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `body` freshly signed with `secret` as `method`; the status and the body.
pub async fn deliver(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    body: &[u8],
    secret: &str,
) -> (StatusCode, Bytes) {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/webhooks"))
        .header("content-type", "application/json")
        .header("x-timestamp", &timestamp)
        .header(
            "x-signature",
            openmail_webhooks::sign(secret, &timestamp, body),
        )
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

pub async fn post(client: &HttpClient, addr: SocketAddr, body: &str) -> StatusCode {
    deliver(client, addr, Method::POST, body.as_bytes(), SECRET)
        .await
        .0
}
