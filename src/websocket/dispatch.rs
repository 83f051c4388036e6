//! One event, handed to the service: the request it becomes, and the in-process retries.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use tokio::sync::{Semaphore, watch};
use tower::{BoxError, Service};

use super::backoff::Backoff;
use super::status::HandlerFailure;
use crate::body::VerifiedBody;
use crate::{Delivery, Event};

/// What every event's handling shares.
pub(crate) struct Handling {
    /// The request URI.
    pub(crate) path: Uri,
    /// Retries after the first attempt.
    pub(crate) retries: u32,
    /// Tries again after a `409` (the same event in flight elsewhere), which use none of
    /// the `retries`.
    pub(crate) in_flight_retries: u32,
    pub(crate) backoff: Backoff,
    /// One permit per attempt in progress: the concurrency bound. A retry waiting out its
    /// delay holds none, so it never keeps later events waiting.
    pub(crate) permits: Arc<Semaphore>,
    /// Becomes `true` when the client stops: no new attempt starts.
    pub(crate) stopping: watch::Receiver<bool>,
}

/// How the handling of one event ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Handled {
        status: StatusCode,
        attempts: u32,
    },
    Failed {
        attempts: u32,
        failure: HandlerFailure,
    },
    /// The client stopped first; the event was not handled.
    Stopped,
}

/// The request the service gets for an event: `POST` to the dispatch path, the event's
/// bytes as the body, and the extensions the webhook layer inserts, a [`Delivery`] (with
/// [`Channel::WebSocket`](crate::Channel::WebSocket)) and the `Arc<Event>`.
pub(crate) fn request(path: &Uri, event: &Arc<Event>) -> Request<VerifiedBody> {
    let body: Bytes = event.raw().clone();
    let mut request = Request::new(VerifiedBody::new(body.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = path.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let extensions = request.extensions_mut();
    extensions.insert(Delivery::websocket(body, Some(Arc::clone(event))));
    extensions.insert(Arc::clone(event));
    request
}

/// Hands `event` to `service` until it answers `2xx`, at most `1 + retries` times, with
/// backoff between attempts.
///
/// A `409 Conflict` is what the deduplication layer answers while another copy of the
/// same event is being handled (by the webhook route, or by another replica): not a
/// failure, but "not yet". It is tried again after the same backoff, at most
/// `in_flight_retries` times, without counting towards `retries`; once the other copy
/// is done, the layer answers `200`. Past that bound it is a failure like any other.
pub(crate) async fn handle<S, B>(
    mut service: S,
    event: Arc<Event>,
    handling: Arc<Handling>,
) -> Outcome
where
    S: Service<Request<VerifiedBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    let mut stopping = handling.stopping.clone();
    let mut attempts: u32 = 0;
    let mut failures: u32 = 0;
    let mut conflicts: u32 = 0;
    loop {
        let permit = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return Outcome::Stopped,
            permit = handling.permits.acquire() => match permit {
                Ok(permit) => permit,
                Err(_) => return Outcome::Stopped,
            },
        };
        attempts = attempts.saturating_add(1);
        let attempt = AssertUnwindSafe(attempt(&mut service, request(&handling.path, &event)));
        let failure = match attempt.catch_unwind().await {
            Ok(Ok(status)) if status.is_success() => return Outcome::Handled { status, attempts },
            Ok(Ok(status)) => HandlerFailure::Status(status),
            Ok(Err(error)) => HandlerFailure::Error(Arc::from(error)),
            Err(_panic) => HandlerFailure::Panicked,
        };
        drop(permit);
        let step = if matches!(failure, HandlerFailure::Status(StatusCode::CONFLICT))
            && conflicts < handling.in_flight_retries
        {
            conflicts = conflicts.saturating_add(1);
            conflicts.saturating_sub(1)
        } else {
            failures = failures.saturating_add(1);
            if failures > handling.retries {
                return Outcome::Failed { attempts, failure };
            }
            failures.saturating_sub(1)
        };
        let delay = handling.backoff.jittered(step);
        tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => return Outcome::Stopped,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One attempt: readiness, then the call. Only the status matters; the body is dropped
/// unread, as a webhook sender would.
async fn attempt<S, B>(
    service: &mut S,
    request: Request<VerifiedBody>,
) -> Result<StatusCode, BoxError>
where
    S: Service<Request<VerifiedBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = service.call(request).await.map_err(Into::into)?;
    Ok(response.status())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Channel;
    use crate::websocket::DEFAULT_IN_FLIGHT_RETRIES;

    #[test]
    fn the_in_flight_tries_span_one_to_two_minutes_by_default() {
        // The client's default retry schedule: 1 s doubling to 30 s, jittered down to half.
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let most: Duration = (0..DEFAULT_IN_FLIGHT_RETRIES)
            .map(|step| backoff.delay(step, 1.0))
            .sum();
        let least: Duration = (0..DEFAULT_IN_FLIGHT_RETRIES)
            .map(|step| backoff.delay(step, 0.0))
            .sum();
        assert_eq!(most, Duration::from_secs(121));
        assert!(least >= Duration::from_secs(60), "{least:?}");
    }

    #[test]
    fn the_request_carries_what_the_webhook_layer_inserts() {
        let body = Bytes::from_static(
            br#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a"}"#,
        );
        let event = Arc::new(Event::parse(body.clone()));
        let request = request(&Uri::from_static("/webhooks"), &event);
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/webhooks");
        assert_eq!(request.headers()[CONTENT_TYPE], "application/json");
        let delivery = request.extensions().get::<Delivery>().unwrap();
        assert_eq!(delivery.channel(), Channel::WebSocket);
        assert_eq!(delivery.event_id(), Some("evt_1"));
        assert_eq!(delivery.inbox_id(), Some("inb_a"));
        assert_eq!(delivery.body(), &body);
        let extension = request.extensions().get::<Arc<Event>>().unwrap();
        assert!(Arc::ptr_eq(extension, &event));
        assert_eq!(request.into_body().into_bytes(), body);
    }
}
