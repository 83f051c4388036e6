//! A map whose entries each carry an instant, kept in the order of those instants.
//!
//! The deduplication memory store drops markers once their deadline passes, and the tenant
//! cache evicts the answer closest to expiring and forgets the tenant least recently seen
//! to verify. Each needs the same two structures kept in step: a hash map for lookups by
//! key, and a B-tree ordered by instant for "everything expired by now" and "the oldest
//! one" in O(log n). Kept in step by hand in three places, one forgotten `remove` leaves an
//! entry in one structure and not the other; here it is written and tested once.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Values by key, ordered by an instant given with each (a deadline, or when the entry
/// was last seen).
///
/// Each key is stored twice (in the map and in the order), so keys should be small or
/// cheap to clone. Entries with equal instants are told apart by an insertion id, and come
/// out of [`pop_oldest`](Self::pop_oldest) in the order they were inserted.
pub(crate) struct ExpiryMap<K, V> {
    entries: HashMap<K, Slot<V>>,
    order: BTreeMap<(Instant, u64), K>,
    next_id: u64,
}

struct Slot<V> {
    value: V,
    at: Instant,
    /// Tells apart entries with the same instant in `order`.
    id: u64,
}

impl<K, V> Default for ExpiryMap<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_id: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V> ExpiryMap<K, V> {
    /// Inserts `value` under `key` at instant `at`, replacing (and returning) any value
    /// the key had, which leaves its old place in the order.
    pub(crate) fn insert(&mut self, key: K, value: V, at: Instant) -> Option<V> {
        let previous = self.remove(&key);
        let id = self.next_id;
        // Wrapping takes 2^64 inserts; by then the id it reuses is long gone.
        self.next_id = id.wrapping_add(1);
        self.order.insert((at, id), key.clone());
        self.entries.insert(key, Slot { value, at, id });
        previous
    }

    /// The key's value and instant.
    pub(crate) fn get(&self, key: &K) -> Option<(&V, Instant)> {
        self.entries.get(key).map(|slot| (&slot.value, slot.at))
    }

    /// Whether the key has a value.
    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Removes the key's value and returns it.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&(slot.at, slot.id));
        Some(slot.value)
    }

    /// Removes every entry whose instant is `now` or earlier, and returns how many went.
    pub(crate) fn remove_expired(&mut self, now: Instant) -> usize {
        let mut removed = 0_usize;
        while let Some(first) = self.order.first_entry() {
            if first.key().0 > now {
                break;
            }
            let key = first.remove();
            self.entries.remove(&key);
            removed = removed.wrapping_add(1);
        }
        removed
    }

    /// Removes the entry with the earliest instant, the first inserted among equals: the
    /// one to evict.
    pub(crate) fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (_, key) = self.order.pop_first()?;
        let slot = self.entries.remove(&key)?;
        Some((key, slot.value))
    }

    /// How many entries there are, expired ones not yet removed included.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Removes every entry.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Whether the map and the order hold the same entries, for the tests.
    #[cfg(test)]
    fn in_step(&self) -> bool {
        self.entries.len() == self.order.len()
            && self.order.iter().all(|(&(at, id), key)| {
                self.entries
                    .get(key)
                    .is_some_and(|slot| slot.at == at && slot.id == id)
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(base: Instant, seconds: u64) -> Instant {
        base + Duration::from_secs(seconds)
    }

    #[test]
    fn insert_get_and_len() {
        let now = Instant::now();
        let mut map = ExpiryMap::default();
        assert_eq!(map.len(), 0);
        assert_eq!(map.insert("a", 1, at(now, 5)), None);
        assert_eq!(map.insert("b", 2, at(now, 3)), None);
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&"a"), Some((&1, at(now, 5))));
        assert!(map.contains_key(&"b"));
        assert!(!map.contains_key(&"c"));
        assert_eq!(map.get(&"c"), None);
        assert!(map.in_step());
    }

    #[test]
    fn replacing_a_key_moves_it_in_the_order() {
        let now = Instant::now();
        let mut map = ExpiryMap::default();
        map.insert("a", 1, at(now, 1));
        map.insert("b", 2, at(now, 2));
        // "a" was the oldest; replaced later, it becomes the newest, and only once.
        assert_eq!(map.insert("a", 10, at(now, 3)), Some(1));
        assert_eq!(map.len(), 2);
        assert!(map.in_step());
        assert_eq!(map.get(&"a"), Some((&10, at(now, 3))));
        assert_eq!(map.pop_oldest(), Some(("b", 2)));
        assert_eq!(map.pop_oldest(), Some(("a", 10)));
        assert_eq!(map.pop_oldest(), None);
        // Moved earlier, too.
        map.insert("c", 3, at(now, 9));
        map.insert("d", 4, at(now, 5));
        map.insert("c", 30, at(now, 1));
        assert_eq!(map.pop_oldest(), Some(("c", 30)));
        assert!(map.in_step());
    }

    #[test]
    fn remove_takes_the_entry_out_of_both() {
        let now = Instant::now();
        let mut map = ExpiryMap::default();
        map.insert("a", 1, at(now, 1));
        map.insert("b", 2, at(now, 2));
        assert_eq!(map.remove(&"a"), Some(1));
        assert_eq!(map.remove(&"a"), None);
        assert_eq!(map.len(), 1);
        assert!(map.in_step());
        // The removed entry no longer expires nor gets evicted.
        assert_eq!(map.remove_expired(at(now, 1)), 0);
        assert_eq!(map.pop_oldest(), Some(("b", 2)));
    }

    #[test]
    fn remove_expired_takes_everything_due_by_the_instant_and_nothing_later() {
        let now = Instant::now();
        let mut map = ExpiryMap::default();
        for (key, seconds) in [("a", 3), ("b", 1), ("c", 2), ("d", 4), ("e", 2)] {
            map.insert(key, (), at(now, seconds));
        }
        assert_eq!(map.remove_expired(now), 0);
        // An entry whose instant is exactly `now` has expired.
        assert_eq!(map.remove_expired(at(now, 2)), 3);
        assert_eq!(map.len(), 2);
        assert!(map.in_step());
        assert!(map.contains_key(&"a") && map.contains_key(&"d"));
        assert_eq!(map.remove_expired(at(now, 100)), 2);
        assert_eq!(map.len(), 0);
        assert!(map.in_step());
    }

    #[test]
    fn equal_instants_are_told_apart_and_leave_in_insertion_order() {
        let now = Instant::now();
        let mut map = ExpiryMap::default();
        for key in ["c", "a", "b"] {
            map.insert(key, (), now);
        }
        assert_eq!(map.len(), 3);
        assert!(map.in_step());
        // Removing one of them leaves the others with the same instant in place.
        map.remove(&"a");
        assert!(map.in_step());
        assert_eq!(map.pop_oldest(), Some(("c", ())));
        assert_eq!(map.pop_oldest(), Some(("b", ())));
        assert_eq!(map.pop_oldest(), None);
    }

    #[test]
    fn clear_empties_both() {
        let now = Instant::now();
        let mut map = ExpiryMap::default();
        map.insert(1_u8, "x", now);
        map.insert(2_u8, "y", now);
        map.clear();
        assert_eq!(map.len(), 0);
        assert!(map.in_step());
        assert_eq!(map.pop_oldest(), None);
        map.insert(1_u8, "z", now);
        assert_eq!(map.get(&1), Some((&"z", now)));
    }
}
