use std::collections::HashMap;
use std::fmt;
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
// The model checks (`--cfg openmail_loom`) explore every interleaving of these locks.
#[cfg(all(test, openmail_loom))]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(all(test, openmail_loom)))]
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tower::BoxError;

use super::{ResolveFuture, SecretResolver, Tenant, TenantRequest};
use crate::expiry::ExpiryMap;
use crate::tenant::TenantSecrets;

/// Keeps a resolver's answers for a while, so that hot tenants cost no lookup, and bounds
/// the lookups that anonymous requests can cause.
///
/// - **Keyed on what the inner resolver routes on.** The key is the [`Tenant`] that the
///   inner resolver's [`route`](SecretResolver::route) names, and its lookup sees only that
///   tenant, so one tenant's answer can never be stored under another's key.
/// - **Found secrets** are kept for the TTL (default 60 s), **"no such tenant"** for the
///   negative TTL (default 10 s). Errors are never kept.
/// - **One lookup per tenant at a time.** Concurrent misses for one tenant share one
///   lookup; if every request waiting on it goes away, the lookup is dropped.
/// - **Lookups in flight are bounded** (default 64, across all tenants). A miss beyond
///   that is answered at once with an error, which the layer turns into `503` with
///   `Retry-After`, so a flood of forged deliveries naming random inboxes costs at most
///   that many concurrent lookups. Tenants never seen to verify may use only half of
///   them: the other half is kept for tenants that delivered genuinely before (the last
///   `capacity` of them, remembered past their cache entries), so such a flood cannot lock
///   real tenants out. A tenant that has never delivered competes with the flood, and
///   OpenMail retries what gets `503`.
/// - **The reserve is not told.** While the half for tenants never seen to verify is
///   full, every refused delivery is answered `503` with `Retry-After` (through
///   [`refused`](SecretResolver::refused)), the answer a stranger's delivery gets before
///   any lookup. A forgery naming a tenant that verified before, which got a lookup from
///   the reserve, therefore gets the same status, headers and body as one naming any
///   other inbox, and the same MACs. (The lookup itself still takes its time.)
/// - **At most `capacity` tenants** (default 10,000) are kept; when full, the entry closest
///   to expiring goes, in O(log n). A claimed `inbox_id` is at most 255
///   bytes (a longer one routes as the account), so the cache's keys are bounded in bytes as well as in number.
/// - **Rotation.** [`invalidate`](Self::invalidate) forgets one tenant. And when a delivery
///   is refused ([`refused`](SecretResolver::refused)), the tenant's answer is forgotten
///   if it is older than the refresh interval (default 10 s), so the next delivery looks
///   the tenant up afresh and picks up a rotated secret. The refused delivery itself is
///   answered at once, after the same MACs as any other refusal: waiting for a fresh
///   lookup would make a forgery naming a known inbox cost more than one naming an
///   unknown inbox. So after an unannounced rotation, the first delivery signed with the
///   new secret may be refused (`400`) and accepted when OpenMail retries it; call
///   [`invalidate`](Self::invalidate) when you rotate to avoid that. Forgeries cannot force
///   more than one lookup per tenant per refresh interval.
///
/// ```
/// use std::time::Duration;
/// use openmail_webhooks::tenant::{CachedResolver, InboxSecrets, Tenant};
///
/// let resolver = CachedResolver::new(InboxSecrets::new().account(["whsec_account"])?)
///     .ttl(Duration::from_secs(300))
///     .capacity(50_000)
///     .max_lookups_in_flight(32);
/// // After rotating inbox a's secret in the database:
/// resolver.invalidate(&Tenant::Inbox("inb_a".into()));
/// # Ok::<(), openmail_webhooks::ConfigError>(())
/// ```
pub struct CachedResolver<R> {
    inner: Arc<R>,
    cache: Arc<Cache>,
}

struct Cache {
    policy: Policy,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct Policy {
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    max_lookups: usize,
    refresh_interval: Duration,
}

#[derive(Default)]
struct State {
    /// Every answer, by when it expires, for evicting the soonest in O(log n).
    entries: ExpiryMap<Tenant, Entry>,
    flights: HashMap<Tenant, Arc<Flight>>,
    /// Tenants seen to verify, by when they last did, for evicting the least recent.
    trusted: ExpiryMap<Tenant, ()>,
}

struct Entry {
    secrets: Option<TenantSecrets>,
    fetched: Instant,
}

impl<R: SecretResolver> CachedResolver<R> {
    /// Wraps `inner` with the default TTLs and bounds.
    pub fn new(inner: R) -> Self {
        Self {
            inner: Arc::new(inner),
            cache: Arc::new(Cache {
                policy: Policy {
                    ttl: Duration::from_secs(60),
                    negative_ttl: Duration::from_secs(10),
                    capacity: 10_000,
                    max_lookups: 64,
                    refresh_interval: Duration::from_secs(10),
                },
                state: Mutex::default(),
            }),
        }
    }

    /// How long found secrets are kept.
    pub fn ttl(self, ttl: Duration) -> Self {
        self.map_policy(|policy| policy.ttl = ttl)
    }

    /// How long "no secret for this tenant" is kept.
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        self.map_policy(|policy| policy.negative_ttl = ttl)
    }

    /// The most tenants kept at once.
    pub fn capacity(self, capacity: usize) -> Self {
        self.map_policy(|policy| policy.capacity = capacity)
    }

    /// The most lookups running at once, across all tenants; at least one.
    pub fn max_lookups_in_flight(self, lookups: usize) -> Self {
        self.map_policy(|policy| policy.max_lookups = lookups.max(1))
    }

    /// How old a tenant's answer must be before a refused delivery makes the next one look
    /// the tenant up again (default 10 s).
    pub fn refresh_interval(self, interval: Duration) -> Self {
        self.map_policy(|policy| policy.refresh_interval = interval)
    }

    fn map_policy(self, change: impl FnOnce(&mut Policy)) -> Self {
        let mut policy = self.cache.policy;
        change(&mut policy);
        Self {
            inner: self.inner,
            cache: Arc::new(Cache {
                policy,
                state: Mutex::default(),
            }),
        }
    }

    /// Forgets one tenant's answer, for example right after its secret was rotated.
    pub fn invalidate(&self, tenant: &Tenant) {
        self.cache.lock().remove(tenant);
    }

    /// Forgets every answer.
    pub fn clear(&self) {
        let mut state = self.cache.lock();
        state.entries.clear();
    }

    /// How many tenants are kept now, expired ones included.
    pub fn len(&self) -> usize {
        self.cache.lock().entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many lookups are running now.
    pub fn lookups_in_flight(&self) -> usize {
        self.cache.lock().flights.len()
    }

    /// Joins the tenant's running lookup, or starts one if the bound allows: all of it for
    /// tenants seen to verify, half of it for the others.
    fn join_or_start(&self, state: &mut State, tenant: &Tenant) -> ResolveFuture {
        let flight = match state.flights.get(tenant) {
            Some(flight) => Arc::clone(flight),
            None => {
                let limit = self.cache.policy.max_lookups;
                let trusted = state.trusted.contains_key(tenant);
                let busy = if trusted {
                    state.flights.len() >= limit
                } else {
                    state.full_for_strangers(limit)
                };
                if busy {
                    return Box::pin(ready(Err(Box::new(LookupsBusy { limit }) as BoxError)));
                }
                let flight = Arc::new(Flight {
                    trusted,
                    tenant: tenant.clone(),
                    cache: Arc::clone(&self.cache),
                    state: Mutex::new(FlightState::Running(self.inner.lookup(tenant))),
                    wakers: Arc::new(Wakers::default()),
                    waiters: Mutex::new(0),
                });
                state.flights.insert(tenant.clone(), Arc::clone(&flight));
                flight
            }
        };
        Box::pin(Waiter::new(flight))
    }
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation under this lock is a single insert, remove or lookup in maps
        // that stay consistent between them: a panic elsewhere cannot leave them torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store(&self, tenant: Tenant, secrets: Option<TenantSecrets>) {
        let policy = self.policy;
        if policy.capacity == 0 {
            return;
        }
        let ttl = if secrets.is_some() {
            policy.ttl
        } else {
            policy.negative_ttl
        };
        let now = Instant::now();
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        let mut state = self.lock();
        state.remove(&tenant);
        while state.entries.len() >= policy.capacity {
            if state.entries.pop_oldest().is_none() {
                break;
            }
        }
        state.entries.insert(
            tenant,
            Entry {
                secrets,
                fetched: now,
            },
            expires,
        );
    }
}

impl State {
    /// Whether a tenant never seen to verify would be refused a lookup now: all `limit`
    /// lookups are running, or the half of them such tenants may use.
    fn full_for_strangers(&self, limit: usize) -> bool {
        let strangers = self.flights.values().filter(|f| !f.trusted).count();
        self.flights.len() >= limit || strangers >= limit.div_ceil(2)
    }

    fn remove(&mut self, tenant: &Tenant) {
        self.entries.remove(tenant);
    }
}

impl<R: SecretResolver> SecretResolver for CachedResolver<R> {
    fn route(&self, request: &TenantRequest<'_>) -> Tenant {
        self.inner.route(request)
    }

    fn lookup(
        &self,
        tenant: &Tenant,
    ) -> Pin<Box<dyn Future<Output = Result<Option<TenantSecrets>, BoxError>> + Send>> {
        let mut state = self.cache.lock();
        if let Some((entry, expires)) = state.entries.get(tenant) {
            if expires > Instant::now() {
                return Box::pin(ready(Ok(entry.secrets.clone())));
            }
        }
        self.join_or_start(&mut state, tenant)
    }

    fn verified(&self, tenant: &Tenant) {
        let capacity = self.cache.policy.capacity;
        if capacity == 0 {
            return;
        }
        let mut state = self.cache.lock();
        state.trusted.insert(tenant.clone(), (), Instant::now());
        while state.trusted.len() > capacity {
            if state.trusted.pop_oldest().is_none() {
                break;
            }
        }
        self.inner.verified(tenant);
    }

    fn refused(&self, tenant: &Tenant) -> Result<(), BoxError> {
        let policy = self.cache.policy;
        let now = Instant::now();
        let saturated = {
            let mut state = self.cache.lock();
            // Known or not, a tenant's answer is forgotten once it is older than the
            // refresh interval: the next delivery looks again, and picks up a rotated
            // secret. This delivery is not held for it.
            let due = state.entries.get(tenant).is_some_and(|(entry, _)| {
                entry
                    .fetched
                    .checked_add(policy.refresh_interval)
                    .is_some_and(|due| due <= now)
            });
            if due {
                state.remove(tenant);
            }
            state.full_for_strangers(policy.max_lookups)
        };
        self.inner.refused(tenant)?;
        if saturated {
            return Err(Box::new(RefusedWhileBusy {
                tenant: tenant.clone(),
                limit: policy.max_lookups,
            }));
        }
        Ok(())
    }
}

impl<R: fmt::Debug> fmt::Debug for CachedResolver<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.cache.lock();
        f.debug_struct("CachedResolver")
            .field("inner", &self.inner)
            .field("policy", &self.cache.policy)
            .field("cached", &state.entries.len())
            .field("lookups_in_flight", &state.flights.len())
            .finish()
    }
}

/// The answer when the bound on lookups in flight is reached.
#[derive(Debug)]
struct LookupsBusy {
    limit: usize,
}

impl fmt::Display for LookupsBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} secret lookups are already running (the bound set with \
             max_lookups_in_flight); a flood of deliveries for uncached tenants, or a slow \
             secret store",
            self.limit
        )
    }
}

impl std::error::Error for LookupsBusy {}

/// The answer to a refusal while tenants never seen to verify get no lookups.
#[derive(Debug)]
struct RefusedWhileBusy {
    tenant: Tenant,
    limit: usize,
}

impl fmt::Display for RefusedWhileBusy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a delivery for {} was refused (no secret known, or the secrets found did not \
             verify it) and is answered as busy: tenants never seen to verify hold all the lookups they may use (half of \
             the {} set with max_lookups_in_flight), and while they do, every refusal gets \
             the 503 their deliveries get, so the status does not tell which tenants have \
             verified; a flood of deliveries for uncached tenants, or a slow secret store",
            self.tenant, self.limit
        )
    }
}

impl std::error::Error for RefusedWhileBusy {}

/// A lookup failure, shared by every request that waited on the lookup.
#[derive(Debug)]
struct SharedLookupError(Arc<BoxError>);

impl fmt::Display for SharedLookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the secret lookup failed")
    }
}

impl std::error::Error for SharedLookupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

/// One tenant's lookup, polled by whichever waiting request is polled, so that no request
/// depends on another staying alive.
// Why not `futures_util::future::Shared`, which does the same sharing: its wake path runs
// on its own atomics and std mutex, which loom cannot see or interleave, so the model
// checks below would lose the part where a lost wake hangs every waiter. Those checks
// found two real races here (a second lookup between caching the answer and leaving the
// map; a join onto a flight whose last waiter was leaving, uncounted against the bound),
// both in how the flight meets the cache's lock, which `Shared` would not remove. The
// machinery stays, model-checked, until a checker can see inside `Shared`.
struct Flight {
    /// Whether the tenant had verified before: its lookup counts against the whole bound
    /// rather than the half for strangers.
    trusted: bool,
    tenant: Tenant,
    cache: Arc<Cache>,
    state: Mutex<FlightState>,
    wakers: Arc<Wakers>,
    waiters: Mutex<usize>,
}

enum FlightState {
    Running(ResolveFuture),
    Done(Result<Option<TenantSecrets>, Arc<BoxError>>),
}

/// The wakers of every request waiting on a flight: the lookup wakes them all.
#[derive(Default)]
struct Wakers(Mutex<Vec<Waker>>);

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Flight {
    fn poll_lookup(&self, cx: &mut Context<'_>) -> Poll<Result<Option<TenantSecrets>, BoxError>> {
        {
            let mut wakers = self.wakers.0.lock().unwrap_or_else(PoisonError::into_inner);
            if !wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let result = match &mut *state {
            FlightState::Done(result) => return Poll::Ready(share(result)),
            FlightState::Running(lookup) => {
                let waker = Waker::from(Arc::clone(&self.wakers));
                match lookup.as_mut().poll(&mut Context::from_waker(&waker)) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(result) => result,
                }
            }
        };
        let result = result.map_err(Arc::new);
        // The answer is cached before the flight leaves the map: a request for the tenant
        // in between finds one or the other, never neither, which would start a second
        // lookup (the model check below found that window).
        if let Ok(secrets) = &result {
            self.cache.store(self.tenant.clone(), secrets.clone());
        }
        {
            let mut cache = self.cache.lock();
            if cache
                .flights
                .get(&self.tenant)
                .is_some_and(|flight| std::ptr::eq(Arc::as_ptr(flight), self))
            {
                cache.flights.remove(&self.tenant);
            }
        }
        let answer = share(&result);
        *state = FlightState::Done(result);
        drop(state);
        self.wakers.wake_by_ref();
        Poll::Ready(answer)
    }
}

fn share(
    result: &Result<Option<TenantSecrets>, Arc<BoxError>>,
) -> Result<Option<TenantSecrets>, BoxError> {
    match result {
        Ok(secrets) => Ok(secrets.clone()),
        Err(error) => Err(Box::new(SharedLookupError(Arc::clone(error)))),
    }
}

/// One request waiting on a flight. When the last one goes away before the lookup ends,
/// the lookup is dropped, so abandoned requests never hold one of the bounded slots.
/// Created under the cache's lock ([`CachedResolver::join_or_start`]), and dropped under
/// it.
struct Waiter {
    flight: Arc<Flight>,
}

impl Waiter {
    fn new(flight: Arc<Flight>) -> Self {
        let mut waiters = flight
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *waiters = waiters.saturating_add(1);
        drop(waiters);
        Self { flight }
    }
}

impl Future for Waiter {
    type Output = Result<Option<TenantSecrets>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.flight.poll_lookup(cx)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let flight = &self.flight;
        // Under the cache's lock, as every join is: no request can join this flight between
        // its count reaching zero and its leaving the map, which would leave a running
        // lookup uncounted against the bound (the model check below found that window).
        // Not the flight's state lock: a completing poll holds that and then takes the
        // cache's, and a finished flight has left the map already.
        let mut cache = flight.cache.lock();
        let mut waiters = flight
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *waiters = waiters.saturating_sub(1);
        if *waiters == 0
            && cache
                .flights
                .get(&flight.tenant)
                .is_some_and(|other| Arc::ptr_eq(other, flight))
        {
            cache.flights.remove(&flight.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts lookups and answers each tenant with its own secret; `gate` holds every
    /// lookup until opened.
    struct Counting {
        lookups: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
        held: bool,
    }

    impl SecretResolver for Counting {
        fn lookup(&self, tenant: &Tenant) -> ResolveFuture {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let tenant = tenant.clone();
            let (gate, held) = (Arc::clone(&self.gate), self.held);
            Box::pin(async move {
                if held {
                    gate.notified().await;
                }
                Ok(match tenant {
                    Tenant::Inbox(inbox) if inbox.starts_with("inb_") => Some(
                        TenantSecrets::for_inbox(inbox.clone(), [format!("whsec_{inbox}")])?,
                    ),
                    _ => None,
                })
            })
        }
    }

    fn counting(
        held: bool,
    ) -> (
        CachedResolver<Counting>,
        Arc<AtomicUsize>,
        Arc<tokio::sync::Notify>,
    ) {
        let lookups = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let resolver = CachedResolver::new(Counting {
            lookups: Arc::clone(&lookups),
            gate: Arc::clone(&gate),
            held,
        });
        (resolver, lookups, gate)
    }

    fn inbox(id: &str) -> Tenant {
        Tenant::Inbox(id.to_owned())
    }

    #[tokio::test]
    async fn hits_cost_no_lookup_and_misses_for_one_tenant_share_one() {
        let (resolver, lookups, gate) = counting(true);
        let waiting: Vec<_> = (0..10).map(|_| resolver.lookup(&inbox("inb_a"))).collect();
        assert_eq!(resolver.lookups_in_flight(), 1);
        let all = tokio::spawn(futures_join(waiting));
        gate.notify_one();
        let results = all.await.unwrap();
        assert!(results.iter().all(|result| matches!(result, Ok(Some(_)))));
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        assert!(resolver.lookup(&inbox("inb_a")).await.unwrap().is_some());
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
        assert_eq!(resolver.lookups_in_flight(), 0);
    }

    async fn futures_join(
        futures: Vec<ResolveFuture>,
    ) -> Vec<Result<Option<TenantSecrets>, BoxError>> {
        let mut results = Vec::new();
        for future in futures {
            results.push(future.await);
        }
        results
    }

    #[tokio::test]
    async fn lookups_in_flight_are_bounded_and_abandoned_ones_free_their_slot() {
        let (resolver, lookups, _gate) = counting(true);
        let resolver = resolver.max_lookups_in_flight(3);
        for i in 0..3 {
            resolver.verified(&inbox(&format!("inb_{i}")));
        }
        let held: Vec<_> = (0..3)
            .map(|i| resolver.lookup(&inbox(&format!("inb_{i}"))))
            .collect();
        let refused = resolver.lookup(&inbox("inb_0x")).await;
        let error = refused.expect_err("over the bound");
        assert!(error.to_string().contains("already running"), "{error}");
        assert_eq!(lookups.load(Ordering::SeqCst), 3);
        drop(held);
        assert_eq!(resolver.lookups_in_flight(), 0);
        let again = resolver.lookup(&inbox("inb_y"));
        assert_eq!(resolver.lookups_in_flight(), 1);
        drop(again);
    }

    #[tokio::test]
    async fn strangers_get_half_the_lookups_and_tenants_seen_to_verify_the_rest() {
        let (resolver, _lookups, _gate) = counting(true);
        let resolver = resolver.max_lookups_in_flight(4);
        resolver.verified(&inbox("inb_real"));
        let strangers: Vec<_> = (0..2)
            .map(|i| resolver.lookup(&inbox(&format!("inb_random_{i}"))))
            .collect();
        assert!(
            resolver.lookup(&inbox("inb_random_x")).await.is_err(),
            "strangers are held to half the bound"
        );
        let real = resolver.lookup(&inbox("inb_real"));
        assert_eq!(resolver.lookups_in_flight(), 3);
        drop((strangers, real));
    }

    #[tokio::test]
    async fn eviction_keeps_the_capacity_and_takes_the_soonest_to_expire() {
        let (resolver, _lookups, _gate) = counting(false);
        let resolver = resolver.capacity(3);
        for id in ["inb_a", "inb_b", "unknown_c", "inb_d"] {
            resolver.lookup(&inbox(id)).await.unwrap();
        }
        assert_eq!(resolver.len(), 3);
        // The negative answer for unknown_c expires first, so it went.
        let state = resolver.cache.lock();
        assert!(!state.entries.contains_key(&inbox("unknown_c")));
        assert_eq!(state.entries.len(), 3);
    }

    #[tokio::test]
    async fn invalidate_and_refusals_are_per_tenant_and_refusals_never_look_up() {
        let (resolver, lookups, _gate) = counting(false);
        resolver.lookup(&inbox("inb_a")).await.unwrap();
        resolver.lookup(&inbox("inb_b")).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
        // Just fetched: a refusal does not make the next delivery look again.
        resolver.refused(&inbox("inb_a")).unwrap();
        resolver.lookup(&inbox("inb_a")).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
        resolver.invalidate(&inbox("inb_a"));
        assert_eq!(resolver.len(), 1);
        resolver.lookup(&inbox("inb_a")).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 3);

        let resolver = resolver.refresh_interval(Duration::ZERO);
        for (tenant, found) in [(inbox("inb_a"), true), (inbox("unknown_a"), false)] {
            let before = lookups.load(Ordering::SeqCst);
            assert_eq!(resolver.lookup(&tenant).await.unwrap().is_some(), found);
            // Due: the refusal forgets the answer, known or not, and starts no lookup.
            resolver.refused(&tenant).unwrap();
            assert_eq!(lookups.load(Ordering::SeqCst), before + 1);
            assert_eq!(resolver.lookups_in_flight(), 0);
            assert_eq!(resolver.lookup(&tenant).await.unwrap().is_some(), found);
            assert_eq!(lookups.load(Ordering::SeqCst), before + 2, "{tenant}");
        }
        // Nothing cached for an unseen tenant: nothing to forget.
        resolver.refused(&inbox("inb_zz")).unwrap();
        assert_eq!(resolver.len(), 2);
    }

    #[tokio::test]
    async fn while_strangers_hold_their_half_every_refusal_is_answered_busy() {
        let (resolver, _lookups, _gate) = counting(true);
        let resolver = resolver.max_lookups_in_flight(4);
        resolver.verified(&inbox("inb_real"));
        assert!(resolver.refused(&inbox("inb_real")).is_ok());
        assert!(resolver.refused(&inbox("inb_random")).is_ok());
        let strangers: Vec<_> = (0..2)
            .map(|i| resolver.lookup(&inbox(&format!("inb_random_{i}"))))
            .collect();
        for tenant in ["inb_real", "inb_random", "inb_random_0"] {
            let error = resolver.refused(&inbox(tenant)).expect_err(tenant);
            assert!(error.to_string().contains("answered as busy"), "{error}");
        }
        drop(strangers);
        assert!(resolver.refused(&inbox("inb_real")).is_ok());
    }
}

/// Model checks of the in-flight lookups: a [`Flight`] polled by whichever [`Waiter`] is
/// polled, its [`Wakers`], and what happens when every waiter leaves.
/// `RUSTFLAGS="--cfg openmail_loom" cargo test --lib --target-dir target/loom model_check`
#[cfg(all(test, openmail_loom))]
mod model_checks {
    use std::future::poll_fn;

    use loom::thread;

    use super::*;

    /// A secret store whose lookups another thread answers: each lookup registers its
    /// waker and waits until [`answer`](Self::answer) is called.
    #[derive(Clone)]
    struct Remote(Arc<Mutex<Answer>>);

    #[derive(Default)]
    struct Answer {
        answered: bool,
        waker: Option<Waker>,
        started: usize,
    }

    impl Remote {
        fn new() -> Self {
            Self(Arc::new(Mutex::new(Answer::default())))
        }

        fn answer(&self) {
            let waker = {
                let mut answer = self.0.lock().unwrap();
                answer.answered = true;
                answer.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }

        fn started(&self) -> usize {
            self.0.lock().unwrap().started
        }
    }

    impl SecretResolver for Remote {
        fn lookup(&self, _tenant: &Tenant) -> ResolveFuture {
            let answer = Arc::clone(&self.0);
            answer.lock().unwrap().started += 1;
            Box::pin(poll_fn(move |cx| {
                let mut answer = answer.lock().unwrap();
                if answer.answered {
                    // "No such tenant": cached too, and cheap to build.
                    return Poll::Ready(Ok(None));
                }
                answer.waker = Some(cx.waker().clone());
                Poll::Pending
            }))
        }
    }

    fn tenant() -> Tenant {
        Tenant::Inbox("inb_a".to_owned())
    }

    /// Wakes a model thread waiting in [`block_on`].
    struct Notified(loom::sync::Notify);

    impl Wake for Notified {
        fn wake(self: Arc<Self>) {
            self.0.notify();
        }
    }

    /// Polls `future` on this model thread, waiting between polls until woken: a wake that
    /// is lost leaves the thread waiting for good, which loom reports as a deadlock. What
    /// loom's own `block_on` does, which needs its `futures` feature; a `Notify` rather
    /// than `thread::park`, whose unpark token would outlive the future and wake a later
    /// `join`.
    fn block_on<F: Future>(future: F) -> F::Output {
        let notified = Arc::new(Notified(loom::sync::Notify::new()));
        let waker = Waker::from(Arc::clone(&notified));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            notified.0.wait();
        }
    }

    /// A request waits on the lookup, and the store answers from another thread: the
    /// answer wakes the request, whichever order the registration and the answer come in.
    #[test]
    fn model_check_a_lookup_answered_from_another_thread_wakes_its_waiter() {
        loom::model(|| {
            let store = Remote::new();
            let resolver = CachedResolver::new(store.clone());
            let waiting = resolver.lookup(&tenant());
            let answering = {
                let store = store.clone();
                thread::spawn(move || store.answer())
            };
            let found = block_on(waiting);
            assert!(matches!(found, Ok(None)));
            answering.join().unwrap();
            assert_eq!(resolver.lookups_in_flight(), 0);
            assert_eq!(store.started(), 1);
        });
    }

    /// A request for the tenant arrives while another request's poll completes the
    /// lookup: it joins the flight or finds the cached answer, never a second lookup, and
    /// it is answered.
    #[test]
    fn model_check_a_waiter_that_joins_while_the_lookup_completes_is_answered() {
        loom::model(|| {
            let store = Remote::new();
            store.answer();
            let resolver = Arc::new(CachedResolver::new(store.clone()));
            let first = resolver.lookup(&tenant());
            let joining = {
                let resolver = Arc::clone(&resolver);
                thread::spawn(move || block_on(resolver.lookup(&tenant())))
            };
            assert!(matches!(block_on(first), Ok(None)));
            assert!(matches!(joining.join().unwrap(), Ok(None)));
            assert_eq!(store.started(), 1, "one lookup per tenant at a time");
            assert_eq!(resolver.lookups_in_flight(), 0);
        });
    }

    /// The last request waiting on a lookup leaves while another request for the tenant
    /// arrives: the newcomer's lookup, joined or started afresh, stays counted against the
    /// bound for as long as it runs.
    #[test]
    fn model_check_a_waiter_that_joins_while_the_last_one_leaves_stays_counted() {
        loom::model(|| {
            let store = Remote::new();
            let resolver = Arc::new(CachedResolver::new(store.clone()));
            let leaving = resolver.lookup(&tenant());
            let leaver = thread::spawn(move || drop(leaving));
            let joined = resolver.lookup(&tenant());
            leaver.join().unwrap();
            assert_eq!(
                resolver.lookups_in_flight(),
                1,
                "a running lookup is counted"
            );
            drop(joined);
            assert_eq!(resolver.lookups_in_flight(), 0);
        });
    }

    /// Two requests wait on one lookup and both leave, on two threads, one after polling
    /// it: the lookup is dropped and its slot freed, and the next request starts afresh.
    #[test]
    fn model_check_a_lookup_whose_waiters_all_leave_is_dropped() {
        loom::model(|| {
            let store = Remote::new();
            let resolver = CachedResolver::new(store.clone());
            let handles = Arc::strong_count(&store.0);
            let first = resolver.lookup(&tenant());
            let second = resolver.lookup(&tenant());
            assert_eq!(resolver.lookups_in_flight(), 1);
            let leaving = thread::spawn(move || {
                let mut first = first;
                let mut cx = Context::from_waker(Waker::noop());
                assert!(first.as_mut().poll(&mut cx).is_pending());
                drop(first);
            });
            drop(second);
            leaving.join().unwrap();
            assert_eq!(resolver.lookups_in_flight(), 0);
            // The lookup future, which held the store's state, is gone.
            assert_eq!(Arc::strong_count(&store.0), handles);
            let again = resolver.lookup(&tenant());
            assert_eq!((store.started(), resolver.lookups_in_flight()), (2, 1));
            drop(again);
        });
    }
}
