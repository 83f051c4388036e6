// The reading stage holds the request head; boxing it would cost an allocation per request
// to shrink a future that is moved once, into its task.
#![allow(clippy::large_enum_variant)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{BoxError, Service};

use super::buffer::{self, BodyBuffer};
use super::deadline::Deadline;
use super::{Config, Rejection, SecretSource};
use crate::body::{ResponseBody, VerifiedBody};
use crate::protocol::{
    Claim, EVENT_ID_HEADER, MAX_CLAIMED_ID_LEN, SignedHead, TIMESTAMP_HEADER, Verified,
};
use crate::tenant::{REFUSAL_MACS, ResolveFuture, SecretResolver, Tenant, TenantRequest};
use crate::{Delivery, Event};

pin_project! {
    /// The response future of [`VerifyOpenMail`](super::VerifyOpenMail).
    ///
    /// It reads and verifies the body, then drives the inner service's readiness, then
    /// calls it, all inside one `poll` when the data is there.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<VerifiedBody>>,
    {
        #[pin]
        state: State<S, ReqBody, S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateOwned]
    enum State<S, B, F> {
        Rejected {
            rejection: Rejection,
            config: Arc<Config>,
        },
        Reading {
            #[pin]
            body: B,
            reading: Reading<S>,
        },
        Resolving {
            lookup: ResolveFuture,
            read: Read<S>,
        },
        Ready {
            inner: S,
            request: Request<VerifiedBody>,
        },
        Calling {
            #[pin]
            future: F,
        },
        Done,
    }
}

/// What the reading stage owns besides the body stream.
pub(crate) struct Reading<S> {
    parts: Parts,
    head: SignedHead,
    buffer: BodyBuffer,
    received: usize,
    inner: S,
    config: Arc<Config>,
    deadline: Deadline,
}

/// A body read in full and waiting for its tenant's secrets.
struct Read<S> {
    parts: Parts,
    head: SignedHead,
    body: Bytes,
    /// The body is its one frame as it came: copied once verified (see [`accept`]).
    as_it_came: bool,
    /// The inbox the body's claim names, for the scope check once the secrets arrive.
    inbox: ClaimedInbox,
    tenant: Tenant,
    resolver: Arc<dyn SecretResolver>,
    inner: S,
    config: Arc<Config>,
    deadline: Deadline,
    // Held until the body is handed on: the budget counts it while the lookup runs.
    _lease: super::budget::Lease,
}

/// The inbox a body's claim names, as kept while its lookup runs. Only a routable id is
/// kept: a claim holds decoded copies of ids the JSON escapes, as long as the body, which
/// the memory budget does not count, so it is not kept while an anonymous request waits.
/// A longer id is read again from the body once the secrets arrive.
enum ClaimedInbox {
    /// No inbox: none named, or a claim that cannot be read.
    None,
    Id(String),
    /// Longer than [`MAX_CLAIMED_ID_LEN`].
    Long,
}

/// What a stage hands to the next one.
enum Next<S> {
    Resolve(ResolveFuture, Read<S>),
    Call(S, Request<VerifiedBody>),
}

/// A rejection, with the configuration needed to report it.
type Refusal = (Rejection, Arc<Config>);

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<VerifiedBody>>,
{
    pub(crate) fn rejected(rejection: Rejection, config: Arc<Config>) -> Self {
        Self {
            state: State::Rejected { rejection, config },
        }
    }

    pub(crate) fn reading(request: Request<B>, reading: ReadingStart<S>) -> Self
    where
        B: Body,
    {
        let (parts, body) = request.into_parts();
        let ReadingStart {
            head,
            buffer,
            inner,
            config,
        } = reading;
        Self {
            state: State::Reading {
                body,
                reading: Reading {
                    parts,
                    head,
                    buffer,
                    received: 0,
                    inner,
                    deadline: Deadline::start(config.pace),
                    config,
                },
            },
        }
    }
}

/// What the service decided from the head, for the reading stage.
pub(crate) struct ReadingStart<S> {
    pub(crate) head: SignedHead,
    pub(crate) buffer: BodyBuffer,
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    B: Body,
    B::Error: Into<BoxError>,
    S: Service<Request<VerifiedBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let step: Result<Next<S>, Refusal> = match state.as_mut().project() {
                StateProj::Rejected { .. } => match state.as_mut().project_replace(State::Done) {
                    StateOwned::Rejected { rejection, config } => {
                        return Poll::Ready(Ok(reject(&config, rejection)));
                    }
                    _ => return Poll::Ready(Ok(polled_after_completion())),
                },
                StateProj::Reading { body, reading } => {
                    let frame = match body.poll_frame(cx) {
                        Poll::Pending => {
                            reading.buffer.settle();
                            if reading.deadline.poll_expired(cx) {
                                Some(Err(reading.timed_out()))
                            } else {
                                return Poll::Pending;
                            }
                        }
                        Poll::Ready(frame) => frame
                            .map(|frame| frame.map_err(|error| Rejection::BodyRead(error.into()))),
                    };
                    match frame {
                        Some(Ok(frame)) => {
                            let taken = match frame.into_data() {
                                Ok(mut data) => reading.take(data.copy_to_bytes(data.remaining())),
                                // Trailers are not part of the signed body.
                                Err(_) => Ok(()),
                            };
                            match taken {
                                Ok(()) => continue,
                                Err(rejection) => Err((rejection, Arc::clone(&reading.config))),
                            }
                        }
                        Some(Err(rejection)) => Err((rejection, Arc::clone(&reading.config))),
                        None => match state.as_mut().project_replace(State::Done) {
                            StateOwned::Reading { reading, .. } => reading.finish(),
                            _ => return Poll::Ready(Ok(polled_after_completion())),
                        },
                    }
                }
                StateProj::Resolving { lookup, read } => match lookup.as_mut().poll(cx) {
                    Poll::Pending => {
                        if !read.deadline.poll_expired(cx) {
                            return Poll::Pending;
                        }
                        let rejection = Rejection::LookupTimeout {
                            deadline: read.deadline.limit(),
                        };
                        Err((rejection, Arc::clone(&read.config)))
                    }
                    Poll::Ready(found) => match state.as_mut().project_replace(State::Done) {
                        StateOwned::Resolving { read, .. } => read.verify(found),
                        _ => return Poll::Ready(Ok(polled_after_completion())),
                    },
                },
                StateProj::Ready { inner, .. } => {
                    if let Err(error) = ready!(inner.poll_ready(cx)) {
                        state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                    match state.as_mut().project_replace(State::Done) {
                        StateOwned::Ready { mut inner, request } => {
                            let future = inner.call(request);
                            state.set(State::Calling { future });
                            continue;
                        }
                        _ => return Poll::Ready(Ok(polled_after_completion())),
                    }
                }
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx));
                    state.set(State::Done);
                    return Poll::Ready(result.map(|response| response.map(ResponseBody::inner)));
                }
                StateProj::Done => return Poll::Ready(Ok(polled_after_completion())),
            };
            match step {
                Ok(Next::Resolve(lookup, read)) => state.set(State::Resolving { lookup, read }),
                Ok(Next::Call(inner, request)) => state.set(State::Ready { inner, request }),
                Err((rejection, config)) => {
                    state.set(State::Done);
                    return Poll::Ready(Ok(reject(&config, rejection)));
                }
            }
        }
    }
}

/// A response future polled again after it answered: a bug in the caller, answered rather
/// than left hanging or panicking.
fn polled_after_completion<B>() -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::short(Bytes::from_static(
        b"response future polled after completion",
    )));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

impl<S> Reading<S> {
    fn timed_out(&self) -> Rejection {
        Rejection::BodyTimeout {
            deadline: self.deadline.limit(),
            received: self.received,
        }
    }

    /// Takes one data frame: checks the limit and the pace, keeps the bytes.
    fn take(&mut self, chunk: Bytes) -> Result<(), Rejection> {
        let Some(received) = self
            .received
            .checked_add(chunk.len())
            .filter(|received| *received <= self.config.body_limit)
        else {
            return Err(Rejection::PayloadTooLarge {
                limit: self.config.body_limit,
                declared: None,
            });
        };
        self.received = received;
        if self.buffer.push(chunk).is_err() {
            return Err(Rejection::OverBudget {
                budget: self.buffer.budget_limit(),
            });
        }
        self.deadline.received(received);
        // A client that keeps a trickle coming is cut off as surely as one that stalls.
        if self.deadline.expired() {
            return Err(self.timed_out());
        }
        Ok(())
    }

    /// The body has ended: one verification path for every source of secrets. With static
    /// secrets, check the MAC over the buffered body and build the inner request; with a
    /// resolver, read the claim, route it and start the lookup. A claim that cannot be
    /// read, or names an inbox too long to be one, is routed as naming no inbox (the
    /// account, with the default routing): it is refused only if no secret the resolver
    /// returns for that route verifies it, with the same work and answer as any forgery.
    fn finish(self) -> Result<Next<S>, Refusal> {
        let Self {
            parts,
            head,
            buffer,
            inner,
            config,
            mut deadline,
            ..
        } = self;
        let as_it_came = buffer.as_it_came();
        let (body, lease) = buffer.finish();
        deadline.body_done();
        let resolver = match &config.secrets {
            SecretSource::Static(ring) => {
                return match ring.check(&head, timestamp_of(&parts), &body) {
                    Ok(verified) => {
                        let body = (body, as_it_came);
                        let next = accept(parts, verified, Tenant::Account, body, inner, config);
                        // Let go once a one-frame body is copied, as with a resolver: the
                        // budget counts the frame until then.
                        drop(lease);
                        next
                    }
                    Err(error) => Err((Rejection::Verify(error), config)),
                };
            }
            SecretSource::Resolver(resolver) => Arc::clone(resolver),
        };
        let claim = Claim::read(&body).ok();
        let inbox = match claim.as_ref().and_then(|claim| claim.inbox_id(&body)) {
            None => ClaimedInbox::None,
            Some(inbox) if inbox.len() <= MAX_CLAIMED_ID_LEN => ClaimedInbox::Id(inbox.to_owned()),
            Some(_) => ClaimedInbox::Long,
        };
        let claimed = match &inbox {
            ClaimedInbox::Id(inbox) => Some(inbox.as_str()),
            ClaimedInbox::None | ClaimedInbox::Long => None,
        };
        let tenant = resolver.route(&TenantRequest::new(&parts, claimed));
        if matches!(&tenant, Tenant::Inbox(inbox) if inbox.len() > MAX_CLAIMED_ID_LEN) {
            head.burn_macs(REFUSAL_MACS, timestamp_of(&parts), &body);
            return Err((Rejection::UnknownTenant { tenant }, config));
        }
        let lookup = resolver.lookup(&tenant);
        Ok(Next::Resolve(
            lookup,
            Read {
                parts,
                head,
                body,
                as_it_came,
                inbox,
                tenant,
                resolver,
                inner,
                config,
                deadline,
                _lease: lease,
            },
        ))
    }
}

impl<S> Read<S> {
    /// The tenant's secrets arrived: verify the signature and that the matching secret
    /// covers the inbox the body names.
    ///
    /// Every refusal here costs [`REFUSAL_MACS`], whatever the lookup found, and none waits
    /// for another lookup: the resolver hears of it ([`SecretResolver::refused`]) and may
    /// look the tenant up afresh for a later delivery, in case its secret was rotated.
    fn verify(
        self,
        found: Result<Option<crate::tenant::TenantSecrets>, BoxError>,
    ) -> Result<Next<S>, Refusal> {
        let secrets = match found {
            Ok(Some(secrets)) => secrets,
            Ok(None) => {
                // The same work as a wrong signature, so timing does not tell them apart.
                self.burn_refusal_macs();
                let rejection = Rejection::UnknownTenant {
                    tenant: self.tenant.clone(),
                };
                return Err(self.refuse(rejection));
            }
            Err(error) => {
                // A lookup refused for want of capacity costs what a refusal after a
                // lookup costs, so a tenant that got a lookup is not told apart by timing
                // from one that did not.
                self.burn_refusal_macs();
                return Err((Rejection::SecretLookup(error), self.config));
            }
        };
        let reread;
        let inbox_id = match &self.inbox {
            ClaimedInbox::None => None,
            ClaimedInbox::Id(inbox) => Some(inbox.as_str()),
            ClaimedInbox::Long => {
                reread = Claim::read(&self.body).ok();
                reread.as_ref().and_then(|claim| claim.inbox_id(&self.body))
            }
        };
        match secrets.check(&self.head, timestamp_of(&self.parts), &self.body, inbox_id) {
            Ok(verified) => {
                self.resolver.verified(&self.tenant);
                let (verified, scope) = verified;
                let Self {
                    parts,
                    body,
                    as_it_came,
                    inner,
                    config,
                    ..
                } = self;
                accept(parts, verified, scope, (body, as_it_came), inner, config)
            }
            Err(error) => Err(self.refuse(Rejection::Verify(error))),
        }
    }

    fn burn_refusal_macs(&self) {
        self.head
            .burn_macs(REFUSAL_MACS, timestamp_of(&self.parts), &self.body);
    }

    /// Tells the resolver, which may turn the refusal into a `503`.
    fn refuse(self, rejection: Rejection) -> Refusal {
        match self.resolver.refused(&self.tenant) {
            Ok(()) => (rejection, self.config),
            Err(busy) => (Rejection::SecretLookup(busy), self.config),
        }
    }
}

fn timestamp_of(parts: &Parts) -> &[u8] {
    parts
        .headers
        .get(TIMESTAMP_HEADER)
        .map_or(&b""[..], |value| value.as_bytes())
}

/// The delivery verified: parse the event and build the request the inner service gets.
/// Nothing about the body's content refuses it now: what the model cannot read is an
/// [`Event::Malformed`](crate::Event::Malformed).
///
/// `body` comes with whether it is its one frame as it came ([`BodyBuffer::as_it_came`]):
/// such a body is copied first, so that the delivery, the event and the inner request
/// hold an allocation of the body's own size, never the server's read buffer, however
/// long a handler keeps them.
fn accept<S>(
    mut parts: Parts,
    verified: Verified,
    scope: Tenant,
    (body, as_it_came): (Bytes, bool),
    inner: S,
    config: Arc<Config>,
) -> Result<Next<S>, Refusal> {
    let body = if as_it_came { buffer::own(&body) } else { body };
    let event = config
        .parse_events
        .then(|| Arc::new(Event::parse(body.clone())));
    // A copy of its own: hyper hands header values on as slices of the connection's read
    // buffer, which a held delivery would otherwise keep whole (OpenMail sends this header
    // with every delivery). It was a valid value as it came, so the copy is one too.
    let event_id_header = parts
        .headers
        .get(EVENT_ID_HEADER)
        .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok());
    // No claim: the delivery reads its ids from the event when there is one, and from the
    // body when asked otherwise. The routing claim's decoded copies of escaped ids would
    // be held twice, for as long as a handler holds the delivery.
    let delivery = Delivery::webhook(
        verified,
        scope,
        event_id_header,
        body.clone(),
        event.clone(),
    );
    if let Some(event) = event {
        parts.extensions.insert(event);
    }
    parts.extensions.insert(delivery);
    Ok(Next::Call(
        inner,
        Request::from_parts(parts, VerifiedBody::new(body)),
    ))
}

/// Reports a rejection to the application and builds the client's response.
pub(crate) fn reject<B>(config: &Config, rejection: Rejection) -> Response<ResponseBody<B>> {
    #[cfg(feature = "tracing")]
    match &rejection {
        Rejection::Verify(
            crate::protocol::VerifyError::SignatureMismatch
            | crate::protocol::VerifyError::TenantMismatch { .. },
        )
        | Rejection::UnknownTenant { .. } => {
            tracing::warn!(reason = %rejection, "OpenMail webhook rejected");
        }
        Rejection::SecretLookup(_)
        | Rejection::LookupTimeout { .. }
        | Rejection::OverBudget { .. } => {
            tracing::error!(reason = %rejection, "OpenMail webhook answered 503");
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
