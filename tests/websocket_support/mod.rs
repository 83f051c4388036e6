//! A test-only OpenMail WebSocket server, on a real WebSocket library (tokio-tungstenite),
//! listening on an ephemeral loopback port, optionally over TLS with a certificate authority
//! generated at test time (see [`tls`]).
//!
//! It implements the documented protocol (OPENMAIL-WEBSOCKETS.md):
//! - authentication by `Authorization: Bearer <key>` or `?token=<key>`; a wrong key is
//!   accepted at the HTTP level and then closed with `4001`, and so is every connection of
//!   a key that [`TestServer::revoke`] revokes;
//! - `subscribe` with `inbox_ids` and `event_types` filters that accumulate, answered with
//!   `subscribed` (empty arrays mean "all"); an inbox outside
//!   [`ServerOptions::owned_inboxes`] gets an `error`;
//! - replay after `last_event_id`: the events pushed after that id, oldest first, filtered
//!   by the subscription, at most [`ServerOptions::replay_limit`] (100), sent right after
//!   `subscribed` and before any live event; an unknown id gets an `error` and the
//!   `subscribe` is not applied;
//! - `unsubscribe` (some inboxes, or everything), answered with `unsubscribed`;
//! - the app-level `ping`, answered with `pong`; invalid JSON and unknown types get an
//!   `error`;
//! - protocol pings every [`ServerOptions::ping_interval`], and a close (`1008`) when one
//!   is not answered within [`ServerOptions::pong_timeout`];
//! - at most [`ServerOptions::max_connections`] connections per key: one more gets an
//!   `error` and `4008`;
//! - at most [`ServerOptions::rate_limit`] client data frames (text or binary; protocol
//!   pongs don't count) per [`ServerOptions::rate_window`]: one more gets an `error` and
//!   `4029`;
//! - close codes on demand ([`TestServer::close_all`]) and dropped TCP connections
//!   ([`TestServer::drop_all`]).
//!
//! The test pushes events with [`TestServer::push`]: each is kept in the history (for
//! replay) and sent at once to every connection whose subscription matches.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

#[cfg(feature = "websocket")]
pub mod harness;
pub mod tls;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The API key the server accepts unless told otherwise.
pub const API_KEY: &str = "om_test_key_0123456789";

/// How the server behaves. [`Default`] is the documented production behaviour.
#[derive(Clone)]
pub struct ServerOptions {
    /// The keys that authenticate.
    pub api_keys: Vec<String>,
    /// How often the server sends a protocol ping to each connection.
    pub ping_interval: Duration,
    /// How long a ping may stay unanswered before the server closes the connection.
    pub pong_timeout: Duration,
    /// Client data frames allowed per [`rate_window`](Self::rate_window).
    pub rate_limit: usize,
    /// The rate limit's window.
    pub rate_window: Duration,
    /// Connections allowed per key.
    pub max_connections: usize,
    /// How many events a `last_event_id` replays at most.
    pub replay_limit: usize,
    /// When set, the inboxes the account owns; subscribing to another is an `error`.
    pub owned_inboxes: Option<Vec<String>>,
    /// Answer `subscribe` (with `subscribed` and the replay). Off, the server stays silent.
    pub answer_subscribe: bool,
    /// Answer the app-level `ping` with `pong`. Off, the server stays silent.
    pub answer_ping: bool,
    /// Serve TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            api_keys: vec![API_KEY.to_owned()],
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            rate_limit: 30,
            rate_window: Duration::from_secs(10),
            max_connections: 10,
            replay_limit: 100,
            owned_inboxes: None,
            answer_subscribe: true,
            answer_ping: true,
            tls: None,
        }
    }
}

/// How a connection presented its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Header,
    Query,
    None,
}

/// What the server saw of one connection attempt.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub connection: u64,
    pub method: AuthMethod,
    pub authorized: bool,
    /// The request's path and query, as sent.
    pub target: String,
}

/// How a connection ended, as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The server closed it with this code.
    ClosedByServer(u16),
    /// The client closed it with this code (or none).
    ClosedByClient(Option<u16>),
    /// The server dropped it without a close frame.
    Dropped,
    /// The TCP connection ended or failed.
    Lost,
}

struct Stored {
    event_id: Option<String>,
    inbox_id: Option<String>,
    event_type: Option<String>,
    json: String,
}

#[derive(Default, Clone)]
struct Subscription {
    active: bool,
    /// `None`: every inbox.
    inboxes: Option<HashSet<String>>,
    /// `None`: every event type.
    types: Option<HashSet<String>>,
}

impl Subscription {
    fn matches(&self, event: &Stored) -> bool {
        self.active
            && self.inboxes.as_ref().is_none_or(|inboxes| {
                event
                    .inbox_id
                    .as_ref()
                    .is_some_and(|inbox| inboxes.contains(inbox))
            })
            && self.types.as_ref().is_none_or(|types| {
                event
                    .event_type
                    .as_ref()
                    .is_some_and(|kind| types.contains(kind))
            })
    }

    fn add(&mut self, inboxes: Option<Vec<String>>, types: Option<Vec<String>>) {
        let first = !self.active;
        self.active = true;
        self.inboxes = merge(first, self.inboxes.take(), inboxes);
        self.types = merge(first, self.types.take(), types);
    }

    fn describe(&self) -> Value {
        fn list(set: &Option<HashSet<String>>) -> Vec<String> {
            let mut items: Vec<String> = set.iter().flatten().cloned().collect();
            items.sort();
            items
        }
        json!({
            "type": "subscribed",
            "inbox_ids": list(&self.inboxes),
            "event_types": list(&self.types),
        })
    }
}

/// Filters accumulate: a list adds to the current one; no list means "all", and "all"
/// stays "all".
fn merge(
    first: bool,
    current: Option<HashSet<String>>,
    added: Option<Vec<String>>,
) -> Option<HashSet<String>> {
    match (first, current, added) {
        (_, _, None) => None,
        (true, _, Some(added)) => Some(added.into_iter().collect()),
        (false, None, Some(_)) => None,
        (false, Some(mut current), Some(added)) => {
            current.extend(added);
            Some(current)
        }
    }
}

enum Command {
    Send(Message),
    Close(u16, String),
    Drop,
}

struct Connection {
    key: String,
    subscription: Subscription,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Default)]
struct State {
    valid_keys: HashSet<String>,
    answer_subscribe: bool,
    answer_ping: bool,
    history: Vec<Stored>,
    connections: HashMap<u64, Connection>,
    next_connection: u64,
    handshakes: Vec<Handshake>,
    /// Every client data frame, parsed when it was JSON, per connection.
    client_messages: Vec<(u64, Value)>,
    pongs: HashMap<u64, usize>,
    pings_sent: HashMap<u64, usize>,
    ended: Vec<(u64, Ended)>,
    /// Events sent to each connection, in order, by event_id.
    sent: HashMap<u64, Vec<String>>,
}

struct Shared {
    options: ServerOptions,
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let result = change(&mut self.state.lock().unwrap());
        self.changed.notify_waiters();
        result
    }
}

/// The running server; stops when dropped.
pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl TestServer {
    /// The documented behaviour, over plain `ws://`.
    pub async fn start() -> Self {
        Self::with_options(ServerOptions::default()).await
    }

    pub async fn with_options(options: ServerOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = State {
            valid_keys: options.api_keys.iter().cloned().collect(),
            answer_subscribe: options.answer_subscribe,
            answer_ping: options.answer_ping,
            ..State::default()
        };
        let shared = Arc::new(Shared {
            options,
            state: Mutex::new(state),
            changed: Notify::new(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Self {
            shared,
            addr,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:<port>/v1/ws`, or `wss://localhost:<port>/v1/ws` over TLS.
    pub fn url(&self) -> String {
        match self.shared.options.tls {
            None => format!("ws://{}/v1/ws", self.addr),
            Some(_) => format!("wss://localhost:{}/v1/ws", self.addr.port()),
        }
    }

    /// Stores `json` as an event and sends it to every matching connection.
    pub fn push(&self, json: &str) {
        let value: Value = serde_json::from_str(json).expect("push takes a JSON event");
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        let stored = Stored {
            event_id: text("event_id"),
            inbox_id: text("inbox_id"),
            event_type: text("event"),
            json: json.to_owned(),
        };
        self.shared.update(|state| {
            for (id, connection) in &state.connections {
                if connection.subscription.matches(&stored) {
                    let _ = connection
                        .commands
                        .send(Command::Send(Message::text(stored.json.clone())));
                    if let Some(event_id) = &stored.event_id {
                        state.sent.entry(*id).or_default().push(event_id.clone());
                    }
                }
            }
            state.history.push(stored);
        });
    }

    /// Pushes [`event`]`(event_id, inbox_id, "message.received")`.
    pub fn push_event(&self, event_id: &str, inbox_id: &str) {
        self.push(&event(event_id, inbox_id, "message.received"));
    }

    /// Stores an event in the history without sending it: it happened while no connection
    /// was there to receive it, and only a replay brings it.
    pub fn store_only(&self, json: &str) {
        let value: Value = serde_json::from_str(json).unwrap();
        let text = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        let stored = Stored {
            event_id: text("event_id"),
            inbox_id: text("inbox_id"),
            event_type: text("event"),
            json: json.to_owned(),
        };
        self.shared.update(|state| state.history.push(stored));
    }

    /// Sends `message` as it is to every open connection, subscribed or not.
    pub fn broadcast(&self, message: Message) {
        self.shared.update(|state| {
            for connection in state.connections.values() {
                let _ = connection.commands.send(Command::Send(message.clone()));
            }
        });
    }

    /// Sends a text frame as it is to every open connection.
    pub fn broadcast_text(&self, text: &str) {
        self.broadcast(Message::text(text.to_owned()));
    }

    /// Closes every open connection with `code`.
    pub fn close_all(&self, code: u16, reason: &str) {
        self.shared.update(|state| {
            for connection in state.connections.values() {
                let _ = connection
                    .commands
                    .send(Command::Close(code, reason.to_owned()));
            }
        });
    }

    /// Drops every open connection without a close frame, as a crash or a network cut would.
    pub fn drop_all(&self) {
        self.shared.update(|state| {
            for connection in state.connections.values() {
                let _ = connection.commands.send(Command::Drop);
            }
        });
    }

    /// Revokes `key`: its open connections are closed with `4001`, and it no longer
    /// authenticates.
    pub fn revoke(&self, key: &str) {
        self.shared.update(|state| {
            state.valid_keys.remove(key);
            for connection in state.connections.values() {
                if connection.key == key {
                    let _ = connection
                        .commands
                        .send(Command::Close(4001, "unauthorized".to_owned()));
                }
            }
        });
    }

    /// Whether `subscribe` is answered from now on.
    pub fn answer_subscribe(&self, answer: bool) {
        self.shared.update(|state| state.answer_subscribe = answer);
    }

    /// Whether the app-level `ping` is answered from now on.
    pub fn answer_ping(&self, answer: bool) {
        self.shared.update(|state| state.answer_ping = answer);
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.shared.state.lock().unwrap().connections.len()
    }

    /// Open connections with an active subscription.
    pub fn subscribed(&self) -> usize {
        let state = self.shared.state.lock().unwrap();
        state
            .connections
            .values()
            .filter(|connection| connection.subscription.active)
            .count()
    }

    /// Every handshake so far, in order.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.shared.state.lock().unwrap().handshakes.clone()
    }

    /// Every client data frame so far (JSON-parsed; a non-JSON frame is a JSON string).
    pub fn client_messages(&self) -> Vec<Value> {
        let state = self.shared.state.lock().unwrap();
        state
            .client_messages
            .iter()
            .map(|(_, message)| message.clone())
            .collect()
    }

    /// The client's messages of one `type`.
    pub fn client_messages_of(&self, kind: &str) -> Vec<Value> {
        self.client_messages()
            .into_iter()
            .filter(|message| message["type"] == kind)
            .collect()
    }

    /// Protocol pongs received, over every connection.
    pub fn pongs(&self) -> usize {
        self.shared.state.lock().unwrap().pongs.values().sum()
    }

    /// Protocol pings sent, over every connection.
    pub fn pings_sent(&self) -> usize {
        self.shared.state.lock().unwrap().pings_sent.values().sum()
    }

    /// How each finished connection ended, in order.
    pub fn ended(&self) -> Vec<Ended> {
        let state = self.shared.state.lock().unwrap();
        state.ended.iter().map(|(_, ended)| ended.clone()).collect()
    }

    /// The event ids sent to connection `connection`, in order (replays included).
    pub fn sent_to(&self, connection: u64) -> Vec<String> {
        let state = self.shared.state.lock().unwrap();
        state.sent.get(&connection).cloned().unwrap_or_default()
    }

    /// Waits until `condition` holds, or panics after `timeout` naming `what`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&Self) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if condition(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            // Wake on a change, and at least every 20 ms for conditions on time.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(20)), notified).await;
        }
    }

    /// Waits for `count` subscribed connections.
    pub async fn wait_subscribed(&self, count: usize) {
        self.wait_until(
            &format!("{count} subscribed connection(s)"),
            Duration::from_secs(20),
            |server| server.subscribed() >= count,
        )
        .await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_all();
    }
}

/// An event as OpenMail sends it.
pub fn event(event_id: &str, inbox_id: &str, event_type: &str) -> String {
    json!({
        "event": event_type,
        "event_id": event_id,
        "occurred_at": "2026-03-01T12:00:00Z",
        "inbox_id": inbox_id,
        "attempt": 1,
    })
    .to_string()
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            match shared.options.tls.clone() {
                None => handshake(stream, shared).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    if let Ok(stream) = acceptor.accept(stream).await {
                        handshake(stream, shared).await;
                    }
                }
            }
        });
    }
}

/// The key a request presents, and how.
fn credentials(request: &Request) -> (AuthMethod, Option<String>) {
    if let Some(value) = request.headers().get("authorization") {
        let key = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_owned);
        return (AuthMethod::Header, key);
    }
    let token = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_owned)
    });
    match token {
        Some(token) => (AuthMethod::Query, Some(token)),
        None => (AuthMethod::None, None),
    }
}

// The callback's signature is tungstenite's.
#[allow(clippy::result_large_err)]
async fn handshake<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let seen = Arc::new(Mutex::new(None));
    let callback = {
        let seen = Arc::clone(&seen);
        move |request: &Request, response: Response| {
            let target = request
                .uri()
                .path_and_query()
                .map(|target| target.to_string())
                .unwrap_or_default();
            *seen.lock().unwrap() = Some((credentials(request), target));
            Ok(response)
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Some(((method, key), target)) = seen.lock().unwrap().take() else {
        return;
    };
    let (sender, commands) = mpsc::unbounded_channel();
    let admitted = shared.update(|state| {
        let connection = state.next_connection;
        state.next_connection += 1;
        let authorized = key
            .as_ref()
            .is_some_and(|key| state.valid_keys.contains(key));
        state.handshakes.push(Handshake {
            connection,
            method,
            authorized,
            target,
        });
        let key = key.unwrap_or_default();
        if !authorized {
            return Err((connection, 4001, None));
        }
        let open = state
            .connections
            .values()
            .filter(|other| other.key == key)
            .count();
        if open >= shared.options.max_connections {
            return Err((connection, 4008, Some("too many connections")));
        }
        state.connections.insert(
            connection,
            Connection {
                key,
                subscription: Subscription::default(),
                commands: sender,
            },
        );
        Ok(connection)
    });
    match admitted {
        Ok(connection) => run_connection(ws, commands, connection, shared).await,
        Err((connection, code, message)) => {
            if let Some(message) = message {
                let _ = ws.send(error_message(message)).await;
            }
            let _ = close(&mut ws, code, "").await;
            shared.update(|state| state.ended.push((connection, Ended::ClosedByServer(code))));
        }
    }
}

fn error_message(message: &str) -> Message {
    Message::text(json!({ "type": "error", "message": message }).to_string())
}

async fn close<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    code: u16,
    reason: &str,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    ws.close(Some(frame)).await?;
    // Let the client's answering close frame arrive, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

async fn run_connection<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    connection: u64,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let options = shared.options.clone();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + options.ping_interval,
        options.ping_interval,
    );
    let mut pong_deadline: Option<tokio::time::Instant> = None;
    let mut recent: Vec<Instant> = Vec::new();
    let ended = loop {
        let deadline = pong_deadline;
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Send(message)) => {
                    if ws.send(message).await.is_err() {
                        break Ended::Lost;
                    }
                }
                Some(Command::Close(code, reason)) => {
                    let _ = close(&mut ws, code, &reason).await;
                    break Ended::ClosedByServer(code);
                }
                Some(Command::Drop) | None => break Ended::Dropped,
            },
            message = ws.next() => match message {
                None | Some(Err(_)) => break Ended::Lost,
                Some(Ok(Message::Close(frame))) => {
                    break Ended::ClosedByClient(frame.map(|frame| u16::from(frame.code)));
                }
                Some(Ok(Message::Pong(_))) => {
                    pong_deadline = None;
                    shared.update(|state| *state.pongs.entry(connection).or_default() += 1);
                }
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    let now = Instant::now();
                    recent.retain(|at| now.duration_since(*at) < options.rate_window);
                    recent.push(now);
                    if recent.len() > options.rate_limit {
                        let _ = ws.send(error_message("rate limit exceeded")).await;
                        let _ = close(&mut ws, 4029, "rate limit exceeded").await;
                        break Ended::ClosedByServer(4029);
                    }
                    let replies = client_message(&shared, connection, message);
                    for reply in replies {
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                }
            },
            _ = ping.tick() => {
                if ws.send(Message::Ping(b"openmail".to_vec().into())).await.is_err() {
                    break Ended::Lost;
                }
                shared.update(|state| *state.pings_sent.entry(connection).or_default() += 1);
                if pong_deadline.is_none() {
                    pong_deadline = Some(tokio::time::Instant::now() + options.pong_timeout);
                }
            },
            _ = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = close(&mut ws, 1008, "ping timeout").await;
                break Ended::ClosedByServer(1008);
            },
        }
    };
    shared.update(|state| {
        state.connections.remove(&connection);
        state.ended.push((connection, ended));
    });
}

/// Handles one client data frame; returns the frames to answer with, which the
/// connection sends before anything queued later (a replay cannot be overtaken).
fn client_message(shared: &Shared, connection: u64, message: Message) -> Vec<Message> {
    let text = match message {
        Message::Text(text) => text.to_string(),
        Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => return Vec::new(),
    };
    let parsed: Result<Value, _> = serde_json::from_str(&text);
    shared.update(|state| {
        let logged = parsed
            .as_ref()
            .ok()
            .cloned()
            .unwrap_or_else(|| Value::String(text.clone()));
        state.client_messages.push((connection, logged));
        let Ok(Value::Object(object)) = parsed else {
            return vec![error_message("invalid JSON")];
        };
        let list = |field: &str| -> Result<Option<Vec<String>>, ()> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned).ok_or(()))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(()),
            }
        };
        match object.get("type").and_then(Value::as_str) {
            Some("ping") if state.answer_ping => {
                vec![Message::text(json!({"type": "pong"}).to_string())]
            }
            Some("ping") => Vec::new(),
            Some("subscribe") => {
                let (Ok(inboxes), Ok(types)) = (list("inbox_ids"), list("event_types")) else {
                    return vec![error_message(
                        "inbox_ids and event_types must be arrays of strings",
                    )];
                };
                if let (Some(owned), Some(asked)) = (&shared.options.owned_inboxes, &inboxes) {
                    if let Some(foreign) = asked.iter().find(|inbox| !owned.contains(inbox)) {
                        return vec![error_message(&format!("inbox not found: {foreign}"))];
                    }
                }
                if !state.answer_subscribe {
                    return Vec::new();
                }
                let start = match object.get("last_event_id") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(last)) => match state
                        .history
                        .iter()
                        .position(|stored| stored.event_id.as_deref() == Some(last.as_str()))
                    {
                        Some(index) => Some(index + 1),
                        None => return vec![error_message("unknown last_event_id")],
                    },
                    Some(_) => return vec![error_message("last_event_id must be a string")],
                };
                let Some(current) = state.connections.get_mut(&connection) else {
                    return Vec::new();
                };
                current.subscription.add(inboxes, types);
                let subscription = current.subscription.clone();
                let mut replies = vec![Message::text(subscription.describe().to_string())];
                if let Some(start) = start {
                    let replay: Vec<(Option<String>, String)> = state
                        .history
                        .iter()
                        .skip(start)
                        .filter(|stored| subscription.matches(stored))
                        .take(shared.options.replay_limit)
                        .map(|stored| (stored.event_id.clone(), stored.json.clone()))
                        .collect();
                    for (event_id, json) in replay {
                        if let Some(event_id) = event_id {
                            state.sent.entry(connection).or_default().push(event_id);
                        }
                        replies.push(Message::text(json));
                    }
                }
                replies
            }
            Some("unsubscribe") => {
                let Ok(inboxes) = list("inbox_ids") else {
                    return vec![error_message("inbox_ids must be an array of strings")];
                };
                let Some(current) = state.connections.get_mut(&connection) else {
                    return Vec::new();
                };
                let removed = inboxes.clone().unwrap_or_default();
                match inboxes {
                    None => current.subscription = Subscription::default(),
                    Some(inboxes) => {
                        if let Some(set) = current.subscription.inboxes.as_mut() {
                            for inbox in &inboxes {
                                set.remove(inbox);
                            }
                        }
                    }
                }
                vec![Message::text(
                    json!({"type": "unsubscribed", "inbox_ids": removed}).to_string(),
                )]
            }
            _ => vec![error_message("unknown message type")],
        }
    })
}
