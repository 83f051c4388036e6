//! Per-inbox webhook secrets kept in a database (SQLite here), looked up per delivery and
//! cached.
//!
//! ```text
//! cargo run --example tenants_sqlite                      # seeds an in-memory database
//! OPENMAIL_TENANTS_DB=tenants.db cargo run --example tenants_sqlite
//! ```
//!
//! Listens on `127.0.0.1:$PORT` (default 3000), `POST /webhooks`, one URL for every inbox:
//! the body's `inbox_id` picks the secrets. The table is
//! `inbox_secrets(inbox_id TEXT, secret TEXT, created_at INTEGER)`; an inbox with two rows is
//! rotating, and the newest secret is tried first. Pod events verify under the row whose
//! `inbox_id` is `*`, the account webhook's secret, when there is one.
//!
//! Lookups run on tokio's blocking pool, so a slow query never stalls the server, and a
//! `CachedResolver` keeps each inbox's secrets for a minute. A database error answers `503`,
//! so OpenMail retries the delivery later.

use std::sync::{Arc, Mutex};

use axum::{Extension, Router, routing::post};
use openmail_webhooks::tenant::TenantSecrets;
use openmail_webhooks::tenant::{CachedResolver, SecretResolver, Tenant};
use openmail_webhooks::{Delivery, Event, LogSafe, VerifyOpenMailLayer};
use rusqlite::Connection;

/// What a resolver's `lookup` returns.
type ResolveFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Option<openmail_webhooks::tenant::TenantSecrets>, tower::BoxError>,
            > + Send,
    >,
>;

/// Resolves secrets with one query per lookup.
#[derive(Clone)]
pub struct SqliteSecrets {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteSecrets {
    /// Wraps an open connection whose database has the `inbox_secrets` table.
    pub fn new(connection: Connection) -> Self {
        Self {
            connection: Arc::new(Mutex::new(connection)),
        }
    }

    fn secrets_of(&self, inbox_id: &str) -> rusqlite::Result<Vec<String>> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut statement = connection.prepare_cached(
            "SELECT secret FROM inbox_secrets WHERE inbox_id = ?1 ORDER BY created_at DESC",
        )?;
        let rows = statement.query_map([inbox_id], |row| row.get::<_, String>(0))?;
        rows.collect()
    }
}

impl SecretResolver for SqliteSecrets {
    fn lookup(&self, tenant: &Tenant) -> ResolveFuture {
        let this = self.clone();
        let inbox = match tenant {
            Tenant::Inbox(inbox) => Some(inbox.clone()),
            _ => None,
        };
        Box::pin(async move {
            let found =
                tokio::task::spawn_blocking(move || -> rusqlite::Result<Option<TenantSecrets>> {
                    let own = match &inbox {
                        Some(inbox) => this.secrets_of(inbox)?,
                        None => Vec::new(),
                    };
                    let account = this.secrets_of("*")?;
                    let own = match inbox {
                        Some(inbox) if !own.is_empty() => TenantSecrets::for_inbox(inbox, own).ok(),
                        _ => None,
                    };
                    let account = (!account.is_empty())
                        .then(|| TenantSecrets::for_account(account).ok())
                        .flatten();
                    Ok(match (own, account) {
                        (Some(own), Some(account)) => Some(own.and(account)),
                        (own, account) => own.or(account),
                    })
                })
                .await??;
            Ok(found)
        })
    }
}

/// Creates the table if needed.
pub fn create_schema(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS inbox_secrets (
             inbox_id   TEXT    NOT NULL,
             secret     TEXT    NOT NULL,
             created_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS inbox_secrets_by_inbox ON inbox_secrets (inbox_id);",
    )
}

/// Adds one secret for `inbox_id` (`*` for the account webhook).
pub fn add_secret(
    connection: &Connection,
    inbox_id: &str,
    secret: &str,
    created_at: i64,
) -> rusqlite::Result<()> {
    connection
        .execute(
            "INSERT INTO inbox_secrets (inbox_id, secret, created_at) VALUES (?1, ?2, ?3)",
            (inbox_id, secret, created_at),
        )
        .map(|_| ())
}

async fn handle(
    Extension(event): Extension<Arc<Event>>,
    Extension(delivery): Extension<Delivery>,
) -> String {
    let scope = delivery.scope().to_string();
    println!(
        "handled {} {} verified with a secret of {scope}",
        LogSafe::new(event.event_type()),
        LogSafe::or_dash(event.event_id()),
    );
    format!("ok: {scope}\n")
}

/// The webhook route, resolving secrets from `connection`'s database.
pub fn app(connection: Connection) -> Router {
    let resolver = CachedResolver::new(SqliteSecrets::new(connection));
    let layer = VerifyOpenMailLayer::with_resolver(resolver)
        .on_rejection(|rejection| eprintln!("rejected: {rejection}"));
    Router::new().route("/webhooks", post(handle)).layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let connection = match std::env::var("OPENMAIL_TENANTS_DB") {
        Ok(path) => Connection::open(path)?,
        Err(_) => {
            let connection = Connection::open_in_memory()?;
            create_schema(&connection)?;
            add_secret(&connection, "inb_alice", "whsec_alice", 1)?;
            add_secret(&connection, "inb_bob", "whsec_bob_old", 1)?;
            add_secret(&connection, "inb_bob", "whsec_bob_new", 2)?;
            eprintln!(
                "seeded an in-memory database: inb_alice (whsec_alice), inb_bob (whsec_bob_new, whsec_bob_old)"
            );
            connection
        }
    };
    create_schema(&connection)?;
    let port: u16 = std::env::var("PORT").map_or(Ok(3000), |port| port.parse())?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("listening on http://{}/webhooks", listener.local_addr()?);
    axum::serve(listener, app(connection)).await?;
    Ok(())
}
