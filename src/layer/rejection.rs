use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::event::NotAnEvent;
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
    /// The body did not arrive within the deadline set with
    /// `VerifyOpenMailLayer::body_deadline` (`tokio` feature): a stalled or deliberately
    /// slow upload.
    BodyTimeout {
        /// The configured deadline.
        deadline: Duration,
    },
    /// The body verified but is not an OpenMail event.
    NotAnEvent(NotAnEvent),
}

impl Rejection {
    /// The status the default response uses: `413` for an oversized body, `408` for a body
    /// that missed its deadline, `400` for every other rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Verify(_) | Self::BodyRead(_) | Self::NotAnEvent(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A short reason, safe to send to the client.
    pub fn client_message(&self) -> &'static str {
        match self {
            Self::Verify(error) => error.client_message(),
            Self::PayloadTooLarge { .. } => "payload too large",
            Self::BodyRead(_) => "request body could not be read",
            Self::BodyTimeout { .. } => "request body timed out",
            Self::NotAnEvent(_) => "body is not an OpenMail event",
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
            Self::BodyTimeout { deadline } => write!(
                f,
                "the body did not arrive within the {} ms deadline; a stalled or very slow \
                 client, or raise `body_deadline` if genuine deliveries are this slow",
                deadline.as_millis()
            ),
            Self::NotAnEvent(error) => error.fmt(f),
        }
    }
}

impl StdError for Rejection {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Verify(error) => Some(error),
            Self::BodyRead(error) => Some(&**error),
            Self::NotAnEvent(error) => Some(error),
            Self::PayloadTooLarge { .. } | Self::BodyTimeout { .. } => None,
        }
    }
}
