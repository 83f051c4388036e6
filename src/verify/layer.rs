use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use super::budget::Budget;
use super::deadline::Pace;
use super::{Rejection, VerifyOpenMail};
use crate::protocol::{Freshness, SecretRing};
use crate::tenant::SecretResolver;
use crate::{ConfigError, Verifier};

/// The default body limit: 4 MiB (see [`VerifyOpenMailLayer::body_limit`] for why).
pub(crate) const DEFAULT_BODY_LIMIT: usize = 4 * 1024 * 1024;

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

/// The memory budget when none is set: 64 MiB, or eight bodies at the limit if that is
/// more.
fn default_budget(body_limit: usize) -> usize {
    body_limit.saturating_mul(8).max(64 * 1024 * 1024)
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) freshness: Freshness,
    pub(crate) secrets: SecretSource,
    pub(crate) body_limit: usize,
    pub(crate) parse_events: bool,
    pub(crate) on_rejection: Option<RejectionHook>,
    pub(crate) respond: Option<RejectionResponder>,
    pub(crate) pace: Pace,
    pub(crate) budget: Arc<Budget>,
    budget_set: bool,
}

impl VerifyOpenMailLayer {
    /// A layer for one secret, exactly as OpenMail shows it (a `whsec_` prefix included).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Verifier::new(secret).map(Self::from_verifier)
    }

    /// A layer that accepts any of `secrets`, for a rotation in progress. The matching
    /// secret's index is reported in [`Delivery::secret_index`](crate::Delivery::secret_index).
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
                pace: Pace::default(),
                budget: Budget::new(default_budget(DEFAULT_BODY_LIMIT)),
                budget_set: false,
            }),
        }
    }

    /// The largest body accepted, in bytes; 4 MiB unless set. A larger `Content-Length` is
    /// refused before the body is read, and a streamed body at the frame that crosses the
    /// limit.
    ///
    /// Why 4 MiB: an OpenMail `message.received` payload carries the plain-text body plus,
    /// for each attachment, up to 50,000 characters of extracted text (up to 200 KB of
    /// UTF-8). A long thread with a dozen parsed attachments stays well under 4 MiB, while
    /// one request can pin at most 4 MiB of memory. Raise it if your inboxes receive more.
    pub fn body_limit(self, limit: usize) -> Self {
        self.map_config(|config| {
            config.body_limit = limit;
            if !config.budget_set {
                config.budget = Budget::new(default_budget(limit));
            }
        })
    }

    /// The most memory the bodies being read may hold together, in bytes: 64 MiB, or
    /// eight bodies at the limit if that is more, unless set.
    ///
    /// Each body leases what it holds as its bytes arrive: about the bytes received (frames
    /// under 4 KiB are gathered into chunks that grow with the body, from 256 bytes to
    /// 16 KiB), whatever the framing. A declared `Content-Length` that does not fit in what
    /// is free is refused before the body is read, but reserves nothing, so heads that
    /// never send their bodies hold no memory.
    /// Bodies over 64 KiB may together hold at most half the budget, so large uploads
    /// cannot crowd out the small deliveries OpenMail sends most. A body that does not fit
    /// is answered `503` with `Retry-After` ([`Rejection::OverBudget`]), so OpenMail
    /// retries. Keep it at least twice the [`body_limit`](Self::body_limit), or a body at
    /// the limit never fits.
    ///
    /// The budget is shared by every service this layer builds, and by its clones.
    pub fn memory_budget(self, bytes: usize) -> Self {
        self.map_config(|config| {
            config.budget = Budget::new(bytes);
            config.budget_set = true;
        })
    }

    /// The bytes the bodies being read hold now, out of the
    /// [`memory_budget`](Self::memory_budget): for metrics and tests.
    pub fn buffered_bytes(&self) -> usize {
        self.config.budget.held()
    }

    /// Whether to parse the verified body into an [`Event`](crate::Event), on by default.
    ///
    /// When on, the inner service finds an `Arc<Event>` in the request extensions. A
    /// verified body the event model cannot read (not JSON, not an object, no string
    /// `event`) is still handed on, as [`Event::Malformed`](crate::Event::Malformed): what
    /// is signed always reaches the inner service. Turn it off to parse the body yourself
    /// (for example into your own types); the [`Delivery`](crate::Delivery) extension and
    /// the body are there either way.
    pub fn parse_events(self, parse: bool) -> Self {
        self.map_config(|config| config.parse_events = parse)
    }

    /// The longest the whole body may take to arrive, counted from the moment the request
    /// reaches the layer; 10 s unless set. With per-inbox secrets the secret lookup gets as
    /// long again, counted from the end of the body. A body that misses it is answered `408 Request Timeout`
    /// ([`Rejection::BodyTimeout`]); a lookup that misses it `503` with `Retry-After`
    /// ([`Rejection::LookupTimeout`]). Either way the memory the request held is freed.
    ///
    /// It is a deadline for the whole body, not an idle timeout between frames, so a client
    /// that trickles one byte at a time cannot stretch it; see also
    /// [`min_body_rate`](Self::min_body_rate), which cuts slow bodies off much sooner.
    /// OpenMail expects an answer within 15 seconds.
    ///
    /// The deadline needs no async runtime: a request that has to wait registers a wake-up
    /// with one timer thread the crate starts on first use, and removes it when it ends.
    ///
    /// ```
    /// use std::time::Duration;
    /// use openmail_webhooks::VerifyOpenMailLayer;
    ///
    /// let layer = VerifyOpenMailLayer::new("whsec_test")?.body_deadline(Duration::from_secs(8));
    /// # Ok::<(), openmail_webhooks::ConfigError>(())
    /// ```
    pub fn body_deadline(self, deadline: Duration) -> Self {
        self.map_config(|config| config.pace.deadline = deadline)
    }

    /// The slowest a body may arrive: after `grace`, at least `bytes_per_second` on
    /// average, counted from the start. The default is 64 KiB/s after 2 s, so a 4 KiB
    /// delivery has about 2 s to arrive and a 1 MiB one about 18 s (cut to the
    /// [`body_deadline`](Self::body_deadline)). A `bytes_per_second` of 0 leaves only the
    /// deadline.
    ///
    /// This is what keeps stalled and trickling uploads from holding memory and
    /// connections for long: they are cut off (`408`) shortly after `grace`, however many
    /// there are, while OpenMail's deliveries arrive in milliseconds.
    pub fn min_body_rate(self, bytes_per_second: u32, grace: Duration) -> Self {
        self.map_config(|config| {
            config.pace.min_rate = bytes_per_second;
            config.pace.grace = grace;
        })
    }

    /// How far `X-Timestamp` may be from now; see [`Verifier::tolerance`].
    pub fn tolerance(self, tolerance: Duration) -> Self {
        self.map_config(|config| config.freshness.tolerance(tolerance))
    }

    /// Where "now" comes from; see [`Verifier::clock`].
    pub fn clock(self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
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
    /// A fixed list, keyed once.
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
        let mut debug = f.debug_struct("Config");
        debug
            .field("secrets", &self.secrets)
            .field("body_limit", &self.body_limit)
            .field("parse_events", &self.parse_events)
            .field("on_rejection", &self.on_rejection.is_some())
            .field("rejection_response", &self.respond.is_some())
            .field("pace", &self.pace)
            .field("memory_budget", &self.budget.limit());
        debug.finish()
    }
}
