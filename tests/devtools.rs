//! The local-development tools against independent and real receivers: the `send` example
//! against a python3 receiver written from the documented formula (tests/python_receiver.py)
//! and against the `listen` example over real HTTP, and the `test_util` requests against
//! both the python receiver and the layer.

mod support;

#[path = "../examples/send.rs"]
#[allow(dead_code)]
mod send;

#[path = "../examples/listen.rs"]
#[allow(dead_code)]
mod listen;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::Full;
use openmail_webhooks::VerifyOpenMailLayer;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{unix_now, SECRET};
use tokio::net::TcpListener;

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

fn options(args: &[&str]) -> send::Options {
    match send::parse_args(args.iter().map(|arg| arg.to_string())).unwrap() {
        send::Command::Send(options) => options,
        send::Command::Help => panic!("{args:?} asked for help"),
    }
}

async fn send_with(args: &[&str], secret: &str) -> (Vec<send::Outcome>, String) {
    let mut out = Vec::new();
    let outcomes = send::run(&options(args), secret, &mut out).await.unwrap();
    (outcomes, String::from_utf8(out).unwrap())
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|error| {
        panic!("{error}: {:?}", String::from_utf8_lossy(bytes));
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn python_accepts_every_built_in_sample() {
    let python = PythonReceiver::start(SECRET);
    for event_type in send::EVENT_TYPES {
        let (outcomes, printed) = send_with(&["--event", event_type, &python.url()], SECRET).await;
        let [outcome] = &outcomes[..] else {
            panic!("one delivery expected: {outcomes:?}")
        };
        assert_eq!(outcome.status, StatusCode::OK, "{event_type}: {printed}");
        let report = json(&outcome.response);
        let sent = json(&outcome.sent);
        assert_eq!(report["event"], event_type);
        assert_eq!(sent["event"], event_type);
        assert_eq!(report["content_type"], "application/json");
        assert_eq!(report["x_event_id"], sent["event_id"], "{event_type}");
        assert_eq!(report["event_id"], sent["event_id"]);
        assert_eq!(report["body_sha256"], sha256_hex(&outcome.sent));
        assert!(
            printed.contains("< 200 OK"),
            "the status is printed: {printed}"
        );
    }
}

#[tokio::test]
async fn the_message_received_sample_has_the_documented_shape() {
    let python = PythonReceiver::start(SECRET);
    let (outcomes, _) = send_with(
        &[
            "--event-id",
            "evt_shape",
            "--inbox-id",
            "inb_shape",
            &python.url(),
        ],
        SECRET,
    )
    .await;
    let sent = json(&outcomes[0].sent);
    assert_eq!(sent["event"], "message.received");
    assert_eq!(sent["event_id"], "evt_shape");
    assert_eq!(sent["inbox_id"], "inb_shape");
    assert_eq!(sent["attempt"], 1);
    let attachment = &sent["message"]["attachments"][0];
    for key in [
        "filename",
        "contentType",
        "sizeBytes",
        "url",
        "parsedText",
        "extractionMethod",
    ] {
        assert!(!attachment[key].is_null(), "attachment key {key}");
    }
    assert!(sent["message"]["cc"].is_array());
    // `delivered_at` is the moment of sending, as OpenMail writes times.
    let delivered_at = send::rfc3339(outcomes[0].timestamp);
    assert_eq!(sent["delivered_at"], delivered_at.as_str());
    assert_eq!(json(&outcomes[0].response)["x_event_id"], "evt_shape");
}

#[test]
fn rfc3339_matches_python_datetime() {
    // python3: datetime.fromtimestamp(t, timezone.utc)
    for (unix, expected) in [
        (1_790_000_000, "2026-09-21T14:13:20.000Z"),
        (951_782_400, "2000-02-29T00:00:00.000Z"),
        (-31_536_000, "1969-01-01T00:00:00.000Z"),
        (0, "1970-01-01T00:00:00.000Z"),
    ] {
        assert_eq!(send::rfc3339(unix), expected);
    }
}

#[tokio::test]
async fn a_file_is_sent_byte_for_byte() {
    let python = PythonReceiver::start(SECRET);
    // Spacing, key order, escapes and non-ASCII that a re-serialiser would change.
    let body = "{ \"event\" : \"message.received\",\n  \"event_id\":\"evt_file\", \
                \"subject\":\"caf\\u00e9 – ☕\", \"n\": 1.50 }\n";
    let path = std::env::temp_dir().join(format!("openmail-send-{}.json", std::process::id()));
    std::fs::write(&path, body).unwrap();
    let (outcomes, printed) = send_with(&[&python.url(), path.to_str().unwrap()], SECRET).await;
    std::fs::remove_file(&path).unwrap();
    assert_eq!(outcomes[0].status, StatusCode::OK, "{printed}");
    assert_eq!(outcomes[0].sent, body.as_bytes());
    let report = json(&outcomes[0].response);
    assert_eq!(report["body_sha256"], sha256_hex(body.as_bytes()));
    assert_eq!(report["x_event_id"], "evt_file");
}

#[tokio::test]
async fn a_file_without_event_id_gets_a_fresh_x_event_id() {
    let python = PythonReceiver::start(SECRET);
    let path = std::env::temp_dir().join(format!("openmail-send-noid-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"event":"setup.test"}"#).unwrap();
    let (outcomes, printed) = send_with(
        &["--times", "2", &python.url(), path.to_str().unwrap()],
        SECRET,
    )
    .await;
    std::fs::remove_file(&path).unwrap();
    assert!(printed.contains("FILE has no string event_id"), "{printed}");
    let first = json(&outcomes[0].response);
    let second = json(&outcomes[1].response);
    assert!(first["x_event_id"]
        .as_str()
        .unwrap()
        .starts_with("evt_local_"));
    assert_eq!(first["x_event_id"], second["x_event_id"]);
}

#[tokio::test]
async fn retries_repeat_the_event_with_fresh_signatures_and_attempts() {
    let python = PythonReceiver::start(SECRET);
    let (outcomes, _) = send_with(
        &[
            "--times",
            "3",
            "--attempt",
            "2",
            "--event-id",
            "evt_retry",
            &python.url(),
        ],
        SECRET,
    )
    .await;
    let reports: Vec<Value> = outcomes.iter().map(|o| json(&o.response)).collect();
    assert_eq!(reports.len(), 3);
    for (index, report) in reports.iter().enumerate() {
        assert_eq!(report["ok"], true);
        assert_eq!(report["event_id"], "evt_retry");
        assert_eq!(report["x_event_id"], "evt_retry");
        assert_eq!(report["attempt"], index as u64 + 2);
        // The receiver saw the same event_id once more each time: what deduplication keys on.
        assert_eq!(report["times_seen"], index as u64 + 1);
    }
    let signatures: std::collections::HashSet<_> = reports
        .iter()
        .map(|report| report["x_signature"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(signatures.len(), 3, "each attempt is signed afresh");
}

#[tokio::test]
async fn python_refuses_tampered_stale_and_wrongly_signed_deliveries() {
    let python = PythonReceiver::start(SECRET);
    let url: Uri = python.url().parse().unwrap();
    let client = send::client();
    let body = Bytes::from_static(br#"{"event":"message.received","event_id":"evt_t"}"#);

    let genuine = send::signed_request(&url, SECRET, unix_now(), "evt_t", body.clone()).unwrap();
    assert_eq!(
        send::post(&client, genuine).await.unwrap().0,
        StatusCode::OK
    );

    let mut tampered =
        send::signed_request(&url, SECRET, unix_now(), "evt_t", body.clone()).unwrap();
    *tampered.body_mut() = Full::new(Bytes::from_static(
        br#"{"event":"message.received","event_id":"evt_T"}"#,
    ));
    let (status, answer) = send::post(&client, tampered).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&answer)["reason"], "signature mismatch");

    let (outcomes, _) = send_with(&[&python.url()], "whsec_not_the_one").await;
    assert_eq!(outcomes[0].status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&outcomes[0].response)["reason"], "signature mismatch");

    let (outcomes, printed) = send_with(&["--skew", "-400", &python.url()], SECRET).await;
    assert_eq!(outcomes[0].status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&outcomes[0].response)["reason"], "stale");
    assert!(printed.contains("skewed -400 s"), "{printed}");
}

#[tokio::test]
async fn the_exit_code_follows_the_answers() {
    let python = PythonReceiver::start(SECRET);
    let url = python.url();
    let run = |args: Vec<&str>, secret: Option<&str>| {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let secret = secret.map(str::to_owned);
        async move {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = send::cli(args, secret, &mut out, &mut err).await;
            (
                code,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        }
    };

    assert_eq!(run(vec![&url], Some(SECRET)).await.0, 0);
    assert_eq!(run(vec![&url], Some("whsec_wrong")).await.0, 1);
    assert_eq!(run(vec!["--skew", "400", &url], Some(SECRET)).await.0, 1);

    let (code, _, err) = run(vec![&url], None).await;
    assert_eq!(code, 2);
    assert!(err.contains("OPENMAIL_WEBHOOK_SECRET is not set"), "{err}");

    let (code, _, err) = run(vec![], Some(SECRET)).await;
    assert_eq!(code, 2);
    assert!(err.contains("URL is missing"), "{err}");

    let (code, out, _) = run(vec!["--help"], None).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("usage: send"));

    // Nothing listens on the port python had once it is gone.
    drop(python);
    let (code, _, err) = run(vec![&url], Some(SECRET)).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn usage_errors_say_what_is_wrong() {
    let error = |args: &[&str]| {
        send::parse_args(args.iter().map(|arg| arg.to_string()))
            .err()
            .unwrap_or_else(|| panic!("{args:?} should be refused"))
    };
    let url = "http://127.0.0.1:3000/webhooks";
    assert!(error(&["--event", "message.sent", url]).contains("unknown event type"));
    assert!(error(&["--event", "inbox.suspended", url, "body.json"]).contains("byte for byte"));
    assert!(error(&["--attempt", "2", url, "body.json"]).contains("byte for byte"));
    assert!(
        error(&["--event", "inbox.suspended", "--attempt", "2", url])
            .contains("carries no attempt")
    );
    assert!(error(&["--event", "pod.suspended", "--inbox-id", "inb_1", url]).contains("inbox_id"));
    assert!(error(&["--times", "0", url]).contains("whole number from 1"));
    assert!(error(&["--skew", "soon", url]).contains("whole seconds"));
    assert!(error(&["--bogus", url]).contains("unknown option --bogus"));
    assert!(error(&["https://abc.ngrok.app/webhooks"]).contains("plain HTTP"));
    assert!(error(&["127.0.0.1:3000"]).contains("http://"));
    assert!(error(&[url, "a.json", "b.json"]).contains("unexpected argument"));

    let parsed = options(&["--times=3", "--skew", "-5", "--event=pod.reactivated", url]);
    assert_eq!(parsed.times, 3);
    assert_eq!(parsed.skew, -5);
    assert!(matches!(
        parsed.body,
        send::BodySource::Sample(ref sample) if sample.event_type == "pod.reactivated"
    ));
}

/// The `listen` example on 127.0.0.1:0, and the blocks it prints.
async fn start_listener(layer: VerifyOpenMailLayer) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let printed = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&printed);
    let app = listen::app(layer, move |block| sink.lock().unwrap().push(block));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/webhooks"), printed)
}

fn last(printed: &Mutex<Vec<String>>) -> String {
    printed.lock().unwrap().last().cloned().unwrap_or_default()
}

#[tokio::test]
async fn listen_verifies_and_pretty_prints_what_send_sends() {
    let (url, printed) = start_listener(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    for event_type in send::EVENT_TYPES {
        let (outcomes, _) = send_with(
            &["--event", event_type, "--event-id", "evt_listen", &url],
            SECRET,
        )
        .await;
        assert_eq!(outcomes[0].status, StatusCode::OK, "{event_type}");
        let answer = json(&outcomes[0].response);
        assert_eq!(answer["event"], event_type);
        assert_eq!(answer["event_id"], "evt_listen");

        let block = last(&printed);
        assert!(
            block.contains(&format!("POST /webhooks  VERIFIED {event_type}")),
            "{block}"
        );
        assert!(block.contains("event_id evt_listen"), "{block}");
        assert!(block.contains("x-event-id: evt_listen"), "{block}");
        assert!(block.contains("secret #0"), "{block}");
        // Pretty-printed, keys in the order they were sent.
        assert!(
            block.contains(&format!(
                "body:\n   {{\n     \"event\": \"{event_type}\",\n     \"event_id\": \"evt_listen\","
            )),
            "{block}"
        );
        assert_eq!(
            block.contains("not a documented type"),
            event_type == "setup.test",
            "{block}"
        );
    }
    assert_eq!(printed.lock().unwrap().len(), send::EVENT_TYPES.len());
}

#[tokio::test]
async fn listen_prints_the_precise_reason_for_each_rejection() {
    let (url, printed) = start_listener(VerifyOpenMailLayer::new(SECRET).unwrap()).await;

    let (outcomes, _) = send_with(&["--skew", "-412", &url], SECRET).await;
    assert_eq!(outcomes[0].status, StatusCode::BAD_REQUEST);
    let block = last(&printed);
    assert!(block.contains("REJECTED 400"), "{block}");
    // The clock may tick between signing and checking.
    assert!(
        block.contains("X-Timestamp is 412 s old (tolerance 300 s)")
            || block.contains("X-Timestamp is 413 s old (tolerance 300 s)"),
        "{block}"
    );

    let (_, _) = send_with(&["--skew", "400", &url], SECRET).await;
    let block = last(&printed);
    assert!(
        block.contains("s in the future (tolerance 300 s)"),
        "{block}"
    );

    let (outcomes, _) = send_with(&[&url], "whsec_not_the_one").await;
    assert_eq!(outcomes[0].status, StatusCode::BAD_REQUEST);
    let block = last(&printed);
    assert!(
        block.contains("X-Signature matches none of the configured secrets"),
        "{block}"
    );
    // The body is shown exactly as it arrived, not pretty-printed.
    let sent = String::from_utf8(outcomes[0].sent.to_vec()).unwrap();
    assert!(
        block.contains(&format!("as received):\n   {sent}")),
        "{block}"
    );

    let client = send::client();
    let request = http::Request::post(url.as_str())
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(
        send::post(&client, request).await.unwrap().0,
        StatusCode::BAD_REQUEST
    );
    let block = last(&printed);
    assert!(
        block.contains("the x-timestamp header is missing"),
        "{block}"
    );
}

#[tokio::test]
async fn listen_shows_a_mismatched_x_event_id_and_hides_credentials() {
    let (url, printed) = start_listener(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let body = Bytes::from_static(br#"{"event":"message.received","event_id":"evt_body"}"#);
    let mut request = send::signed_request(
        &url.parse().unwrap(),
        SECRET,
        unix_now(),
        "evt_header",
        body,
    )
    .unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer do-not-print".parse().unwrap());
    let (status, _) = send::post(&send::client(), request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let block = last(&printed);
    assert!(
        block.contains("X-Event-Id evt_header differs from the body's event_id evt_body"),
        "{block}"
    );
    assert!(!block.contains("do-not-print"), "{block}");
    assert!(block.contains("authorization: (hidden)"), "{block}");
}

#[test]
fn pretty_json_keeps_order_strings_and_empty_containers() {
    let raw = r#"{"z":1,"a":{"s":"x, {y}: \"q\"","e":{},"l":[ ]},"n":[1,2]}"#;
    let expected = r#"{
  "z": 1,
  "a": {
    "s": "x, {y}: \"q\"",
    "e": {},
    "l": []
  },
  "n": [
    1,
    2
  ]
}"#;
    assert_eq!(listen::pretty_json(raw), expected);
    let reparsed: Value = serde_json::from_str(&listen::pretty_json(raw)).unwrap();
    assert_eq!(reparsed, serde_json::from_str::<Value>(raw).unwrap());
}

#[cfg(feature = "test-util")]
mod test_util {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::{routing::post, Router};
    use http::Request;
    use openmail_webhooks::test_util::TestDelivery;
    use openmail_webhooks::{Rejection, VerifyError};
    use tower::ServiceExt;

    use super::*;

    const BODY: &str = r#"{"event":"message.received","event_id":"evt_tu","inbox_id":"inb_1"}"#;

    /// Sends a `test_util` request to a real server at `addr`.
    async fn over_http(addr: SocketAddr, request: Request<String>) -> (StatusCode, Value) {
        let (mut parts, body) = request.into_parts();
        parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
        let request = Request::from_parts(parts, Full::new(Bytes::from(body)));
        let (status, body) = send::post(&send::client(), request).await.unwrap();
        (status, json(&body))
    }

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

    #[tokio::test]
    async fn a_test_util_request_reaches_the_listen_example_over_http() {
        let (url, printed) = start_listener(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .trim_end_matches("/webhooks")
            .parse()
            .unwrap();
        let delivery = TestDelivery::new(SECRET, BODY).uri(Uri::from_static("/hooks/inb_1"));
        let (status, answer) = over_http(addr, delivery.request()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["event_id"], "evt_tu");
        assert!(last(&printed).contains("POST /hooks/inb_1  VERIFIED message.received"));
    }
}
