//! [`PostgresStore`]: the event store for several replicas, one PostgreSQL database.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::store::{Backend, Columns, Durability, Inserted, Lease, QueueError, QueueStats};
use super::store::{Claimed, DeadLetter, Settled};
use crate::Delivery;

/// The schema version this build creates and expects, in `openmail_schema`.
const SCHEMA_VERSION: i64 = 2;

/// The advisory lock that makes replicas starting together create the schema one after
/// the other: "openmail" in ASCII. Held for the creating transaction only.
const SCHEMA_LOCK: i64 = 0x6f70_656e_6d61_696c;

/// Version 1 of the schema, as [`PostgresStore::connect`] creates it, in one transaction.
/// docs/durable.md shows it for users who run their own migrations; a test keeps the two
/// equal.
const SCHEMA_V1: &str = "\
CREATE TABLE openmail_schema (
    component text   PRIMARY KEY,
    version   bigint NOT NULL
);
CREATE TABLE openmail_events (
    key             bytea       PRIMARY KEY,            -- SHA-256 of the scoped event id
    state           smallint    NOT NULL DEFAULT 0,     -- 0 waiting or leased, 1 completed, 2 dead
    leased          boolean     NOT NULL DEFAULT false,
    token           bigint      NOT NULL DEFAULT 0,     -- claims so far, never reset
    attempts        integer     NOT NULL DEFAULT 0,
    received_at     timestamptz NOT NULL DEFAULT now(),
    due_at          timestamptz NOT NULL DEFAULT now(), -- waiting: due from; leased: lease end
    finished_at     timestamptz,                        -- completed or dead at
    channel         smallint,                           -- the Delivery, until completed
    scope_inbox     text,
    timestamp       bigint,
    secret_index    bigint,
    event_id_header text,
    body            bytea,                              -- the verified bytes, as received
    error           text                                -- the last failure
);
CREATE INDEX openmail_events_due ON openmail_events (due_at) WHERE state = 0;
CREATE INDEX openmail_events_completed ON openmail_events (finished_at) WHERE state = 1;
CREATE INDEX openmail_events_dead ON openmail_events (finished_at) WHERE state = 2;
INSERT INTO openmail_schema (component, version) VALUES ('events', 1);
";

/// From version 1 to 2, in the same transaction as version 1 when creating: whether a
/// leased event's attempt started (a claim that takes over an expired lease of an event
/// that never started refunds its attempt). Leases taken by version 1 count as started, as
/// they did. docs/durable.md shows it too.
const MIGRATE_V2: &str = "\
ALTER TABLE openmail_events ADD COLUMN started boolean NOT NULL DEFAULT true;
UPDATE openmail_schema SET version = 2 WHERE component = 'events';
";

/// New events, one row per element of the arrays; a key already there is left alone.
const INSERT: &str = "\
INSERT INTO openmail_events
    (key, channel, scope_inbox, timestamp, secret_index, event_id_header, body)
SELECT * FROM unnest($1::bytea[], $2::int2[], $3::text[], $4::int8[], $5::int8[],
    $6::text[], $7::bytea[])
ON CONFLICT (key) DO NOTHING
RETURNING key";

// Statements that find events by key test their state as `state + 0 = N`, never
// `state = N`: no partial index's predicate (`WHERE state = 0`, `= 1`, `= 2`) follows from
// it, so the primary key is the only index that can serve them, whatever the statistics
// say. With `state = N` the plan depended on them: after `ANALYZE` saw few waiting events
// (a quiet day) and a backlog came, or saw no completed ones (a bulk load) and the workers
// completed many, the planner thought the partial index nearly empty and read all of it
// for every completion, renewal or claim's check: a full scan of the backlog (or of what
// the workers had completed so far) per statement, until autovacuum analysed the table
// again. Only the claim's scan of the due events uses a partial index, on purpose.

/// Which of these keys are stored, in any state.
const EXISTING: &str = "SELECT key FROM openmail_events WHERE key = ANY($1::bytea[])";

/// The depth the depth limit bounds: waiting and leased events.
const DEPTH: &str = "SELECT count(*) FROM openmail_events WHERE state = 0";

/// Locks up to `$1` due events that no other claim holds (`SKIP LOCKED`: concurrent claims
/// from other replicas pass over each other's rows instead of waiting), dead-letters those
/// whose attempts reached `$3`, and leases the rest for `$2` ms of the database's clock,
/// counting the attempt and the claim. The first `$4` leased, in due order, are marked
/// started (they take a free slot at once); the others are a prefetch. An expired lease of
/// an event that never started first gets back the attempt its claim counted.
const CLAIM: &str = "\
WITH picked AS MATERIALIZED (
    SELECT key, due_at, leased,
        CASE WHEN leased AND NOT started THEN greatest(attempts - 1, 0) ELSE attempts END
            AS attempts
    FROM openmail_events
    WHERE state = 0 AND due_at <= now()
    ORDER BY due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), exhausted AS (
    UPDATE openmail_events AS e
    SET state = 2, leased = false, finished_at = now(), attempts = picked.attempts,
        error = format('attempt %s of %s never finished: its process stopped or lost the lease',
            picked.attempts, $3::int4)
    FROM picked
    WHERE e.key = picked.key AND picked.attempts >= $3::int4
), ranked AS (
    SELECT key, attempts, leased, row_number() OVER (ORDER BY due_at, key) AS place
    FROM picked WHERE attempts < $3::int4
)
UPDATE openmail_events AS e
SET leased = true, token = e.token + 1, attempts = ranked.attempts + 1,
    started = ranked.place <= $4::int8,
    due_at = now() + $2::int8 * interval '1 millisecond'
FROM ranked
WHERE e.key = ranked.key
RETURNING e.key, e.token, e.attempts, e.channel, e.scope_inbox, e.timestamp,
    e.secret_index, e.event_id_header, e.body, e.started, ranked.leased";

/// Records that the leases of the arrays `$7` (keys) and `$8` (tokens) started, then
/// [`COMPLETE`] for each lease of the arrays `$4` (keys) and `$5` (tokens), then [`CLAIM`]
/// (`$1` to `$3`, and `$6` started at the claim), in one statement: one commit, one WAL
/// flush. The claim passes over the keys being completed or recorded, since all parts see
/// the same snapshot (where those events may look due, their lease expired) and one
/// statement must not change a row twice. The rows: `1` and the key of each completion
/// recorded, or of one already completed before the statement (by the handler's own
/// transaction: the workers need not remember it), `0` and each claimed event as [`CLAIM`]
/// returns it, and `2`, each event dead-lettered instead (its attempts used up) as a
/// claimed one, with its error last.
const COMPLETE_AND_CLAIM: &str = "\
WITH began AS (
    UPDATE openmail_events AS e
    SET started = true
    FROM unnest($7::bytea[], $8::int8[]) AS s(key, token)
    WHERE e.key = s.key AND e.token = s.token AND e.state + 0 = 0 AND e.leased
        AND e.key <> ALL($4::bytea[])
), done AS (
    UPDATE openmail_events AS e
    SET state = 1, leased = false, finished_at = now(), body = NULL, channel = NULL,
        scope_inbox = NULL, timestamp = NULL, secret_index = NULL, event_id_header = NULL,
        error = NULL
    FROM unnest($4::bytea[], $5::int8[]) AS d(key, token)
    WHERE e.key = d.key AND e.token = d.token AND e.state + 0 = 0 AND e.leased
    RETURNING e.key
), already AS (
    SELECT key FROM openmail_events WHERE key = ANY($4::bytea[]) AND state + 0 = 1
), picked AS MATERIALIZED (
    SELECT key, due_at, leased,
        CASE WHEN leased AND NOT started THEN greatest(attempts - 1, 0) ELSE attempts END
            AS attempts
    FROM openmail_events
    WHERE state = 0 AND due_at <= now() AND key <> ALL($4::bytea[])
        AND key <> ALL($7::bytea[])
    ORDER BY due_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), exhausted AS (
    UPDATE openmail_events AS e
    SET state = 2, leased = false, finished_at = now(), attempts = picked.attempts,
        error = format('attempt %s of %s never finished: its process stopped or lost the lease',
            picked.attempts, $3::int4)
    FROM picked
    WHERE e.key = picked.key AND picked.attempts >= $3::int4
    RETURNING e.key, e.token, e.attempts, e.channel, e.scope_inbox, e.timestamp,
        e.secret_index, e.event_id_header, e.body, e.error
), ranked AS (
    SELECT key, attempts, leased, row_number() OVER (ORDER BY due_at, key) AS place
    FROM picked WHERE attempts < $3::int4
), claimed AS (
    UPDATE openmail_events AS e
    SET leased = true, token = e.token + 1, attempts = ranked.attempts + 1,
        started = ranked.place <= $6::int8,
        due_at = now() + $2::int8 * interval '1 millisecond'
    FROM ranked
    WHERE e.key = ranked.key
    RETURNING e.key, e.token, e.attempts, e.channel, e.scope_inbox, e.timestamp,
        e.secret_index, e.event_id_header, e.body, e.started, ranked.leased AS taken_over
)
SELECT 1::int2, key, NULL::int8, NULL::int4, NULL::int2, NULL::text, NULL::int8, NULL::int8,
    NULL::text, NULL::bytea, NULL::bool, NULL::bool, NULL::text
FROM done
UNION ALL
SELECT 1::int2, key, NULL::int8, NULL::int4, NULL::int2, NULL::text, NULL::int8, NULL::int8,
    NULL::text, NULL::bytea, NULL::bool, NULL::bool, NULL::text
FROM already
UNION ALL
SELECT 0::int2, key, token, attempts, channel, scope_inbox, timestamp, secret_index,
    event_id_header, body, started, taken_over, NULL::text
FROM claimed
UNION ALL
SELECT 2::int2, key, token, attempts, channel, scope_inbox, timestamp, secret_index,
    event_id_header, body, false, false, error
FROM exhausted";

const RENEW: &str = "\
UPDATE openmail_events SET due_at = now() + $3::int8 * interval '1 millisecond'
WHERE key = $1 AND token = $2 AND state + 0 = 0 AND leased";

const COMPLETE: &str = "\
UPDATE openmail_events
SET state = 1, leased = false, finished_at = now(), body = NULL, channel = NULL,
    scope_inbox = NULL, timestamp = NULL, secret_index = NULL, event_id_header = NULL,
    error = NULL
WHERE key = $1 AND token = $2 AND state + 0 = 0 AND leased";

const RETRY: &str = "\
UPDATE openmail_events
SET leased = false, due_at = now() + $3::int8 * interval '1 millisecond', error = $4
WHERE key = $1 AND token = $2 AND state + 0 = 0 AND leased";

const DEAD_LETTER: &str = "\
UPDATE openmail_events SET state = 2, leased = false, finished_at = now(), error = $3
WHERE key = $1 AND token = $2 AND state + 0 = 0 AND leased";

const RELEASE: &str = "\
UPDATE openmail_events
SET leased = false, due_at = now(), attempts = greatest(attempts - 1, 0)
WHERE key = $1 AND token = $2 AND state + 0 = 0 AND leased";

const STATS: &str = "\
SELECT
    count(*) FILTER (WHERE NOT leased OR due_at <= now()),
    count(*) FILTER (WHERE leased AND due_at > now()),
    (SELECT count(*) FROM openmail_events WHERE state = 2),
    (extract(epoch FROM now() - min(received_at)) * 1000)::int8
FROM openmail_events WHERE state = 0";

const DEAD_LETTERS: &str = "\
SELECT key, attempts, coalesce(error, ''), channel, scope_inbox, timestamp, secret_index,
    event_id_header, body
FROM openmail_events WHERE state = 2 ORDER BY finished_at LIMIT $1";

const RETRY_DEAD_LETTER: &str = "\
UPDATE openmail_events
SET state = 0, leased = false, attempts = 0, due_at = now(), finished_at = NULL
WHERE key = $1 AND state + 0 = 2";

/// A dead letter given up on: completed without a run, as `COMPLETE` leaves an event.
const DISCARD_DEAD_LETTER: &str = "\
UPDATE openmail_events
SET state = 1, leased = false, finished_at = now(), body = NULL, channel = NULL,
    scope_inbox = NULL, timestamp = NULL, secret_index = NULL, event_id_header = NULL,
    error = NULL
WHERE key = $1 AND state + 0 = 2";

/// The end of the retention: events completed before it are forgotten.
const PURGE_BEFORE: &str = "SELECT now() - $1::int8 * interval '1 millisecond'";

/// Forgets up to [`PURGE_BATCH`] keys of events completed before `$1`, oldest first,
/// through the index of completed events; the rows another replica's purge holds are
/// skipped. The limit is written out, not a parameter: a generic plan guesses a
/// parameter's limit at a tenth of the rows that match, and then reads the whole table
/// for each batch.
const PURGE: &str = "\
DELETE FROM openmail_events WHERE key IN (
    SELECT key FROM openmail_events
    WHERE state = 1 AND finished_at < $1
    ORDER BY finished_at LIMIT 1000
    FOR UPDATE SKIP LOCKED)";

/// The most keys one statement of a purge forgets ([`PURGE`] says it as a literal): the
/// purge shares the workers' connection, where their claims, renewals and completions
/// wait behind each statement, and one statement may take at most [`TIMEOUT`].
const PURGE_BATCH: u64 = 1_000;

/// How long connecting, or one statement, may take before the call fails (and the
/// delivery is answered `503`): well inside OpenMail's 15 s, with room for a statement
/// that waited for the previous group.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The most events one insert statement carries.
const GROUP_LIMIT: usize = 512;

/// The most body bytes one insert statement carries, unless its first body alone is larger.
const GROUP_BYTES: usize = 8 * 1024 * 1024;

/// How old the depth count may be before an insert counts again. Counting reads the
/// due-events index (about 15 ms at 100,000 events waiting), so it is not done per insert:
/// replicas may together overshoot the depth limit by about this long's deliveries.
const DEPTH_REFRESH: Duration = Duration::from_secs(1);

/// The longest interval handed to the database (ten years): PostgreSQL refuses intervals
/// and timestamps past its range, and a `Duration::MAX` lease means "forever" anyway.
const LONGEST_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

/// The [`EventStore`](super::EventStore) for several replicas: one PostgreSQL database that every replica
/// points at.
///
/// - **Replicas share the work.** A claim locks due rows with `FOR UPDATE SKIP LOCKED`,
///   so two replicas claiming at once never take the same event and never wait for each
///   other. A lease is an expiry time on the database's clock (replicas' clocks don't
///   matter) and the claim's token: the count of the event's claims, so a holder whose
///   lease expired and was claimed by another replica can no longer complete, fail,
///   renew or release it. Nothing depends on a replica's identity: replicas on one host
///   and a restarted replica are just holders of tokens. A replica that starts never takes
///   over leases; a dead replica's events are claimed once their lease expires.
/// - **One key per event.** The key is the table's primary key, so the duplicate check
///   and the insert are one statement (`ON CONFLICT DO NOTHING`). Bodies are `bytea`, as
///   received: PostgreSQL's `jsonb` and `text` refuse NUL and the lone surrogate escapes a
///   signed event may carry.
/// - **Group commit.** Inserts that arrive while the previous insert statement runs go
///   together in the next one: one round trip and one commit for the group, on a
///   connection of their own. Claims, completions and the rest go over a second
///   connection, pipelined. An operator's [`stats`](super::EventStore::stats) and
///   [`dead_letters`](super::EventStore::dead_letters) go over a third, opened at the
///   first of them: counting the waiting events reads every one of them (25 to 39 ms at
///   a hundred thousand, 167 to 200 ms at a million), which the workers' statements
///   would otherwise wait behind. The server ends such a statement after 5 s, when the
///   call has given up on it.
/// - **Durability** is `synchronous_commit`, set for the store's own connections, and
///   every [`Durability`] waits for the WAL flush: with `off`, a crash of one PostgreSQL
///   server process (the postmaster then restarts them all) loses the commits still in its
///   WAL buffers, already acknowledged, and a process crash is what
///   [`Durability::ProcessCrash`] promises to survive. So both levels set `on` when the
///   server's setting is `off`, and otherwise keep the server's setting (`on`, `local`, or
///   the `remote_*` levels of synchronous replication, which also wait for a standby).
///   Group commit keeps the flushes few.
/// - **Schema** created at connect, when missing, under a transaction-scoped advisory
///   lock (`pg_advisory_xact_lock`), so replicas starting together each succeed: one
///   creates, the others wait and find it. Its version is in `openmail_schema`; a newer
///   version is refused ([`QueueError::Schema`]). docs/durable.md has the SQL, for running
///   it through your own migrations instead.
/// - **Bounded and self-healing.** Connecting and each statement fail after 5 s; a broken
///   or timed-out connection is replaced at the next call, so the store recovers on its
///   own when PostgreSQL restarts. Calls meanwhile fail with
///   [`QueueError::Unavailable`], which [`Ingest`](super::Ingest) answers with `503`.
/// - **Depth limit** against a count of the waiting and leased events that is at most a
///   second old, plus this store's own inserts since.
///
/// No TLS: the database is expected on loopback or a private network. The store needs the
/// tokio runtime it connected on to keep running: its connections are tasks on it.
///
/// ```no_run
/// use openmail_webhooks::queue::{Durability, PostgresStore};
///
/// # async fn run() -> Result<(), openmail_webhooks::queue::QueueError> {
/// let store =
///     PostgresStore::connect("postgres://postgres@127.0.0.1:5432/openmail", Durability::ProcessCrash)
///         .await?;
/// # Ok(()) }
/// ```
pub struct PostgresStore {
    work: Connection,
    /// An operator's questions ([`stats`](super::EventStore::stats),
    /// [`dead_letters`](super::EventStore::dead_letters)): opened at the first one, so that
    /// a count that reads every waiting event does not hold up the workers' statements,
    /// which would wait behind it on theirs.
    reads: Connection,
    inserts: mpsc::Sender<InsertRequest>,
    config: Config,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("PostgresStore")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("database", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST:PORT/DB`, or a
    /// libpq key-value string), creates the schema when it is missing, and makes its
    /// connections wait for the WAL flush (`synchronous_commit = on`, unless the server's
    /// own level waits as long) whatever `durability` says: see [`Durability`].
    ///
    /// Fails with [`QueueError::Unavailable`] when the URL is malformed or the database
    /// cannot be reached within 5 s, and with [`QueueError::Schema`] when a newer build
    /// created the schema.
    pub async fn connect(url: &str, durability: Durability) -> Result<Self, QueueError> {
        let mut config: Config = url.parse().map_err(QueueError::unavailable)?;
        if config.get_application_name().is_none() {
            config.application_name("openmail-webhooks");
        }
        config.connect_timeout(TIMEOUT);
        migrate(&config).await?;
        let settings = Settings::new(durability);
        let work = Connection::new(config.clone(), settings);
        // The first connections open now, so that a store that connected is usable.
        work.session().await?;
        let insert_connection = Connection::new(config.clone(), settings);
        insert_connection.session().await?;
        let (inserts, requests) = mpsc::channel(GROUP_LIMIT.saturating_mul(4));
        tokio::spawn(
            Inserter {
                connection: insert_connection,
                depth: None,
            }
            .run(requests),
        );
        Ok(Self {
            work,
            reads: Connection::new(config.clone(), settings).ending_abandoned_statements(),
            inserts,
            config,
        })
    }

    /// Runs `statement` (picked from the prepared ones) with `params` on the work
    /// connection, and returns its rows.
    async fn query(
        &self,
        statement: fn(&Statements) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, QueueError> {
        self.work.query(statement, params).await
    }

    /// Runs `statement` with `params` on the work connection, and returns how many rows it
    /// changed.
    async fn execute(
        &self,
        statement: fn(&Statements) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, QueueError> {
        self.work
            .run(|session| async move {
                session
                    .client
                    .execute(statement(&session.statements), params)
                    .await
            })
            .await
    }

    /// Runs a statement that changes at most one row, and says whether it did.
    async fn change_one(
        &self,
        statement: fn(&Statements) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<bool, QueueError> {
        Ok(self.execute(statement, params).await? == 1)
    }
}

impl Backend for PostgresStore {
    async fn insert(
        &self,
        key: [u8; 32],
        delivery: Delivery,
        depth_limit: u64,
    ) -> Result<Inserted, QueueError> {
        let (reply, answer) = oneshot::channel();
        let request = InsertRequest {
            key,
            columns: Columns::from_delivery(&delivery),
            depth_limit,
            reply,
        };
        self.inserts
            .send(request)
            .await
            .map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<Claimed>, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let lease = milliseconds(lease);
        let max_attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        let rows = self
            .query(|s| &s.claim, &[&limit, &lease, &max_attempts, &limit])
            .await?;
        rows.iter()
            .filter_map(|row| claimed_of(row, 0).transpose())
            .collect()
    }

    async fn complete_and_claim(
        &self,
        completed: Vec<Lease>,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Settled, QueueError> {
        self.record_and_claim(completed, Vec::new(), limit, limit, lease, max_attempts)
            .await
    }

    async fn record_and_claim(
        &self,
        completed: Vec<Lease>,
        started: Vec<Lease>,
        limit: usize,
        start: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Settled, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let start = i64::try_from(start).unwrap_or(i64::MAX);
        let started_keys: Vec<&[u8]> = started.iter().map(|held| &held.key[..]).collect();
        let started_tokens: Vec<i64> = started.iter().map(|held| held.token).collect();
        let lease = milliseconds(lease);
        let max_attempts = i32::try_from(max_attempts).unwrap_or(i32::MAX);
        let keys: Vec<&[u8]> = completed.iter().map(|held| &held.key[..]).collect();
        let tokens: Vec<i64> = completed.iter().map(|held| held.token).collect();
        let rows = self
            .query(
                |s| &s.complete_and_claim,
                &[
                    &limit,
                    &lease,
                    &max_attempts,
                    &keys,
                    &tokens,
                    &start,
                    &started_keys,
                    &started_tokens,
                ],
            )
            .await?;
        let mut recorded_keys = HashSet::new();
        let mut claimed = Vec::new();
        let mut dead = Vec::new();
        for row in &rows {
            let kind: i16 = row.try_get(0).map_err(QueueError::unavailable)?;
            match kind {
                1 => {
                    let key: &[u8] = row.try_get(1).map_err(QueueError::unavailable)?;
                    recorded_keys.insert(key.to_vec());
                }
                0 => claimed.extend(claimed_of(row, 1)?),
                _ => {
                    let error: Option<String> = row.try_get(12).map_err(QueueError::unavailable)?;
                    if let Some(event) = claimed_of(row, 1)? {
                        dead.push(DeadLetter::new(
                            event.lease.key,
                            event.attempt,
                            error.unwrap_or_default(),
                            event.delivery,
                        ));
                    }
                }
            }
        }
        let recorded = completed
            .iter()
            .map(|held| recorded_keys.contains(&held.key[..]))
            .collect();
        Ok((recorded, claimed, dead))
    }

    async fn renew(&self, lease: Lease, lease_for: Duration) -> Result<bool, QueueError> {
        let key = &lease.key[..];
        self.change_one(
            |s| &s.renew,
            &[&key, &lease.token, &milliseconds(lease_for)],
        )
        .await
    }

    async fn complete(&self, lease: Lease) -> Result<bool, QueueError> {
        let key = &lease.key[..];
        self.change_one(|s| &s.complete, &[&key, &lease.token])
            .await
    }

    async fn fail(
        &self,
        lease: Lease,
        retry_in: Option<Duration>,
        error: String,
    ) -> Result<bool, QueueError> {
        let key = &lease.key[..];
        // `text` refuses NUL, which a handler's message may carry from the event itself.
        let error = error.replace('\0', "\u{FFFD}");
        match retry_in {
            Some(delay) => {
                self.change_one(
                    |s| &s.retry,
                    &[&key, &lease.token, &milliseconds(delay), &error],
                )
                .await
            }
            None => {
                self.change_one(|s| &s.dead_letter, &[&key, &lease.token, &error])
                    .await
            }
        }
    }

    async fn release(&self, lease: Lease) -> Result<bool, QueueError> {
        let key = &lease.key[..];
        self.change_one(|s| &s.release, &[&key, &lease.token]).await
    }

    async fn queue_stats(&self) -> Result<QueueStats, QueueError> {
        let rows = self.reads.query(|s| &s.stats, &[]).await?;
        let row = rows
            .first()
            .ok_or_else(|| QueueError::unavailable("the statistics query returned no row"))?;
        let count = |index: usize| -> Result<u64, QueueError> {
            let value: i64 = row.try_get(index).map_err(QueueError::unavailable)?;
            Ok(u64::try_from(value).unwrap_or(0))
        };
        let oldest: Option<i64> = row.try_get(3).map_err(QueueError::unavailable)?;
        Ok(QueueStats {
            waiting: count(0)?,
            in_flight: count(1)?,
            dead_letters: count(2)?,
            oldest_age: oldest.map(|age| Duration::from_millis(u64::try_from(age).unwrap_or(0))),
        })
    }

    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.reads.query(|s| &s.dead_letters, &[&limit]).await?;
        let mut letters = Vec::with_capacity(rows.len());
        for row in rows {
            let key: Vec<u8> = row.try_get(0).map_err(QueueError::unavailable)?;
            let attempts: i32 = row.try_get(1).map_err(QueueError::unavailable)?;
            let error: String = row.try_get(2).map_err(QueueError::unavailable)?;
            let columns = columns_of(&row, 3)?;
            let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
                continue;
            };
            letters.push(DeadLetter::new(
                key,
                u32::try_from(attempts).unwrap_or(0),
                error,
                columns.into_delivery(),
            ));
        }
        Ok(letters)
    }

    async fn requeue_dead_letter(&self, key: [u8; 32]) -> Result<bool, QueueError> {
        let key = &key[..];
        self.change_one(|s| &s.retry_dead_letter, &[&key]).await
    }

    async fn settle_dead_letter(&self, key: [u8; 32]) -> Result<bool, QueueError> {
        let key = &key[..];
        self.change_one(|s| &s.discard_dead_letter, &[&key]).await
    }

    async fn purge(&self, retention: Duration) -> Result<u64, QueueError> {
        let retention = milliseconds(retention);
        // The end of the retention once, on the server's clock (which wrote
        // `finished_at`), so that the batches below end.
        let rows = self.query(|s| &s.purge_before, &[&retention]).await?;
        let before: std::time::SystemTime = rows
            .first()
            .ok_or_else(|| QueueError::unavailable("the retention's end came back empty"))?
            .try_get(0)
            .map_err(QueueError::unavailable)?;
        let mut purged: u64 = 0;
        loop {
            let deleted = self.execute(|s| &s.purge, &[&before]).await?;
            purged = purged.saturating_add(deleted);
            if deleted < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }
}

/// A claimed event from the columns `first` on: key, token, attempts, then the delivery's.
/// `None` for a key that is not 32 bytes, which the insert never writes.
fn claimed_of(row: &Row, first: usize) -> Result<Option<Claimed>, QueueError> {
    let column = |offset: usize| first.saturating_add(offset);
    let key: Vec<u8> = row.try_get(column(0)).map_err(QueueError::unavailable)?;
    let token: i64 = row.try_get(column(1)).map_err(QueueError::unavailable)?;
    let attempts: i32 = row.try_get(column(2)).map_err(QueueError::unavailable)?;
    let columns = columns_of(row, column(3))?;
    let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
        return Ok(None);
    };
    let started: bool = row.try_get(column(9)).map_err(QueueError::unavailable)?;
    let taken_over: bool = row.try_get(column(10)).map_err(QueueError::unavailable)?;
    Ok(Some(Claimed::new(
        Lease { key, token },
        u32::try_from(attempts).unwrap_or(0),
        columns.into_delivery(),
        started,
        taken_over,
    )))
}

/// The delivery's columns, from `first` on, in the order of the schema.
fn columns_of(row: &Row, first: usize) -> Result<Columns, QueueError> {
    let column = |offset: usize| first.saturating_add(offset);
    let get = |error| QueueError::unavailable(error);
    Ok(Columns {
        channel: row
            .try_get::<_, Option<i16>>(column(0))
            .map_err(get)?
            .unwrap_or(0),
        scope_inbox: row.try_get(column(1)).map_err(get)?,
        timestamp: row.try_get(column(2)).map_err(get)?,
        secret_index: row.try_get(column(3)).map_err(get)?,
        event_id_header: row.try_get(column(4)).map_err(get)?,
        body: Bytes::from(
            row.try_get::<_, Option<Vec<u8>>>(column(5))
                .map_err(get)?
                .unwrap_or_default(),
        ),
    })
}

fn milliseconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).map_or(LONGEST_MS, |ms| ms.min(LONGEST_MS))
}

/// An insert waiting for its group's statement.
struct InsertRequest {
    key: [u8; 32],
    columns: Columns,
    depth_limit: u64,
    reply: oneshot::Sender<Result<Inserted, QueueError>>,
}

/// The task that owns the insert connection: it writes the inserts that queued up while
/// its previous statement ran as one statement, so that concurrent deliveries share one
/// round trip and one commit.
struct Inserter {
    connection: Connection,
    /// The waiting and leased events when last counted, and when that was, plus this
    /// store's inserts since.
    depth: Option<(Instant, u64)>,
}

impl Inserter {
    async fn run(mut self, mut requests: mpsc::Receiver<InsertRequest>) {
        let mut group = Vec::new();
        while let Some(first) = requests.recv().await {
            let mut bytes = first.columns.body.len();
            group.push(first);
            while group.len() < GROUP_LIMIT && bytes < GROUP_BYTES {
                match requests.try_recv() {
                    Ok(request) => {
                        bytes = bytes.saturating_add(request.columns.body.len());
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            match self.insert_group(&group).await {
                Ok(outcomes) => {
                    for (request, outcome) in group.drain(..).zip(outcomes) {
                        // The caller may have gone (its request was dropped): nothing to do.
                        let _ = request.reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    // One failure for the whole group: every caller gets it, with the cause.
                    let error = Arc::new(error);
                    for request in group.drain(..) {
                        let _ = request.reply.send(Err(QueueError::unavailable(SharedError(
                            Arc::clone(&error),
                        ))));
                    }
                }
            }
        }
    }

    /// Inserts the group and says what became of each request, in order.
    async fn insert_group(&mut self, group: &[InsertRequest]) -> Result<Vec<Inserted>, QueueError> {
        // `u64::MAX` is no limit: the depth is counted (a read of the due events' index)
        // only for a group that some limit applies to.
        let limited = group.iter().any(|request| request.depth_limit != u64::MAX);
        let mut depth = if limited { self.depth().await? } else { 0 };
        // Which requests are sent: the first copy of each key, while the depth allows.
        let mut outcomes = Vec::with_capacity(group.len());
        let mut sent = HashSet::with_capacity(group.len());
        let mut over_limit = Vec::new();
        for request in group {
            if sent.contains(&request.key) {
                outcomes.push(Inserted::Duplicate);
            } else if depth >= request.depth_limit {
                over_limit.push(request.key);
                outcomes.push(Inserted::Full);
            } else {
                sent.insert(request.key);
                depth = depth.saturating_add(1);
                outcomes.push(Inserted::Stored);
            }
        }
        let mut keys: Vec<&[u8]> = Vec::with_capacity(sent.len());
        let mut channels = Vec::with_capacity(sent.len());
        let mut scopes = Vec::with_capacity(sent.len());
        let mut timestamps = Vec::with_capacity(sent.len());
        let mut secret_indexes = Vec::with_capacity(sent.len());
        let mut event_id_headers = Vec::with_capacity(sent.len());
        let mut bodies: Vec<&[u8]> = Vec::with_capacity(sent.len());
        for (request, outcome) in group.iter().zip(&outcomes) {
            if *outcome != Inserted::Stored {
                continue;
            }
            let columns = &request.columns;
            keys.push(&request.key);
            channels.push(columns.channel);
            scopes.push(columns.scope_inbox.as_deref());
            timestamps.push(columns.timestamp);
            secret_indexes.push(columns.secret_index);
            event_id_headers.push(columns.event_id_header.as_deref());
            bodies.push(&columns.body);
        }
        let mut stored = HashSet::with_capacity(keys.len());
        if !keys.is_empty() {
            let rows = self
                .connection
                .run(|session| async move {
                    session
                        .client
                        .query(
                            &session.statements.insert,
                            &[
                                &keys,
                                &channels,
                                &scopes,
                                &timestamps,
                                &secret_indexes,
                                &event_id_headers,
                                &bodies,
                            ],
                        )
                        .await
                })
                .await?;
            stored = keys_of(&rows)?;
        }
        // A full store still tells a duplicate apart.
        let mut existing = HashSet::new();
        if !over_limit.is_empty() {
            let candidates: Vec<&[u8]> = over_limit.iter().map(|key| &key[..]).collect();
            let rows = self
                .connection
                .run(|session| async move {
                    session
                        .client
                        .query(&session.statements.existing, &[&candidates])
                        .await
                })
                .await?;
            existing = keys_of(&rows)?;
        }
        for (request, outcome) in group.iter().zip(outcomes.iter_mut()) {
            match outcome {
                Inserted::Stored if !stored.contains(&request.key) => {
                    *outcome = Inserted::Duplicate;
                }
                Inserted::Full if existing.contains(&request.key) => {
                    *outcome = Inserted::Duplicate;
                }
                _ => {}
            }
        }
        if let Some((_, count)) = self.depth.as_mut() {
            let added = u64::try_from(stored.len()).unwrap_or(u64::MAX);
            *count = count.saturating_add(added);
        }
        Ok(outcomes)
    }

    /// The depth, counted again when the last count is older than [`DEPTH_REFRESH`].
    async fn depth(&mut self) -> Result<u64, QueueError> {
        if let Some((counted_at, count)) = self.depth {
            if counted_at.elapsed() < DEPTH_REFRESH {
                return Ok(count);
            }
        }
        let rows = self
            .connection
            .run(
                |session| async move { session.client.query(&session.statements.depth, &[]).await },
            )
            .await?;
        let count: i64 = rows
            .first()
            .ok_or_else(|| QueueError::unavailable("the depth count returned no row"))?
            .try_get(0)
            .map_err(QueueError::unavailable)?;
        let count = u64::try_from(count).unwrap_or(0);
        self.depth = Some((Instant::now(), count));
        Ok(count)
    }
}

fn keys_of(rows: &[Row]) -> Result<HashSet<[u8; 32]>, QueueError> {
    let mut keys = HashSet::with_capacity(rows.len());
    for row in rows {
        let key: &[u8] = row.try_get(0).map_err(QueueError::unavailable)?;
        if let Ok(key) = <[u8; 32]>::try_from(key) {
            keys.insert(key);
        }
    }
    Ok(keys)
}

/// A failure shared by every insert of one group; its cause is the source.
#[derive(Debug)]
struct SharedError(Arc<QueueError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What every connection of the store runs first.
#[derive(Debug, Clone, Copy)]
struct Settings {
    synchronous_commit: &'static str,
}

impl Settings {
    fn new(_durability: Durability) -> Self {
        // Every level flushes (see the type's docs): `off` loses acknowledged events when a
        // PostgreSQL process crashes. Keeps the server's level unless it is `off`: `local`
        // and the `remote_*` levels wait for the local flush too, and the latter for a
        // standby as well.
        let synchronous_commit = "SELECT set_config('synchronous_commit', 'on', false) \
             WHERE current_setting('synchronous_commit') = 'off'";
        Self { synchronous_commit }
    }
}

/// The statements of one connection, prepared when it opens.
struct Statements {
    insert: Statement,
    existing: Statement,
    depth: Statement,
    claim: Statement,
    complete_and_claim: Statement,
    renew: Statement,
    complete: Statement,
    retry: Statement,
    dead_letter: Statement,
    release: Statement,
    stats: Statement,
    dead_letters: Statement,
    retry_dead_letter: Statement,
    discard_dead_letter: Statement,
    purge_before: Statement,
    purge: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            insert: client.prepare(INSERT).await?,
            existing: client.prepare(EXISTING).await?,
            depth: client.prepare(DEPTH).await?,
            claim: client.prepare(CLAIM).await?,
            complete_and_claim: client.prepare(COMPLETE_AND_CLAIM).await?,
            renew: client.prepare(RENEW).await?,
            complete: client.prepare(COMPLETE).await?,
            retry: client.prepare(RETRY).await?,
            dead_letter: client.prepare(DEAD_LETTER).await?,
            release: client.prepare(RELEASE).await?,
            stats: client.prepare(STATS).await?,
            dead_letters: client.prepare(DEAD_LETTERS).await?,
            retry_dead_letter: client.prepare(RETRY_DEAD_LETTER).await?,
            discard_dead_letter: client.prepare(DISCARD_DEAD_LETTER).await?,
            purge_before: client.prepare(PURGE_BEFORE).await?,
            purge: client.prepare(PURGE).await?,
        })
    }
}

/// One open connection and its prepared statements.
struct Session {
    client: Client,
    statements: Statements,
}

/// One connection to PostgreSQL, opened again at the next call after it broke or timed
/// out. Concurrent statements share it: tokio-postgres pipelines them.
struct Connection {
    config: Config,
    settings: Settings,
    /// The server ends a statement after [`TIMEOUT`] too (`statement_timeout`), when the
    /// store has given up on it.
    ends_abandoned: bool,
    session: Mutex<Option<Arc<Session>>>,
}

impl Connection {
    fn new(config: Config, settings: Settings) -> Self {
        Self {
            config,
            settings,
            ends_abandoned: false,
            session: Mutex::new(None),
        }
    }

    /// For the operator's questions: a count that outlasts [`TIMEOUT`] is abandoned by the
    /// store, and without this would go on in the server, one more with each question asked
    /// again. (The other connections' statements are short, and the callers of one that
    /// the store gave up on are built for it having committed or not.)
    fn ending_abandoned_statements(mut self) -> Self {
        self.ends_abandoned = true;
        self
    }

    /// The open session, or a new one. Callers that arrive while one opens wait for it;
    /// waiting and opening together take at most [`TIMEOUT`], so that callers never queue
    /// up behind one another's attempts while PostgreSQL does not answer.
    async fn session(&self) -> Result<Arc<Session>, QueueError> {
        tokio::time::timeout(TIMEOUT, async {
            let mut slot = self.session.lock().await;
            if let Some(session) = slot.as_ref() {
                if !session.client.is_closed() {
                    return Ok(Arc::clone(session));
                }
            }
            *slot = None;
            let session = Arc::new(self.open().await.map_err(QueueError::unavailable)?);
            *slot = Some(Arc::clone(&session));
            Ok(session)
        })
        .await
        .map_err(|_| timed_out("connecting"))?
    }

    async fn open(&self) -> Result<Session, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            // An error ends the connection; the client then reports itself closed, and the
            // next call opens another.
            let _ = connection.await;
        });
        client
            .batch_execute(self.settings.synchronous_commit)
            .await?;
        if self.ends_abandoned {
            client
                .batch_execute(&format!("SET statement_timeout = {}", TIMEOUT.as_millis()))
                .await?;
        }
        let statements = Statements::prepare(&client).await?;
        Ok(Session { client, statements })
    }

    /// Runs `call` on the session within [`TIMEOUT`]. A timeout or a broken connection
    /// drops the session, so that the next call opens another.
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, QueueError>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let session = self.session().await?;
        match tokio::time::timeout(TIMEOUT, call(Arc::clone(&session))).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if session.client.is_closed() || error.as_db_error().is_none() {
                    self.forget(&session).await;
                }
                Err(QueueError::unavailable(error))
            }
            Err(_) => {
                // The connection may be stuck behind the statement: start afresh.
                self.forget(&session).await;
                Err(timed_out("a statement"))
            }
        }
    }

    /// Runs `statement` (picked from the prepared ones) with `params`, and returns its rows.
    async fn query(
        &self,
        statement: fn(&Statements) -> &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, QueueError> {
        self.run(|session| async move {
            session
                .client
                .query(statement(&session.statements), params)
                .await
        })
        .await
    }

    async fn forget(&self, session: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, session))
        {
            *slot = None;
        }
    }
}

fn timed_out(what: &str) -> QueueError {
    QueueError::unavailable(format!(
        "PostgreSQL did not answer {what} within {} s",
        TIMEOUT.as_secs()
    ))
}

/// Creates the schema when it is missing, under an advisory lock that makes replicas
/// starting together wait for each other, and checks its version.
async fn migrate(config: &Config) -> Result<(), QueueError> {
    let (mut client, connection) = tokio::time::timeout(TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| timed_out("connecting"))?
        .map_err(QueueError::unavailable)?;
    let connection = tokio::spawn(connection);
    let outcome = tokio::time::timeout(TIMEOUT, create_schema(&mut client))
        .await
        .map_err(|_| timed_out("creating the schema"))
        .and_then(|created| created);
    drop(client);
    let _ = connection.await;
    outcome
}

async fn create_schema(client: &mut Client) -> Result<(), QueueError> {
    let transaction = client
        .transaction()
        .await
        .map_err(QueueError::unavailable)?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await
        .map_err(QueueError::unavailable)?;
    // Read before creating: a role that may use the tables but not create any (the schema
    // made by a migration tool) never needs the privilege.
    let exists: bool = transaction
        .query_one("SELECT to_regclass('openmail_schema') IS NOT NULL", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(QueueError::unavailable)?;
    let version: Option<i64> = if exists {
        transaction
            .query_opt(
                "SELECT version FROM openmail_schema WHERE component = 'events'",
                &[],
            )
            .await
            .and_then(|row| row.map(|row| row.try_get(0)).transpose())
            .map_err(QueueError::unavailable)?
    } else {
        None
    };
    match version {
        Some(SCHEMA_VERSION) => return Ok(()),
        Some(1) => {
            transaction
                .batch_execute(MIGRATE_V2)
                .await
                .map_err(QueueError::unavailable)?;
            return transaction.commit().await.map_err(QueueError::unavailable);
        }
        Some(found) => {
            return Err(QueueError::Schema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        None if exists => {
            return Err(QueueError::unavailable(
                "openmail_schema exists but has no row for 'events'; \
                 create the tables as docs/durable.md shows",
            ));
        }
        None => {}
    }
    transaction
        .batch_execute(SCHEMA_V1)
        .await
        .map_err(QueueError::unavailable)?;
    transaction
        .batch_execute(MIGRATE_V2)
        .await
        .map_err(QueueError::unavailable)?;
    transaction.commit().await.map_err(QueueError::unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_statement_takes_as_many_keys_as_the_loop_expects() {
        assert!(PURGE.contains(&format!("LIMIT {PURGE_BATCH}\n")), "{PURGE}");
    }

    #[test]
    fn the_guide_shows_the_schema_and_the_completion_this_build_runs() {
        let guide = include_str!("../../docs/durable.md");
        assert!(
            guide.contains(SCHEMA_V1),
            "docs/durable.md: update the schema"
        );
        assert!(
            guide.contains(MIGRATE_V2),
            "docs/durable.md: update the migration to version 2"
        );
        assert!(
            guide.contains(COMPLETE),
            "docs/durable.md: update the completion"
        );
    }

    #[test]
    fn durations_beyond_the_database_range_are_clamped() {
        assert_eq!(milliseconds(Duration::from_millis(1_500)), 1_500);
        assert_eq!(milliseconds(Duration::MAX), LONGEST_MS);
        assert_eq!(
            milliseconds(Duration::from_secs(20 * 365 * 24 * 3600)),
            LONGEST_MS
        );
    }
}
