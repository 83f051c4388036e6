//! Verify OpenMail webhooks in any tower-based HTTP server.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]
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

pub mod dedup;
pub mod event;
pub mod layer;
pub mod protocol;

pub use dedup::{DedupStore, DeduplicateLayer, MemoryStore};
pub use event::Event;
pub use layer::{Delivery, Rejection, VerifyOpenMail, VerifyOpenMailLayer};
pub use protocol::{
    sign, Clock, ConfigError, Secret, SystemClock, Verified, Verifier, VerifyError,
};
