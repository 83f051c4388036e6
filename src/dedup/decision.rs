use std::fmt;

use http::StatusCode;

use super::{DedupKey, StoreError};

/// What the layer decided for one delivery, as the hook set with
/// [`DeduplicateLayer::on_decision`](super::DeduplicateLayer::on_decision) and `tracing`
/// see it.
///
/// A first delivery reports [`First`](Self::First) and then one of
/// [`Completed`](Self::Completed), [`Released`](Self::Released),
/// [`CompleteFailed`](Self::CompleteFailed) or [`ReleaseFailed`](Self::ReleaseFailed);
/// one the store could not reserve reports [`ReserveFailed`](Self::ReserveFailed). `Display` says what happened and, for failures,
/// what to check; the ids in it are escaped and cut short ([`LogSafe`](crate::LogSafe)).
#[derive(Debug)]
#[non_exhaustive]
pub enum Decision {
    /// First delivery: the event is now reserved, and the inner service will be called.
    First {
        /// The event's key.
        key: DedupKey,
    },
    /// The inner service answered `2xx`, and the event is marked done.
    Completed {
        /// The event's key.
        key: DedupKey,
    },
    /// A duplicate of a processed event, answered without calling the inner service.
    DuplicateDone {
        /// The event's key.
        key: DedupKey,
    },
    /// A duplicate of an event another delivery is processing right now, answered with a
    /// retryable status without calling the inner service.
    DuplicateInFlight {
        /// The event's key.
        key: DedupKey,
    },
    /// The reservation was given back, so that OpenMail's next retry is processed.
    Released {
        /// The event's key.
        key: DedupKey,
        /// Why.
        reason: ReleaseReason,
    },
    /// [`DedupStore::reserve`](super::DedupStore::reserve) failed, or the store is full.
    ReserveFailed {
        /// The event's key.
        key: DedupKey,
        /// What went wrong.
        error: StoreError,
        /// Whether the inner service was called for this delivery all the same: only with
        /// [`OnStoreError::FailOpen`](super::OnStoreError::FailOpen).
        passed_through: bool,
    },
    /// [`DedupStore::complete`](super::DedupStore::complete) failed after the inner
    /// service answered `2xx`; its response goes out as it was, and the reservation stays
    /// until its lease expires.
    CompleteFailed {
        /// The event's key.
        key: DedupKey,
        /// What went wrong.
        error: StoreError,
    },
    /// [`DedupStore::release`](super::DedupStore::release) failed; the inner service's
    /// response goes out as it was, and the reservation stays until its lease expires.
    ReleaseFailed {
        /// The event's key.
        key: DedupKey,
        /// What went wrong.
        error: StoreError,
    },
    /// The verified body has no top-level string `event_id`, so the delivery went to the
    /// inner service without deduplication: a verified event is never refused for it.
    NoEventId,
    /// The request carries no verified [`Delivery`](crate::Delivery): the layer is not
    /// inside [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer) (or the WebSocket
    /// dispatcher). A wiring mistake, refused with `500` without calling the inner service,
    /// and logged at `ERROR` with the `tracing` feature.
    Unverified,
}

impl Decision {
    /// The event's key, unless the delivery had none ([`NoEventId`](Self::NoEventId),
    /// [`Unverified`](Self::Unverified)).
    pub fn key(&self) -> Option<&DedupKey> {
        match self {
            Self::First { key }
            | Self::Completed { key }
            | Self::DuplicateDone { key }
            | Self::DuplicateInFlight { key }
            | Self::Released { key, .. }
            | Self::ReserveFailed { key, .. }
            | Self::CompleteFailed { key, .. }
            | Self::ReleaseFailed { key, .. } => Some(key),
            Self::NoEventId | Self::Unverified => None,
        }
    }

    /// The verified body's `event_id`, when the delivery was keyed. Print it through
    /// [`LogSafe`](crate::LogSafe).
    pub fn event_id(&self) -> Option<&str> {
        self.key().map(DedupKey::event_id)
    }

    /// Whether the inner service was, or is about to be, called for this delivery.
    /// `false` exactly for duplicates and refused deliveries.
    pub fn reaches_inner(&self) -> bool {
        match self {
            Self::DuplicateDone { .. } | Self::DuplicateInFlight { .. } | Self::Unverified => false,
            Self::ReserveFailed { passed_through, .. } => *passed_through,
            _ => true,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::First { key } => write!(f, "{key}: first delivery, reserved"),
            Self::Completed { key } => write!(f, "{key}: processed, marked done"),
            Self::DuplicateDone { key } => {
                write!(
                    f,
                    "{key}: duplicate of a processed event, not processed again"
                )
            }
            Self::DuplicateInFlight { key } => write!(
                f,
                "{key}: duplicate of a delivery still in flight, answered as retryable"
            ),
            Self::Released { key, reason } => {
                write!(
                    f,
                    "{key}: reservation released ({reason}), a retry will be processed"
                )
            }
            Self::ReserveFailed {
                key,
                error,
                passed_through,
            } => {
                write!(f, "{key}: reserving the event failed: {error}")?;
                write_causes(f, error)?;
                if *passed_through {
                    f.write_str(" (processed without deduplication)")
                } else {
                    f.write_str(" (answered 503, so OpenMail retries)")
                }
            }
            Self::CompleteFailed { key, error } => {
                write!(f, "{key}: marking the event done failed: {error}")?;
                write_causes(f, error)?;
                f.write_str(" (processed; the reservation stays until its lease expires)")
            }
            Self::ReleaseFailed { key, error } => {
                write!(f, "{key}: releasing the reservation failed: {error}")?;
                write_causes(f, error)?;
                f.write_str(
                    " (the reservation stays until its lease expires; a retry before \
                     then is answered as in flight)",
                )
            }
            Self::NoEventId => {
                f.write_str("not deduplicated: the verified body has no string `event_id`")
            }
            Self::Unverified => f.write_str(
                "refused with 500: the request carries no verified Delivery; \
                 DeduplicateLayer must sit inside VerifyOpenMailLayer (with axum's \
                 `Router::layer`, add it first, so that it runs second)",
            ),
        }
    }
}

/// Why a reservation was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseReason {
    /// The inner service answered with this status, which is not `2xx`.
    Status(StatusCode),
    /// The inner service failed, in `poll_ready` or in its response future.
    Error,
    /// The response future was dropped before the inner service answered: the client went
    /// away, or a timeout outside this layer fired.
    Dropped,
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "the inner service answered {status}"),
            Self::Error => f.write_str("the inner service failed"),
            Self::Dropped => f.write_str("the request was dropped before it was answered"),
        }
    }
}

/// A store error's causes, on the same line: a log line, not an error, so the causes go on
/// it too.
fn write_causes(f: &mut fmt::Formatter<'_>, error: &StoreError) -> fmt::Result {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        write!(f, ": {cause}")?;
        source = cause.source();
    }
    Ok(())
}
