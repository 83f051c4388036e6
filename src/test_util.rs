//! Signed deliveries and forgeries for your own tests, with no network and no tunnel.
//!
//! [`Sample`] writes the event for you: a realistic body of every type OpenMail sends, with
//! builders for the ids a test varies. One line gives a signed `message.received` for
//! inbox X, or an `inbox.suspended` for a given reason:
//!
//! ```
//! use openmail_webhooks::test_util::Sample;
//!
//! let delivery = Sample::message_received().inbox_id("inb_x").deliver("whsec_test");
//! let suspended = Sample::inbox_suspended().reason("spam_complaints").deliver("whsec_test");
//! # let _ = (delivery.request(), suspended.request());
//! ```
//!
//! [`TestDelivery`] builds the `http::Request` OpenMail would send: the body byte for byte,
//! `Content-Type: application/json`, a fresh `X-Timestamp`, its `X-Signature`, and an
//! `X-Event-Id` equal to the body's `event_id`. It takes a [`Sample`] or a body of your own
//! ([`TestDelivery::new`]). It also builds the usual forgeries, so a test can show that the
//! handler never sees them:
//!
//! | method | what arrives | the layer's verdict |
//! |---|---|---|
//! | [`request`](TestDelivery::request) | a genuine delivery | verified |
//! | [`tampered`](TestDelivery::tampered) | a body that differs from the signed one | `400`, signature mismatch |
//! | [`stale`](TestDelivery::stale) | a genuine signature, 301 s before the delivery's time | `400`, timestamp outside tolerance |
//! | [`wrong_secret`](TestDelivery::wrong_secret) | a body signed with another secret | `400`, signature mismatch |
//! | [`without_header`](TestDelivery::without_header) | a genuine delivery missing one header | `400` when it is a signed header |
//!
//! The requests carry a `String` body, which any tower service that accepts an
//! [`http_body::Body`] takes as is, an axum `Router` included. OpenMail bodies are JSON, so
//! UTF-8; for a body of arbitrary bytes, sign it with [`sign`] directly.
//! Anything else (an extra header, another method) is a change to the returned request.
//!
//! This module is behind the `test-util` feature so that production builds carry none of
//! it. Turn it on for tests only:
//!
//! ```toml
//! [dev-dependencies]
//! openmail-webhooks = { version = "0.1", features = ["test-util"] }
//! ```
//!
//! # Testing an axum handler behind the real layer
//!
//! ```
//! use std::sync::Arc;
//! use axum::{http::StatusCode, routing::post, Extension, Router};
//! use openmail_webhooks::test_util::Sample;
//! use openmail_webhooks::{Event, VerifyOpenMailLayer};
//! use tower::ServiceExt; // for `oneshot`
//!
//! const SECRET: &str = "whsec_test";
//! const NOW: i64 = 1_790_000_000;
//!
//! async fn handle(Extension(event): Extension<Arc<Event>>) -> String {
//!     format!("got {}", event.event_type())
//! }
//!
//! fn app() -> Router {
//!     let layer = VerifyOpenMailLayer::new(SECRET)
//!         .unwrap()
//!         .clock(|| NOW); // or leave the system clock, and drop `.at(NOW)` below
//!     Router::new().route("/webhooks", post(handle)).layer(layer)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let delivery = Sample::message_received().inbox_id("inb_1").at(NOW).deliver(SECRET);
//!
//! // A genuine delivery reaches the handler.
//! let response = app().oneshot(delivery.request()).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! let body = axum::body::to_bytes(response.into_body(), 1024).await?;
//! assert_eq!(body, "got message.received");
//!
//! // Forgeries never do.
//! for forgery in [
//!     delivery.tampered(),
//!     delivery.stale(),
//!     delivery.wrong_secret(),
//!     delivery.without_header("x-signature"),
//! ] {
//!     let response = app().oneshot(forgery).await?;
//!     assert_eq!(response.status(), StatusCode::BAD_REQUEST);
//! }
//! # Ok(())
//! # }
//! ```

mod sample;

use std::fmt;

pub use sample::Sample;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Uri};

use crate::protocol::{Clock, SystemClock};
use crate::protocol::{EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::sign;

/// How far [`TestDelivery::stale`] moves `X-Timestamp` into the past: one second more than
/// the default 300 s tolerance.
const STALE_BY_SECS: i64 = 301;

/// One delivery as OpenMail would send it, and its forgeries.
///
/// Built from a secret and a body; it signs at the system clock's "now" unless
/// [`timestamp`](Self::timestamp) pins the time. Each method returns a fresh request, so one
/// `TestDelivery` serves a whole table of cases. `Debug` never shows the secret.
#[derive(Clone)]
pub struct TestDelivery {
    secret: Vec<u8>,
    body: String,
    timestamp: i64,
    uri: Uri,
}

impl TestDelivery {
    /// How many HMAC-SHA256 computations verification has run on the calling thread, since
    /// the thread started: one per secret tried, plus those a refusal runs so that it costs
    /// the same whatever the tenant (four, for up to four secrets).
    /// Signing ([`sign`], this module's builders) is not counted.
    ///
    /// Take the difference around a request to see what it cost, as a count rather than a
    /// time, which a busy machine cannot skew. The layer verifies on the thread that polls
    /// the request: under `tower::ServiceExt::oneshot`, or with a server on a current-thread
    /// runtime, that is the test's own thread.
    ///
    /// ```
    /// use openmail_webhooks::test_util::TestDelivery;
    /// use openmail_webhooks::Verifier;
    ///
    /// let delivery = TestDelivery::new("whsec_test", r#"{"event_id":"evt_1"}"#);
    /// let verifier = Verifier::new("whsec_other")?;
    /// let before = TestDelivery::macs_on_this_thread();
    /// let refused = verifier.verify(
    ///     delivery.unix_timestamp().to_string(),
    ///     delivery.signature(),
    ///     delivery.body().as_bytes(),
    /// );
    /// assert!(refused.is_err());
    /// assert_eq!(TestDelivery::macs_on_this_thread() - before, 1);
    /// # Ok::<(), openmail_webhooks::ConfigError>(())
    /// ```
    pub fn macs_on_this_thread() -> u64 {
        crate::protocol::macs_on_this_thread()
    }

    /// A delivery of `body`, signed with `secret` (exactly as OpenMail shows it, a `whsec_`
    /// prefix included) at the system clock's current time, to `/webhooks`.
    ///
    /// For a realistic body of any event type, start from a [`Sample`] instead:
    /// `Sample::message_received().deliver(secret)`.
    pub fn new(secret: impl AsRef<[u8]>, body: impl Into<String>) -> Self {
        Self {
            secret: secret.as_ref().to_vec(),
            body: body.into(),
            timestamp: SystemClock.now(),
            uri: Uri::from_static("/webhooks"),
        }
    }

    /// Signs as at `unix_secs`. Pair it with a layer whose clock is pinned, such as
    /// `VerifyOpenMailLayer::clock(|| unix_secs)`.
    pub fn timestamp(self, unix_secs: i64) -> Self {
        Self {
            timestamp: unix_secs,
            ..self
        }
    }

    /// Sends to `uri` rather than `/webhooks`.
    pub fn uri(self, uri: Uri) -> Self {
        Self { uri, ..self }
    }

    /// The body, as it will be sent and signed.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The `X-Timestamp` the delivery is signed at, in Unix seconds.
    pub fn unix_timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The `X-Signature` of the genuine delivery.
    pub fn signature(&self) -> String {
        sign(
            &self.secret,
            self.timestamp.to_string(),
            self.body.as_bytes(),
        )
    }

    /// The genuine delivery: it verifies.
    pub fn request(&self) -> Request<String> {
        self.build(self.timestamp, self.signature(), self.body.clone())
    }

    /// The genuine headers with a different body: a space is appended to it. The JSON means
    /// the same, and the signature no longer matches, which is also what a body that was
    /// parsed and re-serialised before verification looks like.
    pub fn tampered(&self) -> Request<String> {
        let mut body = self.body.clone();
        body.push(' ');
        self.build(self.timestamp, self.signature(), body)
    }

    /// A correctly signed delivery whose `X-Timestamp` is 301 s (one more than the default tolerance) before this
    /// delivery's time: outside the default tolerance, as a replay or a skewed clock looks.
    /// For another distance, set [`timestamp`](Self::timestamp) and call
    /// [`request`](Self::request).
    pub fn stale(&self) -> Request<String> {
        let timestamp = self.timestamp.saturating_sub(STALE_BY_SECS);
        let signature = sign(&self.secret, timestamp.to_string(), self.body.as_bytes());
        self.build(timestamp, signature, self.body.clone())
    }

    /// The same body and time, signed with a secret that is not this one.
    pub fn wrong_secret(&self) -> Request<String> {
        let mut other = self.secret.clone();
        other.extend_from_slice(b"_wrong");
        let signature = sign(other, self.timestamp.to_string(), self.body.as_bytes());
        self.build(self.timestamp, signature, self.body.clone())
    }

    /// The genuine delivery without the header `name` (case-insensitive), such as
    /// `"x-signature"` or `"x-timestamp"`. A name the delivery does not carry changes
    /// nothing.
    pub fn without_header(&self, name: &str) -> Request<String> {
        let mut request = self.request();
        request.headers_mut().remove(name);
        request
    }

    fn build(&self, timestamp: i64, signature: String, body: String) -> Request<String> {
        let mut request = Request::new(String::new());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from(timestamp));
        // Hex digits only: always a valid header value.
        if let Ok(mut signature) = HeaderValue::from_str(&signature) {
            signature.set_sensitive(true);
            headers.insert(SIGNATURE_HEADER, signature);
        }
        if let Some(event_id) = self.event_id() {
            headers.insert(EVENT_ID_HEADER, event_id);
        }
        *request.body_mut() = body;
        request
    }

    /// The body's `event_id`, when it has a string one that fits a header value: what
    /// OpenMail sends as `X-Event-Id`.
    fn event_id(&self) -> Option<HeaderValue> {
        #[derive(serde::Deserialize)]
        struct EventId {
            event_id: Option<serde_json::Value>,
        }
        match serde_json::from_str::<EventId>(&self.body).ok()?.event_id? {
            serde_json::Value::String(id) => HeaderValue::from_str(&id).ok(),
            _ => None,
        }
    }
}

impl fmt::Debug for TestDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDelivery")
            .field("secret", &"<redacted>")
            .field("timestamp", &self.timestamp)
            .field("uri", &self.uri)
            .field("body_len", &self.body.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected signatures computed outside this crate, with python3:
    //   hmac.new(b"whsec_test", ts + b"." + body, hashlib.sha256).hexdigest()
    #[test]
    fn the_genuine_request_carries_the_documented_headers() {
        let body = r#"{"event":"message.received","event_id":"evt_1"}"#;
        let request = TestDelivery::new("whsec_test", body)
            .timestamp(1_790_000_000)
            .request();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri(), "/webhooks");
        let header = |name: &str| request.headers().get(name).unwrap().to_str().unwrap();
        assert_eq!(header("x-timestamp"), "1790000000");
        assert_eq!(
            header("x-signature"),
            "3426f9ee68a0dec885b6254d8a274c75d26765a9176983a47b96104a56af2181"
        );
        assert_eq!(header("x-event-id"), "evt_1");
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("content-length"), body.len().to_string());
        assert_eq!(request.body(), body);
    }

    #[test]
    fn the_stale_request_is_signed_at_its_own_timestamp() {
        let body = r#"{"event":"message.received","event_id":"evt_1"}"#;
        let request = TestDelivery::new("whsec_test", body)
            .timestamp(1_790_000_301)
            .stale();
        let header = |name: &str| request.headers().get(name).unwrap().to_str().unwrap();
        assert_eq!(header("x-timestamp"), "1790000000");
        assert_eq!(
            header("x-signature"),
            "3426f9ee68a0dec885b6254d8a274c75d26765a9176983a47b96104a56af2181"
        );
    }

    #[test]
    fn a_body_without_a_string_event_id_gets_no_event_id_header() {
        for body in [
            r#"{"event":"x"}"#,
            r#"{"event":"x","event_id":7}"#,
            "not json",
            r#"{"event":"x","event_id":"evt_\n"}"#,
        ] {
            let request = TestDelivery::new("whsec_test", body).request();
            assert!(request.headers().get("x-event-id").is_none(), "{body}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let delivery = TestDelivery::new("whsec_do_not_print", "{}");
        assert!(!format!("{delivery:?}").contains("do_not_print"));
    }
}
