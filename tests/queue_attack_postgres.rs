//! Attacks on the receiver's queue mode over a real PostgreSQL, with real receiver
//! processes: PostgreSQL restarted while a handler completes, and PostgreSQL crashing
//! right after acknowledgements.
//!
//! `cargo test --features postgres --test queue_attack_postgres` (without PostgreSQL
//! installed, the tests skip loudly unless `CI` is set; see `tests/postgres_support`).

#[cfg(feature = "postgres")]
#[path = "postgres_support/mod.rs"]
mod postgres_support;

#[cfg(feature = "postgres")]
#[path = "queue_attack_support/mod.rs"]
mod support;

#[cfg(feature = "postgres")]
mod restart_at_completion {
    use std::time::{Duration, Instant};

    use crate::postgres_support::{PostgresServer, create_database};
    use crate::support::{Receiver, client, free_port, post, receiver_binary};

    /// The state of the one stored event (`None` while there is none).
    async fn state(url: &str) -> Option<(i16, bool)> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let row = client
            .query_opt("SELECT state, leased FROM openmail_events", &[])
            .await
            .unwrap()
            .map(|row| (row.get(0), row.get(1)));
        drop(client);
        let _ = connection.await;
        row
    }

    /// The handler finishes while PostgreSQL is down, longer than the workers retry the
    /// completion. Once it is back and the lease expires, the same process claims the
    /// event again: it must record the completion, not run the handler (and print its
    /// line) a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_completion_lost_to_a_postgres_restart_does_not_run_the_handler_again() {
        let Some(mut server) = PostgresServer::start("the completion-across-restart test") else {
            return;
        };
        create_database(&server.url("postgres"), "openmail").await;
        let url = server.url("openmail");
        let binary = receiver_binary(&["postgres"]);
        const WORK_MS: u64 = 4000;
        let receiver = Receiver::start(&binary, &url, free_port(), WORK_MS);
        let client = client();
        let body = r#"{"event":"message.received","event_id":"evt_restart","inbox_id":"inb_1"}"#;
        assert_eq!(post(&client, receiver.address(), body).await, 200);

        // Stop PostgreSQL while the handler runs.
        let deadline = Instant::now() + Duration::from_secs(30);
        while state(&url).await != Some((0, true)) {
            assert!(Instant::now() < deadline, "the event was never claimed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::task::block_in_place(|| server.stop());
        assert_eq!(
            receiver.handled("evt_restart"),
            0,
            "the handler finished before PostgreSQL stopped; nothing was tested"
        );
        receiver
            .wait_handled("evt_restart", Duration::from_secs(60))
            .await;
        // Longer than the completion's retries (about 3 s), shorter than the lease (30 s).
        tokio::time::sleep(Duration::from_secs(8)).await;
        tokio::task::block_in_place(|| server.restart());

        // Completed, by a late completion or after the lease expired and the event was
        // claimed again: within the lease and a generous margin.
        let deadline = Instant::now() + Duration::from_secs(90);
        while state(&url).await.map(|(state, _)| state) != Some(1) {
            assert!(
                Instant::now() < deadline,
                "never completed: {:?}",
                receiver.stderr()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A second run, if any, would have printed before the completion was recorded.
        assert_eq!(
            receiver.handled("evt_restart"),
            1,
            "one process handled the event twice: {:?}",
            receiver.lines()
        );
    }
}

#[cfg(feature = "postgres")]
mod crash_after_acknowledgement {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use crate::postgres_support::{PostgresServer, create_database};
    use crate::support::{Receiver, client, free_port, post, receiver_binary};

    async fn connect(url: &str) -> Option<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(client)
    }

    fn signal(signal: &str, pid: i32) {
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "could not send {signal} to {pid}");
    }

    /// A PostgreSQL server process that dies (as when the kernel's OOM killer picks one)
    /// makes the server restart every process and recover from its write-ahead log. An
    /// acknowledged event must be in the table afterwards: the receiver's `2xx` promised
    /// it was stored. With `synchronous_commit = off`, a commit returns before its WAL is
    /// written: the WAL writer writes it within `wal_writer_delay`. The WAL writer is
    /// stopped here so that this window stays open; it is killed to crash the server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_acknowledged_before_a_postgres_crash_are_still_stored() {
        let Some(server) = PostgresServer::start("the crash-after-acknowledgement test") else {
            return;
        };
        create_database(&server.url("postgres"), "openmail").await;
        let url = server.url("openmail");
        let binary = receiver_binary(&["postgres"]);
        // Handlers that take longer than the test: the events stay stored.
        let receiver = Receiver::start(&binary, &url, free_port(), 600_000);
        let admin = connect(&server.url("postgres")).await.unwrap();
        let wal_writer: i32 = admin
            .query_one(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        drop(admin);
        signal("-STOP", wal_writer);

        let client = client();
        const EVENTS: usize = 10;
        for index in 0..EVENTS {
            let body = format!(
                r#"{{"event":"message.received","event_id":"evt_crash_{index}","inbox_id":"inb_1"}}"#
            );
            assert_eq!(post(&client, receiver.address(), &body).await, 200);
        }
        signal("-KILL", wal_writer);

        let deadline = Instant::now() + Duration::from_secs(60);
        let stored: i64 = loop {
            // Connections are refused during recovery.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Some(client) = connect(&url).await {
                if let Ok(row) = client
                    .query_one("SELECT count(*) FROM openmail_events", &[])
                    .await
                {
                    break row.get(0);
                }
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not recover");
        };
        assert_eq!(
            stored, EVENTS as i64,
            "acknowledged events were lost when PostgreSQL crashed"
        );
        drop(receiver);
    }
}
