//! PostgreSQL restarted under a running receiver: while it is down, deliveries get `503`
//! with `Retry-After` (so OpenMail retries) and the store's calls fail with
//! [`QueueError::Unavailable`]; once it is back, the same store recovers on its own, and
//! nothing committed before was lost.

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
use openmail_webhooks::queue::{EventStore, Ingest, PostgresStore, QueueError};
use openmail_webhooks::test_util::TestDelivery;

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
