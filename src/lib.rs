#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod body;
pub mod dedup;
mod delivery;
pub mod event;
mod expiry;
mod json;
mod log_safe;
pub mod protocol;
#[cfg(feature = "queue")]
#[cfg_attr(docsrs, doc(cfg(feature = "queue")))]
pub mod queue;
pub mod tenant;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;
pub mod verify;
#[cfg(feature = "websocket")]
#[cfg_attr(docsrs, doc(cfg(feature = "websocket")))]
pub mod websocket;

// The root holds what the quickstart and the common cases use; every other item has its
// one path in its module.
pub use delivery::{Channel, Delivery};
pub use event::kind::Event;
pub use log_safe::LogSafe;
pub use protocol::error::{ConfigError, VerifyError};
pub use protocol::signature::sign;
pub use protocol::verifier::Verifier;
pub use verify::layer::VerifyOpenMailLayer;

/// The `Retry-After` of the verifying layer's `503`s and of deduplication's `409` and
/// `503`: OpenMail's first retry interval.
pub(crate) const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

// The guides in docs/ are read on the repository, next to the README; their code blocks
// compile and run as doctests too.
#[cfg(doctest)]
mod guides {
    #[doc = include_str!("../docs/verification.md")]
    struct Verification;
    #[doc = include_str!("../docs/events.md")]
    struct Events;
    #[doc = include_str!("../docs/deduplication.md")]
    struct Deduplication;
    #[doc = include_str!("../docs/tenants.md")]
    struct Tenants;
    #[cfg(feature = "sqlite")]
    #[doc = include_str!("../docs/durable.md")]
    struct Durable;
    #[cfg(feature = "test-util")]
    #[doc = include_str!("../docs/developing.md")]
    struct Developing;
}
