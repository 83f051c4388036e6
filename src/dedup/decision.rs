use std::fmt;
use std::sync::Arc;

use http::StatusCode;

use super::StoreError;

/// What the layer decided for one delivery, as the hook set with
/// [`DeduplicateLayer::on_decision`](super::DeduplicateLayer::on_decision) and `tracing`
/// see it.
///
/// A first delivery reports [`First`](Self::First) and then one of
/// [`Completed`](Self::Completed), [`Released`](Self::Released) or
/// [`StoreFailed`](Self::StoreFailed). `Display` says what happened and, for failures,
/// what to check.
#[derive(Debug)]
#[non_exhaustive]
pub enum Decision {
    /// First delivery: the event is now reserved, and the inner service will be called.
    First {
        /// The signed body's `event_id`.
        event_id: Arc<str>,
    },
    /// The inner service answered `2xx`, and the event is marked done.
    Completed {
        /// The signed body's `event_id`.
        event_id: Arc<str>,
    },
    /// A duplicate of a processed event, answered without calling the inner service.
    DuplicateDone {
        /// The signed body's `event_id`.
        event_id: Arc<str>,
    },
    /// A duplicate of an event another delivery is processing right now, answered with a
    /// retryable status without calling the inner service.
    DuplicateInFlight {
        /// The signed body's `event_id`.
        event_id: Arc<str>,
    },
    /// The reservation was given back, so that OpenMail's next retry is processed.
    Released {
        /// The signed body's `event_id`.
        event_id: Arc<str>,
        /// Why.
        reason: ReleaseReason,
    },
    /// A call to the store failed.
    StoreFailed {
        /// The signed body's `event_id`.
        event_id: Arc<str>,
        /// Which call.
        step: StoreStep,
        /// What went wrong.
        error: StoreError,
        /// Whether the inner service was called for this delivery all the same: always
        /// after a failed `complete` or `release` (which leave the inner service's
        /// response as it was), and after a failed reservation only with
        /// [`StoreFailure::FailOpen`](super::StoreFailure::FailOpen).
        passed_through: bool,
    },
    /// There was nothing to key on, so the delivery went to the inner service without
    /// deduplication.
    Unkeyed {
        /// What was missing.
        reason: Unkeyed,
    },
}

impl Decision {
    /// The signed body's `event_id`, unless the delivery was [`Unkeyed`](Self::Unkeyed).
    pub fn event_id(&self) -> Option<&str> {
        match self {
            Self::First { event_id }
            | Self::Completed { event_id }
            | Self::DuplicateDone { event_id }
            | Self::DuplicateInFlight { event_id }
            | Self::Released { event_id, .. }
            | Self::StoreFailed { event_id, .. } => Some(event_id),
            Self::Unkeyed { .. } => None,
        }
    }

    /// Whether the inner service was, or is about to be, called for this delivery.
    /// `false` exactly for duplicates and refused deliveries.
    pub fn reaches_inner(&self) -> bool {
        match self {
            Self::DuplicateDone { .. } | Self::DuplicateInFlight { .. } => false,
            Self::StoreFailed { passed_through, .. } => *passed_through,
            _ => true,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::First { event_id } => write!(f, "{event_id}: first delivery, reserved"),
            Self::Completed { event_id } => write!(f, "{event_id}: processed, marked done"),
            Self::DuplicateDone { event_id } => {
                write!(
                    f,
                    "{event_id}: duplicate of a processed event, not processed again"
                )
            }
            Self::DuplicateInFlight { event_id } => write!(
                f,
                "{event_id}: duplicate of a delivery still in flight, answered as retryable"
            ),
            Self::Released { event_id, reason } => {
                write!(
                    f,
                    "{event_id}: reservation released ({reason}), a retry will be processed"
                )
            }
            Self::StoreFailed {
                event_id,
                step,
                error,
                passed_through,
            } => {
                write!(f, "{event_id}: {step} failed: {error}")?;
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
            Self::Unkeyed { reason } => {
                write!(f, "not deduplicated: {reason}")
            }
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

/// Why a delivery could not be deduplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unkeyed {
    /// The request has no `Arc<Event>` extension: the layer does not sit inside
    /// [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer), or event parsing is off.
    NoEvent,
    /// The signed body has no string `event_id`.
    NoEventId,
}

impl fmt::Display for Unkeyed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoEvent => {
                "the request carries no verified event; DeduplicateLayer must sit inside \
                 VerifyOpenMailLayer (with axum's `Router::layer`, add it first) and event \
                 parsing must stay on"
            }
            Self::NoEventId => "the signed body has no string `event_id`",
        })
    }
}
