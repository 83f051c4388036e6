use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, header};
use http_body::Body;
use tower::{BoxError, Service};

use super::budget::Lease;
use super::buffer::BodyBuffer;
use super::future::{ReadingStart, ResponseFuture};
use super::{Config, Rejection, VerifyOpenMailLayer};
use crate::ConfigError;
use crate::body::{ResponseBody, VerifiedBody};
use crate::protocol::{SignedHead, signed_headers};

/// The service built by [`VerifyOpenMailLayer`].
#[derive(Clone)]
pub struct VerifyOpenMail<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> VerifyOpenMail<S> {
    /// A shortcut for [`VerifyOpenMailLayer::new`].
    pub fn layer(secret: impl AsRef<[u8]>) -> Result<VerifyOpenMailLayer, ConfigError> {
        VerifyOpenMailLayer::new(secret)
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for VerifyOpenMail<S>
where
    S: Service<Request<VerifiedBody>, Response = Response<ResBody>> + Clone,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    /// Always ready. The inner service's readiness is driven only after the body has been
    /// read and verified, inside the response future, so a slow or forged upload never
    /// holds the inner service's capacity (a concurrency permit, a connection slot).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = Arc::clone(&self.config);
        match check_head(&config, &request) {
            Ok((head, buffer)) => ResponseFuture::reading(
                request,
                ReadingStart {
                    head,
                    buffer,
                    // The clone is the service whose readiness the future drives, and the
                    // one it calls; `self.inner` itself is never polled.
                    inner: self.inner.clone(),
                    config,
                },
            ),
            Err(rejection) => ResponseFuture::rejected(rejection, config),
        }
    }
}

/// Everything that needs only the request head, so that forgeries and oversized bodies are
/// refused before a byte of the body is read: the signed headers' presence and form, the
/// replay window, then the declared size, against the limit and what the memory budget has
/// free.
fn check_head<B: Body>(
    config: &Config,
    request: &Request<B>,
) -> Result<(SignedHead, BodyBuffer), Rejection> {
    let (timestamp, signature) = signed_headers(request.headers()).map_err(Rejection::Verify)?;
    let head = config
        .freshness
        .check_head(timestamp, signature)
        .map_err(Rejection::Verify)?;
    let limit = u64::try_from(config.body_limit).unwrap_or(u64::MAX);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    // hyper reports the declared length as the body's size hint; other bodies may know it too.
    let hint = request.body().size_hint();
    let at_least = hint.lower();
    let exact = declared.or(hint.exact());
    let length = declared.into_iter().chain([at_least]).max().unwrap_or(0);
    if length > limit {
        return Err(Rejection::PayloadTooLarge {
            limit: config.body_limit,
            declared: Some(length),
        });
    }
    // Within the limit, so it fits a usize. A body that could not fit now is refused
    // before it is read; one that can reserves nothing until its bytes arrive.
    let length = usize::try_from(length).unwrap_or(config.body_limit);
    if !config.budget.admits(length) {
        return Err(Rejection::OverBudget {
            budget: config.budget.limit(),
        });
    }
    let lease = Lease::new(&config.budget);
    // Within the limit too, once the limit has been checked; it caps the buffer's growth
    // and reserves nothing.
    let exact = exact.and_then(|exact| usize::try_from(exact).ok());
    Ok((head, BodyBuffer::new(lease, exact)))
}

impl<S: fmt::Debug> fmt::Debug for VerifyOpenMail<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOpenMail")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}
