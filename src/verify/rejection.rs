use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use tower::BoxError;

use crate::VerifyError;
use crate::tenant::Tenant;

/// Why the layer refused a request.
///
/// `Display` gives the precise reason for the application's logs, with every value taken
/// from the request escaped and cut short ([`LogSafe`](crate::LogSafe));
/// [`client_message`](Rejection::client_message) is the short one the client receives.
/// Whatever decides whether a signature authenticates a body (a wrong signature, an
/// unknown inbox, another tenant's secret) gets one answer, so a client learns nothing
/// about tenants from it.
///
/// Nothing here concerns a verified body's content: once the signature verifies, the
/// event reaches the inner service, as [`Event::Malformed`](crate::Event::Malformed) when
/// the model cannot read it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// The signature check failed: a header is missing or malformed, the timestamp is
    /// outside the tolerance, the signature does not match, or (per-inbox secrets) the
    /// matching secret does not cover the inbox the body names.
    Verify(VerifyError),
    /// The body is larger than the limit.
    PayloadTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
        /// The size declared by `Content-Length` or the body's size hint, when that was
        /// what gave it away; `None` when the body crossed the limit while streaming.
        declared: Option<u64>,
    },
    /// The body stream failed before it ended: the client went away, or the connection
    /// broke. [`source`](StdError::source) gives the stream's error.
    BodyRead(BoxError),
    /// The body did not arrive in time: past its deadline, or slower than the minimum rate
    /// ([`VerifyOpenMailLayer::min_body_rate`](crate::VerifyOpenMailLayer::min_body_rate)).
    BodyTimeout {
        /// The configured overall deadline.
        deadline: Duration,
        /// The bytes that had arrived.
        received: usize,
    },
    /// The bodies being read already hold the layer's memory budget
    /// ([`VerifyOpenMailLayer::memory_budget`](crate::VerifyOpenMailLayer::memory_budget)).
    /// Answered `503` with `Retry-After`, so OpenMail retries.
    OverBudget {
        /// The budget, in bytes.
        budget: usize,
    },
    /// Per-inbox secrets: the resolver knows no secret for the tenant the delivery names,
    /// or the id it names is too long to be one.
    UnknownTenant {
        /// The tenant the resolver routed the delivery to.
        tenant: Tenant,
    },
    /// Per-inbox secrets: the resolver failed, for example because the database is down,
    /// or too many lookups were already running. Answered `503` with `Retry-After`.
    /// [`source`](StdError::source) gives the resolver's error.
    SecretLookup(BoxError),
    /// Per-inbox secrets: the lookup did not finish within the body deadline. Answered
    /// `503` with `Retry-After`.
    LookupTimeout {
        /// The configured overall deadline.
        deadline: Duration,
    },
}

impl Rejection {
    /// The status the default response uses: `413` for an oversized body, `408` for a
    /// body that missed its deadline, `503` when a dependency or the memory budget cannot
    /// serve it now (so OpenMail retries), `400` for every other rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::OverBudget { .. } | Self::SecretLookup(_) | Self::LookupTimeout { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Verify(_) | Self::BodyRead(_) | Self::UnknownTenant { .. } => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// The `Retry-After` the default response sends: 30 s (OpenMail's first retry
    /// interval) with every `503`, nothing otherwise.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(crate::RETRY_AFTER)
    }

    /// A short reason, safe to send to the client.
    pub fn client_message(&self) -> &'static str {
        match self {
            Self::Verify(error) => error.client_message(),
            Self::PayloadTooLarge { .. } => "payload too large",
            Self::BodyRead(_) => "request body could not be read",
            Self::BodyTimeout { .. } => "request body timed out",
            Self::OverBudget { .. } => "busy, retry later",
            // The same answer as any other forgery: the client learns nothing about tenants.
            Self::UnknownTenant { .. } => "signature mismatch",
            Self::SecretLookup(_) | Self::LookupTimeout { .. } => {
                "secret lookup failed, retry later"
            }
        }
    }

    /// The verification error, when that is what this rejection is.
    pub fn verify_error(&self) -> Option<&VerifyError> {
        match self {
            Self::Verify(error) => Some(error),
            _ => None,
        }
    }

    /// The default response: [`status`](Self::status) with the
    /// [`client_message`](Self::client_message) as `text/plain`, and `Retry-After` with a
    /// `503`.
    pub fn default_response(&self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from_static(self.client_message().as_bytes()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(after) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
        }
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verify(error) => error.fmt(f),
            Self::PayloadTooLarge {
                limit,
                declared: Some(declared),
            } => write!(
                f,
                "the body declares {declared} bytes, over the {limit}-byte limit; \
                 raise `body_limit` if genuine deliveries are this large"
            ),
            Self::PayloadTooLarge {
                limit,
                declared: None,
            } => write!(
                f,
                "the body streamed past the {limit}-byte limit; \
                 raise `body_limit` if genuine deliveries are this large"
            ),
            Self::BodyRead(_) => f.write_str("the request body failed while streaming"),
            Self::BodyTimeout { deadline, received } => write!(
                f,
                "the body did not arrive in time ({received} bytes received; deadline {} ms, \
                 and a minimum rate after the grace period): a stalled or very slow client, \
                 or raise `body_deadline`/`min_body_rate` if genuine deliveries are this slow",
                deadline.as_millis()
            ),
            Self::OverBudget { budget } => write!(
                f,
                "the bodies being read already hold the {budget}-byte memory budget; answered \
                 503 so OpenMail retries (many slow or large uploads at once: an attack, or \
                 raise `memory_budget`)"
            ),
            Self::UnknownTenant { tenant } => write!(
                f,
                "no secret is known for {tenant}; add it to the resolver, or configure an \
                 account fallback"
            ),
            Self::SecretLookup(_) => f.write_str(
                "looking up the tenant's secret failed; answered 503 so OpenMail retries",
            ),
            Self::LookupTimeout { deadline } => write!(
                f,
                "the tenant's secret lookup did not finish within the {} ms deadline; \
                 answered 503 so OpenMail retries",
                deadline.as_millis()
            ),
        }
    }
}

impl StdError for Rejection {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            // Shown in `Display` already: their own causes come next.
            Self::Verify(error) => error.source(),
            Self::BodyRead(error) | Self::SecretLookup(error) => Some(&**error),
            Self::PayloadTooLarge { .. }
            | Self::BodyTimeout { .. }
            | Self::OverBudget { .. }
            | Self::UnknownTenant { .. }
            | Self::LookupTimeout { .. } => None,
        }
    }
}
