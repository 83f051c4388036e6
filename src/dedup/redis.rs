use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, Value};

use super::LONGEST_TTL;
use std::future::Future;
use std::pin::Pin;

use super::store::{DedupStore, Reservation, ReserveOutcome, StoreError};

/// The value of a done marker. Reservations hold their token (32 hex digits), which never
/// equals it.
const DONE: &str = "done";

/// Replaces this holder's reservation, or an expired one, with a done marker.
/// KEYS[1] the event's key; ARGV[1] the token; ARGV[2] the retention in milliseconds;
/// ARGV[3] the done marker.
/// Returns 1 when the event is (now) done, 0 when another holder's reservation is there.
const COMPLETE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[3] then
    return 1
end
if current == false or current == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
    return 1
end
return 0
";

/// Deletes the key only when it holds this holder's token: compare and delete.
/// KEYS[1] the event's key; ARGV[1] the token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Reservations and done markers in Redis, shared by every replica that points at the
/// same server: the store for several replicas behind a load balancer.
///
/// One key per event, `openmail:dedup:` and the 64 hex digits of its
/// [`DedupKey`](super::DedupKey) (the verified inbox and the `event_id`, hashed), unless
/// [`key_prefix`](Self::key_prefix) changes the prefix: a key of 79 bytes with the
/// default prefix, and a value of at most 32, however long the `event_id` a signer chose:
///
/// - **reserve** is one atomic `SET key <token> NX PX <lease>`; when the key exists, a
///   `GET` tells a done marker from another holder's reservation;
/// - **complete** is a script that replaces this holder's reservation (or an expired one)
///   with the done marker, whose TTL is the retention, and never another holder's;
/// - **release** is a compare-and-delete script: it deletes the key only while it holds
///   this holder's token, so a replica whose lease ran out never deletes the reservation
///   of the replica that took over.
///
/// Scripts run with `EVALSHA`, loaded on first use.
///
/// **A dropped request** releases through [`DedupStore::abandon`], which cannot wait for
/// I/O: it spawns the release on the current tokio runtime when there is one. Without a
/// runtime (or when the runtime is shutting down), the reservation stays until its lease
/// expires. The layer does the same when a request is dropped while its `SET NX` is in
/// flight, and when the `SET NX` failed or timed out: the release goes over the same
/// connection after the `SET`, so Redis runs it after the `SET` if the `SET` arrived at all,
/// and the token check makes it a no-op if the `SET` never landed. No lease is left behind
/// to answer OpenMail's retries with `409`, unless the connection itself broke between the
/// two commands; then the lease expires.
///
/// **The client** is the [`redis`](https://docs.rs/redis) crate's `ConnectionManager`.
/// `redis` is the most used Rust client for Redis, released often and tracking the
/// server's features, and its manager is what this store needs and no more: it
/// multiplexes every concurrent command over one connection, so there is no pool to size
/// (a pool such as `deadpool-redis` or `bb8-redis` adds nothing for two or three short
/// commands per request); it reconnects in the background after a failure; and it bounds
/// both connecting and each command with a timeout, which keeps a dead Redis from holding
/// a webhook past OpenMail's 15 s. A client with its own runtime and a much larger
/// surface (`fred`) brings far more than a three-command store uses.
///
/// **Every call is bounded.** [`connect`](Self::connect) and
/// [`connect_lazy`](Self::connect_lazy) set a 1 s connection timeout, a 1 s response
/// timeout and two reconnection retries (see
/// [`connection_config`](Self::connection_config)): with Redis down, or hung (stopped,
/// swapping, stuck in a slow script), a delivery is answered `503` with `Retry-After`
/// within about a second rather than never. A connection made with
/// [`from_manager`](Self::from_manager) keeps its own settings: give it a response timeout.
/// The `redis` feature needs Rust 1.88, the client's minimum.
///
/// ```no_run
/// use openmail_webhooks::dedup::{DeduplicateLayer, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
/// let layer = DeduplicateLayer::new(store);
/// # Ok(()) }
/// ```
///
/// Cloning shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    complete: Script,
    release: Script,
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://[:password@]host:port/db`) with
    /// [`connection_config`](Self::connection_config), and fails if it cannot be reached
    /// now.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(StoreError::unavailable)?;
        let connection = ConnectionManager::new_with_config(client, Self::connection_config())
            .await
            .map_err(StoreError::unavailable)?;
        Ok(Self::from_manager(connection))
    }

    /// Like [`connect`](Self::connect), but connects on first use: the application starts
    /// even while Redis is down, and deliveries meet the
    /// [store error policy](super::OnStoreError) until it is back. Needs a tokio runtime.
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(StoreError::unavailable)?;
        let connection = ConnectionManager::new_lazy_with_config(client, Self::connection_config())
            .map_err(StoreError::unavailable)?;
        Ok(Self::from_manager(connection))
    }

    /// A store over a connection you configured yourself (TLS, other timeouts). Set a
    /// response timeout on it (start from [`connection_config`](Self::connection_config)):
    /// without one, a hung Redis holds every delivery until the client gives up.
    pub fn from_manager(connection: ConnectionManager) -> Self {
        Self {
            connection,
            prefix: Arc::from("openmail:dedup:"),
            scripts: Arc::new(Scripts {
                complete: Script::new(COMPLETE),
                release: Script::new(RELEASE),
            }),
        }
    }

    /// The connection settings [`connect`](Self::connect) uses: 1 s to connect, 1 s for
    /// each command, and two reconnection retries at most 500 ms apart.
    pub fn connection_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
    }

    /// The prefix of every key; `openmail:dedup:` unless set. Give each application that
    /// shares a Redis its own.
    pub fn key_prefix(self, prefix: impl Into<Arc<str>>) -> Self {
        Self {
            prefix: prefix.into(),
            ..self
        }
    }

    fn key(&self, reservation: &Reservation) -> String {
        let hex = reservation.key().hex();
        let mut key = String::with_capacity(self.prefix.len().saturating_add(hex.len()));
        key.push_str(&self.prefix);
        key.push_str(hex);
        key
    }
}

/// Redis keeps expiries in milliseconds; a zero one is an error there.
fn milliseconds(ttl: Duration) -> u64 {
    u64::try_from(ttl.min(LONGEST_TTL).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl DedupStore for RedisStore {
    fn reserve(
        &self,
        reservation: Reservation,
        lease: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<ReserveOutcome, StoreError>> + Send + 'static>> {
        let mut connection = self.connection.clone();
        let key = self.key(&reservation);
        Box::pin(async move {
            let set: Value = redis::cmd("SET")
                .arg(&key)
                .arg(reservation.token())
                .arg("NX")
                .arg("PX")
                .arg(milliseconds(lease))
                .query_async(&mut connection)
                .await
                .map_err(StoreError::unavailable)?;
            if set != Value::Nil {
                return Ok(ReserveOutcome::Reserved);
            }
            let current: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .map_err(StoreError::unavailable)?;
            // A key that expired between the two commands is reported as in flight: the
            // delivery is answered as retryable, which is never wrong.
            Ok(match current.as_deref() {
                Some(DONE) => ReserveOutcome::Done,
                _ => ReserveOutcome::InFlight,
            })
        })
    }

    fn complete(
        &self,
        reservation: Reservation,
        retention: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>> {
        let mut connection = self.connection.clone();
        let key = self.key(&reservation);
        let scripts = Arc::clone(&self.scripts);
        Box::pin(async move {
            let completed: i64 = scripts
                .complete
                .key(key)
                .arg(reservation.token())
                .arg(milliseconds(retention))
                .arg(DONE)
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::unavailable)?;
            match completed {
                1 => Ok(()),
                _ => Err(StoreError::LeaseLost),
            }
        })
    }

    fn release(
        &self,
        reservation: Reservation,
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>> {
        let mut connection = self.connection.clone();
        let key = self.key(&reservation);
        let scripts = Arc::clone(&self.scripts);
        Box::pin(async move {
            let _deleted: i64 = scripts
                .release
                .key(key)
                .arg(reservation.token())
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::unavailable)?;
            Ok(())
        })
    }

    fn abandon(&self, reservation: Reservation) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let release = self.release(reservation);
            runtime.spawn(async move {
                // Nobody is left to tell; if it failed, the lease expires instead.
                let _ = release.await;
            });
        }
    }
}

impl fmt::Debug for RedisStore {
    // The connection's own Debug shows its address, which may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}
