//! The one way the tool talks to a receiver: a signed `POST` over plain HTTP, answered
//! within OpenMail's delivery timeout.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::sign;

/// How long OpenMail waits for a `2xx` before it counts a delivery as failed.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// An HTTP client for plain-HTTP receivers.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Parses a receiver's URL: plain `http://` with a host.
pub fn parse_url(url: &str, tool: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("{url:?} is not a URL: {error}"))?;
    match uri.scheme_str() {
        Some("http") if uri.authority().is_some() => Ok(uri),
        Some("https") => Err(format!(
            "{url} is https; {tool} speaks plain HTTP, for a receiver on this machine. \
             Point it at the receiver's local port (http://127.0.0.1:3000/webhooks) \
             rather than at the tunnel"
        )),
        _ => Err(format!(
            "{url:?} is not an http:// URL with a host, such as http://127.0.0.1:3000/webhooks"
        )),
    }
}

/// The request OpenMail would send: `body` signed with `secret` at `timestamp`.
pub fn signed_request(
    url: &Uri,
    secret: &str,
    timestamp: i64,
    event_id: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let timestamp = timestamp.to_string();
    Request::post(url.clone())
        .header("content-type", "application/json")
        .header("x-timestamp", &timestamp)
        .header("x-signature", sign(secret, &timestamp, &body))
        .header("x-event-id", event_id)
        .body(Full::new(body))
        .map_err(|error| format!("cannot build the request: {error}"))
}

/// Sends `request` and reads the whole answer, within [`DELIVERY_TIMEOUT`].
pub async fn post(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let url = request.uri().clone();
    let exchange = async {
        let response = client.request(request).await.map_err(|error| {
            format!("cannot reach {url}: {error}; is the receiver running on that port?")
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("the response from {url} broke off: {error}"))?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(DELIVERY_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            format!(
                "{url} did not answer within {} s; OpenMail would count this delivery as \
                 failed and retry it",
                DELIVERY_TIMEOUT.as_secs()
            )
        })?
}
