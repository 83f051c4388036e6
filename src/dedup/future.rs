use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::Service;

use super::layer::Config;
use super::{
    Decision, OnStoreError, ReleaseReason, Reservation, ReserveOutcome, StoreError, StoreFuture,
};
use crate::body::ResponseBody;

pin_project! {
    /// The response future of [`Deduplicate`](super::Deduplicate).
    ///
    /// It reserves the event, then drives the inner service's readiness and calls it, then
    /// marks the event done or releases it before it answers, all inside one `poll` when
    /// the store answers at once. Dropped at any point before the event is processed, it
    /// releases whatever it may hold; polled again after it answered, it answers `500`
    /// rather than hang.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, S::Future, S::Response, S::Error>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateOwned]
    enum State<S, R, F, T, E> {
        Answering {
            response: Response<Bytes>,
        },
        Reserving {
            future: StoreFuture<ReserveOutcome>,
            // Armed from the start: dropped while `reserve` is in flight, the future
            // cannot tell whether the reservation landed, and releases it in case it did.
            hold: Hold,
            inner: S,
            request: Request<R>,
        },
        Ready {
            inner: S,
            request: Request<R>,
            hold: Option<Hold>,
        },
        Calling {
            #[pin]
            future: F,
            hold: Option<Hold>,
        },
        Settling {
            future: StoreFuture<()>,
            settle: Settle,
            hold: Hold,
            output: Result<T, E>,
        },
        Done,
    }
}

/// What the settling stage is doing.
#[derive(Clone, Copy)]
enum Settle {
    Complete,
    Release(ReleaseReason),
}

/// A reservation this future holds, or may hold. Dropped while armed (the future was
/// dropped while `reserve` was in flight, before the inner service answered, or while
/// releasing), it hands the reservation back to the store through
/// [`DedupStore::abandon`](super::DedupStore::abandon), whose token check makes that
/// harmless when the reservation never landed.
struct Hold {
    reservation: Reservation,
    config: Arc<Config>,
    armed: bool,
}

impl Hold {
    fn settle(&mut self, settle: Settle) -> StoreFuture<()> {
        let store = &self.config.store;
        let reservation = self.reservation.clone();
        match settle {
            Settle::Complete => {
                // Once the inner service answered 2xx the event is processed: dropping the
                // future from here on must not release it for a second run.
                self.armed = false;
                store.complete(reservation, self.config.retention)
            }
            Settle::Release(_) => store.release(reservation),
        }
    }

    fn settled(mut self, settle: Settle, result: Result<(), StoreError>) {
        self.armed = false;
        let key = self.reservation.key().clone();
        let decision = match (settle, result) {
            (Settle::Complete, Ok(())) => Decision::Completed { key },
            (Settle::Release(reason), Ok(())) => Decision::Released { key, reason },
            (Settle::Complete, Err(error)) => Decision::CompleteFailed { key, error },
            (Settle::Release(_), Err(error)) => Decision::ReleaseFailed { key, error },
        };
        self.config.report(decision);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.armed {
            self.config.store.abandon(self.reservation.clone());
            self.config.report(Decision::Released {
                key: self.reservation.key().clone(),
                reason: ReleaseReason::Dropped,
            });
        }
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn reserving(
        request: Request<ReqBody>,
        inner: S,
        reservation: Reservation,
        config: Arc<Config>,
    ) -> Self {
        // The hold is armed before the store sees the reservation.
        let hold = Hold {
            reservation: reservation.clone(),
            config: Arc::clone(&config),
            armed: true,
        };
        let future = config.store.reserve(reservation, config.lease);
        Self {
            state: State::Reserving {
                future,
                hold,
                inner,
                request,
            },
        }
    }

    pub(crate) fn pass_through(request: Request<ReqBody>, inner: S) -> Self {
        Self {
            state: State::Ready {
                inner,
                request,
                hold: None,
            },
        }
    }

    pub(crate) fn answer(response: Response<Bytes>) -> Self {
        Self {
            state: State::Answering { response },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Answering { .. } => {
                    return match state.as_mut().project_replace(State::Done) {
                        StateOwned::Answering { response } => {
                            Poll::Ready(Ok(response.map(ResponseBody::short)))
                        }
                        _ => Poll::Ready(Ok(polled_after_completion())),
                    };
                }
                StateProj::Reserving { future, .. } => {
                    let outcome = ready!(future.as_mut().poll(cx));
                    match state.as_mut().project_replace(State::Done) {
                        StateOwned::Reserving {
                            hold,
                            inner,
                            request,
                            ..
                        } => state.set(reserved(hold, inner, request, outcome)),
                        _ => return Poll::Ready(Ok(polled_after_completion())),
                    }
                }
                StateProj::Ready { inner, hold, .. } => {
                    if let Err(error) = ready!(inner.poll_ready(cx)) {
                        match hold.take() {
                            Some(hold) => {
                                let settle = Settle::Release(ReleaseReason::Error);
                                state.set(settling(hold, settle, Err(error)));
                                continue;
                            }
                            None => {
                                state.set(State::Done);
                                return Poll::Ready(Err(error));
                            }
                        }
                    }
                    match state.as_mut().project_replace(State::Done) {
                        StateOwned::Ready {
                            mut inner,
                            request,
                            hold,
                        } => {
                            let future = inner.call(request);
                            state.set(State::Calling { future, hold });
                        }
                        _ => return Poll::Ready(Ok(polled_after_completion())),
                    }
                }
                StateProj::Calling { future, hold } => {
                    let output = ready!(future.poll(cx));
                    match hold.take() {
                        Some(hold) => {
                            let settle = match &output {
                                Ok(response) if response.status().is_success() => Settle::Complete,
                                Ok(response) => {
                                    Settle::Release(ReleaseReason::Status(response.status()))
                                }
                                Err(_) => Settle::Release(ReleaseReason::Error),
                            };
                            state.set(settling(hold, settle, output));
                        }
                        None => {
                            state.set(State::Done);
                            return Poll::Ready(
                                output.map(|response| response.map(ResponseBody::inner)),
                            );
                        }
                    }
                }
                StateProj::Settling { future, .. } => {
                    let result = ready!(future.as_mut().poll(cx));
                    return match state.as_mut().project_replace(State::Done) {
                        StateOwned::Settling {
                            settle,
                            hold,
                            output,
                            ..
                        } => {
                            hold.settled(settle, result);
                            Poll::Ready(output.map(|response| response.map(ResponseBody::inner)))
                        }
                        _ => Poll::Ready(Ok(polled_after_completion())),
                    };
                }
                StateProj::Done => return Poll::Ready(Ok(polled_after_completion())),
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

/// The state after the store answered the reservation.
fn reserved<S, R, F, T, E>(
    mut hold: Hold,
    inner: S,
    mut request: Request<R>,
    outcome: Result<ReserveOutcome, StoreError>,
) -> State<S, R, F, T, E> {
    let key = hold.reservation.key().clone();
    let config = Arc::clone(&hold.config);
    let response = match outcome {
        Ok(ReserveOutcome::Reserved) => {
            config.report(Decision::First { key });
            request.extensions_mut().insert(hold.reservation.clone());
            return State::Ready {
                inner,
                request,
                hold: Some(hold),
            };
        }
        Ok(ReserveOutcome::Done) => {
            // Someone else's marker: ours was never written, so there is nothing to release.
            hold.armed = false;
            let response = config.duplicate_done(&key);
            config.report(Decision::DuplicateDone { key });
            response
        }
        Ok(ReserveOutcome::InFlight) => {
            hold.armed = false;
            config.report(Decision::DuplicateInFlight { key });
            config.in_flight()
        }
        Err(error) => {
            // The command may have reached the store before it failed (a response timeout,
            // a connection lost mid-reply). Release in case it landed, or the lease would
            // answer OpenMail's retries with 409; the token check makes it harmless if not.
            hold.armed = false;
            config.store.abandon(hold.reservation.clone());
            let passed_through = config.on_store_error == OnStoreError::FailOpen;
            config.report(Decision::ReserveFailed {
                key,
                error,
                passed_through,
            });
            if passed_through {
                return State::Ready {
                    inner,
                    request,
                    hold: None,
                };
            }
            config.unavailable()
        }
    };
    State::Answering { response }
}

/// The state that marks the event done or releases it, then answers with `output`.
fn settling<S, R, F, T, E>(
    mut hold: Hold,
    settle: Settle,
    output: Result<T, E>,
) -> State<S, R, F, T, E> {
    let future = hold.settle(settle);
    State::Settling {
        future,
        settle,
        hold,
        output,
    }
}
