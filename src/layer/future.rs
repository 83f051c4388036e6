use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::Service;

use super::buffer::BodyBuffer;
use super::deadline::BodyDeadline;
use super::{BoxError, Config, Delivery, Rejection, ResponseBody, VerifiedBody};
use crate::protocol::{StreamingCheck, EVENT_ID_HEADER, TIMESTAMP_HEADER};
use crate::Event;

pin_project! {
    /// The response future of [`VerifyOpenMail`](super::VerifyOpenMail).
    ///
    /// It reads and verifies the body, then drives the inner service's readiness, then
    /// calls it, all inside one `poll` when the data is there.
    pub struct ResponseFuture<B, S>
    where
        S: Service<Request<VerifiedBody>>,
    {
        #[pin]
        state: State<B, S, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B, S, F> {
        Rejected {
            rejection: Option<Rejection>,
            config: Arc<Config>,
        },
        Reading {
            #[pin]
            body: B,
            reading: Option<Reading<S>>,
        },
        Ready {
            inner: S,
            request: Option<Request<VerifiedBody>>,
        },
        Calling {
            #[pin]
            future: F,
        },
        Done,
    }
}

/// What the reading stage owns besides the body stream.
struct Reading<S> {
    parts: Parts,
    check: StreamingCheck,
    buffer: BodyBuffer,
    received: usize,
    expected: Option<usize>,
    inner: S,
    config: Arc<Config>,
    deadline: BodyDeadline,
}

impl<B, S> ResponseFuture<B, S>
where
    B: Body,
    S: Service<Request<VerifiedBody>>,
{
    pub(crate) fn rejected(rejection: Rejection, config: Arc<Config>) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
                config,
            },
        }
    }

    pub(crate) fn reading(
        request: Request<B>,
        check: StreamingCheck,
        inner: S,
        config: Arc<Config>,
    ) -> Self {
        let (parts, body) = request.into_parts();
        let expected = body
            .size_hint()
            .exact()
            .and_then(|length| usize::try_from(length).ok());
        Self {
            state: State::Reading {
                body,
                reading: Some(Reading {
                    parts,
                    check,
                    buffer: BodyBuffer::default(),
                    received: 0,
                    expected,
                    inner,
                    deadline: BodyDeadline::start(&config),
                    config,
                }),
            },
        }
    }
}

impl<B, S, ResBody> Future for ResponseFuture<B, S>
where
    B: Body,
    B::Error: Into<BoxError>,
    S: Service<Request<VerifiedBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Rejected { rejection, config } => {
                    let response = rejection.take().map(|rejection| reject(config, rejection));
                    state.set(State::Done);
                    if let Some(response) = response {
                        return Poll::Ready(Ok(response));
                    }
                }
                StateProj::Reading { body, reading } => {
                    // Checked before the body, so a client that keeps a trickle of bytes
                    // coming is cut off too, not only one that stalls.
                    let timeout = reading
                        .as_mut()
                        .and_then(|reading| reading.deadline.poll_elapsed(cx));
                    let frame = match timeout {
                        Some(rejection) => Some(Err(rejection)),
                        None => ready!(body.poll_frame(cx))
                            .map(|frame| frame.map_err(|error| Rejection::BodyRead(error.into()))),
                    };
                    let Some(current) = reading.as_mut() else {
                        state.set(State::Done);
                        continue;
                    };
                    let outcome = match frame {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(mut data) => {
                                let chunk = data.copy_to_bytes(data.remaining());
                                current.take(chunk).map(|()| None)
                            }
                            // Trailers are not part of the signed body.
                            Err(_) => Ok(None),
                        },
                        Some(Err(rejection)) => Err(rejection),
                        None => Ok(reading.take()),
                    };
                    match outcome {
                        Ok(None) => {}
                        Ok(Some(finished)) => {
                            let config = Arc::clone(&finished.config);
                            match finished.finish() {
                                Ok((inner, request)) => state.set(State::Ready {
                                    inner,
                                    request: Some(request),
                                }),
                                Err(rejection) => {
                                    state.set(State::Done);
                                    return Poll::Ready(Ok(reject(&config, rejection)));
                                }
                            }
                        }
                        Err(rejection) => {
                            let response = reading
                                .take()
                                .map(|reading| reject(&reading.config, rejection));
                            state.set(State::Done);
                            if let Some(response) = response {
                                return Poll::Ready(Ok(response));
                            }
                        }
                    }
                }
                StateProj::Ready { inner, request } => {
                    if let Err(error) = ready!(inner.poll_ready(cx)) {
                        state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                    match request.take() {
                        Some(request) => {
                            let future = inner.call(request);
                            state.set(State::Calling { future });
                        }
                        None => state.set(State::Done),
                    }
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    state.set(State::Done);
                    return Poll::Ready(result.map(|response| response.map(ResponseBody::inner)));
                }
                StateProj::Done => {
                    // Polled after completion, or a stage lost what it owned: both are bugs
                    // in the caller or here, and neither may panic a server.
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<S> Reading<S> {
    /// Takes one data frame: checks the limit, feeds the MAC, keeps the bytes.
    fn take(&mut self, chunk: Bytes) -> Result<(), Rejection> {
        let received = self
            .received
            .checked_add(chunk.len())
            .filter(|received| *received <= self.config.body_limit)
            .ok_or(Rejection::PayloadTooLarge {
                limit: self.config.body_limit,
                declared: None,
            })?;
        self.received = received;
        self.check.update(&chunk);
        self.buffer.push(chunk, self.expected);
        Ok(())
    }

    /// The body has ended: compares the MAC, parses the event, and builds the request the
    /// inner service will get.
    fn finish(self) -> Result<(S, Request<VerifiedBody>), Rejection> {
        let Self {
            mut parts,
            check,
            buffer,
            inner,
            config,
            ..
        } = self;
        let body = buffer.into_bytes();
        let timestamp = parts
            .headers
            .get(TIMESTAMP_HEADER)
            .map_or(&b""[..], |value| value.as_bytes());
        let verified = check.finish(timestamp, &body).map_err(Rejection::Verify)?;
        if config.parse_events {
            let event = Event::parse(body.clone()).map_err(Rejection::NotAnEvent)?;
            parts.extensions.insert(Arc::new(event));
        }
        let event_id_header = parts.headers.get(EVENT_ID_HEADER).cloned();
        parts
            .extensions
            .insert(Delivery::new(verified, event_id_header, body.clone()));
        Ok((inner, Request::from_parts(parts, VerifiedBody::new(body))))
    }
}

/// Reports a rejection to the application and builds the client's response.
fn reject<B>(config: &Config, rejection: Rejection) -> Response<ResponseBody<B>> {
    #[cfg(feature = "tracing")]
    match &rejection {
        Rejection::Verify(crate::VerifyError::SignatureMismatch) => {
            tracing::warn!(reason = %rejection, "OpenMail webhook rejected");
        }
        _ => tracing::debug!(reason = %rejection, "OpenMail webhook rejected"),
    }
    if let Some(hook) = &config.on_rejection {
        hook(&rejection);
    }
    let response = match &config.respond {
        Some(respond) => respond(&rejection),
        None => rejection.default_response(),
    };
    response.map(ResponseBody::rejection)
}
