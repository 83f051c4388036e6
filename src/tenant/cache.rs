use std::collections::HashMap;
use std::fmt;
use std::future::ready;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{ResolveFuture, SecretResolver, TenantRequest, TenantSecrets};

type KeyFn = dyn Fn(&TenantRequest<'_>) -> Option<String> + Send + Sync;

/// Keeps a resolver's answers for a while, so that hot tenants cost no lookup.
///
/// - Found secrets are kept for the TTL (default 60 s), and "no such tenant" answers for the
///   negative TTL (default 10 s), so a flood of deliveries for unknown inboxes cannot hammer
///   the database, while a newly created inbox is picked up within seconds, well inside
///   OpenMail's retries.
/// - Errors are never kept: the next delivery asks again.
/// - At most `capacity` tenants (default 10,000) are kept; when full, expired entries go
///   first, then the one closest to expiring.
/// - The key is the claimed inbox (`inbox:<id>`), else the claimed pod (`pod:<id>`), else
///   `account`. Set [`key`](Self::key) when the resolver routes on something else, such as
///   the path.
///
/// Concurrent misses for one tenant each ask the inner resolver; the cache's lock is never
/// held across a lookup, so a slow lookup never delays other tenants.
///
/// ```
/// use std::time::Duration;
/// use openmail_webhooks::tenant::{CachedResolver, InboxSecrets};
///
/// let resolver = CachedResolver::new(InboxSecrets::new().account(["whsec_account"])?)
///     .ttl(Duration::from_secs(300))
///     .capacity(50_000)
///     .key(|request| request.last_path_segment().map(str::to_owned));
/// # Ok::<(), openmail_webhooks::ConfigError>(())
/// ```
pub struct CachedResolver<R> {
    inner: R,
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    key: Arc<KeyFn>,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

struct Entry {
    expires: Instant,
    secrets: Option<TenantSecrets>,
}

impl<R: SecretResolver> CachedResolver<R> {
    /// Wraps `inner` with the default TTLs and capacity.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            capacity: 10_000,
            key: Arc::new(default_key),
            entries: Arc::default(),
        }
    }

    /// How long found secrets are kept. A rotated secret is picked up within this time.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long "no secret for this tenant" is kept.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// The most tenants kept at once.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// What identifies a tenant for caching; `None` bypasses the cache.
    pub fn key(
        mut self,
        key: impl Fn(&TenantRequest<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// Drops every kept answer, for example after a secret was rotated.
    pub fn clear(&self) {
        lock(&self.entries).clear();
    }

    /// How many tenants are kept now, expired ones included.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn default_key(request: &TenantRequest<'_>) -> Option<String> {
    Some(match (request.inbox_id(), request.pod_id()) {
        (Some(inbox), _) => format!("inbox:{inbox}"),
        (None, Some(pod)) => format!("pod:{pod}"),
        (None, None) => "account".to_owned(),
    })
}

fn lock(
    entries: &Mutex<HashMap<String, Entry>>,
) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    // A panic while holding this lock cannot leave the map half-updated in a way that
    // matters: every operation is a single insert, remove or lookup.
    entries.lock().unwrap_or_else(PoisonError::into_inner)
}

fn store(
    entries: &Mutex<HashMap<String, Entry>>,
    capacity: usize,
    key: String,
    secrets: Option<TenantSecrets>,
    ttl: Duration,
) {
    if capacity == 0 {
        return;
    }
    let now = Instant::now();
    let Some(expires) = now.checked_add(ttl) else {
        return;
    };
    let mut entries = lock(entries);
    if entries.len() >= capacity && !entries.contains_key(&key) {
        entries.retain(|_, entry| entry.expires > now);
        if entries.len() >= capacity {
            let soonest = entries
                .iter()
                .min_by_key(|(_, entry)| entry.expires)
                .map(|(key, _)| key.clone());
            if let Some(soonest) = soonest {
                entries.remove(&soonest);
            }
        }
    }
    entries.insert(key, Entry { expires, secrets });
}

impl<R: SecretResolver> SecretResolver for CachedResolver<R> {
    fn resolve(&self, request: &TenantRequest<'_>) -> ResolveFuture {
        let Some(key) = (self.key)(request) else {
            return self.inner.resolve(request);
        };
        if let Some(entry) = lock(&self.entries).get(&key) {
            if entry.expires > Instant::now() {
                return Box::pin(ready(Ok(entry.secrets.clone())));
            }
        }
        let lookup = self.inner.resolve(request);
        let entries = Arc::clone(&self.entries);
        let (capacity, ttl, negative_ttl) = (self.capacity, self.ttl, self.negative_ttl);
        Box::pin(async move {
            let result = lookup.await;
            if let Ok(secrets) = &result {
                let ttl = if secrets.is_some() { ttl } else { negative_ttl };
                store(&entries, capacity, key, secrets.clone(), ttl);
            }
            result
        })
    }
}

impl<R: fmt::Debug> fmt::Debug for CachedResolver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResolver")
            .field("inner", &self.inner)
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("capacity", &self.capacity)
            .field("cached", &lock(&self.entries).len())
            .finish_non_exhaustive()
    }
}
