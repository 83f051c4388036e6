use bytes::{Bytes, BytesMut};

use super::budget::Lease;

/// The smallest buffer allocated for a body that arrives in several frames.
const MIN_JOINED: usize = 8 * 1024;

/// Collects a body's frames into memory the budget has leased.
///
/// A body that arrives in one frame is kept as that frame: no copy at all. From the second
/// frame on, frames are copied into one buffer as they arrive and let go at once, so what
/// is held is about the bytes received, never one allocation per frame: a body of 1-byte
/// chunks costs what its bytes cost. The buffer holds at most twice the bytes received (or
/// 8 KiB), growing by doubling up to the declared length, so that a client must send the
/// bytes it makes the receiver hold: a declared length alone holds nothing. A body of up
/// to 8 KiB is copied once; a larger one about twice, as its buffer doubles.
#[derive(Debug)]
pub(crate) struct BodyBuffer {
    data: Data,
    lease: Lease,
    limit: usize,
}

#[derive(Debug, Default)]
enum Data {
    #[default]
    Empty,
    One(Bytes),
    Joined(BytesMut),
}

/// The budget could not lease what the body needs.
#[derive(Debug)]
pub(crate) struct OverBudget;

impl BodyBuffer {
    /// A buffer for one body, leasing from the budget as it grows. `limit` is the body
    /// limit; the buffer never grows past it.
    pub(crate) fn new(lease: Lease, limit: usize) -> Self {
        Self {
            data: Data::Empty,
            lease,
            limit,
        }
    }

    /// Appends one frame. `expected` is the body's declared length, already within the
    /// limit.
    pub(crate) fn push(&mut self, chunk: Bytes, expected: Option<usize>) -> Result<(), OverBudget> {
        if chunk.is_empty() {
            return Ok(());
        }
        match std::mem::take(&mut self.data) {
            Data::Empty => {
                if !self.lease.grow_to(chunk.len()) {
                    return Err(OverBudget);
                }
                self.data = Data::One(chunk);
            }
            Data::One(first) => {
                let needed = first.len().saturating_add(chunk.len());
                let capacity = needed
                    .saturating_mul(2)
                    .max(MIN_JOINED)
                    .min(expected.unwrap_or(self.limit).max(needed));
                if !self.lease.grow_to(capacity) {
                    self.data = Data::One(first);
                    return Err(OverBudget);
                }
                let mut joined = BytesMut::with_capacity(capacity);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                self.lease_capacity(&joined)?;
                self.data = Data::Joined(joined);
            }
            Data::Joined(mut joined) => {
                let needed = joined.len().saturating_add(chunk.len());
                if needed > joined.capacity() {
                    let capacity = needed
                        .max(joined.capacity().saturating_mul(2))
                        .min(expected.unwrap_or(self.limit).max(needed));
                    if !self.lease.grow_to(capacity) {
                        self.data = Data::Joined(joined);
                        return Err(OverBudget);
                    }
                    let mut grown = BytesMut::with_capacity(capacity);
                    grown.extend_from_slice(&joined);
                    joined = grown;
                }
                joined.extend_from_slice(&chunk);
                self.lease_capacity(&joined)?;
                self.data = Data::Joined(joined);
            }
        }
        Ok(())
    }

    /// Makes sure the lease covers what the allocation really holds.
    fn lease_capacity(&mut self, joined: &BytesMut) -> Result<(), OverBudget> {
        if self.lease.grow_to(joined.capacity()) {
            Ok(())
        } else {
            Err(OverBudget)
        }
    }

    /// The whole body as one contiguous `Bytes`, and the lease that still covers it until
    /// the request is verified.
    pub(crate) fn finish(self) -> (Bytes, Lease) {
        let bytes = match self.data {
            Data::Empty => Bytes::new(),
            Data::One(bytes) => bytes,
            Data::Joined(joined) => joined.freeze(),
        };
        (bytes, self.lease)
    }

    /// The budget's size, for messages.
    pub(crate) fn budget_limit(&self) -> usize {
        self.lease.budget_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::super::budget::Budget;
    use super::*;

    fn collect(chunks: &[&[u8]], expected: Option<usize>) -> Bytes {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), 1 << 20);
        for chunk in chunks {
            buffer
                .push(Bytes::copy_from_slice(chunk), expected)
                .unwrap();
        }
        buffer.finish().0
    }

    #[test]
    fn frames_join_in_order_whatever_the_length_hint() {
        let chunks: &[&[u8]] = &[b"ab", b"", b"cde", b"f"];
        for expected in [None, Some(6), Some(100), Some(3)] {
            assert_eq!(collect(chunks, expected), Bytes::from_static(b"abcdef"));
        }
        assert_eq!(collect(&[], None), Bytes::new());
    }

    #[test]
    fn a_single_frame_is_not_copied() {
        let frame = Bytes::from_static(b"one frame");
        let budget = Budget::new(1024);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), 1024);
        buffer.push(frame.clone(), Some(frame.len())).unwrap();
        assert_eq!(buffer.finish().0.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn a_declared_length_holds_nothing_until_bytes_arrive() {
        let budget = Budget::new(16 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), 8 << 20);
        buffer
            .push(Bytes::from_static(b"{"), Some(4 << 20))
            .unwrap();
        buffer
            .push(Bytes::from_static(b"\""), Some(4 << 20))
            .unwrap();
        assert_eq!(budget.held(), MIN_JOINED);
        // A small declared body gets its whole buffer at once: one copy.
        let mut small = BodyBuffer::new(Lease::new(&budget), 8 << 20);
        small.push(Bytes::from_static(b"ab"), Some(1000)).unwrap();
        small.push(Bytes::from_static(b"cd"), Some(1000)).unwrap();
        assert_eq!(budget.held(), MIN_JOINED + 1000);
    }

    #[test]
    fn tiny_frames_hold_about_what_they_carry_and_the_lease_counts_it() {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), 1 << 20);
        for _ in 0..100_000 {
            buffer.push(Bytes::from_static(b"x"), None).unwrap();
        }
        let held = budget.held();
        assert!((100_000..=200_000).contains(&held), "{held}");
        let (body, lease) = buffer.finish();
        assert_eq!(body.len(), 100_000);
        drop((body, lease));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_body_over_the_budget_is_refused_and_nothing_stays_leased() {
        let budget = Budget::new(16 * 1024);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), 1 << 20);
        let chunk = Bytes::from(vec![b'x'; 4096]);
        let mut refused = false;
        for _ in 0..10 {
            if buffer.push(chunk.clone(), None).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(budget.held() <= 16 * 1024);
        drop(buffer);
        assert_eq!(budget.held(), 0);
    }
}
