use std::collections::hash_map::RandomState;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tower::BoxError;

use super::DedupKey;

/// The future a [`DedupStore`] returns, as the crate names it inside.
pub(crate) type StoreFuture<T> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// Where the deduplication state lives: reservations (leases) and done markers, keyed by
/// a [`DedupKey`] (the verified inbox and the `event_id`, as a fixed-size digest).
///
/// The layer calls [`reserve`](Self::reserve) before the inner service, then exactly one
/// of [`complete`](Self::complete) (the inner service answered `2xx`),
/// [`release`](Self::release) (it answered anything else, or failed) or
/// [`abandon`](Self::abandon) (the response future was dropped). Each takes the
/// [`Reservation`] that `reserve` was given, whose token tells this holder's lease from
/// anyone else's: `complete` and `release` must act only when the stored reservation
/// carries the same token, so a holder whose lease expired never deletes or finishes the
/// reservation of the replica that took over. The same check makes a release harmless when
/// the reservation never landed: the layer releases (through `abandon`) whenever it cannot
/// tell whether a `reserve` it sent was written, such as when the request is dropped while
/// `reserve` is in flight, or `reserve` failed after the command may have been sent.
///
/// Key on [`DedupKey::digest`] or [`DedupKey::hex`], never on the event id: the digest is
/// 32 bytes whoever chose the id, and it carries the inbox that scopes it.
///
/// **Bound every call.** The layer has no timer of its own (it needs no async runtime), so
/// a call that never returns holds its request for good. Give each call a timeout in the
/// store (a client's response timeout, a statement timeout) and fail it with
/// [`StoreError::Unavailable`]; the layer then answers `503` with `Retry-After`.
///
/// | call | key absent | reserved, same token | reserved, other token | done |
/// |---|---|---|---|---|
/// | `reserve` | reserve for `lease`: [`Reserved`](ReserveOutcome::Reserved) | [`InFlight`](ReserveOutcome::InFlight) | [`InFlight`](ReserveOutcome::InFlight) | [`Done`](ReserveOutcome::Done) |
/// | `complete` | mark done for `retention` | mark done for `retention` | [`StoreError::LeaseLost`] | nothing |
/// | `release` | nothing | delete | nothing | nothing |
///
/// An expired reservation or done marker counts as absent.
///
/// # The transactional inbox
///
/// With a separate store, "the handler wrote its effects" and "the event is marked done"
/// are two commits, and a crash between them means the event is processed again once the
/// lease expires. When the handler's effects live in a SQL database, put the store in
/// the same database and mark the event done **inside the handler's own transaction**:
/// the effects and the marker then commit or roll back together. The layer puts the
/// [`Reservation`] in the request extensions for exactly this; the store's own `complete`
/// then finds the marker already there and does nothing.
///
/// ```sql
/// CREATE TABLE webhook_inbox (
///     key        text PRIMARY KEY,     -- DedupKey::hex, 64 hex digits
///     token      text,                 -- the holder's token while reserved
///     state      text NOT NULL,        -- 'reserved' or 'done'
///     expires_at timestamptz NOT NULL  -- the lease, then the retention
/// );
///
/// -- reserve: take the row if it is absent or its lease or retention ran out
/// INSERT INTO webhook_inbox VALUES ($1, $2, 'reserved', now() + $3)
/// ON CONFLICT (key) DO UPDATE
///     SET token = EXCLUDED.token, state = 'reserved', expires_at = EXCLUDED.expires_at
///     WHERE webhook_inbox.expires_at < now()
/// RETURNING state;                     -- no row back: read the row to tell done from in flight
///
/// -- in the handler, in the same transaction as its own writes:
/// UPDATE webhook_inbox SET state = 'done', token = NULL, expires_at = now() + $3
///     WHERE key = $1 AND token = $2 AND state = 'reserved';
/// -- zero rows updated: the lease was lost; roll back.
///
/// -- release:
/// DELETE FROM webhook_inbox WHERE key = $1 AND token = $2 AND state = 'reserved';
/// ```
///
/// The same pattern, runnable, with a mutex standing in for the database transaction:
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use std::time::{Duration, Instant};
/// use axum::{routing::post, Extension, Router};
/// use std::{future::Future, pin::Pin};
/// use openmail_webhooks::dedup::{
///     DedupStore, DeduplicateLayer, Reservation, ReserveOutcome, StoreError,
/// };
///
/// type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;
///
/// #[derive(Default)]
/// struct Database {
///     inbox: HashMap<String, (Option<String>, Instant)>, // token while reserved, expiry
///     messages: Vec<String>,                              // the handler's own table
/// }
///
/// #[derive(Clone, Default)]
/// struct Inbox(Arc<Mutex<Database>>);
///
/// impl DedupStore for Inbox {
///     fn reserve(&self, reservation: Reservation, lease: Duration) -> StoreFuture<ReserveOutcome> {
///         let db = self.0.clone();
///         Box::pin(async move {
///             let mut db = db.lock().unwrap();
///             let now = Instant::now();
///             match db.inbox.get(reservation.key().hex()) {
///                 Some((None, expiry)) if *expiry > now => Ok(ReserveOutcome::Done),
///                 Some((Some(_), expiry)) if *expiry > now => Ok(ReserveOutcome::InFlight),
///                 _ => {
///                     let row = (Some(reservation.token().to_owned()), now + lease);
///                     db.inbox.insert(reservation.key().hex().to_owned(), row);
///                     Ok(ReserveOutcome::Reserved)
///                 }
///             }
///         })
///     }
///
///     fn complete(&self, reservation: Reservation, retention: Duration) -> StoreFuture<()> {
///         // The handler already marked the event done in its own transaction.
///         let db = self.0.clone();
///         Box::pin(async move {
///             match db.lock().unwrap().inbox.get(reservation.key().hex()) {
///                 Some((None, _)) => Ok(()),
///                 _ => Err(StoreError::LeaseLost),
///             }
///         })
///     }
///
///     fn release(&self, reservation: Reservation) -> StoreFuture<()> {
///         let db = self.0.clone();
///         Box::pin(async move {
///             let mut db = db.lock().unwrap();
///             let ours = matches!(
///                 db.inbox.get(reservation.key().hex()),
///                 Some((Some(token), _)) if token == reservation.token()
///             );
///             if ours {
///                 db.inbox.remove(reservation.key().hex());
///             }
///             Ok(())
///         })
///     }
/// }
///
/// async fn handle(
///     Extension(inbox): Extension<Inbox>,
///     Extension(reservation): Extension<Reservation>,
/// ) -> &'static str {
///     let mut db = inbox.0.lock().unwrap(); // BEGIN
///     db.messages.push(format!("processed {}", reservation.key().event_id()));
///     let retention = Instant::now() + Duration::from_secs(30 * 60);
///     db.inbox.insert(reservation.key().hex().to_owned(), (None, retention));
///     "ok" // COMMIT, when the guard drops
/// }
///
/// let inbox = Inbox::default();
/// let app: Router = Router::new()
///     .route("/webhooks", post(handle))
///     .layer(Extension(inbox.clone()))
///     .layer(DeduplicateLayer::new(inbox));
/// ```
///
/// Its futures are boxed, `Send` and `'static`: `'static` for the same reason as tower's
/// `Service::call`, since the layer keeps the future in its own response future, so a
/// store clones what it needs (a pool handle, an `Arc`) into the future instead of
/// borrowing itself.
pub trait DedupStore: Send + Sync + 'static {
    /// Reserves `reservation.key()` for `lease`, unless it is done or another
    /// reservation's lease is still running. The check and the write must be one atomic
    /// step: two replicas asking at once must not both get
    /// [`Reserved`](ReserveOutcome::Reserved).
    fn reserve(
        &self,
        reservation: Reservation,
        lease: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<ReserveOutcome, StoreError>> + Send + 'static>>;

    /// Replaces this holder's reservation with a done marker that lives for `retention`.
    ///
    /// Succeeds without writing when the event is already done (a transactional handler
    /// marked it). When the key is absent (the lease ran out and nobody took it over),
    /// it writes the marker all the same: the event was processed. Fails with
    /// [`StoreError::LeaseLost`] when another holder's reservation is there.
    fn complete(
        &self,
        reservation: Reservation,
        retention: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

    /// Deletes this holder's reservation, so that the next delivery of the event is
    /// processed. Does nothing when the stored reservation carries another token, or when
    /// the event is done.
    fn release(
        &self,
        reservation: Reservation,
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

    /// Called synchronously, from `Drop`, when the layer's response future is dropped
    /// while it holds `reservation` and before the inner service answered: the client
    /// went away, or a timeout outside the layer fired.
    ///
    /// A store that can release without I/O does it here; one that needs I/O may start it
    /// in the background. The default does nothing, and the reservation stays until its
    /// lease expires: a retry in the meantime is answered as in flight, and the one after
    /// the lease is processed.
    ///
    /// The layer also calls it when it cannot tell whether a `reserve` landed (dropped
    /// while `reserve` was in flight, or `reserve` failed), so it must be harmless for a
    /// reservation the store never wrote: compare the token, as `release` does.
    fn abandon(&self, reservation: Reservation) {
        let _ = reservation;
    }
}

/// What [`DedupStore::reserve`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReserveOutcome {
    /// The event was neither done nor reserved: it is now reserved for the caller.
    Reserved,
    /// The event was processed; its done marker has not expired.
    Done,
    /// Another delivery holds a reservation whose lease has not expired.
    InFlight,
}

/// One holder's claim on an event: its [`DedupKey`] and a token unique to this reservation.
///
/// The layer makes one per first delivery and puts it in the inner service's request
/// extensions, for handlers that mark the event done in their own transaction. Cloning
/// is one reference-count increment.
#[derive(Clone, PartialEq, Eq)]
pub struct Reservation {
    inner: Arc<ReservationInner>,
}

#[derive(PartialEq, Eq)]
struct ReservationInner {
    key: DedupKey,
    token: Token,
}

impl Reservation {
    /// A reservation of `key` with a fresh token.
    pub fn new(key: DedupKey) -> Self {
        Self {
            inner: Arc::new(ReservationInner {
                key,
                token: Token::fresh(),
            }),
        }
    }

    /// What is reserved: the verified inbox and the `event_id`.
    pub fn key(&self) -> &DedupKey {
        &self.inner.key
    }

    /// This reservation's token: 32 lowercase hex digits, unique across processes.
    pub fn token(&self) -> &str {
        self.inner.token.as_str()
    }

    /// The token as a number, for stores that keep it compactly.
    pub fn token_value(&self) -> u128 {
        self.inner.token.value
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("key", self.key())
            .field("token", &self.token())
            .finish()
    }
}

/// A process-wide random half and a per-reservation counter half: unique within the
/// process by the counter, across processes by the random half. Tokens only tell holders
/// apart; they guard against nothing an attacker controls, so they need not be secret.
#[derive(PartialEq, Eq)]
struct Token {
    value: u128,
    hex: [u8; 32],
}

impl Token {
    fn fresh() -> Self {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let process = *PROCESS.get_or_init(|| {
            // `RandomState` draws its keys from the operating system's randomness.
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish()
        });
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let value = (u128::from(process) << 64) | u128::from(count);
        let mut hex = [b'0'; 32];
        // Writing 32 hex digits of a u128 into 32 bytes cannot fail.
        let _ = hex::encode_to_slice(value.to_be_bytes(), &mut hex);
        Self { value, hex }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.hex).unwrap_or_default()
    }
}

/// Why a [`DedupStore`] call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or refused the command.
    Unavailable(BoxError),
    /// `complete` found another holder's reservation: this holder's lease expired while
    /// the inner service ran, and another delivery took the event over.
    LeaseLost,
    /// An in-memory store is full of reservations and done markers that are all still
    /// live (inside their lease or retention). It never forgets a live one to make room,
    /// since that would let a replay through; the layer answers `503` with `Retry-After`
    /// instead, and OpenMail retries.
    Full {
        /// The store's capacity, in events.
        capacity: usize,
    },
}

impl StoreError {
    /// Wraps a backend's error.
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause comes from `source()`.
            Self::Unavailable(_) => f.write_str(
                "the deduplication store failed or did not answer in time; check that it is \
                 running and reachable from this host",
            ),
            Self::LeaseLost => f.write_str(
                "the reservation's lease expired before the inner service answered, and \
                 another delivery took the event over; raise the lease above the handler's \
                 longest run",
            ),
            Self::Full { capacity } => write!(
                f,
                "the in-memory deduplication store holds {capacity} events, all inside their \
                 lease or retention; raise its capacity above the events received in one \
                 retention period"
            ),
        }
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Unavailable(error) => Some(&**error),
            Self::LeaseLost | Self::Full { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hex() {
        let key = DedupKey::new(Some("inb_1"), "evt_1");
        let first = Reservation::new(key.clone());
        let second = Reservation::new(key);
        assert_ne!(first.token(), second.token());
        assert_ne!(first, second);
        assert_eq!(first.token().len(), 32);
        assert!(first.token().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            u128::from_str_radix(first.token(), 16).unwrap(),
            first.token_value()
        );
        assert_eq!(first.clone(), first);
    }
}
