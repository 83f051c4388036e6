use std::fmt;

use crate::LogSafe;
use crate::tenant::Tenant;

/// Why a delivery failed verification.
///
/// Each variant's [`Display`](fmt::Display) says what was wrong and what to check. It is
/// meant for the application's logs, not for the client, and it never contains the secret
/// or the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// A required header is absent.
    MissingHeader {
        /// The header's name, lowercase.
        name: &'static str,
    },
    /// A header that must appear once appears several times.
    DuplicateHeader {
        /// The header's name, lowercase.
        name: &'static str,
    },
    /// `X-Timestamp` is not a plain decimal integer (`-?[0-9]+`).
    TimestampMalformed,
    /// `X-Timestamp` is a decimal integer that does not fit a 64-bit Unix time.
    TimestampOutOfRange,
    /// `X-Timestamp` is further from now than the tolerance allows.
    TimestampOutsideTolerance {
        /// `now - timestamp` in seconds: positive when the delivery is old, negative when it
        /// claims to come from the future. Saturates at the `i64` range.
        offset: i64,
        /// The configured tolerance, in seconds.
        tolerance: u64,
    },
    /// `X-Signature` is not exactly 64 hexadecimal digits.
    SignatureMalformed {
        /// The header's length in bytes.
        length: usize,
        /// The index of the first byte that is not a hex digit, when the length is right.
        invalid_at: Option<usize>,
    },
    /// The signature is well-formed but matches none of the configured secrets.
    SignatureMismatch,
    /// Per-inbox secrets: the signature verified under a secret whose scope does not cover
    /// the inbox the body names. One tenant's secret never authenticates another's events,
    /// nor a body that names no inbox or whose top-level ids cannot be read: only
    /// the account's secret authenticates those.
    TenantMismatch {
        /// The tenant whose secret matched, which is all it may authenticate.
        scope: Tenant,
        /// The body's top-level `inbox_id`; `None` when it names none or its claim cannot
        /// be read.
        inbox_id: Option<String>,
    },
}

impl VerifyError {
    /// A short reason, safe to send to the client.
    pub fn client_message(&self) -> &'static str {
        match self {
            Self::MissingHeader { name } => match *name {
                super::TIMESTAMP_HEADER => "missing X-Timestamp header",
                super::SIGNATURE_HEADER => "missing X-Signature header",
                _ => "missing header",
            },
            Self::DuplicateHeader { .. } => "duplicate signature header",
            Self::TimestampMalformed | Self::TimestampOutOfRange => "malformed X-Timestamp",
            Self::TimestampOutsideTolerance { .. } => "X-Timestamp outside tolerance",
            Self::SignatureMalformed { .. } => "malformed X-Signature",
            // Everything that decides whether the signature authenticates the body gets the
            // same answer, so a client learns nothing about tenants from it.
            Self::SignatureMismatch | Self::TenantMismatch { .. } => "signature mismatch",
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader { name } => {
                write!(f, "the {name} header is missing; is the request from OpenMail?")
            }
            Self::DuplicateHeader { name } => write!(
                f,
                "the {name} header appears more than once; OpenMail sends it exactly once"
            ),
            Self::TimestampMalformed => f.write_str(
                "X-Timestamp is not a decimal integer; OpenMail sends Unix seconds such as 1790000000",
            ),
            Self::TimestampOutOfRange => {
                f.write_str("X-Timestamp does not fit a 64-bit Unix time; check the sender")
            }
            Self::TimestampOutsideTolerance { offset, tolerance } => {
                let (distance, direction) = if *offset >= 0 {
                    (offset.unsigned_abs(), "old")
                } else {
                    (offset.unsigned_abs(), "in the future")
                };
                write!(
                    f,
                    "X-Timestamp is {distance} s {direction} (tolerance {tolerance} s); \
                     check the server clock, or whether this is a replayed delivery"
                )
            }
            Self::SignatureMalformed {
                length,
                invalid_at: None,
            } => write!(
                f,
                "X-Signature is {length} bytes long; expected 64 hex digits with no prefix"
            ),
            Self::SignatureMalformed {
                invalid_at: Some(at),
                ..
            } => write!(
                f,
                "X-Signature has a byte that is not a hex digit at position {at}; \
                 expected 64 hex digits with no prefix"
            ),
            Self::SignatureMismatch => f.write_str(
                "X-Signature matches none of the configured secrets; check the webhook secret, \
                 and that the body reaches the verifier exactly as received",
            ),
            Self::TenantMismatch {
                scope,
                inbox_id: None,
            } => write!(
                f,
                "the signature verified under a secret of {scope}, but the body names no inbox, \
                 or its envelope cannot be read; only the account's secret authenticates such \
                 a body"
            ),
            Self::TenantMismatch { scope, inbox_id } => write!(
                f,
                "the signature verified under a secret of {scope}, but the body names inbox {}; \
                 one tenant's secret cannot authenticate another tenant's events",
                LogSafe::or_dash(inbox_id.as_deref()),
            ),
        }
    }
}

impl std::error::Error for VerifyError {}

/// A configuration that cannot verify anything.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A secret is empty. An empty HMAC key lets anyone sign.
    EmptySecret,
    /// A secret starts or ends with whitespace, such as the newline of a file or an
    /// environment variable set with `echo`. OpenMail's secrets never do, and the MAC
    /// would fail for every delivery.
    SecretWhitespace,
    /// No secret was given.
    NoSecrets,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptySecret => f.write_str(
                "the webhook secret is empty; copy it from the OpenMail dashboard or API",
            ),
            Self::SecretWhitespace => f.write_str(
                "the webhook secret starts or ends with whitespace (often a trailing newline \
                 from a file or `echo`); OpenMail's secrets have none, so every delivery would \
                 fail with a signature mismatch: trim it where it is read",
            ),
            Self::NoSecrets => f.write_str("no webhook secret was configured"),
        }
    }
}

impl std::error::Error for ConfigError {}
