//! The local-development tools against independent and real receivers: `openmail-webhooks
//! send`, run as the installed binary, against a python3 receiver written from the
//! documented formula (tests/python_receiver.py); `openmail-webhooks listen` against the
//! test OpenMail WebSocket server (tests/websocket_support), forwarding to the receiver
//! example and to the python receiver on loopback; and the `test_util` samples and requests
//! against both the python receiver and the layer.
#![cfg(feature = "test-util")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::support;
use crate::support::SECRET;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use openmail_webhooks::test_util::Sample;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// tests/python_receiver.py, running on a free loopback port until dropped.
struct PythonReceiver {
    child: Child,
    addr: SocketAddr,
}

impl PythonReceiver {
    fn start(secret: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .env("OPENMAIL_WEBHOOK_SECRET", secret)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the independent receiver these tests compare against");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the receiver: {line:?}"));
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    fn url(&self) -> String {
        format!("http://{}/webhooks", self.addr)
    }
}

impl Drop for PythonReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text:?}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Sends `request` to a real server at `addr`.
async fn over_http(addr: SocketAddr, request: Request<String>) -> (StatusCode, Value) {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
    let request = Request::from_parts(parts, Full::new(Bytes::from(body)));
    let (status, body) = support::read(support::client().request(request).await.unwrap()).await;
    (status, json(&body))
}

#[cfg(feature = "cli")]
mod send {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::routing::post;
    use futures_util::StreamExt;
    use http::HeaderMap;

    use super::*;

    /// One run of `openmail-webhooks send`.
    struct Run {
        code: i32,
        stdout: String,
        stderr: String,
    }

    /// One request as `send` printed it: the summary line, the status line, and the answer.
    #[derive(Debug)]
    struct Exchange {
        summary: String,
        status: String,
        answer: String,
    }

    impl Run {
        fn exchanges(&self) -> Vec<Exchange> {
            let mut exchanges: Vec<Exchange> = Vec::new();
            for line in self.stdout.lines() {
                if line.starts_with("> POST ") {
                    exchanges.push(Exchange {
                        summary: line.to_owned(),
                        status: String::new(),
                        answer: String::new(),
                    });
                } else if let Some(exchange) = exchanges.last_mut() {
                    match line.strip_prefix("< ") {
                        Some(status) if exchange.status.is_empty() => {
                            exchange.status = status.to_owned()
                        }
                        _ => exchange.answer.push_str(line),
                    }
                }
            }
            exchanges
        }

        /// The python receiver's reports, one per delivery.
        fn reports(&self) -> Vec<Value> {
            self.exchanges()
                .iter()
                .map(|exchange| json(&exchange.answer))
                .collect()
        }
    }

    fn send(args: &[&str], secret: Option<&str>) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_openmail-webhooks"));
        command.arg("send").args(args);
        command.env_remove("OPENMAIL_WEBHOOK_SECRET");
        if let Some(secret) = secret {
            command.env("OPENMAIL_WEBHOOK_SECRET", secret);
        }
        let output = command.output().unwrap();
        Run {
            code: output.status.code().unwrap(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    #[test]
    fn python_accepts_every_sample_and_it_is_the_test_util_one() {
        let python = PythonReceiver::start(SECRET);
        for event_type in Sample::EVENT_TYPES {
            let run = send(&["--event", event_type, &python.url()], Some(SECRET));
            assert_eq!(run.code, 0, "{event_type}: {}{}", run.stdout, run.stderr);
            let exchanges = run.exchanges();
            let [exchange] = &exchanges[..] else {
                panic!("one delivery expected: {}", run.stdout)
            };
            assert_eq!(exchange.status, "200 OK", "the status is printed");
            let report = json(&exchange.answer);
            assert_eq!(report["event"], event_type);
            assert_eq!(report["content_type"], "application/json");
            let event_id = report["event_id"].as_str().unwrap();
            assert!(event_id.starts_with("evt_local_"), "{event_id}");
            assert_eq!(report["x_event_id"], event_id);
            assert!(
                exchange
                    .summary
                    .contains(&format!("X-Event-Id {event_id},")),
                "{}",
                exchange.summary
            );
            // Byte for byte the sample users' tests get, at the second it was signed.
            let timestamp: i64 = report["x_timestamp"].as_str().unwrap().parse().unwrap();
            let expected = Sample::of_type(event_type)
                .unwrap()
                .event_id(event_id)
                .at(timestamp)
                .to_json();
            assert_eq!(report["body"], expected.as_str());
            assert_eq!(report["body_sha256"], sha256_hex(expected.as_bytes()));
        }
    }

    #[test]
    fn the_options_shape_the_sample() {
        let python = PythonReceiver::start(SECRET);
        let run = send(
            &[
                "--event-id",
                "evt_shape",
                "--inbox-id",
                "inb_shape",
                "--attempt",
                "4",
                &python.url(),
            ],
            Some(SECRET),
        );
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let report = &run.reports()[0];
        let sent = json(report["body"].as_str().unwrap());
        assert_eq!(sent["event"], "message.received");
        assert_eq!(sent["event_id"], "evt_shape");
        assert_eq!(sent["inbox_id"], "inb_shape");
        assert_eq!(sent["attempt"], 4);
        assert_eq!(report["x_event_id"], "evt_shape");
        let attachment = &sent["message"]["attachments"][0];
        assert_eq!(attachment["contentType"], "application/pdf");

        let run = send(
            &[
                "--event",
                "inbox.suspended",
                "--inbox-id",
                "inb_s",
                &python.url(),
            ],
            Some(SECRET),
        );
        let sent = json(run.reports()[0]["body"].as_str().unwrap());
        assert_eq!(sent["inbox_id"], "inb_s");
        assert_eq!(sent["reason"], "high_bounce_rate");
    }

    #[test]
    fn a_file_is_sent_byte_for_byte() {
        let python = PythonReceiver::start(SECRET);
        // Spacing, key order, escapes and non-ASCII that a re-serialiser would change.
        let body = "{ \"event\" : \"message.received\",\n  \"event_id\":\"evt_file\", \
                    \"subject\":\"caf\\u00e9 – ☕\", \"n\": 1.50 }\n";
        let path = std::env::temp_dir().join(format!("openmail-send-{}.json", std::process::id()));
        std::fs::write(&path, body).unwrap();
        let run = send(&[&python.url(), path.to_str().unwrap()], Some(SECRET));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let report = &run.reports()[0];
        assert_eq!(report["body_sha256"], sha256_hex(body.as_bytes()));
        assert_eq!(report["body"], body);
        assert_eq!(report["x_event_id"], "evt_file");
    }

    #[test]
    fn a_file_sent_again_gets_a_fresh_signature_and_keeps_its_fresh_x_event_id() {
        let python = PythonReceiver::start(SECRET);
        let path =
            std::env::temp_dir().join(format!("openmail-send-noid-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"event":"setup.test"}"#).unwrap();
        let run = send(
            &["--times", "3", &python.url(), path.to_str().unwrap()],
            Some(SECRET),
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("FILE has no string event_id"),
            "{}",
            run.stdout
        );
        let reports = run.reports();
        assert_eq!(reports.len(), 3);
        let first = reports[0]["x_event_id"].as_str().unwrap();
        assert!(first.starts_with("evt_local_"), "{first}");
        let mut signatures = std::collections::HashSet::new();
        for report in &reports {
            assert_eq!(report["x_event_id"], first);
            signatures.insert(report["x_signature"].as_str().unwrap().to_owned());
        }
        // The same bytes three times: only a new X-Timestamp can make each signature new.
        assert_eq!(signatures.len(), 3, "{}", run.stdout);
    }

    #[test]
    fn retries_repeat_the_event_with_fresh_signatures_and_attempts() {
        let python = PythonReceiver::start(SECRET);
        let run = send(
            &[
                "--times",
                "3",
                "--attempt",
                "2",
                "--event-id",
                "evt_retry",
                &python.url(),
            ],
            Some(SECRET),
        );
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let reports = run.reports();
        assert_eq!(reports.len(), 3);
        for (index, report) in reports.iter().enumerate() {
            assert_eq!(report["ok"], true);
            assert_eq!(report["event_id"], "evt_retry");
            assert_eq!(report["x_event_id"], "evt_retry");
            assert_eq!(report["attempt"], index as u64 + 2);
            // The receiver saw the same event_id once more each time: what deduplication
            // keys on.
            assert_eq!(report["times_seen"], index as u64 + 1);
        }
        let signatures: std::collections::HashSet<_> = reports
            .iter()
            .map(|report| report["x_signature"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(signatures.len(), 3, "each attempt is signed afresh");
        for (index, exchange) in run.exchanges().iter().enumerate() {
            assert!(
                exchange
                    .summary
                    .contains(&format!("delivery {} of 3", index + 1)),
                "{}",
                exchange.summary
            );
        }
    }

    #[tokio::test]
    async fn python_refuses_tampered_stale_and_wrongly_signed_deliveries() {
        let python = PythonReceiver::start(SECRET);
        // The independent receiver must be able to say no, or its yes proves nothing.
        let body = br#"{"event":"message.received","event_id":"evt_t"}"#;
        let headers = support::signed_headers(SECRET, support::unix_now(), body);
        let client = support::client();
        let (status, _) =
            support::post(&client, python.addr, "/webhooks", &headers, &body[..]).await;
        assert_eq!(status, StatusCode::OK);
        let tampered = br#"{"event":"message.received","event_id":"evt_T"}"#;
        let (status, answer) =
            support::post(&client, python.addr, "/webhooks", &headers, &tampered[..]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json(&answer)["reason"], "signature mismatch");

        let run = send(&[&python.url()], Some("whsec_not_the_one"));
        assert_eq!(run.code, 1);
        let exchanges = run.exchanges();
        assert_eq!(exchanges[0].status, "400 Bad Request");
        assert_eq!(json(&exchanges[0].answer)["reason"], "signature mismatch");

        let run = send(&["--skew", "-400", &python.url()], Some(SECRET));
        assert_eq!(run.code, 1);
        assert_eq!(run.reports()[0]["reason"], "stale");
        assert!(run.stdout.contains("skewed -400 s"), "{}", run.stdout);
    }

    #[test]
    fn the_exit_code_follows_the_answers() {
        let python = PythonReceiver::start(SECRET);
        let url = python.url();

        assert_eq!(send(&[&url], Some(SECRET)).code, 0);
        assert_eq!(send(&[&url], Some("whsec_wrong")).code, 1);
        assert_eq!(send(&["--skew", "400", &url], Some(SECRET)).code, 1);

        let run = send(&[&url], None);
        assert_eq!(run.code, 2);
        assert!(
            run.stderr.contains("OPENMAIL_WEBHOOK_SECRET is not set"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty());

        let run = send(&[], Some(SECRET));
        assert_eq!(run.code, 2);
        assert!(
            run.stderr.contains("send: URL is missing"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("usage: send [OPTIONS] URL [FILE]"));

        let run = send(&["--bogus", &url], Some(SECRET));
        assert_eq!(run.code, 2);
        assert!(
            run.stderr.contains("unknown option --bogus"),
            "{}",
            run.stderr
        );

        let run = send(&["--help"], None);
        assert_eq!(run.code, 0);
        assert!(run.stdout.starts_with("usage: send [OPTIONS] URL [FILE]\n"));
        for option in [
            "--event TYPE",
            "--event-id ID",
            "--inbox-id ID",
            "--attempt N",
            "--times N",
            "--skew SECONDS",
            "--as-openmail",
            "--speedup N",
            "--print-body",
            "-h, --help",
        ] {
            assert!(run.stdout.contains(option), "{option}");
        }

        // Nothing listens on the port python had once it is gone.
        drop(python);
        let run = send(&[&url], Some(SECRET));
        assert_eq!(run.code, 1);
        assert!(run.stderr.contains("cannot reach"), "{}", run.stderr);
    }

    /// A receiver on a loopback port that answers the first `failures` requests with
    /// `503` and the rest with `200`, recording each request's headers and body.
    async fn failing_receiver(failures: usize) -> (String, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
        let seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
        let app = {
            let seen = Arc::clone(&seen);
            Router::new().route(
                "/webhooks",
                post(move |headers: HeaderMap, body: Bytes| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let mut seen = seen.lock().unwrap();
                        seen.push((headers, body));
                        if seen.len() <= failures {
                            (StatusCode::SERVICE_UNAVAILABLE, "busy, try later")
                        } else {
                            (StatusCode::OK, "ok")
                        }
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/webhooks"), seen)
    }

    async fn send_async(args: &[&str]) -> (Run, Duration) {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = send(&args, Some(SECRET));
            (run, started.elapsed())
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn as_openmail_retries_on_openmails_schedule_until_the_first_2xx() {
        let (url, seen) = failing_receiver(2).await;
        let (run, _) = send_async(&[
            "--as-openmail",
            "--speedup",
            "100",
            "--print-body",
            "--event-id",
            "evt_om",
            &url,
        ])
        .await;
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "stops at the first 2xx: {}", run.stdout);
        let exchanges = run.exchanges();
        let statuses: Vec<&str> = exchanges.iter().map(|e| e.status.as_str()).collect();
        assert_eq!(
            statuses,
            [
                "503 Service Unavailable",
                "503 Service Unavailable",
                "200 OK"
            ]
        );
        for (index, exchange) in exchanges.iter().enumerate() {
            assert!(
                exchange
                    .summary
                    .contains(&format!("attempt {} of 5", index + 1)),
                "{}",
                exchange.summary
            );
        }
        assert!(
            run.stdout
                .contains("next attempt in 0.3 s (OpenMail waits 30 s)"),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout
                .contains("next attempt in 0.6 s (OpenMail waits 60 s)"),
            "{}",
            run.stdout
        );
        // Each attempt signed afresh, as the next attempt of the same event; the body
        // printed is the body sent.
        let mut signatures = std::collections::HashSet::new();
        for (index, (headers, body)) in seen.iter().enumerate() {
            let signature = headers["x-signature"].to_str().unwrap().to_owned();
            let timestamp: i64 = headers["x-timestamp"].to_str().unwrap().parse().unwrap();
            let age = support::unix_now() - timestamp;
            assert!((0..=30).contains(&age), "a fresh X-Timestamp: {age} s old");
            signatures.insert(signature);
            let sent = json(std::str::from_utf8(body).unwrap());
            assert_eq!(sent["event_id"], "evt_om");
            assert_eq!(sent["attempt"], index as u64 + 1);
            assert_eq!(headers["x-event-id"], "evt_om");
            assert!(
                run.stdout.contains(std::str::from_utf8(body).unwrap()),
                "--print-body prints what was sent"
            );
        }
        assert_eq!(signatures.len(), 3);
    }

    /// OpenMail's 15 s wait is not scaled by `--speedup`: a receiver that does not answer
    /// the first attempt in time sees the next one after the wait and the scaled delay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn as_openmail_counts_an_answer_not_given_within_15_s_as_failed_and_retries() {
        let seen = Arc::new(Mutex::new(0_usize));
        let app = {
            let seen = Arc::clone(&seen);
            Router::new().route(
                "/webhooks",
                post(move || {
                    let seen = Arc::clone(&seen);
                    async move {
                        let first = {
                            let mut seen = seen.lock().unwrap();
                            *seen += 1;
                            *seen == 1
                        };
                        if first {
                            // Longer than OpenMail waits.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                        (StatusCode::OK, "ok")
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let url = format!("http://{addr}/webhooks");
        let (run, elapsed) = send_async(&["--as-openmail", "--speedup", "100", &url]).await;
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(*seen.lock().unwrap(), 2);
        let exchanges = run.exchanges();
        assert_eq!(exchanges.len(), 2, "{}", run.stdout);
        assert!(
            exchanges[0].status.starts_with("no answer:")
                && exchanges[0].status.contains("did not answer within 15 s"),
            "{}",
            run.stdout
        );
        assert_eq!(exchanges[1].status, "200 OK");
        // The wait itself is not scaled: 15 s, then the first delay (30 s / 100).
        assert!(elapsed >= Duration::from_millis(15_300), "{elapsed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn as_openmail_gives_up_after_five_attempts() {
        let (url, seen) = failing_receiver(usize::MAX).await;
        let (run, elapsed) = send_async(&["--as-openmail", "--speedup", "100", &url]).await;
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert_eq!(seen.lock().unwrap().len(), 5);
        assert_eq!(run.exchanges().len(), 5);
        assert!(
            run.stdout.contains("gave up after 5 attempts"),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout.contains("(OpenMail waits 240 s)"),
            "{}",
            run.stdout
        );
        // The four delays, scaled: 0.3 + 0.6 + 1.2 + 2.4 s at least.
        assert!(elapsed >= Duration::from_millis(4500), "{elapsed:?}");

        // The mode's options are checked.
        let run = send(&["--as-openmail", "--times", "2", &url], Some(SECRET));
        assert_eq!(run.code, 2);
        assert!(run.stderr.contains("don't go together"), "{}", run.stderr);
        let run = send(&["--speedup", "10", &url], Some(SECRET));
        assert_eq!(run.code, 2);
        assert!(run.stderr.contains("add --as-openmail"), "{}", run.stderr);
        let run = send(&["--as-openmail", "--speedup", "0", &url], Some(SECRET));
        assert_eq!(run.code, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_id_that_cannot_be_a_header_is_still_sent() {
        let (url, seen) = failing_receiver(0).await;
        let path =
            std::env::temp_dir().join(format!("openmail-send-badid-{}.json", std::process::id()));
        std::fs::write(
            &path,
            "{\"event\":\"setup.test\",\"event_id\":\"evt_\\n\\u001b[2J\"}",
        )
        .unwrap();
        let (run, _) = send_async(&[&url, path.to_str().unwrap()]).await;
        std::fs::remove_file(&path).unwrap();
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].0.get("x-event-id").is_none());
        assert!(
            run.stdout.contains("X-Event-Id is left out"),
            "{}",
            run.stdout
        );
        assert!(!run.stdout.contains('\u{1b}'), "{}", run.stdout);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_huge_answer_is_read_in_bounded_memory() {
        // 256 MiB of answer, streamed; the receiver then holds the connection open
        // until the test has looked at send's memory.
        const CHUNK: usize = 1 << 20;
        const CHUNKS: usize = 256;
        let release = Arc::new(tokio::sync::Notify::new());
        let (sent, all_sent) = tokio::sync::oneshot::channel::<()>();
        let sent = Arc::new(Mutex::new(Some(sent)));
        let app = {
            let release = Arc::clone(&release);
            Router::new().route(
                "/webhooks",
                post(move || {
                    let release = Arc::clone(&release);
                    let sent = Arc::clone(&sent);
                    async move {
                        let chunks = futures_util::stream::iter(0..=CHUNKS).then(move |index| {
                            let release = Arc::clone(&release);
                            let sent = Arc::clone(&sent);
                            async move {
                                if index == CHUNKS {
                                    // Every chunk before is written: send has read all but
                                    // what the socket buffers hold.
                                    if let Some(sent) = sent.lock().unwrap().take() {
                                        let _ = sent.send(());
                                    }
                                    release.notified().await;
                                    return Ok::<_, std::io::Error>(Bytes::from_static(b"end"));
                                }
                                Ok(Bytes::from(vec![b'x'; CHUNK]))
                            }
                        });
                        axum::body::Body::from_stream(chunks)
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let child = Command::new(env!("CARGO_BIN_EXE_openmail-webhooks"))
            .args(["send", &format!("http://{addr}/webhooks")])
            .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = format!("/proc/{}/status", child.id());
        tokio::time::timeout(Duration::from_secs(60), all_sent)
            .await
            .expect("send did not read the answer")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let peak_kib: u64 = std::fs::read_to_string(&status)
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        release.notify_one();
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(output.status.code(), Some(0), "{stdout}");
        assert!(
            peak_kib < 64 * 1024,
            "a 256 MiB answer peaked at {peak_kib} KiB"
        );
        let total = CHUNK * CHUNKS + 3;
        assert!(
            stdout.contains(&format!("…(+{} bytes)", total - 64 * 1024)),
            "the rest is counted: {}",
            &stdout[stdout.len().saturating_sub(200)..]
        );
    }

    #[test]
    fn the_tool_names_its_commands() {
        let tool = || Command::new(env!("CARGO_BIN_EXE_openmail-webhooks"));
        let help = tool().arg("--help").output().unwrap();
        assert!(help.status.success());
        let help = String::from_utf8(help.stdout).unwrap();
        assert!(help.contains("send "), "{help}");
        let none = tool().output().unwrap();
        assert_eq!(none.status.code(), Some(2));
        let unknown = tool().arg("tunnel\x1b[2J").output().unwrap();
        assert_eq!(unknown.status.code(), Some(2));
        let stderr = String::from_utf8(unknown.stderr).unwrap();
        assert!(
            stderr.contains(r#"unknown command "tunnel\u{1b}[2J""#),
            "{stderr}"
        );
        let version = tool().arg("--version").output().unwrap();
        assert_eq!(
            String::from_utf8(version.stdout).unwrap(),
            format!("openmail-webhooks {}\n", env!("CARGO_PKG_VERSION"))
        );
    }

    /// On Unix an argument is any bytes. Where the tool needs text (the command, an
    /// option's value, the URL) one that is not UTF-8 is a usage error that shows it,
    /// escaped; a FILE is a path, and is sent whatever its name's bytes.
    #[cfg(unix)]
    #[test]
    fn an_argument_that_is_not_utf8_is_a_usage_error_or_a_path() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;

        let run = |args: &[&OsStr]| {
            let output = Command::new(env!("CARGO_BIN_EXE_openmail-webhooks"))
                .args(args)
                .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
                .env("OPENMAIL_API_KEY", "om_not_used")
                .env_remove("OPENMAIL_WS_URL")
                .output()
                .unwrap();
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let text = OsStr::new;
        let bad = OsStr::from_bytes(b"evt_\xff\x1b[2J");
        let inline = OsStr::from_bytes(b"--event-id=evt_\xff\x1b[2J");
        let url = text("http://127.0.0.1:9/webhooks");
        for (args, says) in [
            (vec![bad], "unknown command"),
            (
                vec![text("send"), text("--event-id"), bad, url],
                "--event-id",
            ),
            (vec![text("send"), inline, url], "--event-id"),
            (vec![text("send"), text("--event"), bad, url], "--event"),
            (vec![text("send"), bad], "URL"),
            (vec![text("listen"), text("--inbox-id"), bad], "--inbox-id"),
            (
                vec![text("listen"), text("--forward-to"), bad],
                "--forward-to",
            ),
            (vec![text("listen"), bad], "unexpected argument"),
        ] {
            let (code, _, stderr) = run(&args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains(says), "{args:?}: {stderr}");
            assert!(
                stderr.contains(r#""evt_\xFF\u{1b}[2J""#),
                "{args:?}: {stderr}"
            );
            assert!(stderr.contains("usage: "), "{args:?}: {stderr}");
        }

        let python = PythonReceiver::start(SECRET);
        let dir = std::env::temp_dir();
        let mut name = format!("openmail-send-{}-", std::process::id()).into_bytes();
        name.extend_from_slice(b"\xff.json");
        let path = dir.join(OsStr::from_bytes(&name));
        let body = r#"{"event":"message.received","event_id":"evt_path"}"#;
        std::fs::write(&path, body).unwrap();
        let (code, stdout, stderr) = run(&[text("send"), text(&python.url()), path.as_os_str()]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("X-Event-Id evt_path"), "{stdout}");
    }
}

mod test_util {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::{Extension, Router, routing::post};
    use openmail_webhooks::test_util::TestDelivery;
    use openmail_webhooks::verify::Rejection;
    use openmail_webhooks::{Event, VerifyError, VerifyOpenMailLayer};
    use tower::ServiceExt;

    use super::*;

    const BODY: &str = r#"{"event":"message.received","event_id":"evt_tu","inbox_id":"inb_1"}"#;

    #[tokio::test]
    async fn python_accepts_test_util_requests_and_refuses_its_forgeries() {
        let python = PythonReceiver::start(SECRET);
        let delivery = TestDelivery::new(SECRET, BODY);
        let (status, report) = over_http(python.addr, delivery.request()).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["x_event_id"], "evt_tu");
        assert_eq!(report["content_type"], "application/json");
        assert_eq!(report["body_sha256"], sha256_hex(BODY.as_bytes()));

        for (forgery, reason) in [
            (delivery.tampered(), "signature mismatch"),
            (delivery.wrong_secret(), "signature mismatch"),
            (delivery.stale(), "stale"),
            (delivery.without_header("x-signature"), "missing header"),
            (delivery.without_header("x-timestamp"), "missing header"),
        ] {
            let (status, report) = over_http(python.addr, forgery).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{report}");
            assert_eq!(report["reason"], reason);
        }
    }

    #[tokio::test]
    async fn python_accepts_every_sample_delivered() {
        let python = PythonReceiver::start(SECRET);
        for event_type in Sample::EVENT_TYPES {
            let sample = Sample::of_type(event_type).unwrap().event_id("evt_s");
            let delivery = sample.deliver(SECRET);
            let (status, report) = over_http(python.addr, delivery.request()).await;
            assert_eq!(status, StatusCode::OK, "{report}");
            assert_eq!(report["event"], event_type);
            assert_eq!(report["x_event_id"], "evt_s");
            assert_eq!(report["body"], delivery.body());
        }
    }

    #[tokio::test]
    async fn a_sample_reaches_the_handler_as_the_typed_event_it_names() {
        const NOW: i64 = 1_790_000_000;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = {
            let seen = Arc::clone(&seen);
            let layer = VerifyOpenMailLayer::new(SECRET).unwrap().clock(|| NOW);
            Router::new()
                .route(
                    "/webhooks",
                    post(move |Extension(event): Extension<Arc<Event>>| async move {
                        seen.lock().unwrap().push(event);
                    }),
                )
                .layer(layer)
        };
        for (sample, inbox) in [
            (Sample::message_received().inbox_id("inb_x"), Some("inb_x")),
            (Sample::inbox_suspended().inbox_id("inb_y"), Some("inb_y")),
            (Sample::inbox_reactivated(), Some("inb_92ma")),
            (Sample::pod_suspended(), None),
            (Sample::pod_reactivated(), None),
            (Sample::setup_test(), Some("inb_92ma")),
        ] {
            let request = sample.event_id("evt_h").at(NOW).deliver(SECRET).request();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let event = seen.lock().unwrap().pop().unwrap();
            assert_eq!(event.event_id(), Some("evt_h"));
            assert_eq!(event.inbox_id(), inbox);
            match &*event {
                Event::MessageReceived(received) => {
                    assert_eq!(received.message.attachments().len(), 1)
                }
                Event::InboxSuspended(lifecycle) => {
                    assert_eq!(lifecycle.reason().unwrap().as_str(), "high_bounce_rate")
                }
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn the_layer_names_each_forgery_and_the_handler_never_sees_one() {
        const NOW: i64 = 1_790_000_000;
        let calls = Arc::new(AtomicUsize::new(0));
        let rejections = Arc::new(Mutex::new(Vec::new()));
        let app = {
            let calls = Arc::clone(&calls);
            let rejections = Arc::clone(&rejections);
            let layer = VerifyOpenMailLayer::new(SECRET)
                .unwrap()
                .clock(|| NOW)
                .on_rejection(move |rejection: &Rejection| {
                    rejections
                        .lock()
                        .unwrap()
                        .push(rejection.verify_error().cloned());
                });
            Router::new()
                .route(
                    "/webhooks",
                    post(move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        "handled"
                    }),
                )
                .layer(layer)
        };
        let delivery = TestDelivery::new(SECRET, BODY).timestamp(NOW);

        let response = app.clone().oneshot(delivery.request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = app
            .clone()
            .oneshot(delivery.without_header("x-event-id"))
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "X-Event-Id is not signed"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        for (forgery, expected) in [
            (delivery.tampered(), VerifyError::SignatureMismatch),
            (delivery.wrong_secret(), VerifyError::SignatureMismatch),
            (
                delivery.stale(),
                VerifyError::TimestampOutsideTolerance {
                    offset: 301,
                    tolerance: 300,
                },
            ),
            (
                delivery.without_header("X-Signature"),
                VerifyError::MissingHeader {
                    name: "x-signature",
                },
            ),
            (
                delivery.without_header("x-timestamp"),
                VerifyError::MissingHeader {
                    name: "x-timestamp",
                },
            ),
        ] {
            let response = app.clone().oneshot(forgery).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            assert_eq!(
                rejections.lock().unwrap().pop(),
                Some(Some(expected.clone())),
                "{expected}"
            );
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "no forgery reached the handler"
        );

        // 300 s is inside the window, 301 s is not, whatever the body.
        let edge = TestDelivery::new(SECRET, BODY).timestamp(NOW - 300);
        let response = app.clone().oneshot(edge.request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// `openmail-webhooks listen` against the test OpenMail WebSocket server, forwarding to real
/// receivers on loopback.
#[cfg(feature = "cli")]
mod listen {
    use std::collections::HashMap;
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::Request as AxumRequest;
    use axum::middleware::{Next, from_fn};
    use axum::routing::post;
    use axum::{Extension, Router};
    use openmail_webhooks::{Event, VerifyOpenMailLayer};
    use tokio::sync::mpsc;

    use super::*;
    use crate::websocket_support::{API_KEY, TestServer};

    /// A running `listen`, its output read line by line as it comes.
    struct Listen {
        child: Child,
        stdout: mpsc::UnboundedReceiver<String>,
        stdout_seen: Vec<String>,
        stderr: Arc<Mutex<String>>,
    }

    impl Listen {
        /// `listen ARGS`; with `--forward-to`, also `--allow-plain-ws`, since the test
        /// server speaks plain `ws://`.
        fn spawn(args: &[&str], ws_url: &str, api_key: &str) -> Self {
            let plain = args.contains(&"--forward-to") && ws_url.starts_with("ws://");
            let mut child = Command::new(env!("CARGO_BIN_EXE_openmail-webhooks"))
                .arg("listen")
                .args(args)
                .args(plain.then_some("--allow-plain-ws"))
                .env("OPENMAIL_API_KEY", api_key)
                .env("OPENMAIL_WS_URL", ws_url)
                .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (lines, stdout) = mpsc::unbounded_channel();
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
            let stderr = Arc::new(Mutex::new(String::new()));
            let sink = Arc::clone(&stderr);
            let mut err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut buffer = [0; 4096];
                while let Ok(read @ 1..) = err.read(&mut buffer) {
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buffer[..read]));
                }
            });
            Self {
                child,
                stdout,
                stdout_seen: Vec::new(),
                stderr,
            }
        }

        fn stderr(&self) -> String {
            self.stderr.lock().unwrap().clone()
        }

        /// The next stdout line.
        async fn line(&mut self) -> String {
            match tokio::time::timeout(Duration::from_secs(20), self.stdout.recv()).await {
                Ok(Some(line)) => {
                    self.stdout_seen.push(line.clone());
                    line
                }
                _ => panic!(
                    "no stdout line; so far {:?}\nstderr:\n{}",
                    self.stdout_seen,
                    self.stderr()
                ),
            }
        }

        /// Reads stdout until `count` lines start with `prefix`; returns every line read.
        async fn lines_until(&mut self, prefix: &str, count: usize) -> Vec<String> {
            let mut read = Vec::new();
            while read
                .iter()
                .filter(|line: &&String| line.starts_with(prefix))
                .count()
                < count
            {
                read.push(self.line().await);
            }
            read
        }

        /// SIGINT, as Ctrl-C sends it, and the exit code.
        async fn interrupt(mut self) -> (i32, String) {
            let pid = self.child.id().to_string();
            let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
            assert!(status.success());
            for _ in 0..500 {
                if let Some(status) = self.child.try_wait().unwrap() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return (status.code().unwrap_or(-1), self.stderr());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("listen did not stop on SIGINT:\n{}", self.stderr());
        }

        async fn exit_code(mut self) -> (i32, String) {
            for _ in 0..1000 {
                if let Some(status) = self.child.try_wait().unwrap() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return (status.code().unwrap_or(-1), self.stderr());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("listen did not exit:\n{}", self.stderr());
        }
    }

    impl Drop for Listen {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Every request a receiver got, by `X-Event-Id`.
    type Seen = Arc<Mutex<Vec<String>>>;

    /// Serves `app` on a loopback port, counting each request's `X-Event-Id` before the
    /// app sees it. Returns its `/webhooks` URL.
    async fn serve(app: Router) -> (String, Seen) {
        serve_slowly(app, &[]).await
    }

    /// Like [`serve`], and answers the events in `slow` only after 4 s.
    async fn serve_slowly(app: Router, slow: &[String]) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let counter = Arc::clone(&seen);
        let slow: Arc<[String]> = slow.into();
        let app = app.layer(from_fn(move |request: AxumRequest, next: Next| {
            let counter = Arc::clone(&counter);
            let slow = Arc::clone(&slow);
            async move {
                let id = request
                    .headers()
                    .get("x-event-id")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                counter.lock().unwrap().push(id.clone());
                if slow.contains(&id) {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                }
                next.run(request).await
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/webhooks"), seen)
    }

    fn counts(seen: &Seen) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for id in seen.lock().unwrap().iter() {
            *counts.entry(id.clone()).or_default() += 1;
        }
        counts
    }

    fn message(event_id: &str) -> String {
        Sample::message_received().event_id(event_id).to_json()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listen_prints_one_escaped_line_per_event_and_stops_on_ctrl_c() {
        let server = TestServer::start().await;
        let mut listen = Listen::spawn(&[], &server.url(), API_KEY);
        server.wait_subscribed(1).await;
        server.push(
            &Sample::message_received()
                .event_id("evt_a")
                .inbox_id("inb_1")
                .to_json(),
        );
        server.push(&Sample::inbox_suspended().event_id("evt_b").to_json());
        server.push(&Sample::pod_suspended().event_id("evt_c").to_json());
        // A hostile id cannot forge a second line or move the cursor.
        server.push(
            &Sample::setup_test()
                .event_id("evt_d\nmessage.received evt_forged\u{1b}[2J")
                .to_json(),
        );
        assert_eq!(listen.line().await, "message.received evt_a inbox=inb_1");
        assert_eq!(listen.line().await, "inbox.suspended evt_b inbox=inb_92ma");
        assert_eq!(listen.line().await, "pod.suspended evt_c inbox=-");
        assert_eq!(
            listen.line().await,
            r"setup.test evt_d\nmessage.received evt_forged\u{1b}[2J inbox=inb_92ma"
        );
        assert!(
            !listen.stderr().contains(API_KEY),
            "the key is never printed"
        );
        let (code, stderr) = listen.interrupt().await;
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.contains("listen: stopped"), "{stderr}");
        assert!(stderr.contains(&server.url()), "{stderr}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inbox_and_event_filters_narrow_the_subscription() {
        let server = TestServer::start().await;
        let mut listen = Listen::spawn(
            &["--inbox-id", "inb_1", "--event=message.received"],
            &server.url(),
            API_KEY,
        );
        server.wait_subscribed(1).await;
        let subscribe = &server.client_messages_of("subscribe")[0];
        assert_eq!(subscribe["inbox_ids"], serde_json::json!(["inb_1"]));
        assert_eq!(
            subscribe["event_types"],
            serde_json::json!(["message.received"])
        );
        server.push(
            &Sample::message_received()
                .event_id("evt_other")
                .inbox_id("inb_2")
                .to_json(),
        );
        server.push(
            &Sample::inbox_suspended()
                .event_id("evt_type")
                .inbox_id("inb_1")
                .to_json(),
        );
        server.push(
            &Sample::message_received()
                .event_id("evt_mine")
                .inbox_id("inb_1")
                .to_json(),
        );
        assert_eq!(listen.line().await, "message.received evt_mine inbox=inb_1");
        assert_eq!(listen.interrupt().await.0, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_prints_each_event_byte_for_byte_on_one_line() {
        let server = TestServer::start().await;
        let mut listen = Listen::spawn(&["--json"], &server.url(), API_KEY);
        server.wait_subscribed(1).await;
        let events = [
            Sample::message_received().event_id("evt_j1").to_json(),
            Sample::pod_reactivated().event_id("evt_j2").to_json(),
        ];
        for event in &events {
            server.push(event);
        }
        for event in &events {
            assert_eq!(&listen.line().await, event);
        }
        // Not compact, as OpenMail never sends it: still one line, with the same meaning.
        let spread = "{\n  \"event\": \"setup.test\",\n  \"event_id\": \"evt_j3\"\n}";
        server.push(spread);
        let line = listen.line().await;
        assert_eq!(json(&line), json(spread));
        assert_eq!(listen.interrupt().await.0, 0);

        // A printed line is a FILE that `send` delivers byte for byte.
        let python = PythonReceiver::start(SECRET);
        let path =
            std::env::temp_dir().join(format!("openmail-listen-{}.json", std::process::id()));
        std::fs::write(&path, &events[0]).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_openmail-webhooks"))
            .args(["send", &python.url(), path.to_str().unwrap()])
            .env("OPENMAIL_WEBHOOK_SECRET", SECRET)
            .output()
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(output.status.success());
        let stdout = String::from_utf8(output.stdout).unwrap();
        let report = json(stdout.lines().nth(2).unwrap());
        assert_eq!(report["body"], events[0].as_str());
        assert_eq!(report["x_event_id"], "evt_j1");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_key_exits_with_2_and_says_so() {
        let server = TestServer::start().await;
        let listen = Listen::spawn(&[], &server.url(), "om_wrong_key");
        let (code, stderr) = listen.exit_code().await;
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("4001"), "{stderr}");
        assert!(stderr.contains("OPENMAIL_API_KEY"), "{stderr}");
        assert!(!stderr.contains("om_wrong_key"), "{stderr}");
    }

    #[test]
    fn missing_variables_and_bad_options_exit_with_2() {
        let run = |args: &[&str], vars: &[(&str, &str)]| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_openmail-webhooks"));
            command.arg("listen").args(args);
            for name in [
                "OPENMAIL_API_KEY",
                "OPENMAIL_WS_URL",
                "OPENMAIL_WEBHOOK_SECRET",
            ] {
                command.env_remove(name);
            }
            command.envs(vars.iter().copied());
            let output = command.output().unwrap();
            (
                output.status.code().unwrap(),
                String::from_utf8(output.stderr).unwrap(),
            )
        };
        let (code, stderr) = run(&[], &[]);
        assert_eq!(code, 2);
        assert!(stderr.contains("OPENMAIL_API_KEY is not set"), "{stderr}");

        let key = [("OPENMAIL_API_KEY", API_KEY)];
        let (code, stderr) = run(&["--forward-to", "http://127.0.0.1:9/webhooks"], &key);
        assert_eq!(code, 2);
        assert!(
            stderr.contains("OPENMAIL_WEBHOOK_SECRET is not set"),
            "{stderr}"
        );

        let (code, stderr) = run(&["--forward-to", "https://x.example/webhooks"], &key);
        assert_eq!(code, 2);
        assert!(stderr.contains("plain HTTP"), "{stderr}");

        // Email content in cleartext off the machine needs an explicit flag.
        for remote in [
            "http://10.0.0.5:3000/webhooks",
            "http://receiver.example/webhooks",
            "http://localhost.example/webhooks",
            "http://0.0.0.0:3000/webhooks",
        ] {
            let (code, stderr) = run(&["--forward-to", remote], &key);
            assert_eq!(code, 2, "{remote}: {stderr}");
            assert!(stderr.contains("--allow-remote"), "{stderr}");
        }
        let (code, stderr) = run(
            &[
                "--forward-to",
                "http://10.0.0.5:3000/webhooks",
                "--allow-remote",
            ],
            &key,
        );
        assert_eq!(code, 2);
        assert!(
            stderr.contains("OPENMAIL_WEBHOOK_SECRET is not set"),
            "past the check: {stderr}"
        );

        let insecure = [
            ("OPENMAIL_API_KEY", API_KEY),
            ("OPENMAIL_WS_URL", "ws://example.com/v1/ws"),
        ];
        let (code, stderr) = run(&[], &insecure);
        assert_eq!(code, 2);
        assert!(stderr.contains("loopback"), "{stderr}");

        // A plain ws:// server is not authenticated: signing what it sends needs a flag.
        let plain = [
            ("OPENMAIL_API_KEY", API_KEY),
            ("OPENMAIL_WS_URL", "ws://127.0.0.1:9/v1/ws"),
            ("OPENMAIL_WEBHOOK_SECRET", SECRET),
        ];
        let (code, stderr) = run(&["--forward-to", "http://127.0.0.1:9/webhooks"], &plain);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("--allow-plain-ws") && stderr.contains("could send events"),
            "{stderr}"
        );

        let (code, stderr) = run(&["--bogus"], &key);
        assert_eq!(code, 2);
        assert!(stderr.contains("usage: listen"), "{stderr}");
    }

    /// The receiver example's router, as a developer runs it, unchanged.
    async fn receiver() -> (String, Seen) {
        slow_receiver(&[]).await
    }

    /// The receiver example's router, slow to answer the events in `slow`.
    async fn slow_receiver(slow: &[String]) -> (String, Seen) {
        let layer = VerifyOpenMailLayer::new(SECRET).unwrap();
        serve_slowly(crate::receiver::app(layer), slow).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwarded_events_reach_the_receiver_example_signed_as_webhooks() {
        let server = TestServer::start().await;
        let (url, seen) = receiver().await;
        let mut listen = Listen::spawn(&["--forward-to", &url], &server.url(), API_KEY);
        server.wait_subscribed(1).await;
        for event_type in Sample::EVENT_TYPES {
            let event = Sample::of_type(event_type)
                .unwrap()
                .event_id(format!("evt_{event_type}"));
            server.push(&event.to_json());
        }
        let lines = listen.lines_until("forwarded ", 6).await;
        for event_type in Sample::EVENT_TYPES {
            let id = format!("evt_{event_type}");
            assert!(
                lines.contains(&format!("forwarded {id} 200 OK")),
                "{lines:?}"
            );
            assert!(
                lines
                    .iter()
                    .any(|line| line.starts_with(&format!("{event_type} {id} "))),
                "{lines:?}"
            );
        }
        assert_eq!(seen.lock().unwrap().len(), 6);
        let stderr = listen.stderr();
        assert!(
            stderr.contains("listen: warning:") && stderr.contains("any process on this machine"),
            "a plain ws:// server is trusted only with a warning: {stderr}"
        );
        assert_eq!(listen.interrupt().await.0, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_event_does_not_pin_the_resume_position_across_a_restart() {
        let server = TestServer::start().await;
        let app = {
            let layer = VerifyOpenMailLayer::new(SECRET).unwrap();
            Router::new()
                .route(
                    "/webhooks",
                    post(move |Extension(event): Extension<Arc<Event>>| async move {
                        if event.event_id() == Some("evt_ws_3") {
                            http::StatusCode::UNPROCESSABLE_ENTITY
                        } else {
                            http::StatusCode::OK
                        }
                    }),
                )
                .layer(layer)
        };
        let (url, seen) = serve(app).await;
        let file =
            std::env::temp_dir().join(format!("openmail-listen-pinned-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        // localhost, as developers write it: it means 127.0.0.1.
        let url = url.replace("127.0.0.1", "localhost");
        let args = [
            "--forward-to",
            &url,
            "--resume-file",
            file.to_str().unwrap(),
        ];
        let mut listen = Listen::spawn(&args, &server.url(), API_KEY);
        server.wait_subscribed(1).await;
        for index in 1..=9 {
            server.push(&message(&format!("evt_ws_{index}")));
        }
        let mut lines = listen.lines_until("failed ", 1).await;
        let forwarded = lines
            .iter()
            .filter(|line| line.starts_with("forwarded "))
            .count();
        lines.extend(listen.lines_until("forwarded ", 8 - forwarded).await);
        assert!(
            lines.iter().any(|line| line
                .starts_with("failed evt_ws_3 422 Unprocessable Entity after 4 attempts")),
            "{lines:?}"
        );
        assert_eq!(listen.interrupt().await.0, 0);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "evt_ws_9\n");

        // Restarted, it resumes from the newest event, and gets what it missed.
        server.store_only(&message("evt_ws_10"));
        let mut listen = Listen::spawn(&args, &server.url(), API_KEY);
        let lines = listen.lines_until("forwarded ", 1).await;
        assert!(
            lines.contains(&"forwarded evt_ws_10 200 OK".to_owned()),
            "{lines:?}"
        );
        let subscribes = server.client_messages_of("subscribe");
        assert_eq!(subscribes.last().unwrap()["last_event_id"], "evt_ws_9");
        assert_eq!(listen.interrupt().await.0, 0);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(counts(&seen).get("evt_ws_3"), Some(&4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_id_that_cannot_be_a_header_value_is_still_forwarded() {
        let server = TestServer::start().await;
        let (url, seen) = receiver().await;
        let mut listen = Listen::spawn(&["--forward-to", &url], &server.url(), API_KEY);
        server.wait_subscribed(1).await;
        server.push(&message("evt_odd\n\u{1b}[2J\u{e9}"));
        let lines = listen.lines_until("forwarded ", 1).await;
        assert!(
            lines.contains(&"forwarded evt_odd\\n\\u{1b}[2Jé 200 OK".to_owned()),
            "{lines:?}"
        );
        // It reached the receiver once, without X-Event-Id (which is unsigned).
        assert_eq!(seen.lock().unwrap().as_slice(), ["-"]);
        assert_eq!(listen.interrupt().await.0, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_accepts_what_listen_forwards_byte_for_byte() {
        let server = TestServer::start().await;
        let python = PythonReceiver::start(SECRET);
        // Stands between listen and python, to see python's report.
        let reports = Arc::new(Mutex::new(Vec::new()));
        let app = {
            let reports = Arc::clone(&reports);
            let python = python.addr;
            Router::new().route(
                "/webhooks",
                post(move |request: AxumRequest| {
                    let reports = Arc::clone(&reports);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                        let headers: Vec<(&str, String)> =
                            ["content-type", "x-timestamp", "x-signature", "x-event-id"]
                                .into_iter()
                                .filter_map(|name| {
                                    let value = parts.headers.get(name)?.to_str().ok()?;
                                    Some((name, value.to_owned()))
                                })
                                .collect();
                        let (status, report) =
                            support::post(&support::client(), python, "/webhooks", &headers, body)
                                .await;
                        reports.lock().unwrap().push(json(&report));
                        status
                    }
                }),
            )
        };
        let (url, _) = serve(app).await;
        let mut listen = Listen::spawn(&["--forward-to", &url], &server.url(), API_KEY);
        server.wait_subscribed(1).await;
        let event = Sample::message_received().event_id("evt_py").to_json();
        server.push(&event);
        let lines = listen.lines_until("forwarded ", 1).await;
        assert!(
            lines.contains(&"forwarded evt_py 200 OK".to_owned()),
            "{lines:?}"
        );
        let report = reports.lock().unwrap()[0].clone();
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["body"], event.as_str());
        assert_eq!(report["body_sha256"], sha256_hex(event.as_bytes()));
        assert_eq!(report["x_event_id"], "evt_py");
        assert_eq!(report["content_type"], "application/json");
        let age = support::unix_now()
            - report["x_timestamp"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap();
        assert!((0..=5).contains(&age), "a fresh X-Timestamp: {age} s old");
        assert_eq!(listen.interrupt().await.0, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_event_is_retried_then_reported_without_holding_up_the_next() {
        let server = TestServer::start().await;
        let handled = Arc::new(Mutex::new(Vec::new()));
        let app = {
            let handled = Arc::clone(&handled);
            let layer = VerifyOpenMailLayer::new(SECRET).unwrap();
            Router::new()
                .route(
                    "/webhooks",
                    post(move |Extension(event): Extension<Arc<Event>>| {
                        let handled = Arc::clone(&handled);
                        async move {
                            let id = event.event_id().unwrap_or("-").to_owned();
                            handled.lock().unwrap().push(id.clone());
                            if id == "evt_bad" {
                                http::StatusCode::INTERNAL_SERVER_ERROR
                            } else {
                                http::StatusCode::OK
                            }
                        }
                    }),
                )
                .layer(layer)
        };
        let (url, _) = serve(app).await;
        let mut listen = Listen::spawn(&["--forward-to", &url], &server.url(), API_KEY);
        server.wait_subscribed(1).await;
        server.push(&message("evt_bad"));
        server.push(&message("evt_good"));
        let lines = listen.lines_until("failed ", 1).await;
        let good = lines
            .iter()
            .position(|line| line == "forwarded evt_good 200 OK")
            .unwrap_or_else(|| panic!("{lines:?}"));
        let failed = lines
            .iter()
            .position(|line| line.starts_with("failed evt_bad 500 Internal Server Error after "))
            .unwrap_or_else(|| panic!("{lines:?}"));
        assert!(good < failed, "the next event was not held up: {lines:?}");
        // Every attempt was verified by the layer (signed afresh) and reached the handler.
        let attempts = handled
            .lock()
            .unwrap()
            .iter()
            .filter(|id| *id == "evt_bad")
            .count();
        assert!(attempts > 1, "retried: {attempts}");
        assert!(
            lines[failed].ends_with(&format!("after {attempts} attempts")),
            "{lines:?}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|line| line.starts_with("message.received evt_bad "))
                .count(),
            1,
            "the event's line is printed once, however often it is retried: {lines:?}"
        );
        let stderr = listen.stderr();
        assert!(
            stderr.contains("answered 500 Internal Server Error to evt_bad"),
            "{stderr}"
        );
        assert_eq!(listen.interrupt().await.0, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_1001_close_mid_stream_nothing_is_lost_and_nothing_forwarded_twice() {
        let server = TestServer::start().await;
        let ids: Vec<String> = (1..=12).map(|n| format!("evt_{n:02}")).collect();
        // Events 6 to 8 are still being forwarded when the server closes the connection.
        let (url, seen) = slow_receiver(&ids[5..8]).await;
        let mut listen = Listen::spawn(&["--forward-to", &url], &server.url(), API_KEY);
        server.wait_subscribed(1).await;

        for id in &ids[..5] {
            server.push(&message(id));
        }
        let mut lines = listen.lines_until("forwarded ", 5).await;
        // Three more go out live, and the server shuts down while they are forwarded; two
        // more occur while no connection is there to receive them. The replay brings them
        // all again, the three in flight included.
        for id in &ids[5..8] {
            server.push(&message(id));
        }
        for id in &ids[8..10] {
            server.store_only(&message(id));
        }
        server.close_all(1001, "going away");
        server
            .wait_until("a second subscribe", Duration::from_secs(20), |server| {
                server.client_messages_of("subscribe").len() >= 2
            })
            .await;
        server.wait_subscribed(1).await;
        for id in &ids[10..] {
            server.push(&message(id));
        }
        let forwarded_before = lines
            .iter()
            .filter(|line| line.starts_with("forwarded "))
            .count();
        lines.extend(
            listen
                .lines_until("forwarded ", 12 - forwarded_before)
                .await,
        );

        // Nothing lost, nothing twice: at the receiver, and in what listen printed.
        let counts = counts(&seen);
        for id in &ids {
            assert_eq!(
                counts.get(id),
                Some(&1),
                "{id} reached the receiver once: {counts:?}"
            );
            let forwarded = format!("forwarded {id} 200 OK");
            assert_eq!(
                lines.iter().filter(|line| **line == forwarded).count(),
                1,
                "{lines:?}"
            );
        }
        assert_eq!(counts.len(), ids.len(), "{counts:?}");
        assert!(
            !lines.iter().any(|line| line.starts_with("failed ")),
            "{lines:?}"
        );

        // It resumed after an event it had forwarded.
        let subscribes = server.client_messages_of("subscribe");
        let resumed_from = subscribes[1]["last_event_id"].as_str().unwrap().to_owned();
        assert_eq!(
            resumed_from, ids[4],
            "the last event forwarded before the close"
        );
        // So the replay brought the three in flight again, and they were not forwarded
        // twice for it.
        let second = server.handshakes().last().unwrap().connection;
        let replayed = server.sent_to(second);
        assert_eq!(replayed[..5], ids[5..10], "{replayed:?}");
        let stderr = listen.stderr();
        assert!(stderr.contains("1001"), "the close is reported: {stderr}");
        assert!(
            stderr.contains(&format!("resumed after event {resumed_from}")),
            "{stderr}"
        );
        assert_eq!(listen.interrupt().await.0, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_resume_file_a_restarted_listen_gets_what_it_missed() {
        let server = TestServer::start().await;
        let (url, seen) = receiver().await;
        let file =
            std::env::temp_dir().join(format!("openmail-listen-resume-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let args = [
            "--forward-to",
            &url,
            "--resume-file",
            file.to_str().unwrap(),
        ];

        let mut listen = Listen::spawn(&args, &server.url(), API_KEY);
        server.wait_subscribed(1).await;
        for id in ["evt_r1", "evt_r2", "evt_r3"] {
            server.push(&message(id));
        }
        listen.lines_until("forwarded ", 3).await;
        assert_eq!(listen.interrupt().await.0, 0);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "evt_r3\n");

        // Two events occur while listen is stopped.
        server.store_only(&message("evt_r4"));
        server.store_only(&message("evt_r5"));
        let mut listen = Listen::spawn(&args, &server.url(), API_KEY);
        let lines = listen.lines_until("forwarded ", 2).await;
        assert!(
            lines.contains(&"forwarded evt_r4 200 OK".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"forwarded evt_r5 200 OK".to_owned()),
            "{lines:?}"
        );
        let subscribes = server.client_messages_of("subscribe");
        assert_eq!(subscribes.last().unwrap()["last_event_id"], "evt_r3");
        assert!(listen.stderr().contains("resumed after event evt_r3"));
        assert_eq!(listen.interrupt().await.0, 0);
        std::fs::remove_file(&file).unwrap();

        let counts = counts(&seen);
        assert_eq!(counts.len(), 5, "{counts:?}");
        assert!(counts.values().all(|count| *count == 1), "{counts:?}");

        // A resume file that cannot be read stops listen before it connects.
        let directory = std::env::temp_dir();
        let listen = Listen::spawn(
            &["--resume-file", directory.to_str().unwrap()],
            &server.url(),
            API_KEY,
        );
        let (code, stderr) = listen.exit_code().await;
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("cannot read the resume file"), "{stderr}");
    }
}
