use std::fmt;

use http::StatusCode;

use super::{DedupKey, StoreError};

/// What the layer decided for one delivery, as the hook set with
/// [`DeduplicateLayer::on_decision`](super::DeduplicateLayer::on_decision) and `tracing`
/// see it.
///
/// A first delivery reports [`First`](Self::First) and then one of
/// [`Completed`](Self::Completed), [`Released`](Self::Released) or
/// [`StoreFailed`](Self::StoreFailed). `Display` says what happened and, for failures,
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
    /// A call to the store failed, or the store is full.
    StoreFailed {
        /// The event's key.
        key: DedupKey,
        /// Which call.
        step: StoreStep,
        /// What went wrong.
        error: StoreError,
        /// Whether the inner service was called for this delivery all the same: always
        /// after a failed `complete` or `release` (which leave the inner service's
        /// response as it was), and after a failed reservation only with
        /// [`OnStoreError::FailOpen`](super::OnStoreError::FailOpen).
        passed_through: bool,
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
            | Self::StoreFailed { key, .. } => Some(key),
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
            Self::StoreFailed { passed_through, .. } => *passed_through,
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
            Self::StoreFailed {
                key,
                step,
                error,
                passed_through,
            } => {
                write!(f, "{key}: {step} failed: {error}")?;
                // A log line, not an error: the causes go on it too.
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                match (step, passed_through) {
                    (StoreStep::Reserve, true) => f.write_str(" (processed without deduplication)"),
                    (StoreStep::Reserve, false) => {
                        f.write_str(" (answered 503, so OpenMail retries)")
                    }
                    (StoreStep::Complete, _) => {
                        f.write_str(" (processed; the reservation stays until its lease expires)")
                    }
                    (StoreStep::Release, _) => f.write_str(
                        " (the reservation stays until its lease expires; a retry before \
                         then is answered as in flight)",
                    ),
                }
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

/// Which store call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreStep {
    /// [`DedupStore::reserve`](super::DedupStore::reserve).
    Reserve,
    /// [`DedupStore::complete`](super::DedupStore::complete).
    Complete,
    /// [`DedupStore::release`](super::DedupStore::release).
    Release,
}

impl fmt::Display for StoreStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reserve => "reserving the event",
            Self::Complete => "marking the event done",
            Self::Release => "releasing the reservation",
        })
    }
}
