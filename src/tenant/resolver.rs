use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Uri};
use tower::BoxError;

use super::TenantSecrets;
use crate::LogSafe;
use crate::protocol::{Claim, MAX_CLAIMED_ID_LEN};

/// The future [`SecretResolver::lookup`] returns, as the crate names it inside.
pub(crate) type ResolveFuture =
    Pin<Box<dyn Future<Output = Result<Option<TenantSecrets>, BoxError>> + Send>>;

/// A tenant: one inbox, or the account.
///
/// - Whose secrets a delivery needs: what a [`SecretResolver`] routes on, and the only
///   thing its lookup sees. Because the lookup gets nothing but this value, a cache keyed
///   on it ([`CachedResolver`](super::CachedResolver)) can never store one tenant's answer
///   under another's key.
/// - Whose secret verified a delivery, which is what that secret may authenticate
///   ([`covers`](Self::covers)): an inbox's secret only events naming that inbox, the
///   account's any event ([`TenantSecrets::scopes`](super::TenantSecrets::scopes),
///   [`Delivery::scope`](crate::Delivery::scope)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Tenant {
    /// One inbox, by id: its own webhook's secrets (and usually the account's as a
    /// fallback).
    Inbox(String),
    /// No inbox named: the account webhook's secrets (pod events, for example).
    Account,
}

impl Tenant {
    /// The tenant a body claims to belong to, read from its top-level `inbox_id` before
    /// (or without) a full parse: [`Tenant::Inbox`], or [`Tenant::Account`] when the body
    /// names no inbox, names one over 255 bytes, or cannot be read (not JSON, an envelope
    /// key twice). This is the layer's default routing, for receivers that look up secrets
    /// themselves ([`TenantVerifier`](super::TenantVerifier)). Untrusted until the
    /// signature verifies under a secret that [`covers`](Self::covers) the body.
    ///
    /// ```
    /// use openmail_webhooks::tenant::Tenant;
    ///
    /// let body = br#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a"}"#;
    /// assert_eq!(Tenant::claimed_by(body), Tenant::Inbox("inb_a".into()));
    /// assert_eq!(Tenant::claimed_by(br#"{"inbox_id":"a","inbox_id":"b"}"#), Tenant::Account);
    /// ```
    pub fn claimed_by(body: &[u8]) -> Self {
        let claim = Claim::read(body).ok();
        match claim.as_ref().and_then(|claim| claim.inbox_id(body)) {
            Some(inbox) if inbox.len() <= MAX_CLAIMED_ID_LEN => Self::Inbox(inbox.to_owned()),
            _ => Self::Account,
        }
    }

    /// Whether this tenant's secret may authenticate a body whose top-level `inbox_id` is
    /// `inbox_id`: the account's any body, an inbox's only a body naming that inbox.
    pub fn covers(&self, inbox_id: Option<&str>) -> bool {
        match self {
            Self::Account => true,
            Self::Inbox(inbox) => inbox_id == Some(inbox.as_str()),
        }
    }
}

impl std::fmt::Display for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inbox(inbox) => write!(f, "inbox {}", LogSafe::new(inbox)),
            Self::Account => f.write_str("the account"),
        }
    }
}

/// Finds the secrets for one delivery's tenant, for example in a database.
///
/// It works in two steps:
/// 1. [`route`](Self::route) names the [`Tenant`] from the request head and the body's
///    claim (both untrusted): by default the body's top-level `inbox_id`, or the account
///    when it names none;
/// 2. [`lookup`](Self::lookup) finds that tenant's [`TenantSecrets`], seeing only the
///    tenant.
///
/// The layer then accepts the delivery only if a returned secret verifies it **and** that
/// secret's tenant [`covers`](Tenant::covers) the inbox the body names.
///
/// ```
/// use std::{future::Future, pin::Pin};
/// use openmail_webhooks::tenant::{SecretResolver, Tenant, TenantSecrets};
/// use tower::BoxError;
///
/// type Lookup = Pin<Box<dyn Future<Output = Result<Option<TenantSecrets>, BoxError>> + Send>>;
///
/// struct FromDatabase; // holds a connection pool in real code
///
/// impl SecretResolver for FromDatabase {
///     fn lookup(&self, tenant: &Tenant) -> Lookup {
///         let tenant = tenant.clone();
///         Box::pin(async move {
///             let Tenant::Inbox(inbox) = tenant else { return Ok(None) };
///             // let secret = sqlx::query_scalar("SELECT secret FROM inboxes WHERE id = ?")...
///             let secret = format!("whsec_for_{inbox}");
///             Ok(Some(TenantSecrets::for_inbox(inbox, [secret])?))
///         })
///     }
/// }
/// ```
pub trait SecretResolver: Send + Sync + 'static {
    /// Names the tenant whose secrets this delivery needs. The default is the body's
    /// top-level `inbox_id`, or [`Tenant::Account`] when it names none.
    fn route(&self, request: &TenantRequest<'_>) -> Tenant {
        match request.inbox_id() {
            Some(inbox) => Tenant::Inbox(inbox.to_owned()),
            None => Tenant::Account,
        }
    }

    /// Starts the lookup of one tenant's secrets.
    ///
    /// `Ok(None)` means no secret is known for the tenant (the layer refuses the delivery
    /// as it refuses any forgery); `Err` means the lookup itself failed (the layer answers
    /// `503` with `Retry-After`, so OpenMail retries).
    #[allow(clippy::type_complexity)]
    fn lookup(
        &self,
        tenant: &Tenant,
    ) -> Pin<Box<dyn Future<Output = Result<Option<TenantSecrets>, BoxError>> + Send>>;

    /// Called when a delivery for `tenant` is refused after its lookup: this resolver knew
    /// no secret for the tenant, or the secrets it returned did not verify the delivery.
    ///
    /// The delivery is answered at once, whatever this does: a refusal never waits for
    /// another lookup, so a forgery naming a known inbox costs what one naming an unknown
    /// inbox costs. What the hook can do is prepare later deliveries:
    /// [`CachedResolver`](super::CachedResolver) forgets the tenant's cached answer once it
    /// is older than the refresh interval, so a rotated secret is looked up by the next
    /// delivery, while forgeries cannot force more than one lookup per tenant per
    /// interval.
    ///
    /// `Err` answers the delivery as a lookup that could not be served (`503` with
    /// `Retry-After`, the error as the rejection's cause) instead of `400`.
    /// [`CachedResolver`](super::CachedResolver) does so while the lookups it allows
    /// tenants never seen to verify are all taken, when a delivery for such a tenant is
    /// answered `503` before any lookup: every refusal then gets that answer, so the status
    /// does not tell which tenants hold the lookups kept in reserve. The default does
    /// nothing and returns `Ok`.
    fn refused(&self, tenant: &Tenant) -> Result<(), BoxError> {
        let _ = tenant;
        Ok(())
    }

    /// Called after a delivery for `tenant` verified under the secrets this resolver
    /// returned. Only genuine deliveries reach it, so it is a trustworthy signal that the
    /// tenant is real: [`CachedResolver`](super::CachedResolver) keeps lookup capacity for
    /// such tenants that a flood naming random inboxes cannot take. The default does
    /// nothing.
    fn verified(&self, tenant: &Tenant) {
        let _ = tenant;
    }
}

impl<R: SecretResolver + ?Sized> SecretResolver for Arc<R> {
    fn route(&self, request: &TenantRequest<'_>) -> Tenant {
        (**self).route(request)
    }

    fn lookup(
        &self,
        tenant: &Tenant,
    ) -> Pin<Box<dyn Future<Output = Result<Option<TenantSecrets>, BoxError>> + Send>> {
        (**self).lookup(tenant)
    }

    fn refused(&self, tenant: &Tenant) -> Result<(), BoxError> {
        (**self).refused(tenant)
    }

    fn verified(&self, tenant: &Tenant) {
        (**self).verified(tenant)
    }
}

/// What a resolver may route on: the request head, and the inbox the body claims.
#[derive(Debug)]
pub struct TenantRequest<'a> {
    parts: &'a Parts,
    inbox_id: Option<&'a str>,
}

impl<'a> TenantRequest<'a> {
    pub(crate) fn new(parts: &'a Parts, inbox_id: Option<&'a str>) -> Self {
        Self { parts, inbox_id }
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
}
