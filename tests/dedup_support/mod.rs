//! What the deduplication tests share: real HTTP replicas, signed deliveries, a handler
//! that counts what it processed, a log of the layer's decisions, and the behavioural
//! tests every store must pass (see [`dedup_behaviours!`]).

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

pub mod redis_server;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::dedup::{Decision, DedupKey, DedupStore, DeduplicateLayer, StoreError};
use openmail_webhooks::tenant::InboxSecrets;
use openmail_webhooks::{Delivery, VerifyOpenMailLayer, sign};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The account webhook's secret: trusted for every inbox.
pub const SECRET: &str = "whsec_dedup_tests";
/// The secrets of two inboxes' own webhooks, for the tenant tests.
pub const INBOX_A_SECRET: &str = "whsec_inbox_a_only";
pub const INBOX_B_SECRET: &str = "whsec_inbox_b_only";
pub const PROCESSED: &str = "processed";

/// The inbox every [`event_body`] names.
pub const INBOX: &str = "inb_1";

/// The key the layer uses for an [`event_body`].
pub fn key(event_id: &str) -> DedupKey {
    DedupKey::new(Some(INBOX), event_id)
}

/// The account's secret, plus `inb_a` and `inb_b` with secrets of their own.
pub fn inbox_secrets() -> InboxSecrets {
    InboxSecrets::new()
        .inbox("inb_a", [INBOX_A_SECRET])
        .unwrap()
        .inbox("inb_b", [INBOX_B_SECRET])
        .unwrap()
        .account([SECRET])
        .unwrap()
}

/// Where a behavioural test gets its stores. Every call to [`store`](Self::store) is
/// another replica's handle on the same shared state.
pub trait Backend: Send + Sync {
    fn store(&self) -> impl Future<Output = Arc<dyn DedupStore>> + Send;
}

/// A signed body for `event_id`.
pub fn event_body(event_id: &str) -> String {
    format!(
        r#"{{"event":"message.received","event_id":"{event_id}","inbox_id":"inb_1","attempt":1}}"#
    )
}

/// `X-Timestamp` and `X-Signature` for `body`, signed now with `secret`.
pub fn signed_headers(secret: &str, body: &[u8]) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let signature = sign(secret, &now, body);
    (now, signature)
}

/// A `POST /webhooks` request signed with the account's secret, as OpenMail sends it.
pub fn delivery(body: &str, event_id_header: Option<&str>) -> http::Request<Full<Bytes>> {
    delivery_signed(SECRET, body, event_id_header)
}

/// A `POST /webhooks` request signed with `secret`.
pub fn delivery_signed(
    secret: &str,
    body: &str,
    event_id_header: Option<&str>,
) -> http::Request<Full<Bytes>> {
    let (timestamp, signature) = signed_headers(secret, body.as_bytes());
    let mut builder = http::Request::post("/webhooks")
        .header("content-type", "application/json")
        .header("x-timestamp", timestamp)
        .header("x-signature", signature);
    if let Some(header) = event_id_header {
        builder = builder.header("x-event-id", header);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// What the handler does on a given attempt at an event.
#[derive(Debug, Clone)]
pub enum Action {
    /// Processes the event after `delay`: records the effect and answers `200 processed`.
    Succeed(Duration),
    /// Processes the event once `gate` is notified.
    SucceedAfter(Arc<tokio::sync::Notify>),
    /// Answers this status and records nothing.
    Fail(StatusCode),
    /// Never answers.
    Hang,
}

type Plan = Box<dyn Fn(u32) -> Action + Send + Sync>;

/// The application behind the layers: counts attempts and, separately, processed effects,
/// by `event_id`, and processed effects by inbox and `event_id`. It reads the ids from the
/// `Delivery`, so it works with event parsing on or off.
pub struct Handler {
    plan: Plan,
    attempts: Mutex<HashMap<String, u32>>,
    processed: Mutex<HashMap<String, u32>>,
    processed_in: Mutex<HashMap<(String, String), u32>>,
}

impl Handler {
    /// `plan` maps the attempt number (from 1) at one event to what happens.
    pub fn new(plan: impl Fn(u32) -> Action + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            plan: Box::new(plan),
            attempts: Mutex::default(),
            processed: Mutex::default(),
            processed_in: Mutex::default(),
        })
    }

    pub fn succeeding() -> Arc<Self> {
        Self::new(|_| Action::Succeed(Duration::ZERO))
    }

    pub fn attempts(&self, event_id: &str) -> u32 {
        self.attempts
            .lock()
            .unwrap()
            .get(event_id)
            .copied()
            .unwrap_or(0)
    }

    pub fn processed(&self, event_id: &str) -> u32 {
        self.processed
            .lock()
            .unwrap()
            .get(event_id)
            .copied()
            .unwrap_or(0)
    }

    /// How often the event `event_id` of `inbox_id` was processed.
    pub fn processed_in(&self, inbox_id: &str, event_id: &str) -> u32 {
        self.processed_in
            .lock()
            .unwrap()
            .get(&(inbox_id.to_owned(), event_id.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn record(&self, delivery: &Delivery) {
        let key = delivery.event_id().unwrap_or("<none>").to_owned();
        let inbox = delivery.inbox_id().unwrap_or("<none>").to_owned();
        *self
            .processed
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default() += 1;
        *self
            .processed_in
            .lock()
            .unwrap()
            .entry((inbox, key))
            .or_default() += 1;
    }
}

async fn handle(
    State(handler): State<Arc<Handler>>,
    Extension(delivery): Extension<Delivery>,
) -> (StatusCode, &'static str) {
    let key = delivery.event_id().unwrap_or("<none>").to_owned();
    let attempt = {
        let mut attempts = handler.attempts.lock().unwrap();
        let attempt = attempts.entry(key.clone()).or_default();
        *attempt += 1;
        *attempt
    };
    match (handler.plan)(attempt) {
        Action::Succeed(delay) => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            handler.record(&delivery);
            (StatusCode::OK, PROCESSED)
        }
        Action::SucceedAfter(gate) => {
            gate.notified().await;
            handler.record(&delivery);
            (StatusCode::OK, PROCESSED)
        }
        Action::Fail(status) => (status, "failed"),
        Action::Hang => std::future::pending().await,
    }
}

/// Every decision the layers reported, in order.
#[derive(Clone, Default)]
pub struct DecisionLog(Arc<Mutex<Vec<Logged>>>);

/// A decision's short name and its event id.
type Logged = (String, Option<String>);

impl DecisionLog {
    pub fn record(&self, decision: &Decision) {
        let entry = (describe(decision), decision.event_id().map(str::to_owned));
        self.0.lock().unwrap().push(entry);
    }

    /// How many decisions of this kind were reported for `event_id`.
    pub fn count(&self, kind: &str, event_id: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, id)| k == kind && id.as_deref() == Some(event_id))
            .count()
    }

    pub fn kinds(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// A short name for a decision, with the details tests look at.
pub fn describe(decision: &Decision) -> String {
    match decision {
        Decision::First { .. } => "first".into(),
        Decision::Completed { .. } => "completed".into(),
        Decision::DuplicateDone { .. } => "duplicate_done".into(),
        Decision::DuplicateInFlight { .. } => "duplicate_in_flight".into(),
        Decision::Released { reason, .. } => format!("released: {reason}"),
        Decision::ReserveFailed {
            error,
            passed_through,
            ..
        } => store_failed("reserve", error, *passed_through),
        Decision::CompleteFailed { error, .. } => store_failed("complete", error, true),
        Decision::ReleaseFailed { error, .. } => store_failed("release", error, true),
        Decision::NoEventId => "unkeyed: NoEventId".to_owned(),
        Decision::Unverified => "unverified".into(),
        _ => "other".into(),
    }
}

fn store_failed(step: &str, error: &StoreError, passed_through: bool) -> String {
    let error = match error {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::LeaseLost => "lease_lost",
        StoreError::Full { .. } => "full",
        _ => "other",
    };
    format!("store_failed: {step} {error} passed_through={passed_through}")
}

/// One replica: a real HTTP server on an ephemeral loopback port, with its own layers.
pub struct Replica {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl Replica {
    /// Serves `app` on an ephemeral loopback port until dropped.
    pub async fn serve(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { address, task }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a replica is built.
pub struct ReplicaConfig {
    pub store: Arc<dyn DedupStore>,
    pub handler: Arc<Handler>,
    pub log: DecisionLog,
    pub configure: fn(DeduplicateLayer) -> DeduplicateLayer,
    /// The verification in front of the deduplication: the account's secret, parsing on,
    /// unless set.
    pub verify: fn() -> VerifyOpenMailLayer,
    /// A timeout outside both layers, as a reverse proxy or `TimeoutLayer` would impose.
    pub timeout: Option<Duration>,
}

impl ReplicaConfig {
    pub fn new(store: Arc<dyn DedupStore>, handler: &Arc<Handler>, log: &DecisionLog) -> Self {
        Self {
            store,
            handler: Arc::clone(handler),
            log: log.clone(),
            configure: |layer| layer,
            verify: || VerifyOpenMailLayer::new(SECRET).unwrap(),
            timeout: None,
        }
    }

    pub fn layer(&self) -> DeduplicateLayer {
        let log = self.log.clone();
        (self.configure)(DeduplicateLayer::from_shared(Arc::clone(&self.store)))
            .on_decision(move |decision| log.record(decision))
    }

    pub async fn start(self) -> Replica {
        let mut app = Router::new()
            .route("/webhooks", post(handle))
            .with_state(Arc::clone(&self.handler))
            .layer(self.layer())
            .layer((self.verify)());
        if let Some(timeout) = self.timeout {
            app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::GATEWAY_TIMEOUT,
                timeout,
            ));
        }
        Replica::serve(app).await
    }
}

/// An HTTP client, as OpenMail's delivery worker.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// What a delivery got back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Answer {
    pub fn processed(&self) -> bool {
        self.status == StatusCode::OK && self.body == PROCESSED
    }

    pub fn duplicate(&self) -> bool {
        self.status == StatusCode::OK && self.body.contains("already processed")
    }
}

impl Default for Sender {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Sender {
    /// Delivers `body` to `replica`, signed now with the account's secret.
    pub async fn deliver(&self, replica: &Replica, body: &str) -> Answer {
        self.deliver_with_header(replica, body, None).await
    }

    /// Delivers `body` to `replica`, signed now with `secret`.
    pub async fn deliver_signed(&self, replica: &Replica, secret: &str, body: &str) -> Answer {
        self.send(replica, delivery_signed(secret, body, None))
            .await
    }

    pub async fn deliver_with_header(
        &self,
        replica: &Replica,
        body: &str,
        event_id_header: Option<&str>,
    ) -> Answer {
        self.send(replica, delivery(body, event_id_header)).await
    }

    /// Sends `request` to `replica`'s `/webhooks`.
    pub async fn send(&self, replica: &Replica, mut request: http::Request<Full<Bytes>>) -> Answer {
        *request.uri_mut() = format!("http://{}/webhooks", replica.address)
            .parse()
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            retry_after,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    /// Delivers like OpenMail: again after every `409`, until something else comes back,
    /// at most `attempts` times `pause` apart.
    pub async fn deliver_until_settled(
        &self,
        replica: &Replica,
        body: &str,
        attempts: u32,
        pause: Duration,
    ) -> Answer {
        let mut answer = self.deliver(replica, body).await;
        for _ in 1..attempts {
            if answer.status != StatusCode::CONFLICT {
                break;
            }
            tokio::time::sleep(pause).await;
            answer = self.deliver(replica, body).await;
        }
        answer
    }
}

/// The behavioural tests every store passes, as functions over a [`Backend`].
pub mod behaviours {
    use super::*;
    use openmail_webhooks::dedup::{Reservation, ReserveOutcome};
    use tokio::task::JoinSet;

    const LONG: Duration = Duration::from_secs(60);

    /// The store contract of `DedupStore`'s table, call by call.
    pub async fn store_contract(backend: &impl Backend) {
        let store = backend.store().await;
        let holder = Reservation::new(key("evt_contract"));
        let stranger = Reservation::new(key("evt_contract"));

        assert_eq!(
            store.reserve(holder.clone(), LONG).await.unwrap(),
            ReserveOutcome::Reserved
        );
        assert_eq!(
            store.reserve(stranger.clone(), LONG).await.unwrap(),
            ReserveOutcome::InFlight
        );
        assert_eq!(
            store.reserve(holder.clone(), LONG).await.unwrap(),
            ReserveOutcome::InFlight
        );

        // Another holder can neither release nor complete this one's reservation.
        store.release(stranger.clone()).await.unwrap();
        assert_eq!(
            store.reserve(stranger.clone(), LONG).await.unwrap(),
            ReserveOutcome::InFlight
        );
        assert!(matches!(
            store.complete(stranger.clone(), LONG).await,
            Err(StoreError::LeaseLost)
        ));

        store.complete(holder.clone(), LONG).await.unwrap();
        assert_eq!(
            store.reserve(stranger.clone(), LONG).await.unwrap(),
            ReserveOutcome::Done
        );
        // Completing again is a no-op; releasing never deletes a done marker.
        store.complete(holder.clone(), LONG).await.unwrap();
        store.complete(stranger.clone(), LONG).await.unwrap();
        store.release(holder.clone()).await.unwrap();
        store.abandon(holder.clone());
        assert_eq!(
            store.reserve(stranger.clone(), LONG).await.unwrap(),
            ReserveOutcome::Done
        );

        // A released reservation lets the next one in.
        let first = Reservation::new(key("evt_released"));
        assert_eq!(
            store.reserve(first.clone(), LONG).await.unwrap(),
            ReserveOutcome::Reserved
        );
        store.release(first).await.unwrap();
        let second = Reservation::new(key("evt_released"));
        assert_eq!(
            store.reserve(second, LONG).await.unwrap(),
            ReserveOutcome::Reserved
        );
    }

    /// Leases and done markers expire; a holder whose lease ran out with nobody taking
    /// over still marks the event done.
    pub async fn store_expiry(backend: &impl Backend) {
        let store = backend.store().await;
        let short = Duration::from_millis(500);
        let wait = Duration::from_millis(700);

        let crashed = Reservation::new(key("evt_expiry"));
        assert_eq!(
            store.reserve(crashed.clone(), short).await.unwrap(),
            ReserveOutcome::Reserved
        );
        tokio::time::sleep(wait).await;
        let next = Reservation::new(key("evt_expiry"));
        assert_eq!(
            store.reserve(next.clone(), LONG).await.unwrap(),
            ReserveOutcome::Reserved
        );
        store.complete(next, short).await.unwrap();
        assert_eq!(
            store
                .reserve(Reservation::new(key("evt_expiry")), LONG)
                .await
                .unwrap(),
            ReserveOutcome::Done
        );
        tokio::time::sleep(wait).await;
        assert_eq!(
            store
                .reserve(Reservation::new(key("evt_expiry")), LONG)
                .await
                .unwrap(),
            ReserveOutcome::Reserved
        );

        let late = Reservation::new(key("evt_late"));
        store.reserve(late.clone(), short).await.unwrap();
        tokio::time::sleep(wait).await;
        store.complete(late, LONG).await.unwrap();
        assert_eq!(
            store
                .reserve(Reservation::new(key("evt_late")), LONG)
                .await
                .unwrap(),
            ReserveOutcome::Done
        );
    }

    /// Sequential duplicates: the handler runs once, the duplicate gets 200.
    pub async fn duplicates_of_a_processed_event_skip_the_handler(backend: &impl Backend) {
        let handler = Handler::succeeding();
        let log = DecisionLog::default();
        let replica = ReplicaConfig::new(backend.store().await, &handler, &log)
            .start()
            .await;
        let sender = Sender::default();
        let body = event_body("evt_sequential");

        assert!(sender.deliver(&replica, &body).await.processed());
        for _ in 0..3 {
            let answer = sender.deliver(&replica, &body).await;
            assert!(answer.duplicate(), "{answer:?}");
        }
        assert_eq!(handler.attempts("evt_sequential"), 1);
        assert_eq!(log.count("first", "evt_sequential"), 1);
        assert_eq!(log.count("completed", "evt_sequential"), 1);
        assert_eq!(log.count("duplicate_done", "evt_sequential"), 3);
    }

    /// Two replicas, each with its own layer and store handle on the same backend; every
    /// event delivered to both concurrently, many times; each delivery retried after a
    /// `409` as OpenMail would. The handler runs exactly once per event.
    pub async fn two_replicas_process_a_concurrent_burst_once(backend: &impl Backend) {
        const EVENTS: usize = 8;
        const DELIVERIES: usize = 24;
        // Each event's first attempt is held in the handler until every event has seen a
        // duplicate arrive while it was in flight, so that the burst overlaps however the
        // machine schedules it (a fixed 100 ms of work did not on a busy machine).
        let gate = Arc::new(tokio::sync::Notify::new());
        let handler = Handler::new({
            let gate = Arc::clone(&gate);
            move |attempt| match attempt {
                1 => Action::SucceedAfter(Arc::clone(&gate)),
                _ => Action::Succeed(Duration::ZERO),
            }
        });
        let log = DecisionLog::default();
        let opener = tokio::spawn({
            let gate = Arc::clone(&gate);
            let log = log.clone();
            async move {
                // Bounded: after 30 s the gate opens anyway, and the assertions below
                // say what never overlapped.
                let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
                while tokio::time::Instant::now() < give_up
                    && !(0..EVENTS).all(|event| {
                        log.count("duplicate_in_flight", &format!("evt_burst_{event}")) > 0
                    })
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // A first attempt may reach the gate after a notification: keep opening.
                loop {
                    gate.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        let replicas = Arc::new([
            ReplicaConfig::new(backend.store().await, &handler, &log)
                .start()
                .await,
            ReplicaConfig::new(backend.store().await, &handler, &log)
                .start()
                .await,
        ]);
        let sender = Sender::default();

        let mut deliveries = JoinSet::new();
        for event in 0..EVENTS {
            for delivery in 0..DELIVERIES {
                let replicas = Arc::clone(&replicas);
                let sender = sender.clone();
                deliveries.spawn(async move {
                    let event_id = format!("evt_burst_{event}");
                    let replica = &replicas[delivery % 2];
                    let answer = sender
                        .deliver_until_settled(
                            replica,
                            &event_body(&event_id),
                            // 30 s of retries: room for the gate above on a busy machine.
                            1500,
                            Duration::from_millis(20),
                        )
                        .await;
                    (event_id, answer)
                });
            }
        }
        let mut processed_answers: HashMap<String, usize> = HashMap::new();
        while let Some(result) = deliveries.join_next().await {
            let (event_id, answer) = result.unwrap();
            assert!(
                answer.processed() || answer.duplicate(),
                "{event_id}: {answer:?}"
            );
            if answer.processed() {
                *processed_answers.entry(event_id).or_default() += 1;
            }
        }
        opener.abort();
        for event in 0..EVENTS {
            let event_id = format!("evt_burst_{event}");
            assert_eq!(
                handler.attempts(&event_id),
                1,
                "{event_id} reached the handler more than once"
            );
            assert_eq!(handler.processed(&event_id), 1);
            assert_eq!(processed_answers.get(&event_id), Some(&1));
            assert_eq!(log.count("first", &event_id), 1);
            assert_eq!(log.count("completed", &event_id), 1);
            assert!(
                log.count("duplicate_in_flight", &event_id) > 0,
                "the burst never overlapped"
            );
        }
    }

    /// The handler fails the first attempt; the retry is processed; later duplicates are
    /// not. Processed exactly once in the end.
    pub async fn a_failed_attempt_is_released_and_the_retry_processed(backend: &impl Backend) {
        let handler = Handler::new(|attempt| match attempt {
            1 => Action::Fail(StatusCode::INTERNAL_SERVER_ERROR),
            _ => Action::Succeed(Duration::ZERO),
        });
        let log = DecisionLog::default();
        let replica = ReplicaConfig::new(backend.store().await, &handler, &log)
            .start()
            .await;
        let sender = Sender::default();
        let body = event_body("evt_failing");

        let first = sender.deliver(&replica, &body).await;
        assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            log.count(
                "released: the inner service answered 500 Internal Server Error",
                "evt_failing"
            ),
            1
        );
        assert!(sender.deliver(&replica, &body).await.processed());
        assert!(sender.deliver(&replica, &body).await.duplicate());
        assert_eq!(handler.attempts("evt_failing"), 2);
        assert_eq!(handler.processed("evt_failing"), 1);
    }

    /// A timeout outside the layer drops the response future mid-handler; the reservation
    /// goes back, and the retry is processed.
    pub async fn a_dropped_request_releases_its_reservation(backend: &impl Backend) {
        let handler = Handler::new(|attempt| match attempt {
            1 => Action::Hang,
            _ => Action::Succeed(Duration::ZERO),
        });
        let log = DecisionLog::default();
        let mut config = ReplicaConfig::new(backend.store().await, &handler, &log);
        config.timeout = Some(Duration::from_millis(200));
        let replica = config.start().await;
        let sender = Sender::default();
        let body = event_body("evt_dropped");

        assert_eq!(
            sender.deliver(&replica, &body).await.status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            log.count(
                "released: the request was dropped before it was answered",
                "evt_dropped"
            ),
            1
        );
        // A store that releases asynchronously may need a moment; the lease (60 s) is far
        // longer than this loop, so success here means the release happened.
        let answer = sender
            .deliver_until_settled(&replica, &body, 250, Duration::from_millis(20))
            .await;
        assert!(answer.processed(), "{answer:?}");
        assert_eq!(handler.processed("evt_dropped"), 1);
    }

    /// A reservation left by a crashed holder blocks deliveries (409, Retry-After) until
    /// its lease expires; then a retry is processed.
    pub async fn a_crashed_holders_lease_expires_and_a_retry_is_processed(backend: &impl Backend) {
        let handler = Handler::succeeding();
        let log = DecisionLog::default();
        let replica = ReplicaConfig::new(backend.store().await, &handler, &log)
            .start()
            .await;
        let sender = Sender::default();
        let body = event_body("evt_crashed");

        let crashed = backend.store().await;
        let lease = Duration::from_secs(1);
        assert_eq!(
            crashed
                .reserve(Reservation::new(key("evt_crashed")), lease)
                .await
                .unwrap(),
            ReserveOutcome::Reserved
        );
        drop(crashed); // the holder is gone without completing or releasing

        let blocked = sender.deliver(&replica, &body).await;
        assert_eq!(blocked.status, StatusCode::CONFLICT);
        assert_eq!(blocked.retry_after.as_deref(), Some("30"));
        assert_eq!(handler.attempts("evt_crashed"), 0);
        assert_eq!(log.count("duplicate_in_flight", "evt_crashed"), 1);

        tokio::time::sleep(lease + Duration::from_millis(300)).await;
        assert!(sender.deliver(&replica, &body).await.processed());
        assert_eq!(handler.processed("evt_crashed"), 1);
    }

    /// A handler that outlives its lease: another delivery takes the event over, and the
    /// first holder's completion is refused and reported, never written over the other's.
    pub async fn a_lease_lost_mid_run_is_reported(backend: &impl Backend) {
        use tokio::sync::Notify;
        let gates = [Arc::new(Notify::new()), Arc::new(Notify::new())];
        let handler = Handler::new({
            let gates = gates.clone();
            move |attempt| Action::SucceedAfter(Arc::clone(&gates[attempt as usize - 1]))
        });
        let log = DecisionLog::default();
        // The first replica's lease is short; the second's is the default.
        let mut short = ReplicaConfig::new(backend.store().await, &handler, &log);
        short.configure = |layer| layer.lease(Duration::from_millis(100));
        let short = Arc::new(short.start().await);
        let long = ReplicaConfig::new(backend.store().await, &handler, &log)
            .start()
            .await;
        let sender = Sender::default();
        let body = event_body("evt_slow");

        let first = {
            let (replica, sender, body) = (Arc::clone(&short), sender.clone(), body.clone());
            tokio::spawn(async move { sender.deliver(&replica, &body).await })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = {
            let (sender, body) = (sender.clone(), body.clone());
            tokio::spawn(async move { sender.deliver(&long, &body).await })
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            while handler.attempts("evt_slow") < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the second delivery never reached the handler");
        gates[0].notify_one();
        assert!(first.await.unwrap().processed());
        assert_eq!(
            log.count(
                "store_failed: complete lease_lost passed_through=true",
                "evt_slow"
            ),
            1,
            "{:?}",
            log.kinds()
        );
        gates[1].notify_one();
        assert!(second.await.unwrap().processed());
        assert_eq!(log.count("completed", "evt_slow"), 1);
        assert!(sender.deliver(&short, &body).await.duplicate());
    }

    /// With event parsing off there is no `Arc<Event>`, and deduplication works all the
    /// same: it keys on the `Delivery`.
    pub async fn parsing_off_deduplicates_all_the_same(backend: &impl Backend) {
        let handler = Handler::succeeding();
        let log = DecisionLog::default();
        let mut config = ReplicaConfig::new(backend.store().await, &handler, &log);
        config.verify = || {
            VerifyOpenMailLayer::new(SECRET)
                .unwrap()
                .parse_events(false)
        };
        let replica = config.start().await;
        let sender = Sender::default();
        let body = event_body("evt_unparsed");

        assert!(sender.deliver(&replica, &body).await.processed());
        let again = sender.deliver(&replica, &body).await;
        assert!(again.duplicate(), "{again:?}");
        assert_eq!(handler.attempts("evt_unparsed"), 1);
        assert_eq!(log.count("first", "evt_unparsed"), 1);
        assert_eq!(log.count("duplicate_done", "evt_unparsed"), 1);
    }

    /// Finding A4: holding inbox A's secret, a tenant signs `evt_X` for its own inbox
    /// first. Inbox B's genuine `evt_X` is still processed; it is the same event only for
    /// deliveries about inbox B, whoever (B's secret or the account's) vouched for them.
    pub async fn one_inbox_cannot_make_another_inboxs_event_a_duplicate(backend: &impl Backend) {
        let handler = Handler::succeeding();
        let log = DecisionLog::default();
        let mut config = ReplicaConfig::new(backend.store().await, &handler, &log);
        config.verify = || VerifyOpenMailLayer::with_resolver(inbox_secrets());
        let replica = config.start().await;
        let sender = Sender::default();
        let planted = r#"{"event":"setup.test","event_id":"evt_X","inbox_id":"inb_a"}"#;
        let genuine = r#"{"event":"message.received","event_id":"evt_X","inbox_id":"inb_b"}"#;

        assert!(
            sender
                .deliver_signed(&replica, INBOX_A_SECRET, planted)
                .await
                .processed()
        );
        // A's secret cannot vouch for a body naming inb_b at all.
        let forged = sender
            .deliver_signed(&replica, INBOX_A_SECRET, genuine)
            .await;
        assert_eq!(forged.status, StatusCode::BAD_REQUEST, "{forged:?}");
        let answer = sender
            .deliver_signed(&replica, INBOX_B_SECRET, genuine)
            .await;
        assert!(answer.processed(), "B's event was suppressed: {answer:?}");
        assert_eq!(handler.processed_in("inb_a", "evt_X"), 1);
        assert_eq!(handler.processed_in("inb_b", "evt_X"), 1);

        // The same event of inbox B, vouched for by the account (as over the WebSocket, or
        // the account webhook), is a duplicate; so is A's replay of its own.
        assert!(sender.deliver(&replica, genuine).await.duplicate());
        assert!(
            sender
                .deliver_signed(&replica, INBOX_B_SECRET, genuine)
                .await
                .duplicate()
        );
        assert!(
            sender
                .deliver_signed(&replica, INBOX_A_SECRET, planted)
                .await
                .duplicate()
        );
        assert_eq!(handler.processed_in("inb_b", "evt_X"), 1);
        assert_eq!(handler.processed_in("inb_a", "evt_X"), 1);
    }

    /// An inner service that fails (an `Err`, not a status) releases the reservation too.
    pub async fn an_inner_error_is_released(backend: &impl Backend) {
        use tower::{ServiceBuilder, ServiceExt, service_fn};

        let log = DecisionLog::default();
        let calls = Arc::new(Mutex::new(0u32));
        let store = backend.store().await;
        let hook_log = log.clone();
        let service = ServiceBuilder::new()
            .layer(VerifyOpenMailLayer::new(SECRET).unwrap())
            .layer(DeduplicateLayer::from_shared(store).on_decision(move |d| hook_log.record(d)))
            .service(service_fn({
                let calls = Arc::clone(&calls);
                move |_request: http::Request<_>| {
                    let calls = Arc::clone(&calls);
                    async move {
                        let mut calls = calls.lock().unwrap();
                        *calls += 1;
                        if *calls == 1 {
                            Err::<http::Response<Full<Bytes>>, _>("database down")
                        } else {
                            Ok(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    }
                }
            }));

        let body = event_body("evt_error");
        let error = service
            .clone()
            .oneshot(delivery(&body, None))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "database down");
        assert_eq!(
            log.count("released: the inner service failed", "evt_error"),
            1
        );
        let response = service
            .clone()
            .oneshot(delivery(&body, None))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = service.oneshot(delivery(&body, None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(*calls.lock().unwrap(), 2);
        assert_eq!(log.count("duplicate_done", "evt_error"), 1);
    }
}

/// Generates one `#[tokio::test]` per behaviour for a store. `$backend` is an expression
/// giving `Option<impl Backend>`; `None` skips (the backend said why).
#[macro_export]
macro_rules! dedup_behaviours {
    ($backend:expr) => {
        $crate::dedup_behaviours!(@tests $backend;
            store_contract,
            store_expiry,
            duplicates_of_a_processed_event_skip_the_handler,
            two_replicas_process_a_concurrent_burst_once,
            a_failed_attempt_is_released_and_the_retry_processed,
            a_dropped_request_releases_its_reservation,
            a_crashed_holders_lease_expires_and_a_retry_is_processed,
            a_lease_lost_mid_run_is_reported,
            an_inner_error_is_released,
            parsing_off_deduplicates_all_the_same,
            one_inbox_cannot_make_another_inboxs_event_a_duplicate,
        );
    };
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(backend) = $backend else { return };
                $crate::dedup_support::behaviours::$name(&backend).await;
            }
        )*
    };
}
