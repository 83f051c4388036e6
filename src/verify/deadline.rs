//! Body and lookup deadlines that need no async runtime.
//!
//! A request registers a wake-up only while it waits (its body or its secret lookup
//! returned `Pending`), with one shared timer thread that the first such wait starts. A
//! request whose data is there when it is polled never touches the timer.
//!
//! While a request waits, the timer holds exactly one wake-up for it, at its current due
//! time and for its current waker: each wait checks, under the timer's lock, that its entry
//! is still there (it is gone once it fired), and moves it when the due time has moved (bytes
//! arrived, or the body ended and the lookup began). So a wake-up that fired is never
//! mistaken for one still to come, and a request is woken by its deadline whatever the
//! order of its polls, its wake-ups and its moves. The entry is removed when the request
//! ends, so the timer holds at most one entry per waiting request, whatever the traffic.
//!
//! The timer's state ([`Wakeups`]) and its loop are generic over the clock, so that the
//! model check at the end of this file runs the same code on a clock of its own.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::PoisonError;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

#[cfg(all(test, openmail_loom))]
use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(all(test, openmail_loom)))]
use std::sync::{Condvar, Mutex, MutexGuard};

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
    /// This request's entry in the timer, while it has one.
    wakeup: Option<Key<Instant>>,
}

impl Deadline {
    pub(crate) fn start(pace: Pace) -> Self {
        let start = Instant::now();
        Self {
            pace,
            start,
            due: pace.due(start, 0),
            wakeup: None,
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
        let now = Instant::now();
        match Timer::get() {
            Some(timer) => timer.poll_due(&mut self.wakeup, due, now, cx.waker()),
            None => now >= due,
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if self.wakeup.is_some() {
            if let Some(timer) = Timer::get() {
                timer.disarm(&mut self.wakeup);
            }
        }
    }
}

/// A wake-up's place in the timer: its due time, then a number that tells apart two
/// wake-ups due at the same time.
type Key<T> = (T, u64);

/// The wake-ups of the requests that wait, in the order they are due.
struct Wakeups<T> {
    entries: BTreeMap<Key<T>, Waker>,
    next_id: u64,
}

impl<T: Ord + Copy> Wakeups<T> {
    const fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// Makes sure that `waker` is woken at `due`, and that `slot` names the one entry that
    /// will do it. An entry that is still there and due then only takes the new waker; one
    /// that fired, or is due at another time, is replaced. Returns whether the earliest
    /// wake-up moved earlier, which the timer's thread has to be told.
    fn arm(&mut self, slot: &mut Option<Key<T>>, due: T, waker: &Waker) -> bool {
        // Before a moved entry goes: a timer waiting for it wakes, finds nothing due, and
        // looks again, so only an entry earlier than everything it knows is news to it.
        let earliest = self.next_due();
        if let Some(key) = slot.take() {
            match self.entries.get_mut(&key) {
                Some(armed) if key.0 == due => {
                    if !armed.will_wake(waker) {
                        armed.clone_from(waker);
                    }
                    *slot = Some(key);
                    return false;
                }
                // Due at another time: it goes, whether the deadline moved out or in.
                Some(_) => {
                    self.entries.remove(&key);
                }
                // Fired: its wake-up is spent, and the request waits again.
                None => {}
            }
        }
        let key = (due, self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        self.entries.insert(key, waker.clone());
        *slot = Some(key);
        earliest.is_none_or(|earliest| due < earliest)
    }

    /// Removes the entry `slot` names, if it has not fired.
    fn disarm(&mut self, slot: &mut Option<Key<T>>) {
        if let Some(key) = slot.take() {
            self.entries.remove(&key);
        }
    }

    /// When the next wake-up is due.
    fn next_due(&self) -> Option<T> {
        self.entries.first_key_value().map(|(key, _)| key.0)
    }

    /// Takes out the wakers due at `now`.
    fn take_due(&mut self, now: T) -> Vec<Waker> {
        let mut due = Vec::new();
        while let Some(entry) = self.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    }
}

/// The shared timer: the waiting requests' wake-ups, and the condition its thread waits on
/// for an earlier one.
struct Timer<T> {
    state: Mutex<Wakeups<T>>,
    changed: Condvar,
}

/// Where the timer's thread gets the time, and how it waits for it to pass.
trait Clock {
    type Instant: Ord + Copy;

    fn now(&self) -> Self::Instant;

    /// Waits until `until` has passed or `changed` is notified, whichever comes first; with
    /// no `until`, until `changed` is notified. `None` when the timer is to stop.
    fn wait<'a>(
        &self,
        changed: &Condvar,
        state: MutexGuard<'a, Wakeups<Self::Instant>>,
        until: Option<Self::Instant>,
    ) -> Option<MutexGuard<'a, Wakeups<Self::Instant>>>;
}

impl<T: Ord + Copy> Timer<T> {
    fn lock(&self) -> MutexGuard<'_, Wakeups<T>> {
        // The map stays consistent between single inserts and removals.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `due` has passed at `now`; if not, arranges for `waker` to be woken when it
    /// does, through the entry `slot` names.
    fn poll_due(&self, slot: &mut Option<Key<T>>, due: T, now: T, waker: &Waker) -> bool {
        if now >= due {
            return true;
        }
        let earlier = self.lock().arm(slot, due, waker);
        if earlier {
            self.changed.notify_one();
        }
        false
    }

    fn disarm(&self, slot: &mut Option<Key<T>>) {
        self.lock().disarm(slot);
    }

    /// The timer's thread: wakes every entry once it is due, outside the lock.
    fn run<C: Clock<Instant = T>>(&self, clock: &C) {
        let mut state = self.lock();
        loop {
            let due = state.take_due(clock.now());
            if !due.is_empty() {
                drop(state);
                for waker in due {
                    // A waker is the executor's code: one that panics must not end this
                    // thread, and with it every other request's deadline.
                    let _ = panic::catch_unwind(AssertUnwindSafe(|| waker.wake()));
                }
                state = self.lock();
                continue;
            }
            let next = state.next_due();
            state = match clock.wait(&self.changed, state, next) {
                Some(state) => state,
                None => return,
            };
        }
    }
}

/// The system's monotonic clock.
#[cfg(not(all(test, openmail_loom)))]
struct SystemClock;

#[cfg(not(all(test, openmail_loom)))]
impl Clock for SystemClock {
    type Instant = Instant;

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wait<'a>(
        &self,
        changed: &Condvar,
        state: MutexGuard<'a, Wakeups<Instant>>,
        until: Option<Instant>,
    ) -> Option<MutexGuard<'a, Wakeups<Instant>>> {
        Some(match until {
            None => changed.wait(state).unwrap_or_else(PoisonError::into_inner),
            Some(until) => {
                let wait = until.saturating_duration_since(Instant::now());
                changed
                    .wait_timeout(state, wait)
                    .map(|(state, _)| state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner().0)
            }
        })
    }
}

#[cfg(not(all(test, openmail_loom)))]
static TIMER: Timer<Instant> = Timer {
    state: Mutex::new(Wakeups::new()),
    changed: Condvar::new(),
};

/// Whether the timer's thread is running; started on first use.
#[cfg(not(all(test, openmail_loom)))]
static STARTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

impl Timer<Instant> {
    /// The timer, its thread started on first use. `None` if the thread could not be
    /// started; then deadlines are still checked whenever a request is polled, but a
    /// request that is never woken otherwise is not cut off.
    #[cfg(not(all(test, openmail_loom)))]
    fn get() -> Option<&'static Self> {
        let running = *STARTED.get_or_init(|| {
            std::thread::Builder::new()
                .name("openmail-webhooks-deadlines".into())
                .spawn(|| TIMER.run(&SystemClock))
                .is_ok()
        });
        running.then_some(&TIMER)
    }

    /// Under the model check, only the model's own timers run.
    #[cfg(all(test, openmail_loom))]
    fn get() -> Option<&'static Self> {
        None
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

    /// A waker that counts its wake-ups and reports each one on a channel.
    struct Reporting(std::sync::Mutex<std::sync::mpsc::Sender<()>>);

    impl std::task::Wake for Reporting {
        fn wake(self: std::sync::Arc<Self>) {
            let _ = self.0.lock().unwrap().send(());
        }
    }

    fn reporting() -> (Waker, std::sync::mpsc::Receiver<()>) {
        let (sender, receiver) = std::sync::mpsc::channel();
        let waker = Waker::from(std::sync::Arc::new(Reporting(std::sync::Mutex::new(
            sender,
        ))));
        (waker, receiver)
    }

    /// The hang of issue 19 (A.1), on the real timer: a request waits, its deadline moves
    /// out while its wake-up is registered, the wake-up fires before the new deadline, and
    /// the request waits again. It must be woken again, by the new deadline.
    #[test]
    fn a_request_whose_deadline_moved_out_is_woken_again_after_an_early_wake_up() {
        let (waker, woken) = reporting();
        let mut cx = Context::from_waker(&waker);
        // 100 ms of grace, then 1,000 B/s: 200 bytes move the deadline to 300 ms.
        let mut deadline = Deadline::start(pace(60_000, 1_000, 100));
        assert!(!deadline.poll_expired(&mut cx));
        deadline.received(200);
        // The first wake-up (at 100 ms) was registered before the move; whether it is
        // moved now or fires first, it must not be the last.
        let generous = Duration::from_secs(20);
        let mut wake_ups = 0;
        loop {
            if deadline.poll_expired(&mut cx) {
                break;
            }
            woken
                .recv_timeout(generous)
                .expect("a waiting request is woken by its deadline");
            wake_ups += 1;
        }
        assert!(deadline.expired());
        assert!((1..=2).contains(&wake_ups), "{wake_ups} wake-ups");
        drop(deadline);
        assert_eq!(registered(&waker), 0);
    }

    struct Panicking;

    impl std::task::Wake for Panicking {
        fn wake(self: std::sync::Arc<Self>) {
            panic!("this waker panics (on purpose, in a test)");
        }
    }

    /// A waker is the executor's code. One that panics when the timer wakes it must not
    /// end the timer's thread, and with it every other request's deadline.
    #[test]
    fn a_waker_that_panics_leaves_the_timer_running() {
        let panicking = Waker::from(std::sync::Arc::new(Panicking));
        let mut first = Deadline::start(pace(10, 0, 0));
        assert!(!first.poll_expired(&mut Context::from_waker(&panicking)));
        let started = Instant::now();
        while registered(&panicking) > 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "never fired");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (waker, woken) = reporting();
        let mut second = Deadline::start(pace(10, 0, 0));
        if !second.poll_expired(&mut Context::from_waker(&waker)) {
            woken
                .recv_timeout(Duration::from_secs(20))
                .expect("the timer still wakes requests");
        }
        drop((first, second));
    }

    /// The lookup stage: the body ends (its deadline moves out by a whole `deadline`) while
    /// the body's wake-up is registered.
    #[test]
    fn the_lookup_after_the_body_is_woken_by_its_own_deadline() {
        let (waker, woken) = reporting();
        let mut cx = Context::from_waker(&waker);
        let mut deadline = Deadline::start(pace(150, 0, 0));
        assert!(!deadline.poll_expired(&mut cx));
        std::thread::sleep(Duration::from_millis(50));
        deadline.body_done();
        let mut wake_ups = 0;
        while !deadline.poll_expired(&mut cx) {
            woken
                .recv_timeout(Duration::from_secs(20))
                .expect("a waiting lookup is woken by its deadline");
            wake_ups += 1;
        }
        assert!((1..=2).contains(&wake_ups), "{wake_ups} wake-ups");
    }

    fn waker() -> Waker {
        Waker::from(std::sync::Arc::new(Marker))
    }

    #[test]
    fn a_fired_entry_is_armed_again_and_a_moved_one_moves() {
        let mut wakeups = Wakeups::<u64>::new();
        let mut slot = None;
        let waker = waker();
        assert!(
            wakeups.arm(&mut slot, 10, &waker),
            "the first entry is the earliest"
        );
        assert_eq!(wakeups.take_due(10).len(), 1);
        assert_eq!(wakeups.entries.len(), 0);
        // Fired, and the deadline moved out: a new entry, at the new time.
        assert!(wakeups.arm(&mut slot, 20, &waker));
        assert_eq!(wakeups.next_due(), Some(20));
        // Moved out again before firing: the entry moves with it, and stays one.
        assert!(!wakeups.arm(&mut slot, 30, &waker));
        assert_eq!(wakeups.entries.len(), 1);
        assert!(wakeups.take_due(29).is_empty());
        // Fired, and polled again with the same due time: armed again.
        assert_eq!(wakeups.take_due(30).len(), 1);
        wakeups.arm(&mut slot, 30, &waker);
        assert_eq!(wakeups.entries.len(), 1);
        wakeups.disarm(&mut slot);
        assert!(wakeups.entries.is_empty() && slot.is_none());
        // Disarmed after firing: nothing to remove, nothing removed.
        let mut other = None;
        wakeups.arm(&mut slot, 5, &waker);
        wakeups.arm(&mut other, 6, &waker);
        wakeups.take_due(5);
        wakeups.disarm(&mut slot);
        assert_eq!(wakeups.next_due(), Some(6));
    }

    #[test]
    fn an_entry_takes_a_new_waker_in_place_and_the_timer_is_told_only_of_earlier_ones() {
        let mut wakeups = Wakeups::<u64>::new();
        let (first, second) = (waker(), waker());
        let (mut a, mut b) = (None, None);
        assert!(wakeups.arm(&mut a, 10, &first));
        assert!(!wakeups.arm(&mut b, 20, &first), "later than the earliest");
        let key = a;
        assert!(!wakeups.arm(&mut a, 10, &second));
        assert_eq!(a, key, "the same entry");
        assert!(wakeups.entries[&key.unwrap()].will_wake(&second));
        assert!(
            wakeups.arm(&mut b, 5, &first),
            "moved in before the earliest"
        );
        assert_eq!(wakeups.entries.len(), 2);
    }
}

/// Model checks of the timer with loom: every interleaving of a request's polls and the
/// timer's firing, on a clock that the timer moves on to its next entry (as real time would
/// pass while it waits). A lost wake-up leaves the request waiting and the timer's thread
/// waiting for a change: loom reports the deadlock.
///
/// `RUSTFLAGS="--cfg openmail_loom" cargo test --lib --target-dir target/loom model_check`
#[cfg(all(test, openmail_loom))]
mod model_check {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use loom::sync::{Arc, Notify};

    /// Time that passes only when the timer waits for an entry.
    #[derive(Default)]
    struct ModelClock {
        now: AtomicU64,
        stopped: AtomicBool,
    }

    impl Clock for ModelClock {
        type Instant = u64;

        fn now(&self) -> u64 {
            self.now.load(Ordering::SeqCst)
        }

        fn wait<'a>(
            &self,
            changed: &Condvar,
            state: MutexGuard<'a, Wakeups<u64>>,
            until: Option<u64>,
        ) -> Option<MutexGuard<'a, Wakeups<u64>>> {
            match until {
                Some(until) => {
                    self.now.fetch_max(until, Ordering::SeqCst);
                    Some(state)
                }
                None if self.stopped.load(Ordering::SeqCst) => None,
                None => Some(changed.wait(state).unwrap_or_else(PoisonError::into_inner)),
            }
        }
    }

    /// A task: its waker notifies the thread that polls it.
    struct Task(Notify);

    impl std::task::Wake for Task {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.notify();
        }
    }

    fn task() -> (std::sync::Arc<Task>, Waker) {
        let task = std::sync::Arc::new(Task(Notify::new()));
        let waker = Waker::from(std::sync::Arc::clone(&task));
        (task, waker)
    }

    struct Model {
        timer: Arc<Timer<u64>>,
        clock: Arc<ModelClock>,
    }

    impl Model {
        /// A timer with its thread running.
        fn start() -> (Self, loom::thread::JoinHandle<()>) {
            let timer = Arc::new(Timer {
                state: Mutex::new(Wakeups::new()),
                changed: Condvar::new(),
            });
            let clock = Arc::new(ModelClock::default());
            let thread = {
                let (timer, clock) = (Arc::clone(&timer), Arc::clone(&clock));
                loom::thread::spawn(move || timer.run(&*clock))
            };
            (Self { timer, clock }, thread)
        }

        fn now(&self) -> u64 {
            self.clock.now.load(Ordering::SeqCst)
        }

        /// Stops the timer's thread and checks that no entry was left behind.
        fn stop(self, thread: loom::thread::JoinHandle<()>) {
            {
                let state = self.timer.lock();
                self.clock.stopped.store(true, Ordering::SeqCst);
                drop(state);
            }
            self.timer.changed.notify_one();
            thread.join().unwrap();
            assert!(
                self.timer.lock().entries.is_empty(),
                "an entry outlived its request"
            );
        }
    }

    /// Every interleaving with at most `preemptions` preemptions. The races here need one
    /// (the fire between two polls); the bound keeps each check within seconds.
    fn check(preemptions: usize, model: impl Fn() + Send + Sync + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(preemptions);
        builder.check(model);
    }

    /// A request waits until its deadline, polled once more after each wake-up, with
    /// `move_to` applied to its due time after the first poll, as bytes arriving then
    /// would.
    fn wait_out(model: &Model, first: u64, moved: u64) {
        let (task, waker) = task();
        let mut slot = None;
        let mut due = first;
        let mut polls = 0;
        while !model.timer.poll_due(&mut slot, due, model.now(), &waker) {
            polls += 1;
            if polls == 1 {
                // Bytes arrived: polled again at once, the deadline moved out.
                due = moved;
                continue;
            }
            task.0.wait();
        }
        assert!(model.now() >= due);
        model.timer.disarm(&mut slot);
    }

    /// Register, move the deadline out, fire, poll again: the fire may come before the
    /// move, between the move and the wait, or after; every order ends by the deadline.
    #[test]
    fn model_check_a_deadline_moved_out_is_still_woken() {
        check(3, || {
            let (model, thread) = Model::start();
            wait_out(&model, 1, 2);
            model.stop(thread);
        });
    }

    /// Two requests, one moving its deadline out past the other's, share the timer.
    #[test]
    fn model_check_two_requests_are_each_woken_by_their_deadline() {
        check(2, || {
            let (model, thread) = Model::start();
            let model = Arc::new(model);
            let other = {
                let model = Arc::clone(&model);
                loom::thread::spawn(move || wait_out(&model, 2, 2))
            };
            wait_out(&model, 1, 3);
            other.join().unwrap();
            let model = Arc::try_unwrap(model).ok().unwrap();
            model.stop(thread);
        });
    }

    /// A request that is dropped while registered (the client went away) leaves no entry,
    /// whether the timer fires it first or not.
    #[test]
    fn model_check_a_request_dropped_while_registered_leaves_nothing() {
        check(3, || {
            let (model, thread) = Model::start();
            let (_task, waker) = task();
            let mut slot = None;
            assert!(!model.timer.poll_due(&mut slot, 1, model.now(), &waker));
            model.timer.disarm(&mut slot);
            model.stop(thread);
        });
    }

    /// The fire races with a poll from another task (the request moved): the wake-up must
    /// reach the task that polled last, whichever came first.
    #[test]
    fn model_check_a_fire_racing_with_a_new_waker_reaches_the_new_task() {
        check(3, || {
            let (model, thread) = Model::start();
            let (_first, first_waker) = task();
            let (second, second_waker) = task();
            let mut slot = None;
            assert!(
                !model
                    .timer
                    .poll_due(&mut slot, 1, model.now(), &first_waker)
            );
            while !model
                .timer
                .poll_due(&mut slot, 1, model.now(), &second_waker)
            {
                second.0.wait();
            }
            model.timer.disarm(&mut slot);
            model.stop(thread);
        });
    }
}
