use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tokio_rustls::rustls::ClientConfig;
use tower::{BoxError, Service};

use super::backoff::Backoff;
use super::endpoint::Endpoint;
use super::resume::{MemoryResumeStore, ResumeStore};
use super::status::ClientStatus;
use super::subscription::Subscription;
use super::transport::Dial;
use super::{
    DEFAULT_CONCURRENCY, DEFAULT_CONNECT_TIMEOUT, DEFAULT_HANDLER_RETRIES,
    DEFAULT_IN_FLIGHT_RETRIES, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PING_INTERVAL,
    DEFAULT_PONG_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, DEFAULT_SUBSCRIBE_TIMEOUT, DEFAULT_URL,
    WebSocketError, run,
};
use crate::body::VerifiedBody;

type StatusHook = Arc<dyn Fn(&ClientStatus) + Send + Sync + 'static>;

/// A client for OpenMail's WebSocket that hands each event to a tower `Service`, the same
/// one that serves verified webhooks. See the [module docs](super) for what it does.
///
/// A builder: each method takes `self` and returns it; [`serve`](Self::serve) runs it.
/// Cloning copies the configuration (the resume store and the status hook are shared).
///
/// `Debug` shows neither the API key nor the URL's query.
#[derive(Clone)]
pub struct WebSocketClient {
    config: Config,
}

#[derive(Clone)]
pub(crate) struct Config {
    /// `Bearer <key>`, marked sensitive.
    authorization: HeaderValue,
    pub(crate) endpoint: Endpoint,
    pub(crate) subscription: Subscription,
    pub(crate) resume: Arc<dyn ResumeStore>,
    pub(crate) dispatch_path: String,
    tls: Option<Arc<ClientConfig>>,
    on_status: Option<StatusHook>,
    pub(crate) reconnect: Backoff,
    pub(crate) retry: Backoff,
    pub(crate) retries: u32,
    pub(crate) in_flight_retries: u32,
    pub(crate) concurrency: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) subscribe_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    max_message_size: usize,
    pub(crate) shutdown_grace: Duration,
}

impl Config {
    pub(crate) fn dial(&self) -> Dial<'_> {
        Dial {
            endpoint: &self.endpoint,
            authorization: &self.authorization,
            tls: self.tls.as_ref(),
            max_message_size: self.max_message_size,
        }
    }

    pub(crate) fn report(&self, status: ClientStatus) {
        #[cfg(feature = "tracing")]
        match &status {
            ClientStatus::Reconnecting { .. }
            | ClientStatus::PossibleGap { .. }
            | ClientStatus::SkippedMessage { .. }
            | ClientStatus::ServerError { .. }
            | ClientStatus::HandlerFailed { .. }
            | ClientStatus::ResumeSaveFailed { .. } => {
                tracing::warn!(%status, "OpenMail WebSocket");
            }
            ClientStatus::EventHandled { .. } | ClientStatus::AlreadyHandled { .. } => {
                tracing::debug!(%status, "OpenMail WebSocket");
            }
            _ => tracing::info!(%status, "OpenMail WebSocket"),
        }
        if let Some(hook) = &self.on_status {
            hook(&status);
        }
    }
}

impl WebSocketClient {
    /// A client for the account whose API key is `api_key`, connecting to OpenMail's endpoint,
    /// `wss://api.openmail.sh/v1/ws`,
    /// and subscribing to every event. Surrounding whitespace (a newline read from a
    /// file) is trimmed; an empty key, or one with characters an HTTP header cannot
    /// carry, is refused.
    ///
    /// The key is sent as `Authorization: Bearer <key>` on the upgrade request, never in
    /// the URL, and appears in no `Debug`, `Display`, error or log of this crate.
    pub fn new(api_key: impl Into<String>) -> Result<Self, WebSocketError> {
        let api_key = api_key.into();
        let api_key = api_key.trim();
        if api_key.is_empty() || !api_key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(WebSocketError::InvalidApiKey);
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {api_key}"))
            .map_err(|_| WebSocketError::InvalidApiKey)?;
        authorization.set_sensitive(true);
        Ok(Self {
            config: Config {
                authorization,
                endpoint: Endpoint::parse(DEFAULT_URL)?,
                subscription: Subscription::all(),
                resume: Arc::new(MemoryResumeStore::new()),
                dispatch_path: "/webhooks".to_owned(),
                tls: None,
                on_status: None,
                reconnect: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
                retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
                retries: DEFAULT_HANDLER_RETRIES,
                in_flight_retries: DEFAULT_IN_FLIGHT_RETRIES,
                concurrency: DEFAULT_CONCURRENCY,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                subscribe_timeout: DEFAULT_SUBSCRIBE_TIMEOUT,
                ping_interval: DEFAULT_PING_INTERVAL,
                pong_timeout: DEFAULT_PONG_TIMEOUT,
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            },
        })
    }

    /// Connects to `url` instead of `wss://api.openmail.sh/v1/ws` (staging, a proxy, a test
    /// server).
    /// `wss://` goes anywhere, with the certificate verified; `ws://` only to a literal
    /// loopback address (`127.0.0.0/8`, `::1`), since events carry no signature and only
    /// TLS protects them and the key. The name `localhost` is taken to mean `127.0.0.1`
    /// and is never resolved, so that no hosts file or resolver can send the connection
    /// elsewhere; other names are refused for `ws://`. A URL with credentials or a `token` query
    /// parameter is refused: the key belongs in [`new`](Self::new).
    pub fn url(mut self, url: &str) -> Result<Self, WebSocketError> {
        self.config.endpoint = Endpoint::parse(url)?;
        Ok(self)
    }

    /// What to subscribe to; [`Subscription::all`] unless set.
    pub fn subscribe(mut self, subscription: Subscription) -> Self {
        self.config.subscription = subscription;
        self
    }

    /// Where the resume position is kept; in memory ([`MemoryResumeStore`]) unless set.
    pub fn resume_store(mut self, store: impl ResumeStore) -> Self {
        self.config.resume = Arc::new(store);
        self
    }

    /// The URI of the requests the service receives; `/webhooks` unless set, so that a
    /// router serving the webhook route routes WebSocket events the same way. Checked by
    /// [`serve`](Self::serve), which fails with
    /// [`WebSocketError::InvalidDispatchPath`] unless it is an absolute path.
    pub fn dispatch_path(mut self, path: &str) -> Self {
        path.clone_into(&mut self.config.dispatch_path);
        self
    }

    /// The TLS configuration for `wss://`: set it to trust another certificate authority
    /// (a test CA, a corporate proxy). Unless set, Mozilla's root certificates
    /// (`webpki-roots`) with the `ring` provider.
    pub fn tls_config(mut self, config: Arc<ClientConfig>) -> Self {
        self.config.tls = Some(config);
        self
    }

    /// Calls `hook` with each [`ClientStatus`]: connections, reconnections, possible gaps,
    /// skipped messages, each event's outcome, and the events the client gave up on
    /// ([`ClientStatus::HandlerFailed`], with the event: keep it there to handle it later).
    /// Keep it quick: it runs on the client's task.
    pub fn on_status(mut self, hook: impl Fn(&ClientStatus) + Send + Sync + 'static) -> Self {
        self.config.on_status = Some(Arc::new(hook));
        self
    }

    /// The reconnection schedule: `initial`, doubling up to `max`, with jitter (each delay
    /// is between half the schedule's and the schedule's), and back to `initial` after a
    /// connection that got its subscription confirmed. 1 s to 30 s unless set, as
    /// OpenMail asks.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.reconnect = Backoff::new(initial, max);
        self
    }

    /// How a failed event is retried in process: `retries` more attempts after the first,
    /// the first after `initial_delay`, doubling up to 30 s, with jitter. 3 retries from
    /// 1 s unless set. A `409` (the event in flight elsewhere, as the deduplication layer
    /// answers) is tried again on the same schedule, up to 8 times (1 to 2 min in all with
    /// the default schedule), without using these retries.
    pub fn handler_retries(mut self, retries: u32, initial_delay: Duration) -> Self {
        self.config.retries = retries;
        self.config.retry = Backoff::new(initial_delay, Duration::from_secs(30));
        self
    }

    /// How many events the service handles at once; 16 unless set (at least 1).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.config.concurrency = limit.max(1);
        self
    }

    /// How long connecting (TCP, TLS and the upgrade) may take; 10 s unless set.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How long to wait for `subscribed`; 10 s unless set.
    pub fn subscribe_timeout(mut self, timeout: Duration) -> Self {
        self.config.subscribe_timeout = timeout;
        self
    }

    /// How often the client sends an application-level `ping`; 30 s, as often as the
    /// server pings, unless set (at least 1 s, for the server's rate limit).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = interval.max(Duration::from_secs(1));
        self
    }

    /// How long a `ping` may go without its `pong` before the connection is presumed dead
    /// and replaced; 10 s, what the server allows the client, unless set.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.config.pong_timeout = timeout;
        self
    }

    /// The largest message accepted, in bytes; 16 MiB (four times the webhook layer's
    /// default body limit) unless set. A larger one ends the connection.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// How long stopping waits for events being handled; 10 s unless set. Those still running after it are abandoned, not counted as handled,
    /// and replayed by the next run (when the position is persisted).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Connects, and hands every event to `service` until a fatal error:
    /// [`WebSocketError::Unauthorized`] (close code `4001`),
    /// [`WebSocketError::SubscribeRefused`] or
    /// [`WebSocketError::InvalidDispatchPath`]. Everything else reconnects.
    pub async fn serve<S, B>(self, service: S) -> Result<(), WebSocketError>
    where
        S: Service<Request<VerifiedBody>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: 'static,
    {
        self.serve_with_shutdown(service, std::future::pending())
            .await
    }

    /// Like [`serve`](Self::serve), and stops cleanly when `shutdown` completes: it closes
    /// the connection (code `1000`), lets the events being handled finish (within the
    /// [grace](Self::shutdown_grace)), without retries, saves the resume position, and
    /// returns `Ok(())`.
    pub async fn serve_with_shutdown<S, B, F>(
        self,
        service: S,
        shutdown: F,
    ) -> Result<(), WebSocketError>
    where
        S: Service<Request<VerifiedBody>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: 'static,
        F: Future<Output = ()>,
    {
        run::serve(Arc::new(self.config), service, shutdown).await
    }
}

impl fmt::Debug for WebSocketClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.config;
        f.debug_struct("WebSocketClient")
            .field("url", &config.endpoint.display())
            .field("api_key", &"<redacted>")
            .field("subscription", &config.subscription)
            .field("dispatch_path", &config.dispatch_path)
            .field("custom_tls", &config.tls.is_some())
            .field("reconnect", &config.reconnect)
            .field("retries", &config.retries)
            .field("concurrency", &config.concurrency)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_unprintable_key_is_refused() {
        for key in ["", "   ", "\n", "om key", "om_\u{e9}", "om\u{0}key"] {
            assert!(
                matches!(
                    WebSocketClient::new(key),
                    Err(WebSocketError::InvalidApiKey)
                ),
                "{key:?}"
            );
        }
        assert!(WebSocketClient::new(" om_live_123\n").is_ok());
    }

    #[test]
    fn debug_hides_the_key() {
        let client = WebSocketClient::new("om_live_secret_key_42")
            .unwrap()
            .url("wss://example.com/v1/ws?region=eu")
            .unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("om_live_secret_key_42"), "{shown}");
        assert!(!shown.contains("region=eu"), "{shown}");
        assert!(shown.contains("wss://example.com/v1/ws"), "{shown}");
        let header = format!("{:?}", client.config.authorization);
        assert!(!header.contains("secret"), "{header}");
    }
}
