use std::error::Error as StdError;
use std::fmt;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::event::NotAnEvent;
use crate::tenant::SecretScope;
use crate::VerifyError;

/// A boxed error, as body streams and services report them.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why the layer refused a request.
///
/// `Display` gives the precise reason for the application's logs; [`client_message`]
/// is the short one the client receives.
///
/// [`client_message`]: Rejection::client_message
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// The signature check failed: a header is missing or malformed, the timestamp is
    /// outside the tolerance, or the signature does not match.
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
    /// broke.
    BodyRead(BoxError),
    /// The body verified but is not an OpenMail event.
    NotAnEvent(NotAnEvent),
    /// Per-tenant secrets: the body's top-level `inbox_id` or `pod_id` is not a single
    /// string, so the tenant it claims cannot be told.
    TenantClaim(String),
    /// Per-tenant secrets: no secret is known for the tenant the delivery names.
    UnknownTenant {
        /// The body's claimed `inbox_id`.
        inbox_id: Option<String>,
        /// The body's claimed `pod_id`.
        pod_id: Option<String>,
    },
    /// Per-tenant secrets: the signature verified under a secret whose scope does not cover
    /// the inbox or pod the body names.
    TenantMismatch {
        /// The scope of the secret that matched.
        scope: SecretScope,
        /// The body's claimed `inbox_id`.
        inbox_id: Option<String>,
        /// The body's claimed `pod_id`.
        pod_id: Option<String>,
    },
    /// Per-tenant secrets: the resolver failed, for example because the database is down.
    /// Answered with `503` so that OpenMail retries.
    SecretLookup(BoxError),
}

impl Rejection {
    /// The status the default response uses: `413` for an oversized body, `503` when a
    /// tenant's secret lookup failed (so OpenMail retries), `400` for every other rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SecretLookup(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Verify(_)
            | Self::BodyRead(_)
            | Self::NotAnEvent(_)
            | Self::TenantClaim(_)
            | Self::UnknownTenant { .. }
            | Self::TenantMismatch { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// A short reason, safe to send to the client.
    pub fn client_message(&self) -> &'static str {
        match self {
            Self::Verify(error) => error.client_message(),
            Self::PayloadTooLarge { .. } => "payload too large",
            Self::BodyRead(_) => "request body could not be read",
            Self::NotAnEvent(_) => "body is not an OpenMail event",
            Self::TenantClaim(_) => "unreadable inbox_id or pod_id",
            Self::UnknownTenant { .. } => "no secret for this inbox",
            // The same answer as any other forgery: the client learns nothing about tenants.
            Self::TenantMismatch { .. } => "signature mismatch",
            Self::SecretLookup(_) => "secret lookup failed, retry later",
        }
    }

    /// The verification error, when that is what this rejection is.
    pub fn verify_error(&self) -> Option<&VerifyError> {
        match self {
            Self::Verify(error) => Some(error),
            _ => None,
        }
    }

    /// The status the default response uses: `413` for an oversized body, `503` when the
    /// secret lookup failed, `400` for every other rejection.
    /// The default response: [`status`](Self::status) with the
    /// [`client_message`](Self::client_message) as `text/plain`.
    pub fn default_response(&self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from_static(self.client_message().as_bytes()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
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
            Self::BodyRead(error) => write!(f, "the request body failed while streaming: {error}"),
            Self::NotAnEvent(error) => error.fmt(f),
            Self::TenantClaim(error) => write!(
                f,
                "the body's top-level inbox_id or pod_id is not a single string, so its tenant \
                 cannot be told: {error}"
            ),
            Self::UnknownTenant { inbox_id, pod_id } => write!(
                f,
                "no secret is known for inbox {} (pod {}); add it to the resolver, or configure \
                 an account fallback",
                inbox_id.as_deref().unwrap_or("-"),
                pod_id.as_deref().unwrap_or("-"),
            ),
            Self::TenantMismatch {
                scope,
                inbox_id,
                pod_id,
            } => write!(
                f,
                "the signature verified under a secret of {scope}, but the body names inbox {} \
                 (pod {}); one tenant's secret cannot authenticate another tenant's events",
                inbox_id.as_deref().unwrap_or("-"),
                pod_id.as_deref().unwrap_or("-"),
            ),
            Self::SecretLookup(error) => write!(
                f,
                "looking up the tenant's secret failed: {error}; answered 503 so OpenMail retries"
            ),
        }
    }
}

impl StdError for Rejection {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Verify(error) => Some(error),
            Self::BodyRead(error) => Some(&**error),
            Self::NotAnEvent(error) => Some(error),
            Self::SecretLookup(error) => Some(&**error),
            Self::PayloadTooLarge { .. }
            | Self::TenantClaim(_)
            | Self::UnknownTenant { .. }
            | Self::TenantMismatch { .. } => None,
        }
    }
}
