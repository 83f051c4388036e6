//! Per-inbox secrets, for platforms that run one OpenMail inbox per user or agent.
//!
//! OpenMail lets each inbox have its own webhook URL and secret, which overrides the account
//! webhook; each delivery is signed with the secret of the URL it goes to. A receiver for
//! many inboxes therefore needs the secret of the right inbox for each delivery.
//!
//! [`VerifyOpenMailLayer::with_resolver`](crate::VerifyOpenMailLayer::with_resolver) takes
//! a [`SecretResolver`]:
//!
//! - [`InboxSecrets`]: a fixed map, routed by the body's `inbox_id` or by the URL path, with
//!   an optional account-wide fallback;
//! - your own async resolver, for secrets in a database;
//! - [`CachedResolver`] around it, to keep hot tenants' secrets for a while.
//!
//! # How a delivery is checked
//!
//! 1. The head is checked as always (headers present and well-formed, timestamp fresh):
//!    forgeries are still refused before the body is read.
//! 2. The body is read within the limit, and only its top-level `inbox_id` and `pod_id` are
//!    extracted, without building a tree. This claim is untrusted.
//! 3. The resolver returns the candidate secrets, each with a [`SecretScope`].
//! 4. The signature is checked against them, over the buffered body. (With static secrets
//!    the MAC runs while the body streams in; here the secret is known only after the body
//!    has been read, so the MAC makes one pass over the buffered bytes.)
//! 5. **Tenant isolation:** the secret that matched must cover the inbox or pod the body
//!    names. Inbox A's secret never authenticates an event naming inbox B, whatever the URL.
//!
//! | outcome | status |
//! |---|---|
//! | no secret known for the tenant | `400` |
//! | the matching secret belongs to another tenant | `400` |
//! | the body's `inbox_id` or `pod_id` is not a single string | `400` |
//! | the resolver failed (database down) | `503`, so OpenMail retries |
//!
//! The rejection hook sees the precise reason either way.
//!
//! Pod lifecycle events (`pod.suspended`, `pod.reactivated`) name no inbox. They verify
//! under the account secret, or under secrets scoped to their `pod_id`.
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
//! # Ok::<(), openmail_webhooks::ConfigError>(())
//! ```

mod cache;
pub(crate) mod claim;
mod inboxes;
mod resolver;

pub use cache::CachedResolver;
pub use inboxes::InboxSecrets;
pub use resolver::{ResolveFuture, SecretResolver, SecretScope, TenantRequest, TenantSecrets};
