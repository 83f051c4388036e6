//! [`Ingest`]: the service that stores a verified delivery and acknowledges it.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use sha2::{Digest, Sha256};
use tower::Service;

use super::store::{EventStore, Inserted, QueueError};
use crate::Delivery;
use crate::dedup::DedupKey;

/// Separates the digest of a body without `event_id` from any other SHA-256 of it.
const BODY_KEY_DOMAIN: &[u8] = b"openmail-webhooks queue body v1\0";

/// The service that goes where the handler went, after
/// [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer): it writes the verified delivery to
/// the store and answers once the write is committed.
///
/// | the store | answer |
/// |---|---|
/// | stored the event | `200` `{"ok":true,"event":"<type>","event_id":"<id>"}` |
/// | already has the key (waiting, running, completed within the retention, dead) | `200`, the same body with `"duplicate":true` |
/// | holds [`depth_limit`](Self::depth_limit) events waiting or running | `503` with `Retry-After` |
/// | failed, or did not answer within [`store_timeout`](Self::store_timeout) | `503` with `Retry-After` |
/// | no [`Delivery`] in the extensions: not behind the verification layer | `500` |
///
/// The key is the verified `inbox_id` and `event_id` ([`DedupKey`]); a body without an
/// `event_id` is keyed on its own bytes. Its future is boxed: the store's futures are
/// unnameable `impl Future`s, and one allocation per delivery is nothing beside a commit.
///
/// ```
/// # #[cfg(feature = "sqlite")] {
/// use std::sync::Arc;
/// use axum::Router;
/// use openmail_webhooks::VerifyOpenMailLayer;
/// use openmail_webhooks::queue::{Durability, Ingest, SqliteStore};
///
/// # let dir = std::env::temp_dir().join(format!("ingest-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let store = Arc::new(SqliteStore::open(dir.join("events.db"), Durability::default())?);
/// let app: Router = Router::new()
///     .route_service("/webhooks", Ingest::new(Arc::clone(&store)))
///     .layer(VerifyOpenMailLayer::new("whsec_test")?);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Ingest<S> {
    config: Arc<Config<S>>,
}

struct Config<S> {
    store: Arc<S>,
    depth_limit: u64,
    retry_after: Duration,
    store_timeout: Duration,
    on_error: Option<ErrorHook>,
}

type ErrorHook = Arc<dyn Fn(&QueueError) + Send + Sync>;

impl<S> Clone for Config<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            depth_limit: self.depth_limit,
            retry_after: self.retry_after,
            store_timeout: self.store_timeout,
            on_error: self.on_error.clone(),
        }
    }
}

impl<S> Clone for Ingest<S> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for Ingest<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingest")
            .field("depth_limit", &self.config.depth_limit)
            .field("retry_after", &self.config.retry_after)
            .field("store_timeout", &self.config.store_timeout)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore> Ingest<S> {
    /// Stores into `store`, with a depth limit of 1,000,000 events, a `Retry-After` of 30 s
    /// and a store timeout of 5 s.
    pub fn new(store: Arc<S>) -> Self {
        Self {
            config: Arc::new(Config {
                store,
                depth_limit: 1_000_000,
                retry_after: Duration::from_secs(30),
                store_timeout: Duration::from_secs(5),
                on_error: None,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config<S> {
        // Builders run before the first clone, so this copies nothing in practice.
        Arc::make_mut(&mut self.config)
    }

    /// How many events may wait or run at once; past it, a new event gets `503` with
    /// `Retry-After` (a duplicate still gets `200`). 1,000,000 by default.
    pub fn depth_limit(mut self, events: u64) -> Self {
        self.config_mut().depth_limit = events;
        self
    }

    /// The `Retry-After` of the `503` answers; 30 s by default.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config_mut().retry_after = retry_after;
        self
    }

    /// How long the store may take to commit before the delivery gets `503`; 5 s by
    /// default, well inside OpenMail's 15 s. A commit that lands after that is kept, and
    /// OpenMail's retry is then a duplicate.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().store_timeout = timeout;
        self
    }

    /// Called with every store failure (also logged with `tracing`, when on).
    pub fn on_error(mut self, hook: impl Fn(&QueueError) + Send + Sync + 'static) -> Self {
        self.config_mut().on_error = Some(Arc::new(hook));
        self
    }
}

impl<S, B> Service<Request<B>> for Ingest<S>
where
    S: EventStore,
{
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let delivery = request.extensions().get::<Delivery>().cloned();
        let config = Arc::clone(&self.config);
        Box::pin(async move { Ok(config.ingest(delivery).await) })
    }
}

impl<S: EventStore> Config<S> {
    async fn ingest(&self, delivery: Option<Delivery>) -> Response<String> {
        let Some(delivery) = delivery else {
            #[cfg(feature = "tracing")]
            tracing::error!(
                "queue: a request reached Ingest without a Delivery; put Ingest behind \
                 VerifyOpenMailLayer"
            );
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "not verified");
        };
        let key = event_key(&delivery);
        let answer = tokio::time::timeout(
            self.store_timeout,
            self.store.insert(key, delivery.clone(), self.depth_limit),
        )
        .await;
        let error = match answer {
            Ok(Ok(Inserted::Stored)) => return acknowledge(&delivery, false),
            Ok(Ok(Inserted::Duplicate)) => return acknowledge(&delivery, true),
            Ok(Ok(Inserted::Full)) => {
                #[cfg(feature = "tracing")]
                tracing::warn!(
                    depth_limit = self.depth_limit,
                    "queue: the store is full; answering 503"
                );
                return self.unavailable("store full");
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => QueueError::unavailable(format!(
                "the store did not commit within {:?}",
                self.store_timeout
            )),
        };
        #[cfg(feature = "tracing")]
        tracing::error!(error = %error, source = ?std::error::Error::source(&error), "queue: could not store an event; answering 503");
        if let Some(hook) = &self.on_error {
            hook(&error);
        }
        self.unavailable("store unavailable")
    }

    fn unavailable(&self, reason: &'static str) -> Response<String> {
        let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, reason);
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.retry_after.as_secs().max(1)),
        );
        response
    }
}

/// The store's key: the [`DedupKey`] digest, or, for a body without `event_id`, the digest
/// of the body itself.
pub(crate) fn event_key(delivery: &Delivery) -> [u8; 32] {
    match DedupKey::from_delivery(delivery) {
        Some(key) => *key.digest(),
        None => {
            let mut hasher = Sha256::new();
            hasher.update(BODY_KEY_DOMAIN);
            hasher.update(delivery.body());
            hasher.finalize().into()
        }
    }
}

fn acknowledge(delivery: &Delivery, duplicate: bool) -> Response<String> {
    let event_type = delivery.event().map(|event| event.event_type());
    let mut body = serde_json::json!({
        "ok": true,
        "event": event_type,
        "event_id": delivery.event_id(),
    });
    if let (true, Some(fields)) = (duplicate, body.as_object_mut()) {
        fields.insert("duplicate".to_owned(), serde_json::Value::Bool(true));
    }
    let mut response = Response::new(body.to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn plain(status: StatusCode, reason: &'static str) -> Response<String> {
    let mut response = Response::new(reason.to_owned());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
