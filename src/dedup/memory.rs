use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::LONGEST_TTL;
use std::future::Future;
use std::pin::Pin;

use super::store::{DedupStore, Reservation, ReserveOutcome, StoreError};
use crate::expiry::ExpiryMap;

/// A key's digest: what the store keeps, 32 bytes whatever the ids.
type Digest = [u8; 32];

/// The default capacity of a [`MemoryStore`]; [`MemoryStore::new`] says why.
const DEFAULT_CAPACITY: usize = 100_000;

/// Reservations and done markers in this process's memory: the default store.
///
/// Right for one replica. With several behind a load balancer each would see only its own
/// deliveries, so use a shared store such as
#[cfg_attr(feature = "redis", doc = "[`RedisStore`](super::RedisStore).")]
#[cfg_attr(not(feature = "redis"), doc = "`RedisStore` (the `redis` feature).")]
///
/// **Bounded, and never forgetful.** It holds at most `capacity` events. Expired entries
/// are dropped first; when the store is still full, the reservation is refused with
/// [`StoreError::Full`] and the layer answers `503` with `Retry-After`, so OpenMail retries
/// it later. A reservation or done marker is never evicted while it is live: forgetting a
/// processed event's marker would let a replay of it, inside the replay window, be
/// processed a second time. Size the capacity above the events you receive in one
/// [retention](super::DeduplicateLayer::retention).
///
/// A tenant that holds a valid secret can fill the store by sending signed events, and
/// then other events get `503` (never processed twice, and not lost while the store frees
/// up within OpenMail's retry schedule) until the markers expire. Raise the capacity to
/// what such a flood would need: each event costs the same fixed amount.
///
/// **Memory.** Each event costs the same, whatever its `event_id`: the store keeps the
/// 32-byte [digest](super::DedupKey::digest) of the key, in a hash map slot (digest,
/// token, deadline) and in an expiry index (a B-tree). A full store of the
/// [default capacity](MemoryStore::new) measures 213 bytes an event, 20.4 MiB in all;
/// budget 21 MiB. A test counts every allocation: 32-byte and 64 KiB ids cost the same,
/// byte for byte, and 4 MiB ids add nothing.
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

/// Every event's digest, with its holder's token and its deadline.
///
/// The token is the holder's while reserved, `None` once done. It is kept as two `u64`s,
/// which align to 8 where a `u128` aligns to 16: 16 bytes less a hash map slot.
type State = ExpiryMap<Digest, Option<[u64; 2]>>;

impl MemoryStore {
    /// A store for 100,000 events, the default.
    ///
    /// That is 55 events a second, every second, for the whole default
    /// [retention](super::DeduplicateLayer::retention) of 30 minutes. Beyond it new events
    /// are answered `503` until markers expire (see [`MemoryStore`]). At capacity the store
    /// holds about 20 MiB, whatever the length of the event ids.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store for at most `capacity` events (at least one). Each costs about 213 bytes.
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
        self.lock().len()
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
        let key = reservation.key().digest();
        let mut state = self.lock();
        state.remove_expired(now);
        match state.get(key) {
            Some((Some(_), _)) => return Ok(ReserveOutcome::InFlight),
            Some((None, _)) => return Ok(ReserveOutcome::Done),
            None => {}
        }
        if state.len() >= self.capacity {
            return Err(StoreError::Full {
                capacity: self.capacity,
            });
        }
        state.insert(
            *key,
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
        let key = reservation.key().digest();
        let mut state = self.lock();
        state.remove_expired(now);
        match state.get(key).map(|(token, _)| *token) {
            Some(None) => return Ok(()),
            Some(Some(token)) if token != split(reservation.token_value()) => {
                return Err(StoreError::LeaseLost);
            }
            Some(Some(_)) => {}
            // The lease ran out and nobody took the event over: it was processed all the
            // same, and is marked done if there is room.
            None if state.len() >= self.capacity => {
                return Err(StoreError::Full {
                    capacity: self.capacity,
                });
            }
            None => {}
        }
        state.insert(*key, None, deadline(now, retention));
        Ok(())
    }

    fn release_now(&self, reservation: &Reservation) {
        let key = reservation.key().digest();
        let mut state = self.lock();
        let ours = state
            .get(key)
            .is_some_and(|(token, _)| *token == Some(split(reservation.token_value())));
        if ours {
            state.remove(key);
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
    fn reserve(
        &self,
        reservation: Reservation,
        lease: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<ReserveOutcome, StoreError>> + Send + 'static>> {
        Box::pin(std::future::ready(self.reserve_now(&reservation, lease)))
    }

    fn complete(
        &self,
        reservation: Reservation,
        retention: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>> {
        Box::pin(std::future::ready(
            self.complete_now(&reservation, retention),
        ))
    }

    fn release(
        &self,
        reservation: Reservation,
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>> {
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
    use super::super::DedupKey;
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    fn reservation(event_id: &str) -> Reservation {
        Reservation::new(DedupKey::new(Some("inb_1"), event_id))
    }

    fn reserve(store: &MemoryStore, reservation: &Reservation) -> ReserveOutcome {
        store.reserve_now(reservation, LONG).unwrap()
    }

    #[test]
    fn a_full_store_refuses_and_forgets_nothing_live() {
        let store = MemoryStore::with_capacity(3);
        let done = reservation("evt_done");
        let busy = reservation("evt_busy");
        assert_eq!(reserve(&store, &done), ReserveOutcome::Reserved);
        store.complete_now(&done, LONG).unwrap();
        assert_eq!(reserve(&store, &busy), ReserveOutcome::Reserved);
        let third = reservation("evt_third");
        assert_eq!(reserve(&store, &third), ReserveOutcome::Reserved);
        store.complete_now(&third, LONG).unwrap();

        let error = store
            .reserve_now(&reservation("evt_fourth"), LONG)
            .unwrap_err();
        assert!(matches!(error, StoreError::Full { capacity: 3 }));
        assert!(error.to_string().contains("raise its capacity"), "{error}");
        assert_eq!(store.len(), 3);
        // Everything that was there still answers as before.
        assert_eq!(
            reserve(&store, &reservation("evt_done")),
            ReserveOutcome::Done
        );
        assert_eq!(
            reserve(&store, &reservation("evt_busy")),
            ReserveOutcome::InFlight
        );
        assert_eq!(
            reserve(&store, &reservation("evt_third")),
            ReserveOutcome::Done
        );
        // A release makes room.
        store.release_now(&busy);
        assert_eq!(
            reserve(&store, &reservation("evt_fourth")),
            ReserveOutcome::Reserved
        );
    }

    #[test]
    fn the_same_event_id_in_two_inboxes_is_two_events() {
        let store = MemoryStore::new();
        let a = Reservation::new(DedupKey::new(Some("inb_a"), "evt_X"));
        reserve(&store, &a);
        store.complete_now(&a, LONG).unwrap();
        let b = Reservation::new(DedupKey::new(Some("inb_b"), "evt_X"));
        assert_eq!(reserve(&store, &b), ReserveOutcome::Reserved);
        let pod = Reservation::new(DedupKey::new(None, "evt_X"));
        assert_eq!(reserve(&store, &pod), ReserveOutcome::Reserved);
    }

    #[test]
    fn expired_entries_are_dropped_to_make_room() {
        let store = MemoryStore::with_capacity(2);
        let short = reservation("evt_short");
        store.reserve_now(&short, Duration::ZERO).unwrap();
        let done = reservation("evt_done");
        reserve(&store, &done);
        store.complete_now(&done, LONG).unwrap();
        assert_eq!(
            reserve(&store, &reservation("evt_third")),
            ReserveOutcome::Reserved
        );
        assert_eq!(
            reserve(&store, &reservation("evt_done")),
            ReserveOutcome::Done
        );
    }

    #[test]
    fn a_late_completion_in_a_full_store_is_refused_not_made_room_for() {
        let store = MemoryStore::with_capacity(1);
        let late = reservation("evt_late");
        store.reserve_now(&late, Duration::ZERO).unwrap();
        let other = reservation("evt_other");
        reserve(&store, &other);
        assert!(matches!(
            store.complete_now(&late, LONG),
            Err(StoreError::Full { capacity: 1 })
        ));
        assert_eq!(
            reserve(&store, &reservation("evt_other")),
            ReserveOutcome::InFlight
        );
    }

    #[test]
    fn huge_durations_do_not_overflow_the_clock() {
        let store = MemoryStore::new();
        let forever = reservation("evt_forever");
        assert_eq!(
            store.reserve_now(&forever, Duration::MAX).unwrap(),
            ReserveOutcome::Reserved
        );
        store.complete_now(&forever, Duration::MAX).unwrap();
        assert_eq!(reserve(&store, &forever), ReserveOutcome::Done);
    }

    #[test]
    fn release_and_complete_compare_the_token() {
        let store = MemoryStore::new();
        let holder = reservation("evt_1");
        let stranger = reservation("evt_1");
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
