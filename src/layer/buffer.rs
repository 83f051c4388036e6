use bytes::{Bytes, BytesMut};

use super::budget::Lease;

/// Frames shorter than this are copied into a shared chunk as they arrive, rather than
/// kept: each kept frame costs a `Bytes` and pins the buffer it was read into.
const SMALL_FRAME: usize = 4 * 1024;

/// The size of the chunks small frames are copied into.
const CHUNK: usize = 16 * 1024;

/// The smallest a chunk starts at. A chunk grows by doubling, up to [`CHUNK`], as its
/// frames arrive: a body of a few tiny frames leases about its bytes, not a whole chunk,
/// so streams that each send two bytes cannot hold the budget.
const FIRST_CHUNK: usize = 64;

/// Collects a body's frames in memory the budget has leased, and joins them once.
///
/// A body that arrives in one frame is kept as that frame: no copy at all. A body that
/// arrives in several is kept as its frames until it ends, then copied once into one
/// allocation of exactly its size. Frames shorter than 4 KiB are copied, as they arrive,
/// into chunks that grow with the bytes up to 16 KiB, and let go at once, so a body of
/// 1-byte chunks costs what its bytes cost, not one allocation per frame. What is held while reading is about the bytes received:
/// a declared `Content-Length` alone holds nothing.
#[derive(Debug)]
pub(crate) struct BodyBuffer {
    data: Data,
    lease: Lease,
}

#[derive(Debug, Default)]
enum Data {
    #[default]
    Empty,
    One(Bytes),
    Many {
        frames: Vec<Bytes>,
        chunk: BytesMut,
        length: usize,
    },
}

/// The budget could not lease what the body needs.
#[derive(Debug)]
pub(crate) struct OverBudget;

impl BodyBuffer {
    /// A buffer for one body, leasing from the budget as it grows.
    pub(crate) fn new(lease: Lease) -> Self {
        Self {
            data: Data::Empty,
            lease,
        }
    }

    /// Appends one frame.
    pub(crate) fn push(&mut self, chunk: Bytes) -> Result<(), OverBudget> {
        if chunk.is_empty() {
            return Ok(());
        }
        let (mut frames, mut small, mut length) = match std::mem::take(&mut self.data) {
            Data::Empty => {
                if !self.lease.grow_to(chunk.len()) {
                    return Err(OverBudget);
                }
                self.data = Data::One(chunk);
                return Ok(());
            }
            Data::One(first) => {
                let mut frames = Vec::new();
                let mut small = BytesMut::new();
                let length = first.len();
                keep(&mut frames, &mut small, first);
                (frames, small, length)
            }
            Data::Many {
                frames,
                chunk,
                length,
            } => (frames, chunk, length),
        };
        length = length.saturating_add(chunk.len());
        keep(&mut frames, &mut small, chunk);
        // Every byte is in a kept frame or in the open chunk; the chunk counts whole.
        let held = length
            .saturating_sub(small.len())
            .saturating_add(small.capacity())
            .saturating_add(
                frames
                    .capacity()
                    .saturating_mul(std::mem::size_of::<Bytes>()),
            );
        let fits = self.lease.grow_to(held);
        self.data = Data::Many {
            frames,
            chunk: small,
            length,
        };
        if fits { Ok(()) } else { Err(OverBudget) }
    }

    /// The whole body as one contiguous `Bytes`, and the lease that still covers it until
    /// the request is verified.
    pub(crate) fn finish(self) -> (Bytes, Lease) {
        let bytes = match self.data {
            Data::Empty => Bytes::new(),
            Data::One(bytes) => bytes,
            Data::Many {
                frames,
                chunk,
                length,
            } => {
                let mut joined = BytesMut::with_capacity(length);
                for frame in frames {
                    joined.extend_from_slice(&frame);
                }
                joined.extend_from_slice(&chunk);
                joined.freeze()
            }
        };
        (bytes, self.lease)
    }

    /// The budget's size, for messages.
    pub(crate) fn budget_limit(&self) -> usize {
        self.lease.budget_limit()
    }
}

/// Keeps one frame: a large one as it is, a small one copied into the current chunk.
fn keep(frames: &mut Vec<Bytes>, small: &mut BytesMut, frame: Bytes) {
    if frame.len() >= SMALL_FRAME {
        if !small.is_empty() {
            frames.push(small.split().freeze());
        }
        frames.push(frame);
        return;
    }
    let needed = small.len().saturating_add(frame.len());
    if needed > small.capacity() {
        if needed > CHUNK {
            // Full: it becomes a frame, and a new chunk starts small again.
            if !small.is_empty() {
                frames.push(small.split().freeze());
            }
            *small = BytesMut::new();
        }
        // Doubling keeps the copies linear in the bytes; never past a whole chunk.
        let grown = small
            .capacity()
            .saturating_mul(2)
            .max(small.len().saturating_add(frame.len()))
            .clamp(FIRST_CHUNK, CHUNK);
        // A new allocation of exactly that size (`reserve` may round up past a chunk).
        let mut bigger = BytesMut::with_capacity(grown);
        bigger.extend_from_slice(small);
        *small = bigger;
    }
    small.extend_from_slice(&frame);
}

#[cfg(test)]
mod tests {
    use super::super::budget::Budget;
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Bytes {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget));
        for chunk in chunks {
            buffer.push(Bytes::copy_from_slice(chunk)).unwrap();
        }
        buffer.finish().0
    }

    #[test]
    fn frames_join_in_order_whatever_their_sizes() {
        let big = vec![b'b'; SMALL_FRAME];
        let chunks: &[&[u8]] = &[b"ab", b"", b"cde", &big, b"f", &big, b"g"];
        let expected: Vec<u8> = chunks.concat();
        assert_eq!(collect(chunks), Bytes::from(expected));
        assert_eq!(collect(&[]), Bytes::new());
    }

    #[test]
    fn a_single_frame_is_not_copied() {
        let frame = Bytes::from_static(b"one frame");
        let budget = Budget::new(1024);
        let mut buffer = BodyBuffer::new(Lease::new(&budget));
        buffer.push(frame.clone()).unwrap();
        assert_eq!(buffer.finish().0.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn large_frames_are_kept_as_they_are_until_the_end() {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget));
        let frame = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..4 {
            buffer.push(frame.clone()).unwrap();
        }
        let Data::Many { frames, .. } = &buffer.data else {
            panic!("several frames");
        };
        assert!(frames.iter().all(|kept| kept.as_ptr() == frame.as_ptr()));
        let held = budget.held();
        assert!(
            (4 * 64 * 1024..4 * 64 * 1024 + 1024).contains(&held),
            "{held}"
        );
    }

    #[test]
    fn tiny_frames_hold_about_what_they_carry_and_the_lease_counts_it() {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget));
        for _ in 0..100_000 {
            buffer.push(Bytes::from_static(b"x")).unwrap();
        }
        let held = budget.held();
        assert!((100_000..=100_000 + CHUNK + 1024).contains(&held), "{held}");
        let (body, lease) = buffer.finish();
        assert_eq!(body.len(), 100_000);
        drop((body, lease));
        assert_eq!(budget.held(), 0);
    }

    /// Issue 19 (6): two frames of one byte leased a whole 16 KiB chunk.
    #[test]
    fn a_few_tiny_frames_lease_about_their_bytes() {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget));
        buffer.push(Bytes::from_static(b"{")).unwrap();
        buffer.push(Bytes::from_static(b"\"")).unwrap();
        let held = budget.held();
        assert!(held <= 2 * FIRST_CHUNK, "{held}");
        for _ in 0..100 {
            buffer.push(Bytes::from_static(b"x")).unwrap();
        }
        let held = budget.held();
        assert!(held <= 4 * FIRST_CHUNK, "{held}");
        assert_eq!(buffer.finish().0.len(), 102);
    }

    #[test]
    fn a_body_over_the_budget_is_refused_and_nothing_stays_leased() {
        let budget = Budget::new(16 * 1024);
        let mut buffer = BodyBuffer::new(Lease::new(&budget));
        let chunk = Bytes::from(vec![b'x'; 4096]);
        let mut refused = false;
        for _ in 0..10 {
            if buffer.push(chunk.clone()).is_err() {
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
