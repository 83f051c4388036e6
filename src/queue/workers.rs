//! [`Workers`]: run stored events through the user's service.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
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
/// - **Grouped:** completions that finish while the store commits are recorded together,
///   with a claim for every free slot, in one transaction:
///   one commit, so one flush, for many events. Events are claimed ahead of free slots
///   (the [`prefetch`](Self::prefetch): as many as the concurrency, more while a backlog
///   leaves slots idle on the store's commits, up to 8 × the concurrency), so that
///   handlers keep running while the store commits.
/// - **Leased:** a claim leases the event for [`lease`](Self::lease) (30 s), renewed every
///   third of it while the event waits for a slot and while its handler runs. An event
///   whose worker died is claimed again once its lease expires (SQLite: at once when the
///   store reopens). A run whose lease could not be renewed is cancelled before the lease
///   ends, so that no claim, here or elsewhere, runs the event while it still runs here.
/// - **Retried:** a `2xx` completes the event; any other status, an error, a panic or the
///   time limit is a failed attempt, retried after a backoff doubling from
///   [`backoff`](Self::backoff) (10 s) up to 10 min, until
///   [`max_attempts`](Self::max_attempts) (8). The last failure makes it a dead letter:
///   reported to [`on_dead_letter`](Self::on_dead_letter) and `tracing`, and kept with its
///   body for [`EventStore::dead_letters`], [`EventStore::retry_dead_letter`] and
///   [`EventStore::discard_dead_letter`].
/// - **Graceful:** when the `shutdown` future given to [`run`](Self::run) completes, no
///   new event is claimed or started, the prefetched events are released, running handlers
///   get [`shutdown_grace`](Self::shutdown_grace) (10 s) to finish, the leases of the rest
///   are released (their attempts uncounted), and the completions are recorded, tried
///   five times, over 3 s or more, while the store fails. A completion still not recorded
///   then runs its handler again once its lease expires, in whichever process claims it.
/// - **Housekeeping:** completed keys older than [`retention`](Self::retention) (7 days)
///   are purged at start and hourly.
/// - **Watched:** with the `tracing` feature, the queue's [`EventStore::stats`] are logged
///   at start and every [`stats_every`](Self::stats_every) (60 s).
///
/// A handler stopped at its time limit, at the end of the grace or because its lease could
/// not be kept is cancelled at its next `.await`. One that answered before the cancel took
/// effect (it blocked its thread, or ended just then) is taken at its answer: a `2xx`
/// completes its event, so that its work is not done again.
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
    /// `None`: as many as `concurrency`.
    prefetch: Option<usize>,
    attempt_timeout: Duration,
    lease: Duration,
    max_attempts: u32,
    backoff: Duration,
    backoff_max: Duration,
    shutdown_grace: Duration,
    retention: Duration,
    poll_interval: Duration,
    stats_every: Duration,
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
                prefetch: None,
                attempt_timeout: Duration::from_secs(600),
                lease: Duration::from_secs(30),
                max_attempts: 8,
                backoff: Duration::from_secs(10),
                backoff_max: Duration::from_secs(600),
                shutdown_grace: Duration::from_secs(10),
                retention: Duration::from_secs(7 * 24 * 3600),
                poll_interval: Duration::from_millis(100),
                stats_every: Duration::from_secs(60),
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

    /// How many events are claimed ahead of free slots, to wait here (their leases renewed)
    /// until a handler run ends; `0` for none. With instant handlers they keep every slot
    /// busy while the store commits the next group; with slow handlers they wait here
    /// instead of on another replica. A crash of this process gives back the attempt of
    /// each that had not started (the claim counted it).
    ///
    /// Unset, it adapts: as many as the [`concurrency`](Self::concurrency) at first;
    /// doubled when two claims in a row came back full and a slot idled while the second
    /// committed (the handlers outran the store), up to 8 × the concurrency; halved back
    /// once a claim comes back short. A store whose commit waits for a flush drains at most
    /// `concurrency + prefetch` events per commit, so instant handlers on PostgreSQL need
    /// more than the concurrency to keep up; slow handlers keep their slots busy and never
    /// grow it. Set, it stays fixed.
    pub fn prefetch(mut self, events: usize) -> Self {
        self.settings.prefetch = Some(events);
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

    /// With the `tracing` feature, how often the workers log the queue's
    /// [`stats`](EventStore::stats) at `info` ("queue: stats", with the fields `waiting`,
    /// `in_flight`, `dead_letters` and `oldest_age_ms`), from a task of their own so that
    /// a slow count never holds up a claim; the first at start. Every 60 s by default;
    /// [`Duration::ZERO`] logs none. Without the feature it does nothing.
    pub fn stats_every(mut self, every: Duration) -> Self {
        self.settings.stats_every = every;
        self
    }

    /// Called with each new dead letter (also logged with `tracing`, when on).
    pub fn on_dead_letter(mut self, hook: impl Fn(&DeadLetter) + Send + Sync + 'static) -> Self {
        self.on_dead_letter = Some(Arc::new(hook));
        self
    }

    /// Runs until `shutdown` completes, then shuts down gracefully (see above) and
    /// returns. Spawns a tokio task for each event it claims (a prefetched one waits in it
    /// for a slot), and runs the handler in a task of its own inside it, so that a panic is
    /// caught as that task's outcome.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            store,
            service,
            settings,
            on_dead_letter,
        } = self;
        let settings = Arc::new(settings);
        let mut prefetch = Prefetch::new(settings.concurrency, settings.prefetch);
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let (stop, stopping) = watch::channel(false);
        let (cancel, cancelled) = watch::channel(false);
        let mut running = JoinSet::new();
        let mut purge = tokio::time::interval(Duration::from_secs(3600));
        let mut events = Events::default();
        // Prefetched events that took a slot, for the next call to record as started.
        let (began, mut beginnings) = mpsc::unbounded_channel();
        let reporting = report_stats(&store, settings.stats_every);
        tokio::pin!(shutdown);
        loop {
            while let Some(finished) = running.try_join_next_with_id() {
                events.finished(finished);
            }
            while let Ok(lease) = beginnings.try_recv() {
                events.started.push(lease);
            }
            let capacity = settings.concurrency.saturating_add(prefetch.events);
            let free = capacity.saturating_sub(events.held.len());
            // Nothing to claim or record: wait for a run to end.
            let mut idle = true;
            if free > 0 || !events.completed.is_empty() || !events.started.is_empty() {
                // The free slots are taken before the call, for its first events in due
                // order, which the store marks started: they start at once, with their
                // attempt counted even if the process dies. (A prefetched event whose task
                // has not begun to wait for a slot may find it taken and wait for the next
                // one, its lease renewed meanwhile: it waits longer, nothing is lost.)
                let mut slots = Vec::new();
                while slots.len() < free {
                    match Arc::clone(&permits).try_acquire_owned() {
                        Ok(permit) => slots.push(permit),
                        Err(_) => break,
                    }
                }
                let start = slots.len();
                let completed = events.completed.clone();
                events.started.retain(|lease| !completed.contains(lease));
                let claimed_at = Instant::now();
                match store
                    .record_and_claim(
                        completed,
                        events.started.clone(),
                        free,
                        start,
                        settings.lease,
                        settings.max_attempts,
                    )
                    .await
                {
                    Ok((recorded, mut claimed, dead)) => {
                        events.recorded(&recorded);
                        events.started.clear();
                        // Their attempts were used up by processes that stopped or lost the
                        // lease: reported as a last failed attempt is.
                        for dead in &dead {
                            report_dead_letter(on_dead_letter.as_ref(), dead);
                        }
                        idle = claimed.len() < free;
                        // Before this call's events take them: a slot taken for the call, or
                        // a permit nobody waits for, is a slot that idled while the store
                        // committed.
                        prefetch.adapt(
                            free,
                            claimed.len(),
                            start > 0 || permits.available_permits() > 0,
                        );
                        // The events marked started get the slots first (a stable sort: due
                        // order stays).
                        claimed.sort_by_key(|claimed| !claimed.started());
                        for claimed in claimed {
                            let key = *claimed.lease().key();
                            if events.unrecorded.contains(&key) {
                                // Handled here already; only the completion is missing.
                                events.completed.push(claimed.lease());
                                continue;
                            }
                            if events.is_held(&key) {
                                // Its lease expired while its run here was still ending: hand
                                // it back rather than run it twice at once.
                                if let Err(error) = store.release(claimed.lease()).await {
                                    report_store_error("release", &error);
                                }
                                continue;
                            }
                            let run = Run {
                                store: Arc::clone(&store),
                                settings: Arc::clone(&settings),
                                on_dead_letter: on_dead_letter.clone(),
                                permits: Arc::clone(&permits),
                                began: began.clone(),
                                stopping: stopping.clone(),
                                cancelled: cancelled.clone(),
                            };
                            let service = service.clone();
                            let slot = slots.pop();
                            let task =
                                running.spawn(run.attempt(service, claimed, slot, claimed_at));
                            events.held.insert(task.id(), key);
                        }
                    }
                    Err(error) => report_store_error("claim", &error),
                }
            }
            let polling = free > 0 || !events.completed.is_empty() || !events.started.is_empty();
            // Shutdown first, also while every call fills the slots (then the loop goes on
            // at once): runs end while the store commits, so there may always be more.
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
                () = std::future::ready(()), if !idle => {}
                Some(finished) = running.join_next_with_id(), if !running.is_empty() => {
                    events.finished(finished);
                }
                // The loop holds a sender: this never ends.
                Some(lease) = beginnings.recv() => events.started.push(lease),
                () = tokio::time::sleep(settings.poll_interval), if polling => {}
            }
        }
        // Start nothing more: the prefetched events are released at once. Give running
        // handlers the grace, then cancel and release them.
        let _ = stop.send(true);
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while let Some(finished) = running.join_next_with_id().await {
                events.finished(finished);
            }
        })
        .await;
        if drained.is_err() {
            let _ = cancel.send(true);
            while let Some(finished) = running.join_next_with_id().await {
                events.finished(finished);
            }
        }
        if let Some(reporting) = reporting {
            reporting.stop().await;
        }
        // Record the last completions, retrying a failing store a few times.
        let mut wait = Duration::from_millis(100);
        for _ in 0..5 {
            if events.completed.is_empty() {
                break;
            }
            match store
                .complete_and_claim(
                    events.completed.clone(),
                    0,
                    settings.lease,
                    settings.max_attempts,
                )
                .await
            {
                Ok((recorded, _, _)) => events.recorded(&recorded),
                Err(error) => {
                    report_store_error("complete", &error);
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
            }
        }
    }
}

/// How many events the loop claims ahead of free slots.
///
/// Set by [`Workers::prefetch`], it stays as set. By default it starts at the concurrency
/// and adapts to the backlog: a claim that came back full, after a previous one that came
/// back full too, while a slot idled (no prefetched event was left to take it while the
/// store committed) doubles it, up to 8 × the concurrency; a claim that came back short
/// (the backlog is drained) halves it, down to the concurrency again. Slow handlers never
/// grow it: their slots are busy and the prefetched events wait for them. (The first full
/// claim after an idle spell does not count: its slots idled for want of events.) A store
/// whose commit waits for a flush drains at most `concurrency + prefetch` events per flush, so this is what lets it keep up with instant
/// handlers.
struct Prefetch {
    events: usize,
    least: usize,
    most: usize,
    /// The last claim came back full: there is a backlog.
    backlog: bool,
}

impl Prefetch {
    fn new(concurrency: usize, set: Option<usize>) -> Self {
        match set {
            Some(events) => Self {
                events,
                least: events,
                most: events,
                backlog: false,
            },
            None => Self {
                events: concurrency,
                least: concurrency,
                most: concurrency.saturating_mul(8),
                backlog: false,
            },
        }
    }

    /// After a call that asked for `asked` events and got `got`; `starved`: a slot was free
    /// with no event waiting for it when the call returned.
    fn adapt(&mut self, asked: usize, got: usize, starved: bool) {
        if asked == 0 {
            return;
        }
        let full = got >= asked;
        self.events = if !full {
            (self.events / 2).max(self.least)
        } else if starved && self.backlog {
            self.events.saturating_mul(2).min(self.most)
        } else {
            self.events
        };
        self.backlog = full;
    }
}

/// The loop's account of the events it claimed.
#[derive(Default)]
struct Events {
    /// The key of each claimed event whose task has not ended, waiting for a slot or
    /// running: what counts against the capacity, and what a new claim must not run again.
    held: HashMap<Id, [u8; 32]>,
    /// Prefetched events that took a slot and started, not recorded as started yet:
    /// recorded with the next call (and retried with each one after while the store fails),
    /// never waited for before the handler runs. A crash before that record commits
    /// refunds their attempt.
    started: Vec<Lease>,
    /// Handled here with a `2xx`, their completion not recorded yet: recorded with the next
    /// claim, and retried with each one after until the store answers.
    completed: Vec<Lease>,
    /// The keys of events handled here whose completion the store has not recorded (it was
    /// unreachable, as during a PostgreSQL restart, or the lease expired meanwhile). When
    /// such an event is claimed here again, its completion is recorded without running the
    /// handler a second time: without a crash of this process, an event is handled once,
    /// unless the store is still failing when the workers stop (see `run`'s shutdown).
    /// A key leaves once its completion is recorded, or once the store says the event was
    /// completed already (the handler's own transaction, on PostgreSQL); one whose lease
    /// another process took stays (32 bytes each, only ever after a store failure or an
    /// expired lease).
    unrecorded: HashSet<[u8; 32]>,
}

impl Events {
    /// A task ended; `Some` lease: its handler answered `2xx`.
    fn finished(&mut self, finished: Result<(Id, Option<Lease>), tokio::task::JoinError>) {
        let id = match finished {
            Ok((id, handled)) => {
                if let Some(lease) = handled {
                    self.unrecorded.insert(lease.key);
                    self.completed.push(lease);
                }
                id
            }
            // A run's own code does not panic (the handler runs in a task of its own); if it
            // ever did, its event's lease expires and it runs again.
            Err(error) => error.id(),
        };
        self.held.remove(&id);
    }

    /// What the store said of `completed`, in order: recorded ones leave `unrecorded`.
    fn recorded(&mut self, recorded: &[bool]) {
        for (lease, recorded) in self.completed.drain(..).zip(recorded) {
            if *recorded {
                self.unrecorded.remove(&lease.key);
            }
        }
    }

    fn is_held(&self, key: &[u8; 32]) -> bool {
        self.held.values().any(|held| held == key)
    }
}

/// A task aborted when this is dropped (with [`Workers::run`]'s future, when that is
/// dropped before it ends), or stopped, and waited for, with `stop`.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Aborts the task and waits until it is gone, so that what it held is dropped too.
    async fn stop(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs the store's stats every `every` (the first at once) until stopped or dropped;
/// `None` when nothing would be logged. The task holds the store only while it asks: when
/// [`Workers::run`] returns, or its future is dropped, the store can close at once.
#[cfg(feature = "tracing")]
fn report_stats<S: EventStore>(store: &Arc<S>, every: Duration) -> Option<AbortOnDrop> {
    if every.is_zero() {
        return None;
    }
    let store = Arc::downgrade(store);
    Some(AbortOnDrop(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            match store.stats().await {
                Ok(stats) => tracing::info!(
                    waiting = stats.waiting,
                    in_flight = stats.in_flight,
                    dead_letters = stats.dead_letters,
                    oldest_age_ms = stats
                        .oldest_age
                        .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
                    "queue: stats"
                ),
                Err(error) => report_store_error("read the stats", &error),
            }
        }
    })))
}

#[cfg(not(feature = "tracing"))]
fn report_stats<S>(_store: &Arc<S>, _every: Duration) -> Option<AbortOnDrop> {
    None
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

/// Logs a new dead letter and calls the application's hook with it.
fn report_dead_letter(hook: Option<&DeadLetterHook>, dead: &DeadLetter) {
    #[cfg(feature = "tracing")]
    tracing::error!(
        event_id = ?dead.delivery().event_id().map(crate::LogSafe::new),
        attempts = dead.attempts(),
        error = dead.error(),
        "queue: an event is a dead letter"
    );
    if let Some(hook) = hook {
        hook(dead);
    }
}

/// What one handler run needs.
struct Run<S> {
    store: Arc<S>,
    settings: Arc<Settings>,
    on_dead_letter: Option<DeadLetterHook>,
    permits: Arc<Semaphore>,
    /// Where a prefetched event says that it took a slot, for the loop to record.
    began: mpsc::UnboundedSender<Lease>,
    /// Shutdown began: an event still waiting for a slot is released, not started.
    stopping: watch::Receiver<bool>,
    /// The grace is over: a running handler is cancelled and its event released.
    cancelled: watch::Receiver<bool>,
}

/// How one attempt ended.
enum Ending {
    Handled,
    Failed(String),
    /// The lease was taken over, or could not be renewed before it ended: the store
    /// decides.
    LeaseLost,
    Cancelled,
}

impl Ending {
    /// What the handler's task came to, once it ended.
    fn of(outcome: Result<Result<StatusCode, BoxError>, tokio::task::JoinError>) -> Self {
        match outcome {
            Ok(Ok(status)) if status.is_success() => Self::Handled,
            Ok(Ok(status)) => Self::Failed(format!("the handler answered {status}")),
            Ok(Err(error)) => Self::Failed(format!("the handler failed: {error}")),
            Err(error) if error.is_panic() => Self::Failed("the handler panicked".to_owned()),
            Err(_) => Self::Failed("the handler was cancelled".to_owned()),
        }
    }
}

/// A lease held by a run, renewed every third of it. `until` is where it ends at the
/// latest on this clock: the store counts it from when it ran the claim or the renewal,
/// and this from just before asking.
struct Held {
    lease: Lease,
    length: Duration,
    renew: tokio::time::Interval,
    until: Instant,
}

impl Held {
    fn new(lease: Lease, length: Duration, claimed_at: Instant) -> Self {
        // The lease is at least 1 s, so a third of it is never zero (which `interval`
        // refuses).
        let every = length.checked_div(3).unwrap_or(Duration::from_secs(1));
        let first = claimed_at.checked_add(every).unwrap_or(claimed_at);
        Self {
            lease,
            length,
            renew: tokio::time::interval_at(first, every),
            until: claimed_at.checked_add(length).unwrap_or(claimed_at),
        }
    }

    /// When to give the event up unrenewed: a tenth of the lease before it ends, so that
    /// the run has stopped before any claim (this process's included) can take it again.
    fn give_up_at(&self) -> Instant {
        self.until
            .checked_sub(self.length.checked_div(10).unwrap_or_default())
            .unwrap_or(self.until)
    }

    /// Renews; `false` once the lease is no longer this holder's. A failing store leaves
    /// the lease as it was: the next renewal may succeed.
    async fn renew<S: EventStore>(&mut self, store: &S) -> bool {
        let asked_at = Instant::now();
        match store.renew(self.lease, self.length).await {
            Ok(true) => {
                self.until = asked_at.checked_add(self.length).unwrap_or(asked_at);
                true
            }
            Ok(false) => false,
            Err(error) => {
                report_store_error("renew", &error);
                true
            }
        }
    }
}

impl<S: EventStore> Run<S> {
    /// Waits for a slot, runs the handler, and records a failure or a release itself.
    /// Returns the lease when the handler answered `2xx`: the loop records the completion
    /// with the next claim.
    async fn attempt<H, B>(
        self,
        mut service: H,
        claimed: Claimed,
        slot: Option<OwnedSemaphorePermit>,
        claimed_at: Instant,
    ) -> Option<Lease>
    where
        H: Service<Request<VerifiedBody>, Response = Response<B>> + Send + 'static,
        H::Future: Send,
        H::Error: Into<BoxError>,
        B: Send + 'static,
    {
        let lease = claimed.lease();
        let mut held = Held::new(lease, self.settings.lease, claimed_at);
        let mut stopping = self.stopping.clone();
        let mut cancelled = self.cancelled.clone();
        // A prefetched event waits here for a slot, its lease renewed.
        let _permit = match slot {
            Some(permit) => permit,
            None => loop {
                let give_up_at = held.give_up_at();
                tokio::select! {
                    biased;
                    true = raised(&mut stopping) => {
                        self.release(lease).await;
                        return None;
                    }
                    Ok(permit) = Arc::clone(&self.permits).acquire_owned() => break permit,
                    _ = held.renew.tick() => {
                        if !held.renew(self.store.as_ref()).await {
                            return None;
                        }
                    }
                    () = tokio::time::sleep_until(give_up_at) => return None,
                }
            },
        };
        if claimed.taken_over() && !claimed.started() {
            // Its last holder died holding it. If it is what kills the process, a start
            // recorded lazily may never commit and the attempt would be refunded at every
            // crash: record it before the handler runs (one commit, only for events taken
            // over from a dead holder).
            let recorded = self
                .store
                .record_and_claim(
                    Vec::new(),
                    vec![lease],
                    0,
                    0,
                    self.settings.lease,
                    self.settings.max_attempts,
                )
                .await;
            if let Err(error) = recorded {
                report_store_error("record a start", &error);
                let _ = self.began.send(lease);
            }
        } else if !claimed.started() {
            // Recorded with the loop's next call, not waited for: waiting would idle the
            // slot for a commit, which is what the prefetch is there to avoid.
            let _ = self.began.send(lease);
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
        let deadline = tokio::time::sleep(self.settings.attempt_timeout);
        tokio::pin!(deadline);
        let ending = loop {
            let give_up_at = held.give_up_at();
            // Each way of stopping the handler first looks at whether it finished meanwhile
            // (`stop` returns its outcome then): a handler that answered `2xx` as its time
            // ran out, or as the workers shut down, did its work, and running it again would
            // repeat it without a crash.
            tokio::select! {
                // The outcome first: a handler that finished is never cancelled or released.
                biased;
                outcome = &mut handler => break Ending::of(outcome),
                () = &mut deadline => {
                    break stop(handler).await.map_or_else(
                        || Ending::Failed(format!(
                            "the handler did not finish within {:?}",
                            self.settings.attempt_timeout
                        )),
                        Ending::of,
                    );
                }
                true = raised(&mut cancelled) => {
                    break stop(handler).await.map_or(Ending::Cancelled, Ending::of);
                }
                _ = held.renew.tick() => {
                    if !held.renew(self.store.as_ref()).await {
                        break stop(handler).await.map_or(Ending::LeaseLost, Ending::of);
                    }
                }
                () = tokio::time::sleep_until(give_up_at) => {
                    break stop(handler).await.map_or(Ending::LeaseLost, Ending::of);
                }
            }
        };
        match ending {
            Ending::Handled => return Some(lease),
            Ending::Failed(error) => self.fail(&claimed, attempt, error).await,
            Ending::LeaseLost => {
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    event_id = ?claimed.delivery().event_id().map(crate::LogSafe::new),
                    "queue: lost an event's lease, or could not renew it, while its handler ran; \
                     cancelled this run"
                );
            }
            Ending::Cancelled => self.release(lease).await,
        }
        None
    }

    async fn release(&self, lease: Lease) {
        if let Err(error) = self.store.release(lease).await {
            report_store_error("release", &error);
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
                report_dead_letter(self.on_dead_letter.as_ref(), &dead);
            }
            Ok(_) => {}
            Err(error) => report_store_error("fail", &error),
        }
    }
}

/// Waits until the flag is raised; `false` if its sender went away first.
async fn raised(flag: &mut watch::Receiver<bool>) -> bool {
    flag.wait_for(|raised| *raised).await.is_ok()
}

/// Cancels the handler and waits until it has stopped (its future dropped), so that
/// nothing of this run is still running when its event may be claimed again. Returns the
/// handler's outcome when it finished before the cancellation took effect (it was being
/// polled, or had just ended), `None` when it was cancelled.
async fn stop<T>(
    mut handler: tokio::task::JoinHandle<T>,
) -> Option<Result<T, tokio::task::JoinError>> {
    handler.abort();
    match (&mut handler).await {
        Err(error) if error.is_cancelled() => None,
        finished => Some(finished),
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

#[cfg(test)]
mod tests {
    use super::Prefetch;

    #[test]
    fn the_prefetch_doubles_on_a_second_full_starved_claim_up_to_eight_times_the_concurrency() {
        let mut prefetch = Prefetch::new(8, None);
        assert_eq!(prefetch.events, 8);
        // The first full claim only shows a backlog: its slots idled for want of events.
        prefetch.adapt(16, 16, true);
        assert_eq!(prefetch.events, 8);
        let mut grown = Vec::new();
        for _ in 0..5 {
            let asked = 8 + prefetch.events;
            prefetch.adapt(asked, asked, true);
            grown.push(prefetch.events);
        }
        assert_eq!(grown, [16, 32, 64, 64, 64]);
        // No slot idled: handlers are the bound, not the store.
        prefetch.adapt(1, 1, false);
        assert_eq!(prefetch.events, 64);
        // A call with nothing to claim says nothing of the backlog.
        prefetch.adapt(0, 0, true);
        assert_eq!(prefetch.events, 64);
        let mut shrunk = Vec::new();
        for _ in 0..4 {
            prefetch.adapt(72, 3, true);
            shrunk.push(prefetch.events);
        }
        assert_eq!(shrunk, [32, 16, 8, 8]);
        // A short claim ends the backlog: the next full one does not grow it yet.
        prefetch.adapt(16, 16, true);
        assert_eq!(prefetch.events, 8);
    }

    #[test]
    fn a_prefetch_that_was_set_stays_as_set() {
        for set in [0, 3] {
            let mut prefetch = Prefetch::new(8, Some(set));
            for _ in 0..4 {
                prefetch.adapt(8 + set, 8 + set, true);
            }
            prefetch.adapt(8 + set, 0, true);
            assert_eq!(prefetch.events, set);
        }
    }
}
