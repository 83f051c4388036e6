//! Opening a connection: TCP, TLS with certificate verification, and the WebSocket
//! upgrade with the API key.
//!
//! The upgrade request is written here rather than by tungstenite's client handshake,
//! because that one logs the whole request, `Authorization` header included, at `trace`
//! level through the `log` crate: an application that turns tracing up to debug a
//! connection would print its API key. Here the key goes from a sensitive header value
//! straight to the socket.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::WebSocketError;
use super::endpoint::Endpoint;

/// The longest upgrade answer read: a real one is a few hundred bytes.
const MAX_UPGRADE_RESPONSE: usize = 16 * 1024;

/// The connection under the WebSocket: plain TCP (loopback only) or TLS.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the connection needs from the client's configuration.
pub(crate) struct Dial<'a> {
    pub(crate) endpoint: &'a Endpoint,
    pub(crate) authorization: &'a HeaderValue,
    pub(crate) tls: Option<&'a Arc<ClientConfig>>,
    pub(crate) max_message_size: usize,
}

/// Connects, and upgrades to a WebSocket.
pub(crate) async fn connect(dial: Dial<'_>) -> Result<WebSocketStream<Transport>, WebSocketError> {
    let endpoint = dial.endpoint;
    let tcp = match endpoint.loopback {
        Some(address) => TcpStream::connect(address).await,
        None => TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await,
    }
    .map_err(WebSocketError::connect)?;
    // Frames are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let mut stream = if endpoint.tls {
        let config = match dial.tls {
            Some(config) => Arc::clone(config),
            None => default_tls()?,
        };
        let name = ServerName::try_from(endpoint.host.clone()).map_err(WebSocketError::connect)?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(WebSocketError::connect)?;
        Transport::Tls(Box::new(stream))
    } else {
        Transport::Plain(tcp)
    };
    let leftover = upgrade(&mut stream, endpoint, dial.authorization).await?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(dial.max_message_size))
        .max_frame_size(Some(dial.max_message_size));
    Ok(WebSocketStream::from_partially_read(stream, leftover, Role::Client, Some(config)).await)
}

/// Mozilla's roots (webpki-roots), with the ring provider chosen here rather than taken
/// from a process-wide default that may not be installed, or may be another.
fn default_tls() -> Result<Arc<ClientConfig>, WebSocketError> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(Arc::clone(config));
    }
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // rustls deprecates the ring provider because ring has no post-quantum key exchange.
    // It stays: aws-lc-rs, the provider that has one, needs cmake and a much heavier C
    // build on every machine that builds this feature, while ring needs a C compiler
    // alone. Connections still negotiate X25519 or the NIST curves. The allow is scoped to
    // this one call, so any other deprecation still shows.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(WebSocketError::connect)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::clone(CONFIG.get_or_init(|| Arc::new(config))))
}

/// Why an upgrade answer was refused.
#[derive(Debug)]
struct UpgradeError(&'static str);

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server's answer to the WebSocket upgrade {}", self.0)
    }
}

impl StdError for UpgradeError {}

fn refused(reason: &'static str) -> WebSocketError {
    WebSocketError::connect(UpgradeError(reason))
}

/// Sends the upgrade request and checks the answer (RFC 6455, section 4.1). Returns the
/// bytes read past the answer's head: the start of the first frames.
async fn upgrade(
    stream: &mut Transport,
    endpoint: &Endpoint,
    authorization: &HeaderValue,
) -> Result<Vec<u8>, WebSocketError> {
    let nonce = generate_key();
    let mut request = Vec::with_capacity(320);
    for part in [
        b"GET ".as_slice(),
        endpoint.target.as_bytes(),
        b" HTTP/1.1\r\nHost: ",
        endpoint.authority.as_bytes(),
        b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        b"Sec-WebSocket-Key: ",
        nonce.as_bytes(),
        b"\r\nAuthorization: ",
        authorization.as_bytes(),
        b"\r\nUser-Agent: openmail-webhooks/",
        env!("CARGO_PKG_VERSION").as_bytes(),
        b"\r\n\r\n",
    ] {
        request.extend_from_slice(part);
    }
    stream
        .write_all(&request)
        .await
        .map_err(WebSocketError::connect)?;
    stream.flush().await.map_err(WebSocketError::connect)?;
    drop(request);

    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(WebSocketError::connect)?;
        if read == 0 {
            return Err(refused("ended before it was complete"));
        }
        buffer.extend_from_slice(chunk.get(..read).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&buffer) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) if buffer.len() <= MAX_UPGRADE_RESPONSE => continue,
            Ok(httparse::Status::Partial) => return Err(refused("is too long")),
            Err(error) => return Err(WebSocketError::connect(error)),
        };
        match response.code {
            Some(101) => {}
            Some(401 | 403) => return Err(WebSocketError::Unauthorized),
            Some(status) => return Err(WebSocketError::UpgradeRefused { status }),
            None => return Err(refused("has no status")),
        }
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case(name))
                .map(|header| header.value)
        };
        if !header("upgrade").is_some_and(|value| value.eq_ignore_ascii_case(b"websocket")) {
            return Err(refused("lacks `Upgrade: websocket`"));
        }
        let connection_upgrades = header("connection").is_some_and(|value| {
            value
                .split(|byte| *byte == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        });
        if !connection_upgrades {
            return Err(refused("lacks `Connection: Upgrade`"));
        }
        let expected = derive_accept_key(nonce.as_bytes());
        if header("sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(expected.as_bytes()) {
            return Err(refused("has a wrong Sec-WebSocket-Accept"));
        }
        return Ok(buffer.split_off(head.min(buffer.len())));
    }
}
