//! The store contract: what [`Ingest`](super::Ingest) and [`Workers`](super::Workers) ask
//! of a backend, and the values they exchange.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tower::BoxError;

use crate::protocol::Verified;
use crate::tenant::Tenant;
use crate::{Channel, Delivery};

/// Where acknowledged events wait for the workers: a durable table of events keyed by a
/// 32-byte event key, each waiting, leased to a worker, completed (body deleted, key kept
/// for deduplication) or dead-lettered.
///
/// The crate's stores implement it ([`SqliteStore`](super::SqliteStore) with the `sqlite`
/// feature, `PostgresStore` with `postgres`), and only they do: it is sealed, so that a
/// stored event is always one the crate verified, and the contract between the store and
/// the workers ([`Backend`]) can change without a breaking release. [`Ingest`](super::Ingest)
/// and [`Workers`](super::Workers) are generic over it; its own methods are what an
/// operator asks of a store.
pub trait EventStore: Backend {
    /// How many events wait, are leased and are dead, and the age of the oldest waiting or
    /// leased one.
    fn stats(&self) -> impl Future<Output = Result<QueueStats, QueueError>> + Send {
        Backend::queue_stats(self)
    }

    /// Up to `limit` dead letters, oldest first, with their bodies.
    fn dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send {
        Backend::list_dead_letters(self, limit)
    }

    /// Makes the dead letter `key` ([`DeadLetter::key`]) due again, with its attempts reset.
    /// `Ok(false)`: no dead letter has that key.
    fn retry_dead_letter(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<bool, QueueError>> + Send {
        Backend::requeue_dead_letter(self, key)
    }

    /// Gives up on the dead letter `key` ([`DeadLetter::key`]): its body is deleted, as a
    /// completed event's is, and its key is kept for the workers' retention, so that a
    /// replay of it is still answered `200` as a duplicate and not handled. Its handler is
    /// not run. `Ok(false)`: no dead letter has that key (it was retried, discarded, or
    /// never dead).
    ///
    /// A dead letter is otherwise kept with its body, which is a user's email, until it is
    /// retried or discarded.
    fn discard_dead_letter(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<bool, QueueError>> + Send {
        Backend::settle_dead_letter(self, key)
    }
}

impl<S: Backend> EventStore for S {}

/// The contract between a store and the workers, which [`EventStore`] seals: public only in
/// this crate-private module (and, hidden, under `test-util` for the crate's own store
/// tests), so no store outside the crate implements it.
///
/// Its values are opaque, so a store outside the crate could not forge a [`Delivery`]
/// either.
///
/// Every method is one transaction of the backend: it has happened when its future returns
/// `Ok`, and not at all when it returns `Err` (or, for a commit whose answer was lost, it
/// happened exactly once: every method is idempotent or guarded by its [`Lease`]).
///
/// | state | how it gets there | leaves by |
/// |---|---|---|
/// | waiting (due now or at a retry time) | [`insert`](Self::insert), [`fail`](Self::fail) with a retry, [`release`](Self::release), a lease that expired, [`requeue_dead_letter`](Backend::requeue_dead_letter) | [`claim`](Self::claim) |
/// | leased (in flight) | [`claim`](Self::claim), which counts the attempt (refunded when a later claim finds the lease ended and the event never started) | [`complete`](Self::complete), [`fail`](Self::fail), [`release`](Self::release), the lease expiring |
/// | completed: the key alone | [`complete`](Self::complete), [`settle_dead_letter`](Self::settle_dead_letter) | [`purge`](Self::purge) after the retention |
/// | dead letter: kept with its body | [`fail`](Self::fail) without a retry, or a claim of an event whose last attempt's lease expired | [`requeue_dead_letter`](Backend::requeue_dead_letter), [`settle_dead_letter`](Self::settle_dead_letter) |
///
/// The key of an event in any state makes a later insert of the same key a
/// [`Inserted::Duplicate`].
pub trait Backend: Send + Sync + 'static {
    /// Stores a verified delivery under `key`, unless an event with that key is already
    /// there in any state ([`Inserted::Duplicate`]), or `depth_limit` events are waiting or
    /// leased ([`Inserted::Full`]; a duplicate is still reported as a duplicate). The event
    /// is due at once. `Ok(Inserted::Stored)` means committed with the store's
    /// [`Durability`].
    fn insert(
        &self,
        key: [u8; 32],
        delivery: Delivery,
        depth_limit: u64,
    ) -> impl Future<Output = Result<Inserted, QueueError>> + Send;

    /// Leases up to `limit` due events, oldest due first, for `lease`, and counts an attempt
    /// on each. A due event whose attempts already reached `max_attempts` (its last attempt's
    /// holder died) is dead-lettered instead of claimed, so an event that crashes the
    /// process each time ends in the dead letters rather than looping.
    fn claim(
        &self,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> impl Future<Output = Result<Vec<Claimed>, QueueError>> + Send;

    /// [`complete`](Self::complete)s each of `completed`, then [`claim`](Self::claim)s up to
    /// `limit` due events (`0`: none), in **one transaction**: one commit, so one WAL flush,
    /// for the whole group. [`Workers`](super::Workers) call it (through
    /// [`record_and_claim`](Self::record_and_claim)) with the completions that gathered
    /// while their previous call committed and a claim for every free slot, so that a store
    /// whose commit waits for a flush still drains many events per flush.
    ///
    /// Returns, for each of `completed` in order, whether the lease was still this holder's
    /// (what [`complete`](Self::complete) returns; PostgreSQL also answers `true` for an
    /// event completed before, by the handler's own transaction), the claimed events, and the events the
    /// claim dead-lettered because their attempts were used up, so that the workers report
    /// them as they report an attempt that failed. None of `completed` is claimed again by
    /// the same call. On `Err` nothing happened.
    ///
    /// The default calls [`complete`](Self::complete) for each and then
    /// [`claim`](Self::claim): one transaction each, and on `Err` some completions may have
    /// happened (their retry then returns `false`); it reports no dead letters. The crate's
    /// stores override it.
    fn complete_and_claim(
        &self,
        completed: Vec<Lease>,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> impl Future<Output = Result<Settled, QueueError>> + Send {
        async move {
            let mut recorded = Vec::with_capacity(completed.len());
            for held in completed {
                recorded.push(self.complete(held).await?);
            }
            let claimed = if limit == 0 {
                Vec::new()
            } else {
                self.claim(limit, lease, max_attempts).await?
            };
            Ok((recorded, claimed, Vec::new()))
        }
    }

    /// [`complete_and_claim`](Self::complete_and_claim), and also records that the events
    /// of `started` (prefetched events that took a slot since) started, and marks the
    /// first `start` claimed events, in due order, started at the claim (they take a free
    /// slot at once); the others are claimed as a prefetch, not started. A claim that takes
    /// over an event whose lease ended (its holder died) or was handed back at a reopen,
    /// while it was not started, refunds the attempt that event's claim counted: it never
    /// ran. [`Claimed::started`] says which were marked.
    ///
    /// The default ignores `started` and `start`: every claimed event counts as started,
    /// and nothing is refunded. The crate's stores override it.
    #[allow(clippy::too_many_arguments)]
    fn record_and_claim(
        &self,
        completed: Vec<Lease>,
        started: Vec<Lease>,
        limit: usize,
        start: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> impl Future<Output = Result<Settled, QueueError>> + Send {
        let _ = (started, start);
        self.complete_and_claim(completed, limit, lease, max_attempts)
    }

    /// Extends `lease` to `lease_for` from now. `Ok(false)`: the lease is no longer this
    /// holder's (it expired and the event was claimed again, or it completed).
    fn renew(
        &self,
        lease: Lease,
        lease_for: Duration,
    ) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Marks the event completed: deletes its body and delivery metadata and keeps its key
    /// until [`purge`](Self::purge). `Ok(false)`: the lease is no longer this holder's.
    fn complete(&self, lease: Lease) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Records a failed attempt: the event is due again after `retry_in`, or, with `None`,
    /// becomes a dead letter, kept with its body. `error` says what went wrong, for the dead
    /// letters. `Ok(false)`: the lease is no longer this holder's.
    fn fail(
        &self,
        lease: Lease,
        retry_in: Option<Duration>,
        error: String,
    ) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Hands the event back, due at once, and uncounts the attempt: the holder stopped
    /// before the attempt ran to an outcome (a graceful shutdown). `Ok(false)`: the lease is
    /// no longer this holder's.
    fn release(&self, lease: Lease) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// How many events wait, are leased and are dead, and the age of the oldest waiting or
    /// leased one.
    fn queue_stats(&self) -> impl Future<Output = Result<QueueStats, QueueError>> + Send;

    /// Up to `limit` dead letters, oldest first, with their bodies.
    fn list_dead_letters(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send;

    /// Makes the dead letter `key` due again, with its attempts reset. `Ok(false)`: no dead
    /// letter has that key.
    fn requeue_dead_letter(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Completes the dead letter `key` without running it: its body is deleted and its key
    /// kept, as [`complete`](Self::complete) does. `Ok(false)`: no dead letter has that
    /// key.
    fn settle_dead_letter(
        &self,
        key: [u8; 32],
    ) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// Forgets the keys of events completed more than `retention` ago, so that their
    /// replays would be stored again; returns how many.
    fn purge(&self, retention: Duration) -> impl Future<Output = Result<u64, QueueError>> + Send;
}

/// What [`Backend::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inserted {
    /// Committed: the event will be handled.
    Stored,
    /// An event with the same key is already stored (waiting, in flight, completed within
    /// the retention, or dead): nothing was written.
    Duplicate,
    /// The depth limit is reached: nothing was written.
    Full,
}

/// What [`Backend::complete_and_claim`] returns: whether each completion was recorded, the
/// claimed events, and the events the claim dead-lettered.
pub type Settled = (Vec<bool>, Vec<Claimed>, Vec<DeadLetter>);

/// One claimed event: its lease, the attempt the claim counted, and the delivery rebuilt
/// from the store.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub(crate) lease: Lease,
    pub(crate) attempt: u32,
    pub(crate) delivery: Delivery,
    pub(crate) started: bool,
    pub(crate) taken_over: bool,
}

impl Claimed {
    // Only the stores build one.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn new(
        lease: Lease,
        attempt: u32,
        delivery: Delivery,
        started: bool,
        taken_over: bool,
    ) -> Self {
        Self {
            lease,
            attempt,
            delivery,
            started,
            taken_over,
        }
    }

    /// Whether the claim recorded the event as started (its attempt stays counted if the
    /// holder dies); `false`: claimed as a prefetch, refunded if the holder dies before it
    /// records the start.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether the claim took the event over from a holder that died holding its lease
    /// (the lease expired; SQLite: the store reopened). [`Workers`](super::Workers) record
    /// the start of such an event before its handler runs, so that an event whose run
    /// kills the process is refunded at most once in a row.
    pub fn taken_over(&self) -> bool {
        self.taken_over
    }

    /// The lease, which [`complete`](Backend::complete), [`fail`](Backend::fail),
    /// [`renew`](Backend::renew) and [`release`](Backend::release) take.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The attempt this claim counted, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The delivery as it was verified.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }
}

/// One holder's lease on one event: the event's key and a token that changes at every
/// claim, so a holder whose lease expired and was claimed again can no longer complete,
/// fail, renew or release it.
///
/// A handler that writes to the database the store lives in can complete the event in its
/// own transaction with these two values (see the [module docs](super)); it finds them in
/// [`WorkerAttempt::key`](super::WorkerAttempt::key) and
/// [`WorkerAttempt::token`](super::WorkerAttempt::token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub(crate) key: [u8; 32],
    pub(crate) token: i64,
}

impl Lease {
    /// The event's key.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The claim's token: the store's count of claims of this event, never reset.
    pub fn token(&self) -> i64 {
        self.token
    }
}

/// What [`EventStore::stats`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct QueueStats {
    /// Events waiting to be claimed, now or at a retry time (expired leases included).
    pub waiting: u64,
    /// Events leased to a worker whose lease has not expired.
    pub in_flight: u64,
    /// Dead letters kept for inspection.
    pub dead_letters: u64,
    /// How long ago the oldest waiting or leased event was stored.
    pub oldest_age: Option<Duration>,
}

impl QueueStats {
    /// Waiting plus in flight: what the depth limit bounds.
    pub fn depth(&self) -> u64 {
        self.waiting.saturating_add(self.in_flight)
    }
}

/// A dead letter: an event whose last attempt failed, kept with its body.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub(crate) key: [u8; 32],
    pub(crate) attempts: u32,
    pub(crate) error: String,
    pub(crate) delivery: Delivery,
}

impl DeadLetter {
    pub(crate) fn new(key: [u8; 32], attempts: u32, error: String, delivery: Delivery) -> Self {
        Self {
            key,
            attempts,
            error,
            delivery,
        }
    }

    /// The key, for [`EventStore::retry_dead_letter`] and
    /// [`EventStore::discard_dead_letter`].
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// What the last attempt ended with, such as `the handler answered 500`.
    pub fn error(&self) -> &str {
        &self.error
    }

    /// The delivery as it was verified.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }
}

/// What a commit survives. Both stores survive a crash of the receiver process by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// A committed event survives the receiver's crash or `SIGKILL`, not the machine's
    /// power loss or kernel crash, which may lose the last commits. SQLite: WAL with
    /// `synchronous=NORMAL` (no `fsync` per commit). PostgreSQL: the same as
    /// [`PowerLoss`](Self::PowerLoss), since `synchronous_commit=off` would lose the last
    /// commits when a PostgreSQL server process crashes.
    #[default]
    ProcessCrash,
    /// A committed event survives a power loss too: every commit waits for `fsync`.
    /// SQLite: WAL with `synchronous=FULL`. PostgreSQL: `synchronous_commit=on`, or the
    /// server's own level if it is not `off` (`local` and the `remote_*` levels flush
    /// too); the same for both settings.
    PowerLoss,
}

/// Why an event store call failed. [`Ingest`](super::Ingest) answers `503` with
/// `Retry-After` to any of them, so OpenMail retries.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueueError {
    /// The backend failed or could not be reached; the cause is the source.
    Unavailable(BoxError),
    /// Another process holds the store (SQLite: an exclusive lock on the file).
    Locked {
        /// What is locked, such as the database file's path.
        what: String,
    },
    /// The store's schema is of a version this build does not know.
    Schema {
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The store was closed (its writer stopped).
    Closed,
}

impl QueueError {
    /// Wraps a backend's error.
    pub(crate) fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause comes from `source()`.
            Self::Unavailable(_) => f.write_str(
                "the event store failed or could not be reached; check the database and its disk",
            ),
            Self::Locked { what } => write!(
                f,
                "the event store {what} is in use by another process; stop it, or give this \
                 one its own store"
            ),
            Self::Schema { found, supported } => write!(
                f,
                "the event store's schema is version {found}, newer than this build's \
                 {supported}; upgrade the application, or point it at another store"
            ),
            Self::Closed => f.write_str("the event store is closed"),
        }
    }
}

impl StdError for QueueError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Unavailable(error) => Some(error.as_ref()),
            _ => None,
        }
    }
}

/// The columns a store keeps to rebuild a [`Delivery`], encoded the same way by every
/// backend.
// Only the stores use them.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Columns {
    /// `0` webhook, `1` WebSocket.
    pub(crate) channel: i16,
    /// The inbox of an inbox's secret; `None` for the account.
    pub(crate) scope_inbox: Option<String>,
    /// `X-Timestamp` and the index of the secret that verified it; `None` for the
    /// WebSocket.
    pub(crate) timestamp: Option<i64>,
    pub(crate) secret_index: Option<i64>,
    /// `X-Event-Id`, visible ASCII, unsigned.
    pub(crate) event_id_header: Option<String>,
    pub(crate) body: Bytes,
}

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
impl Columns {
    pub(crate) fn from_delivery(delivery: &Delivery) -> Self {
        let verified = delivery.verified();
        Self {
            channel: match delivery.channel() {
                Channel::Webhook => 0,
                Channel::WebSocket => 1,
            },
            scope_inbox: match delivery.scope() {
                Tenant::Account => None,
                Tenant::Inbox(inbox) => Some(inbox.clone()),
            },
            timestamp: verified.map(|verified| verified.timestamp()),
            secret_index: verified
                .map(|verified| i64::try_from(verified.secret_index()).unwrap_or(i64::MAX)),
            event_id_header: delivery.event_id_header().map(str::to_owned),
            body: delivery.body().clone(),
        }
    }

    /// The delivery, with its event parsed when the body is an event (it was, when the
    /// layer parsed it before storing).
    pub(crate) fn into_delivery(self) -> Delivery {
        let channel = if self.channel == 1 {
            Channel::WebSocket
        } else {
            Channel::Webhook
        };
        let verified = match (self.timestamp, self.secret_index) {
            (Some(timestamp), Some(index)) => Some(Verified::new(
                timestamp,
                usize::try_from(index).unwrap_or(usize::MAX),
            )),
            _ => None,
        };
        let scope = self.scope_inbox.map_or(Tenant::Account, Tenant::Inbox);
        let event_id_header = self
            .event_id_header
            .and_then(|value| HeaderValue::from_str(&value).ok());
        Delivery::stored(channel, verified, scope, event_id_header, self.body)
    }
}
