//! The body read deadline of [`VerifyOpenMailLayer::body_deadline`](super::VerifyOpenMailLayer),
//! armed only with the `tokio` feature. Without it this is an empty type whose check never
//! fires, so the response future reads the same either way.

use std::task::Context;

use super::{Config, Rejection};

/// The deadline of one request's body, started when the request reaches the layer.
pub(crate) struct BodyDeadline {
    #[cfg(feature = "tokio")]
    timer: Option<Timer>,
}

#[cfg(feature = "tokio")]
struct Timer {
    deadline: std::time::Duration,
    // Boxed, so the response future's state machine needs no pinned field for it: one
    // allocation per request, and only when a deadline is configured.
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl BodyDeadline {
    /// Starts the configured deadline, if any.
    #[cfg_attr(not(feature = "tokio"), allow(unused_variables))]
    pub(crate) fn start(config: &Config) -> Self {
        Self {
            #[cfg(feature = "tokio")]
            timer: config.body_deadline.and_then(|deadline| {
                // `tokio::time::sleep` panics outside a runtime; a server on another runtime
                // gets no deadline rather than a crash.
                tokio::runtime::Handle::try_current().ok()?;
                Some(Timer {
                    deadline,
                    sleep: Box::pin(tokio::time::sleep(deadline)),
                })
            }),
        }
    }

    /// The rejection to answer with once the deadline has passed. Until then it registers
    /// the task to be woken when it does, so a body that never sends again is still ended.
    #[cfg_attr(not(feature = "tokio"), allow(unused_variables))]
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Option<Rejection> {
        #[cfg(feature = "tokio")]
        if let Some(timer) = &mut self.timer {
            if std::future::Future::poll(timer.sleep.as_mut(), cx).is_ready() {
                return Some(Rejection::BodyTimeout {
                    deadline: timer.deadline,
                });
            }
        }
        None
    }
}
