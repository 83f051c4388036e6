//! Durable processing, end to end on loopback: what acknowledging from the event store
//! costs against running the handler inline, how fast workers drain the store, and how
//! both change with the number of events waiting.
//!
//! `cargo bench --features sqlite,postgres --bench queue`
//!
//! - **Load.** A client of its own (`CONNECTIONS` HTTP/1.1 connections, 32 by default)
//!   posts pre-signed deliveries, each a different event (`Sample`'s
//!   `message.received` with a fresh `event_id`, under 1 KiB), so every request is a new
//!   event and none is answered as a duplicate. A run stops after `DURATION` seconds (5) or when
//!   its deliveries (`REQUESTS`, 50,000) are sent; any answer but `200` aborts the bench.
//!   Each configuration also runs over one connection, for the latency of one request
//!   without queueing behind the others, and paced: `PACED` deliveries per second
//!   (5,000 by default, at most `REQUESTS` in all; 0 skips it) over the same connections
//!   for `DURATION`, the n-th due n / `PACED` seconds after the connections opened and
//!   its latency counted from then, for the latency at a load that the server does not
//!   saturate.
//! - **Client.** Each connection is one task that writes a request's bytes and reads the
//!   answer by its `Content-Length`, without an HTTP library: the client stands in for
//!   OpenMail, which runs on other machines, and here it shares the two cores with the
//!   server, so the less CPU it takes, the less it weighs on the server with the more
//!   threads. `CLIENT=hyper` uses hyper's client connections instead (a task for the
//!   request and one driving the connection), as the bench did until December 7, 2026.
//! - **Servers.** axum with [`VerifyOpenMailLayer`] on the route, and behind it either an
//!   instant handler (*inline*) or [`Ingest`] into the store. The server has one tokio
//!   worker thread (`SERVER_THREADS=N` for more); the client runs on another thread. The
//!   SQLite store has its writer thread; PostgreSQL its own processes.
//! - **Stores.** SQLite with `synchronous=NORMAL` ([`Durability::ProcessCrash`], the
//!   default) and `FULL` ([`Durability::PowerLoss`]), in a temporary directory; a
//!   PostgreSQL started for the bench (`initdb` in a temporary directory, on a free
//!   loopback port, as the `postgres` user when run as root, `fsync` on, otherwise the
//!   server's defaults) with `synchronous_commit=on`, which every `Durability` sets there.
//! - **Depth.** Before each block the store is topped up to 1,000 then 100,000 (then
//!   1,000,000 with `DEPTH_1M=1`; or the list in `DEPTHS`, such as `DEPTHS=1000,1000000`)
//!   waiting events by one bulk `INSERT … SELECT` in one
//!   transaction, not over HTTP.
//! - **Workers.** [`Workers`] with the receiver's concurrency (8, and the default prefetch
//!   of as many events, growing with the backlog; `PREFETCH=N` fixes it) and a handler that
//!   answers `200` at once: drained alone for `DURATION`, then again while the load runs,
//!   to see whether they keep up with the acknowledgements, and what the acknowledgement's
//!   latency is while they drain (their completions share the writer's commits).
//!
//! - **Selection.** `STORES=normal,full,postgres` (any of them) runs only those stores;
//!   `WORKERS=0` skips the workers' runs.
//!
//! It prints one table per depth and a line per goal. It is not part of `cargo test`: CI
//! only builds it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::routing::post;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::queue::{
    Durability, EventStore, Ingest, PostgresStore, SqliteStore, Workers,
};
use openmail_webhooks::test_util::Sample;
use openmail_webhooks::{Delivery, Event, VerifyOpenMailLayer};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

const SECRET: &str = "whsec_bench_queue_41d7c9";

/// Which load a run puts on a server.
#[derive(Debug, Clone, Copy)]
enum Run {
    /// `CONNECTIONS` connections, each sending as soon as it has its answer.
    Loaded,
    /// One connection: a request's latency without queueing.
    Single,
    /// This many deliveries per second over `CONNECTIONS` connections.
    Paced(f64),
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

struct Settings {
    duration: Duration,
    requests: usize,
    connections: usize,
    single_requests: usize,
    /// Deliveries per second of the paced runs; 0 skips them.
    paced: f64,
    depths: Vec<u64>,
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` would not mean anything here.
    if std::env::args().any(|argument| argument == "--list") {
        return;
    }
    let mut depths = vec![1_000, 100_000];
    if env_or("DEPTH_1M", 0u8) == 1 {
        depths.push(1_000_000);
    }
    if let Ok(list) = std::env::var("DEPTHS") {
        depths = list
            .split(',')
            .filter_map(|depth| depth.trim().parse().ok())
            .collect();
    }
    let settings = Settings {
        duration: Duration::from_secs_f64(env_or("DURATION", 5.0)),
        requests: env_or("REQUESTS", 50_000),
        connections: env_or("CONNECTIONS", 32),
        single_requests: env_or("SINGLE_REQUESTS", 1_000),
        paced: env_or("PACED", 5_000.0),
        depths,
    };
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("SERVER_THREADS", 1usize).max(1))
        .thread_name("bench-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let directory =
        std::env::temp_dir().join(format!("openmail-queue-bench-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temporary directory");
    let postgres = PostgresServer::start();
    let postgres_url = postgres.url("postgres");
    eprintln!("load average at start: {}", load_average());
    let mut bench = Bench {
        settings,
        server,
        client,
        sqlite_path: directory.join("events.db"),
        postgres_url,
        results: Vec::new(),
    };
    for depth in bench.settings.depths.clone() {
        bench.block(depth);
    }
    eprintln!("load average at end: {}", load_average());
    bench.goals();
    drop(postgres);
    let _ = std::fs::remove_dir_all(&directory);
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// One load run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Load {
    requests: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// What one block measured, for the goals.
struct Block {
    depth: u64,
    inline: Load,
    inline_single: Load,
    inline_paced: Option<Load>,
    /// Each store's runs: under `CONNECTIONS`, over one, paced (unless `PACED=0`).
    stores: Vec<(&'static str, Load, Load, Option<Load>)>,
    drains: Vec<(&'static str, f64)>,
    keep_up: Vec<(&'static str, f64, Load, u64, u64)>,
}

struct Bench {
    settings: Settings,
    server: Runtime,
    client: Runtime,
    sqlite_path: PathBuf,
    postgres_url: String,
    results: Vec<Block>,
}

#[derive(Clone, Copy)]
enum Store {
    Sqlite(Durability),
    Postgres(Durability),
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite(Durability::ProcessCrash) => "SQLite, synchronous=NORMAL",
            Self::Sqlite(_) => "SQLite, synchronous=FULL",
            // Every `Durability` flushes the WAL on PostgreSQL (`synchronous_commit=on`).
            Self::Postgres(_) => "PostgreSQL, synchronous_commit=on",
        }
    }
}

impl Store {
    /// `STORES=normal,full,postgres` (any of them) runs only those; all by default.
    fn chosen(self) -> bool {
        let Ok(list) = std::env::var("STORES") else {
            return true;
        };
        let short = match self {
            Self::Sqlite(Durability::ProcessCrash) => "normal",
            Self::Sqlite(_) => "full",
            Self::Postgres(_) => "postgres",
        };
        list.split(',').any(|name| name.trim() == short)
    }
}

const STORES: [Store; 3] = [
    Store::Sqlite(Durability::ProcessCrash),
    Store::Sqlite(Durability::PowerLoss),
    Store::Postgres(Durability::ProcessCrash),
];

impl Bench {
    fn block(&mut self, depth: u64) {
        eprintln!("\n== depth {depth}: filling ==");
        let started = Instant::now();
        let added = fill_sqlite(&self.sqlite_path, depth);
        eprintln!("SQLite: {added} events added in {:.1?}", started.elapsed());
        let started = Instant::now();
        let added = self
            .server
            .block_on(fill_postgres(&self.postgres_url, depth));
        eprintln!(
            "PostgreSQL: {added} events added in {:.1?}",
            started.elapsed()
        );
        eprintln!("load average: {}", load_average());

        let paced = (self.settings.paced > 0.0).then_some(Run::Paced(self.settings.paced));
        let inline_before = self.load_inline(Run::Loaded);
        let inline_single = self.load_inline(Run::Single);
        let inline_paced = paced.map(|run| self.load_inline(run));
        let mut stores = Vec::new();
        for store in STORES.into_iter().filter(|store| store.chosen()) {
            let loaded = self.load_store(store, Run::Loaded);
            let single = self.load_store(store, Run::Single);
            let paced = paced.map(|run| self.load_store(store, run));
            stores.push((store.name(), loaded, single, paced));
        }
        let inline_after = self.load_inline(Run::Loaded);
        let inline = Load {
            requests: inline_before.requests + inline_after.requests,
            per_second: (inline_before.per_second + inline_after.per_second) / 2.0,
            p50_ms: (inline_before.p50_ms + inline_after.p50_ms) / 2.0,
            p99_ms: (inline_before.p99_ms + inline_after.p99_ms) / 2.0,
        };
        let mut drains = Vec::new();
        let mut keep_up = Vec::new();
        for store in [
            Store::Sqlite(Durability::ProcessCrash),
            Store::Postgres(Durability::ProcessCrash),
        ]
        .into_iter()
        .filter(|store| store.chosen() && env_or("WORKERS", 1u8) != 0)
        {
            drains.push((store.name(), self.drain(store)));
            keep_up.push(self.keep_up(store));
        }

        println!("\n### {depth} events waiting at the start\n");
        println!("load average {}\n", load_average());
        println!(
            "inline runs: {:.0} and {:.0} deliveries/s\n",
            inline_before.per_second, inline_after.per_second
        );
        println!(
            "| server | deliveries/s ({} connections) | vs inline | p50 | p99 | p50 added | p99 added | 1 connection: p50 | p99 | p99 added |",
            self.settings.connections
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| inline | {:.0} | 1.00 × | {:.2} ms | {:.2} ms | | | {:.2} ms | {:.2} ms | |",
            inline.per_second,
            inline.p50_ms,
            inline.p99_ms,
            inline_single.p50_ms,
            inline_single.p99_ms
        );
        for (name, loaded, single, _) in &stores {
            println!(
                "| {name} | {:.0} | {:.2} × | {:.2} ms | {:.2} ms | {:+.2} ms | {:+.2} ms | {:.2} ms | {:.2} ms | {:+.2} ms |",
                loaded.per_second,
                loaded.per_second / inline.per_second,
                loaded.p50_ms,
                loaded.p99_ms,
                loaded.p50_ms - inline.p50_ms,
                loaded.p99_ms - inline.p99_ms,
                single.p50_ms,
                single.p99_ms,
                single.p99_ms - inline_single.p99_ms,
            );
        }
        if let Some(inline_paced) = inline_paced {
            println!(
                "\n| paced: {:.0} deliveries/s over {} connections | deliveries/s | p50 | p99 | p50 added | p99 added |",
                self.settings.paced, self.settings.connections
            );
            println!("|---|---:|---:|---:|---:|---:|");
            println!(
                "| inline | {:.0} | {:.2} ms | {:.2} ms | | |",
                inline_paced.per_second, inline_paced.p50_ms, inline_paced.p99_ms
            );
            for (name, _, _, paced) in &stores {
                let Some(paced) = paced else { continue };
                println!(
                    "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:+.2} ms | {:+.2} ms |",
                    paced.per_second,
                    paced.p50_ms,
                    paced.p99_ms,
                    paced.p50_ms - inline_paced.p50_ms,
                    paced.p99_ms - inline_paced.p99_ms,
                );
            }
        }
        println!(
            "\n| workers (8 at once, instant handler) | drained alone, events/s | with the load: handled/s | acknowledged/s | acknowledgement p50 | p99 | waiting before → after |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|");
        for ((name, drained), (_, handled, load, before, after)) in drains.iter().zip(&keep_up) {
            println!(
                "| {name} | {drained:.0} | {handled:.0} | {:.0} | {:.2} ms | {:.2} ms | {before} → {after} |",
                load.per_second, load.p50_ms, load.p99_ms
            );
        }
        self.results.push(Block {
            depth,
            inline,
            inline_single,
            inline_paced,
            stores,
            drains,
            keep_up,
        });
    }

    fn goals(&self) {
        println!("\n### Goals\n");
        for block in &self.results {
            let find = |name: &str| {
                block
                    .stores
                    .iter()
                    .find(|(store, ..)| *store == name)
                    .map(|(_, loaded, single, paced)| (*loaded, *single, *paced))
                    .unwrap_or_default()
            };
            let (sqlite, sqlite_single, sqlite_paced) =
                find(Store::Sqlite(Durability::ProcessCrash).name());
            let (postgres, ..) = find(Store::Postgres(Durability::ProcessCrash).name());
            let paced = match (sqlite_paced, block.inline_paced) {
                (Some(sqlite), Some(inline)) => format!(
                    ", {:+.2} ms paced at {:.0}/s",
                    sqlite.p99_ms - inline.p99_ms,
                    self.settings.paced
                ),
                _ => String::new(),
            };
            println!(
                "- depth {}: SQLite p99 added {:+.2} ms under {} connections, {:+.2} ms over 1{paced} \
                 (goal ≤ 2 ms); \
                 SQLite {:.2} × inline (goal ≥ 0.5 ×); PostgreSQL {:.2} × inline (goal ≥ 0.25 ×)",
                block.depth,
                sqlite.p99_ms - block.inline.p99_ms,
                self.settings.connections,
                sqlite_single.p99_ms - block.inline_single.p99_ms,
                sqlite.per_second / block.inline.per_second,
                postgres.per_second / block.inline.per_second,
            );
            for ((name, handled, load, before, after), (_, drained)) in
                block.keep_up.iter().zip(&block.drains)
            {
                let acked = load.per_second;
                println!(
                    "  - workers on {name}: drained {drained:.0}/s alone; handled {handled:.0}/s while \
                     {acked:.0}/s were acknowledged (p99 {:.2} ms), waiting {before} → {after}: {}",
                    load.p99_ms,
                    if *handled >= acked {
                        "kept up"
                    } else {
                        "fell behind"
                    }
                );
            }
        }
    }

    fn load_inline(&self, run: Run) -> Load {
        let app = Router::new()
            .route("/webhooks", post(inline))
            .layer(VerifyOpenMailLayer::new(SECRET).expect("secret"));
        self.load(app, run)
    }

    fn load_store(&self, store: Store, run: Run) -> Load {
        match store {
            Store::Sqlite(durability) => {
                let store = open_sqlite(&self.sqlite_path, durability);
                self.load(ingest_app(store), run)
            }
            Store::Postgres(durability) => {
                let store = self.connect_postgres(durability);
                self.load(ingest_app(store), run)
            }
        }
    }

    fn connect_postgres(&self, durability: Durability) -> Arc<PostgresStore> {
        Arc::new(
            self.server
                .block_on(PostgresStore::connect(&self.postgres_url, durability))
                .expect("PostgreSQL store"),
        )
    }

    /// Serves `app` on the server runtime, runs the load, stops the server.
    fn load(&self, app: Router, run: Run) -> Load {
        let settings = &self.settings;
        let (count, connections, rate) = match run {
            Run::Loaded => (settings.requests, settings.connections, None),
            Run::Single => (settings.single_requests, 1, None),
            Run::Paced(rate) => (
                // At most `REQUESTS`, whatever the rate.
                ((rate * settings.duration.as_secs_f64()).ceil() as usize).min(settings.requests),
                settings.connections,
                Some(rate),
            ),
        };
        let signed = signed_requests(count);
        self.load_signed(app, signed, connections, rate, None).0
    }

    /// The load with deliveries signed beforehand; with `handled`, also how far that
    /// counter moved while the load ran.
    fn load_signed(
        &self,
        app: Router,
        requests: Vec<Request<Full<Bytes>>>,
        connections: usize,
        rate: Option<f64>,
        handled: Option<&AtomicU64>,
    ) -> (Load, u64) {
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let address = listener.local_addr().expect("address");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = self.server.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        let before = handled.map_or(0, |handled| handled.load(Ordering::Relaxed));
        let cpu_before = thread_cpu();
        let load = self.client.block_on(run_load(
            address,
            requests,
            connections,
            self.settings.duration,
            rate,
        ));
        let during = handled.map_or(0, |handled| handled.load(Ordering::Relaxed)) - before;
        let label = match rate {
            Some(rate) => format!("paced at {rate:.0}/s over {connections} connections"),
            None => format!("{connections} connections"),
        };
        report_cpu(&cpu_before, &thread_cpu(), load.requests, &label);
        let _ = stop.send(());
        let _ = self.server.block_on(served);
        (load, during)
    }

    fn drain(&self, store: Store) -> f64 {
        match store {
            Store::Sqlite(durability) => {
                self.drain_store(open_sqlite(&self.sqlite_path, durability))
            }
            Store::Postgres(durability) => self.drain_store(self.connect_postgres(durability)),
        }
    }

    /// Events handled per second by workers alone, over `DURATION`.
    fn drain_store<S: EventStore>(&self, store: Arc<S>) -> f64 {
        let handled = Arc::new(AtomicU64::new(0));
        let duration = self.settings.duration;
        let started = Instant::now();
        self.server
            .block_on(run_workers(store, &handled, async move {
                tokio::time::sleep(duration).await;
            }));
        handled.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    }

    /// Workers and the load at once: (name, handled/s, the load, waiting before, waiting
    /// after).
    fn keep_up(&self, store: Store) -> (&'static str, f64, Load, u64, u64) {
        match store {
            Store::Sqlite(durability) => {
                let opened = open_sqlite(&self.sqlite_path, durability);
                self.keep_up_on(store.name(), opened)
            }
            Store::Postgres(durability) => {
                let opened = self.connect_postgres(durability);
                self.keep_up_on(store.name(), opened)
            }
        }
    }

    fn keep_up_on<S: EventStore>(
        &self,
        name: &'static str,
        store: Arc<S>,
    ) -> (&'static str, f64, Load, u64, u64) {
        let requests = signed_requests(self.settings.requests);
        let before = self.server.block_on(store.stats()).expect("stats").waiting;
        let handled = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let workers = self.server.spawn({
            let store = Arc::clone(&store);
            let handled = Arc::clone(&handled);
            async move {
                run_workers(store, &handled, async move {
                    let _ = stopped.await;
                })
                .await;
            }
        });
        let (load, handled_during) = self.load_signed(
            ingest_app(Arc::clone(&store)),
            requests,
            self.settings.connections,
            None,
            Some(&handled),
        );
        // The load's own wall time.
        let elapsed = load.requests as f64 / load.per_second;
        let _ = stop.send(());
        let _ = self.server.block_on(workers);
        let after = self.server.block_on(store.stats()).expect("stats").waiting;
        (name, handled_during as f64 / elapsed, load, before, after)
    }
}

fn ingest_app<S: EventStore>(store: Arc<S>) -> Router {
    Router::new()
        // Over the default limit of 1,000,000, so the 1M block measures the store, not
        // the limit's 503.
        .route_service("/webhooks", Ingest::new(store).depth_limit(u64::MAX))
        .layer(VerifyOpenMailLayer::new(SECRET).expect("secret"))
}

/// The inline handler: answers as [`Ingest`] does, with nothing stored.
async fn inline(
    Extension(event): Extension<Arc<Event>>,
    Extension(delivery): Extension<Delivery>,
) -> Json<Value> {
    Json(json!({
        "ok": true,
        "event": event.event_type(),
        "event_id": delivery.event_id(),
    }))
}

async fn run_workers<S: EventStore>(
    store: Arc<S>,
    handled: &Arc<AtomicU64>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let counter = Arc::clone(handled);
    let handler = tower::service_fn(move |_request: Request<VerifiedBody>| {
        counter.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) }
    });
    let workers = Workers::new(store, handler)
        .concurrency(8)
        .shutdown_grace(Duration::from_secs(30));
    // `PREFETCH=8`: a fixed prefetch, as before it adapted to the backlog.
    let workers = match std::env::var("PREFETCH")
        .ok()
        .and_then(|set| set.parse().ok())
    {
        Some(events) => workers.prefetch(events),
        None => workers,
    };
    workers.run(shutdown).await;
}

/// CPU time so far of each of this process's threads by name, in clock ticks (user and
/// system), from `/proc` (Linux only; empty elsewhere).
fn thread_cpu() -> std::collections::BTreeMap<String, u64> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        // The fields after the parenthesised name: utime and stime are the 12th and 13th.
        let Some((_, fields)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let ticks = |index: usize| {
            fields
                .get(index)
                .and_then(|field| field.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // The client runs on the main thread, whose task id is the process id.
        let main = task.file_name().to_str() == Some(std::process::id().to_string().as_str());
        let name = match name.trim() {
            _ if main => "client",
            "bench-server" => "server",
            "openmail-sqlite" => "SQLite writer",
            "openmail-ckpt" => "SQLite checkpointer",
            _ => "other",
        };
        *threads.entry(name.to_owned()).or_insert(0) += ticks(11) + ticks(12);
    }
    threads
}

/// Prints the CPU time per request of each kind of thread over one load run (the threads
/// that ended in between are not counted, nor are PostgreSQL's processes).
fn report_cpu(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    requests: u64,
    label: &str,
) {
    // Clock ticks are 1/100 s on Linux.
    let per_request = |ticks: u64| ticks as f64 * 10_000.0 / requests.max(1) as f64;
    let parts: Vec<String> = after
        .iter()
        .map(|(name, ticks)| {
            let spent = ticks.saturating_sub(before.get(name).copied().unwrap_or(0));
            format!("{name} {:.1} µs", per_request(spent))
        })
        .collect();
    eprintln!(
        "CPU per request ({label}, {requests} requests): {}",
        parts.join(", ")
    );
}

/// Opens the SQLite store, waiting for the previous opener's thread to let go of the
/// file's lock.
fn open_sqlite(path: &Path, durability: Durability) -> Arc<SqliteStore> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match SqliteStore::open(path, durability) {
            Ok(store) => return Arc::new(store),
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("SQLite store: {error}"),
        }
    }
}

static EVENTS: AtomicU64 = AtomicU64::new(0);

/// `count` deliveries of distinct events, signed now.
fn signed_requests(count: usize) -> Vec<Request<Full<Bytes>>> {
    (0..count)
        .map(|_| {
            let id = EVENTS.fetch_add(1, Ordering::Relaxed);
            let request = Sample::message_received()
                .event_id(format!("evt_bench_{}_{id}", std::process::id()))
                .deliver(SECRET)
                .request();
            let (mut parts, body) = request.into_parts();
            parts.uri = "/webhooks".parse().expect("path");
            parts.headers.insert(
                http::header::HOST,
                http::HeaderValue::from_static("127.0.0.1"),
            );
            Request::from_parts(parts, Full::new(Bytes::from(body)))
        })
        .collect()
}

/// Sends `requests` over `connections` HTTP/1.1 connections until they run out or
/// `duration` passes; every answer must be `200`. With a `rate` (deliveries per second),
/// the n-th delivery is due n / `rate` seconds after every connection is open, sent then
/// by whichever connection is free, and its latency counts from when it was due (so a
/// delivery that waited for a free connection counts that wait); without, each
/// connection sends its next one as soon as it has its answer.
async fn run_load(
    address: SocketAddr,
    requests: Vec<Request<Full<Bytes>>>,
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
) -> Load {
    let hyper = std::env::var("CLIENT").as_deref() == Ok("hyper");
    let mut outgoing = VecDeque::with_capacity(requests.len());
    for request in requests {
        outgoing.push_back(if hyper {
            Outgoing::Request(request)
        } else {
            Outgoing::Wire(on_the_wire(request).await)
        });
    }
    // The deliveries left, and how many were taken.
    let queue = Arc::new(Mutex::new((outgoing, 0u32)));
    let open = Arc::new(tokio::sync::Barrier::new(connections));
    let paced_from = Arc::new(std::sync::OnceLock::new());
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let queue = Arc::clone(&queue);
        let open = Arc::clone(&open);
        let paced_from = Arc::clone(&paced_from);
        tasks.spawn(async move {
            let mut connection = Connection::open(address, hyper).await;
            let pace = match rate {
                Some(rate) => {
                    open.wait().await;
                    Some((rate, *paced_from.get_or_init(Instant::now)))
                }
                None => None,
            };
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let (request, n) = {
                    let mut queue = queue.lock().expect("queue");
                    let Some(request) = queue.0.pop_front() else {
                        break;
                    };
                    queue.1 += 1;
                    (request, queue.1 - 1)
                };
                let sent = match pace {
                    Some((rate, from)) => {
                        let due = from + Duration::from_secs_f64(f64::from(n) / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let (status, body) = connection.send(request).await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "the server answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                latencies.push(sent.elapsed());
            }
            connection.close().await;
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.expect("load task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |share: f64| {
        let index = ((latencies.len() as f64 * share).ceil() as usize).saturating_sub(1);
        latencies
            .get(index)
            .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
    };
    Load {
        requests: latencies.len() as u64,
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    }
}

/// A delivery as the client sends it.
enum Outgoing {
    /// For hyper's client.
    Request(Request<Full<Bytes>>),
    /// The bytes on the wire, for the client without an HTTP library.
    Wire(Vec<u8>),
}

/// One connection of the load's client.
enum Connection {
    /// hyper's HTTP/1.1 client: a task sends, another drives the connection.
    Hyper(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    /// Writes a request's bytes and reads the answer by its `Content-Length`, in the
    /// connection's one task; the buffer holds what was read past the last answer.
    Raw(tokio::net::TcpStream, Vec<u8>),
}

impl Connection {
    async fn open(address: SocketAddr, hyper: bool) -> Self {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        if !hyper {
            return Self::Raw(stream, Vec::with_capacity(4096));
        }
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        Self::Hyper(sender, tokio::spawn(connection))
    }

    /// Sends one delivery; its answer's status and body.
    async fn send(&mut self, outgoing: Outgoing) -> (StatusCode, Bytes) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        match (self, outgoing) {
            (Self::Hyper(sender, _), Outgoing::Request(request)) => {
                let response = sender.send_request(request).await.expect("request");
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes();
                (status, body)
            }
            (Self::Raw(stream, buffer), Outgoing::Wire(request)) => {
                stream.write_all(&request).await.expect("request");
                let (status, head) = loop {
                    if let Some(head) = buffer.windows(4).position(|four| four == b"\r\n\r\n") {
                        break (answer_head(&buffer[..head]), head + 4);
                    }
                    let read = stream.read_buf(buffer).await.expect("read");
                    assert!(read > 0, "the server closed the connection");
                };
                let Some(length) = status.1 else {
                    // No length to read the body by: the head alone, for the caller's
                    // check of the status.
                    let head = Bytes::copy_from_slice(&buffer[..head]);
                    buffer.clear();
                    return (status.0, head);
                };
                let end = head + length;
                while buffer.len() < end {
                    let read = stream.read_buf(buffer).await.expect("read");
                    assert!(read > 0, "the server closed the connection");
                }
                let body = Bytes::copy_from_slice(&buffer[head..end]);
                buffer.drain(..end);
                (status.0, body)
            }
            _ => unreachable!("a delivery prepared for the other client"),
        }
    }

    async fn close(self) {
        if let Self::Hyper(sender, connection) = self {
            drop(sender);
            let _ = connection.await;
        }
    }
}

/// The status and `Content-Length` of an answer's head (without its blank line). Every
/// answer of the servers measured here has a length; a `200` without one stops the bench.
fn answer_head(head: &[u8]) -> (StatusCode, Option<usize>) {
    let head = std::str::from_utf8(head).expect("an answer's head in ASCII");
    let status = head
        .get(9..12)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .expect("a status line");
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    assert!(
        length.is_some() || status != StatusCode::OK,
        "a 200 without a Content-Length"
    );
    (status, length)
}

/// A request as the bytes an HTTP/1.1 client writes.
async fn on_the_wire(request: Request<Full<Bytes>>) -> Vec<u8> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    let mut wire = format!("{} {} HTTP/1.1\r\n", parts.method, parts.uri).into_bytes();
    for (name, value) in &parts.headers {
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        wire.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(&body);
    wire
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// A stored body: a realistic `message.received` whose event id the SQL fills in.
fn body_template() -> String {
    Sample::message_received().event_id("EVENT_ID").to_json()
}

/// Tops the SQLite store up to `depth` waiting events in one transaction; returns how
/// many it added.
fn fill_sqlite(path: &Path, depth: u64) -> u64 {
    // The store creates the schema; then its lock is let go and the rows go in directly.
    drop(open_sqlite(path, Durability::ProcessCrash));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut connection = loop {
        let connection = rusqlite::Connection::open(path).expect("open");
        if connection
            .pragma_update(None, "locking_mode", "EXCLUSIVE")
            .is_ok()
            && connection.execute_batch("BEGIN IMMEDIATE; COMMIT").is_ok()
        {
            break connection;
        }
        assert!(Instant::now() < deadline, "the store kept its lock");
        std::thread::sleep(Duration::from_millis(20));
    };
    let waiting: i64 = connection
        .query_row(
            "SELECT count(*) FROM openmail_events WHERE state = 0",
            [],
            |row| row.get(0),
        )
        .expect("count");
    let missing = (depth as i64 - waiting).max(0);
    let transaction = connection.transaction().expect("transaction");
    let now = now_ms();
    transaction
        .execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO openmail_events (key, state, received_ms, due_ms, channel,
                 timestamp, secret_index, body)
             SELECT randomblob(32), 0, ?2, ?2, 0, ?3, 0,
                 CAST(replace(?4, 'EVENT_ID', 'evt_fill_' || hex(randomblob(8))) AS BLOB)
             FROM n",
            rusqlite::params![missing, now, now / 1000, body_template()],
        )
        .expect("fill");
    transaction.commit().expect("commit");
    missing as u64
}

/// Tops the PostgreSQL store up to `depth` waiting events in one statement; returns how
/// many it added.
async fn fill_postgres(url: &str, depth: u64) -> u64 {
    // The store creates the schema.
    drop(
        PostgresStore::connect(url, Durability::ProcessCrash)
            .await
            .expect("connect"),
    );
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    let waiting: i64 = client
        .query_one("SELECT count(*) FROM openmail_events WHERE state = 0", &[])
        .await
        .expect("count")
        .get(0);
    let missing = (depth as i64 - waiting).max(0);
    client
        .execute(
            "INSERT INTO openmail_events (key, channel, timestamp, secret_index, body)
             SELECT sha256(convert_to($2 || i, 'UTF8')), 0, $3, 0,
                 convert_to(replace($1, 'EVENT_ID', $2 || i), 'UTF8')
             FROM generate_series(1, $4::int8) AS i",
            &[
                &body_template(),
                &format!("evt_fill_{depth}_"),
                &(now_ms() / 1000),
                &missing,
            ],
        )
        .await
        .expect("fill");
    // What autovacuum would have done on a table that grew this much.
    client
        .batch_execute("VACUUM ANALYZE openmail_events")
        .await
        .expect("vacuum");
    drop(client);
    let _ = connection.await;
    missing as u64
}

/// A PostgreSQL for the bench, as the tests start theirs (tests/postgres_support), but
/// with `fsync` on, so that `synchronous_commit` means what it says.
const CONTROL: &str = r#"
bin=$1
port=$2
dir=$(mktemp -d "${TMPDIR:-/tmp}/openmail-pg-bench.XXXXXX") || { echo "error: mktemp failed"; exit 1; }
cleanup() {
    "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
    rm -rf "$dir"
}
trap cleanup EXIT
if ! "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >"$dir/initdb.log" 2>&1; then
    echo "error: initdb failed: $(tail -n 5 "$dir/initdb.log" | tr '\n' ' ')"
    exit 1
fi
if ! "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null 2>&1; then
    echo "error: $(tail -n 5 "$dir/log" | tr '\n' ' ')"
    exit 1
fi
echo "ok"
cat >/dev/null
"#;

struct PostgresServer {
    control: Child,
    commands: Option<ChildStdin>,
    _replies: BufReader<ChildStdout>,
    port: u16,
}

impl PostgresServer {
    fn start() -> Self {
        let bin =
            find_binaries().expect("PostgreSQL's initdb and pg_ctl (apt-get install postgresql)");
        let port = StdListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
        let mut command = if root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", "sh"]);
            command
        } else {
            Command::new("sh")
        };
        let mut control = command
            .args(["-c", CONTROL, "sh"])
            .arg(&bin)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sh");
        let commands = control.stdin.take();
        let mut replies = BufReader::new(control.stdout.take().expect("stdout"));
        let mut line = String::new();
        replies.read_line(&mut line).expect("control script");
        assert_eq!(line.trim_end(), "ok", "PostgreSQL did not start: {line}");
        Self {
            control,
            commands,
            _replies: replies,
            port,
        }
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut commands) = self.commands.take() {
            let _ = commands.flush();
        }
        let _ = self.control.wait();
    }
}

fn find_binaries() -> Option<PathBuf> {
    let has =
        |directory: &Path| directory.join("initdb").is_file() && directory.join("pg_ctl").is_file();
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|directory| has(directory)));
    on_path.or_else(|| {
        std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                has(&bin).then_some((version, bin))
            })
            .max_by_key(|(version, _)| *version)
            .map(|(_, bin)| bin)
    })
}
