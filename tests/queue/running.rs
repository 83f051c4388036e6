//! A handler's run under the workers: a run that ends as its time or the workers' grace
//! runs out, a lease renewed while a long run goes on, a copy that arrives meanwhile, and
//! the backoff between attempts. Durations here are lower bounds or limits on waiting,
//! never a comparison of two timings.

use std::sync::Mutex;

use super::*;

/// A handler that reports each run as it starts (numbered from 1), then blocks its thread
/// for `busy` (as a handler doing blocking work does) and answers what `status` says for
/// that run: the workers cannot cancel it while it blocks, so it ends after whatever
/// stopped it. Runs are counted rather than attempts: on a busy machine an attempt may be
/// cancelled before its handler was first polled, which starts no run.
fn blocking(
    seen: mpsc::UnboundedSender<u32>,
    busy: Duration,
    status: fn(u32) -> StatusCode,
) -> Router {
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    Router::new().route(
        "/webhooks",
        post(move || {
            let run = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let _ = seen.send(run);
            std::thread::sleep(busy);
            std::future::ready(status(run))
        }),
    )
}

/// A handler that reports each run (its event id and attempt), then waits until `finish`
/// is raised and answers `200`: a run that goes on as long as the test wants.
fn held_until(seen: mpsc::UnboundedSender<(String, u32)>, finish: watch::Receiver<bool>) -> Router {
    Router::new().route(
        "/webhooks",
        post(
            move |Extension(event): Extension<Arc<Event>>,
                  Extension(attempt): Extension<WorkerAttempt>| {
                let seen = seen.clone();
                let mut finish = finish.clone();
                async move {
                    let id = event.event_id().unwrap_or_default().to_owned();
                    let _ = seen.send((id, attempt.number()));
                    let _ = finish.wait_for(|done| *done).await;
                    StatusCode::OK
                }
            },
        ),
    )
}

async fn until_completed(store: &SqliteStore) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = stats(store).await;
        if now.depth() == 0 && now.in_flight == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "never completed: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_answers_as_its_time_runs_out_is_not_run_again() {
    let dir = scratch("late-answer");
    let store = open(&dir);
    stored(&store, "evt_late").await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let workers = Workers::new(
        Arc::clone(&store),
        blocking(seen, Duration::from_millis(1500), |_| StatusCode::OK),
    )
    .attempt_timeout(Duration::from_millis(500))
    .backoff(Duration::from_millis(10));
    let (stop, running) = start(workers);
    assert_eq!(runs.recv().await, Some(1));
    until_completed(&store).await;
    // A retry would have come 10 ms after the failure was recorded.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(runs.try_recv().is_err(), "run again after it answered 200");
    stop.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(stats(&*store).await.dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_answers_as_the_grace_runs_out_is_completed_not_handed_back() {
    let dir = scratch("late-at-shutdown");
    let store = open(&dir);
    stored(&store, "evt_late_shutdown").await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let workers = Workers::new(
        Arc::clone(&store),
        blocking(seen, Duration::from_millis(1500), |_| StatusCode::OK),
    )
    .shutdown_grace(Duration::from_millis(100));
    let (stop, running) = start(workers);
    assert_eq!(runs.recv().await, Some(1));
    stop.send(true).unwrap();
    running.await.unwrap();
    let after = stats(&*store).await;
    assert_eq!(
        (after.waiting, after.in_flight),
        (0, 0),
        "handed back after it answered 200: {after:?}"
    );
    // Nothing is left to run.
    assert!(
        store
            .claim(8, Duration::from_secs(30), 8)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_fails_as_its_time_runs_out_is_retried() {
    let dir = scratch("late-failure");
    let store = open(&dir);
    stored(&store, "evt_late_failure").await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let workers = Workers::new(
        Arc::clone(&store),
        blocking(seen, Duration::from_millis(1000), |run| {
            if run == 1 {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }),
    )
    .attempt_timeout(Duration::from_millis(500))
    .backoff(Duration::from_millis(10));
    let (stop, running) = start(workers);
    assert_eq!(runs.recv().await, Some(1));
    assert_eq!(runs.recv().await, Some(2));
    until_completed(&store).await;
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn the_lease_is_renewed_while_a_run_outlasts_it() {
    let dir = scratch("renewed");
    let store = open(&dir);
    stored(&store, "evt_long").await;
    // Renewed every third of it: a renewal may come up to 1.3 s late on a busy machine
    // before the lease ends.
    let lease = Duration::from_secs(2);
    let (seen, mut runs) = mpsc::unbounded_channel();
    let (finish, finished) = watch::channel(false);
    let app = held_until(seen, finished);
    let (stop, running) = start(Workers::new(Arc::clone(&store), app).lease(lease));
    assert_eq!(runs.recv().await, Some(("evt_long".to_owned(), 1)));
    // Two and a half leases long, another holder asks for it: renewed every third of the
    // lease, it is never free to take.
    let until = Instant::now() + lease * 5 / 2;
    while Instant::now() < until {
        let taken = store.claim(8, lease, 8).await.unwrap();
        assert!(taken.is_empty(), "taken while its run went on");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    finish.send(true).unwrap();
    until_completed(&store).await;
    assert!(runs.try_recv().is_err(), "run twice");
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn a_copy_that_arrives_while_its_handler_runs_gets_200_and_is_not_run_again() {
    let dir = scratch("copy-while-running");
    let store = open(&dir);
    let addr = serve(Ingest::new(Arc::clone(&store))).await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let (finish, finished) = watch::channel(false);
    let (stop, running) = start(Workers::new(Arc::clone(&store), held_until(seen, finished)));
    let body = event("evt_running");
    let (status, _, answer) = deliver(addr, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(runs.recv().await, Some(("evt_running".to_owned(), 1)));
    // Signed again, as OpenMail's retry is, while the handler still runs.
    let (status, _, answer) = deliver(addr, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["duplicate"], true);
    assert_eq!(stats(&*store).await.in_flight, 1);
    finish.send(true).unwrap();
    until_completed(&store).await;
    // And once it completed, a copy is still answered and not run.
    let (status, _, _) = deliver(addr, &body).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(runs.try_recv().is_err(), "run twice without a crash");
    stop.send(true).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn attempts_back_off_doubling_from_the_first_delay() {
    let dir = scratch("backoff");
    let store = open(&dir);
    stored(&store, "evt_backoff").await;
    let first = Duration::from_millis(150);
    let starts = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new().route(
        "/webhooks",
        post({
            let starts = Arc::clone(&starts);
            move |Extension(attempt): Extension<WorkerAttempt>| {
                let starts = Arc::clone(&starts);
                async move {
                    starts.lock().unwrap().push(Instant::now());
                    if attempt.number() < 3 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }
        }),
    );
    let counting = Arc::new(super::grouping::Counting::new(
        Arc::clone(&store),
        false,
        false,
    ));
    let (stop, running) =
        super::grouping::run(Workers::new(Arc::clone(&counting), app).backoff(first));
    until_completed(&store).await;
    stop.send(true).unwrap();
    running.await.unwrap();
    // What the workers asked of the store, exactly: the first delay, then twice it.
    assert_eq!(counting.retries(), [Some(first), Some(first * 2)]);
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 3, "two failures, then the success");
    // And the store kept them. Lower bounds only: a slow machine makes the gaps longer,
    // never shorter. (Less a millisecond or two: the store keeps due times in whole
    // milliseconds of its clock.)
    let slack = Duration::from_millis(2);
    assert!(
        starts[1] - starts[0] >= first - slack,
        "{:?}",
        starts[1] - starts[0]
    );
    assert!(
        starts[2] - starts[1] >= first * 2 - slack,
        "the second delay doubles: {:?}",
        starts[2] - starts[1]
    );
}

#[tokio::test]
async fn a_failed_attempt_is_not_due_before_its_retry_time() {
    let dir = scratch("retry-due");
    let store = open(&dir);
    stored(&store, "evt_not_yet").await;
    let lease = Duration::from_secs(30);
    let claimed = store.claim(8, lease, 8).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let retry_in = Duration::from_millis(400);
    let asked = Instant::now();
    assert!(
        store
            .fail(claimed[0].lease(), Some(retry_in), "failed".to_owned())
            .await
            .unwrap()
    );
    // Claimed as soon as it is due, and not before.
    let again = loop {
        let again = store.claim(8, lease, 8).await.unwrap();
        if !again.is_empty() {
            break again;
        }
        assert!(asked.elapsed() < Duration::from_secs(20), "never due again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Less the store's rounding to whole milliseconds.
    assert!(
        asked.elapsed() >= retry_in - Duration::from_millis(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(again[0].attempt(), 2);
}

#[tokio::test]
async fn the_workers_log_the_queues_stats_at_start_and_then_at_their_interval() {
    let dir = scratch("stats-logged");
    let store = open(&dir);
    stored(&store, "evt_logged").await;
    let captured = crate::logs::capture(tracing_subscriber::filter::LevelFilter::INFO);
    let (finish, finished) = watch::channel(false);
    let (seen, _runs) = mpsc::unbounded_channel();
    let workers = Workers::new(Arc::clone(&store), held_until(seen, finished))
        .stats_every(Duration::from_millis(100));
    let (stop, running) = start(workers);
    let lines = |text: String| {
        text.lines()
            .filter(|line| line.contains("queue: stats"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    // One at start (the event may not be claimed yet), then one while it runs.
    while !lines(captured.text())
        .iter()
        .any(|line| line.contains("in_flight=1"))
    {
        assert!(Instant::now() < deadline, "{}", captured.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = lines(captured.text())
        .into_iter()
        .find(|line| line.contains("in_flight=1"))
        .unwrap();
    for field in ["waiting=0", "dead_letters=0", "oldest_age_ms="] {
        assert!(line.contains(field), "{field} in {line}");
    }
    finish.send(true).unwrap();
    stop.send(true).unwrap();
    running.await.unwrap();
    // None after the workers stopped.
    let logged = lines(captured.text()).len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(captured.text()).len(), logged);
}

#[tokio::test]
async fn stats_every_zero_logs_no_stats() {
    let dir = scratch("stats-off");
    let store = open(&dir);
    let captured = crate::logs::capture(tracing_subscriber::filter::LevelFilter::INFO);
    let app = Router::new().route("/webhooks", post(|| async { StatusCode::OK }));
    let workers = Workers::new(Arc::clone(&store), app).stats_every(Duration::ZERO);
    let (stop, running) = start(workers);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    running.await.unwrap();
    assert!(
        !captured.text().contains("queue: stats"),
        "{}",
        captured.text()
    );
}

#[tokio::test]
async fn the_store_opens_again_at_once_after_the_workers_returned() {
    let dir = scratch("reopen-after-run");
    let store = open(&dir);
    stored(&store, "evt_before_reopen").await;
    let (seen, mut runs) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/webhooks",
        post(move || {
            let seen = seen.clone();
            async move {
                let _ = seen.send(());
                StatusCode::OK
            }
        }),
    );
    // Awaited here, as an application's `main` does; stats logged often, so that a report
    // is under way when the workers stop.
    Workers::new(Arc::clone(&store), app)
        .stats_every(Duration::from_millis(1))
        .run(async move {
            let _ = runs.recv().await;
        })
        .await;
    drop(store);
    // No retry: nothing the workers started still holds the store.
    let again = SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash);
    assert!(again.is_ok(), "{:?}", again.err());
}
