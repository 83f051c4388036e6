//! Ack fast, process durably: an event store between the verified delivery and the
//! handler.
//!
//! OpenMail gives a receiver 15 seconds to answer `2xx`; handlers that call a model or
//! read attachments take longer. [`Ingest`] goes where the handler went, after
//! [`VerifyOpenMailLayer`](crate::VerifyOpenMailLayer): it writes the verified delivery
//! to an [`EventStore`] and answers `200` once the write is committed. [`Workers`] take
//! the stored events and call your ordinary tower service with the same request
//! extensions the layer gives it (`Arc<`[`Event`](crate::Event)`>` and
//! [`Delivery`](crate::Delivery)), plus a [`WorkerAttempt`]. The same handler serves
//! inline, queued, webhook and WebSocket.
//!
//! # The guarantee
//!
//! **Each acknowledged event is handled to completion at least once; without a crash,
//! exactly once.** "Acknowledged" means OpenMail got a `2xx` from [`Ingest`], which answers
//! only after the store committed the event. "Handled to completion" means your service
//! answered `2xx`; the event is then marked completed. A crash (of the process, or of the
//! machine under [`Durability::PowerLoss`]) between the handler's effects and that mark
//! runs the handler again once the event's lease expires (at once, for SQLite, whose
//! store is used by one process: a restart takes every lease back). A store that cannot
//! record the completion (PostgreSQL restarting) does not: the workers that ran the
//! handler remember the event and, when they claim it again after its lease expired,
//! record the completion without running it again. Only another process claiming it first
//! (a replica) runs it again then, or the next process if the store still fails when the
//! workers stop (they try the last completions five times, over 3 s or more).
//!
//! # Duplicates
//!
//! The store's key is the one [`DedupKey`](crate::dedup::DedupKey) computes: the verified
//! body's `inbox_id` (which the secret's [`Tenant`](crate::tenant::Tenant)
//! covers) and its `event_id`, exact bytes, hashed to 32 bytes. A delivery whose key is
//! already stored, waiting, running, completed within the retention or dead, gets the same
//! `200` and is not stored again; so there is no `409` here, and [`Ingest`] replaces
//! [`DeduplicateLayer`](crate::dedup::DeduplicateLayer) on its route. The same event over
//! the webhook and the WebSocket is stored once.
//!
//! # Order
//!
//! Events run concurrently, up to [`Workers::concurrency`], including events of one
//! inbox: an `inbox.suspended` may run before or while a `message.received` stored earlier
//! runs. OpenMail itself does not order deliveries (a retried `message.received` can
//! arrive after a later `inbox.suspended`), so a handler that cares reads the state it
//! acts on (is the inbox suspended now?) instead of inferring it from arrival order.
//!
//! # Why not apalis
//!
//! apalis is tower-native and has SQLite and PostgreSQL backends. It does not fit here:
//! - Its jobs are serialized values (JSON by default) with ids it generates. The store
//!   keeps the signed bytes as bytes (`BLOB`, `BYTEA`: PostgreSQL's `jsonb` and `text`
//!   refuse the NUL and lone surrogate escapes a signed event may carry) under a unique
//!   key on the scoped event id, checked in the transaction that stores the event: on
//!   PostgreSQL by the same statement; on SQLite by the writer's thread, which alone
//!   writes the file, against the keys it holds and its index of keys, written later in
//!   the commits that follow and completed at open after a crash from the rows
//!   themselves. With apalis the event and its key would be in two stores committed
//!   apart (its job, and a table of ours), and a crash between them either loses the
//!   event or stores it twice.
//! - Crash correctness is the product here: the attempt counted at claim, the lease token
//!   that stops a stale holder, the body deleted at completion with the key kept, the
//!   SQLite file locked to one process. Each is a few lines of SQL that the tests check;
//!   through apalis' storage traits they would be its behaviour to track across releases.
//! - Weight: apalis' SQL backends build on sqlx, which brings its own runtime glue and
//!   macros; this module needs rusqlite (bundled, already a dev-dependency) or
//!   tokio-postgres, and nothing else.

mod ingest;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
mod workers;

pub use ingest::Ingest;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteStore;
pub use store::{DeadLetter, Durability, EventStore, QueueError, QueueStats};

// The store contract, sealed inside the crate, is reachable under `test-util` for the
// crate's own store tests only: hidden, and not part of the API.
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub use store::{Backend, Claimed, Inserted, Lease, Settled};
pub use workers::{WorkerAttempt, Workers};
