//! The WebSocket client against the test OpenMail server (tests/websocket_support) on
//! loopback: each behaviour the module docs promise.

#![cfg(feature = "websocket")]

use std::sync::Arc;
use std::time::Duration;

use crate::websocket_support::harness::{Action, App, Running, Statuses, fast_client};
use crate::websocket_support::tls::TestCa;
use crate::websocket_support::{API_KEY, AuthMethod, Ended, ServerOptions, TestServer, event};
use axum::http::StatusCode;
use openmail_webhooks::Channel;
use openmail_webhooks::websocket::{
    ClientStatus, GapReason, HandlerFailure, MemoryResumeStore, SkipReason, Subscription,
    WebSocketClient, WebSocketError,
};
use serde_json::json;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// The tries of an event answered `409` before it counts as failed, as
/// `WebSocketClient::handler_retries` states.
const DEFAULT_IN_FLIGHT_RETRIES: u32 = 8;
/// The most events OpenMail replays after `last_event_id`.
const REPLAY_LIMIT: usize = 100;
/// What a [`openmail_webhooks::websocket::ResumeStore`] returns.
type ResumeFuture<T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<T, tower::BoxError>> + Send + 'static>,
>;

fn handled(event_id: &str) -> impl Fn(&ClientStatus) -> bool + '_ {
    move |status| matches!(status, ClientStatus::EventHandled { event_id: Some(id), .. } if id == event_id)
}

fn is_subscribed(status: &ClientStatus) -> bool {
    matches!(status, ClientStatus::Subscribed { .. })
}

fn reconnect_reason(status: &ClientStatus) -> Option<WebSocketError> {
    match status {
        ClientStatus::Reconnecting { reason, .. } => Some(reason.clone()),
        _ => None,
    }
}

fn gaps(statuses: &Statuses) -> Vec<GapReason> {
    statuses.picked(|status| match status {
        ClientStatus::PossibleGap { reason } => Some(reason.clone()),
        _ => None,
    })
}

#[tokio::test]
async fn events_reach_the_service_as_the_webhook_layer_delivers_them() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(fast_client(&server, &statuses), app.router());
    server.wait_subscribed(1).await;

    let body = event("evt_1", "inb_a", "message.received");
    server.push(&body);
    // Pretty-printed, with a field the model does not know: the bytes are kept as sent.
    let pretty =
        "{\n  \"event\": \"inbox.suspended\",\n  \"event_id\": \"evt_2\",\n  \"x\": [1]\n}";
    server.push(pretty);
    app.wait_calls("two events", 2).await;

    let calls = app.calls();
    assert_eq!(calls[0].event_id.as_deref(), Some("evt_1"));
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].uri, "/webhooks");
    assert_eq!(calls[0].channel, Channel::WebSocket);
    assert_eq!(calls[0].body, body.as_bytes());
    assert!(calls[0].extensions_agree);
    assert_eq!(calls[1].body, pretty.as_bytes());
    statuses.wait("evt_2 handled", 1, handled("evt_2")).await;

    // The key went in the header, and nowhere in the request target.
    let handshakes = server.handshakes();
    assert_eq!(handshakes[0].method, AuthMethod::Header);
    assert!(handshakes[0].authorized);
    assert_eq!(handshakes[0].target, "/v1/ws");
    assert_eq!(
        statuses.count(|s| matches!(s, ClientStatus::Connecting { attempt: 1 })),
        1
    );
    assert_eq!(
        gaps(&statuses),
        [GapReason::NoResumePosition],
        "a first start says nothing before it is replayed"
    );
    client.stop().await.unwrap();
}

#[tokio::test]
async fn the_dispatch_path_is_configurable_and_checked() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(
        fast_client(&server, &statuses).dispatch_path("/elsewhere"),
        app.router(),
    );
    server.wait_subscribed(1).await;
    server.push_event("evt_1", "inb_a");
    app.wait_calls("the event", 1).await;
    assert_eq!(app.calls()[0].uri, "/elsewhere");
    client.stop().await.unwrap();

    for path in ["webhooks", "http://example.com/webhooks", ""] {
        let error = fast_client(&server, &statuses)
            .dispatch_path(path)
            .serve(app.router())
            .await
            .unwrap_err();
        assert!(
            matches!(error, WebSocketError::InvalidDispatchPath),
            "{path:?}: {error}"
        );
    }
}

#[tokio::test]
async fn the_subscription_is_sent_with_its_filters_and_confirmed() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let subscription = Subscription::all()
        .inbox_ids(["inb_a", "inb_b"])
        .event_types(["message.received"]);
    let client = Running::spawn(
        fast_client(&server, &statuses).subscribe(subscription),
        app.router(),
    );
    statuses.wait("subscribed", 1, is_subscribed).await;
    assert_eq!(
        server.client_messages_of("subscribe"),
        [json!({
            "type": "subscribe",
            "inbox_ids": ["inb_a", "inb_b"],
            "event_types": ["message.received"]
        })]
    );
    let confirmed = statuses.picked(|status| match status {
        ClientStatus::Subscribed {
            inbox_ids,
            event_types,
        } => Some((inbox_ids.clone(), event_types.clone())),
        _ => None,
    });
    assert_eq!(
        confirmed,
        [(
            vec!["inb_a".to_owned(), "inb_b".to_owned()],
            vec!["message.received".to_owned()]
        )]
    );
    server.push(&event("evt_other_inbox", "inb_c", "message.received"));
    server.push(&event("evt_other_type", "inb_a", "inbox.suspended"));
    server.push(&event("evt_match", "inb_b", "message.received"));
    statuses.wait("evt_match", 1, handled("evt_match")).await;
    assert_eq!(app.called(), ["evt_match"]);
    client.stop().await.unwrap();
}

#[tokio::test]
async fn an_inbox_the_account_does_not_own_stops_the_client() {
    let server = TestServer::with_options(ServerOptions {
        owned_inboxes: Some(vec!["inb_mine".to_owned()]),
        ..ServerOptions::default()
    })
    .await;
    let statuses = Statuses::default();
    let mut client = Running::spawn(
        fast_client(&server, &statuses).subscribe(Subscription::all().inbox_ids(["inb_theirs"])),
        App::succeeding().router(),
    );
    let error = client.finished().await.unwrap_err();
    assert!(
        matches!(&error, WebSocketError::SubscribeRefused { message } if message.contains("inb_theirs")),
        "{error}"
    );
    assert!(
        error.to_string().contains("refused the subscription"),
        "{error}"
    );
    assert_eq!(server.handshakes().len(), 1, "it did not retry");
}

#[tokio::test]
async fn no_subscribed_in_time_reconnects_until_one_comes() {
    let server = TestServer::with_options(ServerOptions {
        answer_subscribe: false,
        ..ServerOptions::default()
    })
    .await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(
        fast_client(&server, &statuses).subscribe_timeout(Duration::from_millis(200)),
        app.router(),
    );
    statuses
        .wait("two subscribe timeouts", 2, |status| {
            matches!(
                reconnect_reason(status),
                Some(WebSocketError::SubscribeTimeout { .. })
            )
        })
        .await;
    assert_eq!(statuses.count(is_subscribed), 0);
    server.answer_subscribe(true);
    statuses.wait("subscribed", 1, is_subscribed).await;
    server.push_event("evt_1", "inb_a");
    statuses.wait("evt_1", 1, handled("evt_1")).await;
    client.stop().await.unwrap();
}

#[tokio::test]
async fn events_that_arrive_before_subscribed_are_handled() {
    let server = TestServer::with_options(ServerOptions {
        answer_subscribe: false,
        ..ServerOptions::default()
    })
    .await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(fast_client(&server, &statuses), app.router());
    server
        .wait_until("the subscribe", Duration::from_secs(10), |server| {
            !server.client_messages_of("subscribe").is_empty()
        })
        .await;
    // Not subscribed on the server's side: send it to the connection as it is.
    server.broadcast_text(&event("evt_early", "inb_a", "message.received"));
    statuses.wait("evt_early", 1, handled("evt_early")).await;
    client.stop().await.unwrap();
}

#[tokio::test]
async fn the_client_pings_and_replaces_a_connection_whose_pong_does_not_come() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let client = Running::spawn(
        fast_client(&server, &statuses)
            .ping_interval(Duration::from_secs(1))
            .pong_timeout(Duration::from_millis(500)),
        App::succeeding().router(),
    );
    server
        .wait_until("two pings", Duration::from_secs(10), |server| {
            server.client_messages_of("ping").len() >= 2
        })
        .await;
    assert_eq!(statuses.count(|s| reconnect_reason(s).is_some()), 0);
    server.answer_ping(false);
    statuses
        .wait("a pong timeout", 1, |status| {
            matches!(
                reconnect_reason(status),
                Some(WebSocketError::PongTimeout { .. })
            )
        })
        .await;
    server.answer_ping(true);
    statuses.wait("subscribed again", 2, is_subscribed).await;
    client.stop().await.unwrap();
}

#[tokio::test]
async fn protocol_pings_are_answered_so_the_server_keeps_the_connection() {
    let server = TestServer::with_options(ServerOptions {
        ping_interval: Duration::from_millis(100),
        // Room for a busy machine: the tests of this binary run eight at a time.
        pong_timeout: Duration::from_millis(600),
        ..ServerOptions::default()
    })
    .await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(fast_client(&server, &statuses), app.router());
    server
        .wait_until("ten pongs", Duration::from_secs(10), |server| {
            server.pongs() >= 10
        })
        .await;
    assert_eq!(server.ended(), [], "the server closed a connection");
    assert_eq!(server.handshakes().len(), 1);
    server.push_event("evt_1", "inb_a");
    statuses.wait("evt_1", 1, handled("evt_1")).await;
    client.stop().await.unwrap();
}

#[tokio::test]
async fn after_1001_the_client_reconnects_and_resumes_from_the_last_handled_event() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let resume = MemoryResumeStore::new();
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(resume.clone()),
        app.router(),
    );
    server.wait_subscribed(1).await;
    for index in 1..=3 {
        server.push_event(&format!("evt_{index}"), "inb_a");
    }
    statuses.wait("evt_3", 1, handled("evt_3")).await;
    server
        .wait_until("the position saved", Duration::from_secs(10), |_| {
            resume.position().as_deref() == Some("evt_3")
        })
        .await;

    server.close_all(1001, "going away");
    // Pushed while the client is away (the replay brings them) or back (they arrive
    // live): either way once.
    server.push_event("evt_4", "inb_a");
    server.push_event("evt_5", "inb_a");
    statuses.wait("subscribed again", 2, is_subscribed).await;
    statuses.wait("evt_5", 1, handled("evt_5")).await;

    let reason = statuses.picked(reconnect_reason);
    assert!(
        matches!(&reason[..], [WebSocketError::Closed { code: 1001, reason }] if reason == "going away"),
        "{reason:?}"
    );
    let subscribes = server.client_messages_of("subscribe");
    assert_eq!(subscribes[0].get("last_event_id"), None);
    assert_eq!(subscribes[1]["last_event_id"], "evt_3");
    let resumed = statuses.picked(|status| match status {
        ClientStatus::Resumed { from } => Some(from.clone()),
        _ => None,
    });
    assert_eq!(resumed, ["evt_3"]);
    // Nothing lost, nothing twice.
    assert_eq!(app.called(), ["evt_1", "evt_2", "evt_3", "evt_4", "evt_5"]);
    client.stop().await.unwrap();
    assert_eq!(resume.position().as_deref(), Some("evt_5"));
}

#[tokio::test]
async fn a_dropped_connection_reconnects_too() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let client = Running::spawn(fast_client(&server, &statuses), App::succeeding().router());
    server.wait_subscribed(1).await;
    server.drop_all();
    statuses.wait("subscribed again", 2, is_subscribed).await;
    let reasons = statuses.picked(reconnect_reason);
    assert!(
        matches!(
            &reasons[..],
            [WebSocketError::Ended | WebSocketError::Transport { .. }]
        ),
        "{reasons:?}"
    );
    client.stop().await.unwrap();
}

#[tokio::test]
async fn reconnect_delays_double_with_jitter_and_start_over_after_a_good_connection() {
    let server = TestServer::with_options(ServerOptions {
        answer_subscribe: false,
        ..ServerOptions::default()
    })
    .await;
    let statuses = Statuses::default();
    let client = Running::spawn(
        fast_client(&server, &statuses)
            .reconnect_backoff(Duration::from_millis(40), Duration::from_millis(160))
            // Fails each connection while the server stays silent, and leaves room for a
            // busy machine to answer once it does.
            .subscribe_timeout(Duration::from_millis(250)),
        App::succeeding().router(),
    );
    let delays = |statuses: &Statuses| {
        statuses.picked(|status| match status {
            ClientStatus::Reconnecting { delay, .. } => Some(*delay),
            _ => None,
        })
    };
    statuses
        .wait("five failed connections", 5, |s| {
            reconnect_reason(s).is_some()
        })
        .await;
    let ceilings = [40u64, 80, 160, 160, 160].map(Duration::from_millis);
    for (delay, ceiling) in delays(&statuses).iter().zip(ceilings) {
        assert!(
            *delay <= ceiling && *delay >= ceiling / 2,
            "{delay:?} outside [{:?}, {ceiling:?}]",
            ceiling / 2
        );
    }
    let attempts = statuses.picked(|status| match status {
        ClientStatus::Connecting { attempt } => Some(*attempt),
        _ => None,
    });
    assert_eq!(attempts[..5], [1, 2, 3, 4, 5]);

    // A good connection resets the schedule.
    server.answer_subscribe(true);
    statuses.wait("subscribed", 1, is_subscribed).await;
    let before = delays(&statuses).len();
    server.close_all(1001, "");
    statuses
        .wait("the reconnect", before + 1, |s| {
            reconnect_reason(s).is_some()
        })
        .await;
    let after_good = delays(&statuses)[before];
    assert!(after_good <= Duration::from_millis(40), "{after_good:?}");
    // And the attempts count from 1 again.
    statuses
        .wait("attempt 1 again", 2, |s| {
            matches!(s, ClientStatus::Connecting { attempt: 1 })
        })
        .await;
    client.stop().await.unwrap();
}

#[tokio::test]
async fn close_4001_stops_the_client_with_a_clear_error() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let mut client = Running::spawn(fast_client(&server, &statuses), App::succeeding().router());
    server.wait_subscribed(1).await;
    server.revoke(API_KEY);
    let error = client.finished().await.unwrap_err();
    assert!(matches!(error, WebSocketError::Unauthorized), "{error}");
    assert_eq!(error.close_code(), Some(4001));
    assert!(error.to_string().contains("4001"), "{error}");
    assert_eq!(server.handshakes().len(), 1, "no reconnection after 4001");

    // A wrong key from the start: the same.
    let error = WebSocketClient::new("om_wrong_key")
        .unwrap()
        .url(&server.url())
        .unwrap()
        .serve(App::succeeding().router())
        .await
        .unwrap_err();
    assert!(matches!(error, WebSocketError::Unauthorized), "{error}");
}

#[tokio::test]
async fn close_4008_and_4029_back_off_and_other_codes_reconnect() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let client = Running::spawn(
        fast_client(&server, &statuses)
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(400)),
        App::succeeding().router(),
    );
    for (round, code) in [4008u16, 4029, 1011, 4999].into_iter().enumerate() {
        server.wait_subscribed(1).await;
        statuses.wait("subscribed", round + 1, is_subscribed).await;
        server.close_all(code, "");
        statuses
            .wait("the reconnect", round + 1, |s| {
                reconnect_reason(s).is_some()
            })
            .await;
    }
    statuses.wait("subscribed", 5, is_subscribed).await;
    let reconnects = statuses.picked(|status| match status {
        ClientStatus::Reconnecting { delay, reason } => Some((*delay, reason.close_code())),
        _ => None,
    });
    let codes: Vec<Option<u16>> = reconnects.iter().map(|(_, code)| *code).collect();
    assert_eq!(codes, [Some(4008), Some(4029), Some(1011), Some(4999)]);
    // 4008 waits the longest delay (between half of it and all of it); 4029 at least the
    // third step's half; the others start over at the first step, after a good connection.
    assert!(
        reconnects[0].0 >= Duration::from_millis(200),
        "{reconnects:?}"
    );
    assert!(
        reconnects[1].0 >= Duration::from_millis(20),
        "{reconnects:?}"
    );
    assert!(
        reconnects[2].0 <= Duration::from_millis(10),
        "{reconnects:?}"
    );
    assert!(
        reconnects[3].0 <= Duration::from_millis(10),
        "{reconnects:?}"
    );
    let shown: Vec<String> = statuses
        .picked(reconnect_reason)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(shown[0].contains("too many connections"), "{shown:?}");
    assert!(shown[1].contains("too many messages"), "{shown:?}");
    client.stop().await.unwrap();
}

#[tokio::test]
async fn control_messages_are_kept_apart_and_everything_else_is_an_event() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(fast_client(&server, &statuses), app.router());
    server.wait_subscribed(1).await;
    for text in [
        "not json at all",
        "[1,2,3]",
        r#"{"type":"dance"}"#,
        r#"{"type":"subscribed","inbox_ids":"inb_a"}"#,
        r#"{"no_event":true}"#,
        "{\"event\":\"x\",\"event_id\":\"evt_\u{1b}[2J\"",
    ] {
        server.broadcast_text(text);
    }
    server.broadcast(Message::Binary(b"\x00\x01".to_vec().into()));
    server.broadcast_text(r#"{"type":"error","message":"something\nodd"}"#);
    server.broadcast_text(r#"{"type":"unsubscribed","inbox_ids":["inb_z"]}"#);
    server.broadcast_text(r#"{"type":"pong"}"#);
    server.push_event("evt_after", "inb_a");
    statuses.wait("evt_after", 1, handled("evt_after")).await;

    let skipped = statuses.picked(|status| match status {
        ClientStatus::SkippedMessage { reason } => Some(reason.clone()),
        _ => None,
    });
    // What is not a control message is an event, which the service gets (below); only
    // unknown or malformed control messages and binary frames are skipped.
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(matches!(&skipped[0], SkipReason::UnknownType { kind } if kind == "dance"));
    assert!(matches!(skipped[1], SkipReason::MalformedControl { .. }));
    assert!(matches!(skipped[2], SkipReason::Binary { len: 2 }));
    let errors = statuses.picked(|status| match status {
        ClientStatus::ServerError { message } => Some(message.clone()),
        _ => None,
    });
    assert_eq!(errors, ["something\nodd"]);
    assert_eq!(
        statuses.count(
            |s| matches!(s, ClientStatus::Unsubscribed { inbox_ids } if inbox_ids == &["inb_z"])
        ),
        1
    );
    // Printed, what came from the server stays on one line.
    for status in statuses.all() {
        let shown = status.to_string();
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
    }
    // Nothing of it ended the stream, and no control message reached the service. The four
    // texts that are not control messages did, as events without an id (the model cannot
    // read them: not JSON, an array, no `event`, cut short), then evt_after.
    assert_eq!(statuses.count(|s| reconnect_reason(s).is_some()), 0);
    app.wait_calls("every event", 5).await;
    let mut called = app.called();
    called.sort();
    assert_eq!(called, ["", "", "", "", "evt_after"]);
    for call in app.calls() {
        assert!(call.extensions_agree);
    }
    client.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_event_is_retried_reported_dead_lettered_and_the_position_moves_past_it() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    // evt_2 fails every attempt (the first run's three, with two retries).
    let app = App::new(|event_id, attempt| match (event_id, attempt) {
        ("evt_2", 1) => Action::Status(StatusCode::SERVICE_UNAVAILABLE),
        ("evt_2", 2) => Action::Panic,
        ("evt_2", _) => Action::Status(StatusCode::INTERNAL_SERVER_ERROR),
        _ => Action::Ok,
    });
    let resume = MemoryResumeStore::new();
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(resume.clone()),
        app.router(),
    );
    // The dead letters: the events the client gave up on, as its status hook sees them.
    let letters = || {
        statuses.picked(|status| match status {
            ClientStatus::HandlerFailed {
                event, attempts, ..
            } => Some((Arc::clone(event), *attempts)),
            _ => None,
        })
    };
    server.wait_subscribed(1).await;
    for index in 1..=9 {
        server.push_event(&format!("evt_{index}"), "inb_a");
    }
    statuses
        .wait("evt_2 failed", 1, |status| {
            matches!(status, ClientStatus::HandlerFailed { event, .. } if event.event_id() == Some("evt_2"))
        })
        .await;
    statuses.wait("evt_9", 1, handled("evt_9")).await;
    let failure = statuses.picked(|status| match status {
        ClientStatus::HandlerFailed {
            attempts, failure, ..
        } => Some((*attempts, failure.clone())),
        _ => None,
    });
    assert_eq!(failure.len(), 1);
    assert_eq!(failure[0].0, 3);
    assert!(matches!(
        failure[0].1,
        HandlerFailure::Status(StatusCode::INTERNAL_SERVER_ERROR)
    ));
    // The dead letter carries the event's bytes as received, once.
    {
        let letters = letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].0.event_id(), Some("evt_2"));
        assert_eq!(letters[0].1, 3);
        assert_eq!(
            letters[0].0.raw(),
            event("evt_2", "inb_a", "message.received").as_bytes()
        );
    }
    // The failure does not pin the position: it moves to the newest event.
    server
        .wait_until("the position at evt_9", Duration::from_secs(10), |_| {
            resume.position().as_deref() == Some("evt_9")
        })
        .await;

    // The next connection resumes after evt_9; evt_2 is not tried again.
    server.close_all(1001, "");
    statuses.wait("subscribed again", 2, is_subscribed).await;
    assert_eq!(
        server.client_messages_of("subscribe")[1]["last_event_id"],
        "evt_9"
    );
    server.push_event("evt_10", "inb_a");
    statuses.wait("evt_10", 1, handled("evt_10")).await;
    assert_eq!(app.calls_for("evt_2"), 3);
    assert_eq!(letters().len(), 1);
    client.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_given_up_on_behind_a_slow_one_is_not_run_again_by_the_replay() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let gate = Arc::new(Notify::new());
    let app = {
        let gate = Arc::clone(&gate);
        App::new(move |event_id, _| match event_id {
            "evt_slow" => Action::Wait(Arc::clone(&gate)),
            "evt_bad" => Action::Status(StatusCode::INTERNAL_SERVER_ERROR),
            _ => Action::Ok,
        })
    };
    let resume = MemoryResumeStore::starting_at("evt_0");
    server.store_only(&event("evt_0", "inb_a", "message.received"));
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(resume.clone()),
        app.router(),
    );
    server.wait_subscribed(1).await;
    server.push_event("evt_slow", "inb_a");
    server.push_event("evt_bad", "inb_a");
    server.push_event("evt_ok", "inb_a");
    statuses.wait("evt_ok", 1, handled("evt_ok")).await;
    statuses
        .wait("evt_bad failed", 1, |status| {
            matches!(status, ClientStatus::HandlerFailed { .. })
        })
        .await;
    // The slow one holds the position; the replay after a reconnect brings all three.
    assert_eq!(resume.position().as_deref(), Some("evt_0"));
    server.close_all(1001, "");
    statuses.wait("subscribed again", 2, is_subscribed).await;
    gate.notify_one();
    statuses.wait("evt_slow", 1, handled("evt_slow")).await;
    server
        .wait_until("the position at evt_ok", Duration::from_secs(10), |_| {
            resume.position().as_deref() == Some("evt_ok")
        })
        .await;
    assert_eq!(app.calls_for("evt_bad"), 3, "given up on: not run again");
    assert_eq!(app.calls_for("evt_ok"), 1);
    assert_eq!(
        statuses.count(|s| matches!(s, ClientStatus::HandlerFailed { .. })),
        1
    );
    client.stop().await.unwrap();
}

#[tokio::test]
async fn a_409_in_flight_elsewhere_is_tried_again_later_without_using_the_retries() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    // What the dedup layer answers while another copy runs: 409, then 200 once it is done.
    let app = App::new(|event_id, attempt| match (event_id, attempt) {
        ("evt_busy", 1..=4) => Action::Status(StatusCode::CONFLICT),
        ("evt_stuck", _) => Action::Status(StatusCode::CONFLICT),
        _ => Action::Ok,
    });
    let client = Running::spawn(fast_client(&server, &statuses), app.router());
    server.wait_subscribed(1).await;
    server.push_event("evt_busy", "inb_a");
    server.push_event("evt_stuck", "inb_a");
    statuses.wait("evt_busy", 1, handled("evt_busy")).await;
    let attempts = statuses.picked(|status| match status {
        ClientStatus::EventHandled {
            event_id: Some(id),
            attempts,
            ..
        } if id == "evt_busy" => Some(*attempts),
        _ => None,
    });
    // Four 409s and a 200, with only two retries for failures.
    assert_eq!(attempts, [5]);
    // Bounded: a 409 that never ends becomes a failure after the in-flight tries and
    // then the retries.
    statuses
        .wait("evt_stuck failed", 1, |status| {
            matches!(status, ClientStatus::HandlerFailed { .. })
        })
        .await;
    let failed = statuses.picked(|status| match status {
        ClientStatus::HandlerFailed {
            event,
            attempts,
            failure,
        } => Some((
            event.event_id().unwrap_or_default().to_owned(),
            *attempts,
            failure.to_string(),
        )),
        _ => None,
    });
    assert_eq!(
        failed,
        [(
            "evt_stuck".to_owned(),
            1 + DEFAULT_IN_FLIGHT_RETRIES + 2,
            "answered 409 Conflict".to_owned()
        )]
    );
    assert_eq!(
        app.calls_for("evt_stuck"),
        (1 + DEFAULT_IN_FLIGHT_RETRIES + 2) as usize
    );
    client.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_event_does_not_hold_later_ones_but_holds_the_position() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let gate = Arc::new(Notify::new());
    let app = {
        let gate = Arc::clone(&gate);
        App::new(move |event_id, _| match event_id {
            "evt_slow" => Action::Wait(Arc::clone(&gate)),
            _ => Action::Ok,
        })
    };
    let resume = MemoryResumeStore::starting_at("evt_0");
    server.store_only(&event("evt_0", "inb_a", "message.received"));
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(resume.clone()),
        app.router(),
    );
    server.wait_subscribed(1).await;
    server.push_event("evt_slow", "inb_a");
    for index in 1..=5 {
        server.push_event(&format!("evt_{index}"), "inb_a");
    }
    statuses.wait("evt_5", 1, handled("evt_5")).await;
    assert_eq!(statuses.count(handled("evt_slow")), 0);
    assert_eq!(resume.position().as_deref(), Some("evt_0"));
    gate.notify_one();
    statuses.wait("evt_slow", 1, handled("evt_slow")).await;
    server
        .wait_until("the position", Duration::from_secs(10), |_| {
            resume.position().as_deref() == Some("evt_5")
        })
        .await;
    client.stop().await.unwrap();
}

#[tokio::test]
async fn concurrency_is_bounded() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let gate = Arc::new(Notify::new());
    let app = {
        let gate = Arc::clone(&gate);
        App::new(move |_, _| Action::Wait(Arc::clone(&gate)))
    };
    let client = Running::spawn(fast_client(&server, &statuses).concurrency(3), app.router());
    server.wait_subscribed(1).await;
    for index in 1..=6 {
        server.push_event(&format!("evt_{index}"), "inb_a");
    }
    app.wait_calls("three calls", 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.calls().len(), 3, "more than 3 at once");
    for _ in 0..6 {
        gate.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    statuses
        .wait("all six", 6, |s| {
            matches!(s, ClientStatus::EventHandled { .. })
        })
        .await;
    client.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_resume_position_is_reported_and_the_client_subscribes_without_it() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(MemoryResumeStore::starting_at("evt_gone")),
        App::succeeding().router(),
    );
    statuses.wait("subscribed", 1, is_subscribed).await;
    assert_eq!(
        gaps(&statuses),
        [GapReason::PositionUnknown {
            last_event_id: "evt_gone".to_owned()
        }]
    );
    // The position is tried five times, on new connections, before it is dropped.
    let subscribes = server.client_messages_of("subscribe");
    assert_eq!(subscribes.len(), 6, "{subscribes:?}");
    for subscribe in &subscribes[..5] {
        assert_eq!(subscribe["last_event_id"], "evt_gone");
    }
    assert_eq!(subscribes[5].get("last_event_id"), None);
    let tries: Vec<u32> = statuses.picked(|status| match reconnect_reason(status) {
        Some(WebSocketError::PositionRefused { tries, .. }) => Some(tries),
        _ => None,
    });
    assert_eq!(tries, [1, 2, 3, 4]);
    server.push_event("evt_1", "inb_a");
    statuses.wait("evt_1", 1, handled("evt_1")).await;
    client.stop().await.unwrap();
}

#[tokio::test]
async fn a_server_error_answering_a_resumed_subscribe_does_not_drop_the_position_at_once() {
    // The server fails the first subscribe that carries the position (here: it does not
    // know the event yet), and knows it by the next connection.
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(
        fast_client(&server, &statuses)
            .reconnect_backoff(Duration::from_millis(400), Duration::from_millis(800))
            .resume_store(MemoryResumeStore::starting_at("evt_late")),
        app.router(),
    );
    statuses
        .wait("the server's error", 1, |s| {
            matches!(s, ClientStatus::ServerError { .. })
        })
        .await;
    server.store_only(&event("evt_late", "inb_a", "message.received"));
    server.store_only(&event("evt_missed", "inb_a", "message.received"));
    statuses
        .wait("evt_missed replayed", 1, handled("evt_missed"))
        .await;
    assert_eq!(gaps(&statuses), [], "no gap: the position was kept");
    // Usually the second subscription finds it; on a busy machine the test may store it
    // a connection later, which the tries allow for.
    let subscribes = server.client_messages_of("subscribe");
    assert!(subscribes.len() >= 2, "{subscribes:?}");
    for subscribe in &subscribes {
        assert_eq!(subscribe["last_event_id"], "evt_late", "{subscribes:?}");
    }
    assert_eq!(app.called(), ["evt_missed"]);
    client.stop().await.unwrap();
}

#[tokio::test]
async fn a_replay_that_reaches_100_warns_that_more_may_be_missed() {
    let server = TestServer::start().await;
    server.store_only(&event("evt_start", "inb_a", "message.received"));
    for index in 0..150 {
        server.store_only(&event(
            &format!("evt_{index:03}"),
            "inb_a",
            "message.received",
        ));
    }
    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(MemoryResumeStore::starting_at("evt_start")),
        app.router(),
    );
    statuses.wait("evt_099", 1, handled("evt_099")).await;
    statuses
        .wait("the gap warning", 1, |s| {
            matches!(s, ClientStatus::PossibleGap { .. })
        })
        .await;
    assert_eq!(
        gaps(&statuses),
        [GapReason::ReplayLimitReached {
            replayed: REPLAY_LIMIT
        }]
    );
    let shown = statuses
        .all()
        .iter()
        .find(|s| matches!(s, ClientStatus::PossibleGap { .. }))
        .unwrap()
        .to_string();
    assert!(shown.contains("only if a webhook URL is set"), "{shown}");
    assert_eq!(app.calls().len(), REPLAY_LIMIT);
    client.stop().await.unwrap();
}

#[tokio::test]
async fn a_short_replay_does_not_warn() {
    let server = TestServer::start().await;
    server.store_only(&event("evt_start", "inb_a", "message.received"));
    for index in 0..5 {
        server.store_only(&event(&format!("evt_{index}"), "inb_a", "message.received"));
    }
    let statuses = Statuses::default();
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(MemoryResumeStore::starting_at("evt_start")),
        App::succeeding().router(),
    );
    statuses.wait("evt_4", 1, handled("evt_4")).await;
    // Past the replay's quiet second (with room for a busy machine), live events don't
    // count towards it.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for index in 0..120 {
        server.push_event(&format!("evt_live_{index}"), "inb_a");
    }
    statuses
        .wait("evt_live_119", 1, handled("evt_live_119"))
        .await;
    assert_eq!(gaps(&statuses), []);
    client.stop().await.unwrap();
}

#[tokio::test]
async fn unhandled_events_beyond_the_replay_window_are_reported_at_the_reconnect() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    // Two events still being handled at the reconnect: evt_000 holds the position, and
    // evt_101 lies beyond the replay's 100.
    let gate = Arc::new(Notify::new());
    let app = {
        let gate = Arc::clone(&gate);
        App::new(move |event_id, _| match event_id {
            "evt_000" | "evt_101" => Action::Wait(Arc::clone(&gate)),
            _ => Action::Ok,
        })
    };
    server.store_only(&event("evt_start", "inb_a", "message.received"));
    let client = Running::spawn(
        fast_client(&server, &statuses)
            .handler_retries(0, Duration::from_millis(1))
            .resume_store(MemoryResumeStore::starting_at("evt_start")),
        app.router(),
    );
    server.wait_subscribed(1).await;
    for index in 0..110 {
        server.push_event(&format!("evt_{index:03}"), "inb_a");
    }
    statuses
        .wait("108 outcomes", 108, |s| {
            matches!(
                s,
                ClientStatus::EventHandled { .. } | ClientStatus::HandlerFailed { .. }
            )
        })
        .await;
    server.close_all(1001, "");
    statuses.wait("subscribed again", 2, is_subscribed).await;
    let gaps = gaps(&statuses);
    assert!(
        gaps.contains(&GapReason::BeyondReplay { unhandled: 1 }),
        "{gaps:?}"
    );
    gate.notify_waiters();
    client.stop().await.unwrap();
}

#[tokio::test]
async fn wss_with_a_test_ca_and_certificate_verification() {
    let ca = TestCa::new();
    let server = TestServer::with_options(ServerOptions {
        tls: Some(ca.server_config()),
        ..ServerOptions::default()
    })
    .await;
    assert!(server.url().starts_with("wss://"));

    // The default roots don't know the test CA: every attempt fails, none gets through.
    let refused = Statuses::default();
    let untrusting = Running::spawn(fast_client(&server, &refused), App::succeeding().router());
    refused
        .wait("a refused certificate", 2, |s| {
            matches!(reconnect_reason(s), Some(WebSocketError::Connect { .. }))
        })
        .await;
    let shown = refused
        .all()
        .iter()
        .find(|s| reconnect_reason(s).is_some())
        .unwrap()
        .to_string();
    assert!(shown.contains("certificate"), "{shown}");
    assert!(server.handshakes().is_empty());
    untrusting.stop().await.unwrap();

    let statuses = Statuses::default();
    let app = App::succeeding();
    let client = Running::spawn(
        fast_client(&server, &statuses).tls_config(ca.client_config()),
        app.router(),
    );
    server.wait_subscribed(1).await;
    server.push_event("evt_tls", "inb_a");
    statuses.wait("evt_tls", 1, handled("evt_tls")).await;
    assert_eq!(server.handshakes()[0].method, AuthMethod::Header);
    client.stop().await.unwrap();
}

#[tokio::test]
async fn plain_ws_is_refused_beyond_loopback() {
    let error = WebSocketClient::new(API_KEY)
        .unwrap()
        .url("ws://api.openmail.sh/v1/ws")
        .unwrap_err();
    assert!(matches!(error, WebSocketError::InsecureUrl), "{error}");
    assert!(
        WebSocketClient::new(API_KEY)
            .unwrap()
            .url("ws://127.0.0.1:9/v1/ws")
            .is_ok()
    );
}

#[tokio::test]
async fn shutdown_closes_with_1000_and_saves_the_position() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let resume = MemoryResumeStore::new();
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(resume.clone()),
        App::succeeding().router(),
    );
    server.wait_subscribed(1).await;
    server.push_event("evt_1", "inb_a");
    statuses.wait("evt_1", 1, handled("evt_1")).await;
    client.stop().await.unwrap();
    server
        .wait_until("the close", Duration::from_secs(20), |server| {
            !server.ended().is_empty()
        })
        .await;
    assert_eq!(server.ended(), [Ended::ClosedByClient(Some(1000))]);
    assert_eq!(resume.position().as_deref(), Some("evt_1"));
}

#[tokio::test]
async fn the_client_serves_an_axum_router_on_a_spawned_task() {
    // `serve` must be spawnable: its future is Send.
    fn assert_send<T: Send>(_: &T) {}
    let client = WebSocketClient::new(API_KEY).unwrap();
    let future = client.serve(App::succeeding().router());
    assert_send(&future);
    drop(future);
}

/// A store whose `load` fails a few times first, as a database still starting would.
struct Flaky {
    failures_left: std::sync::Mutex<u32>,
}

impl openmail_webhooks::websocket::ResumeStore for Flaky {
    fn load(&self) -> ResumeFuture<Option<String>> {
        let mut left = self.failures_left.lock().unwrap();
        let result = if *left > 0 {
            *left -= 1;
            Err("the database is starting".into())
        } else {
            Ok(None)
        };
        Box::pin(async move { result })
    }

    fn save(&self, _event_id: &str) -> ResumeFuture<()> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_resume_store_that_cannot_load_is_retried_before_connecting() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let client = Running::spawn(
        fast_client(&server, &statuses).resume_store(Flaky {
            failures_left: std::sync::Mutex::new(2),
        }),
        App::succeeding().router(),
    );
    statuses.wait("subscribed", 1, is_subscribed).await;
    let reasons = statuses.picked(reconnect_reason);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|reason| matches!(reason, WebSocketError::ResumeStore { .. }))
    );
    assert!(
        statuses.all()[1]
            .to_string()
            .contains("the database is starting")
    );
    assert_eq!(
        server.handshakes().len(),
        1,
        "no connection before the position"
    );
    client.stop().await.unwrap();
}

#[tokio::test]
async fn stopping_waits_for_the_grace_then_leaves_unfinished_events_for_the_next_run() {
    let server = TestServer::start().await;
    let statuses = Statuses::default();
    let gate = Arc::new(Notify::new());
    let app = {
        let gate = Arc::clone(&gate);
        App::new(move |event_id, _| match event_id {
            "evt_stuck" => Action::Wait(Arc::clone(&gate)),
            _ => Action::Ok,
        })
    };
    let resume = MemoryResumeStore::new();
    let client = Running::spawn(
        fast_client(&server, &statuses)
            .resume_store(resume.clone())
            .shutdown_grace(Duration::from_millis(300)),
        app.router(),
    );
    server.wait_subscribed(1).await;
    server.push_event("evt_1", "inb_a");
    server.push_event("evt_stuck", "inb_a");
    server.push_event("evt_3", "inb_a");
    statuses.wait("evt_3", 1, handled("evt_3")).await;
    app.wait_calls("evt_stuck called", 3).await;
    let started = std::time::Instant::now();
    client.stop().await.unwrap();
    // The grace is 300 ms; this only catches a stop that waits for the stuck handler.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(statuses.count(handled("evt_stuck")), 0);
    assert_eq!(resume.position().as_deref(), Some("evt_1"));
}
