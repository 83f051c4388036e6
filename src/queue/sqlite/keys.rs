//! The keys of stored events whose entry in the index of keys (`openmail_keys`) is
//! written later, a slice of the keys at a time, in key order.
//!
//! An event's key is a digest: each insert into a B-tree of keys lands on a page of its
//! own, so every stored event wrote a page of the index to the write-ahead log, and the
//! checkpointer copied it into the file again (about 2.5 pages per event in all, 10 KiB).
//! Held here instead, the keys are written a slice of the key space at a time: with
//! eight held keys for each page of the index, each page written takes several keys.
//!
//! Only the writer's thread uses this. What it holds follows the transactions: a key
//! added or forgotten takes effect at once (the transaction's later commands see it) and
//! is undone if the transaction rolls back; a key written to the index stops being held
//! once the transaction commits.

use std::collections::BTreeMap;

/// The fewest keys held for a slice-by-slice write: below this many keys remembered, the
/// index is small and each page of it takes many keys anyway.
const HELD_AT_LEAST: u64 = 1_024;

/// The most keys held (about 4 MiB): past eight times the index's pages, at about 70
/// keys per page, holding more saves little.
const HELD_AT_MOST: u64 = 65_536;

/// Keys remembered per key held: about eight held keys per page of the index, at about
/// 70 keys per page (a 32-byte key and a row id, in pages about 70 % full).
const REMEMBERED_PER_HELD: u64 = 9;

/// The key space's width: keys are placed by their first 8 bytes.
const SPACE: u128 = 1 << 64;

/// The keys held, and what the current transaction did to them.
#[derive(Debug, Default)]
pub(super) struct Keys {
    /// Stored events whose key is not yet in the index, by key: each one's row id.
    held: BTreeMap<[u8; 32], i64>,
    /// Added in the current transaction: forgotten if it rolls back.
    added: Vec<[u8; 32]>,
    /// Forgotten in the current transaction (a purge): held again if it rolls back.
    forgotten: Vec<([u8; 32], i64)>,
    /// Written to the index in the current transaction: no longer held once it commits.
    written: Vec<[u8; 32]>,
    /// Where the next slice begins: a key's first 8 bytes, big-endian.
    cursor: u64,
    /// About how many keys the store remembers, held or in the index.
    remembered: u64,
}

impl Keys {
    /// Nothing held, with about `remembered` keys in the index.
    pub(super) fn new(remembered: u64) -> Self {
        Self {
            remembered,
            ..Self::default()
        }
    }

    /// The row id of a held key.
    pub(super) fn get(&self, key: &[u8; 32]) -> Option<i64> {
        self.held.get(key).copied()
    }

    /// How many keys are held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no key is held.
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds the key of an event stored in the current transaction.
    pub(super) fn add(&mut self, key: [u8; 32], id: i64) {
        self.held.insert(key, id);
        self.added.push(key);
        self.remembered = self.remembered.saturating_add(1);
    }

    /// Forgets a key the current transaction deleted.
    pub(super) fn forget(&mut self, key: &[u8; 32]) {
        if let Some(id) = self.held.remove(key) {
            self.forgotten.push((*key, id));
        }
        self.remembered = self.remembered.saturating_sub(1);
    }

    /// How many keys are added in the current transaction so far.
    pub(super) fn added(&self) -> usize {
        self.added.len()
    }

    /// The keys to write to the index in this transaction, in key order: those of the
    /// next slice of the key space, as wide as `added` keys are of the keys held when as
    /// many are held as the index's size calls for. So as many keys are written as were
    /// added, on average, once that many are held: fewer while fewer are held, more while
    /// more are (after a burst).
    pub(super) fn next_slice(&mut self, added: usize) -> Vec<([u8; 32], i64)> {
        if added == 0 || self.held.is_empty() {
            return Vec::new();
        }
        // The key space is 2^64 wide (a key's first 8 bytes).
        let width = u128::from(u64::try_from(added).unwrap_or(u64::MAX))
            .saturating_mul(SPACE)
            .checked_div(u128::from(self.target()))
            .unwrap_or(u128::MAX);
        let start = self.cursor;
        let slice = if width > u128::from(u64::MAX) {
            self.held
                .iter()
                .map(|(key, id)| (*key, *id))
                .collect::<Vec<_>>()
        } else {
            let width = u64::try_from(width).unwrap_or(u64::MAX);
            let (end, wrapped) = start.overflowing_add(width);
            self.cursor = end;
            let mut slice = Vec::new();
            if wrapped {
                slice.extend(self.range(start, None));
                slice.extend(self.range(0, Some(end)));
            } else {
                slice.extend(self.range(start, Some(end)));
            }
            slice
        };
        self.written.extend(slice.iter().map(|(key, _)| *key));
        slice
    }

    /// Every key held, to write them all to the index in this transaction.
    pub(super) fn all(&mut self) -> Vec<([u8; 32], i64)> {
        let all: Vec<_> = self.held.iter().map(|(key, id)| (*key, *id)).collect();
        self.written.extend(all.iter().map(|(key, _)| *key));
        all
    }

    /// The keys from `start` (a key's first 8 bytes) up to `end` (excluded; `None`: to
    /// the last key).
    fn range(&self, start: u64, end: Option<u64>) -> impl Iterator<Item = ([u8; 32], i64)> + '_ {
        let bound = |at: u64| {
            let mut key = [0; 32];
            key[..8].copy_from_slice(&at.to_be_bytes());
            key
        };
        let upper = match end {
            Some(end) => std::ops::Bound::Excluded(bound(end)),
            None => std::ops::Bound::Unbounded,
        };
        self.held
            .range((std::ops::Bound::Included(bound(start)), upper))
            .map(|(key, id)| (*key, *id))
    }

    /// The writes of [`next_slice`](Self::next_slice) or [`all`](Self::all) failed and
    /// were rolled back: their keys stay held.
    pub(super) fn unwrite(&mut self) {
        self.written.clear();
    }

    /// The smallest row id held once the current transaction's writes commit: every row
    /// below it has its key in the index then.
    pub(super) fn lowest_id_after_writes(&self) -> Option<i64> {
        let written: std::collections::HashSet<&[u8; 32]> = self.written.iter().collect();
        self.held
            .iter()
            .filter(|(key, _)| !written.contains(key))
            .map(|(_, id)| *id)
            .min()
    }

    /// The current transaction committed.
    pub(super) fn commit(&mut self) {
        for key in self.written.drain(..) {
            self.held.remove(&key);
        }
        self.added.clear();
        self.forgotten.clear();
    }

    /// The current transaction rolled back.
    pub(super) fn roll_back(&mut self) {
        self.written.clear();
        for key in self.added.drain(..) {
            self.held.remove(&key);
            self.remembered = self.remembered.saturating_sub(1);
        }
        for (key, id) in self.forgotten.drain(..) {
            self.held.insert(key, id);
            self.remembered = self.remembered.saturating_add(1);
        }
    }

    /// How many keys to hold: about eight per page of the index.
    fn target(&self) -> u64 {
        (self.remembered / REMEMBERED_PER_HELD).clamp(HELD_AT_LEAST, HELD_AT_MOST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> [u8; 32] {
        // Spread over the key space as digests are.
        let mut key = [0; 32];
        key[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        key[8..16].copy_from_slice(&n.to_be_bytes());
        key
    }

    #[test]
    fn as_many_keys_are_written_as_added_once_enough_are_held() {
        let mut keys = Keys::new(0);
        let (mut id, mut written) = (0, 0);
        for _ in 0..20_000 {
            for _ in 0..8 {
                id += 1;
                keys.add(key(id as u64), id);
            }
            let added = keys.added();
            written += keys.next_slice(added).len();
            keys.commit();
        }
        // 160,000 added: the target is 160,000 / 9 = 17,777 keys held.
        let held = keys.len();
        assert!(
            (8_000..30_000).contains(&held),
            "{held} keys held after 160,000 added"
        );
        assert_eq!(written + held, 160_000);
    }

    #[test]
    fn every_key_is_written_within_one_sweep_of_the_key_space() {
        let mut keys = Keys::new(0);
        keys.add(key(1), 1);
        keys.commit();
        let mut id = 1;
        // The target is 1,024 held: one key added per transaction sweeps the key space
        // in 1,024 transactions.
        let mut written_at = None;
        for round in 0..1_100 {
            id += 1;
            keys.add(key(id as u64), id);
            let slice = keys.next_slice(keys.added());
            if slice.iter().any(|(written, _)| *written == key(1)) {
                written_at = Some(round);
            }
            keys.commit();
            if written_at.is_some() {
                break;
            }
        }
        assert!(written_at.is_some(), "the first key was never written");
        assert!(keys.get(&key(1)).is_none());
    }

    #[test]
    fn a_rolled_back_transaction_leaves_the_keys_as_they_were() {
        let mut keys = Keys::new(0);
        keys.add(key(1), 1);
        keys.add(key(2), 2);
        keys.commit();
        keys.add(key(3), 3);
        keys.forget(&key(1));
        let _ = keys.all();
        keys.roll_back();
        assert_eq!(keys.get(&key(1)), Some(1));
        assert_eq!(keys.get(&key(2)), Some(2));
        assert_eq!(keys.get(&key(3)), None);
        assert_eq!(keys.len(), 2);
        // Committed, the writes leave nothing held.
        let _ = keys.all();
        keys.commit();
        assert_eq!(keys.len(), 0);
        assert_eq!(keys.lowest_id_after_writes(), None);
    }

    #[test]
    fn a_slice_that_wraps_takes_both_ends_of_the_key_space() {
        let mut keys = Keys::new(0);
        let mut low = [0; 32];
        low[31] = 1;
        let high = [0xff; 32];
        keys.add(low, 1);
        keys.add(high, 2);
        keys.commit();
        keys.cursor = u64::MAX - 10;
        // 1,024 held is the target: one added key is 1/1,024 of the space, past the end.
        let slice = keys.next_slice(1);
        assert_eq!(slice.len(), 2, "{slice:?}");
        keys.commit();
        assert_eq!(keys.len(), 0);
    }
}
