//! Per-inbox secrets, for platforms that run one OpenMail inbox per user or agent.
//!
//! OpenMail lets each inbox have its own webhook URL and secret, which overrides the account
//! webhook; each delivery is signed with the secret of the URL it goes to. Everything else
//! (inboxes without a webhook of their own, pod events) is signed with the account
//! webhook's secret. OpenMail has no pod-level secrets. A receiver for many inboxes
//! therefore needs the secret of the right inbox for each delivery.
//!
//! [`VerifyOpenMailLayer::with_resolver`](crate::VerifyOpenMailLayer::with_resolver) takes
//! a [`SecretResolver`]:
//!
//! - [`InboxSecrets`]: a fixed map, routed by the body's `inbox_id` or by the URL path, with
//!   an optional account-wide fallback;
//! - your own async resolver, for secrets in a database;
//! - [`CachedResolver`] around it, to keep hot tenants' secrets for a while and to bound
//!   the lookups forged deliveries can cause.
//!
//! # How a delivery is checked
//!
//! 1. The head is checked as always (headers present and well-formed, timestamp fresh):
//!    forgeries are still refused before the body is read.
//! 2. The body is read within the limit, and only its top-level `event_id` and `inbox_id`
//!    are extracted, without building a tree. This claim is untrusted. A claim that cannot
//!    be read (not JSON, an envelope key twice), or an `inbox_id` over 255 bytes, names no
//!    inbox: the default routing then looks up the account ([`Tenant::claimed_by`]).
//! 3. The resolver names the [`Tenant`] and looks up its [`TenantSecrets`], each secret
//!    with the tenant it belongs to.
//! 4. The signature is checked against them, over the buffered body, and the secret that
//!    matched must [cover](Tenant::covers) the inbox the body names: inbox A's secret
//!    never authenticates an event naming inbox B, whatever the URL. This is
//!    [`TenantVerifier::verify`], the same check a serverless receiver runs without
//!    tower.
//!
//! | outcome | status |
//! |---|---|
//! | no secret known for the tenant, the matching secret belongs to another tenant (or is an inbox's, on a body that names no inbox it can be held to), or the signature is wrong | `400 signature mismatch`, the same answer for each |
//! | verified under a secret that covers the body | the inner service's, whatever the body holds ([`Event::Malformed`](crate::Event::Malformed) when the model cannot read it) |
//! | the resolver failed (database down), or too many lookups are in flight | `503` with `Retry-After`, so OpenMail retries |
//! | an unknown tenant or a wrong signature, after the lookup, while [`CachedResolver`]'s lookups for tenants never seen to verify are all taken | the same `503`, so the status does not tell which tenants verified before |
//! | the lookup outlived the body deadline | `503` with `Retry-After` |
//!
//! A client learns nothing about which inboxes exist: an unknown inbox gets the same status
//! and body as a wrong signature, after the same MACs over its body (four, whatever the
//! tenant's number of secrets up to four), and no refusal waits for a lookup.
//! The rejection hook and `tracing` see the precise reason.
//!
//! ```
//! use axum::{routing::post, Router};
//! use openmail_webhooks::tenant::InboxSecrets;
//! use openmail_webhooks::VerifyOpenMailLayer;
//!
//! // One URL per inbox: /webhooks/inb_a, /webhooks/inb_b.
//! let secrets = InboxSecrets::parse("inb_a:whsec_a,inb_b:whsec_b")?.route_by_path();
//! let app: Router = Router::new()
//!     .route("/webhooks/{inbox_id}", post(|| async { "ok" }))
//!     .layer(VerifyOpenMailLayer::with_resolver(secrets));
//! # Ok::<(), openmail_webhooks::tenant::SecretListError>(())
//! ```

mod cache;
mod inboxes;
mod resolver;
mod secrets;

pub use cache::CachedResolver;
pub use inboxes::{InboxSecrets, SecretListError};
pub use resolver::{SecretResolver, Tenant, TenantRequest};
pub use secrets::{TenantSecrets, TenantVerifier};

pub(crate) use resolver::ResolveFuture;
pub(crate) use secrets::REFUSAL_MACS;
