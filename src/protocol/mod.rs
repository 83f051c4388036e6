//! The OpenMail signature protocol, with no HTTP stack attached.
//!
//! OpenMail signs every delivery with
//! `hex(HMAC-SHA256(secret, X-Timestamp + "." + raw_body))` and rejects nothing
//! on its own side: verifying is the receiver's job. This module is that job as a
//! small, synchronous, allocation-free check over header values and body bytes:
//!
//! - [`Secret`] holds one pre-keyed HMAC state, so each check clones a keyed state
//!   instead of re-deriving it from the secret;
//! - [`Verifier`](crate::Verifier) holds the accepted secrets (more than one during a rotation), the
//!   replay tolerance and the clock, and runs the check;
//! - [`sign`](crate::sign) produces exactly the `X-Signature` OpenMail sends, for tests and tools;
//! - [`VerifyError`] says precisely what was wrong;
//! - for multi-tenant receivers, [`TenantVerifier`](crate::tenant::TenantVerifier) checks
//!   the signature against the secrets of the inbox the body names and that the secret
//!   which matched covers the inbox. The tower layer runs the same check.
//!
//! ```
//! use openmail_webhooks::{sign, Verifier};
//!
//! let body = br#"{"event":"message.received","event_id":"evt_1"}"#;
//! let signature = sign("whsec_test", "1790000000", body);
//!
//! let verifier = Verifier::new("whsec_test")?.clock(|| 1_790_000_100);
//! let verified = verifier.verify("1790000000", &signature, body)?;
//! assert_eq!(verified.timestamp(), 1_790_000_000);
//! assert_eq!(verified.secret_index(), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod claim;
pub(crate) mod error;
mod secret;
pub(crate) mod signature;
mod timestamp;
pub(crate) mod verifier;

pub use secret::Secret;
pub use verifier::Verified;

pub(crate) use claim::{Claim, MAX_CLAIMED_ID_LEN};
pub(crate) use error::{ConfigError, VerifyError};
pub(crate) use timestamp::{Clock, SystemClock};

#[cfg(feature = "test-util")]
pub(crate) use secret::macs_on_this_thread;
pub(crate) use signature::decode_signature;
pub(crate) use verifier::{Freshness, SecretRing, SignedHead, signed_headers};

/// The header that carries the delivery time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-timestamp";
/// The header that carries the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "x-signature";
/// The header that carries the event id. It is not covered by the signature.
pub const EVENT_ID_HEADER: &str = "x-event-id";
