use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Uri};

use crate::layer::BoxError;
use crate::{ConfigError, Secret};

/// The future a [`SecretResolver`] returns.
///
/// `Ok(None)` means no secret is known for the tenant (the layer answers `400`); `Err` means
/// the lookup itself failed (the layer answers `503`, so OpenMail retries).
pub type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<Option<TenantSecrets>, BoxError>> + Send>>;

/// Finds the secrets for one delivery's tenant, for example in a database.
///
/// The resolver runs after the body has been read within the limit and before the
/// signature is checked. It sees the request head and the tenant the body *claims* (its
/// top-level `inbox_id` and `pod_id`), which is untrusted until the signature verifies: the
/// layer accepts the delivery only if a returned secret verifies it **and** that secret's
/// [`SecretScope`] covers the inbox or pod the body names.
///
/// Copy what you need out of the [`TenantRequest`] before returning the future: the future
/// must own its data.
///
/// ```
/// use openmail_webhooks::tenant::{ResolveFuture, SecretResolver, TenantRequest, TenantSecrets};
///
/// struct FromDatabase; // holds a connection pool in real code
///
/// impl SecretResolver for FromDatabase {
///     fn resolve(&self, request: &TenantRequest<'_>) -> ResolveFuture {
///         let inbox = request.inbox_id().map(str::to_owned);
///         Box::pin(async move {
///             let Some(inbox) = inbox else { return Ok(None) };
///             // let secret = sqlx::query_scalar("SELECT secret FROM inboxes WHERE id = ?")...
///             let secret = format!("whsec_for_{inbox}");
///             Ok(Some(TenantSecrets::inbox(inbox, [secret])?))
///         })
///     }
/// }
/// ```
pub trait SecretResolver: Send + Sync + 'static {
    /// Starts the lookup for one delivery.
    fn resolve(&self, request: &TenantRequest<'_>) -> ResolveFuture;
}

impl<R: SecretResolver + ?Sized> SecretResolver for Arc<R> {
    fn resolve(&self, request: &TenantRequest<'_>) -> ResolveFuture {
        (**self).resolve(request)
    }
}

/// What a resolver may look at: the request head, and the tenant the body claims.
#[derive(Debug)]
pub struct TenantRequest<'a> {
    parts: &'a Parts,
    inbox_id: Option<&'a str>,
    pod_id: Option<&'a str>,
}

impl<'a> TenantRequest<'a> {
    pub(crate) fn new(
        parts: &'a Parts,
        inbox_id: Option<&'a str>,
        pod_id: Option<&'a str>,
    ) -> Self {
        Self {
            parts,
            inbox_id,
            pod_id,
        }
    }

    /// The request URI.
    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    /// The request path, for routing tenants by URL such as `/webhooks/{inbox_id}`.
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The last non-empty segment of the path: `inb_a` in `/webhooks/inb_a` or
    /// `/webhooks/inb_a/`.
    pub fn last_path_segment(&self) -> Option<&str> {
        self.path()
            .split('/')
            .rev()
            .find(|segment| !segment.is_empty())
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request extensions, where routers put matched path parameters.
    pub fn extensions(&self) -> &http::Extensions {
        &self.parts.extensions
    }

    /// The body's top-level `inbox_id`. Untrusted until verified.
    pub fn inbox_id(&self) -> Option<&str> {
        self.inbox_id
    }

    /// The body's top-level `pod_id`. Untrusted until verified.
    pub fn pod_id(&self) -> Option<&str> {
        self.pod_id
    }
}

/// Which events a secret may authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SecretScope {
    /// Any event: the account webhook's secret.
    Account,
    /// Only events whose top-level `inbox_id` is this inbox.
    Inbox(String),
    /// Only events whose top-level `pod_id` is this pod.
    Pod(String),
}

impl SecretScope {
    /// Whether a body that names `inbox_id` and `pod_id` is within this scope.
    pub fn covers(&self, inbox_id: Option<&str>, pod_id: Option<&str>) -> bool {
        match self {
            Self::Account => true,
            Self::Inbox(inbox) => inbox_id == Some(inbox.as_str()),
            Self::Pod(pod) => pod_id == Some(pod.as_str()),
        }
    }
}

impl fmt::Display for SecretScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Account => f.write_str("the account"),
            Self::Inbox(inbox) => write!(f, "inbox {inbox}"),
            Self::Pod(pod) => write!(f, "pod {pod}"),
        }
    }
}

/// The secrets a resolver found for one delivery, each with the scope it may authenticate.
///
/// Secrets are tried in order. List a tenant's new secret before its old one during a
/// rotation; [`Delivery::secret_index`](crate::Delivery::secret_index) says which matched.
#[derive(Debug, Clone)]
pub struct TenantSecrets {
    entries: Vec<(SecretScope, Secret)>,
}

impl TenantSecrets {
    /// Secrets that authenticate events naming `inbox_id` only.
    pub fn inbox<I>(inbox_id: impl Into<String>, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Self::scoped(SecretScope::Inbox(inbox_id.into()), secrets)
    }

    /// Secrets that authenticate events naming `pod_id` only.
    pub fn pod<I>(pod_id: impl Into<String>, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Self::scoped(SecretScope::Pod(pod_id.into()), secrets)
    }

    /// Account-wide secrets, which authenticate any event.
    pub fn account<I>(secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Self::scoped(SecretScope::Account, secrets)
    }

    /// Secrets that are already keyed, all with one scope. At least one is required.
    pub fn from_keyed(
        scope: SecretScope,
        secrets: impl IntoIterator<Item = Secret>,
    ) -> Result<Self, ConfigError> {
        let entries: Vec<_> = secrets
            .into_iter()
            .map(|secret| (scope.clone(), secret))
            .collect();
        if entries.is_empty() {
            return Err(ConfigError::NoSecrets);
        }
        Ok(Self { entries })
    }

    fn scoped<I>(scope: SecretScope, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let keyed = secrets
            .into_iter()
            .map(Secret::new)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_keyed(scope, keyed)
    }

    /// These secrets, then `other`'s: for example an inbox's own, then the account fallback.
    pub fn and(mut self, other: TenantSecrets) -> Self {
        self.entries.extend(other.entries);
        self
    }

    /// How many secrets there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always `false`: a `TenantSecrets` holds at least one secret.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The scopes, in order.
    pub fn scopes(&self) -> impl Iterator<Item = &SecretScope> {
        self.entries.iter().map(|(scope, _)| scope)
    }

    pub(crate) fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.entries.iter().map(|(_, secret)| secret)
    }

    pub(crate) fn scope(&self, index: usize) -> Option<&SecretScope> {
        self.entries.get(index).map(|(scope, _)| scope)
    }
}
