//! The test OpenMail WebSocket server (tests/websocket_support) against a plain
//! tokio-tungstenite client, so that the client's tests rest on a server whose own
//! behaviour is checked: authentication, subscriptions and filters, replay and its cap,
//! protocol pings, the connection and rate limits, close codes, and TLS.

use std::time::Duration;

use crate::websocket_support::tls::TestCa;
use crate::websocket_support::{API_KEY, AuthMethod, Ended, ServerOptions, TestServer, event};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket<S> = WebSocketStream<S>;

async fn connect_with(url: &str, key: Option<&str>) -> Socket<TcpStream> {
    let mut request = url.into_client_request().unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    let host = request.uri().authority().unwrap().as_str().to_owned();
    let stream = TcpStream::connect(host).await.unwrap();
    tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap()
        .0
}

async fn connect(server: &TestServer) -> Socket<TcpStream> {
    connect_with(&server.url(), Some(API_KEY)).await
}

async fn send<S>(socket: &mut Socket<S>, value: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    socket.send(Message::text(value.to_string())).await.unwrap();
}

/// The next data frame as JSON, or the close code as `{"close": code}`.
async fn next<S>(socket: &mut Socket<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no message within 10 s");
        match message {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => {
                return json!({ "close": frame.map(|frame| u16::from(frame.code)) });
            }
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return json!({ "close": null }),
        }
    }
}

async fn subscribe(socket: &mut Socket<TcpStream>, message: Value) -> Value {
    send(socket, message).await;
    next(socket).await
}

#[tokio::test]
async fn the_key_authenticates_by_header_or_query_and_a_wrong_one_gets_4001() {
    let server = TestServer::start().await;
    let mut by_header = connect(&server).await;
    let answer = subscribe(&mut by_header, json!({"type": "subscribe"})).await;
    assert_eq!(answer["type"], "subscribed");

    let mut by_query = connect_with(&format!("{}?token={API_KEY}", server.url()), None).await;
    let answer = subscribe(&mut by_query, json!({"type": "subscribe"})).await;
    assert_eq!(answer["type"], "subscribed");

    let mut wrong = connect_with(&server.url(), Some("om_wrong")).await;
    assert_eq!(next(&mut wrong).await, json!({"close": 4001}));
    let mut none = connect_with(&server.url(), None).await;
    assert_eq!(next(&mut none).await, json!({"close": 4001}));

    let methods: Vec<(AuthMethod, bool)> = server
        .handshakes()
        .iter()
        .map(|handshake| (handshake.method, handshake.authorized))
        .collect();
    assert_eq!(
        methods,
        [
            (AuthMethod::Header, true),
            (AuthMethod::Query, true),
            (AuthMethod::Header, false),
            (AuthMethod::None, false)
        ]
    );

    server.revoke(API_KEY);
    assert_eq!(next(&mut by_header).await, json!({"close": 4001}));
    assert_eq!(next(&mut by_query).await, json!({"close": 4001}));
}

#[tokio::test]
async fn subscriptions_filter_and_accumulate() {
    let server = TestServer::start().await;
    let mut socket = connect(&server).await;
    let answer = subscribe(
        &mut socket,
        json!({"type": "subscribe", "inbox_ids": ["inb_a"], "event_types": ["message.received"]}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"type": "subscribed", "inbox_ids": ["inb_a"], "event_types": ["message.received"]})
    );
    server.push(&event("evt_other_inbox", "inb_b", "message.received"));
    server.push(&event("evt_other_type", "inb_a", "inbox.suspended"));
    server.push(&event("evt_match", "inb_a", "message.received"));
    assert_eq!(next(&mut socket).await["event_id"], "evt_match");

    let answer = subscribe(
        &mut socket,
        json!({"type": "subscribe", "inbox_ids": ["inb_b"]}),
    )
    .await;
    assert_eq!(answer["inbox_ids"], json!(["inb_a", "inb_b"]));
    server.push(&event("evt_b", "inb_b", "message.received"));
    assert_eq!(next(&mut socket).await["event_id"], "evt_b");

    let answer = subscribe(
        &mut socket,
        json!({"type": "unsubscribe", "inbox_ids": ["inb_a"]}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"type": "unsubscribed", "inbox_ids": ["inb_a"]})
    );
    server.push(&event("evt_a_gone", "inb_a", "message.received"));
    server.push(&event("evt_b_again", "inb_b", "message.received"));
    assert_eq!(next(&mut socket).await["event_id"], "evt_b_again");

    let answer = subscribe(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(answer, json!({"type": "pong"}));
    let answer = subscribe(&mut socket, json!({"type": "dance"})).await;
    assert_eq!(answer["type"], "error");
    socket.send(Message::text("{not json")).await.unwrap();
    assert_eq!(next(&mut socket).await["type"], "error");
}

#[tokio::test]
async fn an_inbox_the_account_does_not_own_is_an_error() {
    let server = TestServer::with_options(ServerOptions {
        owned_inboxes: Some(vec!["inb_mine".to_owned()]),
        ..ServerOptions::default()
    })
    .await;
    let mut socket = connect(&server).await;
    let answer = subscribe(
        &mut socket,
        json!({"type": "subscribe", "inbox_ids": ["inb_theirs"]}),
    )
    .await;
    assert_eq!(answer["type"], "error");
    let answer = subscribe(
        &mut socket,
        json!({"type": "subscribe", "inbox_ids": ["inb_mine"]}),
    )
    .await;
    assert_eq!(answer["type"], "subscribed");
}

#[tokio::test]
async fn replay_after_last_event_id_is_capped_at_100_and_an_unknown_id_is_an_error() {
    let server = TestServer::start().await;
    for index in 0..150 {
        server.store_only(&event(
            &format!("evt_{index:03}"),
            "inb_a",
            "message.received",
        ));
    }
    let mut socket = connect(&server).await;
    let answer = subscribe(
        &mut socket,
        json!({"type": "subscribe", "last_event_id": "evt_nope"}),
    )
    .await;
    assert_eq!(
        answer,
        json!({"type": "error", "message": "unknown last_event_id"})
    );

    let answer = subscribe(
        &mut socket,
        json!({"type": "subscribe", "last_event_id": "evt_009"}),
    )
    .await;
    assert_eq!(answer["type"], "subscribed");
    let mut replayed = Vec::new();
    for _ in 0..100 {
        replayed.push(
            next(&mut socket).await["event_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(replayed.first().unwrap(), "evt_010");
    assert_eq!(replayed.last().unwrap(), "evt_109");
    // Nothing more is replayed: the next frame is the live event.
    server.push_event("evt_live", "inb_a");
    assert_eq!(next(&mut socket).await["event_id"], "evt_live");
}

#[tokio::test]
async fn an_unanswered_protocol_ping_closes_the_connection() {
    let server = TestServer::with_options(ServerOptions {
        ping_interval: Duration::from_millis(100),
        // Room for a busy machine: the tests of this binary run eight at a time.
        pong_timeout: Duration::from_millis(400),
        ..ServerOptions::default()
    })
    .await;

    // A client that reads answers pings (tungstenite does it while reading).
    let mut answering = connect(&server).await;
    let reader = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_millis(1200), async {
            while let Some(Ok(_)) = answering.next().await {}
        })
        .await
        .is_err()
    });
    // One that doesn't read doesn't answer.
    let mut silent = connect(&server).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        reader.await.unwrap(),
        "the answering client was disconnected"
    );
    assert_eq!(next(&mut silent).await, json!({"close": 1008}));
    assert!(server.pongs() >= 2, "pongs: {}", server.pongs());
}

#[tokio::test]
async fn more_than_30_messages_in_10_s_close_with_4029() {
    let server = TestServer::start().await;
    let mut socket = connect(&server).await;
    for _ in 0..30 {
        send(&mut socket, json!({"type": "ping"})).await;
    }
    for _ in 0..30 {
        assert_eq!(next(&mut socket).await, json!({"type": "pong"}));
    }
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await["type"], "error");
    assert_eq!(next(&mut socket).await, json!({"close": 4029}));
}

#[tokio::test]
async fn one_connection_over_the_limit_gets_an_error_and_4008() {
    let server = TestServer::with_options(ServerOptions {
        max_connections: 2,
        ..ServerOptions::default()
    })
    .await;
    let _first = connect(&server).await;
    let _second = connect(&server).await;
    let mut third = connect(&server).await;
    assert_eq!(next(&mut third).await["type"], "error");
    assert_eq!(next(&mut third).await, json!({"close": 4008}));
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn close_codes_on_demand_and_dropped_connections() {
    let server = TestServer::start().await;
    for code in [1001u16, 4008, 4029] {
        let mut socket = connect(&server).await;
        server
            .wait_until("a connection", Duration::from_secs(20), |s| {
                s.connections() == 1
            })
            .await;
        server.close_all(code, "bye");
        assert_eq!(next(&mut socket).await, json!({"close": code}));
        server
            .wait_until("no connection", Duration::from_secs(20), |s| {
                s.connections() == 0
            })
            .await;
    }
    let mut socket = connect(&server).await;
    server
        .wait_until("a connection", Duration::from_secs(20), |s| {
            s.connections() == 1
        })
        .await;
    server.drop_all();
    assert_eq!(next(&mut socket).await, json!({"close": null}));
    assert_eq!(
        server.ended(),
        [
            Ended::ClosedByServer(1001),
            Ended::ClosedByServer(4008),
            Ended::ClosedByServer(4029),
            Ended::Dropped
        ]
    );
}

#[tokio::test]
async fn tls_with_the_test_ca() {
    let ca = TestCa::new();
    let server = TestServer::with_options(ServerOptions {
        tls: Some(ca.server_config()),
        ..ServerOptions::default()
    })
    .await;
    assert!(server.url().starts_with("wss://localhost:"));
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    send(&mut socket, json!({"type": "subscribe"})).await;
    assert_eq!(next(&mut socket).await["type"], "subscribed");

    // Another CA's client refuses the certificate.
    let other = TestCa::new();
    let connector = tokio_rustls::TlsConnector::from(other.client_config());
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
}
