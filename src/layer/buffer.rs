use bytes::{Bytes, BytesMut};

/// Collects the body's frames with as few copies as the frames allow.
///
/// A body that arrives in one frame is kept as that frame: no copy at all. A body that
/// arrives in several is copied exactly once, into one allocation of the final size: at the
/// second frame when its length is known in advance (`Content-Length`), otherwise at the end.
#[derive(Debug, Default)]
pub(crate) enum BodyBuffer {
    #[default]
    Empty,
    One(Bytes),
    Reserved(BytesMut),
    Chunks {
        chunks: Vec<Bytes>,
        length: usize,
    },
}

impl BodyBuffer {
    /// Appends one frame. `expected` is the body's exact length if known; it never exceeds
    /// the body limit, since a larger one is refused before reading.
    pub(crate) fn push(&mut self, chunk: Bytes, expected: Option<usize>) {
        if chunk.is_empty() {
            return;
        }
        match std::mem::take(self) {
            Self::Empty => *self = Self::One(chunk),
            Self::One(first) => {
                let length = first.len().saturating_add(chunk.len());
                *self = match expected {
                    Some(expected) if expected >= length => {
                        let mut reserved = BytesMut::with_capacity(expected);
                        reserved.extend_from_slice(&first);
                        reserved.extend_from_slice(&chunk);
                        Self::Reserved(reserved)
                    }
                    _ => Self::Chunks {
                        chunks: vec![first, chunk],
                        length,
                    },
                };
            }
            Self::Reserved(mut reserved) => {
                reserved.extend_from_slice(&chunk);
                *self = Self::Reserved(reserved);
            }
            Self::Chunks { mut chunks, length } => {
                let length = length.saturating_add(chunk.len());
                chunks.push(chunk);
                *self = Self::Chunks { chunks, length };
            }
        }
    }

    /// The whole body as one contiguous `Bytes`.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(bytes) => bytes,
            Self::Reserved(reserved) => reserved.freeze(),
            Self::Chunks { chunks, length } => {
                let mut joined = BytesMut::with_capacity(length);
                for chunk in chunks {
                    joined.extend_from_slice(&chunk);
                }
                joined.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]], expected: Option<usize>) -> Bytes {
        let mut buffer = BodyBuffer::default();
        for chunk in chunks {
            buffer.push(Bytes::copy_from_slice(chunk), expected);
        }
        buffer.into_bytes()
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
        let mut buffer = BodyBuffer::default();
        buffer.push(frame.clone(), Some(frame.len()));
        assert_eq!(buffer.into_bytes().as_ptr(), frame.as_ptr());
    }
}
