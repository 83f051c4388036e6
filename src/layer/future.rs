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
use crate::protocol::{SignedHead, StreamingCheck, Verified, EVENT_ID_HEADER, TIMESTAMP_HEADER};
use crate::tenant::claim::Claim;
use crate::tenant::{ResolveFuture, SecretResolver, SecretScope, TenantRequest};
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
        Resolving {
            lookup: ResolveFuture,
            pending: Option<Read<S>>,
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

/// How the body will be checked, decided from the head.
pub(crate) enum BodyCheck {
    /// Static secrets: the MAC is fed as the body streams in.
    Streaming(StreamingCheck),
    /// Per-tenant secrets: known only once the body's claim has been read.
    Resolved(SignedHead, Arc<dyn SecretResolver>),
}

/// What the reading stage owns besides the body stream.
struct Reading<S> {
    parts: Parts,
    check: BodyCheck,
    buffer: BodyBuffer,
    received: usize,
    expected: Option<usize>,
    inner: S,
    config: Arc<Config>,
    deadline: BodyDeadline,
}

/// A body read in full and waiting for its tenant's secrets.
struct Read<S> {
    parts: Parts,
    head: SignedHead,
    body: Bytes,
    claim: Claim,
    inner: S,
    config: Arc<Config>,
}

/// What a stage hands to the next one.
enum Next<S> {
    Continue,
    Resolve(ResolveFuture, Read<S>),
    Call(S, Request<VerifiedBody>),
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
        check: BodyCheck,
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
            let next = match state.as_mut().project() {
                StateProj::Rejected { rejection, config } => {
                    let response = rejection.take().map(|rejection| reject(config, rejection));
                    state.set(State::Done);
                    match response {
                        Some(response) => return Poll::Ready(Ok(response)),
                        None => continue,
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
                    let step = match frame {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(mut data) => {
                                let chunk = data.copy_to_bytes(data.remaining());
                                current.take(chunk).map(|()| Next::Continue)
                            }
                            // Trailers are not part of the signed body.
                            Err(_) => Ok(Next::Continue),
                        },
                        Some(Err(rejection)) => Err((rejection, Arc::clone(&current.config))),
                        None => match reading.take() {
                            Some(finished) => finished.finish(),
                            None => Ok(Next::Continue),
                        },
                    };
                    match step {
                        Ok(next) => next,
                        Err((rejection, config)) => {
                            state.set(State::Done);
                            return Poll::Ready(Ok(reject(&config, rejection)));
                        }
                    }
                }
                StateProj::Resolving { lookup, pending } => {
                    let found = ready!(lookup.as_mut().poll(cx));
                    match pending.take().map(|read| read.verify(found)) {
                        Some(Ok(next)) => next,
                        Some(Err((rejection, config))) => {
                            state.set(State::Done);
                            return Poll::Ready(Ok(reject(&config, rejection)));
                        }
                        None => {
                            state.set(State::Done);
                            continue;
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
                    continue;
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
            };
            match next {
                Next::Continue => {}
                Next::Resolve(lookup, read) => state.set(State::Resolving {
                    lookup,
                    pending: Some(read),
                }),
                Next::Call(inner, request) => state.set(State::Ready {
                    inner,
                    request: Some(request),
                }),
            }
        }
    }
}

/// A rejection, with the configuration needed to report it.
type Refusal = (Rejection, Arc<Config>);

impl<S> Reading<S> {
    /// Takes one data frame: checks the limit, feeds the MAC if it streams, keeps the bytes.
    fn take(&mut self, chunk: Bytes) -> Result<(), Refusal> {
        let Some(received) = self
            .received
            .checked_add(chunk.len())
            .filter(|received| *received <= self.config.body_limit)
        else {
            let rejection = Rejection::PayloadTooLarge {
                limit: self.config.body_limit,
                declared: None,
            };
            return Err((rejection, Arc::clone(&self.config)));
        };
        self.received = received;
        if let BodyCheck::Streaming(check) = &mut self.check {
            check.update(&chunk);
        }
        self.buffer.push(chunk, self.expected);
        Ok(())
    }

    /// The body has ended. With static secrets the MAC is complete: compare it and build
    /// the inner request. With a resolver, read the claim and start the lookup.
    fn finish(self) -> Result<Next<S>, Refusal> {
        let Self {
            parts,
            check,
            buffer,
            inner,
            config,
            ..
        } = self;
        let body = buffer.into_bytes();
        match check {
            BodyCheck::Streaming(check) => match check.finish(timestamp_of(&parts), &body) {
                Ok(verified) => accept(parts, verified, None, body, inner, config),
                Err(error) => Err((Rejection::Verify(error), config)),
            },
            BodyCheck::Resolved(head, resolver) => {
                let claim = match Claim::read(&body) {
                    Ok(claim) => claim,
                    Err(error) => return Err((Rejection::TenantClaim(error.0), config)),
                };
                let lookup = resolver.resolve(&TenantRequest::new(
                    &parts,
                    claim.inbox_id.as_deref(),
                    claim.pod_id.as_deref(),
                ));
                Ok(Next::Resolve(
                    lookup,
                    Read {
                        parts,
                        head,
                        body,
                        claim,
                        inner,
                        config,
                    },
                ))
            }
        }
    }
}

impl<S> Read<S> {
    /// The tenant's secrets arrived: verify, then check that the matching secret covers the
    /// inbox or pod the body names.
    fn verify(self, found: <ResolveFuture as Future>::Output) -> Result<Next<S>, Refusal> {
        let Self {
            parts,
            head,
            body,
            claim,
            inner,
            config,
        } = self;
        let secrets = match found {
            Ok(Some(secrets)) => secrets,
            Ok(None) => {
                let rejection = Rejection::UnknownTenant {
                    inbox_id: claim.inbox_id,
                    pod_id: claim.pod_id,
                };
                return Err((rejection, config));
            }
            Err(error) => return Err((Rejection::SecretLookup(error), config)),
        };
        let Some(index) = head.find_match(secrets.secrets(), timestamp_of(&parts), &body) else {
            return Err((
                Rejection::Verify(crate::VerifyError::SignatureMismatch),
                config,
            ));
        };
        let scope = secrets
            .scope(index)
            .cloned()
            .unwrap_or(SecretScope::Account);
        if !scope.covers(claim.inbox_id.as_deref(), claim.pod_id.as_deref()) {
            let rejection = Rejection::TenantMismatch {
                scope,
                inbox_id: claim.inbox_id,
                pod_id: claim.pod_id,
            };
            return Err((rejection, config));
        }
        accept(
            parts,
            head.verified(index),
            Some(scope),
            body,
            inner,
            config,
        )
    }
}

fn timestamp_of(parts: &Parts) -> &[u8] {
    parts
        .headers
        .get(TIMESTAMP_HEADER)
        .map_or(&b""[..], |value| value.as_bytes())
}

/// The delivery verified: parse the event and build the request the inner service gets.
fn accept<S>(
    mut parts: Parts,
    verified: Verified,
    scope: Option<SecretScope>,
    body: Bytes,
    inner: S,
    config: Arc<Config>,
) -> Result<Next<S>, Refusal> {
    if config.parse_events {
        match Event::parse(body.clone()) {
            Ok(event) => {
                parts.extensions.insert(Arc::new(event));
            }
            Err(error) => return Err((Rejection::NotAnEvent(error), config)),
        }
    }
    let event_id_header = parts.headers.get(EVENT_ID_HEADER).cloned();
    parts.extensions.insert(Delivery::new(
        verified,
        scope,
        event_id_header,
        body.clone(),
    ));
    Ok(Next::Call(
        inner,
        Request::from_parts(parts, VerifiedBody::new(body)),
    ))
}

/// Reports a rejection to the application and builds the client's response.
fn reject<B>(config: &Config, rejection: Rejection) -> Response<ResponseBody<B>> {
    #[cfg(feature = "tracing")]
    match &rejection {
        Rejection::Verify(crate::VerifyError::SignatureMismatch)
        | Rejection::TenantMismatch { .. } => {
            tracing::warn!(reason = %rejection, "OpenMail webhook rejected");
        }
        Rejection::SecretLookup(_) => {
            tracing::error!(reason = %rejection, "OpenMail webhook secret lookup failed");
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
    response.map(ResponseBody::short)
}
