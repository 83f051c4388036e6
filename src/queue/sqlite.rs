//! [`SqliteStore`]: the embedded event store, one SQLite file used by one process.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, mpsc};

#[cfg(all(test, openmail_loom))]
use loom::sync::{Condvar, Mutex};
#[cfg(not(all(test, openmail_loom)))]
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::oneshot;

use super::store::{Backend, Columns, Durability, Inserted, Lease, QueueError, QueueStats};
use super::store::{Claimed, DeadLetter, Settled};
use crate::Delivery;

mod keys;

use keys::Keys;

/// The schema version this build writes, in SQLite's `user_version`. A file of a newer
/// version is refused at open ([`QueueError::Schema`]); an older one is migrated.
const SCHEMA_VERSION: i64 = 4;

/// The row of `openmail_meta` whose value is a row id through which every row's key is in
/// `openmail_keys`.
const INDEXED_THROUGH: &str = "keys_indexed_through";

/// How often, at most, the writer records how far every key is in the index of keys: what
/// opening reads again after a crash is the rows past it.
const RECORD_INDEXED_EVERY: Duration = Duration::from_secs(1);

/// The most commands one transaction commits together. Concurrent inserts arriving while
/// a commit is under way wait for the next one and share it: one `fsync` (or one WAL
/// append) for the whole group.
const GROUP_LIMIT: usize = 512;

/// How long the writer waits without a command, once a body was deleted, before it
/// checkpoints the write-ahead log into the file and truncates it: the log's older frames
/// hold the body until then. A truncation stops the writer for as long as it copies what
/// the checkpointer has not, and makes every later frame an append that the file system
/// must allocate, so it waits for a pause in the commits.
const ERASE_WHEN_QUIET_FOR: Duration = Duration::from_millis(250);

/// The longest a deleted body stays in the write-ahead log while commits never pause for
/// [`ERASE_WHEN_QUIET_FOR`]: then the writer truncates between two groups.
const ERASE_WITHIN: Duration = Duration::from_secs(5);

/// How long the checkpointer lets commits gather before it copies the write-ahead log into
/// the file. A page written several times in between is copied once: a longer wait copies
/// fewer pages (the pages of the index of keys that a commit's slice wrote), and each copy
/// takes CPU from the threads that answer the requests, in bursts. So it copies seldom:
/// a second after the first commit it has not copied, sooner when the log passes
/// [`COPY_AT_FRAMES`] or a deleted body is due to leave it, or once the commits pause (see
/// [`PAUSED_AFTER`]), so that the truncation after a pause has little to copy.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How long the checkpointer waits without hearing of new groups before it copies, once
/// it has let commits gather for [`GATHER_AT_LEAST`]: the commits paused (the writer
/// tells it at most every [`SIGNAL_EVERY`] while they go on).
const PAUSED_AFTER: Duration = Duration::from_millis(100);

/// The least time the checkpointer lets commits gather before a pause makes it copy: a
/// light load, whose groups come further apart than [`PAUSED_AFTER`], is copied at most
/// four times a second.
const GATHER_AT_LEAST: Duration = Duration::from_millis(250);

/// How often, at most, the writer tells the checkpointer that groups committed: a signal
/// wakes the checkpointer's thread, which only needs to know once per
/// [`CHECKPOINT_EVERY`] that there is something to copy.
const SIGNAL_EVERY: Duration = Duration::from_millis(20);

/// The most keys one command of a purge forgets. A purge takes the writer's thread for a
/// batch at a time, and the commands queued meanwhile go first: 256 keys took 2.7 ms
/// (median) and a thousand 31 ms, in a file of 300,000 completed events.
const PURGE_BATCH: usize = 256;

/// Forgets up to `?2` keys of events completed before `?1` (Unix milliseconds), oldest
/// first, through the index of completed events (`state = 1` is its condition, which
/// SQLite's planner matches term for term).
const PURGE: &str = "DELETE FROM openmail_events WHERE id IN (
    SELECT id FROM openmail_events
    WHERE state = 1 AND finished_ms < ?1
    ORDER BY finished_ms LIMIT ?2)
RETURNING key";

/// Events waiting and leased (`?1`: now, in Unix milliseconds), dead, and the oldest
/// waiting, through the indexes of waiting and of dead events: the completed ones, kept
/// for the retention, are most of the table.
const STATS: &str = "SELECT
    coalesce(sum(leased = 0 OR due_ms <= ?1), 0),
    coalesce(sum(leased = 1 AND due_ms > ?1), 0),
    (SELECT count(*) FROM openmail_events WHERE state = 2),
    min(received_ms)
FROM openmail_events WHERE state = 0";

/// Up to `?1` dead letters, oldest first, through their index.
const DEAD_LETTERS: &str = "SELECT key, attempts, coalesce(error, ''), channel, scope_inbox,
    timestamp, secret_index, event_id_header, body
FROM openmail_events WHERE state = 2 ORDER BY finished_ms LIMIT ?1";

/// The writer's prepared statements: about 20 different ones.
const STATEMENTS: usize = 32;

/// The writer's page cache, in KiB (SQLite's unit for a negative `cache_size`): the index
/// of a hundred thousand events' keys (about 5 MiB) fits, that of a million (about
/// 45 MiB) does not. Not more, while the file is under 1 GiB: a page split in the keys'
/// index that has to reorder its pages swaps them through the page number at 1 GiB, and
/// the cache keeps that as the highest page it has held; the commit then drops the pages
/// past the file's end by scanning every slot of the cache's hash table, whose size
/// follows the most pages ever cached. At a hundred thousand events waiting, these scans
/// took 21 and 30 % of the writer's time with 32 MiB (in two profiles), 7 % with 8 MiB,
/// and hardly any page was read from the files with either. At a million waiting (a file past
/// 1 GiB, where the scan stops), two runs of each showed no difference.
const CACHE_KIB: i64 = 8 * 1024;

/// How long the write-ahead log may grow (in frames, a page each: 64 MiB of 4 KiB pages)
/// before the writer copies the rest of it into the file itself, so that the log starts
/// over from its first frame at the next commit, in place, in pages the file system has
/// already allocated: the checkpointer copies the log without stopping the writer, but the
/// log only starts over when a copy catches up between two commits, which a steady load
/// may never allow.
const LOG_LIMIT_FRAMES: i64 = 16_384;

/// The log's length (in frames: 160 MiB of 4 KiB pages) at which the writer asks the
/// checkpointer to copy at once, not at the end of its [`CHECKPOINT_EVERY`]: while the
/// copies keep up, the log then grows past it only by what commits during the catch-up,
/// whatever the size of the bodies. (Commits faster than the copies are held at
/// [`LOG_HOLD_BYTES`].) A copy that could not run or catch up is not asked for again until
/// the log has started over: the checkpointer's next copies come at its usual times.
const COPY_AT_FRAMES: i64 = 40_960;

/// The write-ahead log's file may grow to this many bytes (256 MiB, four times
/// [`LOG_LIMIT_FRAMES`]) before the writer holds commits until the log is copied and
/// truncated: a load of large bodies can commit faster than the checkpointer's copies
/// (which include an `fsync` of the file) take them, and each copy then takes longer than
/// the last while the log grows. Only the writer can stop the growth, by not committing.
///
/// A steady load of ordinary bodies that the copies do keep up with grows the log by a
/// second of commits, or to [`COPY_AT_FRAMES`], before a copy, and by what commits during
/// the catch-up before it starts over (in a bench at 45,000 to 47,000 deliveries/s, up
/// to 188 MiB). Held at 128 MiB, such a load (then copied every 250 ms) truncated its
/// log in place of starting it over, a stall of 73 to 90 ms, after which the file had to
/// grow again.
const LOG_HOLD_BYTES: u64 = 256 * 1024 * 1024;

/// The longest the writer holds commits for a long log at once: a copy of the
/// checkpointer's that takes longer (its own `fsync` on a slow disk), or a reader outside
/// the store (the `sqlite3` shell in a transaction), keeps the log from being truncated,
/// and then only another [`LOG_HOLD_BYTES`] of growth makes the writer wait again.
const LOG_HOLD_AT_MOST: Duration = Duration::from_secs(2);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS openmail_events (
    id              INTEGER PRIMARY KEY,
    key             BLOB NOT NULL,          -- 32 bytes: the scoped event id's digest
    state           INTEGER NOT NULL,       -- 0 waiting or leased, 1 completed, 2 dead
    received_ms     INTEGER NOT NULL,       -- Unix milliseconds
    due_ms          INTEGER NOT NULL,       -- waiting: claimable from; leased: lease end
    leased          INTEGER NOT NULL DEFAULT 0,
    token           INTEGER NOT NULL DEFAULT 0, -- claims so far, never reset
    attempts        INTEGER NOT NULL DEFAULT 0,
    started         INTEGER NOT NULL DEFAULT 1, -- leased: the attempt began (else refunded)
    channel         INTEGER,                -- the Delivery, until completed
    scope_inbox     TEXT,
    timestamp       INTEGER,
    secret_index    INTEGER,
    event_id_header TEXT,
    body            BLOB,
    error           TEXT,                   -- the last failure
    finished_ms     INTEGER                 -- completed or dead at
);
CREATE INDEX IF NOT EXISTS openmail_events_due ON openmail_events (due_ms) WHERE state = 0;
CREATE INDEX IF NOT EXISTS openmail_events_completed ON openmail_events (finished_ms)
    WHERE state = 1;
CREATE INDEX IF NOT EXISTS openmail_events_dead ON openmail_events (finished_ms)
    WHERE state = 2;
";

/// Version 4's index of keys, apart from the table (see [`keys`]): each event's key and
/// row. The keys of the rows past `keys_indexed_through` may be missing from it (they
/// were held by the writer of a process that stopped without writing them): opening
/// writes them.
const KEYS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS openmail_keys (
    key BLOB PRIMARY KEY,
    id  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS openmail_meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// From version 1 to 2: whether a leased event's attempt started. Leases taken by version
/// 1 count as started, as they did.
const MIGRATE_V2: &str =
    "ALTER TABLE openmail_events ADD COLUMN started INTEGER NOT NULL DEFAULT 1;";

/// From version 2 to 3: one index for the completed events (the purge's) and one for the
/// dead letters, in place of one for both: the purge walked every old dead letter in
/// each batch before it found completed keys, and the dead letters were listed by
/// reading the whole table.
const MIGRATE_V3: &str = "
DROP INDEX IF EXISTS openmail_events_finished;
CREATE INDEX IF NOT EXISTS openmail_events_completed ON openmail_events (finished_ms)
    WHERE state = 1;
CREATE INDEX IF NOT EXISTS openmail_events_dead ON openmail_events (finished_ms)
    WHERE state = 2;
";

/// From version 3 to 4, first step: the table, without its indexes (whose names
/// [`SCHEMA`] gives the new table's), is set aside under another name. SQLite cannot drop
/// the index of a `UNIQUE` column, so [`SCHEMA`] then creates the table again, without the
/// unique index of its keys (whose entries [`KEYS_SCHEMA`]'s table holds, written later:
/// see [`keys`]), and [`MIGRATE_V4_COPY`] copies the rows into it.
///
/// The tables of version 4 are dropped first: a file taken back to version 3 by hand may
/// still have them, and a build of version 3 changes the events without them (its purge
/// deletes rows whose keys stay in `openmail_keys`, and ids come round again). So the
/// index of keys is written again from every row, and nothing recorded before is trusted.
const MIGRATE_V4: &str = "
DROP TABLE IF EXISTS openmail_keys;
DROP TABLE IF EXISTS openmail_meta;
DROP INDEX IF EXISTS openmail_events_due;
DROP INDEX IF EXISTS openmail_events_completed;
DROP INDEX IF EXISTS openmail_events_dead;
ALTER TABLE openmail_events RENAME TO openmail_events_v3;
";

/// From version 3 to 4, last step: the rows of the table set aside, into the new one.
/// Opening then writes every key into the index of keys.
const MIGRATE_V4_COPY: &str = "
INSERT INTO openmail_events (id, key, state, received_ms, due_ms, leased, token,
    attempts, started, channel, scope_inbox, timestamp, secret_index, event_id_header,
    body, error, finished_ms)
SELECT id, key, state, received_ms, due_ms, leased, token, attempts, started, channel,
    scope_inbox, timestamp, secret_index, event_id_header, body, error, finished_ms
FROM openmail_events_v3;
DROP TABLE openmail_events_v3;
";

/// The embedded [`EventStore`](super::EventStore): one SQLite file, no server, for one machine.
///
/// - **Created with mode `0600`** when missing (SQLite gives its WAL and shared-memory
///   files the same mode): the bodies are users' email.
/// - **One process at a time.** Opening takes advisory locks (`flock` on Unix,
///   `LockFileEx` on Windows) on a file of its own beside the database, `<path>-lock`
///   (mode `0600`, left in place), and on Unix on the database file, and checks that no other
///   connection holds a write lock; a second store, in this process or another, gets
///   [`QueueError::Locked`] from [`open`](Self::open). The locks are held until the
///   store's three threads have closed their connections: dropping the store waits for
///   that (the last commands and a final checkpoint, which truncates the log, finish
///   first), so a store reopens at once once the drop returned, and a process that exits
///   after dropping its store leaves no completed body in the log. (Other programs that
///   ignore the locks, such as the `sqlite3` shell, may read the file; do not write to
///   it.) Since no other store can hold a lease, opening hands every
///   lease of the previous process back at once: after
///   a crash, its events run again as soon as the store reopens, with the attempt that
///   crashed counted (an event that waited in the prefetch and never started gets its
///   attempt back).
/// - **Write-ahead log**, and `synchronous` as the [`Durability`] says: `NORMAL` (the
///   default) survives the process's crash, `FULL` a power loss too.
/// - **Completed bodies erased from the files**, not only from their rows:
///   `secure_delete` zeroes the bytes a completion deletes, and the write-ahead log (whose
///   older frames still hold the body as it was stored) is checkpointed into the file and
///   truncated once writes pause for 250 ms after a completion (the workers' claims that
///   find nothing are not writes), or about 5 s after it under a load whose writes never
///   pause.
/// - **Group commit.** One thread owns the connection. Commands that arrive while it
///   commits wait for the next transaction and share it, so concurrent acknowledgements
///   cost one commit together, not one each. It keeps up to 8 MiB of the file's pages in
///   memory.
/// - **Checkpoints beside the writer.** A second thread copies the write-ahead log into
///   the file once a second while commits write (sooner when the log passes 40,960
///   pages, 160 MiB, and when the commits pause for 100 ms after at least 250 ms of
///   them), on a connection of its own, without stopping the writer (`PASSIVE`), and
///   (with `NORMAL`) flushes what it copied; SQLite's automatic checkpoint, which runs
///   inside a commit and holds every command queued behind it, is off. Each copy takes
///   CPU from the threads that answer the requests, so they come seldom, and a page
///   written many times in between is copied once. When a copy finds the log past
///   16,384 pages (64 MiB), or a deleted body is due to leave it, that thread copies
///   again until little is left, and the writer copies the rest between two groups: the
///   log then starts over in place (or is truncated, to erase a body), so the writer is
///   held up for a few groups' pages, not for the whole log. A load that commits faster
///   than the copies can take it (large bodies on a slow disk) is held: once the log's
///   file passes 256 MiB, the writer waits for the copy under way and truncates the log
///   before it commits again, for at most 2 s at once (a longer copy, or a reader
///   outside the store, keeps the log from being truncated; the writer then waits again
///   only after another 256 MiB).
/// - **An operator's questions beside the writer.** [`stats`](super::EventStore::stats) and
///   [`dead_letters`](super::EventStore::dead_letters) read on a third thread and
///   connection, what was committed when they began, through the indexes of the waiting
///   and the dead events: counting a hundred thousand waiting events takes tens of
///   milliseconds, which the acknowledgements would otherwise wait for. A question waits
///   while the writer copies the log's last frames and, while a truncation is due, until it
///   succeeds (at most 0.5 s), since SQLite neither starts the log over nor truncates it
///   while a read is open on it.
/// - **Keys indexed later.** A duplicate is found by its key, in an index of keys of its
///   own (`openmail_keys`). A key is a digest, so each new entry of that index lands on a
///   page of its own: written at once, every acknowledgement wrote a page of it to the log
///   and the checkpointer copied it again. So the writer holds the keys of the events
///   stored lately (about one for every nine keys the store remembers, from 1,024 to
///   65,536, which take about 4 MiB) and writes them into the index a slice of the key
///   space per commit, several to a page, inside that commit's transaction. A duplicate
///   is looked for among the keys held, then in the index. The keys held when a process
///   dies are not lost: every row past the one recorded in `openmail_meta` (at most every
///   second) has its key written into the index when the store opens again, before
///   anything else reads it; dropping the store writes them all.
/// - **Versioned schema** in `user_version` (4); the tables are created on first open. The
///   SQL is in the module's source: tables `openmail_events`, `openmail_keys` and
///   `openmail_meta`.
///
/// ```no_run
/// use openmail_webhooks::queue::{Durability, SqliteStore};
///
/// let store = SqliteStore::open("/var/lib/receiver/events.db", Durability::ProcessCrash)?;
/// # Ok::<(), openmail_webhooks::queue::QueueError>(())
/// ```
pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    /// To the reader's thread: what an operator asks, answered beside the writer.
    reads: mpsc::Sender<Read>,
    path: PathBuf,
    /// The writer's thread, joined when the store is dropped: see [`Drop`].
    writer: Option<std::thread::JoinHandle<()>>,
    /// The reader's thread, joined when the store is dropped, so that its connection is
    /// closed (and its share of the locks let go) once the drop returns.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SqliteStore {
    /// Waits for the writer's thread to commit the last commands and truncate the log.
    /// A process that exits once its store is dropped (a graceful stop) would otherwise
    /// end that thread before its last truncation, leaving the bodies completed since the
    /// last one in the write-ahead log for as long as the process is down. The wait is
    /// the queued commands plus one checkpoint of what the checkpointer had not copied.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.commands, closed));
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.reads, closed));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

// Three connections share the file (the writer's; the checkpointer's, which copies the log
// into the file without stopping the writer; and the reader's, which answers an operator's
// questions without stopping it either), so SQLite's own `locking_mode=EXCLUSIVE` cannot
// keep other processes out; an advisory lock on the file, held until every connection is
// closed, does.

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store at `path`, creating the file (mode `0600`) and its tables when
    /// missing, takes the file's lock, and starts the thread that owns the connection.
    ///
    /// Fails with [`QueueError::Locked`] when another process uses the file, with
    /// [`QueueError::Schema`] when a newer build wrote it, and with
    /// [`QueueError::Unavailable`] when it cannot be created or read.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, QueueError> {
        let path = path.as_ref().to_path_buf();
        create_private(&path)?;
        let locks = Arc::new(lock_file(&path)?);
        let mut connection = Connection::open(&path).map_err(|error| opening(&path, error))?;
        // Room for every statement the writer prepares (rusqlite keeps 16 by default).
        connection.set_prepared_statement_cache_capacity(STATEMENTS);
        prepare(&connection, durability, &path)?;
        // After `prepare`, whose `wal_autocheckpoint` would replace it.
        let log_frames = Arc::new(AtomicI64::new(0));
        {
            let log_frames = Arc::clone(&log_frames);
            connection
                .wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames| {
                    log_frames.store(i64::from(frames), Ordering::Relaxed);
                    Ok(())
                }))
                .map_err(|error| opening(&path, error))?;
        }
        let depth = Writer::count_depth(&connection).map_err(|error| opening(&path, error))?;
        let (next_id, remembered) = connection
            .query_row(
                "SELECT max(coalesce(max(id), 0),
                        coalesce((SELECT value FROM openmail_meta WHERE name = ?1), 0)) + 1,
                    coalesce(max(id) - min(id) + 1, 0)
                 FROM openmail_events",
                [INDEXED_THROUGH],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
            )
            .map_err(|error| opening(&path, error))?;
        let checkpoints = Connection::open(&path).map_err(|error| opening(&path, error))?;
        tune(&checkpoints, durability).map_err(|error| opening(&path, error))?;
        let reads = Connection::open(&path).map_err(|error| opening(&path, error))?;
        tune_reader(&reads).map_err(|error| opening(&path, error))?;
        let gate = Arc::new(Gate::new());
        let reader = Reader {
            connection: reads,
            gate: Arc::clone(&gate),
            _locks: Arc::clone(&locks),
        };
        let (commands, receiver) = mpsc::channel();
        let (wrote, written) = mpsc::channel();
        let (caught_up, copied) = mpsc::channel();
        #[cfg(test)]
        let probe = Arc::default();
        let writer = Writer {
            connection,
            depth,
            erased: None,
            wrote,
            signalled: None,
            unsignalled: false,
            last_write: Instant::now(),
            retry_erase: Instant::now(),
            copied,
            erase_asked: false,
            log_frames,
            copy_asked: false,
            copy_at: COPY_AT_FRAMES,
            #[cfg(test)]
            probe: Arc::clone(&probe),
            log_file: {
                let mut log = path.as_os_str().to_owned();
                log.push("-wal");
                PathBuf::from(log)
            },
            hold_past: LOG_HOLD_BYTES,
            keys: Keys::new(u64::try_from(remembered).unwrap_or(0)),
            next_id,
            indexed_recorded: Instant::now(),
            #[cfg(test)]
            erasures: Vec::new(),
            gate,
            _locks: Arc::clone(&locks),
        };
        let checkpointer = Checkpointer {
            connection: checkpoints,
            caught_up,
            #[cfg(test)]
            probe,
            last_copy: (0, 0),
            // With `FULL`, every commit flushes the log: a flush of the file beside them
            // makes them wait for it (the p99 of the acknowledgement doubled).
            flush: durability == Durability::ProcessCrash,
            locks,
        };
        std::thread::Builder::new()
            // Linux keeps 15 bytes of a thread's name: both names stay whole.
            .name("openmail-ckpt".to_owned())
            .spawn(move || checkpointer.run(&written))
            .map_err(QueueError::unavailable)?;
        let writer = std::thread::Builder::new()
            .name("openmail-sqlite".to_owned())
            .spawn(move || writer.run(&receiver))
            .map_err(QueueError::unavailable)?;
        let (reads, read_receiver) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("openmail-read".to_owned())
            .spawn(move || reader.run(&read_receiver));
        let mut store = Self {
            commands,
            reads,
            path,
            writer: Some(writer),
            reader: None,
        };
        // On failure the store is dropped, which stops and joins the writer.
        store.reader = Some(reader.map_err(QueueError::unavailable)?);
        Ok(store)
    }

    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, QueueError> {
        call(&self.commands, command).await
    }

    /// Asks the reader's thread, which reads beside the writer.
    async fn read<T>(&self, read: impl FnOnce(Reply<T>) -> Read) -> Result<T, QueueError> {
        call(&self.reads, read).await
    }
}

/// Sends what `message` makes of a reply to a store's thread, and waits for the answer.
async fn call<M, T>(
    thread: &mpsc::Sender<M>,
    message: impl FnOnce(Reply<T>) -> M,
) -> Result<T, QueueError> {
    let (reply, answer) = oneshot::channel();
    thread
        .send(message(reply))
        .map_err(|_| QueueError::Closed)?;
    answer.await.map_err(|_| QueueError::Closed)?
}

/// Creates the file with mode `0600` unless it exists, so that SQLite never creates it
/// with the process's umask.
fn create_private(path: &Path) -> Result<(), QueueError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(QueueError::unavailable(format!(
            "cannot create {}: {error}",
            path.display()
        ))),
    }
}

/// The advisory locks that keep other stores out of the file. Each of the store's threads
/// holds them after its connection (a struct drops its fields in order), so they are
/// released only once every connection is closed: closing a descriptor of the database
/// file while SQLite's own (POSIX) locks on it are held would release those too.
struct Locks {
    /// On `<path>-lock`, a file of the store's own that SQLite never opens.
    _own: std::fs::File,
    /// On the database file itself, so that a process that locks the file with `flock`
    /// keeps the store out too. Unix only: elsewhere (Windows) a lock on a file's bytes is
    /// mandatory, and would refuse SQLite's own reads and writes. Held for its lock; also
    /// flushed through (see [`Locks::flush_database`]), except on Apple's systems.
    #[cfg(unix)]
    #[cfg_attr(target_vendor = "apple", allow(dead_code))]
    database: std::fs::File,
}

impl Locks {
    /// Flushes the database file's written pages to the disk, as the checkpoint that
    /// completes a copy of the log would: the checkpointer does it beside the writer, so
    /// that the writer's own checkpoint between two groups does not wait for seconds'
    /// worth of pages. Where the store holds no descriptor of the file (Windows), or
    /// where flushing is a full flush of the device's cache (Apple's `F_FULLFSYNC`, much
    /// more than SQLite's own), the writer's checkpoint flushes them.
    fn flush_database(&self) -> std::io::Result<()> {
        #[cfg(all(unix, not(target_vendor = "apple")))]
        return self.database.sync_data();
        #[cfg(not(all(unix, not(target_vendor = "apple"))))]
        Ok(())
    }
}

/// Takes the advisory locks that keep other stores, in this process or another, out of
/// the file, for as long as the returned locks live.
fn lock_file(path: &Path) -> Result<Locks, QueueError> {
    let mut own_path = path.as_os_str().to_owned();
    own_path.push("-lock");
    let own_path = PathBuf::from(own_path);
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let own = options.open(&own_path).map_err(|error| {
        QueueError::unavailable(format!("cannot open {}: {error}", own_path.display()))
    })?;
    // A store of this process on the same path is refused here, before anything opens
    // the database file again.
    try_lock(&own, path)?;
    #[cfg(not(unix))]
    return Ok(Locks { _own: own });
    #[cfg(unix)]
    let database = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| {
            QueueError::unavailable(format!("cannot open {}: {error}", path.display()))
        })?;
    #[cfg(unix)]
    match try_lock(&database, path) {
        Ok(()) => Ok(Locks {
            _own: own,
            database,
        }),
        Err(error) => {
            // Held elsewhere, possibly by a store of this process under another name of
            // the same file (a link): closing this descriptor would release that store's
            // SQLite locks on the file. One descriptor per refused open is kept instead.
            std::mem::forget(database);
            Err(error)
        }
    }
}

fn try_lock(file: &std::fs::File, path: &Path) -> Result<(), QueueError> {
    // The `sqlite` feature needs Rust 1.89 anyway (rusqlite 0.43, as Cargo.toml says), the
    // release that made `File::try_lock` stable; the crate's 1.85 is for the other features.
    #[allow(clippy::incompatible_msrv)]
    let locked = file.try_lock();
    match locked {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(QueueError::Locked {
            what: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(error)) => Err(QueueError::unavailable(format!(
            "cannot lock {}: {error}",
            path.display()
        ))),
    }
}

/// Sets the journal and durability, creates or checks the schema, and takes back the
/// leases of the previous process.
fn prepare(connection: &Connection, durability: Durability, path: &Path) -> Result<(), QueueError> {
    let locked = |error| opening(path, error);
    tune(connection, durability).map_err(locked)?;
    // The checkpointer copies the log into the file; the writer only truncates it.
    connection
        .pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(locked)?;
    // Every insert looks its key up in a page of the index of keys at random: with
    // SQLite's default of 2 MiB, most of them are read from the file again at a hundred
    // thousand events (see `CACHE_KIB` for why not more).
    connection
        .pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(locked)?;
    connection
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(locked)?;
    let outcome = (|| {
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(locked)?;
        if version > SCHEMA_VERSION {
            return Err(QueueError::Schema {
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            connection.execute_batch(SCHEMA).map_err(locked)?;
        }
        if (1..2).contains(&version) {
            connection.execute_batch(MIGRATE_V2).map_err(locked)?;
        }
        if (1..3).contains(&version) {
            connection.execute_batch(MIGRATE_V3).map_err(locked)?;
        }
        if (1..4).contains(&version) {
            connection.execute_batch(MIGRATE_V4).map_err(locked)?;
            connection.execute_batch(SCHEMA).map_err(locked)?;
            connection.execute_batch(MIGRATE_V4_COPY).map_err(locked)?;
        }
        connection.execute_batch(KEYS_SCHEMA).map_err(locked)?;
        index_missing_keys(connection).map_err(locked)?;
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(locked)?;
        // No other process can hold a lease: every lease of the previous process ends now,
        // due at once in the order the events arrived (not behind the events that arrived
        // while they were leased), so that a restart claims them before later events. The
        // claim that takes one over sees an expired lease, as after a holder's death on a
        // shared store: it gives back the attempt of an event that never started.
        connection
            .execute(
                "UPDATE openmail_events SET due_ms = min(received_ms, ?1)
                 WHERE state = 0 AND leased = 1",
                params![now_ms()],
            )
            .map_err(locked)?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            connection.execute_batch("COMMIT").map_err(locked)?;
            // A process killed before its checkpoint left deleted bodies in the log.
            connection
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(locked)
        }
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

/// Writes into `openmail_keys` the keys of the rows past `keys_indexed_through` that it
/// lacks: those a process held when it stopped without writing them (a crash), and every
/// key after the migration to version 4. Then every key is in the index, through the last
/// row. (Rows that another program inserts while the store is closed are covered only if
/// their ids are past the recorded one: the store's file is not for other writers.)
fn index_missing_keys(connection: &Connection) -> rusqlite::Result<()> {
    let through: i64 = connection
        .query_row(
            "SELECT value FROM openmail_meta WHERE name = ?1",
            [INDEXED_THROUGH],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    connection.execute(
        "INSERT INTO openmail_keys (key, id)
         SELECT key, id FROM openmail_events WHERE id > ?1 ORDER BY key
         ON CONFLICT (key) DO NOTHING",
        [through],
    )?;
    connection.execute(
        "INSERT OR REPLACE INTO openmail_meta (name, value)
         SELECT ?1, max(?2, coalesce(max(id), 0)) FROM openmail_events",
        params![INDEXED_THROUGH, through],
    )?;
    Ok(())
}

/// Sets the journal and the durability.
fn tune(connection: &Connection, durability: Durability) -> rusqlite::Result<()> {
    // The only other connection is the checkpointer's, which never takes the write lock:
    // a lock held is an answer (retry the checkpoint later), not something to wait for.
    connection.busy_timeout(Duration::ZERO)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // A completed event's body is deleted from its row; without this, its bytes would stay
    // in the freed pages (an overflow page is freed whole) for anyone who reads the file.
    connection.pragma_update(None, "secure_delete", "ON")?;
    let synchronous = match durability {
        Durability::PowerLoss => "FULL",
        Durability::ProcessCrash => "NORMAL",
    };
    connection.pragma_update(None, "synchronous", synchronous)
}

/// The reader's connection: it reads only, and waits briefly for the moments when the
/// writer truncates the log, when no reader may begin.
fn tune_reader(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(Duration::from_secs(2))?;
    connection.pragma_update(None, "query_only", "ON")
}

fn opening(path: &Path, error: rusqlite::Error) -> QueueError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => QueueError::Locked {
            what: path.display().to_string(),
        },
        // Opening writes (the leases handed back, the keys a crash left out of their
        // index), and the log may hold what filled the disk: nothing stored is lost, but
        // the store opens only once there is room.
        Some(ErrorCode::DiskFull) => QueueError::unavailable(format!(
            "{}: {error}: free some space; the events already stored are kept in the file \
             and its `-wal` log, and run once the store opens",
            path.display()
        )),
        _ => QueueError::unavailable(format!("{}: {error}", path.display())),
    }
}

/// `by` after `at`, or `at` itself past the clock's range.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or(at)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

/// What the connection's thread is asked to do.
enum Command {
    Insert {
        key: [u8; 32],
        columns: Columns,
        depth_limit: u64,
        reply: Reply<Inserted>,
    },
    Claim {
        limit: usize,
        start: usize,
        lease: Duration,
        max_attempts: u32,
        reply: Reply<Vec<Claimed>>,
    },
    CompleteAndClaim {
        completed: Vec<Lease>,
        started: Vec<Lease>,
        limit: usize,
        start: usize,
        lease: Duration,
        max_attempts: u32,
        reply: Reply<Settled>,
    },
    Renew {
        lease: Lease,
        lease_for: Duration,
        reply: Reply<bool>,
    },
    Complete {
        lease: Lease,
        reply: Reply<bool>,
    },
    Fail {
        lease: Lease,
        retry_in: Option<Duration>,
        error: String,
        reply: Reply<bool>,
    },
    Release {
        lease: Lease,
        reply: Reply<bool>,
    },
    RetryDeadLetter {
        key: [u8; 32],
        reply: Reply<bool>,
    },
    DiscardDeadLetter {
        key: [u8; 32],
        reply: Reply<bool>,
    },
    /// Forgets up to `limit` keys of events completed before `before_ms`, oldest first.
    Purge {
        before_ms: i64,
        limit: usize,
        reply: Reply<u64>,
    },
    /// Holds the writer's thread inside a transaction, after saying so on `holding`, until
    /// `release` says or is dropped: shows a test what does not wait for the writer.
    #[cfg(test)]
    Hold {
        holding: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
        reply: Reply<()>,
    },
    /// Rolls the group's transaction back, as SQLite does itself after some failures
    /// of a statement (a full disk, an I/O error), and answers an error.
    #[cfg(test)]
    RollBack {
        reply: Reply<()>,
    },
    /// Answers [`Writer::erasures`].
    #[cfg(test)]
    Erasures {
        reply: Reply<Vec<Duration>>,
    },
    /// Answers the log's length as the last commit left it, and whether a copy of it was
    /// asked for.
    #[cfg(test)]
    LogFrames {
        reply: Reply<(i64, bool)>,
    },
    /// Sets the log's length at which the writer asks for a copy.
    #[cfg(test)]
    CopyAt {
        frames: i64,
        reply: Reply<()>,
    },
    /// Answers what started each of the checkpointer's copies so far.
    #[cfg(test)]
    Copies {
        reply: Reply<Vec<CopiedOn>>,
    },
    /// Sets the checkpointer's waits in place of [`CHECKPOINT_EVERY`] and
    /// [`PAUSED_AFTER`].
    #[cfg(test)]
    CheckpointWaits {
        every: Duration,
        paused_after: Duration,
        reply: Reply<()>,
    },
    /// Keeps the file from growing past the pages it has (`PRAGMA max_page_count` on the
    /// writer's connection), as a full disk would; `false` lifts the limit.
    #[cfg(test)]
    FillDisk {
        full: bool,
        reply: Reply<()>,
    },
    /// Runs [`Writer::restart_log`] and answers the reasons the gate holds after it.
    #[cfg(test)]
    RestartLog {
        reply: Reply<u8>,
    },
    /// Stops the checkpointer's thread and waits for its end, as if it had died: shows a
    /// test what the writer does without it.
    #[cfg(test)]
    StopCheckpointer {
        reply: Reply<()>,
    },
}

impl Command {
    /// Answers with `error`, unexecuted: the transaction could not begin, or SQLite rolled
    /// it back before this command's turn.
    fn refuse(self, error: &str) {
        let error = || QueueError::unavailable(format!("the transaction failed: {error}"));
        match self {
            Self::Insert { reply, .. } => drop(reply.send(Err(error()))),
            Self::Claim { reply, .. } => drop(reply.send(Err(error()))),
            Self::CompleteAndClaim { reply, .. } => drop(reply.send(Err(error()))),
            Self::Renew { reply, .. }
            | Self::Complete { reply, .. }
            | Self::Fail { reply, .. }
            | Self::Release { reply, .. }
            | Self::RetryDeadLetter { reply, .. }
            | Self::DiscardDeadLetter { reply, .. } => drop(reply.send(Err(error()))),
            Self::Purge { reply, .. } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::Hold { reply, .. } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::RollBack { reply } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::Erasures { reply } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::LogFrames { reply } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::CopyAt { reply, .. } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::Copies { reply } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::CheckpointWaits { reply, .. } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::FillDisk { reply, .. } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::RestartLog { reply } => drop(reply.send(Err(error()))),
            #[cfg(test)]
            Self::StopCheckpointer { reply } => drop(reply.send(Err(error()))),
        }
    }
}

/// An answer computed inside the transaction, sent once it committed (or replaced by the
/// commit's error).
type Pending = Box<dyn FnOnce(Option<&str>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, result: rusqlite::Result<T>) -> Pending {
    Box::new(move |commit_error: Option<&str>| {
        let answer = match (result, commit_error) {
            (Ok(value), None) => Ok(value),
            (Err(error), _) => Err(QueueError::unavailable(error)),
            (Ok(_), Some(error)) => Err(QueueError::unavailable(format!(
                "the commit failed: {error}"
            ))),
        };
        // The caller may have gone (its request was dropped): nothing to do then.
        let _ = reply.send(answer);
    })
}

/// The thread that owns the connection.
struct Writer {
    connection: Connection,
    /// Events waiting or leased, as last committed: the depth limit's count, kept here so
    /// that an insert does not count the table.
    depth: u64,
    /// When a body was first deleted since the last checkpoint: its bytes are still in the
    /// write-ahead log, in the frame that stored it.
    erased: Option<Instant>,
    /// Tells the checkpointer that groups committed, at most once per [`SIGNAL_EVERY`], and
    /// when a deleted body is due to leave the log.
    wrote: mpsc::Sender<Wrote>,
    /// When the checkpointer was last told.
    signalled: Option<Instant>,
    /// Groups that wrote committed since the checkpointer was last told.
    unsignalled: bool,
    /// When the last group that changed rows committed: the log is truncated once writes
    /// pause for [`ERASE_WHEN_QUIET_FOR`].
    last_write: Instant,
    /// Not before then: the last truncation found the checkpointer copying.
    retry_erase: Instant,
    /// The checkpointer copied nearly all of the log, because it was past
    /// [`LOG_LIMIT_FRAMES`] or because the writer asked ([`Wrote::EraseDue`]).
    copied: mpsc::Receiver<()>,
    /// [`Wrote::EraseDue`] was sent and not answered yet.
    erase_asked: bool,
    /// The frames in the log after the last commit, as SQLite's hook on it reports them.
    log_frames: Arc<AtomicI64>,
    /// [`Wrote::LongLog`] was sent for the log as it is: asked again once it starts over.
    copy_asked: bool,
    /// The log's length at which a copy is asked for: [`COPY_AT_FRAMES`] (tests lower it).
    copy_at: i64,
    /// What the checkpointer's copies were started by, and its waits as a test set them.
    #[cfg(test)]
    probe: Arc<std::sync::Mutex<Probe>>,
    /// The write-ahead log's file, whose length the writer checks after each group.
    log_file: PathBuf,
    /// The log's length past which the writer holds commits: [`LOG_HOLD_BYTES`], or more
    /// after a hold that could not truncate the log.
    hold_past: u64,
    /// The keys of the events stored but not yet written to the index of keys.
    keys: Keys,
    /// The row id of the next event stored: past every row and past
    /// `keys_indexed_through`, and only growing while the store is open (even after the
    /// last row was purged), so that no new row is at or below the recorded one, where
    /// opening would not look for its key.
    next_id: i64,
    /// When the writer last recorded how far every key is in the index.
    indexed_recorded: Instant,
    /// The `after` of each [`Writer::checkpoint_erased`] that truncated the log: which of
    /// its callers erased a body.
    #[cfg(test)]
    erasures: Vec<Duration>,
    /// Keeps the reader's next reads waiting while the writer copies the rest of the log
    /// or truncates it.
    gate: Arc<Gate>,
    /// After the connection: see [`Locks`].
    _locks: Arc<Locks>,
}

impl Writer {
    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        self.serve(commands);
        // Every key held goes into the index: the next open need not look for them.
        if !self.keys.is_empty() && self.run_cached("BEGIN IMMEDIATE").is_ok() {
            self.write_keys(Keys::all, true);
            if self.run_cached("COMMIT").is_ok() {
                self.keys.commit();
            } else {
                let _ = self.run_cached("ROLLBACK");
                self.keys.roll_back();
            }
        }
        // The last truncation must not meet a copy under way: SQLite answers a checkpoint
        // that finds another one running with "busy" at once, without calling the busy
        // handler, which would leave the deleted bodies in the log. So the checkpointer
        // is stopped first (the end of `wrote` ends its loop), and its end awaited (the
        // end of `copied`, which it drops after closing its connection).
        let (stopped, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.wrote, stopped));
        while self.copied.recv().is_ok() {}
        let _ = self.connection.busy_timeout(Duration::from_secs(2));
        self.checkpoint_erased(Duration::ZERO);
    }

    fn serve(&mut self, commands: &mpsc::Receiver<Command>) {
        loop {
            let received = match self.next_timer() {
                Some(at) => commands.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => commands
                    .recv()
                    .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            };
            let first = match received {
                Ok(command) => command,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.on_timers();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut group = vec![first];
            while group.len() < GROUP_LIMIT {
                match commands.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            let before = self.connection.total_changes();
            self.commit_group(group);
            // Only a group that wrote has frames to copy, or ends a pause: the workers'
            // claims that find nothing come every 100 ms and would otherwise keep the
            // store from ever being quiet, and wake the checkpointer for nothing.
            if self.connection.total_changes() != before {
                self.last_write = Instant::now();
                self.unsignalled = true;
                self.ask_copy_of_long_log();
            }
            self.on_timers();
            self.after_group();
        }
    }

    /// When the writer must act without a command: tell the checkpointer of the groups
    /// committed since it was last told, or truncate the log after a pause in the writes.
    fn next_timer(&self) -> Option<Instant> {
        let signal = self.unsignalled.then(|| {
            self.signalled
                .map_or_else(Instant::now, |signalled| later(signalled, SIGNAL_EVERY))
        });
        let erase = self
            .erased
            .map(|_| later(self.last_write, ERASE_WHEN_QUIET_FOR).max(self.retry_erase));
        match (signal, erase) {
            (Some(signal), Some(erase)) => Some(signal.min(erase)),
            (signal, erase) => signal.or(erase),
        }
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        if self.unsignalled
            && self
                .signalled
                .is_none_or(|signalled| now.saturating_duration_since(signalled) >= SIGNAL_EVERY)
        {
            self.signal();
            // Only writes grow the log: its length is looked at as often as the
            // checkpointer is told of them, not after every group.
            self.hold_long_log();
        }
        if self.erased.is_some()
            && now.saturating_duration_since(self.last_write) >= ERASE_WHEN_QUIET_FOR
            && now >= self.retry_erase
        {
            self.checkpoint_erased(Duration::ZERO);
            if self.erased.is_some() {
                // Busy: the checkpointer is copying, briefly since nothing is written.
                self.retry_erase = later(now, SIGNAL_EVERY);
            }
        }
    }

    /// Between two groups under load: a deleted body due to leave the log, or a long log,
    /// is dealt with once the checkpointer has copied nearly all of the log, so that the
    /// writer itself copies only the last few groups.
    fn after_group(&mut self) {
        let erase_due = self
            .erased
            .is_some_and(|erased| erased.elapsed() >= ERASE_WITHIN);
        if erase_due && !self.erase_asked {
            self.erase_asked = true;
            let _ = self.wrote.send(Wrote::EraseDue);
        }
        if self.copied.try_iter().count() > 0 {
            if erase_due {
                self.checkpoint_erased(ERASE_WITHIN);
                // Done, or busy: then asked again after the next group.
                self.erase_asked = false;
            } else {
                self.restart_log();
            }
        } else {
            // The checkpointer did not answer in time (its thread is gone, or its copies
            // never caught up): truncate all the same.
            self.checkpoint_erased(ERASE_WITHIN.saturating_mul(2));
        }
    }

    /// When the log's file grew past [`LOG_HOLD_BYTES`] (a long log started over in place
    /// does not grow it; looked at when the writer tells the checkpointer of new groups,
    /// at most every [`SIGNAL_EVERY`]), holds commits until the checkpointer's copy under way ends and
    /// the writer copied the rest and truncated the log, for at most [`LOG_HOLD_AT_MOST`].
    fn hold_long_log(&mut self) {
        let length = std::fs::metadata(&self.log_file).map_or(0, |file| file.len());
        if length <= self.hold_past {
            return;
        }
        let start = std::time::Instant::now();
        loop {
            if self.truncate_log() {
                self.hold_past = LOG_HOLD_BYTES;
                return;
            }
            if start.elapsed() >= LOG_HOLD_AT_MOST {
                self.hold_past = length.saturating_add(LOG_HOLD_BYTES);
                // Something outside the store holds the log (see `LOG_HOLD_AT_MOST`); a
                // deleted body due to leave it asks again.
                self.gate.want(Quiet::Truncate, false);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Asks the checkpointer to copy at once when the log passed [`COPY_AT_FRAMES`], once
    /// until a commit finds it short again.
    fn ask_copy_of_long_log(&mut self) {
        if self.log_frames.load(Ordering::Relaxed) < self.copy_at {
            self.copy_asked = false;
        } else if !self.copy_asked {
            self.copy_asked = true;
            let _ = self.wrote.send(Wrote::LongLog);
        }
    }

    /// Tells the checkpointer that groups committed since it was last told.
    fn signal(&mut self) {
        let _ = self.wrote.send(Wrote::Groups);
        self.signalled = Some(Instant::now());
        self.unsignalled = false;
    }

    /// Copies what the checkpointer has not yet copied of the log into the file
    /// (`PASSIVE`), so that the next commit starts the log over in place: neither
    /// truncated nor grown. Busy (the checkpointer is copying again): it will say again
    /// while the log is long.
    ///
    /// A read that begins while this copies reads from the log, and one still open at the
    /// next commit keeps the log from starting over; one that begins once every frame is
    /// copied reads from the file alone and does not. So the reads wait for the copy only.
    fn restart_log(&mut self) {
        self.gate.want(Quiet::Restart, true);
        let _ = self
            .connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        self.gate.want(Quiet::Restart, false);
    }

    /// When a body was deleted at least `after` ago: copies the log into the file (where
    /// `secure_delete` zeroed the body) and truncates the log, so that the deleted bodies
    /// are in neither. Short when commits pause, since the checkpointer has copied most of
    /// the log already. Busy (the checkpointer is copying): tried again after the next
    /// group or pause.
    fn checkpoint_erased(&mut self, after: Duration) {
        if self.erased.is_none_or(|erased| erased.elapsed() < after) {
            return;
        }
        if self.truncate_log() {
            #[cfg(test)]
            self.erasures.push(after);
        }
    }

    /// Copies the log into the file and truncates it: no deleted body is left in it.
    /// False when the checkpointer was copying (SQLite does not wait for it) or SQLite
    /// failed.
    fn truncate_log(&mut self) -> bool {
        // A read open on the log keeps it from being truncated: the reads that begin
        // from now on wait until it is (an attempt that meets one already open fails, and
        // the next one, after the next group or pause, finds none).
        self.gate.want(Quiet::Truncate, true);
        let checkpointed =
            self.connection
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    row.get::<_, i64>(0)
                });
        // `0`: not blocked, so the log is empty.
        let truncated = matches!(checkpointed, Ok(0));
        if truncated {
            self.erased = None;
            self.erase_asked = false;
            self.gate.want(Quiet::Truncate, false);
        }
        truncated
    }

    fn commit_group(&mut self, group: Vec<Command>) {
        let before = self.depth;
        if let Err(error) = self.run_cached("BEGIN IMMEDIATE") {
            let error = format!("it could not begin: {error}");
            for command in group {
                command.refuse(&error);
            }
            return;
        }
        let mut answers = Vec::with_capacity(group.len());
        let mut commands = group.into_iter();
        let mut rolled_back = false;
        for command in commands.by_ref() {
            answers.push(self.execute(command));
            // A statement that failed on a full disk, an I/O error or a lack of memory may
            // have made SQLite roll the whole transaction back. The next commands would
            // then each commit on their own, behind the held keys' back, and answer an
            // error all the same (the group's commit fails): an event stored with no key
            // held or indexed, stored again when its sender retries.
            if self.connection.is_autocommit() {
                rolled_back = true;
                break;
            }
        }
        let committed = if rolled_back {
            let error = "SQLite rolled the transaction back after a statement failed";
            for command in commands {
                command.refuse(error);
            }
            Err(error.to_owned())
        } else {
            let added = self.keys.added();
            self.write_keys(|keys| keys.next_slice(added), false);
            self.run_cached("COMMIT").map_err(|error| error.to_string())
        };
        let error = committed.err().inspect(|_| {
            let _ = self.run_cached("ROLLBACK");
            self.depth = Self::count_depth(&self.connection).unwrap_or(before);
            self.keys.roll_back();
        });
        if error.is_none() {
            self.keys.commit();
        }
        for answer in answers {
            answer(error.as_deref());
        }
    }

    /// Writes the keys `which` picks from those held into the index of keys, in key
    /// order, inside the group's transaction (a savepoint: on failure they stay held, and
    /// the group's commands commit all the same), and, at most every
    /// [`RECORD_INDEXED_EVERY`] (or now), how far every key is in the index.
    fn write_keys(
        &mut self,
        which: impl FnOnce(&mut Keys) -> Vec<([u8; 32], i64)>,
        record_now: bool,
    ) {
        let slice = which(&mut self.keys);
        let record = record_now || self.indexed_recorded.elapsed() >= RECORD_INDEXED_EVERY;
        if slice.is_empty() && !record {
            return;
        }
        let written = (|| {
            self.run_cached("SAVEPOINT write_keys")?;
            let mut insert = self.connection.prepare_cached(
                "INSERT INTO openmail_keys (key, id) VALUES (?1, ?2)
                 ON CONFLICT (key) DO NOTHING",
            )?;
            for (key, id) in &slice {
                insert.execute(params![&key[..], id])?;
            }
            drop(insert);
            if record {
                // Every row below the lowest held has its key in the index once this
                // commits; with none held, every row stored so far.
                let through = self
                    .keys
                    .lowest_id_after_writes()
                    .map_or(self.next_id.saturating_sub(1), |lowest| {
                        lowest.saturating_sub(1)
                    });
                self.connection
                    .prepare_cached(
                        "INSERT OR REPLACE INTO openmail_meta (name, value) VALUES (?1, ?2)",
                    )?
                    .execute(params![INDEXED_THROUGH, through])?;
            }
            self.run_cached("RELEASE write_keys")
        })();
        if written.is_err() {
            let _ = self
                .connection
                .execute_batch("ROLLBACK TO write_keys; RELEASE write_keys");
            self.keys.unwrite();
        } else if record {
            self.indexed_recorded = Instant::now();
        }
    }

    /// The row id of the event stored under `key`: held, or in the index of keys.
    fn id_of(&self, key: &[u8; 32]) -> rusqlite::Result<Option<i64>> {
        if let Some(id) = self.keys.get(key) {
            return Ok(Some(id));
        }
        self.connection
            .prepare_cached("SELECT id FROM openmail_keys WHERE key = ?1")?
            .query_row(params![&key[..]], |row| row.get(0))
            .optional()
    }

    /// Runs `sql` on the event stored under `key`, whose row id is its `?1`, followed by
    /// `rest`: the rows changed, none when no event has that key.
    fn change_by_key(
        &self,
        key: &[u8; 32],
        sql: &str,
        rest: &[&dyn rusqlite::ToSql],
    ) -> rusqlite::Result<usize> {
        let Some(id) = self.id_of(key)? else {
            return Ok(0);
        };
        let all = std::iter::once(&id as &dyn rusqlite::ToSql).chain(rest.iter().copied());
        self.connection
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(all))
    }

    /// Runs a statement without parameters or rows, prepared once: a group's `BEGIN` and
    /// `COMMIT` are parsed once per connection, not once per group.
    fn run_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.connection
            .prepare_cached(sql)?
            .execute([])
            .map(|_changed| ())
    }

    fn count_depth(connection: &Connection) -> rusqlite::Result<u64> {
        connection
            .query_row(
                "SELECT count(*) FROM openmail_events WHERE state = 0",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|count| u64::try_from(count).unwrap_or(0))
    }

    fn execute(&mut self, command: Command) -> Pending {
        match command {
            Command::Insert {
                key,
                columns,
                depth_limit,
                reply,
            } => {
                let result = self.insert(key, columns, depth_limit);
                pending(reply, result)
            }
            Command::Claim {
                limit,
                start,
                lease,
                max_attempts,
                reply,
            } => {
                // The dead letters are reported by the workers' grouped call alone. All or
                // nothing (a savepoint): a claim that fails half-way leases nothing.
                let result = self
                    .complete_and_claim(Vec::new(), &[], limit, start, lease, max_attempts)
                    .map(|(_completed, claimed, _dead)| claimed);
                pending(reply, result)
            }
            Command::Renew {
                lease,
                lease_for,
                reply,
            } => {
                let result = self
                    .change_by_key(
                        &lease.key,
                        "UPDATE openmail_events SET due_ms = ?3
                         WHERE id = ?1 AND token = ?2 AND state = 0 AND leased = 1",
                        params![lease.token, now_ms().saturating_add(ms(lease_for))],
                    )
                    .map(|changed| changed == 1);
                pending(reply, result)
            }
            Command::Complete { lease, reply } => {
                let result = self.complete(lease);
                pending(reply, result)
            }
            Command::CompleteAndClaim {
                completed,
                started,
                limit,
                start,
                lease,
                max_attempts,
                reply,
            } => {
                let result =
                    self.complete_and_claim(completed, &started, limit, start, lease, max_attempts);
                pending(reply, result)
            }
            Command::Fail {
                lease,
                retry_in,
                error,
                reply,
            } => {
                let now = now_ms();
                let result = match retry_in {
                    Some(delay) => self.change_by_key(
                        &lease.key,
                        "UPDATE openmail_events SET leased = 0, due_ms = ?3, error = ?4
                         WHERE id = ?1 AND token = ?2 AND state = 0 AND leased = 1",
                        params![lease.token, now.saturating_add(ms(delay)), error],
                    ),
                    None => self.change_by_key(
                        &lease.key,
                        "UPDATE openmail_events SET state = 2, leased = 0, finished_ms = ?3,
                             error = ?4
                         WHERE id = ?1 AND token = ?2 AND state = 0 AND leased = 1",
                        params![lease.token, now, error],
                    ),
                }
                .map(|changed| changed == 1);
                if retry_in.is_none() && matches!(result, Ok(true)) {
                    self.depth = self.depth.saturating_sub(1);
                }
                pending(reply, result)
            }
            Command::Release { lease, reply } => {
                let result = self
                    .change_by_key(
                        &lease.key,
                        "UPDATE openmail_events
                         SET leased = 0, due_ms = ?3, attempts = max(attempts - 1, 0)
                         WHERE id = ?1 AND token = ?2 AND state = 0 AND leased = 1",
                        params![lease.token, now_ms()],
                    )
                    .map(|changed| changed == 1);
                pending(reply, result)
            }
            Command::RetryDeadLetter { key, reply } => {
                let result = self
                    .change_by_key(
                        &key,
                        "UPDATE openmail_events
                         SET state = 0, leased = 0, attempts = 0, due_ms = ?2,
                             finished_ms = NULL
                         WHERE id = ?1 AND state = 2",
                        params![now_ms()],
                    )
                    .map(|changed| changed == 1);
                if let Ok(true) = result {
                    self.depth = self.depth.saturating_add(1);
                }
                pending(reply, result)
            }
            Command::DiscardDeadLetter { key, reply } => {
                let result = self
                    .change_by_key(
                        &key,
                        "UPDATE openmail_events
                         SET state = 1, leased = 0, finished_ms = ?2, body = NULL,
                             channel = NULL, scope_inbox = NULL, timestamp = NULL,
                             secret_index = NULL, event_id_header = NULL, error = NULL
                         WHERE id = ?1 AND state = 2",
                        params![now_ms()],
                    )
                    .map(|changed| changed == 1);
                if let Ok(true) = result {
                    self.erased.get_or_insert_with(Instant::now);
                }
                pending(reply, result)
            }
            Command::Purge {
                before_ms,
                limit,
                reply,
            } => {
                let result = self.purge(before_ms, limit);
                pending(reply, result)
            }
            #[cfg(test)]
            Command::Hold {
                holding,
                release,
                reply,
            } => {
                let _ = holding.send(());
                let _ = release.recv();
                pending(reply, Ok(()))
            }
            #[cfg(test)]
            Command::RollBack { reply } => {
                let result = self
                    .run_cached("ROLLBACK")
                    .and(Err(rusqlite::Error::ExecuteReturnedResults));
                pending(reply, result)
            }
            #[cfg(test)]
            Command::Erasures { reply } => pending(reply, Ok(self.erasures.clone())),
            #[cfg(test)]
            Command::LogFrames { reply } => {
                let frames = self.log_frames.load(Ordering::Relaxed);
                pending(reply, Ok((frames, self.copy_asked)))
            }
            #[cfg(test)]
            Command::CopyAt { frames, reply } => {
                self.copy_at = frames;
                pending(reply, Ok(()))
            }
            #[cfg(test)]
            Command::Copies { reply } => {
                let copies = self
                    .probe
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .copies
                    .clone();
                pending(reply, Ok(copies))
            }
            #[cfg(test)]
            Command::CheckpointWaits {
                every,
                paused_after,
                reply,
            } => {
                self.probe
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .waits = Some((every, paused_after));
                pending(reply, Ok(()))
            }
            #[cfg(test)]
            Command::FillDisk { full, reply } => {
                let result = self
                    .connection
                    .query_row("PRAGMA page_count", [], |row| row.get::<_, i64>(0))
                    .and_then(|pages| {
                        let limit = if full { pages } else { i64::from(u32::MAX - 1) };
                        self.connection.query_row(
                            &format!("PRAGMA max_page_count = {limit}"),
                            [],
                            |_| Ok(()),
                        )
                    });
                pending(reply, result)
            }
            #[cfg(test)]
            Command::RestartLog { reply } => {
                self.restart_log();
                let wanted = *self
                    .gate
                    .wanted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                pending(reply, Ok(wanted))
            }
            #[cfg(test)]
            Command::StopCheckpointer { reply } => {
                let (stopped, _) = mpsc::channel();
                drop(std::mem::replace(&mut self.wrote, stopped));
                while self.copied.recv().is_ok() {}
                pending(reply, Ok(()))
            }
        }
    }

    fn insert(
        &mut self,
        key: [u8; 32],
        columns: Columns,
        depth_limit: u64,
    ) -> rusqlite::Result<Inserted> {
        if self.id_of(&key)?.is_some() {
            return Ok(Inserted::Duplicate);
        }
        if self.depth >= depth_limit {
            return Ok(Inserted::Full);
        }
        let now = now_ms();
        let id = self.next_id;
        self.connection
            .prepare_cached(
                "INSERT INTO openmail_events (id, key, state, received_ms, due_ms, channel,
                     scope_inbox, timestamp, secret_index, event_id_header, body)
                 VALUES (?1, ?2, 0, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                id,
                &key[..],
                now,
                columns.channel,
                columns.scope_inbox,
                columns.timestamp,
                columns.secret_index,
                columns.event_id_header,
                &columns.body[..],
            ])?;
        self.next_id = id.saturating_add(1);
        self.keys.add(key, id);
        self.depth = self.depth.saturating_add(1);
        Ok(Inserted::Stored)
    }

    /// Forgets up to `limit` keys of events completed before `before_ms`: their rows,
    /// and their entries in the index of keys, or the keys held.
    /// All or nothing, inside the group's transaction (a savepoint).
    fn purge(&mut self, before_ms: i64, limit: usize) -> rusqlite::Result<u64> {
        self.run_cached("SAVEPOINT purge")?;
        let deleted = (|| {
            let keys: Vec<Vec<u8>> = self
                .connection
                .prepare_cached(PURGE)?
                .query_map(
                    params![before_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |row| row.get(0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            let mut forget = self
                .connection
                .prepare_cached("DELETE FROM openmail_keys WHERE key = ?1")?;
            for key in &keys {
                forget.execute(params![key])?;
            }
            drop(forget);
            self.run_cached("RELEASE purge")?;
            Ok(keys)
        })();
        let keys = match deleted {
            Ok(keys) => keys,
            Err(error) => {
                let _ = self
                    .connection
                    .execute_batch("ROLLBACK TO purge; RELEASE purge");
                return Err(error);
            }
        };
        for key in &keys {
            if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
                self.keys.forget(&key);
            }
        }
        Ok(u64::try_from(keys.len()).unwrap_or(u64::MAX))
    }

    fn complete(&mut self, lease: Lease) -> rusqlite::Result<bool> {
        let changed = self.change_by_key(
            &lease.key,
            "UPDATE openmail_events
             SET state = 1, leased = 0, finished_ms = ?3, body = NULL,
                 channel = NULL, scope_inbox = NULL, timestamp = NULL,
                 secret_index = NULL, event_id_header = NULL, error = NULL
             WHERE id = ?1 AND token = ?2 AND state = 0 AND leased = 1",
            params![lease.token, now_ms()],
        )?;
        if changed == 1 {
            self.depth = self.depth.saturating_sub(1);
            self.erased.get_or_insert_with(Instant::now);
        }
        Ok(changed == 1)
    }

    /// All or nothing, inside the group's transaction (a savepoint). Completed first: a
    /// completed event is no longer due, so the claim cannot take it again.
    fn complete_and_claim(
        &mut self,
        completed: Vec<Lease>,
        started: &[Lease],
        limit: usize,
        start: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> rusqlite::Result<Settled> {
        let (depth, erased) = (self.depth, self.erased);
        self.run_cached("SAVEPOINT complete_and_claim")?;
        let result = started
            .iter()
            .try_for_each(|held| self.record_started(*held))
            .and_then(|()| {
                completed
                    .into_iter()
                    .map(|held| self.complete(held))
                    .collect::<rusqlite::Result<Vec<bool>>>()
            })
            .and_then(|recorded| {
                let (claimed, dead) = if limit == 0 {
                    (Vec::new(), Vec::new())
                } else {
                    self.claim(limit, start, lease, max_attempts)?
                };
                Ok((recorded, claimed, dead))
            })
            .and_then(|settled| {
                self.run_cached("RELEASE complete_and_claim")
                    .map(|()| settled)
            });
        match result {
            Ok(settled) => Ok(settled),
            Err(error) => {
                let _ = self
                    .connection
                    .execute_batch("ROLLBACK TO complete_and_claim; RELEASE complete_and_claim");
                (self.depth, self.erased) = (depth, erased);
                Err(error)
            }
        }
    }

    /// Records that a prefetched event's attempt started: a crash now leaves it counted.
    fn record_started(&mut self, lease: Lease) -> rusqlite::Result<()> {
        self.change_by_key(
            &lease.key,
            "UPDATE openmail_events SET started = 1
             WHERE id = ?1 AND token = ?2 AND state = 0 AND leased = 1",
            params![lease.token],
        )?;
        Ok(())
    }

    /// Claims up to `limit` due events in due order; the first `start` claimed are marked
    /// started. An expired lease of an event that never started gets its attempt back.
    /// Also returns the events it dead-lettered instead, their attempts used up.
    fn claim(
        &mut self,
        limit: usize,
        start: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> rusqlite::Result<(Vec<Claimed>, Vec<DeadLetter>)> {
        let now = now_ms();
        let due: Vec<(i64, u32, bool, bool)> = self
            .connection
            .prepare_cached(
                "SELECT id, attempts, leased, started FROM openmail_events
                 WHERE state = 0 AND due_ms <= ?1 ORDER BY due_ms, id LIMIT ?2",
            )?
            .query_map(
                params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        let mut claimed = Vec::with_capacity(due.len());
        let mut dead = Vec::new();
        for (id, attempts, leased, started) in due {
            // The holder died before this claim's attempt started: it never ran.
            let attempts = if leased && !started {
                attempts.saturating_sub(1)
            } else {
                attempts
            };
            if attempts >= max_attempts {
                let (key, attempts, error, columns) = self
                    .connection
                    .prepare_cached(
                        "UPDATE openmail_events SET state = 2, leased = 0, finished_ms = ?2,
                             error = ?3, attempts = ?4
                         WHERE id = ?1
                         RETURNING key, attempts, error, channel, scope_inbox, timestamp,
                             secret_index, event_id_header, body",
                    )?
                    .query_row(
                        params![
                            id,
                            now,
                            format!(
                                "attempt {attempts} of {max_attempts} never finished: its \
                                 process stopped or lost the lease"
                            ),
                            attempts
                        ],
                        |row| {
                            Ok((
                                row.get::<_, Vec<u8>>(0)?,
                                row.get::<_, u32>(1)?,
                                row.get::<_, String>(2)?,
                                columns_of(row)?,
                            ))
                        },
                    )?;
                self.depth = self.depth.saturating_sub(1);
                if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
                    dead.push(DeadLetter::new(
                        key,
                        attempts,
                        error,
                        columns.into_delivery(),
                    ));
                }
                continue;
            }
            // Straight into a free slot: it starts at once.
            let starts = claimed.len() < start;
            let row = self
                .connection
                .prepare_cached(
                    "UPDATE openmail_events
                     SET leased = 1, token = token + 1, attempts = ?3 + 1, due_ms = ?2,
                        started = ?4
                     WHERE id = ?1
                     RETURNING key, token, attempts, channel, scope_inbox, timestamp,
                         secret_index, event_id_header, body",
                )?
                .query_row(
                    params![id, now.saturating_add(ms(lease)), attempts, starts],
                    |row| {
                        Ok((
                            row.get::<_, Vec<u8>>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, u32>(2)?,
                            columns_of(row)?,
                        ))
                    },
                )?;
            let (key, token, attempt, columns) = row;
            let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
                continue;
            };
            claimed.push(Claimed::new(
                Lease { key, token },
                attempt,
                columns.into_delivery(),
                starts,
                leased,
            ));
        }
        Ok((claimed, dead))
    }
}

/// What the reader's thread is asked.
enum Read {
    Stats {
        reply: Reply<QueueStats>,
    },
    DeadLetters {
        limit: usize,
        reply: Reply<Vec<DeadLetter>>,
    },
}

/// The thread that answers an operator's questions ([`EventStore::stats`],
/// [`EventStore::dead_letters`]) on a connection of its own. Each answer reads what was
/// committed when it began, beside the writer (a write-ahead log lets readers and the
/// writer go on at once): counting the table takes tens of milliseconds at a hundred
/// thousand events, and the acknowledgements queued behind it on the writer's thread
/// would wait that long.
///
/// [`EventStore::stats`]: super::EventStore::stats
/// [`EventStore::dead_letters`]: super::EventStore::dead_letters
struct Reader {
    connection: Connection,
    /// Where each read first waits while the writer needs the log to itself.
    gate: Arc<Gate>,
    /// After the connection: see [`Locks`].
    _locks: Arc<Locks>,
}

impl Reader {
    fn run(self, reads: &mpsc::Receiver<Read>) {
        for read in reads {
            self.gate.before_read();
            match read {
                Read::Stats { reply } => {
                    let _ = reply.send(self.stats().map_err(QueueError::unavailable));
                }
                Read::DeadLetters { limit, reply } => {
                    let listed = self.dead_letters(limit);
                    let _ = reply.send(listed.map_err(QueueError::unavailable));
                }
            }
        }
    }

    fn stats(&self) -> rusqlite::Result<QueueStats> {
        let now = now_ms();
        self.connection.query_row(STATS, params![now], |row| {
            let count = |index: usize| -> rusqlite::Result<u64> {
                Ok(u64::try_from(row.get::<_, i64>(index)?).unwrap_or(0))
            };
            let oldest: Option<i64> = row.get(3)?;
            Ok(QueueStats {
                waiting: count(0)?,
                in_flight: count(1)?,
                dead_letters: count(2)?,
                oldest_age: oldest.map(|received| {
                    Duration::from_millis(u64::try_from(now.saturating_sub(received)).unwrap_or(0))
                }),
            })
        })
    }

    fn dead_letters(&self, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
        self.connection
            .prepare_cached(DEAD_LETTERS)?
            .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, String>(2)?,
                    columns_of(row)?,
                ))
            })?
            .filter_map(|row| match row {
                Ok((key, attempts, error, columns)) => {
                    let key = <[u8; 32]>::try_from(key.as_slice()).ok()?;
                    Some(Ok(DeadLetter::new(
                        key,
                        attempts,
                        error,
                        columns.into_delivery(),
                    )))
                }
                Err(error) => Some(Err(error)),
            })
            .collect()
    }
}

/// The longest a read waits at the [`Gate`]. A read waits for the writer's copy of the
/// log's last frames, or, while a truncation is due, until it succeeds: a truncation that
/// found a read open or the checkpointer copying is tried again after the next group, or
/// within [`SIGNAL_EVERY`] once commits pause, or once the checkpointer has caught up
/// again under a load that never pauses. This bound is reached when that takes longer,
/// or when something outside the store (the `sqlite3` shell in a transaction) keeps the
/// log from being truncated.
const READ_WAIT_AT_MOST: Duration = Duration::from_millis(500);

/// Why the writer needs the log without readers for a moment.
#[derive(Debug, Clone, Copy)]
enum Quiet {
    /// The writer copies the rest of the log, so that its next commit starts it over
    /// from its first frame, which SQLite does only if no read is open on the log.
    Restart = 1,
    /// The writer truncates the log (to erase deleted bodies, or to bound it), which
    /// SQLite refuses while a read is open on it.
    Truncate = 2,
}

/// Keeps the reader's operator questions from holding the log open when the writer needs
/// it to itself: a read open on the log keeps it from starting over or from being
/// truncated, so questions asked back to back (a poller whose count takes longer than its
/// interval, or several callers) would otherwise keep completed bodies in the log, and
/// let it grow until the writer holds commits for it.
#[derive(Debug)]
struct Gate {
    /// The [`Quiet`] reasons the writer has now, as bits.
    wanted: Mutex<u8>,
    changed: Condvar,
}

impl Gate {
    fn new() -> Self {
        Self {
            wanted: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    /// Sets or clears one reason; the reads waiting go on once none is left.
    fn want(&self, reason: Quiet, on: bool) {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        let bit = reason as u8;
        let before = *wanted;
        *wanted = if on { before | bit } else { before & !bit };
        if before != 0 && *wanted == 0 {
            self.changed.notify_all();
        }
    }

    /// Waits while the writer needs the log, at most [`READ_WAIT_AT_MOST`].
    fn before_read(&self) {
        let deadline = later(Instant::now(), READ_WAIT_AT_MOST);
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        while *wanted != 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            wanted = match self.changed.wait_timeout(wanted, left) {
                Ok((wanted, _)) => wanted,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The thread that copies the write-ahead log into the file with `PASSIVE` checkpoints on a
/// connection of its own, which never take the write lock: the writer's commits go on
/// meanwhile, where an automatic checkpoint would stop them (copying and `fsync`ing a
/// thousand pages inside a commit, every thousand pages). It holds the file's lock.
struct Checkpointer {
    connection: Connection,
    /// After the connection: see [`Locks`].
    locks: Arc<Locks>,
    /// The frames in the log and copied after the last copy: a copy that moved none is
    /// not flushed.
    last_copy: (i64, i64),
    /// Whether a copy is flushed here ([`Durability::ProcessCrash`] only).
    flush: bool,
    /// Tells the writer that nearly all of the log is copied. Dropped last (fields drop in
    /// order): the writer's final truncation, and the store's drop, wait for its end, by
    /// which this thread's connection is closed and its share of the locks let go.
    caught_up: mpsc::Sender<()>,
    /// Each copy's start, as [`Command::Copies`] answers them, and the waits a test set.
    #[cfg(test)]
    probe: Arc<std::sync::Mutex<Probe>>,
}

/// What a test sees of the checkpointer, and sets.
#[cfg(test)]
#[derive(Debug, Default)]
struct Probe {
    /// What started each copy so far.
    copies: Vec<CopiedOn>,
    /// In place of [`CHECKPOINT_EVERY`] and [`PAUSED_AFTER`], from the next wait on: a
    /// test leaves a copy one start only, whatever the machine's pace.
    waits: Option<(Duration, Duration)>,
}

/// What started one of the checkpointer's copies.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopiedOn {
    /// [`CHECKPOINT_EVERY`] after the first commit not yet copied.
    Interval,
    /// A pause in the commits.
    Pause,
    /// [`Wrote::LongLog`].
    LongLog,
    /// [`Wrote::EraseDue`].
    EraseDue,
}

/// What the writer tells the checkpointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Groups committed: copy them within [`CHECKPOINT_EVERY`].
    Groups,
    /// The log passed [`COPY_AT_FRAMES`]: copy it now, and catch up.
    LongLog,
    /// A deleted body is due to leave the log: copy nearly all of it now, then say so.
    EraseDue,
}

/// How many copies in a row the checkpointer makes to catch up with the writer, each
/// shorter than the last since it only copies what committed during the one before.
const CATCH_UP_COPIES: usize = 8;

/// A copy that took at most this many frames was short enough that the writer may copy
/// what committed meanwhile itself, between two groups: a few groups' frames. Under a
/// steady load the copies stop getting shorter before that (each flushes the log and then
/// the file, a few milliseconds in which 140 to 180 frames commit at 20,000 deliveries/s
/// in a bench), and the catch-up ends after [`CATCH_UP_COPIES`]: those copies run beside
/// the writer, while each frame more left to the writer's own copy holds up the
/// acknowledgements (with 256 here, its restarts took 3.8 to 6.9 ms against 2.6 to 5.5).
const CATCH_UP_LEFT: i64 = 64;

impl Checkpointer {
    fn run(mut self, wrote: &mpsc::Receiver<Wrote>) {
        loop {
            let mut signal = match wrote.recv() {
                Ok(signal) => signal,
                // The writer is gone, its connection closed: so is this one, then the lock.
                Err(_) => return,
            };
            // Let commits gather, then copy them all, unless the log is long or a deleted
            // body is due to leave it; a writer that went meanwhile is not kept waiting
            // for the lock.
            let (every, paused_after) = self.waits();
            let began = Instant::now();
            let until = later(began, every);
            let gathered = later(began, GATHER_AT_LEAST);
            while signal == Wrote::Groups {
                let now = Instant::now();
                let left = until.saturating_duration_since(now);
                let quiet = paused_after.max(gathered.saturating_duration_since(now));
                match wrote.recv_timeout(left.min(quiet)) {
                    Ok(next) => signal = next,
                    // The end of the wait, or a pause in the commits.
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            #[cfg(test)]
            self.probe
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .copies
                .push(match signal {
                    Wrote::Groups if Instant::now() < until => CopiedOn::Pause,
                    Wrote::Groups => CopiedOn::Interval,
                    Wrote::LongLog => CopiedOn::LongLog,
                    Wrote::EraseDue => CopiedOn::EraseDue,
                });
            let catch_up = signal == Wrote::EraseDue;
            let copied = self.copy();
            let long = copied.is_some_and(|log| log > LOG_LIMIT_FRAMES);
            if !(catch_up || long) {
                continue;
            }
            // Each copy takes the frames committed during the one before: once a copy had
            // few to take, it was short, and few committed meanwhile.
            if let Some(mut log) = copied {
                for _ in 0..CATCH_UP_COPIES {
                    let Some(now) = self.copy() else {
                        break;
                    };
                    let taken = now.saturating_sub(log);
                    log = now;
                    if taken <= CATCH_UP_LEFT {
                        break;
                    }
                }
            }
            // Answered even when a copy failed: the writer then copies and flushes the
            // rest itself, through SQLite, which reports what failed.
            let _ = self.caught_up.send(());
        }
    }

    /// How long it lets commits gather, and the pause in them that ends the wait sooner
    /// (once they gathered for [`GATHER_AT_LEAST`]).
    fn waits(&self) -> (Duration, Duration) {
        #[cfg(test)]
        if let Some(waits) = self
            .probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waits
        {
            return waits;
        }
        (CHECKPOINT_EVERY, PAUSED_AFTER)
    }

    /// One `PASSIVE` checkpoint: the frames in the log when it began, all copied unless a
    /// reader held some back; `None` when it could not copy (busy, or an error).
    ///
    /// A copy that moved frames is then flushed to the disk: SQLite flushes the file only
    /// after a copy that reached the end of the log, which commits arriving meanwhile
    /// keep it from, so the writer's own checkpoint would flush all of it at once.
    fn copy(&mut self) -> Option<i64> {
        let row = self
            .connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            });
        let (busy, log, done) = match row {
            Ok(row) => row,
            Err(_error) => {
                #[cfg(feature = "tracing")]
                tracing::warn!(error = %_error, "queue: SQLite checkpoint failed");
                return None;
            }
        };
        if busy != 0 || log < 0 {
            return None;
        }
        if self.flush && (log, done) != self.last_copy {
            self.last_copy = (log, done);
            if let Err(_error) = self.locks.flush_database() {
                #[cfg(feature = "tracing")]
                tracing::warn!(error = %_error, "queue: flushing the SQLite file failed");
                return None;
            }
        }
        Some(log)
    }
}

/// The delivery's columns, which every query that rebuilds one selects as its columns
/// 3 to 8, in the order of the schema.
fn columns_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<Columns> {
    Ok(Columns {
        channel: row.get::<_, Option<i16>>(3)?.unwrap_or(0),
        scope_inbox: row.get(4)?,
        timestamp: row.get(5)?,
        secret_index: row.get(6)?,
        event_id_header: row.get(7)?,
        body: Bytes::from(row.get::<_, Option<Vec<u8>>>(8)?.unwrap_or_default()),
    })
}

impl Backend for SqliteStore {
    async fn insert(
        &self,
        key: [u8; 32],
        delivery: Delivery,
        depth_limit: u64,
    ) -> Result<Inserted, QueueError> {
        let columns = Columns::from_delivery(&delivery);
        self.ask(|reply| Command::Insert {
            key,
            columns,
            depth_limit,
            reply,
        })
        .await
    }

    async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<Claimed>, QueueError> {
        self.ask(|reply| Command::Claim {
            limit,
            start: limit,
            lease,
            max_attempts,
            reply,
        })
        .await
    }

    async fn complete_and_claim(
        &self,
        completed: Vec<Lease>,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Settled, QueueError> {
        self.ask(|reply| Command::CompleteAndClaim {
            completed,
            started: Vec::new(),
            limit,
            start: limit,
            lease,
            max_attempts,
            reply,
        })
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
        self.ask(|reply| Command::CompleteAndClaim {
            completed,
            started,
            limit,
            start,
            lease,
            max_attempts,
            reply,
        })
        .await
    }

    async fn renew(&self, lease: Lease, lease_for: Duration) -> Result<bool, QueueError> {
        self.ask(|reply| Command::Renew {
            lease,
            lease_for,
            reply,
        })
        .await
    }

    async fn complete(&self, lease: Lease) -> Result<bool, QueueError> {
        self.ask(|reply| Command::Complete { lease, reply }).await
    }

    async fn fail(
        &self,
        lease: Lease,
        retry_in: Option<Duration>,
        error: String,
    ) -> Result<bool, QueueError> {
        self.ask(|reply| Command::Fail {
            lease,
            retry_in,
            error,
            reply,
        })
        .await
    }

    async fn release(&self, lease: Lease) -> Result<bool, QueueError> {
        self.ask(|reply| Command::Release { lease, reply }).await
    }

    async fn queue_stats(&self) -> Result<QueueStats, QueueError> {
        self.read(|reply| Read::Stats { reply }).await
    }

    async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.read(|reply| Read::DeadLetters { limit, reply }).await
    }

    async fn requeue_dead_letter(&self, key: [u8; 32]) -> Result<bool, QueueError> {
        self.ask(|reply| Command::RetryDeadLetter { key, reply })
            .await
    }

    async fn settle_dead_letter(&self, key: [u8; 32]) -> Result<bool, QueueError> {
        self.ask(|reply| Command::DiscardDeadLetter { key, reply })
            .await
    }

    async fn purge(&self, retention: Duration) -> Result<u64, QueueError> {
        // In batches, each its own command: the commands queued meanwhile (the
        // acknowledgements) wait for one batch, not for the whole purge.
        let before_ms = now_ms().saturating_sub(ms(retention));
        let mut purged: u64 = 0;
        loop {
            let deleted = self
                .ask(|reply| Command::Purge {
                    before_ms,
                    limit: PURGE_BATCH,
                    reply,
                })
                .await?;
            purged = purged.saturating_add(deleted);
            if deleted < PURGE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::EventStore;

    #[test]
    fn a_full_disk_at_open_says_what_to_do_and_that_nothing_is_lost() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let error = opening(Path::new("/srv/events.db"), full);
        // The cause, which the receiver prints after the error.
        let message = std::error::Error::source(&error)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(message.contains("/srv/events.db"), "{message}");
        assert!(message.contains("free some space"), "{message}");
        assert!(message.contains("kept"), "{message}");
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(
            opening(Path::new("/srv/events.db"), busy),
            QueueError::Locked { .. }
        ));
    }

    /// A full disk refuses the deliveries that need room, and loses nothing stored:
    /// copies of a stored event are still recognised, and it runs once there is room.
    #[tokio::test]
    async fn a_full_disk_refuses_new_events_and_keeps_every_stored_one() {
        let (store, dir) = store("full-disk");
        let delivery = |id: &str, padding: usize| {
            let body = format!(r#"{{"event_id":"{id}","text":"{}"}}"#, "x".repeat(padding));
            Delivery::websocket(Bytes::from(body), None)
        };
        assert_eq!(
            store
                .insert([1; 32], delivery("evt_kept", 10), u64::MAX)
                .await
                .unwrap(),
            Inserted::Stored
        );
        store
            .ask(|reply| Command::FillDisk { full: true, reply })
            .await
            .unwrap();
        // A body of 64 KiB needs pages the file does not have.
        let error = store
            .insert([2; 32], delivery("evt_large", 64 * 1024), u64::MAX)
            .await
            .expect_err("no room for the large event");
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            cause.as_deref().is_some_and(|cause| cause.contains("full")),
            "{cause:?}"
        );
        assert_eq!(
            store
                .insert([1; 32], delivery("evt_kept", 10), u64::MAX)
                .await
                .unwrap(),
            Inserted::Duplicate
        );
        store
            .ask(|reply| Command::FillDisk { full: false, reply })
            .await
            .unwrap();
        // The sender's retry, once there is room.
        assert_eq!(
            store
                .insert([2; 32], delivery("evt_large", 64 * 1024), u64::MAX)
                .await
                .unwrap(),
            Inserted::Stored
        );
        let claimed = store.claim(10, Duration::from_secs(60), 8).await.unwrap();
        let ids: Vec<Option<&str>> = claimed
            .iter()
            .map(|event| event.delivery().event_id())
            .collect();
        assert_eq!(ids, [Some("evt_kept"), Some("evt_large")]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh store in a directory of its own.
    fn store(name: &str) -> (SqliteStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "openmail-sqlite-unit-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap();
        (store, dir)
    }

    #[tokio::test]
    async fn an_operators_questions_are_answered_while_the_writer_is_held() {
        let (store, dir) = store("held-writer");
        let delivery = Delivery::websocket(Bytes::from_static(br#"{"event_id":"evt_1"}"#), None);
        let inserted = store.insert([7; 32], delivery, u64::MAX).await.unwrap();
        assert_eq!(inserted, Inserted::Stored);

        // The writer's thread waits, inside a transaction, until released.
        let (release, hold_ended) = hold(&store).await;

        // Answered from what was committed; a question queued behind the writer would
        // wait until the release below, and the timeout would end the test first.
        let within = Duration::from_secs(60);
        let stats = tokio::time::timeout(within, store.stats())
            .await
            .expect("the statistics waited for the writer")
            .unwrap();
        assert_eq!(
            (stats.waiting, stats.in_flight, stats.dead_letters),
            (1, 0, 0)
        );
        assert!(stats.oldest_age.is_some());
        let dead = tokio::time::timeout(within, store.dead_letters(10))
            .await
            .expect("the dead letters waited for the writer")
            .unwrap();
        assert!(dead.is_empty());

        release.send(()).unwrap();
        hold_ended.await.unwrap().unwrap();
        drop(store);
        // The reader's connection is closed with the store: it opens again at once.
        drop(SqliteStore::open(dir.join("events.db"), Durability::ProcessCrash).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Holds the writer's thread until `release` is sent: answers once it is held.
    async fn hold(
        store: &SqliteStore,
    ) -> (mpsc::Sender<()>, oneshot::Receiver<Result<(), QueueError>>) {
        let (holding, held) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let (reply, hold_ended) = oneshot::channel();
        store
            .commands
            .send(Command::Hold {
                holding,
                release: released,
                reply,
            })
            .unwrap();
        tokio::task::spawn_blocking(move || held.recv())
            .await
            .unwrap()
            .unwrap();
        (release, hold_ended)
    }

    /// A statement that makes SQLite roll the whole transaction back (a full disk, an
    /// I/O error) ends the group: the commands after it are not run on their own, outside
    /// the transaction, where their events would be stored with their keys forgotten
    /// and stored again when their senders retry.
    #[tokio::test]
    async fn a_transaction_sqlite_rolled_back_stores_nothing_of_its_group() {
        let (store, dir) = store("rolled-back");
        let delivery = |n: u8| {
            let body = format!(r#"{{"event_id":"evt_{n}"}}"#);
            Delivery::websocket(Bytes::from(body), None)
        };
        let insert = |n: u8| {
            let (reply, answer) = oneshot::channel();
            let command = Command::Insert {
                key: [n; 32],
                columns: Columns::from_delivery(&delivery(n)),
                depth_limit: u64::MAX,
                reply,
            };
            (command, answer)
        };
        let (release, hold_ended) = hold(&store).await;
        let (first, first_answer) = insert(1);
        store.commands.send(first).unwrap();
        let (reply, rolled_back) = oneshot::channel();
        store.commands.send(Command::RollBack { reply }).unwrap();
        let mut later = Vec::new();
        for n in [2, 3] {
            let (command, answer) = insert(n);
            store.commands.send(command).unwrap();
            later.push(answer);
        }
        release.send(()).unwrap();
        hold_ended.await.unwrap().unwrap();
        assert!(first_answer.await.unwrap().is_err());
        assert!(rolled_back.await.unwrap().is_err());
        for answer in later {
            assert!(answer.await.unwrap().is_err(), "answered as if stored");
        }
        // The senders retry: each event is stored once, then recognised.
        for n in 1..=3 {
            assert_eq!(
                store.insert([n; 32], delivery(n), u64::MAX).await.unwrap(),
                Inserted::Stored
            );
            assert_eq!(
                store.insert([n; 32], delivery(n), u64::MAX).await.unwrap(),
                Inserted::Duplicate
            );
        }
        let db = Connection::open(dir.join("events.db")).unwrap();
        for n in 1..=3_u8 {
            let rows: i64 = db
                .query_row(
                    "SELECT count(*) FROM openmail_events WHERE key = ?1",
                    params![&[n; 32][..]],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(rows, 1, "event {n} is stored {rows} times");
        }
        assert_eq!(store.stats().await.unwrap().waiting, 3);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Counts the pages that acknowledgements add to the write-ahead log, in groups of 8
    /// (the commands queued while the writer is held go into one transaction), with the
    /// checkpointer stopped so that the log only grows. Written at once, each new key
    /// took a page of the index of keys of its own: 8 pages per group for the keys alone,
    /// besides the table's pages.
    #[tokio::test]
    async fn acknowledgements_write_their_keys_several_to_a_page() {
        use sha2::Digest;
        const REMEMBERED: i64 = 20_000;
        const GROUPS: usize = 250;
        let key = |n: i64| -> [u8; 32] { sha2::Sha256::digest(n.to_be_bytes()).into() };
        let (store, dir) = store("frames");
        drop(store);
        let path = dir.join("events.db");
        {
            // Completed events whose keys the store remembers: written into the index of
            // keys when it opens.
            let mut db = Connection::open(&path).unwrap();
            let transaction = db.transaction().unwrap();
            let mut insert = transaction
                .prepare(
                    "INSERT INTO openmail_events (key, state, received_ms, due_ms, finished_ms)
                     VALUES (?1, 1, 0, 0, 0)",
                )
                .unwrap();
            for n in 0..REMEMBERED {
                insert.execute(params![&key(n)[..]]).unwrap();
            }
            drop(insert);
            transaction.commit().unwrap();
        }
        let store = SqliteStore::open(&path, Durability::ProcessCrash).unwrap();
        store
            .ask(|reply| Command::StopCheckpointer { reply })
            .await
            .unwrap();
        let log = dir.join("events.db-wal");
        let before = std::fs::metadata(&log).unwrap().len();
        // About the size of a `message.received` delivery.
        let padding = "x".repeat(650);
        let mut n = REMEMBERED;
        for _ in 0..GROUPS {
            let (release, hold_ended) = hold(&store).await;
            let mut replies = Vec::new();
            for _ in 0..8 {
                n += 1;
                let body = format!(r#"{{"event_id":"evt_{n}","text":"{padding}"}}"#);
                let delivery = Delivery::websocket(Bytes::from(body), None);
                let (reply, answer) = oneshot::channel();
                store
                    .commands
                    .send(Command::Insert {
                        key: key(n),
                        columns: Columns::from_delivery(&delivery),
                        depth_limit: u64::MAX,
                        reply,
                    })
                    .unwrap();
                replies.push(answer);
            }
            release.send(()).unwrap();
            hold_ended.await.unwrap().unwrap();
            for answer in replies {
                assert_eq!(answer.await.unwrap().unwrap(), Inserted::Stored);
            }
        }
        let after = std::fs::metadata(&log).unwrap().len();
        // Each frame is a 24-byte header and a 4 KiB page.
        let frames = after.saturating_sub(before) / (24 + 4096);
        let per_group = frames as f64 / GROUPS as f64;
        eprintln!("{frames} pages of log for {GROUPS} groups of 8: {per_group:.2} per group");
        // Measured: 7.0 per group; 14.3 with every key written in its own group.
        assert!(
            per_group < 10.0,
            "{per_group:.2} pages of log per group of 8 acknowledgements"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_purge_forgets_completed_keys_in_batches_through_the_index() {
        let (store, dir) = store("purge");
        let total = PURGE_BATCH * 2 + 88;
        for n in 0..total {
            let body = Bytes::from(format!(r#"{{"event_id":"evt_{n}"}}"#));
            let mut key = [0; 32];
            key[..8].copy_from_slice(&(n as u64).to_be_bytes());
            let inserted = store
                .insert(key, Delivery::websocket(body, None), u64::MAX)
                .await
                .unwrap();
            assert_eq!(inserted, Inserted::Stored);
        }
        // The oldest event is dead before any completes, all but 40 of the rest complete,
        // and 40 wait.
        let claimed = store
            .claim(total - 40, Duration::from_secs(60), 8)
            .await
            .unwrap();
        assert_eq!(claimed.len(), total - 40);
        let (dead, completing) = claimed.split_first().unwrap();
        assert!(
            store
                .fail(dead.lease(), None, "gave up".to_owned())
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        for event in completing {
            assert!(store.complete(event.lease()).await.unwrap());
        }
        let completed = (total - 41) as u64;

        assert_eq!(store.purge(Duration::from_secs(3600)).await.unwrap(), 0);
        // One command forgets one batch, the oldest completed first.
        let before_ms = now_ms() + 1;
        let batch = store
            .ask(|reply| Command::Purge {
                before_ms,
                limit: PURGE_BATCH,
                reply,
            })
            .await
            .unwrap();
        assert_eq!(batch, PURGE_BATCH as u64);
        // A purge goes on until a batch comes back short.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let purged = store.purge(Duration::ZERO).await.unwrap();
        assert_eq!(purged, completed - PURGE_BATCH as u64);
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.waiting, 40, "a waiting event was purged");
        assert_eq!(stats.dead_letters, 1, "a dead letter was purged");
        let left: i64 = Connection::open(dir.join("events.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM openmail_events", [], |row| row.get(0))
            .unwrap();
        assert_eq!(left, 41);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Whether any file in `dir` holds `needle`.
    fn any_file_holds(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|entry| {
            std::fs::read(entry.unwrap().path())
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
        })
    }

    /// Stores one event under the key numbered `n`, its body padded with `padding` bytes.
    async fn store_padded(store: &SqliteStore, n: u32, padding: usize) {
        let mut key = [0; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        let mut body = format!(r#"{{"event_id":"evt_padded_{n}","text":""#);
        body.extend(std::iter::repeat_n('x', padding));
        body.push_str(r#""}"#);
        let delivery = Delivery::websocket(Bytes::from(body), None);
        assert_eq!(
            store.insert(key, delivery, u64::MAX).await.unwrap(),
            Inserted::Stored
        );
    }

    /// Each commit tells the writer the log's length (through SQLite's hook on the log,
    /// which `wal_autocheckpoint` would replace), and the writer asks the checkpointer for
    /// a copy once the log passes its length for that ([`COPY_AT_FRAMES`], lowered here),
    /// once until a commit finds the log short again. The checkpointer is stopped, so that
    /// the log only grows until the writer truncates it.
    #[tokio::test]
    async fn the_writer_asks_for_a_copy_once_the_log_passes_its_length() {
        const COPY_AT: i64 = 2_048;
        let (store, dir) = store("copy-at");
        store
            .ask(|reply| Command::StopCheckpointer { reply })
            .await
            .unwrap();
        store
            .ask(|reply| Command::CopyAt {
                frames: COPY_AT,
                reply,
            })
            .await
            .unwrap();
        let frames = || store.ask(|reply| Command::LogFrames { reply });
        store_padded(&store, 0, 0).await;
        let (first, asked) = frames().await.unwrap();
        assert!(
            first > 0 && !asked,
            "after one commit: {first} frames, asked {asked}"
        );
        // 64 KiB a commit, 17 pages or so: the log passes its length within 130.
        let mut previous = first;
        for n in 1..300 {
            store_padded(&store, n, 64 * 1024).await;
            let (now, asked) = frames().await.unwrap();
            assert!(
                now > previous,
                "the log went from {previous} to {now} frames"
            );
            assert_eq!(asked, now >= COPY_AT, "{now} frames, asked {asked}");
            previous = now;
            if now >= COPY_AT + 256 {
                break;
            }
        }
        assert!(previous >= COPY_AT, "the log stopped at {previous} frames");
        // A completed body makes the writer truncate the log once the writes pause; a copy
        // is asked for again only once the log is long again.
        let claimed = store.claim(1, Duration::from_secs(60), 8).await.unwrap();
        assert!(store.complete(claimed[0].lease()).await.unwrap());
        let log = dir.join("events.db-wal");
        let paused = Instant::now();
        while std::fs::metadata(&log).unwrap().len() > 0 {
            assert!(
                paused.elapsed() < Duration::from_secs(30),
                "the log was never truncated"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store_padded(&store, 1_000, 0).await;
        let (after, asked) = frames().await.unwrap();
        assert!(
            after < 16 && !asked,
            "after the truncation: {after} frames, asked {asked}"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What started each of the checkpointer's copies so far.
    async fn copies(store: &SqliteStore) -> Vec<CopiedOn> {
        store.ask(|reply| Command::Copies { reply }).await.unwrap()
    }

    /// The checkpointer's copies, once there is one (at most 30 s).
    async fn until_copied(store: &SqliteStore) -> Vec<CopiedOn> {
        let waited = Instant::now();
        loop {
            let copies = copies(store).await;
            if !copies.is_empty() {
                return copies;
            }
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "the checkpointer never copied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets the checkpointer's waits (see [`Probe::waits`]).
    async fn checkpoint_waits(store: &SqliteStore, every: Duration, paused_after: Duration) {
        store
            .ask(|reply| Command::CheckpointWaits {
                every,
                paused_after,
                reply,
            })
            .await
            .unwrap();
    }

    /// The checkpointer copies at once when the writer asks (the log past its length for
    /// that, lowered here), and after a pause in the commits. Each part leaves its copy
    /// one start only (the other waits an hour), so the test holds at any pace.
    #[tokio::test]
    async fn the_checkpointer_copies_a_long_log_at_once_and_after_a_pause() {
        const HOUR: Duration = Duration::from_secs(3600);

        // One commit, then none: with no interval, only the pause can start a copy, and
        // not before the commits gathered for `GATHER_AT_LEAST` (a lower bound, which a
        // slow machine only widens), so a light load is copied at most four times a second.
        let (quiet, dir) = store("copy-pause");
        checkpoint_waits(&quiet, HOUR, PAUSED_AFTER).await;
        let sent = Instant::now();
        store_padded(&quiet, 0, 0).await;
        assert_eq!(until_copied(&quiet).await, [CopiedOn::Pause]);
        assert!(
            sent.elapsed() >= GATHER_AT_LEAST,
            "copied {:?} after the commit",
            sent.elapsed()
        );
        drop(quiet);
        let _ = std::fs::remove_dir_all(&dir);

        // Commits until the log passes 512 frames, with neither an interval nor a pause
        // to start a copy: only the writer's ask can, and does.
        let (busy, dir) = store("copy-long");
        checkpoint_waits(&busy, HOUR, HOUR).await;
        busy.ask(|reply| Command::CopyAt { frames: 512, reply })
            .await
            .unwrap();
        let mut n = 0;
        while copies(&busy).await.is_empty() {
            assert!(n < 1_000, "no copy after {n} commits");
            store_padded(&busy, n, 64 * 1024).await;
            n += 1;
        }
        let (frames, asked) = busy
            .ask(|reply| Command::LogFrames { reply })
            .await
            .unwrap();
        let copies = copies(&busy).await;
        assert_eq!(
            copies.first(),
            Some(&CopiedOn::LongLog),
            "{copies:?} after {n} commits, {frames} frames, asked {asked}"
        );
        assert!(frames >= 512 && asked, "{frames} frames, asked {asked}");
        drop(busy);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without the checkpointer (its thread gone), a body completed under commits that
    /// never pause for [`ERASE_WHEN_QUIET_FOR`] still leaves the files: the writer copies
    /// and truncates the log itself once the body has waited twice [`ERASE_WITHIN`].
    #[tokio::test]
    async fn a_completed_body_leaves_the_files_under_a_steady_load_without_the_checkpointer() {
        let (store, dir) = store("no-checkpointer");
        store
            .ask(|reply| Command::StopCheckpointer { reply })
            .await
            .unwrap();
        let marker = b"private-body-7f3a";
        let mut body = br#"{"event_id":"evt_private","text":""#.to_vec();
        body.extend_from_slice(marker);
        body.extend_from_slice(&[b'z'; 10_000]);
        body.extend_from_slice(br#""}"#);
        let delivery = Delivery::websocket(Bytes::from(body), None);
        assert_eq!(
            store.insert([9; 32], delivery, u64::MAX).await.unwrap(),
            Inserted::Stored
        );
        let claimed = store.claim(1, Duration::from_secs(60), 8).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert!(store.complete(claimed[0].lease()).await.unwrap());
        let completed = Instant::now();
        assert!(
            any_file_holds(&dir, marker),
            "the body was never in the store's files"
        );

        // A commit every 20 ms or so: the writes do not pause for the 250 ms after which
        // the log is truncated anyway (unless the machine stalls this task that long).
        let mut n = 0u64;
        while any_file_holds(&dir, marker) {
            assert!(
                completed.elapsed() < ERASE_WITHIN * 2 + Duration::from_secs(20),
                "the completed body still readable after {:?}",
                completed.elapsed()
            );
            let mut key = [0; 32];
            key[..8].copy_from_slice(&n.to_be_bytes());
            let tick = Bytes::from(format!(r#"{{"event_id":"evt_tick_{n}"}}"#));
            let inserted = store
                .insert(key, Delivery::websocket(tick, None), u64::MAX)
                .await
                .unwrap();
            assert_eq!(inserted, Inserted::Stored);
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("erased {:?} after the completion", completed.elapsed());
        // A truncation of the writer's erased the body: its own deadline's, or one after
        // a pause (should this task have stalled), never the one it asks of the
        // checkpointer (stopped); and not the log starting over in place, which a running
        // checkpointer's copies allow and which overwrites the body's frame too.
        let erasures = store
            .ask(|reply| Command::Erasures { reply })
            .await
            .unwrap();
        assert!(
            !erasures.is_empty()
                && erasures
                    .iter()
                    .all(|after| [ERASE_WITHIN * 2, Duration::ZERO].contains(after)),
            "erasures after {erasures:?}: not by the writer's own deadline or a pause"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `EXPLAIN QUERY PLAN`'s steps for `sql`, with every parameter bound to 1.
    fn plan(connection: &Connection, sql: &str) -> Vec<String> {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let parameters = vec![1; statement.parameter_count()];
        statement
            .query_map(rusqlite::params_from_iter(parameters), |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The writer's copy of the log's last frames does not leave the reads waiting once it
    /// is done: a store whose commits stop right after one would otherwise answer every
    /// question 0.5 s late until its next command.
    #[tokio::test]
    async fn the_reads_wait_for_the_writers_copy_of_the_log_only_while_it_copies() {
        let (store, dir) = store("restart-gate");
        let wanted = store
            .ask(|reply| Command::RestartLog { reply })
            .await
            .unwrap();
        assert_eq!(wanted, 0, "the gate still holds the reads");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_purge_and_the_operators_questions_read_their_indexes_not_the_table() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(SCHEMA).unwrap();
        for (sql, index) in [
            (PURGE, "openmail_events_completed"),
            (DEAD_LETTERS, "openmail_events_dead"),
            (STATS, "openmail_events_due"),
        ] {
            let plan = plan(&connection, sql);
            assert!(
                plan.iter().any(|step| step.contains(index)),
                "{index} unused: {plan:?}"
            );
            assert!(
                !plan
                    .iter()
                    .any(|step| step.starts_with("SCAN openmail_events") && !step.contains("INDEX")),
                "the table is read whole: {plan:?}"
            );
            assert!(
                !plan.iter().any(|step| step.contains("TEMP B-TREE")),
                "the rows are sorted: {plan:?}"
            );
        }
        // The dead letters are counted through their index too.
        let plan = plan(&connection, STATS);
        assert!(
            plan.iter()
                .any(|step| step.contains("openmail_events_dead")),
            "{plan:?}"
        );
    }
}

/// `RUSTFLAGS="--cfg openmail_loom" cargo test --lib --all-features model_check`: the
/// gate between the writer and the reader under every interleaving loom explores. Its
/// condition variable never times out there, so a read left waiting once no reason is
/// left would be a deadlock, which loom reports.
#[cfg(all(test, openmail_loom))]
mod model_check {
    use super::{Gate, Quiet};
    use loom::sync::Arc;

    #[test]
    fn model_check_a_read_waiting_at_the_gate_goes_on_once_the_writer_is_done() {
        loom::model(|| {
            let gate = Arc::new(Gate::new());
            let writer = {
                let gate = Arc::clone(&gate);
                loom::thread::spawn(move || {
                    gate.want(Quiet::Truncate, true);
                    gate.want(Quiet::Restart, true);
                    gate.want(Quiet::Truncate, false);
                    gate.want(Quiet::Restart, false);
                })
            };
            // Passes before the first reason, or waits and is woken after the last one;
            // a wake-up lost on the way would leave it waiting for ever.
            gate.before_read();
            writer.join().unwrap();
            assert_eq!(*gate.wanted.lock().unwrap(), 0);
        });
    }

    #[test]
    fn model_check_two_reads_both_go_on_after_the_writer() {
        loom::model(|| {
            let gate = Arc::new(Gate::new());
            gate.want(Quiet::Truncate, true);
            let other = {
                let gate = Arc::clone(&gate);
                loom::thread::spawn(move || gate.before_read())
            };
            let writer = {
                let gate = Arc::clone(&gate);
                loom::thread::spawn(move || gate.want(Quiet::Truncate, false))
            };
            gate.before_read();
            other.join().unwrap();
            writer.join().unwrap();
            assert_eq!(*gate.wanted.lock().unwrap(), 0);
        });
    }
}
