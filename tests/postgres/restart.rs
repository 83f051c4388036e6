//! PostgreSQL restarted or hung under a running receiver: while it is down, deliveries get
//! `503` with `Retry-After` (so OpenMail retries) and the store's calls fail with
//! [`QueueError::Unavailable`] within a bound; once it is back, the same store recovers on
//! its own, and nothing committed before was lost.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::VerifyOpenMailLayer;
use openmail_webhooks::queue::{Backend, EventStore, Ingest, PostgresStore, QueueError};
use openmail_webhooks::test_util::TestDelivery;

use crate::store::{awkward_body, delivery, key_of};

use crate::postgres_support::{PostgresServer, create_database};
use crate::store::{SECRET, replica};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Serves `Ingest` over `store` behind the verification layer on a loopback port.
async fn serve(store: Arc<PostgresStore>) -> SocketAddr {
    let app = Router::new()
        .route_service("/webhooks", Ingest::new(store))
        .layer(VerifyOpenMailLayer::new(SECRET).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// POSTs a freshly signed delivery of `event_id`; returns the status and `Retry-After`.
async fn deliver(
    client: &HttpClient,
    address: SocketAddr,
    event_id: &str,
) -> (StatusCode, Option<String>) {
    let body =
        format!(r#"{{"event":"message.received","event_id":"{event_id}","inbox_id":"inb_1"}}"#);
    let (parts, body) = TestDelivery::new(SECRET, body).request().into_parts();
    let mut request = Request::from_parts(parts, Full::new(Bytes::from(body)));
    *request.uri_mut() = format!("http://{address}/webhooks").parse().unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .map(|value| value.to_str().unwrap().to_owned());
    let _ = response.into_body().collect().await;
    (status, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_answers_503_meanwhile_and_the_store_recovers() {
    let Some(mut server) = PostgresServer::start("the PostgreSQL restart test") else {
        return;
    };
    create_database(&server.url("postgres"), "openmail").await;
    let url = server.url("openmail");
    let store = Arc::new(replica(&url).await);
    let address = serve(Arc::clone(&store)).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    assert_eq!(
        deliver(&client, address, "evt_before").await.0,
        StatusCode::OK
    );
    let running = store
        .claim(1, Duration::from_secs(60), 8)
        .await
        .unwrap()
        .pop()
        .unwrap();

    tokio::task::block_in_place(|| server.stop());
    let (status, retry_after) = deliver(&client, address, "evt_during").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry_after.is_some(), "OpenMail is told when to retry");
    for outcome in [
        store.claim(1, Duration::from_secs(60), 8).await.map(drop),
        store.complete(running.lease()).await.map(drop),
        store.stats().await.map(drop),
    ] {
        assert!(
            matches!(outcome, Err(QueueError::Unavailable(_))),
            "{outcome:?}"
        );
    }

    tokio::task::block_in_place(|| server.restart());
    // OpenMail's retry of the delivery refused meanwhile; the store reconnects by itself.
    let start = Instant::now();
    loop {
        let (status, _) = deliver(&client, address, "evt_during").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still {status} after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        store.complete(running.lease()).await.unwrap(),
        "the lease taken before the restart still holds"
    );
    let claimed = store.claim(10, Duration::from_secs(60), 8).await.unwrap();
    let ids: Vec<_> = claimed
        .iter()
        .map(|claim| claim.delivery().event_id().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["evt_during"]);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.waiting, stats.in_flight), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_postgresql_fails_every_call_within_a_bound_and_the_store_recovers() {
    let Some(mut server) = PostgresServer::start("the hung PostgreSQL test") else {
        return;
    };
    create_database(&server.url("postgres"), "openmail").await;
    let store = Arc::new(replica(&server.url("openmail")).await);
    let stored = delivery(&awkward_body("evt_before_the_hang")).await;
    store.insert(key_of(&stored), stored, 1_000).await.unwrap();
    // Every connection of the store open: the workers', and the operator's (opened by the
    // first question).
    assert_eq!(store.stats().await.unwrap().waiting, 1);
    assert!(!store.retry_dead_letter([0; 32]).await.unwrap());

    tokio::task::block_in_place(|| server.pause());
    // A call on an open connection times out (5 s) and drops it: the operator's and the
    // workers'.
    let (stats, retried) = tokio::join!(store.stats(), store.retry_dead_letter([0; 32]));
    assert!(
        matches!(stats, Err(QueueError::Unavailable(_))),
        "{stats:?}"
    );
    assert!(
        matches!(retried, Err(QueueError::Unavailable(_))),
        "{retried:?}"
    );
    // Calls that come then each need a connection, which does not answer either: each
    // gets its error within the store's bound (5 s) instead of queueing behind the
    // attempts of the calls before it (20 x 5 s).
    let start = Instant::now();
    let mut calls = Vec::new();
    for n in 0..20 {
        let store = Arc::clone(&store);
        calls.push(tokio::spawn(async move {
            match n % 4 {
                0 => {
                    let event = delivery(&awkward_body(&format!("evt_hung_{n}"))).await;
                    store.insert(key_of(&event), event, 1_000).await.map(drop)
                }
                1 => store.retry_dead_letter([0; 32]).await.map(drop),
                _ => store.stats().await.map(drop),
            }
        }));
    }
    for call in calls {
        let outcome = call.await.unwrap();
        assert!(
            matches!(outcome, Err(QueueError::Unavailable(_))),
            "{outcome:?}"
        );
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(50),
        "20 calls on a hung database took {took:?}"
    );

    tokio::task::block_in_place(|| server.resume());
    let start = Instant::now();
    let stats = loop {
        match store.stats().await {
            Ok(stats) => break stats,
            Err(error) => assert!(
                start.elapsed() < Duration::from_secs(30),
                "not recovered: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // An insert whose statement reached the server before its caller gave up commits when
    // the server resumes; OpenMail, told 503, retries it and gets a duplicate's 200.
    assert!(
        (1..=6).contains(&stats.waiting),
        "the event stored before the hang, and at most the 5 sent during it: {stats:?}"
    );
    // The workers' connection is back too.
    assert!(!store.retry_dead_letter([0; 32]).await.unwrap());
}
