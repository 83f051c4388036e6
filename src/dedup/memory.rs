use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::store::{DedupStore, Reservation, ReserveOutcome, StoreError, StoreFuture};
use super::LONGEST_TTL;

/// The default capacity of a [`MemoryStore`]: 100,000 events.
///
/// That is 55 events a second, every second, for the whole
/// [default retention](super::DEFAULT_RETENTION) of 30 minutes, before the oldest done
/// markers are evicted early. At capacity the store uses about 21 MiB (see
/// [`MemoryStore`]).
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Reservations and done markers in this process's memory: the default store.
///
/// Right for one replica. With several behind a load balancer each would see only its own
/// deliveries, so use a shared store such as
#[cfg_attr(feature = "redis", doc = "[`RedisStore`](super::RedisStore).")]
#[cfg_attr(not(feature = "redis"), doc = "`RedisStore` (the `redis` feature).")]
///
/// **Bounded.** It holds at most `capacity` events. Expired entries are dropped first; when
/// the store is still full, the done marker closest to expiry is evicted (the event would
/// then be processed again if OpenMail delivered it once more). Reservations are never
/// evicted: a store full of in-flight events fails the reservation with
/// [`StoreError::Full`], which the layer treats as any store failure.
///
/// **Memory.** An event costs its id plus about 180 bytes: the id is one shared
/// allocation, referenced from a hash map slot (token, deadline) and from an expiry index
/// (a B-tree). With OpenMail's `evt_` ids at 32 bytes, a full store of the
/// [default capacity](DEFAULT_CAPACITY) measures 211 bytes an event, 20.2 MiB in all
/// (a test counts every allocation); budget 21 MiB.
///
/// **Releases** need no I/O, so a dropped response future releases its reservation at once,
/// in [`DedupStore::abandon`].
///
/// Cloning shares the same state.
///
/// ```
/// use openmail_webhooks::dedup::{DeduplicateLayer, MemoryStore};
///
/// let layer = DeduplicateLayer::new(MemoryStore::with_capacity(10_000));
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    capacity: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<Arc<str>, Entry>,
    /// Every entry, by deadline; the sequence number tells apart equal deadlines.
    expiry: BTreeMap<(Instant, u64), Arc<str>>,
    sequence: u64,
}

struct Entry {
    /// The holder's token while reserved; `None` once done. Kept as two `u64`s, which
    /// align to 8 where a `u128` aligns to 16: 16 bytes less a hash map slot.
    token: Option<[u64; 2]>,
    deadline: Instant,
    sequence: u64,
}

impl MemoryStore {
    /// A store for [`DEFAULT_CAPACITY`] events.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store for at most `capacity` events (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            state: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// The most events this store holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many events it holds now, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether it holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere while the
        // lock was held leaves nothing half-written worth refusing to read.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reserve_now(
        &self,
        reservation: &Reservation,
        lease: Duration,
    ) -> Result<ReserveOutcome, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.drop_expired(now);
        match state.entries.get(reservation.event_id()) {
            Some(entry) if entry.token.is_some() => return Ok(ReserveOutcome::InFlight),
            Some(_) => return Ok(ReserveOutcome::Done),
            None => {}
        }
        if state.entries.len() >= self.capacity && !state.evict_one_done() {
            return Err(StoreError::Full {
                capacity: self.capacity,
            });
        }
        state.put(
            reservation.shared_event_id(),
            Some(split(reservation.token_value())),
            deadline(now, lease),
        );
        Ok(ReserveOutcome::Reserved)
    }

    fn complete_now(
        &self,
        reservation: &Reservation,
        retention: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.drop_expired(now);
        match state
            .entries
            .get(reservation.event_id())
            .map(|entry| entry.token)
        {
            Some(None) => return Ok(()),
            Some(Some(token)) if token != split(reservation.token_value()) => {
                return Err(StoreError::LeaseLost)
            }
            Some(Some(_)) => {}
            // The lease ran out and nobody took the event over: it was processed all the
            // same. Evicting a done marker for it keeps the bound.
            None if state.entries.len() >= self.capacity && !state.evict_one_done() => {
                return Err(StoreError::Full {
                    capacity: self.capacity,
                })
            }
            None => {}
        }
        state.put(
            reservation.shared_event_id(),
            None,
            deadline(now, retention),
        );
        Ok(())
    }

    fn release_now(&self, reservation: &Reservation) {
        let mut state = self.lock();
        let ours = state
            .entries
            .get(reservation.event_id())
            .is_some_and(|entry| entry.token == Some(split(reservation.token_value())));
        if ours {
            state.remove(reservation.event_id());
        }
    }
}

impl State {
    fn put(&mut self, event_id: Arc<str>, token: Option<[u64; 2]>, deadline: Instant) {
        self.remove(&event_id);
        let sequence = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        self.expiry
            .insert((deadline, sequence), Arc::clone(&event_id));
        self.entries.insert(
            event_id,
            Entry {
                token,
                deadline,
                sequence,
            },
        );
    }

    fn remove(&mut self, event_id: &str) {
        if let Some(entry) = self.entries.remove(event_id) {
            self.expiry.remove(&(entry.deadline, entry.sequence));
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let event_id = entry.remove();
            self.entries.remove(&event_id);
        }
    }

    /// Evicts the done marker closest to expiry. Reservations are skipped: they are few
    /// (one per request in flight), and evicting one would let a duplicate run
    /// concurrently.
    fn evict_one_done(&mut self) -> bool {
        let victim = self.expiry.iter().find_map(|(key, event_id)| {
            self.entries
                .get(event_id)
                .filter(|entry| entry.token.is_none())
                .map(|_| *key)
        });
        match victim.and_then(|key| self.expiry.remove(&key)) {
            Some(event_id) => {
                self.entries.remove(&event_id);
                true
            }
            None => false,
        }
    }
}

fn split(token: u128) -> [u64; 2] {
    let bytes = token.to_be_bytes();
    let (high, low) = bytes.split_at(8);
    let half = |half: &[u8]| u64::from_be_bytes(half.try_into().unwrap_or_default());
    [half(high), half(low)]
}

fn deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl.min(LONGEST_TTL)).unwrap_or(now)
}

impl DedupStore for MemoryStore {
    fn reserve(&self, reservation: Reservation, lease: Duration) -> StoreFuture<ReserveOutcome> {
        Box::pin(std::future::ready(self.reserve_now(&reservation, lease)))
    }

    fn complete(&self, reservation: Reservation, retention: Duration) -> StoreFuture<()> {
        Box::pin(std::future::ready(
            self.complete_now(&reservation, retention),
        ))
    }

    fn release(&self, reservation: Reservation) -> StoreFuture<()> {
        self.release_now(&reservation);
        Box::pin(std::future::ready(Ok(())))
    }

    fn abandon(&self, reservation: Reservation) {
        self.release_now(&reservation);
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    fn reserve(store: &MemoryStore, reservation: &Reservation) -> ReserveOutcome {
        store.reserve_now(reservation, LONG).unwrap()
    }

    #[test]
    fn eviction_takes_the_oldest_done_marker_and_never_a_reservation() {
        let store = MemoryStore::with_capacity(3);
        let old = Reservation::new("evt_old");
        let newer = Reservation::new("evt_newer");
        let busy = Reservation::new("evt_busy");
        assert_eq!(reserve(&store, &busy), ReserveOutcome::Reserved);
        assert_eq!(reserve(&store, &old), ReserveOutcome::Reserved);
        store.complete_now(&old, LONG).unwrap();
        assert_eq!(reserve(&store, &newer), ReserveOutcome::Reserved);
        store
            .complete_now(&newer, LONG + Duration::from_secs(1))
            .unwrap();

        let fourth = Reservation::new("evt_fourth");
        assert_eq!(reserve(&store, &fourth), ReserveOutcome::Reserved);
        assert_eq!(store.len(), 3);
        // The done marker closest to expiry went; the reservation and the newer stayed.
        assert_eq!(
            reserve(&store, &Reservation::new("evt_newer")),
            ReserveOutcome::Done
        );
        assert_eq!(
            reserve(&store, &Reservation::new("evt_busy")),
            ReserveOutcome::InFlight
        );
        assert_eq!(
            reserve(&store, &Reservation::new("evt_old")),
            ReserveOutcome::Reserved
        );
    }

    #[test]
    fn a_store_full_of_reservations_refuses_the_next() {
        let store = MemoryStore::with_capacity(2);
        reserve(&store, &Reservation::new("evt_1"));
        reserve(&store, &Reservation::new("evt_2"));
        let error = store
            .reserve_now(&Reservation::new("evt_3"), LONG)
            .unwrap_err();
        assert!(matches!(error, StoreError::Full { capacity: 2 }));
        assert!(error.to_string().contains("raise its capacity"));
    }

    #[test]
    fn expired_entries_are_dropped_before_anything_is_evicted() {
        let store = MemoryStore::with_capacity(2);
        let short = Reservation::new("evt_short");
        store.reserve_now(&short, Duration::ZERO).unwrap();
        let done = Reservation::new("evt_done");
        reserve(&store, &done);
        store.complete_now(&done, LONG).unwrap();
        assert_eq!(
            reserve(&store, &Reservation::new("evt_third")),
            ReserveOutcome::Reserved
        );
        assert_eq!(
            reserve(&store, &Reservation::new("evt_done")),
            ReserveOutcome::Done
        );
    }

    #[test]
    fn huge_durations_do_not_overflow_the_clock() {
        let store = MemoryStore::new();
        let reservation = Reservation::new("evt_forever");
        assert_eq!(
            store.reserve_now(&reservation, Duration::MAX).unwrap(),
            ReserveOutcome::Reserved
        );
        store.complete_now(&reservation, Duration::MAX).unwrap();
        assert_eq!(reserve(&store, &reservation), ReserveOutcome::Done);
    }

    #[test]
    fn release_and_complete_compare_the_token() {
        let store = MemoryStore::new();
        let holder = Reservation::new("evt_1");
        let stranger = Reservation::new("evt_1");
        reserve(&store, &holder);
        store.release_now(&stranger);
        assert_eq!(reserve(&store, &stranger), ReserveOutcome::InFlight);
        assert!(matches!(
            store.complete_now(&stranger, LONG),
            Err(StoreError::LeaseLost)
        ));
        store.abandon(holder);
        assert!(store.is_empty());
    }
}
