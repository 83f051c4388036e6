use bytes::{Bytes, BytesMut};

use super::budget::Lease;

/// Frames shorter than this are copied into a shared chunk as they arrive, rather than
/// kept: each kept frame costs a `Bytes` and pins the buffer it was read into.
const SMALL_FRAME: usize = 4 * 1024;

/// The smallest chunk small frames are copied into.
const FIRST_CHUNK: usize = 256;

/// The largest chunk small frames are copied into.
const CHUNK: usize = 16 * 1024;

/// Collects a body's frames in memory the budget has leased, and joins them once.
///
/// A body that arrives in one frame is kept as that frame while it is read and verified:
/// a forgery is refused without a copy. A frame is a slice of the buffer the server read
/// it into, so a first frame under 4 KiB is copied out if the body then has to wait
/// ([`BodyBuffer::settle`]): one byte of a stalled stream would otherwise hold the
/// server's whole read buffer while the lease counts one byte. Once verified, a body that
/// is still its one frame is copied into an allocation of its own ([`own`]), since a
/// handler may hold it for minutes.
///
/// A body whose length was declared (`Content-Length`, or an exact size hint) and that
/// arrives in several frames is copied, frame by frame as they arrive, into one buffer, and
/// each frame is let go once copied: the frames and the body are never held together, and
/// the buffer is the body when it ends. The declared length only sets the sizes the buffer
/// grows through, never what it reserves ahead, since a client may declare 4 MiB and send
/// nothing: each size is the declared length divided by four as often as it still holds
/// the bytes received, so the buffer is never more than four times those bytes, nor more
/// than the declared length while the body keeps to it, and a body that sends what it
/// declared ends in one allocation of exactly its size. The buffers given up on the way add
/// up to at most a third of the body (doubling from 256 bytes gave up two thirds, in pieces
/// that stayed resident in the allocator's heap).
///
/// A joined body of 128 KiB or more is handed on so that it shrinks to one byte before it
/// is freed ([`Released`]), which keeps glibc from moving later bodies into its heap.
///
/// A body of unknown length is kept as its frames until it ends, then copied once into one
/// allocation of exactly its size. Frames shorter than 4 KiB are copied into chunks as they
/// arrive and let go at once, so a body of 1-byte chunks costs what its bytes cost, not one
/// allocation per frame. The chunks grow with the body: each new one is as large as the
/// body so far, from 256 bytes up to 16 KiB, and a chunk is filled to its last byte before
/// the next is started, so the room not yet used is never more than the bytes received (or
/// 256 bytes).
///
/// The lease counts every buffer and chunk by its capacity, and is cut to the body's size
/// once it is joined. What is held while reading is about the bytes received: a declared
/// `Content-Length` alone holds nothing, and two tiny frames hold a few hundred bytes.
#[derive(Debug)]
pub(crate) struct BodyBuffer {
    data: Data,
    lease: Lease,
    /// The length the body declared, which caps the growth of [`Data::Growing`].
    declared: Option<usize>,
}

#[derive(Debug, Default)]
enum Data {
    #[default]
    Empty,
    One(Bytes),
    /// A body of declared length, copied into one buffer as its frames arrive.
    Growing(Vec<u8>),
    /// A body of unknown length: its large frames as they came, its small ones in chunks.
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
    /// A buffer for one body, leasing from the budget as it grows. `declared` is the
    /// body's length when its head declared one.
    pub(crate) fn new(lease: Lease, declared: Option<usize>) -> Self {
        Self {
            data: Data::Empty,
            lease,
            declared,
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
            Data::One(first) => match self.declared {
                Some(declared) => {
                    let mut joined = Vec::new();
                    let copied = self.copy(&mut joined, &first, chunk.len(), declared);
                    let copied = copied.and_then(|()| self.copy(&mut joined, &chunk, 0, declared));
                    self.data = Data::Growing(joined);
                    return copied;
                }
                None => {
                    let mut frames = Vec::new();
                    let mut small = BytesMut::new();
                    let length = first.len();
                    // Sized for both frames at once when both are small.
                    let both = length.saturating_add(chunk.len());
                    keep(&mut frames, &mut small, first, both);
                    (frames, small, length)
                }
            },
            Data::Growing(mut joined) => {
                let declared = self.declared.unwrap_or(0);
                let copied = self.copy(&mut joined, &chunk, 0, declared);
                self.data = Data::Growing(joined);
                return copied;
            }
            Data::Many {
                frames,
                chunk,
                length,
            } => (frames, chunk, length),
        };
        length = length.saturating_add(chunk.len());
        keep(&mut frames, &mut small, chunk, length);
        // Every byte is in a kept frame, in a chunk filled to its capacity, or in the open
        // chunk, which counts whole.
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

    /// The body waits for its next frame. A first frame under 4 KiB that has been kept as
    /// it came is copied now into what the next frame would have been copied into (the
    /// declared-length buffer, or a chunk), because a frame is a slice of the buffer the
    /// server read it into: one byte kept while its stream stalls held the server's whole
    /// read buffer (8 KiB over HTTP/2, where the next frames go to a new one), and the
    /// lease counted one byte. A body that arrives without waiting is not copied here,
    /// nor is one that has sent all it declared (once verified, it is: see [`own`]). When
    /// the budget cannot lease the copy, the frame stays as it is.
    pub(crate) fn settle(&mut self) {
        let small_first = matches!(&self.data, Data::One(first)
            if first.len() < SMALL_FRAME && self.declared != Some(first.len()));
        if !small_first {
            return;
        }
        let Data::One(first) = std::mem::take(&mut self.data) else {
            return;
        };
        let length = first.len();
        match self.declared {
            Some(declared) => {
                let mut joined = Vec::new();
                if self.copy(&mut joined, &first, 0, declared).is_ok() {
                    self.data = Data::Growing(joined);
                    return;
                }
            }
            None => {
                let mut frames = Vec::new();
                let mut small = BytesMut::new();
                keep(&mut frames, &mut small, first.clone(), length);
                let held = small.capacity();
                if frames.is_empty() && self.lease.grow_to(held) {
                    self.data = Data::Many {
                        frames,
                        chunk: small,
                        length,
                    };
                    return;
                }
            }
        }
        self.lease.shrink_to(length);
        self.data = Data::One(first);
    }

    /// Copies `frame` into `joined`, growing it first if it lacks room, with `later` more
    /// bytes already known to follow (the second of the first two frames).
    ///
    /// The buffer grows through the declared length divided by four as often as the result
    /// still holds what has arrived: a 3 MiB body goes 3 B, 12 B, … 192 KiB, 768 KiB,
    /// 3 MiB. Each size is under four times what has arrived, and the buffers given up on
    /// the way add up to a third of the body. A body that outgrows its declared length
    /// doubles. The lease is grown to the new capacity before the buffer is.
    fn copy(
        &mut self,
        joined: &mut Vec<u8>,
        frame: &[u8],
        later: usize,
        declared: usize,
    ) -> Result<(), OverBudget> {
        let length = joined.len().saturating_add(frame.len());
        if length > joined.capacity() {
            let needed = length.saturating_add(later);
            let capacity = if needed <= declared {
                // Where glibc's allocator has raised its mmap threshold, a buffer that grows
                // moves and leaves its old place resident in the heap until something fits
                // there; growing by doubling left up to the whole body behind, in pieces too
                // small to hold a later body (BENCHMARKS.md, "Held deliveries").
                let mut size = declared;
                while size > 4 && size.div_ceil(4) >= needed {
                    size = size.div_ceil(4);
                }
                size
            } else {
                joined
                    .capacity()
                    .saturating_mul(2)
                    .max(FIRST_CHUNK)
                    .max(needed)
            };
            if !self.lease.grow_to(capacity) {
                return Err(OverBudget);
            }
            joined.reserve_exact(capacity.saturating_sub(joined.len()));
            // `reserve_exact` may give more than asked; the lease counts what it gave.
            if !self.lease.grow_to(joined.capacity()) {
                return Err(OverBudget);
            }
        }
        joined.extend_from_slice(frame);
        Ok(())
    }

    /// Whether [`finish`](Self::finish) will hand on the body's one frame as it came: a
    /// slice of the buffer the server read it into, which may be much larger (hyper's
    /// grows to hundreds of KiB on a connection that carried a large body). Every other
    /// body is handed on in one allocation of its own, of exactly its size.
    pub(crate) fn as_it_came(&self) -> bool {
        matches!(self.data, Data::One(_))
    }

    /// The whole body as one contiguous `Bytes`, and the lease that still covers it until
    /// the request is verified, cut to what the body holds now.
    pub(crate) fn finish(self) -> (Bytes, Lease) {
        let Self {
            data, mut lease, ..
        } = self;
        let bytes = match data {
            Data::Empty => Bytes::new(),
            Data::One(bytes) => bytes,
            Data::Growing(mut joined) => {
                // Only a body shorter than it declared leaves room: `Bytes` would keep it.
                joined.shrink_to_fit();
                hand_on(joined)
            }
            Data::Many {
                frames,
                chunk,
                length,
            } => {
                let mut joined = Vec::with_capacity(length);
                for frame in frames {
                    joined.extend_from_slice(&frame);
                }
                joined.extend_from_slice(&chunk);
                hand_on(joined)
            }
        };
        // The frames and chunks are gone; what stays is one allocation of the body's size.
        lease.shrink_to(bytes.len());
        (bytes, lease)
    }

    /// The budget's size, for messages.
    pub(crate) fn budget_limit(&self) -> usize {
        self.lease.budget_limit()
    }
}

/// The smallest block glibc's allocator maps on its own: blocks under it come from its
/// heaps whatever it has seen freed.
const MAPPED: usize = 128 * 1024;

/// A verified body that came as one frame, copied into an allocation of its own, so that
/// a handler that holds it does not hold the server's read buffer with it. Only verified
/// bodies are copied: a forgery is refused from the frame as it came. The WebSocket client
/// copies each text message with it, for the same reason.
pub(crate) fn own(frame: &[u8]) -> Bytes {
    hand_on(frame.to_vec())
}

/// The joined body as `Bytes`: a large one is given back to the allocator in two steps
/// when its last handle goes ([`Released`]).
fn hand_on(joined: Vec<u8>) -> Bytes {
    if joined.len() >= MAPPED {
        Bytes::from_owner(Released(joined))
    } else {
        Bytes::from(joined)
    }
}

/// A large body that shrinks to one byte before it is freed.
///
/// glibc's allocator gives a block of 128 KiB or more its own mapping, which grows in
/// place, until a mapped block is freed whole: it then raises its threshold for mapping to
/// that block's size (up to 32 MiB), so every later body under it grows in the heap, where
/// a growing buffer moves and leaves its old place resident. After one round of 3 MiB
/// bodies, 16 held 3 MiB deliveries cost 1.2 to 1.3 × their bodies in RSS instead of 1.03
/// (BENCHMARKS.md, "Held deliveries"). Shrinking first gives the pages back just the same
/// (glibc remaps the block to one page) and teaches the threshold nothing. Elsewhere it
/// costs one `realloc` of one byte per large body.
struct Released(Vec<u8>);

impl AsRef<[u8]> for Released {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        self.0.clear();
        self.0.shrink_to(1);
    }
}

/// Keeps one frame: a large one as it is, a small one copied into the open chunk, and on
/// into a new one when it is full. `length` is the body's size with this frame, which sizes
/// a new chunk.
fn keep(frames: &mut Vec<Bytes>, small: &mut BytesMut, frame: Bytes, length: usize) {
    if frame.len() >= SMALL_FRAME {
        if !small.is_empty() {
            frames.push(small.split().freeze());
        }
        frames.push(frame);
        return;
    }
    let mut rest = &frame[..];
    while !rest.is_empty() {
        let room = small.capacity().saturating_sub(small.len());
        if room == 0 {
            if !small.is_empty() {
                frames.push(small.split().freeze());
            }
            // As large as the body so far: the chunks double until they reach `CHUNK`.
            *small = BytesMut::with_capacity(length.clamp(FIRST_CHUNK, CHUNK));
            continue;
        }
        let (now, later) = rest.split_at(room.min(rest.len()));
        small.extend_from_slice(now);
        rest = later;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::budget::Budget;
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Bytes {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), None);
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
        let mut buffer = BodyBuffer::new(Lease::new(&budget), None);
        buffer.push(frame.clone()).unwrap();
        assert_eq!(buffer.finish().0.as_ptr(), frame.as_ptr());
    }

    #[test]
    fn large_frames_are_kept_as_they_are_until_the_end() {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), None);
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
        let mut buffer = BodyBuffer::new(Lease::new(&budget), None);
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

    #[test]
    fn a_body_over_the_budget_is_refused_and_nothing_stays_leased() {
        let budget = Budget::new(16 * 1024);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), None);
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

    /// What the buffer holds in memory: kept frames and chunks filled to their capacity by
    /// their length, the open chunk by its capacity, the list by its capacity.
    fn held_by(buffer: &BodyBuffer) -> usize {
        match &buffer.data {
            Data::Empty => 0,
            Data::One(bytes) => bytes.len(),
            Data::Growing(joined) => joined.capacity(),
            Data::Many {
                frames,
                chunk,
                length,
            } => {
                length - chunk.len()
                    + chunk.capacity()
                    + frames.capacity() * std::mem::size_of::<Bytes>()
            }
        }
    }

    /// Issue 19, B.6: two tiny frames leased a whole 16 KiB chunk, so 4,096 HTTP/2 streams
    /// filled the default 64 MiB budget.
    #[test]
    fn two_tiny_frames_lease_the_smallest_chunk_not_a_whole_one() {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), None);
        buffer.push(Bytes::from_static(b"{\"event\":")).unwrap();
        buffer.push(Bytes::from_static(b"\"x\"}")).unwrap();
        assert_eq!(budget.held(), FIRST_CHUNK);
        assert_eq!(held_by(&buffer), FIRST_CHUNK);
        let (body, lease) = buffer.finish();
        assert_eq!(&body[..], b"{\"event\":\"x\"}");
        assert_eq!(budget.held(), body.len(), "cut to the joined body");
        drop(lease);
        assert_eq!(budget.held(), 0);
    }

    /// Whatever the frame sizes, the lease is what the buffer holds, and that is never
    /// more than twice the bytes received plus the first chunk and the list of frames.
    #[test]
    fn the_lease_is_what_the_chunks_hold_and_grows_with_the_bytes() {
        for size in [
            1,
            7,
            100,
            255,
            256,
            1000,
            3000,
            SMALL_FRAME - 1,
            SMALL_FRAME,
        ] {
            let budget = Budget::new(1 << 20);
            let mut buffer = BodyBuffer::new(Lease::new(&budget), None);
            let frame = Bytes::from(vec![b'x'; size]);
            let mut received = 0;
            while received < 200 * 1024 {
                buffer.push(frame.clone()).unwrap();
                received += size;
                let held = budget.held();
                assert_eq!(held, held_by(&buffer), "{size} B frames, {received} B");
                let list = match &buffer.data {
                    Data::Many { frames, .. } => frames.capacity() * std::mem::size_of::<Bytes>(),
                    _ => 0,
                };
                assert!(
                    held <= 2 * received + FIRST_CHUNK + list,
                    "{size} B frames, {received} B received, {held} B held"
                );
            }
            let (body, lease) = buffer.finish();
            assert_eq!(body.len(), received);
            assert_eq!(budget.held(), received);
            drop(lease);
        }
    }

    #[test]
    fn small_frames_after_a_large_one_fill_their_chunk_before_the_next() {
        let budget = Budget::new(1 << 20);
        let mut buffer = BodyBuffer::new(Lease::new(&budget), None);
        let mut expected = Vec::new();
        for (index, size) in [5000, 3, 4000, 70, 9000, 1, 2, 3999, 300]
            .into_iter()
            .enumerate()
        {
            let frame = vec![b'a' + index as u8; size];
            expected.extend_from_slice(&frame);
            buffer.push(Bytes::from(frame)).unwrap();
            assert_eq!(budget.held(), held_by(&buffer));
        }
        assert_eq!(buffer.finish().0, Bytes::from(expected));
    }

    fn declared(budget: &Arc<Budget>, length: usize) -> BodyBuffer {
        BodyBuffer::new(Lease::new(budget), Some(length))
    }

    /// With a declared length, the frames are copied into one buffer as they arrive and
    /// let go, and that buffer, grown no further than the declared length, is the body.
    #[test]
    fn a_declared_body_is_copied_as_it_arrives_into_one_buffer_of_its_size() {
        for (length, frame) in [
            (3 * 1024 * 1024, 16 * 1024),
            (3 * 1024 * 1024 + 5, 16 * 1024),
            (100_000, 1),
            (100_000, 3000),
            (100_000, 64 * 1024),
            (1000, 999),
        ] {
            let budget = Budget::new(16 << 20);
            let mut buffer = declared(&budget, length);
            let body: Vec<u8> = (0..length).map(|index| index as u8).collect();
            let mut received = 0;
            for piece in body.chunks(frame) {
                let piece = Bytes::copy_from_slice(piece);
                received += piece.len();
                buffer.push(piece.clone()).unwrap();
                if received > piece.len() {
                    // Copied and let go: no frame after the first stays pinned.
                    assert!(piece.is_unique(), "{length} B in {frame} B frames");
                }
                let held = budget.held();
                assert_eq!(held, held_by(&buffer), "{length} B in {frame} B frames");
                assert!(
                    held <= (4 * received).min(length),
                    "{length} B in {frame} B frames: {held} B held for {received} B"
                );
            }
            let (joined, lease) = buffer.finish();
            assert_eq!(joined, body, "{length} B in {frame} B frames");
            assert_eq!(budget.held(), length, "{length} B in {frame} B frames");
            drop((joined, lease));
            assert_eq!(budget.held(), 0);
        }
    }

    /// Every buffer the body grows out of is freed, and where glibc serves it from its heap
    /// its pages stay resident until something fits there: together they are at most a
    /// third of the body (doubling gave up two thirds: 1 MiB, 512 KiB, … for 3 MiB).
    #[test]
    fn the_buffers_given_up_on_the_way_add_up_to_a_third_of_the_body() {
        for (length, frame) in [
            (3 * 1024 * 1024, 16 * 1024),
            (3 * 1024 * 1024, 1500),
            (4 * 1024 * 1024, 64 * 1024),
            (100_000, 1),
            (100_000, 3000),
        ] {
            let budget = Budget::new(16 << 20);
            let mut buffer = declared(&budget, length);
            let mut capacity = 0;
            let mut given_up = 0;
            for piece in vec![b'x'; length].chunks(frame) {
                buffer.push(Bytes::copy_from_slice(piece)).unwrap();
                if let Data::Growing(joined) = &buffer.data {
                    if joined.capacity() != capacity {
                        given_up += capacity;
                        capacity = joined.capacity();
                    }
                }
            }
            assert_eq!(capacity, length, "{length} B in {frame} B frames");
            assert!(
                given_up * 3 <= length + 64,
                "{length} B in {frame} B frames: {given_up} B given up"
            );
        }
    }

    /// The buffer ends at exactly the declared length: what `finish` hands on is one
    /// allocation of the body's size, not a doubled capacity (3 MiB would end at 4 MiB).
    #[test]
    fn the_buffer_stops_at_the_declared_length() {
        let length = 3 * 1024 * 1024;
        let budget = Budget::new(16 << 20);
        let mut buffer = declared(&budget, length);
        let frame = Bytes::from(vec![b'x'; 16 * 1024]);
        for _ in 0..length / frame.len() {
            buffer.push(frame.clone()).unwrap();
        }
        let Data::Growing(joined) = &buffer.data else {
            panic!("one growing buffer");
        };
        assert_eq!((joined.len(), joined.capacity()), (length, length));
        let pointer = joined.as_ptr();
        let (body, _lease) = buffer.finish();
        assert_eq!(body.as_ptr(), pointer, "handed on without a further copy");
        assert_eq!(budget.held(), length);
    }

    /// A declared length reserves nothing: two tiny frames (13 bytes) of a body that
    /// declared 4 MiB lease 16 bytes, 4 MiB divided by four ten times.
    #[test]
    fn a_declared_length_reserves_nothing_ahead() {
        let budget = Budget::new(1 << 20);
        let mut buffer = declared(&budget, 4 * 1024 * 1024);
        buffer.push(Bytes::from_static(b"{\"event\":")).unwrap();
        assert_eq!(budget.held(), 9);
        buffer.push(Bytes::from_static(b"\"x\"}")).unwrap();
        assert_eq!(budget.held(), 16);
        assert_eq!(held_by(&buffer), 16);
        let (body, lease) = buffer.finish();
        assert_eq!(&body[..], b"{\"event\":\"x\"}");
        assert_eq!(budget.held(), body.len(), "cut to the joined body");
        drop((body, lease));
        assert_eq!(budget.held(), 0);
    }

    /// A body that sends more or less than it declared is still read whole (the server
    /// enforces the length, not the buffer), and one that sends less is not handed on with
    /// room to spare.
    #[test]
    fn a_body_that_breaks_its_declared_length_is_still_joined_exactly() {
        for (declared_length, sent) in [(64 * 1024, 200 * 1024), (200 * 1024, 64 * 1024)] {
            let budget = Budget::new(16 << 20);
            let mut buffer = declared(&budget, declared_length);
            let body: Vec<u8> = (0..sent).map(|index| (index % 251) as u8).collect();
            for piece in body.chunks(5000) {
                buffer.push(Bytes::copy_from_slice(piece)).unwrap();
                let received = match &buffer.data {
                    Data::Growing(joined) => joined.len(),
                    _ => 5000,
                };
                assert!(budget.held() <= (4 * received).max(FIRST_CHUNK));
            }
            let (joined, _lease) = buffer.finish();
            assert_eq!(joined, body);
            assert_eq!(budget.held(), sent);
        }
    }

    /// A small first frame kept while the body waits is copied out, so it no longer holds
    /// the buffer it was read into, and the lease counts the copy; a body that sent all it
    /// declared, or a first frame of 4 KiB or more, is left as it is.
    #[test]
    fn a_small_first_frame_is_copied_out_when_the_body_waits() {
        for declared_length in [Some(4 * 1024 * 1024), Some(100), None] {
            let budget = Budget::new(1 << 20);
            let mut buffer = BodyBuffer::new(Lease::new(&budget), declared_length);
            let read_buffer = Bytes::from(vec![b'{'; 8 * 1024]);
            buffer.push(read_buffer.slice(..1)).unwrap();
            buffer.settle();
            assert!(read_buffer.is_unique(), "{declared_length:?}: still pinned");
            assert_eq!(budget.held(), held_by(&buffer), "{declared_length:?}");
            let expected = match declared_length {
                // 4 MiB divided by four ten times, and 100 by four three times.
                Some(4194304) => 4,
                Some(_) => 2,
                None => FIRST_CHUNK,
            };
            assert_eq!(budget.held(), expected, "{declared_length:?}");
            buffer.settle();
            buffer.push(Bytes::from_static(b"}")).unwrap();
            assert_eq!(budget.held(), held_by(&buffer), "{declared_length:?}");
            let (body, lease) = buffer.finish();
            assert_eq!(&body[..], b"{}");
            drop((body, lease));
            assert_eq!(budget.held(), 0);
        }
        for (declared_length, size) in [(Some(9), 9), (None, SMALL_FRAME), (Some(100), SMALL_FRAME)]
        {
            let budget = Budget::new(1 << 20);
            let mut buffer = BodyBuffer::new(Lease::new(&budget), declared_length);
            let frame = Bytes::from(vec![b'x'; size]);
            buffer.push(frame.clone()).unwrap();
            buffer.settle();
            assert_eq!(
                buffer.finish().0.as_ptr(),
                frame.as_ptr(),
                "{declared_length:?}"
            );
        }
    }

    /// A copy the budget cannot lease leaves the frame as it was, and the lease with it.
    #[test]
    fn a_first_frame_the_budget_cannot_copy_stays_as_it_came() {
        for declared_length in [Some(1000), None] {
            let budget = Budget::new(200);
            let mut buffer = BodyBuffer::new(Lease::new(&budget), declared_length);
            let frame = Bytes::from(vec![b'x'; 150]);
            buffer.push(frame.clone()).unwrap();
            buffer.settle();
            assert_eq!(budget.held(), 150, "{declared_length:?}");
            assert_eq!(
                buffer.finish().0.as_ptr(),
                frame.as_ptr(),
                "{declared_length:?}"
            );
        }
    }

    #[test]
    fn a_declared_body_over_the_budget_is_refused_and_nothing_stays_leased() {
        let budget = Budget::new(64 * 1024);
        let mut buffer = declared(&budget, 1024 * 1024);
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        let mut refused = false;
        for _ in 0..64 {
            if buffer.push(chunk.clone()).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(budget.held() <= 64 * 1024);
        drop(buffer);
        assert_eq!(budget.held(), 0);
    }
}
