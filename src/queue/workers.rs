//! [`Workers`]: run stored events through the user's service.

use std::collections::HashSet;
use std::fmt;
use std::future::{Future, poll_fn};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::{BoxError, Service};

use super::store::{Claimed, DeadLetter, EventStore, Lease, QueueError};
use crate::body::VerifiedBody;

/// The worker's attempt at an event, from 1, in the request extensions beside the
/// `Arc<Event>` and the [`Delivery`](crate::Delivery).
///
/// Not the event's own `attempt` field: that is OpenMail's count of deliveries of the
/// webhook. This counts the times a worker started the handler on the stored event,
/// crashed attempts included.
///
/// ```
/// use axum::Extension;
/// use openmail_webhooks::queue::WorkerAttempt;
///
/// async fn handle(Extension(attempt): Extension<WorkerAttempt>) {
///     if attempt.number() > 1 {
///         // An earlier attempt may have done part of the work: look before redoing it.
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerAttempt {
    number: u32,
    last: bool,
    lease: Lease,
}

impl WorkerAttempt {
    /// The attempt, from 1.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Whether a failure of this attempt makes the event a dead letter.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// The key of the event this attempt holds a lease on: with [`token`](Self::token),
    /// what a handler needs to complete the event in its own transaction, when it writes to
    /// the store's database (see `docs/durable.md`).
    pub fn key(&self) -> &[u8; 32] {
        self.lease.key()
    }

    /// The lease's token: the store's count of claims of this event, never reset, so a
    /// holder whose lease expired and was claimed again can no longer complete the event.
    pub fn token(&self) -> i64 {
        self.lease.token()
    }
}

type DeadLetterHook = Arc<dyn Fn(&DeadLetter) + Send + Sync>;

/// Takes stored events and calls the user's ordinary tower service with each, as
/// [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer) would: a `POST` to
/// [`path`](Self::path) whose body is the verified bytes, with the `Arc<Event>`, the
/// [`Delivery`](crate::Delivery) and a [`WorkerAttempt`] in the extensions.
///
/// - **Bounded:** at most [`concurrency`](Self::concurrency) handler runs at once (8), each
///   limited to [`attempt_timeout`](Self::attempt_timeout) (10 min).
/// - **Leased:** a claim leases the event for [`lease`](Self::lease) (30 s), renewed every
///   third of it while the handler runs. An event whose worker died is claimed again once
///   its lease expires (SQLite: at once when the store reopens).
/// - **Retried:** a `2xx` completes the event; any other status, an error, a panic or the
///   time limit is a failed attempt, retried after a backoff doubling from
///   [`backoff`](Self::backoff) (10 s) up to 10 min, until
///   [`max_attempts`](Self::max_attempts) (8). The last failure makes it a dead letter:
///   reported to [`on_dead_letter`](Self::on_dead_letter) and `tracing`, and kept with its
///   body for [`EventStore::dead_letters`] and [`EventStore::retry_dead_letter`].
/// - **Graceful:** when the `shutdown` future given to [`run`](Self::run) completes, no
///   new event is claimed, running handlers get [`shutdown_grace`](Self::shutdown_grace)
///   (10 s) to finish, and the leases of the rest are released, their attempts uncounted.
/// - **Housekeeping:** completed keys older than [`retention`](Self::retention) (7 days)
///   are purged at start and hourly.
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use std::sync::Arc;
/// use axum::{routing::post, Extension, Router};
/// use openmail_webhooks::Event;
/// use openmail_webhooks::queue::{Durability, SqliteStore, Workers};
///
/// async fn handle(Extension(event): Extension<Arc<Event>>) {
///     // Take minutes if needed.
/// }
///
/// # async fn run(store: Arc<SqliteStore>) {
/// let handler = Router::new().route("/webhooks", post(handle));
/// Workers::new(store, handler)
///     .concurrency(8)
///     .run(async { let _ = tokio::signal::ctrl_c().await; })
///     .await;
/// # }
/// # }
/// ```
pub struct Workers<S, H> {
    store: Arc<S>,
    service: H,
    settings: Settings,
    on_dead_letter: Option<DeadLetterHook>,
}

#[derive(Debug, Clone)]
struct Settings {
    path: Uri,
    concurrency: usize,
    attempt_timeout: Duration,
    lease: Duration,
    max_attempts: u32,
    backoff: Duration,
    backoff_max: Duration,
    shutdown_grace: Duration,
    retention: Duration,
    poll_interval: Duration,
}

impl<S, H> fmt::Debug for Workers<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S, H, B> Workers<S, H>
where
    S: EventStore,
    H: Service<Request<VerifiedBody>, Response = Response<B>> + Clone + Send + 'static,
    H::Future: Send,
    H::Error: Into<BoxError>,
    B: Send + 'static,
{
    /// Workers that take events from `store` and call `service` with each.
    pub fn new(store: Arc<S>, service: H) -> Self {
        Self {
            store,
            service,
            settings: Settings {
                path: Uri::from_static("/webhooks"),
                concurrency: 8,
                attempt_timeout: Duration::from_secs(600),
                lease: Duration::from_secs(30),
                max_attempts: 8,
                backoff: Duration::from_secs(10),
                backoff_max: Duration::from_secs(600),
                shutdown_grace: Duration::from_secs(10),
                retention: Duration::from_secs(7 * 24 * 3600),
                poll_interval: Duration::from_millis(100),
            },
            on_dead_letter: None,
        }
    }

    /// The request's path, for a router that routes on it; `/webhooks` by default.
    pub fn path(mut self, path: Uri) -> Self {
        self.settings.path = path;
        self
    }

    /// How many handler runs at once, at least 1; 8 by default.
    pub fn concurrency(mut self, runs: usize) -> Self {
        self.settings.concurrency = runs.max(1);
        self
    }

    /// How long one attempt may run before it is cancelled and counted as failed; 10 min
    /// by default.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.settings.attempt_timeout = timeout;
        self
    }

    /// The lease a claim takes, renewed every third of it while the handler runs; 30 s by
    /// default, at least 1 s. It is how long an event whose process died waits before
    /// another process takes it (a store used by one process, as SQLite's is, takes them
    /// back when it reopens).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// Attempts before an event becomes a dead letter, at least 1; 8 by default.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.max_attempts = attempts.max(1);
        self
    }

    /// The wait after the first failed attempt, doubling after each next one up to 10
    /// min; 10 s by default.
    pub fn backoff(mut self, first: Duration) -> Self {
        self.settings.backoff = first;
        self
    }

    /// How long running handlers may take to finish once shutdown begins; 10 s by
    /// default. Those still running then are cancelled and their events released.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// How long a completed event's key is kept, so that its replays are acknowledged
    /// and not handled again; 7 days by default, far beyond OpenMail's 5-minute replay
    /// window and its retries over about 7.5 minutes.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.settings.retention = retention;
        self
    }

    /// Called with each new dead letter (also logged with `tracing`, when on).
    pub fn on_dead_letter(mut self, hook: impl Fn(&DeadLetter) + Send + Sync + 'static) -> Self {
        self.on_dead_letter = Some(Arc::new(hook));
        self
    }

    /// Runs until `shutdown` completes, then shuts down gracefully (see above) and
    /// returns. Spawns one tokio task per handler run.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            store,
            service,
            settings,
            on_dead_letter,
        } = self;
        let settings = Arc::new(settings);
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let (cancel, cancelled) = watch::channel(false);
        let mut running = JoinSet::new();
        let mut purge = tokio::time::interval(Duration::from_secs(3600));
        let unrecorded = Unrecorded::default();
        tokio::pin!(shutdown);
        loop {
            // Reap finished runs so the set does not grow.
            while running.try_join_next().is_some() {}
            let free = permits.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match store
                    .claim(free, settings.lease, settings.max_attempts)
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        report_store_error("claim", &error);
                        Vec::new()
                    }
                }
            };
            // Every slot taken, or nothing more due: wait for a run to end or the poll.
            let idle = free == 0 || claimed.len() < free;
            for claimed in claimed {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    // Cannot happen: at most `free` were claimed. Hand it back if it does.
                    let _ = store.release(claimed.lease()).await;
                    continue;
                };
                let service = service.clone();
                let run = Run {
                    store: Arc::clone(&store),
                    settings: Arc::clone(&settings),
                    on_dead_letter: on_dead_letter.clone(),
                    cancelled: cancelled.clone(),
                    unrecorded: unrecorded.clone(),
                };
                running.spawn(async move {
                    run.attempt(service, claimed).await;
                    drop(permit);
                });
            }
            if !idle {
                continue;
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = purge.tick() => {
                    match store.purge(settings.retention).await {
                        Ok(_purged) => {
                            #[cfg(feature = "tracing")]
                            tracing::debug!(purged = _purged, "queue: purged completed keys past the retention");
                        }
                        Err(error) => report_store_error("purge", &error),
                    }
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
                () = tokio::time::sleep(settings.poll_interval) => {}
            }
        }
        // Stop claiming; give running handlers the grace, then cancel and release.
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let _ = cancel.send(true);
            while running.join_next().await.is_some() {}
        }
    }
}

fn report_store_error(_what: &str, _error: &QueueError) {
    #[cfg(feature = "tracing")]
    tracing::error!(
        operation = _what,
        error = %_error,
        source = ?std::error::Error::source(_error),
        "queue: the event store failed"
    );
}

/// The keys of events whose handler finished here with a `2xx` while the store could not
/// record the completion (it was unreachable, as during a PostgreSQL restart). When such
/// an event's lease expires and these workers claim it again, they record the completion
/// without running the handler a second time: without a crash of this process, an event
/// is handled once. A key leaves the set once its completion is recorded here; one that
/// another process claimed meanwhile stays (32 bytes each, only ever after a store
/// failure).
#[derive(Clone, Default)]
struct Unrecorded(Arc<Mutex<HashSet<[u8; 32]>>>);

impl Unrecorded {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.lock().contains(key)
    }

    fn insert(&self, key: [u8; 32]) {
        self.lock().insert(key);
    }

    fn remove(&self, key: &[u8; 32]) {
        self.lock().remove(key);
    }
}

/// What one handler run needs.
struct Run<S> {
    store: Arc<S>,
    settings: Arc<Settings>,
    on_dead_letter: Option<DeadLetterHook>,
    cancelled: watch::Receiver<bool>,
    unrecorded: Unrecorded,
}

/// How one attempt ended.
enum Ending {
    Handled,
    Failed(String),
    /// The lease was taken over, or shutdown cancelled the attempt: the store decides.
    LeaseLost,
    Cancelled,
}

impl<S: EventStore> Run<S> {
    async fn attempt<H, B>(mut self, mut service: H, claimed: Claimed)
    where
        H: Service<Request<VerifiedBody>, Response = Response<B>> + Send + 'static,
        H::Future: Send,
        H::Error: Into<BoxError>,
        B: Send + 'static,
    {
        let lease = claimed.lease();
        if self.unrecorded.contains(lease.key()) {
            // Handled here already; only the completion is missing.
            self.complete(lease).await;
            return;
        }
        let attempt = WorkerAttempt {
            number: claimed.attempt(),
            last: claimed.attempt() >= self.settings.max_attempts,
            lease,
        };
        let request = request(&self.settings.path, &claimed, attempt);
        // Its own task, so that a panic is caught as the task's outcome and a cancelled
        // attempt stops at once.
        let mut handler = tokio::spawn(async move {
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let response = service.call(request).await.map_err(Into::into)?;
            Ok::<_, BoxError>(response.status())
        });
        // The lease is at least 1 s, so a third of it is never zero (which `interval` refuses).
        let every = self
            .settings
            .lease
            .checked_div(3)
            .unwrap_or(Duration::from_secs(1));
        let now = tokio::time::Instant::now();
        let mut renew = tokio::time::interval_at(now.checked_add(every).unwrap_or(now), every);
        let deadline = tokio::time::sleep(self.settings.attempt_timeout);
        tokio::pin!(deadline);
        let ending = loop {
            tokio::select! {
                outcome = &mut handler => break match outcome {
                    Ok(Ok(status)) if status.is_success() => Ending::Handled,
                    Ok(Ok(status)) => Ending::Failed(format!("the handler answered {status}")),
                    Ok(Err(error)) => Ending::Failed(format!("the handler failed: {error}")),
                    Err(error) if error.is_panic() => Ending::Failed("the handler panicked".to_owned()),
                    Err(_) => Ending::Failed("the handler was cancelled".to_owned()),
                },
                () = &mut deadline => {
                    handler.abort();
                    break Ending::Failed(format!(
                        "the handler did not finish within {:?}",
                        self.settings.attempt_timeout
                    ));
                }
                _ = renew.tick() => match self.store.renew(lease, self.settings.lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        handler.abort();
                        break Ending::LeaseLost;
                    }
                    // The lease still runs; the next renewal may succeed.
                    Err(error) => report_store_error("renew", &error),
                },
                Ok(()) = self.cancelled.changed() => {
                    handler.abort();
                    break Ending::Cancelled;
                }
            }
        };
        match ending {
            Ending::Handled => self.complete(lease).await,
            Ending::Failed(error) => self.fail(&claimed, attempt, error).await,
            Ending::LeaseLost => {
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    event_id = ?claimed.delivery().event_id().map(crate::LogSafe::new),
                    "queue: lost an event's lease while its handler ran; cancelled this run"
                );
            }
            Ending::Cancelled => {
                if let Err(error) = self.store.release(lease).await {
                    report_store_error("release", &error);
                }
            }
        }
    }

    /// Records the completion, retrying a failing store a few times. Until it lands, the
    /// key stays in [`Unrecorded`], so that these workers complete the event without
    /// running it again when they claim it after its lease expired.
    async fn complete(&self, lease: Lease) {
        self.unrecorded.insert(lease.key);
        let mut wait = Duration::from_millis(100);
        for _ in 0..5 {
            match self.store.complete(lease).await {
                Ok(true) => {
                    self.unrecorded.remove(&lease.key);
                    return;
                }
                // Another claim holds it now; a later claim here finds the key.
                Ok(false) => return,
                Err(error) => report_store_error("complete", &error),
            }
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }

    async fn fail(&self, claimed: &Claimed, attempt: WorkerAttempt, error: String) {
        let retry_in = (!attempt.last).then(|| {
            let doublings = attempt.number.saturating_sub(1).min(20);
            self.settings
                .backoff
                .saturating_mul(1 << doublings)
                .min(self.settings.backoff_max)
        });
        #[cfg(feature = "tracing")]
        tracing::warn!(
            event_id = ?claimed.delivery().event_id().map(crate::LogSafe::new),
            attempt = attempt.number,
            retry_in = ?retry_in,
            error = %error,
            "queue: a handler attempt failed"
        );
        match self
            .store
            .fail(attempt.lease, retry_in, error.clone())
            .await
        {
            Ok(true) if retry_in.is_none() => {
                let dead = DeadLetter::new(
                    *attempt.lease.key(),
                    attempt.number,
                    error,
                    claimed.delivery().clone(),
                );
                #[cfg(feature = "tracing")]
                tracing::error!(
                    event_id = ?dead.delivery().event_id().map(crate::LogSafe::new),
                    attempts = dead.attempts(),
                    error = dead.error(),
                    "queue: an event is a dead letter"
                );
                if let Some(hook) = &self.on_dead_letter {
                    hook(&dead);
                }
            }
            Ok(_) => {}
            Err(error) => report_store_error("fail", &error),
        }
    }
}

/// The request the service gets: what [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer)
/// hands its inner service, plus the [`WorkerAttempt`].
fn request(path: &Uri, claimed: &Claimed, attempt: WorkerAttempt) -> Request<VerifiedBody> {
    let delivery = claimed.delivery();
    let body = delivery.body().clone();
    let mut request = Request::new(VerifiedBody::new(body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = path.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let extensions = request.extensions_mut();
    if let Some(event) = delivery.event() {
        extensions.insert(Arc::clone(event));
    }
    extensions.insert(delivery.clone());
    extensions.insert(attempt);
    request
}
