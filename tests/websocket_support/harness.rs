//! What the WebSocket client's tests share: a log of the client's statuses, a recording
//! application behind an axum router, and the client running on its own task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use openmail_webhooks::websocket::{ClientStatus, WebSocketClient, WebSocketError};
use openmail_webhooks::{Channel, Delivery, Event};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use super::{API_KEY, TestServer};

/// Every status the client reported, in order.
#[derive(Clone, Default)]
pub struct Statuses {
    log: Arc<Mutex<Vec<ClientStatus>>>,
    changed: Arc<Notify>,
}

impl Statuses {
    pub fn hook(&self) -> impl Fn(&ClientStatus) + Send + Sync + 'static + use<> {
        let statuses = self.clone();
        move |status: &ClientStatus| {
            statuses.log.lock().unwrap().push(status.clone());
            statuses.changed.notify_waiters();
        }
    }

    pub fn all(&self) -> Vec<ClientStatus> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self, matches: impl Fn(&ClientStatus) -> bool) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| matches(s))
            .count()
    }

    /// The statuses that `pick` maps to something, in order.
    pub fn picked<T>(&self, pick: impl Fn(&ClientStatus) -> Option<T>) -> Vec<T> {
        self.log.lock().unwrap().iter().filter_map(pick).collect()
    }

    /// Waits until `count` statuses match, or panics naming `what` with the log.
    pub async fn wait(&self, what: &str, count: usize, matches: impl Fn(&ClientStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.changed.notified();
            if self.count(&matches) >= count {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let log: Vec<String> = self.all().iter().map(|s| s.to_string()).collect();
                panic!(
                    "timed out waiting for {what}; statuses:\n{}",
                    log.join("\n")
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }
}

/// What the application does with one attempt at an event.
#[derive(Clone)]
pub enum Action {
    Ok,
    Status(StatusCode),
    /// Waits for the gate, then answers `200`.
    Wait(Arc<Notify>),
    Panic,
}

/// One request the application received.
#[derive(Debug, Clone)]
pub struct Call {
    pub event_id: Option<String>,
    pub channel: Channel,
    pub method: Method,
    pub uri: Uri,
    pub body: Bytes,
    /// The `Arc<Event>` extension, and the `Delivery`'s body, are the same bytes.
    pub extensions_agree: bool,
}

type Plan = Box<dyn Fn(&str, u32) -> Action + Send + Sync>;

/// The application: records every call, and answers per its plan (by event id and
/// attempt number, from 1).
pub struct App {
    plan: Plan,
    calls: Mutex<Vec<Call>>,
    attempts: Mutex<HashMap<String, u32>>,
    changed: Notify,
}

impl App {
    pub fn new(plan: impl Fn(&str, u32) -> Action + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            plan: Box::new(plan),
            calls: Mutex::default(),
            attempts: Mutex::default(),
            changed: Notify::new(),
        })
    }

    pub fn succeeding() -> Arc<Self> {
        Self::new(|_, _| Action::Ok)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The event ids called, in call order.
    pub fn called(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .map(|call| call.event_id.unwrap_or_default())
            .collect()
    }

    pub fn calls_for(&self, event_id: &str) -> usize {
        self.calls()
            .iter()
            .filter(|call| call.event_id.as_deref() == Some(event_id))
            .count()
    }

    pub async fn wait_calls(&self, what: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.changed.notified();
            if self.calls.lock().unwrap().len() >= count {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("timed out waiting for {what}; calls: {:?}", self.called());
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }

    /// The router: `POST /webhooks` (and `POST /elsewhere`, for custom dispatch paths).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/webhooks", post(handle))
            .route("/elsewhere", post(handle))
            .with_state(Arc::clone(self))
    }
}

async fn handle(
    State(app): State<Arc<App>>,
    Extension(delivery): Extension<Delivery>,
    Extension(event): Extension<Arc<Event>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> StatusCode {
    let event_id = event.event_id().map(str::to_owned);
    let key = event_id.clone().unwrap_or_default();
    let attempt = {
        let mut attempts = app.attempts.lock().unwrap();
        let attempt = attempts.entry(key.clone()).or_default();
        *attempt += 1;
        *attempt
    };
    app.calls.lock().unwrap().push(Call {
        event_id,
        channel: delivery.channel(),
        method,
        uri,
        extensions_agree: event.raw() == &body && delivery.body() == &body,
        body,
    });
    app.changed.notify_waiters();
    match (app.plan)(&key, attempt) {
        Action::Ok => StatusCode::OK,
        Action::Status(status) => status,
        Action::Wait(gate) => {
            gate.notified().await;
            StatusCode::OK
        }
        Action::Panic => panic!("the application panicked on {key}"),
    }
}

/// A client for `server`, with short delays so that tests run fast.
pub fn fast_client(server: &TestServer, statuses: &Statuses) -> WebSocketClient {
    WebSocketClient::new(API_KEY)
        .unwrap()
        .url(&server.url())
        .unwrap()
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .handler_retries(2, Duration::from_millis(20))
        .subscribe_timeout(Duration::from_secs(5))
        .on_status(statuses.hook())
}

/// The client serving on its own task until [`stop`](Self::stop) or drop.
pub struct Running {
    task: Option<JoinHandle<Result<(), WebSocketError>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    pub fn spawn(client: WebSocketClient, router: Router) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(client.serve_with_shutdown(router, async {
            let _ = stopped.await;
        }));
        Self {
            task: Some(task),
            stop: Some(stop),
        }
    }

    /// Asks it to stop, and returns what `serve_with_shutdown` returned.
    pub async fn stop(mut self) -> Result<(), WebSocketError> {
        let _ = self.stop.take().unwrap().send(());
        self.finished().await
    }

    /// Waits for `serve` to return by itself.
    pub async fn finished(&mut self) -> Result<(), WebSocketError> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the client did not stop within 20 s")
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
