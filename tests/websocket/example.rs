//! examples/both_channels.rs end to end, in process: its webhook route over real HTTP on
//! loopback and its WebSocket against the test OpenMail server, with its stdout lines
//! captured. Each handled event prints one line, whichever channel brought it, and an
//! event that arrives by both prints one.

#![cfg(feature = "websocket")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::both_channels;
use crate::both_channels::{Lines, Settings};
use crate::websocket_support::harness::Statuses;
use crate::websocket_support::webhook::{SECRET, Sender};
use crate::websocket_support::{API_KEY, TestServer, event};
use axum::http::StatusCode;
use openmail_webhooks::websocket::ClientStatus;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

fn settings(vars: &[(&str, &str)]) -> Result<Settings, String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    Settings::from_vars(|name| vars.get(name).cloned())
}

#[test]
fn the_environment_is_read_per_the_contract() {
    let error = settings(&[]).unwrap_err();
    assert!(error.contains("OPENMAIL_WEBHOOK_SECRET"), "{error}");
    let error = settings(&[("OPENMAIL_WEBHOOK_SECRET", SECRET), ("PORT", "http")]).unwrap_err();
    assert!(error.contains("PORT"), "{error}");
    let plain = settings(&[("OPENMAIL_WEBHOOK_SECRET", SECRET)]).unwrap();
    assert_eq!((plain.port, plain.api_key.as_deref()), (3000, None));
    let quiet: both_channels::Statuses = Arc::new(|_| {});
    assert!(
        both_channels::websocket_client(&plain, Arc::clone(&quiet))
            .unwrap()
            .is_none()
    );

    let insecure = settings(&[
        ("OPENMAIL_WEBHOOK_SECRET", SECRET),
        ("OPENMAIL_API_KEY", API_KEY),
        ("OPENMAIL_WS_URL", "ws://api.openmail.sh/v1/ws"),
    ])
    .unwrap();
    let error = both_channels::websocket_client(&insecure, quiet).unwrap_err();
    assert!(error.contains("OPENMAIL_WS_URL"), "{error}");
}

/// The example running against `server`, its lines and WebSocket statuses captured.
struct Example {
    addr: std::net::SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    statuses: Statuses,
    task: JoinHandle<Result<(), String>>,
}

impl Example {
    async fn start(server: &TestServer) -> Self {
        let settings = settings(&[
            ("OPENMAIL_WEBHOOK_SECRET", SECRET),
            ("OPENMAIL_API_KEY", API_KEY),
            ("OPENMAIL_WS_URL", &server.url()),
        ])
        .unwrap();
        let statuses = Statuses::default();
        let client = both_channels::websocket_client(&settings, Arc::new(statuses.hook())).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink: Lines = {
            let lines = Arc::clone(&lines);
            Arc::new(move |line| lines.lock().unwrap().push(line))
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task =
            tokio::spawn(
                async move { both_channels::run(&settings, listener, client, sink).await },
            );
        server.wait_subscribed(1).await;
        Self {
            addr,
            lines,
            statuses,
            task,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_line(&self, line: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !self.lines().iter().any(|seen| seen == line) {
            assert!(
                std::time::Instant::now() < deadline,
                "no line {line:?}; lines: {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the WebSocket side to settle `event_id` (handled, or answered as a
    /// duplicate).
    async fn wait_websocket(&self, event_id: &str) {
        self.statuses
            .wait(event_id, 1, |status| {
                matches!(status, ClientStatus::EventHandled { event_id: Some(id), .. } if id == event_id)
            })
            .await;
    }
}

#[tokio::test]
async fn one_line_per_event_whichever_channel_brings_it() {
    let server = TestServer::start().await;
    let example = Example::start(&server).await;
    let sender = Sender::default();

    // By WebSocket only.
    server.push_event("evt_ws", "inb_a");
    example
        .wait_line("handled message.received evt_ws inbox=inb_a")
        .await;

    // By webhook only: the JSON acknowledgement, and the line.
    let body = event("evt_hook", "inb_b", "message.received");
    let (status, answer) = sender.deliver(example.addr, SECRET, &body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer,
        json!({"ok": true, "event": "message.received", "event_id": "evt_hook"})
    );
    example
        .wait_line("handled message.received evt_hook inbox=inb_b")
        .await;

    // By webhook, then by WebSocket (a replay after a reconnect would do this).
    let body = event("evt_both_1", "inb_a", "message.received");
    let (status, _) = sender.deliver(example.addr, SECRET, &body).await;
    assert_eq!(status, StatusCode::OK);
    server.push(&body);
    example.wait_websocket("evt_both_1").await;

    // By WebSocket, then by webhook: the webhook gets the duplicate's answer.
    let body = event("evt_both_2", "inb_a", "message.received");
    server.push(&body);
    example.wait_websocket("evt_both_2").await;
    let (status, answer) = sender.deliver(example.addr, SECRET, &body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer,
        json!({"ok": true, "duplicate": true, "event_id": "evt_both_2"})
    );

    // A forged webhook is refused and prints nothing.
    let (status, _) = sender
        .deliver(
            example.addr,
            "whsec_forger",
            &event("evt_forged", "inb_a", "x"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Values from the network are escaped: one line, whatever the inbox id holds.
    server.push(&event(
        "evt_odd",
        "inb_a\nhandled message.received evt_fake inbox=inb_z\u{1b}[2J",
        "message.received",
    ));
    example.wait_websocket("evt_odd").await;

    assert_eq!(
        example.lines(),
        [
            "handled message.received evt_ws inbox=inb_a",
            "handled message.received evt_hook inbox=inb_b",
            "handled message.received evt_both_1 inbox=inb_a",
            "handled message.received evt_both_2 inbox=inb_a",
            r"handled message.received evt_odd inbox=inb_a\nhandled message.received evt_fake inbox=inb_z\u{1b}[2J",
        ]
    );
    example.task.abort();
}

/// The lossless rule on both channels: what the typed model cannot read is still handled
/// and printed, a lone surrogate (JSON.stringify's output for a text cut inside an emoji)
/// or a body that is not JSON at all, whose type prints as `-`.
#[tokio::test]
async fn what_the_model_cannot_read_is_still_handled_on_both_channels() {
    let server = TestServer::start().await;
    let example = Example::start(&server).await;
    let sender = Sender::default();

    server.broadcast_text(
        r#"{"event":"message.received","event_id":"evt_lone","inbox_id":"inb_a","message":{"subject":"\udc00","body_text":"cut \ud83d"}}"#,
    );
    example
        .wait_line("handled message.received evt_lone inbox=inb_a")
        .await;
    server.broadcast_text("not json");
    example.wait_line("handled - - inbox=-").await;

    let lone = r#"{"event":"message.received","event_id":"evt_lone_hook","inbox_id":"inb_b","x":"\ud800"}"#;
    let (status, _) = sender.deliver(example.addr, SECRET, lone).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = sender.deliver(example.addr, SECRET, "<html>").await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer, json!({"ok": true, "event": "", "event_id": null}));
    assert_eq!(
        example.lines(),
        [
            "handled message.received evt_lone inbox=inb_a",
            "handled - - inbox=-",
            "handled message.received evt_lone_hook inbox=inb_b",
            "handled - - inbox=-",
        ]
    );
    example.task.abort();
}

#[tokio::test]
async fn a_revoked_key_stops_the_example() {
    let server = TestServer::start().await;
    let example = Example::start(&server).await;
    server.revoke(API_KEY);
    let error = tokio::time::timeout(Duration::from_secs(20), example.task)
        .await
        .expect("the example did not stop")
        .unwrap()
        .unwrap_err();
    assert!(error.contains("4001"), "{error}");
}
