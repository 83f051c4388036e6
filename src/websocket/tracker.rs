//! The resume position: a low watermark over the events received, in arrival order.
//!
//! Events are handled concurrently and finish in any order. The position is the
//! `event_id` of the last event of the longest **contiguous prefix** of settled events:
//! handled, or given up on after every retry (and reported). An event that is still
//! running, or that was interrupted by a shutdown, holds it, even when later events are
//! done. A replay from the position then brings back every event not yet settled, and
//! possibly some that were (the service deduplicates those, and this process recognises
//! the ones it settled or is handling; see [`Tracker::arrive`]).
//!
//! A failure does not hold the position: OpenMail's WebSocket never redelivers, so an
//! event that fails for good would otherwise pin the position for ever, and every later
//! event would pile up behind it until the replay window (100 events) no longer reached
//! them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::REPLAY_LIMIT;

/// One event's identity for the tracker: its `event_id`, or a number for an event
/// without one, which can be neither a position nor recognised when replayed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Id(Arc<str>),
    Anonymous(u64),
}

/// What to do with an event that arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Hand it to the service.
    Dispatch(Key),
    /// The same event is being handled: its outcome stands for this copy too.
    Running,
    /// The same event was handled: nothing to do.
    AlreadyHandled,
    /// The same event failed every attempt and was reported: it is not tried again.
    GaveUp,
}

/// How a dispatched event ended, for the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The service answered `2xx`.
    Handled,
    /// Every attempt failed, and the failure was reported: the position moves past it.
    GaveUp,
    /// The client stopped before the event was settled: it holds the position, so that
    /// the next run gets it again.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Succeeded,
    GaveUp,
    /// Interrupted, or an orphan's run that did not finish: dispatched again when it
    /// arrives.
    Unfinished,
}

impl State {
    /// Settled events let the position move past them.
    fn settled(self) -> bool {
        matches!(self, Self::Succeeded | Self::GaveUp)
    }
}

#[derive(Debug)]
struct Job {
    state: State,
    /// How many slots refer to it. A job with none is an orphan: a slot of a previous
    /// connection, kept until the next reconnect so that its replay is recognised.
    slots: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The events received since the position, in order.
    slots: VecDeque<Key>,
    jobs: HashMap<Key, Job>,
    position: Option<Arc<str>>,
    next_anonymous: u64,
    /// Whether the connection since the last reconnect was subscribed, so that its replay
    /// had the chance to claim the orphans.
    replayed: bool,
}

impl Tracker {
    pub(crate) fn new(position: Option<String>) -> Self {
        Self {
            position: position.map(Arc::from),
            ..Self::default()
        }
    }

    /// The `event_id` to resume after.
    pub(crate) fn position(&self) -> Option<&str> {
        self.position.as_deref()
    }

    /// Forgets the position, after the server said it does not know it.
    pub(crate) fn forget_position(&mut self) {
        self.position = None;
    }

    /// Events received since the position and not yet advanced over.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Records an arrival. An event whose `event_id` this process is handling or has
    /// settled since the position is not dispatched again; one that was interrupted is.
    pub(crate) fn arrive(&mut self, event_id: Option<&str>) -> Arrival {
        let key = match event_id {
            Some(id) => Key::Id(Arc::from(id)),
            None => {
                let key = Key::Anonymous(self.next_anonymous);
                self.next_anonymous = self.next_anonymous.wrapping_add(1);
                key
            }
        };
        self.slots.push_back(key.clone());
        let job = self.jobs.entry(key.clone()).or_insert(Job {
            state: State::Unfinished,
            slots: 0,
        });
        job.slots = job.slots.saturating_add(1);
        match job.state {
            State::Running => Arrival::Running,
            State::Succeeded => Arrival::AlreadyHandled,
            State::GaveUp => Arrival::GaveUp,
            State::Unfinished => {
                job.state = State::Running;
                Arrival::Dispatch(key)
            }
        }
    }

    /// Records the outcome of a dispatched event.
    pub(crate) fn finish(&mut self, key: &Key, finish: Finish) {
        let Some(job) = self.jobs.get_mut(key) else {
            return;
        };
        match finish {
            Finish::Handled => job.state = State::Succeeded,
            Finish::GaveUp => job.state = State::GaveUp,
            // An orphan that did not finish: the replay will bring it, and it runs again
            // then.
            Finish::Interrupted if job.slots == 0 => {
                self.jobs.remove(key);
            }
            Finish::Interrupted => job.state = State::Unfinished,
        }
    }

    /// Advances the position over the settled prefix; returns the new position when it
    /// moved.
    pub(crate) fn advance(&mut self) -> Option<Arc<str>> {
        let mut moved = None;
        while let Some(front) = self.slots.front() {
            let Some(job) = self.jobs.get_mut(front) else {
                break;
            };
            if !job.state.settled() {
                break;
            }
            job.slots = job.slots.saturating_sub(1);
            if job.slots == 0 {
                self.jobs.remove(front);
            }
            if let Some(Key::Id(id)) = self.slots.pop_front() {
                moved = Some(id);
            }
        }
        if let Some(id) = &moved {
            self.position = Some(Arc::clone(id));
        }
        moved
    }

    /// Records that the current connection was subscribed: its replay has come or is
    /// coming, so the orphans it did not claim can go at the next reconnect.
    pub(crate) fn replayed(&mut self) {
        self.replayed = true;
    }

    /// Starts over for a new connection, which replays from the position: the slots are
    /// dropped (the replay brings them again, in order), their jobs kept as orphans so
    /// that the replay is recognised, and the orphans of the last subscribed connection
    /// before are forgotten (a connection that never got `subscribed` had no replay, so
    /// the orphans wait for the next one). Returns how many events not handled lie beyond what a replay brings:
    /// those past the first [`REPLAY_LIMIT`], or all of them when there is no position
    /// to replay from (the very first events are unsettled).
    pub(crate) fn reconnect(&mut self) -> usize {
        if std::mem::take(&mut self.replayed) {
            self.jobs
                .retain(|_, job| job.slots > 0 || job.state == State::Running);
        }
        let replayed = if self.position.is_some() {
            REPLAY_LIMIT
        } else {
            0
        };
        let beyond = self
            .slots
            .iter()
            .skip(replayed)
            .filter(|key| self.jobs.get(*key).is_some_and(|job| !job.state.settled()))
            .count();
        for key in self.slots.drain(..) {
            if let Some(job) = self.jobs.get_mut(&key) {
                job.slots = job.slots.saturating_sub(1);
                if job.slots == 0 && job.state == State::Unfinished {
                    self.jobs.remove(&key);
                }
            }
        }
        beyond
    }

    #[cfg(test)]
    fn jobs(&self) -> usize {
        self.jobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatch(tracker: &mut Tracker, id: &str) -> Key {
        match tracker.arrive(Some(id)) {
            Arrival::Dispatch(key) => key,
            other => panic!("{id}: {other:?}"),
        }
    }

    fn position(tracker: &Tracker) -> Option<&str> {
        tracker.position()
    }

    #[test]
    fn the_position_advances_over_the_contiguous_handled_prefix_only() {
        let mut tracker = Tracker::new(Some("evt_0".into()));
        let keys: Vec<Key> = (1..=4)
            .map(|index| dispatch(&mut tracker, &format!("evt_{index}")))
            .collect();
        // 2 and 3 finish first: 1 still holds the position.
        tracker.finish(&keys[1], Finish::Handled);
        tracker.finish(&keys[2], Finish::Handled);
        assert_eq!(tracker.advance(), None);
        assert_eq!(position(&tracker), Some("evt_0"));
        tracker.finish(&keys[0], Finish::Handled);
        assert_eq!(tracker.advance().as_deref(), Some("evt_3"));
        assert_eq!(tracker.len(), 1);
        // An interrupted event holds it.
        tracker.finish(&keys[3], Finish::Interrupted);
        let key = dispatch(&mut tracker, "evt_5");
        tracker.finish(&key, Finish::Handled);
        assert_eq!(tracker.advance(), None);
        assert_eq!(position(&tracker), Some("evt_3"));
    }

    #[test]
    fn an_event_given_up_on_does_not_hold_the_position_and_is_not_run_again() {
        let mut tracker = Tracker::new(Some("evt_0".into()));
        let failed = dispatch(&mut tracker, "evt_1");
        let later: Vec<Key> = (2..=9)
            .map(|index| dispatch(&mut tracker, &format!("evt_{index}")))
            .collect();
        for key in &later {
            tracker.finish(key, Finish::Handled);
        }
        assert_eq!(tracker.advance(), None, "still running: it holds");
        tracker.finish(&failed, Finish::GaveUp);
        assert_eq!(tracker.advance().as_deref(), Some("evt_9"));
        assert_eq!(tracker.len(), 0);
        assert_eq!(tracker.jobs(), 0);

        // Given up while an earlier event still holds the position: a replay brings it
        // again, and it is not handed to the service again.
        let held = dispatch(&mut tracker, "evt_10");
        let failed = dispatch(&mut tracker, "evt_11");
        tracker.finish(&failed, Finish::GaveUp);
        assert_eq!(tracker.advance(), None);
        tracker.finish(&held, Finish::Interrupted);
        tracker.reconnect();
        assert!(matches!(
            tracker.arrive(Some("evt_10")),
            Arrival::Dispatch(_)
        ));
        assert_eq!(tracker.arrive(Some("evt_11")), Arrival::GaveUp);
    }

    #[test]
    fn events_without_an_id_hold_the_position_until_handled_but_never_become_it() {
        let mut tracker = Tracker::new(None);
        let first = dispatch(&mut tracker, "evt_1");
        let Arrival::Dispatch(anonymous) = tracker.arrive(None) else {
            panic!()
        };
        let Arrival::Dispatch(other) = tracker.arrive(None) else {
            panic!()
        };
        assert_ne!(anonymous, other);
        tracker.finish(&first, Finish::Handled);
        tracker.finish(&other, Finish::Handled);
        assert_eq!(tracker.advance().as_deref(), Some("evt_1"));
        tracker.finish(&anonymous, Finish::Handled);
        assert_eq!(tracker.advance(), None);
        assert_eq!(tracker.len(), 0);
        assert_eq!(position(&tracker), Some("evt_1"));
    }

    #[test]
    fn a_replay_recognises_what_ran_and_reruns_what_was_interrupted() {
        let mut tracker = Tracker::new(Some("evt_0".into()));
        let failed = dispatch(&mut tracker, "evt_1");
        let done = dispatch(&mut tracker, "evt_2");
        let _running = dispatch(&mut tracker, "evt_3");
        tracker.finish(&failed, Finish::Interrupted);
        tracker.finish(&done, Finish::Handled);
        assert_eq!(tracker.reconnect(), 0);
        assert_eq!(tracker.len(), 0);
        assert_eq!(position(&tracker), Some("evt_0"));

        // The replay: evt_1 runs again, evt_2 is known, evt_3 is still running.
        let again = dispatch(&mut tracker, "evt_1");
        assert_eq!(tracker.arrive(Some("evt_2")), Arrival::AlreadyHandled);
        assert_eq!(tracker.arrive(Some("evt_3")), Arrival::Running);
        tracker.finish(&again, Finish::Handled);
        assert_eq!(tracker.advance().as_deref(), Some("evt_2"));
        // The old connection's run of evt_3 finishes: it counts for the replayed copy.
        tracker.finish(&Key::Id(Arc::from("evt_3")), Finish::Handled);
        assert_eq!(tracker.advance().as_deref(), Some("evt_3"));
        assert_eq!(tracker.jobs(), 0);
    }

    #[test]
    fn orphans_live_for_one_connection() {
        let mut tracker = Tracker::new(None);
        let done = dispatch(&mut tracker, "evt_1");
        let held = dispatch(&mut tracker, "evt_2");
        tracker.finish(&held, Finish::Interrupted);
        tracker.finish(&done, Finish::Interrupted);
        let done = dispatch(&mut tracker, "evt_1");
        tracker.finish(&done, Finish::Handled);
        tracker.reconnect();
        assert_eq!(tracker.jobs(), 1, "evt_1 kept for the replay");
        tracker.reconnect();
        assert_eq!(
            tracker.jobs(),
            1,
            "no subscription, no replay yet: still kept"
        );
        tracker.replayed();
        tracker.reconnect();
        assert_eq!(tracker.jobs(), 0, "the replay did not bring it: forgotten");
        // A failed orphan is forgotten at once: its replay runs it again.
        let running = dispatch(&mut tracker, "evt_3");
        tracker.reconnect();
        tracker.finish(&running, Finish::Interrupted);
        assert_eq!(tracker.jobs(), 0);
        assert!(matches!(
            tracker.arrive(Some("evt_3")),
            Arrival::Dispatch(_)
        ));
    }

    #[test]
    fn unhandled_events_beyond_the_replay_limit_are_counted() {
        let mut tracker = Tracker::new(Some("evt_start".into()));
        let keys: Vec<Key> = (0..REPLAY_LIMIT + 5)
            .map(|index| dispatch(&mut tracker, &format!("evt_{index}")))
            .collect();
        tracker.finish(&keys[0], Finish::Interrupted);
        for key in &keys[1..] {
            tracker.finish(key, Finish::Handled);
        }
        tracker.finish(&keys[REPLAY_LIMIT + 1], Finish::Interrupted);
        tracker.finish(&keys[REPLAY_LIMIT + 3], Finish::Interrupted);
        assert_eq!(tracker.advance(), None);
        assert_eq!(tracker.reconnect(), 2);
    }

    #[test]
    fn without_a_position_nothing_is_replayed() {
        let mut tracker = Tracker::new(None);
        let failed = dispatch(&mut tracker, "evt_1");
        let done = dispatch(&mut tracker, "evt_2");
        tracker.finish(&failed, Finish::Interrupted);
        tracker.finish(&done, Finish::Handled);
        assert_eq!(tracker.reconnect(), 1);
    }
}
