use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use super::{Rejection, VerifyOpenMail};
use crate::protocol::{Freshness, SecretRing};
use crate::tenant::SecretResolver;
use crate::{Clock, ConfigError, Verifier};

/// The default body limit: 4 MiB.
///
/// An OpenMail `message.received` payload carries the plain-text body plus, for each
/// attachment, up to 50,000 characters of extracted text (up to 200 KB of UTF-8). A
/// long thread with a dozen parsed attachments stays well under 4 MiB, while one
/// request can pin at most 4 MiB of memory. Raise it with
/// [`VerifyOpenMailLayer::body_limit`] if your inboxes receive more.
pub const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

type RejectionHook = Arc<dyn Fn(&Rejection) + Send + Sync>;
type RejectionResponder = Arc<dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync>;

/// Verifies OpenMail webhooks before the inner service sees them.
///
/// Cheap to clone: the configuration sits behind one `Arc`.
///
/// ```
/// use std::time::Duration;
/// use openmail_webhooks::VerifyOpenMailLayer;
///
/// let layer = VerifyOpenMailLayer::with_secrets(["whsec_new", "whsec_old"])?
///     .body_limit(1024 * 1024)
///     .tolerance(Duration::from_secs(120))
///     .on_rejection(|rejection| eprintln!("webhook refused: {rejection}"));
/// # Ok::<(), openmail_webhooks::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct VerifyOpenMailLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) freshness: Freshness,
    pub(crate) secrets: SecretSource,
    pub(crate) body_limit: usize,
    pub(crate) parse_events: bool,
    pub(crate) on_rejection: Option<RejectionHook>,
    pub(crate) respond: Option<RejectionResponder>,
}

impl VerifyOpenMailLayer {
    /// A layer for one secret, exactly as OpenMail shows it (a `whsec_` prefix included).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Verifier::new(secret).map(Self::from_verifier)
    }

    /// A layer that accepts any of `secrets`, for a rotation in progress. The matching
    /// secret's index is reported in [`Delivery::secret_index`](super::Delivery::secret_index).
    pub fn with_secrets<I>(secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Verifier::with_secrets(secrets).map(Self::from_verifier)
    }

    /// A layer around an existing [`Verifier`].
    pub fn from_verifier(verifier: Verifier) -> Self {
        let (ring, freshness) = verifier.into_parts();
        Self::from_source(SecretSource::Static(ring), freshness)
    }

    /// A layer that looks up each delivery's secrets with `resolver`: per-inbox secrets for
    /// multi-tenant platforms. See the [`tenant`](crate::tenant) module.
    pub fn with_resolver(resolver: impl SecretResolver) -> Self {
        Self::from_source(
            SecretSource::Resolver(Arc::new(resolver)),
            Freshness::default(),
        )
    }

    fn from_source(secrets: SecretSource, freshness: Freshness) -> Self {
        Self {
            config: Arc::new(Config {
                freshness,
                secrets,
                body_limit: DEFAULT_BODY_LIMIT,
                parse_events: true,
                on_rejection: None,
                respond: None,
            }),
        }
    }

    /// The largest body accepted, in bytes; [`DEFAULT_BODY_LIMIT`] unless set. A larger
    /// `Content-Length` is refused before the body is read, and a streamed body at the
    /// frame that crosses the limit.
    pub fn body_limit(self, limit: usize) -> Self {
        self.map_config(|config| config.body_limit = limit)
    }

    /// Whether to parse the verified body into an [`Event`](crate::Event), on by default.
    ///
    /// When on, a verified body that is not a JSON object with a string `event` is refused
    /// with `400`, and the inner service finds an `Arc<Event>` in the request extensions.
    /// Turn it off to parse the body yourself (for example into your own types); the
    /// [`Delivery`](super::Delivery) extension and the body are there either way.
    pub fn parse_events(self, parse: bool) -> Self {
        self.map_config(|config| config.parse_events = parse)
    }

    /// How far `X-Timestamp` may be from now; see [`Verifier::tolerance`].
    pub fn tolerance(self, tolerance: Duration) -> Self {
        self.map_config(|config| config.freshness.tolerance(tolerance))
    }

    /// Where "now" comes from; see [`Verifier::clock`].
    pub fn clock(self, clock: impl Clock) -> Self {
        self.map_config(|config| config.freshness.clock(clock))
    }

    /// Calls `hook` with every rejection and its precise reason, for logs and metrics. The
    /// client only ever sees a short reason.
    pub fn on_rejection(self, hook: impl Fn(&Rejection) + Send + Sync + 'static) -> Self {
        self.map_config(|config| config.on_rejection = Some(Arc::new(hook)))
    }

    /// Replaces the default rejection response (the status of
    /// [`Rejection::status`] and a short `text/plain` reason).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{header, Response};
    /// use openmail_webhooks::VerifyOpenMailLayer;
    ///
    /// let layer = VerifyOpenMailLayer::new("whsec_test")?.rejection_response(|rejection| {
    ///     let body = format!(r#"{{"error":"{}"}}"#, rejection.client_message());
    ///     let mut response = Response::new(Bytes::from(body));
    ///     *response.status_mut() = rejection.status();
    ///     response
    ///         .headers_mut()
    ///         .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    ///     response
    /// });
    /// # Ok::<(), openmail_webhooks::ConfigError>(())
    /// ```
    pub fn rejection_response(
        self,
        respond: impl Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.map_config(|config| config.respond = Some(Arc::new(respond)))
    }

    fn map_config(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = Arc::unwrap_or_clone(self.config);
        change(&mut config);
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for VerifyOpenMailLayer {
    type Service = VerifyOpenMail<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyOpenMail::from_parts(inner, Arc::clone(&self.config))
    }
}

impl fmt::Debug for VerifyOpenMailLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOpenMailLayer")
            .field("config", &self.config)
            .finish()
    }
}

/// Where the secrets come from.
#[derive(Clone)]
pub(crate) enum SecretSource {
    /// A fixed list, keyed once: the MAC runs while the body streams in.
    Static(Arc<SecretRing>),
    /// Looked up per delivery, after the body is read.
    Resolver(Arc<dyn SecretResolver>),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(ring) => write!(f, "Static({} secrets)", ring.len()),
            Self::Resolver(_) => f.write_str("Resolver"),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("secrets", &self.secrets)
            .field("body_limit", &self.body_limit)
            .field("parse_events", &self.parse_events)
            .field("on_rejection", &self.on_rejection.is_some())
            .field("rejection_response", &self.respond.is_some())
            .finish()
    }
}
