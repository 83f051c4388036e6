//! The examples' stacks served over real HTTP on loopback: the axum receiver, a plain hyper
//! service, and a tonic gRPC service sharing a port with the webhook route.

use std::net::SocketAddr;

use crate::support::{
    Frames, SECRET, client, post, read, send_head_only, signed_headers, unix_now,
};
use crate::{hyper_service, receiver, tonic_side_by_side};
use bytes::Bytes;
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use openmail_webhooks::VerifyOpenMailLayer;
use tokio::net::{TcpListener, TcpStream};

const BODY: &[u8] = br#"{"event":"message.received","event_id":"evt_http","inbox_id":"inb_9"}"#;

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn start_receiver() -> SocketAddr {
    let (listener, addr) = listen().await;
    let app = receiver::app(VerifyOpenMailLayer::new(SECRET).unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Sends `request` over a fresh HTTP/1.1 connection. A body without a size hint goes out
/// with `Transfer-Encoding: chunked`.
async fn send_http1(addr: SocketAddr, request: Request<Frames>) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    read(sender.send_request(request).await.unwrap()).await
}

fn chunked_request(addr: SocketAddr, headers: &[(&str, String)], body: &[u8]) -> Request<Frames> {
    let mut request = Request::post("/webhooks").header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.body(Frames::chunked(body, 7)).unwrap()
}

#[tokio::test]
async fn the_axum_receiver_answers_per_its_contract() {
    let addr = start_receiver().await;
    let client = client();
    let now = unix_now();

    let (status, body) = post(
        &client,
        addr,
        "/webhooks",
        &signed_headers(SECRET, now, BODY),
        BODY,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["event"], "message.received");
    assert_eq!(json["event_id"], "evt_http");

    let tampered = br#"{"event":"message.received","event_id":"evt_http","inbox_id":"inb_X"}"#;
    let (status, body) = post(
        &client,
        addr,
        "/webhooks",
        &signed_headers(SECRET, now, BODY),
        &tampered[..],
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "signature mismatch")
    );

    let (status, _) = post(
        &client,
        addr,
        "/webhooks",
        &signed_headers("whsec_other", now, BODY),
        BODY,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = post(
        &client,
        addr,
        "/webhooks",
        &signed_headers(SECRET, now - 600, BODY),
        BODY,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Declared over the limit: refused on the head, before a byte of the body is sent.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let status = send_head_only(addr, &signed_headers(SECRET, now, &big), big.len()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn a_chunked_upload_verifies_through_a_real_server() {
    let addr = start_receiver().await;
    let now = unix_now();
    let request = chunked_request(addr, &signed_headers(SECRET, now, BODY), BODY);
    assert!(request.headers().get("content-length").is_none());
    let (status, body) = send_http1(addr, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut tampered = BODY.to_vec();
    tampered[3] ^= 1;
    let request = chunked_request(addr, &signed_headers(SECRET, now, BODY), &tampered);
    assert_eq!(send_http1(addr, request).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_chunked_upload_over_the_limit_is_a_413() {
    let (listener, addr) = listen().await;
    let app = receiver::app(VerifyOpenMailLayer::new(SECRET).unwrap().body_limit(1024));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let body = vec![b'x'; 4096];
    let request = chunked_request(addr, &signed_headers(SECRET, unix_now(), &body), &body);
    assert_eq!(
        send_http1(addr, request).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn a_plain_hyper_service_verifies() {
    let (listener, addr) = listen().await;
    tokio::spawn(hyper_service::serve(
        listener,
        VerifyOpenMailLayer::new(SECRET).unwrap(),
    ));
    let client = client();
    let now = unix_now();
    let (status, body) = post(
        &client,
        addr,
        "/anything",
        &signed_headers(SECRET, now, BODY),
        BODY,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "received message.received\n")
    );
    let (status, body) = post(
        &client,
        addr,
        "/anything",
        &signed_headers("whsec_no", now, BODY),
        BODY,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "signature mismatch")
    );
    let request = chunked_request(addr, &signed_headers(SECRET, now, BODY), BODY);
    assert_eq!(send_http1(addr, request).await.0, StatusCode::OK);
}

#[tokio::test]
async fn grpc_and_the_webhook_route_share_a_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let (listener, addr) = listen().await;
    let app = tonic_side_by_side::app(VerifyOpenMailLayer::new(SECRET).unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // gRPC over HTTP/2 carries no webhook headers; the layer must not see it.
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);

    let client = client();
    let now = unix_now();
    let (status, body) = post(
        &client,
        addr,
        "/webhooks",
        &signed_headers(SECRET, now, BODY),
        BODY,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "received message.received\n")
    );
    let (status, _) = post(&client, addr, "/webhooks", &[], Bytes::from_static(BODY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
