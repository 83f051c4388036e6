use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::layer::Config;
use super::{
    Decision, ReleaseReason, Reservation, ReserveOutcome, StoreFailure, StoreFuture, StoreStep,
};
use crate::body::ResponseBody;

pin_project! {
    /// The response future of [`Deduplicate`](super::Deduplicate).
    ///
    /// It reserves the event, then drives the inner service's readiness and calls it, then
    /// marks the event done or releases it before it answers, all inside one `poll` when
    /// the store answers at once.
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
    enum State<S, R, F, T, E> {
        Answering {
            response: Option<Response<Bytes>>,
        },
        Reserving {
            future: StoreFuture<ReserveOutcome>,
            pending: Option<Pending<S, R>>,
        },
        Ready {
            inner: S,
            request: Option<Request<R>>,
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
            hold: Option<Hold>,
            output: Option<Result<T, E>>,
        },
        Done,
    }
}

/// What the reserving stage owns until the store answers.
struct Pending<S, R> {
    inner: S,
    request: Request<R>,
    reservation: Reservation,
    config: Arc<Config>,
}

/// What the settling stage is doing.
#[derive(Clone, Copy)]
enum Settle {
    Complete,
    Release(ReleaseReason),
}

/// A reservation this future holds. Dropped while armed (the future was dropped before
/// the inner service answered, or while releasing), it hands the reservation back to the
/// store through [`DedupStore::abandon`](super::DedupStore::abandon).
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

    fn settled(mut self, settle: Settle, result: Result<(), super::StoreError>) {
        self.armed = false;
        let event_id = self.reservation.shared_event_id();
        let decision = match (settle, result) {
            (Settle::Complete, Ok(())) => Decision::Completed { event_id },
            (Settle::Release(reason), Ok(())) => Decision::Released { event_id, reason },
            (Settle::Complete, Err(error)) => Decision::StoreFailed {
                event_id,
                step: StoreStep::Complete,
                error,
                passed_through: true,
            },
            (Settle::Release(_), Err(error)) => Decision::StoreFailed {
                event_id,
                step: StoreStep::Release,
                error,
                passed_through: true,
            },
        };
        self.config.report(decision);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.armed {
            self.config.store.abandon(self.reservation.clone());
            self.config.report(Decision::Released {
                event_id: self.reservation.shared_event_id(),
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
        let future = config.store.reserve(reservation.clone(), config.lease);
        Self {
            state: State::Reserving {
                future,
                pending: Some(Pending {
                    inner,
                    request,
                    reservation,
                    config,
                }),
            },
        }
    }

    pub(crate) fn pass_through(request: Request<ReqBody>, inner: S) -> Self {
        Self {
            state: State::Ready {
                inner,
                request: Some(request),
                hold: None,
            },
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
                StateProj::Answering { response } => {
                    let response = response.take();
                    state.set(State::Done);
                    if let Some(response) = response {
                        return Poll::Ready(Ok(response.map(ResponseBody::short)));
                    }
                }
                StateProj::Reserving { future, pending } => {
                    let outcome = ready!(future.as_mut().poll(cx));
                    match pending.take() {
                        Some(pending) => state.set(reserved(pending, outcome)),
                        None => state.set(State::Done),
                    }
                }
                StateProj::Ready {
                    inner,
                    request,
                    hold,
                } => {
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
                    let hold = hold.take();
                    match request.take() {
                        Some(request) => {
                            let future = inner.call(request);
                            state.set(State::Calling { future, hold });
                        }
                        None => state.set(State::Done),
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
                StateProj::Settling {
                    future,
                    settle,
                    hold,
                    output,
                } => {
                    let result = ready!(future.as_mut().poll(cx));
                    if let Some(hold) = hold.take() {
                        hold.settled(*settle, result);
                    }
                    let output = output.take();
                    state.set(State::Done);
                    if let Some(output) = output {
                        return Poll::Ready(
                            output.map(|response| response.map(ResponseBody::inner)),
                        );
                    }
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

/// The state after the store answered the reservation.
fn reserved<S, R, F, T, E>(
    pending: Pending<S, R>,
    outcome: Result<ReserveOutcome, super::StoreError>,
) -> State<S, R, F, T, E> {
    let Pending {
        inner,
        mut request,
        reservation,
        config,
    } = pending;
    let event_id = reservation.shared_event_id();
    let answer = match outcome {
        Ok(ReserveOutcome::Reserved) => {
            config.report(Decision::First { event_id });
            request.extensions_mut().insert(reservation.clone());
            return State::Ready {
                inner,
                request: Some(request),
                hold: Some(Hold {
                    reservation,
                    config,
                    armed: true,
                }),
            };
        }
        Ok(ReserveOutcome::Done) => {
            let response = config.duplicate_done(&event_id);
            config.report(Decision::DuplicateDone { event_id });
            response
        }
        Ok(ReserveOutcome::InFlight) => {
            config.report(Decision::DuplicateInFlight { event_id });
            config.in_flight()
        }
        Err(error) => {
            let passed_through = config.store_failure == StoreFailure::FailOpen;
            config.report(Decision::StoreFailed {
                event_id,
                step: StoreStep::Reserve,
                error,
                passed_through,
            });
            if passed_through {
                return State::Ready {
                    inner,
                    request: Some(request),
                    hold: None,
                };
            }
            config.unavailable()
        }
    };
    State::Answering {
        response: Some(answer),
    }
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
        hold: Some(hold),
        output: Some(output),
    }
}
