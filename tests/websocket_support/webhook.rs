//! The webhook half of the two channels: a router behind `VerifyOpenMailLayer` served on
//! loopback, and deliveries signed as OpenMail signs them.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::sign;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The webhook secret of these tests.
pub const SECRET: &str = "whsec_websocket_tests";

/// `app` served over HTTP on an ephemeral loopback port until dropped.
pub struct WebhookServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WebhookServer {
    pub async fn serve(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, task }
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Delivers like OpenMail's webhook worker.
#[derive(Clone)]
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Sender {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Sender {
    /// `POST /webhooks` with `body`, signed now with `secret`.
    pub async fn deliver(
        &self,
        addr: SocketAddr,
        secret: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let signature = sign(secret, &timestamp, body.as_bytes());
        let request = http::Request::post(format!("http://{addr}/webhooks"))
            .header("content-type", "application/json")
            .header("x-timestamp", timestamp)
            .header("x-signature", signature)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Delivers again after each `409` (another delivery of the event is in flight), as
    /// OpenMail retries anything but `2xx`, until something else comes back.
    pub async fn deliver_until_settled(
        &self,
        addr: SocketAddr,
        secret: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let mut answer = self.deliver(addr, secret, body).await;
        for _ in 0..100 {
            if answer.0 != StatusCode::CONFLICT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            answer = self.deliver(addr, secret, body).await;
        }
        answer
    }
}
