//! The SQL docs/durable.md gives to users who run their own migrations and complete
//! events in their own transactions, run as the guide says.

use std::sync::atomic::{AtomicU32, Ordering};

use openmail_webhooks::queue::{
    Backend, Durability, EventStore, Inserted, PostgresStore, QueueStats,
};

use crate::postgres_support;
use crate::store::{awkward_body, delivery, inspect, key_of};

/// The guide's ```sql blocks.
fn guide_sql() -> Vec<String> {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/durable.md"))
        .expect("docs/durable.md");
    let mut blocks = Vec::new();
    let mut rest = guide.as_str();
    while let Some(start) = rest.find("```sql\n") {
        let block = &rest[start + "```sql\n".len()..];
        let end = block.find("```").expect("the block ends");
        blocks.push(block[..end].to_owned());
        rest = &block[end..];
    }
    blocks
}

fn block_with(blocks: &[String], needle: &str) -> String {
    blocks
        .iter()
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("no ```sql block of docs/durable.md contains {needle}"))
        .clone()
}

static ROLES: AtomicU32 = AtomicU32::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_schema_serves_a_role_that_cannot_create_tables_and_its_completion_recipe_works()
{
    let Some(url) = postgres_support::database("the PostgreSQL guide test").await else {
        return;
    };
    let blocks = guide_sql();
    let admin = inspect(&url).await;
    // The migration, as a user's tool would run it, by the database's owner.
    admin
        .batch_execute(&block_with(&blocks, "CREATE TABLE openmail_events"))
        .await
        .unwrap();

    // The receiver's role may use the tables and nothing more.
    let role = format!(
        "openmail_receiver_{}_{}",
        std::process::id(),
        ROLES.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             CREATE ROLE {role} LOGIN;
             GRANT SELECT, INSERT, UPDATE, DELETE ON openmail_events TO {role};
             GRANT SELECT ON openmail_schema TO {role};
             CREATE TABLE replies (event_key bytea PRIMARY KEY);
             GRANT INSERT ON replies TO {role};"
        ))
        .await
        .unwrap();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let tokio_postgres::config::Host::Tcp(host) = &config.get_hosts()[0] else {
        panic!("a TCP host");
    };
    let role_url = format!(
        "host={host} port={} user={role} dbname={}",
        config.get_ports()[0],
        config.get_dbname().unwrap()
    );
    let mut as_role = inspect(&role_url).await;
    assert!(
        as_role
            .batch_execute("CREATE TABLE probe (x int)")
            .await
            .is_err(),
        "the role can create tables; the test proves nothing"
    );

    let store = PostgresStore::connect(&role_url, Durability::ProcessCrash)
        .await
        .unwrap();
    let event = delivery(&awkward_body("evt_guide")).await;
    let key = key_of(&event);
    assert_eq!(
        store.insert(key, event.clone(), 1_000).await.unwrap(),
        Inserted::Stored
    );
    let claimed = store
        .claim(1, std::time::Duration::from_secs(60), 8)
        .await
        .unwrap();
    let lease = claimed[0].lease();

    // The handler's effect and the completion, in one transaction of the handler's own.
    let transaction = as_role.transaction().await.unwrap();
    transaction
        .execute("INSERT INTO replies (event_key) VALUES ($1)", &[&&key[..]])
        .await
        .unwrap();
    let completed = transaction
        .execute(
            &block_with(&blocks, "UPDATE openmail_events"),
            &[&&lease.key()[..], &lease.token()],
        )
        .await
        .unwrap();
    assert_eq!(completed, 1, "the lease was this handler's");
    transaction.commit().await.unwrap();

    // The workers' own completion then finds it done, and nothing runs again.
    assert!(!store.complete(lease).await.unwrap());
    assert!(
        store
            .claim(1, std::time::Duration::from_secs(60), 8)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stats().await.unwrap(), QueueStats::default());
    assert_eq!(
        store.insert(key, event, 1_000).await.unwrap(),
        Inserted::Duplicate
    );
}
