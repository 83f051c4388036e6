//! The memory budget shared by every body the layer is buffering.
//!
//! Requests are not memory: a budget counted in bytes is. Each request leases what its
//! buffer actually holds, as it grows with the bytes received, and returns it when it
//! ends, however it ends. A declared `Content-Length` is checked against what is free
//! before the body is read ([`Budget::admits`]), so a body that cannot fit is refused at
//! once, but it reserves nothing: a head that sends no body holds no memory. Bodies past
//! [`LARGE_BODY`] may together hold at most half the budget, so large uploads can never
//! crowd out the small deliveries OpenMail sends most.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The size past which a body counts as large.
pub(crate) const LARGE_BODY: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    held: AtomicUsize,
    large_held: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicUsize::new(0),
            large_held: AtomicUsize::new(0),
        })
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes leased now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn large_limit(&self) -> usize {
        self.limit / 2
    }

    /// Whether a body of `length` bytes would fit in what is free now. Nothing is taken.
    pub(crate) fn admits(&self, length: usize) -> bool {
        let free = |counter: &AtomicUsize, limit: usize| {
            limit.saturating_sub(counter.load(Ordering::Relaxed))
        };
        length <= free(&self.held, self.limit)
            && length.saturating_sub(LARGE_BODY) <= free(&self.large_held, self.large_limit())
    }
}

/// Adds `amount` to `counter` unless that would pass `limit`.
fn take(counter: &AtomicUsize, amount: usize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(amount).filter(|total| *total <= limit)
        })
        .is_ok()
}

fn give_back(counter: &AtomicUsize, amount: usize) {
    if amount == 0 {
        return;
    }
    // Never more than was taken, so this cannot wrap; saturate all the same.
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
        Some(held.saturating_sub(amount))
    });
}

/// What one request holds of the budget; returned when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    budget: Arc<Budget>,
    held: usize,
    large: usize,
}

impl Lease {
    pub(crate) fn new(budget: &Arc<Budget>) -> Self {
        Self {
            budget: Arc::clone(budget),
            held: 0,
            large: 0,
        }
    }

    /// Grows the lease to `total` bytes. `false`, with the lease unchanged, when the budget
    /// cannot give that much.
    #[must_use]
    pub(crate) fn grow_to(&mut self, total: usize) -> bool {
        let Some(more) = total.checked_sub(self.held).filter(|more| *more > 0) else {
            return true;
        };
        let large_total = total.saturating_sub(LARGE_BODY);
        let more_large = large_total.saturating_sub(self.large);
        let budget = &self.budget;
        if !take(&budget.held, more, budget.limit) {
            return false;
        }
        if more_large > 0 && !take(&budget.large_held, more_large, budget.large_limit()) {
            give_back(&budget.held, more);
            return false;
        }
        self.held = total;
        self.large = self.large.saturating_add(more_large);
        true
    }

    /// Shrinks the lease to `total` bytes, giving the rest back; a larger `total` changes
    /// nothing.
    pub(crate) fn shrink_to(&mut self, total: usize) {
        let Some(less) = self.held.checked_sub(total).filter(|less| *less > 0) else {
            return;
        };
        let less_large = self.large.saturating_sub(total.saturating_sub(LARGE_BODY));
        give_back(&self.budget.held, less);
        give_back(&self.budget.large_held, less_large);
        self.held = total;
        self.large = self.large.saturating_sub(less_large);
    }

    /// The budget's size, for messages.
    pub(crate) fn budget_limit(&self) -> usize {
        self.budget.limit
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        give_back(&self.budget.held, self.held);
        give_back(&self.budget.large_held, self.large);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_bounded_and_returned() {
        let budget = Budget::new(200 * 1024);
        let mut a = Lease::new(&budget);
        assert!(a.grow_to(60 * 1024));
        let mut b = Lease::new(&budget);
        assert!(b.grow_to(100 * 1024));
        assert_eq!(budget.held(), 160 * 1024);
        let mut c = Lease::new(&budget);
        assert!(!c.grow_to(50 * 1024), "over the budget");
        assert_eq!(budget.held(), 160 * 1024, "a refused lease takes nothing");
        drop(b);
        assert!(c.grow_to(50 * 1024));
        drop((a, c));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn large_bodies_share_half_of_the_budget_and_small_ones_the_rest() {
        let budget = Budget::new(1024 * 1024);
        let mut large = Lease::new(&budget);
        // 64 KiB counts as small; the bytes past it count against the large half.
        assert!(large.grow_to(LARGE_BODY + 512 * 1024));
        let mut second = Lease::new(&budget);
        assert!(!second.grow_to(LARGE_BODY + 1));
        assert_eq!(budget.held(), LARGE_BODY + 512 * 1024);
        let mut smalls: Vec<_> = (0..6).map(|_| Lease::new(&budget)).collect();
        for small in &mut smalls {
            assert!(small.grow_to(LARGE_BODY), "small bodies still fit");
        }
        drop(large);
        assert!(second.grow_to(LARGE_BODY + 1));
    }

    #[test]
    fn a_lease_shrinks_to_what_is_still_held() {
        let budget = Budget::new(1024 * 1024);
        let mut lease = Lease::new(&budget);
        assert!(lease.grow_to(LARGE_BODY + 300 * 1024));
        lease.shrink_to(LARGE_BODY + 100 * 1024);
        assert_eq!(budget.held(), LARGE_BODY + 100 * 1024);
        // The large half has room again for what was given back.
        let mut other = Lease::new(&budget);
        assert!(other.grow_to(LARGE_BODY + 400 * 1024));
        drop(other);
        lease.shrink_to(1024);
        lease.shrink_to(4096);
        assert_eq!(budget.held(), 1024);
        assert!(budget.admits(LARGE_BODY + 512 * 1024));
        drop(lease);
        assert_eq!(budget.held(), 0);
    }
}
