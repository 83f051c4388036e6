//! Body and lookup deadlines that need no async runtime.
//!
//! A request registers a wake-up only while it waits (its body or its secret lookup
//! returned `Pending`), with one shared timer thread that the first such wait starts. A
//! request whose data is there when it is polled never touches the timer. Registrations
//! are removed when the request ends, so the timer holds exactly one entry per waiting
//! request, whatever the traffic.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// How long a body may take, as configured on the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pace {
    /// The longest a whole body (and, with a resolver, its secret lookup) may take.
    pub(crate) deadline: Duration,
    /// The slowest a body may arrive once `grace` is over, in bytes per second; 0 for no
    /// minimum.
    pub(crate) min_rate: u32,
    /// How long a body may take before the minimum rate applies.
    pub(crate) grace: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
            min_rate: 64 * 1024,
            grace: Duration::from_secs(2),
        }
    }
}

impl Pace {
    /// When a body that started at `start` and has delivered `received` bytes must be
    /// done: `grace` plus one second per `min_rate` bytes received, never past the
    /// deadline. `None` when that is too far to represent (no deadline).
    fn due(&self, start: Instant, received: usize) -> Option<Instant> {
        let cap = start.checked_add(self.deadline);
        if self.min_rate == 0 {
            return cap;
        }
        let earned = Duration::from_secs_f64(received as f64 / f64::from(self.min_rate));
        let paced = self
            .grace
            .checked_add(earned)
            .and_then(|allowed| start.checked_add(allowed));
        match (paced, cap) {
            (Some(paced), Some(cap)) => Some(paced.min(cap)),
            (paced, cap) => paced.or(cap),
        }
    }
}

/// One request's deadline.
pub(crate) struct Deadline {
    pace: Pace,
    start: Instant,
    due: Option<Instant>,
    registration: Option<Registration>,
}

impl Deadline {
    pub(crate) fn start(pace: Pace) -> Self {
        let start = Instant::now();
        Self {
            pace,
            start,
            due: pace.due(start, 0),
            registration: None,
        }
    }

    /// The body has delivered `received` bytes in all: the deadline moves out with them.
    pub(crate) fn received(&mut self, received: usize) {
        self.due = self.pace.due(self.start, received);
    }

    /// The body is complete. What follows (the secret lookup) gets a deadline of its own,
    /// as long as the body's, counted from now: a body that arrived slowly but in time
    /// must not leave its lookup no time, and turn into a `503` of its own making.
    pub(crate) fn body_done(&mut self) {
        self.due = Instant::now().checked_add(self.pace.deadline);
    }

    /// The configured overall deadline, for messages.
    pub(crate) fn limit(&self) -> Duration {
        self.pace.deadline
    }

    /// Whether the deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        self.due.is_some_and(|due| Instant::now() >= due)
    }

    /// Called when the request is about to wait: `true` if the deadline has passed;
    /// otherwise arranges for the task to be woken when it does.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(due) = self.due else {
            return false;
        };
        if Instant::now() >= due {
            return true;
        }
        let current = self
            .registration
            .as_ref()
            .is_some_and(|registration| registration.covers(due, cx.waker()));
        if !current {
            // Dropping the old registration removes it before the new one is added.
            self.registration = None;
            self.registration = Registration::new(due, cx.waker().clone());
        }
        false
    }
}

/// One wake-up in the timer, removed when dropped.
struct Registration {
    key: (Instant, u64),
    waker: Waker,
}

impl Registration {
    fn new(due: Instant, waker: Waker) -> Option<Self> {
        let timer = Timer::get()?;
        let mut state = timer.lock();
        let id = state.next_id;
        state.next_id = id.wrapping_add(1);
        let earliest = state.entries.first_key_value().map(|(key, _)| key.0);
        state.entries.insert((due, id), waker.clone());
        drop(state);
        if earliest.is_none_or(|earliest| due < earliest) {
            timer.changed.notify_one();
        }
        Some(Self {
            key: (due, id),
            waker,
        })
    }

    /// Whether this registration wakes `waker` no later than `due`. A deadline only moves
    /// out, so an earlier wake-up is kept: when it fires, the request registers again.
    fn covers(&self, due: Instant, waker: &Waker) -> bool {
        self.key.0 <= due && self.waker.will_wake(waker)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(timer) = Timer::get() {
            timer.lock().entries.remove(&self.key);
        }
    }
}

/// The shared timer: the waiting requests' wake-ups, in deadline order, and the thread
/// that fires them.
struct Timer {
    state: Mutex<TimerState>,
    changed: Condvar,
}

struct TimerState {
    entries: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
}

static TIMER: Timer = Timer {
    state: Mutex::new(TimerState {
        entries: BTreeMap::new(),
        next_id: 0,
    }),
    changed: Condvar::new(),
};

/// Whether the timer's thread is running; started on first use.
static STARTED: OnceLock<bool> = OnceLock::new();

impl Timer {
    /// The timer, its thread started on first use. `None` if the thread could not be
    /// started; then deadlines are still checked whenever a request is polled, but a
    /// request that is never woken otherwise is not cut off.
    fn get() -> Option<&'static Timer> {
        let running = *STARTED.get_or_init(|| {
            std::thread::Builder::new()
                .name("openmail-webhooks-deadlines".into())
                .spawn(|| TIMER.run())
                .is_ok()
        });
        running.then_some(&TIMER)
    }

    fn lock(&self) -> MutexGuard<'_, TimerState> {
        // The map stays consistent between single inserts and removals.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = state.entries.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            if !due.is_empty() {
                drop(state);
                for waker in due {
                    waker.wake();
                }
                state = self.lock();
                continue;
            }
            state = match state.entries.first_key_value().map(|(key, _)| key.0) {
                None => self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(next) => {
                    let wait = next.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(state, wait)
                        .map(|(state, _)| state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0)
                }
            };
        }
    }
}

#[cfg(test)]
fn registered(waker: &Waker) -> usize {
    Timer::get().map_or(0, |timer| {
        timer
            .lock()
            .entries
            .values()
            .filter(|registered| registered.will_wake(waker))
            .count()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;

    fn pace(deadline_ms: u64, min_rate: u32, grace_ms: u64) -> Pace {
        Pace {
            deadline: Duration::from_millis(deadline_ms),
            min_rate,
            grace: Duration::from_millis(grace_ms),
        }
    }

    #[test]
    fn the_allowance_grows_with_the_bytes_and_stops_at_the_deadline() {
        let start = Instant::now();
        let pace = pace(10_000, 1024, 2_000);
        let at = |received| pace.due(start, received).unwrap().duration_since(start);
        assert_eq!(at(0), Duration::from_secs(2));
        assert_eq!(at(4 * 1024), Duration::from_secs(6));
        assert_eq!(at(1024 * 1024), Duration::from_secs(10));
        let no_rate = Pace {
            min_rate: 0,
            ..pace
        };
        assert_eq!(
            no_rate.due(start, 0).unwrap().duration_since(start),
            Duration::from_secs(10)
        );
        let endless = pace_max();
        assert!(endless.due(start, usize::MAX).is_none());
    }

    fn pace_max() -> Pace {
        Pace {
            deadline: Duration::MAX,
            min_rate: 0,
            grace: Duration::MAX,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_request_is_woken_when_its_deadline_passes_without_a_runtime_timer() {
        let mut deadline = Deadline::start(pace(50, 0, 0));
        let started = Instant::now();
        poll_fn(|cx| {
            if deadline.poll_expired(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(deadline);
    }

    struct Marker;

    impl std::task::Wake for Marker {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    #[test]
    fn registrations_go_away_with_their_request() {
        let waker = Waker::from(std::sync::Arc::new(Marker));
        let mut cx = Context::from_waker(&waker);
        let mut deadlines: Vec<_> = (0..100)
            .map(|_| Deadline::start(pace(60_000, 0, 0)))
            .collect();
        for deadline in &mut deadlines {
            assert!(!deadline.poll_expired(&mut cx));
            // Polled again with the same waker: no second entry.
            assert!(!deadline.poll_expired(&mut cx));
        }
        assert_eq!(registered(&waker), 100);
        deadlines.truncate(40);
        assert_eq!(registered(&waker), 40);
        drop(deadlines);
        assert_eq!(registered(&waker), 0);
    }
}
