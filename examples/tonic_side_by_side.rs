//! A gRPC service and the verified webhook route on one port.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... cargo run --example tonic_side_by_side
//! ```
//!
//! The gRPC side is `grpc.health.v1.Health` from `tonic-health`. The verification layer
//! wraps only the `POST /webhooks` route, so gRPC calls never pass through it. HTTP/1.1
//! and HTTP/2 (gRPC needs it) are served on the same listener.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{Extension, Router, routing::post};
use openmail_webhooks::{Event, VerifyOpenMailLayer};
use tokio::net::TcpListener;

async fn handle(Extension(event): Extension<Arc<Event>>) -> String {
    format!("received {}\n", event.event_type())
}

/// gRPC health and the webhook route, merged into one router.
pub fn app(layer: VerifyOpenMailLayer) -> Router {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let grpc = tonic::service::Routes::new(health)
        .prepare()
        .into_axum_router();
    let webhooks = Router::new().route("/webhooks", post(handle)).layer(layer);
    grpc.merge(webhooks)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("OPENMAIL_WEBHOOK_SECRET")
        .map_err(|_| "set OPENMAIL_WEBHOOK_SECRET to the webhook secret")?;
    let port: u16 = std::env::var("PORT").map_or(Ok(3000), |port| port.parse())?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("gRPC and webhooks on http://{}", listener.local_addr()?);
    axum::serve(listener, app(VerifyOpenMailLayer::new(secret)?)).await?;
    Ok(())
}
