//! The local-development tools against independent and real receivers: `openmail-webhooks
//! send`, run as the installed binary, against a python3 receiver written from the
//! documented formula (tests/python_receiver.py); and the `test_util` samples and requests
//! against both the python receiver and the layer.
#![cfg(feature = "test-util")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use openmail_webhooks::test_util::Sample;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::SECRET;

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
}

mod test_util {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::{routing::post, Extension, Router};
    use openmail_webhooks::test_util::TestDelivery;
    use openmail_webhooks::{Event, Rejection, VerifyError, VerifyOpenMailLayer};
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
                    assert_eq!(received.message.attachments.len(), 1)
                }
                Event::InboxSuspended(lifecycle) => {
                    assert_eq!(
                        lifecycle.reason.as_ref().unwrap().as_str(),
                        "high_bounce_rate"
                    )
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
