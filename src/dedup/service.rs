use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::future::ResponseFuture;
use super::layer::Config;
use super::{Decision, DedupKey, DedupStore, DeduplicateLayer, Reservation};
use crate::Delivery;
use crate::body::ResponseBody;

/// The service built by [`DeduplicateLayer`].
#[derive(Clone)]
pub struct Deduplicate<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Deduplicate<S> {
    /// A shortcut for [`DeduplicateLayer::new`].
    pub fn layer(store: impl DedupStore) -> DeduplicateLayer {
        DeduplicateLayer::new(store)
    }

    pub(crate) fn from_parts(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deduplicate<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    /// Always ready. The inner service's readiness is driven inside the response future,
    /// after the reservation, so a duplicate never takes the inner service's capacity.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = Arc::clone(&self.config);
        let Some(delivery) = request.extensions().get::<Delivery>() else {
            // Only the crate's own verification makes a `Delivery`, so without one nothing
            // vouched for this request. Passing it through would make a wiring mistake
            // silent; refusing it makes it loud, and OpenMail retries once it is fixed.
            let response = config.unverified();
            config.report(Decision::Unverified);
            return ResponseFuture::answer(response);
        };
        let key = DedupKey::from_delivery(delivery);
        // The clone is the service whose readiness the future drives, and the one it
        // calls; `self.inner` itself is never polled.
        let inner = self.inner.clone();
        match key {
            Some(key) => ResponseFuture::reserving(request, inner, Reservation::new(key), config),
            None => {
                // Verified, but nothing to key on: never lose a verified event.
                config.report(Decision::NoEventId);
                ResponseFuture::pass_through(request, inner)
            }
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Deduplicate<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deduplicate")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}
