use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::LogSafe;

/// The cause an error carries: shared, so that [`WebSocketError`] and
/// [`ClientStatus`](super::ClientStatus) can be cloned and kept.
pub(crate) type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// What went wrong with the WebSocket client: a configuration it refused, the reason a
/// connection ended, or the error that stopped it.
///
/// [`WebSocketClient::serve`](super::WebSocketClient::serve) returns only the errors that
/// retrying cannot fix ([`Unauthorized`](Self::Unauthorized),
/// [`SubscribeRefused`](Self::SubscribeRefused),
/// [`InvalidDispatchPath`](Self::InvalidDispatchPath)); every other one ends a connection,
/// is reported in [`ClientStatus::Reconnecting`](super::ClientStatus::Reconnecting), and the client
/// connects again.
///
/// None of them shows the API key. Values that came from the server (a close reason, an
/// error message) are escaped and cut short in `Display`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WebSocketError {
    /// The API key is empty, blank, or holds characters an HTTP header cannot carry.
    InvalidApiKey,
    /// The URL cannot be used.
    InvalidUrl {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `ws://` URL to a host that is not a loopback address: events carry no signature,
    /// so only TLS protects them in transit.
    InsecureUrl,
    /// The dispatch path is not a valid request path.
    InvalidDispatchPath,
    /// The server refused the API key: close code `4001`, or `401`/`403` on the upgrade.
    Unauthorized,
    /// The server answered the `subscribe` message with an `error`, for example an inbox
    /// the account does not own.
    SubscribeRefused {
        /// The server's message, as received.
        message: String,
    },
    /// The server answered a `subscribe` that carried the resume position with an
    /// `error`. The client keeps the position and tries it again on a new connection, a
    /// few times, before it subscribes without it and reports
    /// [`GapReason::PositionUnknown`](super::GapReason::PositionUnknown).
    PositionRefused {
        /// The `last_event_id` sent, as sent.
        last_event_id: String,
        /// The server's message, as received.
        message: String,
        /// How many subscriptions in a row carried it and got an `error`, from 1.
        tries: u32,
    },
    /// The TCP connection, the TLS handshake or the WebSocket upgrade failed; the cause is
    /// in [`source`](StdError::source).
    Connect {
        /// The underlying error.
        source: Source,
    },
    /// The server answered the WebSocket upgrade with this HTTP status instead of `101`.
    UpgradeRefused {
        /// The HTTP status.
        status: u16,
    },
    /// Connecting (TCP, TLS and the upgrade) took longer than this.
    ConnectTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The server did not confirm the subscription within this time.
    SubscribeTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// The server did not answer an application-level `ping` within this time.
    PongTimeout {
        /// The configured timeout.
        timeout: Duration,
    },
    /// Close code `4008`: the account has too many connections open.
    TooManyConnections,
    /// Close code `4029`: this connection sent too many messages.
    RateLimited,
    /// The server closed the connection with another code (`1001` when it shuts down).
    Closed {
        /// The close code.
        code: u16,
        /// The close reason, as received.
        reason: String,
    },
    /// The connection ended without a close frame.
    Ended,
    /// Reading from or writing to the connection failed; the cause is in
    /// [`source`](StdError::source).
    Transport {
        /// The underlying error.
        source: Source,
    },
    /// The [`ResumeStore`](super::ResumeStore) failed; the cause is in
    /// [`source`](StdError::source).
    ResumeStore {
        /// The store's error.
        source: Source,
    },
}

impl WebSocketError {
    pub(crate) fn connect(source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Connect {
            source: Arc::new(source),
        }
    }

    pub(crate) fn transport(source: impl StdError + Send + Sync + 'static) -> Self {
        Self::Transport {
            source: Arc::new(source),
        }
    }

    /// Whether retrying cannot help, so that the client stops.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::InvalidApiKey
                | Self::InvalidUrl { .. }
                | Self::InsecureUrl
                | Self::InvalidDispatchPath
                | Self::Unauthorized
                | Self::SubscribeRefused { .. }
        )
    }

    /// The close code the server sent, when a close frame ended the connection.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::Unauthorized => Some(4001),
            Self::TooManyConnections => Some(4008),
            Self::RateLimited => Some(4029),
            Self::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for WebSocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidApiKey => f.write_str(
                "the OpenMail API key is empty or not printable ASCII; \
                 copy it from the OpenMail dashboard (it is not the webhook secret)",
            ),
            Self::InvalidUrl { reason } => write!(
                f,
                "the WebSocket URL is not usable: {reason}; \
                 expected wss://host[:port]/path, such as {}",
                super::DEFAULT_URL
            ),
            Self::InsecureUrl => f.write_str(
                "ws:// is allowed only to a literal loopback address (127.0.0.0/8, ::1; \
                 localhost means 127.0.0.1); use wss:// so that the API key and the events \
                 travel over TLS",
            ),
            Self::InvalidDispatchPath => f.write_str(
                "the dispatch path is not a valid request path; use an absolute path \
                 such as /webhooks",
            ),
            Self::Unauthorized => f.write_str(
                "OpenMail refused the API key (close code 4001): it is invalid, revoked or \
                 rotated; check OPENMAIL_API_KEY against the dashboard",
            ),
            Self::SubscribeRefused { message } => write!(
                f,
                "OpenMail refused the subscription: {}; check the inbox ids and event \
                 types (an inbox must belong to the account)",
                LogSafe::new(message)
            ),
            Self::PositionRefused {
                last_event_id,
                message,
                tries,
            } => write!(
                f,
                "OpenMail answered the subscription resuming after event {} with an error \
                 ({tries} in a row): {}; the position is kept and tried again",
                LogSafe::new(last_event_id),
                LogSafe::new(message)
            ),
            Self::Connect { .. } => f.write_str(
                "could not connect to the OpenMail WebSocket; check the URL, DNS, the \
                 network and any proxy",
            ),
            Self::UpgradeRefused { status } => write!(
                f,
                "the server answered the WebSocket upgrade with HTTP {status}; check that \
                 the URL is OpenMail's WebSocket endpoint"
            ),
            Self::ConnectTimeout { timeout } => write!(
                f,
                "connecting to the OpenMail WebSocket took more than {} ms; check the \
                 network",
                timeout.as_millis()
            ),
            Self::SubscribeTimeout { timeout } => write!(
                f,
                "OpenMail did not confirm the subscription within {} ms",
                timeout.as_millis()
            ),
            Self::PongTimeout { timeout } => write!(
                f,
                "OpenMail did not answer a ping within {} ms; the connection is presumed \
                 dead",
                timeout.as_millis()
            ),
            Self::TooManyConnections => f.write_str(
                "OpenMail closed the connection: too many connections for the account \
                 (close code 4008, at most 10); check for other processes using the key",
            ),
            Self::RateLimited => f.write_str(
                "OpenMail closed the connection: too many messages (close code 4029, at \
                 most 30 per 10 s)",
            ),
            Self::Closed { code, reason } if reason.is_empty() => {
                write!(f, "the server closed the connection with code {code}")
            }
            Self::Closed { code, reason } => write!(
                f,
                "the server closed the connection with code {code}: {}",
                LogSafe::new(reason)
            ),
            Self::Ended => f.write_str("the connection ended without a close frame"),
            Self::Transport { .. } => f.write_str("the WebSocket connection failed"),
            Self::ResumeStore { .. } => f.write_str(
                "the resume store failed; the resume position could not be read or saved",
            ),
        }
    }
}

impl StdError for WebSocketError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Connect { source }
            | Self::Transport { source }
            | Self::ResumeStore { source } => Some(&**source),
            _ => None,
        }
    }
}
