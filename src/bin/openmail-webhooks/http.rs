//! The one way the tool talks to a receiver: a signed `POST` over plain HTTP, answered
//! within OpenMail's delivery timeout.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::sign;

/// How long OpenMail waits for a `2xx` before it counts a delivery as failed.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How many bytes of a receiver's answer are kept: enough to print, and the rest is read
/// and counted, never stored, so that an answer of any size costs this much memory.
pub const ANSWER_KEPT: usize = 64 * 1024;

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

/// Where a receiver on this machine is reached without asking a resolver: its literal
/// loopback address, or 127.0.0.1 for the name `localhost`. `None` for any other host.
pub fn loopback(url: &Uri) -> Option<IpAddr> {
    let host = url.host()?;
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    host.parse::<IpAddr>()
        .ok()
        .filter(|address| address.is_loopback())
}

/// `url` with its host replaced by `address`, so that the connection goes there without
/// a name lookup; the original authority is kept for the `Host` header.
pub fn pinned(url: &Uri, address: IpAddr) -> Result<Uri, String> {
    let port = url.port_u16().unwrap_or(80);
    let authority = match address {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    let mut parts = url.clone().into_parts();
    parts.authority = Some(
        authority
            .parse::<Authority>()
            .map_err(|error| format!("cannot address {address}: {error}"))?,
    );
    Uri::from_parts(parts).map_err(|error| format!("cannot address {address}: {error}"))
}

/// The request OpenMail would send: `body` signed with `secret` at `timestamp`, and
/// `X-Event-Id` when the `event_id` fits a header value. One that does not (a control
/// character, non-ASCII) is still delivered: the header is left out, as it is unsigned
/// and the body carries the id; a receiver deduplicates on the body's.
pub fn signed_request(
    url: &Uri,
    secret: &str,
    timestamp: i64,
    event_id: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let timestamp = timestamp.to_string();
    let mut request = Request::post(url.clone())
        .header("content-type", "application/json")
        .header("x-timestamp", &timestamp)
        .header("x-signature", sign(secret, &timestamp, &body));
    if let Some(event_id) = event_id_header(event_id) {
        request = request.header("x-event-id", event_id);
    }
    request
        .body(Full::new(body))
        .map_err(|error| format!("cannot build the request: {error}"))
}

/// The `X-Event-Id` value for `event_id`, when it can be one: not empty, and no control
/// character or non-ASCII.
pub fn event_id_header(event_id: &str) -> Option<HeaderValue> {
    if event_id.is_empty() {
        return None;
    }
    HeaderValue::from_str(event_id).ok()
}

/// Sets the `Host` header to `url`'s authority, for a request sent to a pinned address.
pub fn keep_host<B>(request: &mut Request<B>, url: &Uri) {
    if let Some(host) = url
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
    {
        request.headers_mut().insert(HOST, host);
    }
}

/// A receiver's answer: the status, the first [`ANSWER_KEPT`] bytes of the body, and the
/// body's whole length.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub length: u64,
}

/// Sends `request` and reads the answer, within [`DELIVERY_TIMEOUT`]: the whole body is
/// read, as OpenMail reads it, but only its first [`ANSWER_KEPT`] bytes are kept.
pub async fn post(client: &HttpClient, request: Request<Full<Bytes>>) -> Result<Answer, String> {
    let url = request.uri().clone();
    let exchange = async {
        let response = client.request(request).await.map_err(|error| {
            format!("cannot reach {url}: {error}; is the receiver running on that port?")
        })?;
        let status = response.status();
        let mut body = response.into_body();
        let mut kept = Vec::new();
        let mut length: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|error| format!("the response from {url} broke off: {error}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            length = length.saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
            let room = ANSWER_KEPT.saturating_sub(kept.len());
            kept.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
        }
        Ok(Answer {
            status,
            body: Bytes::from(kept),
            length,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_request_goes_to_the_address_and_keeps_the_host_as_written() {
        let url: Uri = "http://localhost:3000/webhooks".parse().unwrap();
        let connect = pinned(&url, loopback(&url).unwrap()).unwrap();
        let mut request =
            signed_request(&connect, "whsec_x", 1_790_000_000, "evt_1", Bytes::new()).unwrap();
        keep_host(&mut request, &url);
        assert_eq!(request.uri(), "http://127.0.0.1:3000/webhooks");
        assert_eq!(request.headers()[HOST], "localhost:3000");
        assert_eq!(request.headers()["x-event-id"], "evt_1");
    }

    #[test]
    fn an_event_id_that_is_not_a_header_value_leaves_the_header_out() {
        let url: Uri = "http://127.0.0.1:3000/webhooks".parse().unwrap();
        for event_id in ["evt_\n", "evt_\u{1b}", "evt_é", ""] {
            let request =
                signed_request(&url, "whsec_x", 1_790_000_000, event_id, Bytes::new()).unwrap();
            assert!(
                request.headers().get("x-event-id").is_none(),
                "{event_id:?}"
            );
        }
    }
}
