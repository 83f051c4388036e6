//! The receiver example as a process: each line it logs while serving reaches stderr in
//! one `write`. Stderr is unbuffered, and a line written in pieces (`eprintln!` writes one
//! per piece of its format, and `LogSafe` once wrote one per character) made the duplicate
//! line cost 26 system calls, more than the rest of the duplicate's work.
//!
//! Stderr here is a datagram socket, so every `write` arrives as one datagram and the test
//! sees exactly how each line was written. `cargo test --test receiver_stderr` builds the
//! example first when `cargo test` has not.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};

const SECRET: &str = "whsec_stderr_test";

/// The receiver example's binary, built when missing or out of date.
fn receiver_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let debug = deps.parent().unwrap().parent().unwrap();
    let status = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["build", "--quiet", "--example", "receiver"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the receiver example failed");
    debug.join("examples").join("receiver")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the receiver when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Posts `body` signed with `secret` as OpenMail signs (HMAC-SHA256 over `timestamp.body`,
/// in hex, computed with the hmac crate, not the crate under test) and returns the status.
fn post(port: u16, body: &str, secret: &str) -> u16 {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         X-Timestamp: {timestamp}\r\nX-Signature: {signature}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[test]
fn each_line_logged_while_serving_is_one_write() {
    let binary = receiver_binary();
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let port = free_port();
    let _receiver = Killed(
        Command::new(binary)
            .env_clear()
            .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::from(OwnedFd::from(theirs)))
            .spawn()
            .unwrap(),
    );
    let mut datagram = vec![0; 64 * 1024];
    let mut receive = || {
        let length = ours
            .recv(&mut datagram)
            .expect("the receiver writes to stderr");
        String::from_utf8_lossy(&datagram[..length]).into_owned()
    };

    // Start-up messages are not on the request path: only wait for the last one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut start_up = String::new();
    while !start_up.contains("/webhooks\n") {
        assert!(Instant::now() < deadline, "never listened: {start_up:?}");
        start_up.push_str(&receive());
    }

    let body = r#"{"event":"message.received","event_id":"evt_stderr_1","inbox_id":"inb_stderr","message":{"id":"msg_1"}}"#;
    assert_eq!(post(port, body, SECRET), 200);
    assert_eq!(post(port, body, SECRET), 200, "the duplicate");
    assert_eq!(post(port, body, "whsec_someone_else"), 400, "the forgery");

    let mut lines = Vec::new();
    while lines.len() < 2 {
        let written = receive();
        assert!(
            written.ends_with('\n') && written.matches('\n').count() == 1,
            "a stderr line arrived in pieces: {written:?} (after {lines:?})"
        );
        lines.push(written);
    }
    assert!(lines[0].starts_with("dedup: evt_stderr_1 (inbox inb_stderr): duplicate"));
    assert!(lines[1].starts_with("rejected: "), "{lines:?}");
}
