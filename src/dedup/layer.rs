use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use tower_layer::Layer;

use super::{Decision, DedupKey, DedupStore, Deduplicate, MemoryStore};

/// The default lease; [`DeduplicateLayer::lease`] says why 60 s.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The default retention; [`DeduplicateLayer::retention`] says why 30 minutes.
pub(crate) const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 60);

type DecisionHook = Arc<dyn Fn(&Decision) + Send + Sync>;
type DuplicateResponder = Arc<dyn Fn(&DedupKey) -> Response<Bytes> + Send + Sync>;

/// What to do with a delivery when the store cannot be asked whether it is a duplicate
/// (it failed with a [`StoreError`](super::StoreError), or did not answer in time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Answer `503` with `Retry-After`, so OpenMail retries: the default.
    ///
    /// Nothing is processed twice, and nothing is lost while the store comes back within
    /// OpenMail's retry horizon (about eight minutes). An outage longer than that loses the
    /// deliveries that arrived during it: OpenMail marks them failed.
    #[default]
    FailClosed,
    /// Call the inner service without deduplication.
    ///
    /// Nothing is lost however long the outage, but a delivery that OpenMail repeats
    /// during it (a timed-out attempt, a replay) is processed again.
    FailOpen,
}

/// Processes each OpenMail event once, however many times it is delivered.
///
/// Stack it inside [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer): it keys on the
/// [`Delivery`](crate::Delivery) that verification leaves in the request extensions (the
/// verified inbox and the body's `event_id`, see [`DedupKey`]), whether or not events are
/// parsed. A request without one is refused with `500`. Cheap to clone: the configuration
/// sits behind one `Arc`.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::post, Router};
/// use openmail_webhooks::dedup::{DeduplicateLayer, MemoryStore, OnStoreError};
/// use openmail_webhooks::VerifyOpenMailLayer;
///
/// let dedup = DeduplicateLayer::new(MemoryStore::new())
///     .lease(Duration::from_secs(120))
///     .on_store_error(OnStoreError::FailClosed)
///     .on_decision(|decision| eprintln!("{decision}"));
/// let app: Router = Router::new()
///     .route("/webhooks", post(|| async { "ok" }))
///     .layer(dedup)
///     .layer(VerifyOpenMailLayer::new("whsec_test")?);
/// # Ok::<(), openmail_webhooks::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct DeduplicateLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn DedupStore>,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) retry_after: Duration,
    pub(crate) on_decision: Option<DecisionHook>,
    pub(crate) duplicate_response: Option<DuplicateResponder>,
}

impl DeduplicateLayer {
    /// A layer over `store`.
    pub fn new(store: impl DedupStore) -> Self {
        Self::from_shared(Arc::new(store))
    }

    /// A layer over a store chosen at run time, such as Redis when it is configured and
    /// memory otherwise.
    pub fn from_shared(store: Arc<dyn DedupStore>) -> Self {
        Self {
            config: Arc::new(Config {
                store,
                lease: DEFAULT_LEASE,
                retention: DEFAULT_RETENTION,
                on_store_error: OnStoreError::default(),
                retry_after: crate::RETRY_AFTER,
                on_decision: None,
                duplicate_response: None,
            }),
        }
    }

    /// A layer over a [`MemoryStore`] of the default capacity; the same as `default()`.
    pub fn in_memory() -> Self {
        Self::new(MemoryStore::new())
    }

    /// How long a reservation holds an event before another delivery may take it over;
    /// 60 s unless set. Keep it above the handler's longest run: a lease that runs out
    /// mid-run lets a retry process the event concurrently. Stores keep it to the
    /// millisecond, rounded up.
    ///
    /// Why 60 s: OpenMail waits 15 s for an answer, so a handler still running after that
    /// is answered by no one and OpenMail retries anyway; 60 s is four times that. When a
    /// replica crashes while holding a reservation, the retry that comes 30 s after
    /// OpenMail's timeout is still answered as in flight, and the one after that (60 s
    /// later) is processed, which leaves three of OpenMail's five attempts.
    pub fn lease(self, lease: Duration) -> Self {
        self.map_config(|config| config.lease = lease)
    }

    /// How long a processed event stays marked done; 30 minutes unless set.
    ///
    /// Why 30 minutes: OpenMail retries a delivery it did not see answered `2xx` four
    /// times, 30 s, 60 s, 2 min and 4 min apart, and waits up to 15 s for each attempt: the
    /// last attempt starts at most 8 min 30 s after the first. Every attempt carries its
    /// own signed timestamp and can be replayed while it is within the 300 s tolerance, and
    /// up to twice that when OpenMail's clock runs ahead of this one. So a duplicate can
    /// arrive up to about 18.5 minutes after the first delivery; 30 minutes covers that
    /// with margin.
    pub fn retention(self, retention: Duration) -> Self {
        self.map_config(|config| config.retention = retention)
    }

    /// What to do when a reservation cannot be made because the store failed;
    /// [`OnStoreError::FailClosed`] unless set.
    pub fn on_store_error(self, policy: OnStoreError) -> Self {
        self.map_config(|config| config.on_store_error = policy)
    }

    /// The `Retry-After` of the `409` and `503` answers; 30 s (OpenMail's first retry
    /// interval) unless set. Sent in whole seconds, rounded up.
    pub fn retry_after(self, retry_after: Duration) -> Self {
        self.map_config(|config| config.retry_after = retry_after)
    }

    /// Calls `hook` with every [`Decision`], for logs and metrics.
    pub fn on_decision(self, hook: impl Fn(&Decision) + Send + Sync + 'static) -> Self {
        self.map_config(|config| config.on_decision = Some(Arc::new(hook)))
    }

    /// Replaces the answer to a duplicate of a processed event. `respond` gets the event's
    /// key, whose [`event_id`](DedupKey::event_id) and [`inbox_id`](DedupKey::inbox_id)
    /// came from the verified body. Answer `2xx`, or OpenMail keeps retrying an event that
    /// was already processed.
    ///
    /// The default is `200 OK` with a short `text/plain` body.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{Response, StatusCode};
    /// use openmail_webhooks::dedup::DeduplicateLayer;
    ///
    /// let layer = DeduplicateLayer::in_memory().duplicate_response(|_key| {
    ///     let mut response = Response::new(Bytes::new());
    ///     *response.status_mut() = StatusCode::NO_CONTENT;
    ///     response
    /// });
    /// ```
    pub fn duplicate_response(
        self,
        respond: impl Fn(&DedupKey) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.map_config(|config| config.duplicate_response = Some(Arc::new(respond)))
    }

    fn map_config(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = Arc::unwrap_or_clone(self.config);
        change(&mut config);
        Self {
            config: Arc::new(config),
        }
    }
}

impl Config {
    /// Tells the application, through `tracing` and the hook.
    pub(crate) fn report(&self, decision: Decision) {
        #[cfg(feature = "tracing")]
        trace(&decision);
        if let Some(hook) = &self.on_decision {
            hook(&decision);
        }
    }

    pub(crate) fn duplicate_done(&self, key: &DedupKey) -> Response<Bytes> {
        match &self.duplicate_response {
            Some(respond) => respond(key),
            None => text(StatusCode::OK, "duplicate event: already processed", None),
        }
    }

    pub(crate) fn in_flight(&self) -> Response<Bytes> {
        text(
            StatusCode::CONFLICT,
            "duplicate event: still being processed; retry later",
            Some(self.retry_after),
        )
    }

    pub(crate) fn unavailable(&self) -> Response<Bytes> {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "deduplication unavailable; retry later",
            Some(self.retry_after),
        )
    }

    /// The answer to a request that reached the layer unverified: the server is wired
    /// wrong, which is a 500, and saying so is all the client learns.
    pub(crate) fn unverified(&self) -> Response<Bytes> {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server misconfigured: DeduplicateLayer must sit inside VerifyOpenMailLayer",
            None,
        )
    }
}

fn text(
    status: StatusCode,
    message: &'static str,
    retry_after: Option<Duration>,
) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(message.as_bytes()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(retry_after) = retry_after {
        let seconds = retry_after
            .as_secs()
            .saturating_add(u64::from(retry_after.subsec_nanos() > 0));
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(feature = "tracing")]
fn trace(decision: &Decision) {
    use crate::LogSafe;
    // The ids came from a request: escaped and cut short, like `decision`'s own Display.
    let event_id = tracing::field::display(LogSafe::or_dash(decision.event_id()));
    let inbox_id = tracing::field::display(LogSafe::or_dash(
        decision.key().and_then(DedupKey::inbox_id),
    ));
    match decision {
        Decision::First { .. } | Decision::Completed { .. } | Decision::NoEventId => {
            tracing::debug!(event_id, inbox_id, %decision, "OpenMail webhook deduplication");
        }
        Decision::ReserveFailed { .. }
        | Decision::CompleteFailed { .. }
        | Decision::ReleaseFailed { .. } => {
            tracing::warn!(event_id, inbox_id, %decision, "OpenMail webhook deduplication");
        }
        Decision::Unverified => tracing::error!(%decision, "OpenMail webhook deduplication"),
        _ => tracing::info!(event_id, inbox_id, %decision, "OpenMail webhook deduplication"),
    }
}

impl<S> Layer<S> for DeduplicateLayer {
    type Service = Deduplicate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deduplicate::from_parts(inner, Arc::clone(&self.config))
    }
}

impl Default for DeduplicateLayer {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl fmt::Debug for DeduplicateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeduplicateLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("on_store_error", &self.on_store_error)
            .field("retry_after", &self.retry_after)
            .field("on_decision", &self.on_decision.is_some())
            .field("duplicate_response", &self.duplicate_response.is_some())
            .finish_non_exhaustive()
    }
}
