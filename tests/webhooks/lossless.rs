//! The lossless rule, over real HTTP: once a delivery's signature verifies, its event
//! reaches the handler, whatever its content. The README quickstart's stack (the layer
//! alone on `axum::serve`), with correctly signed bodies that the typed model cannot read
//! in full: lone surrogate escapes (what `JSON.stringify` writes for a text cut inside an
//! emoji), bodies that are not JSON, JSON without a string `event`, an array; and, with
//! per-inbox secrets, a claim that cannot be read to choose a secret.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::{Extension, Router, routing};
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openmail_webhooks::tenant::InboxSecrets;
use openmail_webhooks::{Delivery, Event, VerifyOpenMailLayer};
use tokio::net::TcpListener;

use crate::support::{SECRET, client, post, signed_headers, unix_now};

/// The events the handler saw, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Arc<Event>>>>);

impl Seen {
    fn take(&self) -> Vec<Arc<Event>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

async fn serve(layer: VerifyOpenMailLayer) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let recorder = seen.clone();
    let app = Router::new()
        .route(
            "/webhooks",
            routing::post(
                move |Extension(event): Extension<Arc<Event>>,
                      Extension(delivery): Extension<Delivery>| {
                    let recorder = recorder.clone();
                    async move {
                        // The delivery and the event agree on the ids.
                        assert_eq!(delivery.event_id(), event.event_id());
                        assert_eq!(delivery.inbox_id(), event.inbox_id());
                        recorder.0.lock().unwrap().push(event);
                        "ok"
                    }
                },
            ),
        )
        .layer(layer);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// Signs `body` with `secret` and POSTs it over HTTP/1.1; the status and the response body.
async fn deliver(addr: SocketAddr, secret: &str, body: &[u8]) -> (StatusCode, String) {
    let headers = signed_headers(secret, unix_now(), body);
    post(&client(), addr, "/webhooks", &headers, body.to_vec()).await
}

/// The same over HTTP/2 (h2c, prior knowledge).
async fn deliver_h2(addr: SocketAddr, secret: &str, body: &[u8]) -> StatusCode {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::post(format!("http://{addr}/webhooks"));
    for (name, value) in signed_headers(secret, unix_now(), body) {
        request = request.header(name, value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body,
        )))
        .unwrap();
    sender.send_request(request).await.unwrap().status()
}

/// What no reading of an event may do: fail to serialise, or fail to give its JSON.
fn serialises(event: &Event) -> Vec<u8> {
    let written = serde_json::to_vec(event).expect("Serialize cannot fail");
    let json = match event {
        Event::Unknown(unknown) => Some(unknown.json()),
        Event::Malformed(malformed) => Some(malformed.json()),
        _ => None,
    };
    if let Some(json) = json {
        assert_eq!(serde_json::to_vec(&json).unwrap(), written);
    }
    written
}

/// Serialises, and what it writes parses again into an equal event.
fn round_trips(event: &Event) {
    let written = serialises(event);
    assert_eq!(&Event::parse(written.into()), event);
}

fn message(body_text: &str, extra: &str) -> String {
    format!(
        r#"{{"event":"message.received","event_id":"evt_lossless","inbox_id":"inb_a",{extra}"message":{{"id":"msg_1","subject":"Re: plans","body_text":"{body_text}","attachments":[{{"filename":"a.txt","parsedText":"ok"}}]}}}}"#
    )
}

#[tokio::test]
async fn lone_surrogates_in_texts_reach_the_handler_as_replacement_characters() {
    let (addr, seen) = serve(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let cases = [
        // A text cut inside an emoji: JSON.stringify writes the lone high half.
        message(r"see you \ud83d", ""),
        message(r"see you \ud83d tomorrow", ""),
        // A lone low half in a field the model does not read.
        message("plain", r#""note":"x\udc00y","#),
        // In the subject, and in an attachment's parsedText.
        message("plain", "")
            .replace("Re: plans", r"Re: \udc00plans")
            .replace(r#""parsedText":"ok""#, r#""parsedText":"page \ud800 one""#),
    ];
    for body in &cases {
        assert_eq!(
            deliver(addr, SECRET, body.as_bytes()).await,
            (StatusCode::OK, "ok".to_owned()),
            "{body}"
        );
    }
    let events = seen.take();
    assert_eq!(events.len(), cases.len());
    for event in &events {
        let Event::MessageReceived(received) = &**event else {
            panic!("not a message.received: {event:?}");
        };
        assert_eq!(received.event_id(), "evt_lossless");
        assert_eq!(received.inbox_id(), Some("inb_a"));
        round_trips(event);
    }
    let text = |index: usize| {
        let Event::MessageReceived(received) = &*events[index] else {
            unreachable!()
        };
        received.message.body_text().unwrap().into_owned()
    };
    assert_eq!(text(0), "see you \u{fffd}");
    assert_eq!(text(1), "see you \u{fffd} tomorrow");
    assert_eq!(text(2), "plain");
    let Event::MessageReceived(last) = &*events[3] else {
        unreachable!()
    };
    assert_eq!(last.message.subject(), Some("Re: \u{fffd}plans"));
    let attachment = last.message.attachments().next().unwrap();
    assert_eq!(
        attachment.parsed_text().as_deref(),
        Some("page \u{fffd} one")
    );
    // Over HTTP/2 as well.
    assert_eq!(
        deliver_h2(addr, SECRET, cases[0].as_bytes()).await,
        StatusCode::OK
    );
    assert_eq!(seen.take().len(), 1);
}

#[tokio::test]
async fn identifiers_with_lone_surrogates_stay_apart() {
    let (addr, seen) = serve(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    for id in [r"evt_\ud800", r"evt_\udc00"] {
        let body = format!(
            r#"{{"event":"inbox.suspended","event_id":"{id}","inbox_id":"inb_\udc01","reason":"x"}}"#
        );
        assert_eq!(
            deliver(addr, SECRET, body.as_bytes()).await.0,
            StatusCode::OK
        );
    }
    let events = seen.take();
    let ids: Vec<_> = events.iter().map(|event| event.event_id()).collect();
    assert_eq!(ids, [Some(r"evt_\ud800"), Some(r"evt_\udc00")]);
    for event in &events {
        assert_eq!(event.event_type(), "inbox.suspended");
        assert_eq!(event.inbox_id(), Some(r"inb_\udc01"));
        round_trips(event);
    }
}

#[tokio::test]
async fn bodies_the_model_cannot_read_reach_the_handler_as_malformed() {
    let (addr, seen) = serve(VerifyOpenMailLayer::new(SECRET).unwrap()).await;
    let cases: [(&[u8], Option<&str>); 6] = [
        (b"not json at all", None),
        (b"", None),
        (b"\xff\xfe{\"event\":1}", None),
        (
            br#"[{"event":"message.received","event_id":"evt_1"}]"#,
            None,
        ),
        (br#"{"event":7,"event_id":"evt_7"}"#, Some("evt_7")),
        (br#"{"event_id":"evt_8","inbox_id":"inb_a"}"#, Some("evt_8")),
    ];
    for (body, _) in &cases {
        assert_eq!(
            deliver(addr, SECRET, body).await,
            (StatusCode::OK, "ok".to_owned()),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let events = seen.take();
    assert_eq!(events.len(), cases.len());
    for (event, (body, event_id)) in events.iter().zip(&cases) {
        let Event::Malformed(malformed) = &**event else {
            panic!("not malformed: {event:?}");
        };
        // No string `event`: the type is empty, and the reason says what was wrong.
        assert_eq!(event.event_type(), "");
        assert_eq!(event.event_id(), *event_id);
        assert_eq!(event.raw().as_ref(), *body);
        assert!(!malformed.error().is_empty());
        round_trips(event);
    }
}

#[tokio::test]
async fn an_unreadable_claim_verifies_under_the_account_secret() {
    let secrets = InboxSecrets::new()
        .inbox("inb_a", ["whsec_a"])
        .unwrap()
        .account(["whsec_account"])
        .unwrap();
    let (addr, seen) = serve(VerifyOpenMailLayer::with_resolver(secrets)).await;
    let unreadable: [&[u8]; 4] = [
        b"not json",
        br#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a","inbox_id":"inb_b"}"#,
        br#"{"event":"message.received","event_id":"evt_2","inbox_id":42}"#,
        br#"{"event":"message.received","event_id":"evt_3","inbox_id":"inb_a""#,
    ];
    for body in unreadable {
        assert_eq!(
            deliver(addr, "whsec_account", body).await,
            (StatusCode::OK, "ok".to_owned()),
            "{}",
            String::from_utf8_lossy(body)
        );
        // An inbox's own secret never speaks for a body whose inbox cannot be read: refused
        // as any forgery is.
        assert_eq!(
            deliver(addr, "whsec_a", body).await,
            (StatusCode::BAD_REQUEST, "signature mismatch".to_owned()),
        );
    }
    let events = seen.take();
    assert_eq!(events.len(), unreadable.len());
    for event in &events {
        assert!(matches!(&**event, Event::Malformed(_)), "{event:?}");
        assert_eq!(event.inbox_id(), None);
        serialises(event);
    }
    // Without an account secret there is nothing to try: the same answer as a forgery.
    let (addr, seen) = serve(VerifyOpenMailLayer::with_resolver(
        InboxSecrets::new().inbox("inb_a", ["whsec_a"]).unwrap(),
    ))
    .await;
    assert_eq!(
        deliver(addr, "whsec_a", b"not json").await,
        (StatusCode::BAD_REQUEST, "signature mismatch".to_owned()),
    );
    assert!(seen.take().is_empty());
}
