//! The verification layer on a plain hyper 1.x server, with no framework.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... cargo run --example hyper_service
//! ```
//!
//! Listens on `127.0.0.1:$PORT` (default 3000). Every path is the webhook endpoint.
//! The layer turns hyper's `Incoming` body into a verified `VerifiedBody` and adds the
//! parsed event to the request extensions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::{Event, VerifyOpenMailLayer};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

async fn handle(request: Request<VerifiedBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = match request.extensions().get::<Arc<Event>>() {
        Some(event) => format!("received {}\n", event.event_type()),
        None => "received\n".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(reply))))
}

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, layer: VerifyOpenMailLayer) {
    let service = ServiceBuilder::new().layer(layer).service_fn(handle);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = auto::Builder::new(TokioExecutor::new());
            if let Err(error) = connection
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {error}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("OPENMAIL_WEBHOOK_SECRET")
        .map_err(|_| "set OPENMAIL_WEBHOOK_SECRET to the webhook secret")?;
    let port: u16 = std::env::var("PORT").map_or(Ok(3000), |port| port.parse())?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    serve(listener, VerifyOpenMailLayer::new(secret)?).await;
    Ok(())
}
