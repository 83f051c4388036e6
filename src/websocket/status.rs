use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::StatusCode;

use super::REPLAY_LIMIT;
use super::error::{Source, WebSocketError};
use crate::LogSafe;

/// What the client is doing, reported to the hook set with
/// [`WebSocketClient::on_status`](super::WebSocketClient::on_status) and, with the `tracing`
/// feature, to `tracing`.
///
/// Strings that came from the server (event ids, messages) are kept as received, so that
/// they can be compared; `Display` escapes them and cuts them short (see
/// [`LogSafe`](crate::LogSafe)), and so should any other way of printing them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientStatus {
    /// Opening a connection; `attempt` counts from 1 since the last good connection.
    Connecting {
        /// The attempt's number.
        attempt: u32,
    },
    /// The server confirmed the subscription. Empty lists mean "all".
    Subscribed {
        /// The inboxes the connection receives events of.
        inbox_ids: Vec<String>,
        /// The event types the connection receives.
        event_types: Vec<String>,
    },
    /// The subscription asked for a replay of the events after `from`, the last event
    /// handled in order.
    Resumed {
        /// The `last_event_id` sent.
        from: String,
    },
    /// The connection ended; the client connects again after `delay`.
    Reconnecting {
        /// How long the client waits first.
        delay: Duration,
        /// Why the connection ended.
        reason: WebSocketError,
    },
    /// Events may have been missed that the WebSocket will not replay. OpenMail delivers
    /// events that occur while no WebSocket is connected by webhook, **only if a webhook
    /// URL is set** for the account or the inbox; without one, they are stored and marked
    /// failed.
    PossibleGap {
        /// Why.
        reason: GapReason,
    },
    /// A message was not an event and could not be used (a binary frame, a control
    /// message of an unknown type or with fields that don't fit it); it was skipped, and
    /// the stream goes on. Every other message is an event, and reaches the service.
    SkippedMessage {
        /// What was wrong with it.
        reason: SkipReason,
    },
    /// The server sent an `error` message.
    ServerError {
        /// Its `message`, as received.
        message: String,
    },
    /// The server confirmed an `unsubscribe`.
    Unsubscribed {
        /// The inboxes removed; empty means all.
        inbox_ids: Vec<String>,
    },
    /// The service answered an event with a `2xx`.
    EventHandled {
        /// The event's `event_id`, as received.
        event_id: Option<String>,
        /// The event's type.
        event_type: String,
        /// The service's status.
        status: StatusCode,
        /// Attempts it took, from 1.
        attempts: u32,
    },
    /// A replayed event that this process had already handled; the service was not
    /// called again.
    AlreadyHandled {
        /// The event's `event_id`, as received.
        event_id: String,
    },
    /// The service failed an event on every attempt, and the client gave up on it: the
    /// resume position moves past it, and the WebSocket never delivers it again (see the
    /// module docs). This is the dead letter: keep `event` (its bytes are
    /// [`Event::raw`](crate::Event::raw)), in a table, a file or a queue, to handle it
    /// later; without a [status hook](super::WebSocketClient::on_status), it is only
    /// reported.
    HandlerFailed {
        /// The event, with its bytes as received.
        event: std::sync::Arc<crate::Event>,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's failure.
        failure: HandlerFailure,
    },
    /// The [`ResumeStore`](super::ResumeStore) failed to save the position; the client
    /// keeps it in memory and saves the next one.
    ResumeSaveFailed {
        /// The store's error.
        error: WebSocketError,
    },
}

/// Why events may have been missed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapReason {
    /// The resume store holds no position (a first start, or a restart with the in-memory
    /// store): events that occurred before this connection are not replayed.
    NoResumePosition,
    /// The server did not know the stored position (`error` on `subscribe`), so the
    /// client subscribed without a replay.
    PositionUnknown {
        /// The `last_event_id` the server refused, as sent.
        last_event_id: String,
    },
    /// The replay reached its cap of 100 events: more may have occurred after them that
    /// the WebSocket will not bring.
    ReplayLimitReached {
        /// Events that arrived in the replay.
        replayed: usize,
    },
    /// Events this process received but has not handled lie further than 100 events
    /// after the resume position, beyond what a replay brings.
    BeyondReplay {
        /// How many.
        unhandled: usize,
    },
}

/// Why a message was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A binary frame; OpenMail sends JSON text.
    Binary {
        /// Its length in bytes.
        len: usize,
    },
    /// A control message of a type the protocol does not define.
    UnknownType {
        /// The `type`, as received.
        kind: String,
    },
    /// A control message whose fields don't fit its type.
    MalformedControl {
        /// The `type`, as received.
        kind: String,
        /// The parser's explanation.
        detail: String,
    },
}

/// Why the service failed an event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HandlerFailure {
    /// It answered with a status other than `2xx`.
    Status(StatusCode),
    /// It returned an error.
    Error(Source),
    /// It panicked.
    Panicked,
}

impl fmt::Display for HandlerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "answered {status}"),
            Self::Error(error) => write!(f, "failed: {}", Chain::foreign(&**error)),
            Self::Panicked => f.write_str("panicked"),
        }
    }
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoResumePosition => f.write_str(
                "no resume position is stored, so events from before this connection are \
                 not replayed",
            ),
            Self::PositionUnknown { last_event_id } => write!(
                f,
                "the server does not know the resume position {}, so nothing was replayed",
                LogSafe::new(last_event_id)
            ),
            Self::ReplayLimitReached { replayed } => write!(
                f,
                "the replay brought {replayed} events, its cap is {REPLAY_LIMIT}: more than \
                 {REPLAY_LIMIT} events may have been missed"
            ),
            Self::BeyondReplay { unhandled } => write!(
                f,
                "{unhandled} unhandled events lie more than {REPLAY_LIMIT} events after the \
                 resume position, beyond what a replay brings"
            ),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Binary { len } => write!(f, "a binary frame of {len} bytes"),
            Self::UnknownType { kind } => {
                write!(f, "an unknown message type {:?}", LogSafe::new(kind))
            }
            Self::MalformedControl { kind, detail } => write!(
                f,
                "a malformed {} message ({})",
                LogSafe::new(kind),
                LogSafe::new(detail)
            ),
        }
    }
}

/// An error and its causes on one line. A status is not an error, so it shows the whole
/// chain; each part is escaped and cut short, since causes such as a TLS error can quote
/// what the server sent (the names in its certificate).
/// The crate's own errors already escape what they quote, and are shown whole; anyone
/// else's is escaped.
struct Chain<'a> {
    error: &'a (dyn StdError + 'static),
    own: bool,
}

impl<'a> Chain<'a> {
    fn own(error: &'a WebSocketError) -> Self {
        Self { error, own: true }
    }

    fn foreign(error: &'a (dyn StdError + 'static)) -> Self {
        Self { error, own: false }
    }
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.own {
            write!(f, "{}", self.error)?;
        } else {
            write!(f, "{}", LogSafe::new(&self.error.to_string()))?;
        }
        let mut source = self.error.source();
        // A few levels say enough; a cyclic or endless chain must not hang the printer.
        for _ in 0..8 {
            let Some(cause) = source else { break };
            write!(f, ": {}", LogSafe::new(&cause.to_string()))?;
            source = cause.source();
        }
        Ok(())
    }
}

/// Joins ids for display, each escaped; an empty list is "all".
struct List<'a>(&'a [String]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("all");
        }
        for (index, item) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", LogSafe::new(item))?;
            if index >= 9 {
                let left = self.0.len().saturating_sub(index.saturating_add(1));
                if left > 0 {
                    write!(f, ",…(+{left})")?;
                }
                break;
            }
        }
        Ok(())
    }
}

impl fmt::Display for ClientStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connecting { attempt } => write!(f, "connecting (attempt {attempt})"),
            Self::Subscribed {
                inbox_ids,
                event_types,
            } => write!(
                f,
                "subscribed: inboxes {}, event types {}",
                List(inbox_ids),
                List(event_types)
            ),
            Self::Resumed { from } => {
                write!(f, "resumed after event {}", LogSafe::new(from))
            }
            Self::Reconnecting { delay, reason } => write!(
                f,
                "reconnecting in {} ms: {}",
                delay.as_millis(),
                Chain::own(reason)
            ),
            Self::PossibleGap { reason } => write!(
                f,
                "possible gap: {reason}; OpenMail delivers events missed by the WebSocket \
                 by webhook only if a webhook URL is set"
            ),
            Self::SkippedMessage { reason } => write!(f, "skipped a message: {reason}"),
            Self::ServerError { message } => {
                write!(f, "server error: {}", LogSafe::new(message))
            }
            Self::Unsubscribed { inbox_ids } => {
                write!(f, "unsubscribed: inboxes {}", List(inbox_ids))
            }
            Self::EventHandled {
                event_id,
                event_type,
                status,
                attempts,
            } => write!(
                f,
                "handled {} {} ({}, attempt {attempts})",
                LogSafe::new(event_type),
                LogSafe::or_dash(event_id.as_deref()),
                status.as_u16()
            ),
            Self::AlreadyHandled { event_id } => write!(
                f,
                "replayed event {} was already handled",
                LogSafe::new(event_id)
            ),
            Self::HandlerFailed {
                event,
                attempts,
                failure,
            } => write!(
                f,
                "handler failed {} {} after {attempts} attempts ({failure}); given up, the \
                 resume position moves past it",
                LogSafe::new(event.event_type()),
                LogSafe::or_dash(event.event_id()),
            ),
            Self::ResumeSaveFailed { error } => {
                write!(
                    f,
                    "could not save the resume position: {}",
                    Chain::own(error)
                )
            }
        }
    }
}
