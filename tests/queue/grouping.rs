//! How the workers use the store: completions gathered and claims for every free slot in
//! one call (one transaction), a prefetch ahead of free slots, and leases that could not be
//! renewed. Counted through a store that wraps the SQLite one, never timed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{Router, routing::post};
use http::StatusCode;
use openmail_webhooks::Delivery;
use openmail_webhooks::queue::{
    Backend, Claimed, DeadLetter, EventStore, Inserted, Lease, QueueError, QueueStats, Settled,
    SqliteStore, Workers,
};
use tokio::sync::{Semaphore, mpsc, watch};

use super::{open, scratch, stats, stored};

/// One call of [`Backend::complete_and_claim`]: how many completions it carried, how many
/// events it asked for, and how many it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Call {
    completions: usize,
    limit: usize,
    claimed: usize,
}

/// The SQLite store, with the workers' calls counted (and the retry delays they ask for
/// recorded). From the second `complete_and_claim` on, each call waits for a permit of
/// `gate`, which stands in for a slow commit. `renew_fails` makes every renewal fail as an
/// unreachable store's would.
pub(super) struct Counting {
    inner: Arc<SqliteStore>,
    calls: Mutex<Vec<Call>>,
    retries: Mutex<Vec<Option<Duration>>>,
    completes: AtomicUsize,
    claims: AtomicUsize,
    gate: Semaphore,
    renew_fails: bool,
}

impl Counting {
    pub(super) fn new(inner: Arc<SqliteStore>, gated: bool, renew_fails: bool) -> Self {
        Self {
            inner,
            calls: Mutex::new(Vec::new()),
            retries: Mutex::new(Vec::new()),
            completes: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
            gate: Semaphore::new(if gated { 0 } else { Semaphore::MAX_PERMITS }),
            renew_fails,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The retry delay of each failed attempt, in order (`None`: its last).
    pub(super) fn retries(&self) -> Vec<Option<Duration>> {
        self.retries.lock().unwrap().clone()
    }
}

impl Backend for Counting {
    async fn insert(
        &self,
        key: [u8; 32],
        delivery: Delivery,
        limit: u64,
    ) -> Result<Inserted, QueueError> {
        self.inner.insert(key, delivery, limit).await
    }
    async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        max: u32,
    ) -> Result<Vec<Claimed>, QueueError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(limit, lease, max).await
    }
    async fn complete_and_claim(
        &self,
        completed: Vec<Lease>,
        limit: usize,
        lease: Duration,
        max: u32,
    ) -> Result<Settled, QueueError> {
        let first = self.calls.lock().unwrap().is_empty();
        if !first {
            self.gate.acquire().await.unwrap().forget();
        }
        let completions = completed.len();
        let settled = self
            .inner
            .complete_and_claim(completed, limit, lease, max)
            .await?;
        self.calls.lock().unwrap().push(Call {
            completions,
            limit,
            claimed: settled.1.len(),
        });
        Ok(settled)
    }
    async fn renew(&self, lease: Lease, lease_for: Duration) -> Result<bool, QueueError> {
        if self.renew_fails {
            return Err(QueueError::Unavailable("connection refused".into()));
        }
        self.inner.renew(lease, lease_for).await
    }
    async fn complete(&self, lease: Lease) -> Result<bool, QueueError> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        self.inner.complete(lease).await
    }
    async fn fail(
        &self,
        lease: Lease,
        retry: Option<Duration>,
        error: String,
    ) -> Result<bool, QueueError> {
        self.retries.lock().unwrap().push(retry);
        self.inner.fail(lease, retry, error).await
    }
    async fn release(&self, lease: Lease) -> Result<bool, QueueError> {
        self.inner.release(lease).await
    }
    async fn queue_stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(limit).await
    }
    async fn requeue_dead_letter(&self, key: [u8; 32]) -> Result<bool, QueueError> {
        self.inner.retry_dead_letter(key).await
    }
    async fn settle_dead_letter(&self, key: [u8; 32]) -> Result<bool, QueueError> {
        self.inner.discard_dead_letter(key).await
    }
    async fn purge(&self, retention: Duration) -> Result<u64, QueueError> {
        self.inner.purge(retention).await
    }
}

pub(super) fn run<S: EventStore, H>(
    workers: Workers<S, H>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>)
where
    H: tower::Service<
            http::Request<openmail_webhooks::body::VerifiedBody>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    H::Future: Send,
{
    let (stop, mut stopped) = watch::channel(false);
    let running = tokio::spawn(workers.run(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    (stop, running)
}

/// A handler that reports each run and answers `200` at once.
fn instant(ran: mpsc::UnboundedSender<()>) -> Router {
    Router::new().route(
        "/webhooks",
        post(move || {
            let _ = ran.send(());
            async { StatusCode::OK }
        }),
    )
}

#[tokio::test]
async fn one_call_claims_for_every_slot_and_the_prefetch_and_completions_share_the_next() {
    const EVENTS: usize = 16;
    let dir = scratch("grouping");
    let sqlite = open(&dir);
    for n in 0..EVENTS {
        stored(&sqlite, &format!("evt_group_{n}")).await;
    }
    let store = Arc::new(Counting::new(Arc::clone(&sqlite), true, false));
    let (ran, mut runs) = mpsc::unbounded_channel();
    // 8 slots and 8 prefetched: the first call takes all 16 events.
    let workers = Workers::new(Arc::clone(&store), instant(ran)).concurrency(8);
    let (stop, running) = run(workers);
    // Every handler runs while the store has not answered the second call: runs do not
    // wait for their completion's commit, and prefetched events take the freed slots.
    for _ in 0..EVENTS {
        runs.recv().await.unwrap();
    }
    store.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    // Wait until every completion is recorded.
    let mut waited = 0;
    while stats(&*sqlite).await.depth() > 0 {
        assert!(waited < 3000, "the completions were never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    stop.send(true).unwrap();
    running.await.unwrap();

    let calls = store.calls();
    assert_eq!(
        calls[0],
        Call {
            completions: 0,
            limit: EVENTS,
            claimed: EVENTS
        },
        "{calls:?}"
    );
    let carrying: Vec<usize> = calls
        .iter()
        .map(|call| call.completions)
        .filter(|&completions| completions > 0)
        .collect();
    assert_eq!(carrying.iter().sum::<usize>(), EVENTS, "{calls:?}");
    // The second call left with the completions there were when it began (at least one);
    // every other one waited for it and went in the third.
    assert!(carrying.len() <= 2, "{calls:?}");
    assert_eq!(store.completes.load(Ordering::SeqCst), 0);
    assert_eq!(store.claims.load(Ordering::SeqCst), 0);
    assert_eq!(runs.try_recv().ok(), None, "an event ran twice");
}

#[tokio::test]
async fn shutdown_releases_prefetched_events_without_running_them() {
    let dir = scratch("prefetch-shutdown");
    let sqlite = open(&dir);
    for n in 0..3 {
        stored(&sqlite, &format!("evt_prefetched_{n}")).await;
    }
    let (ran, mut runs) = mpsc::unbounded_channel();
    let handler = Router::new().route(
        "/webhooks",
        post(move || {
            let _ = ran.send(());
            std::future::pending::<StatusCode>()
        }),
    );
    let workers = Workers::new(Arc::clone(&sqlite), handler)
        .concurrency(1)
        .prefetch(2)
        .shutdown_grace(Duration::from_millis(100));
    let (stop, running) = run(workers);
    runs.recv().await.unwrap();
    // All three are claimed, one running and two waiting for its slot.
    let mut waited = 0;
    while stats(&*sqlite).await.in_flight < 3 {
        assert!(waited < 3000, "the prefetch was never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(
        runs.try_recv().ok(),
        None,
        "a prefetched event started after shutdown"
    );
    let after = stats(&*sqlite).await;
    assert_eq!((after.waiting, after.in_flight), (3, 0), "{after:?}");
    // Each attempt was handed back uncounted.
    let claimed = sqlite.claim(8, Duration::from_secs(30), 8).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(
        claimed.iter().all(|claim| claim.attempt() == 1),
        "{claimed:?}"
    );
}

/// Counts the handler runs going on at once: one more while a run's future lives.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_run_whose_lease_cannot_be_renewed_stops_before_it_can_run_again() {
    let dir = scratch("unrenewed");
    let sqlite = open(&dir);
    stored(&sqlite, "evt_unrenewed").await;
    let store = Arc::new(Counting::new(Arc::clone(&sqlite), false, true));
    let at_once = Arc::new(AtomicUsize::new(0));
    let (ran, mut runs) = mpsc::unbounded_channel();
    let handler = {
        let at_once = Arc::clone(&at_once);
        Router::new().route(
            "/webhooks",
            post(move || {
                let guard = Running(Arc::clone(&at_once));
                let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = ran.send(now);
                async move {
                    let _guard = guard;
                    std::future::pending::<StatusCode>().await
                }
            }),
        )
    };
    // The shortest lease (1 s); the store cannot renew it, so it ends while the handler
    // still runs, and the event becomes due again.
    let workers = Workers::new(Arc::clone(&store), handler).lease(Duration::from_secs(1));
    let (stop, running) = run(workers);
    assert_eq!(runs.recv().await.unwrap(), 1);
    let second = tokio::time::timeout(Duration::from_secs(60), runs.recv())
        .await
        .expect("the event ran again once its lease ended")
        .unwrap();
    assert_eq!(
        second, 1,
        "the first run was still going when the second began"
    );
    stop.send(true).unwrap();
    running.await.unwrap();
}

/// The SQLite store, slow as a store whose commit waits for a flush: each
/// `complete_and_claim` first waits until every event claimed so far ran or was released
/// (at most 2 s), then a little more, so that every run ended when the call returns.
struct Paced {
    inner: Arc<SqliteStore>,
    handled: Arc<AtomicUsize>,
    claimed: AtomicUsize,
    released: AtomicUsize,
    /// What each call asked for.
    limits: Mutex<Vec<usize>>,
}

impl Paced {
    fn new(inner: Arc<SqliteStore>, handled: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            handled,
            claimed: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            limits: Mutex::new(Vec::new()),
        }
    }
}

impl Backend for Paced {
    async fn insert(
        &self,
        key: [u8; 32],
        delivery: Delivery,
        limit: u64,
    ) -> Result<Inserted, QueueError> {
        self.inner.insert(key, delivery, limit).await
    }
    async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        max: u32,
    ) -> Result<Vec<Claimed>, QueueError> {
        self.inner.claim(limit, lease, max).await
    }
    async fn complete_and_claim(
        &self,
        completed: Vec<Lease>,
        limit: usize,
        lease: Duration,
        max: u32,
    ) -> Result<Settled, QueueError> {
        for _ in 0..200 {
            let done = self.handled.load(Ordering::SeqCst) + self.released.load(Ordering::SeqCst);
            if done >= self.claimed.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.limits.lock().unwrap().push(limit);
        let settled = self
            .inner
            .complete_and_claim(completed, limit, lease, max)
            .await?;
        self.claimed.fetch_add(settled.1.len(), Ordering::SeqCst);
        Ok(settled)
    }
    async fn renew(&self, lease: Lease, lease_for: Duration) -> Result<bool, QueueError> {
        self.inner.renew(lease, lease_for).await
    }
    async fn complete(&self, lease: Lease) -> Result<bool, QueueError> {
        self.inner.complete(lease).await
    }
    async fn fail(
        &self,
        lease: Lease,
        retry: Option<Duration>,
        error: String,
    ) -> Result<bool, QueueError> {
        self.inner.fail(lease, retry, error).await
    }
    async fn release(&self, lease: Lease) -> Result<bool, QueueError> {
        self.released.fetch_add(1, Ordering::SeqCst);
        self.inner.release(lease).await
    }
    async fn queue_stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }
    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(limit).await
    }
    async fn requeue_dead_letter(&self, key: [u8; 32]) -> Result<bool, QueueError> {
        self.inner.retry_dead_letter(key).await
    }
    async fn settle_dead_letter(&self, key: [u8; 32]) -> Result<bool, QueueError> {
        self.inner.discard_dead_letter(key).await
    }
    async fn purge(&self, retention: Duration) -> Result<u64, QueueError> {
        self.inner.purge(retention).await
    }
}

// Several threads, so that runs end while the loop waits for the store, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_claiming_while_every_call_still_fills_the_slots() {
    const EVENTS: usize = 400;
    let dir = scratch("busy-shutdown");
    let sqlite = open(&dir);
    for n in 0..EVENTS {
        stored(&sqlite, &format!("evt_busy_{n}")).await;
    }
    let handled = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(Paced::new(Arc::clone(&sqlite), Arc::clone(&handled)));
    let (ran, mut runs) = mpsc::unbounded_channel();
    let handler = Router::new().route(
        "/webhooks",
        post(move || {
            handled.fetch_add(1, Ordering::SeqCst);
            let _ = ran.send(());
            async { StatusCode::OK }
        }),
    );
    let (stop, running) = run(Workers::new(store, handler).concurrency(8));
    // Shutdown once 40 events ran. Every run ends while the store commits, so each call
    // finds slots free again and claims as many as it may: work never runs out.
    for _ in 0..40 {
        runs.recv().await.unwrap();
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    let mut ran = 40;
    while runs.try_recv().is_ok() {
        ran += 1;
    }
    // The call under way and the runs it feeds may finish, each at most the 8 slots and
    // the largest prefetch (64); nothing is claimed after.
    assert!(
        ran <= 40 + 2 * 72,
        "{ran} of {EVENTS} events ran though shutdown began after 40"
    );
    let after = stats(&*sqlite).await;
    assert_eq!(after.in_flight, 0, "{after:?}");
    assert_eq!(after.waiting as usize, EVENTS - ran, "{after:?}");
}

/// Instant handlers and a store that answers each call only once every event claimed so
/// far ran (a commit slower than the handlers, as PostgreSQL's flush is): every call finds
/// its slots idle, so the prefetch doubles while the backlog fills the claims, up to 8 ×
/// the concurrency, and halves back once the backlog is drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_grows_while_slots_idle_on_a_backlog_and_shrinks_once_drained() {
    const EVENTS: usize = 300;
    let dir = scratch("prefetch-grows");
    let sqlite = open(&dir);
    for n in 0..EVENTS {
        stored(&sqlite, &format!("evt_grow_{n}")).await;
    }
    let handled = Arc::new(AtomicUsize::new(0));
    let store = Arc::new(Paced::new(Arc::clone(&sqlite), Arc::clone(&handled)));
    let (ran, mut runs) = mpsc::unbounded_channel();
    let handler = Router::new().route(
        "/webhooks",
        post(move || {
            handled.fetch_add(1, Ordering::SeqCst);
            let _ = ran.send(());
            async { StatusCode::OK }
        }),
    );
    let (stop, running) = run(Workers::new(Arc::clone(&store), handler).concurrency(8));
    for _ in 0..EVENTS {
        runs.recv().await.unwrap();
    }
    // The drained store answers short claims: the prefetch halves back to 8 (72 → 40 →
    // 24 → 16 asked).
    let mut waited = 0;
    while store.limits.lock().unwrap().last() != Some(&16) {
        assert!(waited < 3000, "{:?}", store.limits.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    let limits = store.limits.lock().unwrap().clone();
    // 8 slots and 8 prefetched at first; more once slots idled on a backlog (how many a
    // call asks for depends on the runs that ended before it began), never more than 8
    // slots and 64 prefetched.
    assert_eq!(limits[0], 16, "{limits:?}");
    let most = *limits.iter().max().unwrap();
    assert!(most > 16 && most <= 72, "{limits:?}");
    assert_eq!(runs.try_recv().ok(), None, "an event ran twice");
    assert_eq!(stats(&*sqlite).await.depth(), 0);
}

/// Handlers slower than the store: the prefetched events wait for slots, no slot idles,
/// and the prefetch stays at the concurrency however long the backlog.
#[tokio::test]
async fn slow_handlers_keep_the_prefetch_at_the_concurrency() {
    const EVENTS: usize = 40;
    let dir = scratch("prefetch-slow");
    let sqlite = open(&dir);
    for n in 0..EVENTS {
        stored(&sqlite, &format!("evt_slow_{n}")).await;
    }
    let store = Arc::new(Counting::new(Arc::clone(&sqlite), false, false));
    let finish = Arc::new(Semaphore::new(0));
    let (ran, mut runs) = mpsc::unbounded_channel();
    let handler = {
        let finish = Arc::clone(&finish);
        Router::new().route(
            "/webhooks",
            post(move || {
                let _ = ran.send(());
                let finish = Arc::clone(&finish);
                async move {
                    finish.acquire().await.unwrap().forget();
                    StatusCode::OK
                }
            }),
        )
    };
    let workers = Workers::new(Arc::clone(&store), handler)
        .concurrency(2)
        .shutdown_grace(Duration::from_millis(100));
    let (stop, running) = run(workers);
    // One handler at a time finishes, once the call that followed the previous one
    // returned; each start after the first two is a prefetched event taking the freed slot.
    runs.recv().await.unwrap();
    runs.recv().await.unwrap();
    for finished in 1..=20 {
        finish.add_permits(1);
        runs.recv().await.unwrap();
        let mut waited = 0;
        while store.calls().len() < 1 + finished {
            assert!(waited < 3000, "{:?}", store.calls());
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    let calls = store.calls();
    assert_eq!(calls[0].limit, 4, "{calls:?}");
    assert!(calls.iter().all(|call| call.limit <= 4), "{calls:?}");
}

#[tokio::test]
async fn a_claim_that_fails_half_way_leases_nothing() {
    let dir = scratch("claim-half-way");
    let store = open(&dir);
    for n in 0..3 {
        assert!(stored(&store, &format!("evt_half_{n}")).await);
    }
    // The second event's lease fails: its statement is aborted, and SQLite keeps the
    // transaction open (it rolls back that statement only).
    let side = rusqlite::Connection::open(dir.join("events.db")).unwrap();
    side.execute_batch(
        "CREATE TRIGGER fail_second BEFORE UPDATE OF leased ON openmail_events
         WHEN NEW.leased = 1 AND OLD.id = 2
         BEGIN SELECT RAISE(ABORT, 'refused for the test'); END;",
    )
    .unwrap();
    let lease = Duration::from_secs(3600);
    assert!(store.claim(10, lease, 8).await.is_err());
    side.execute_batch("DROP TRIGGER fail_second").unwrap();
    drop(side);
    // The first event's lease went with the failure: every event is claimed now, each at
    // its first attempt.
    let claimed = store.claim(10, lease, 8).await.unwrap();
    let attempts: Vec<u32> = claimed.iter().map(Claimed::attempt).collect();
    assert_eq!(attempts, [1, 1, 1]);
    assert_eq!(stats(store.as_ref()).await.in_flight, 3);
}
