//! The WebSocket URL: parsed once, checked for TLS, and never carrying the key.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::Uri;

use super::WebSocketError;

/// A checked `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `Host` header value: the authority as written.
    pub(crate) authority: String,
    /// The host to connect to and to verify the certificate for, without IPv6 brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The request target: path and query.
    pub(crate) target: String,
    pub(crate) tls: bool,
    /// For plain `ws://`, the loopback address to connect to, fixed here so that no
    /// resolver (a hosts file, a DNS search domain, a local resolver) decides where
    /// unauthenticated events come from. `None` for `wss://`, which resolves `host` and
    /// authenticates the server by its certificate.
    pub(crate) loopback: Option<SocketAddr>,
}

fn invalid(reason: &'static str) -> WebSocketError {
    WebSocketError::InvalidUrl { reason }
}

impl Endpoint {
    /// Parses `url`. `wss://` goes anywhere; `ws://` only to a literal loopback address
    /// (127.0.0.0/8, `::1`), for tests and local tools, or to the name `localhost`, which
    /// means 127.0.0.1 here and is never looked up.
    pub(crate) fn parse(url: &str) -> Result<Self, WebSocketError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| invalid("it does not parse as a URL"))?;
        let tls = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("wss") => true,
            Some("ws") => false,
            Some(_) => return Err(invalid("the scheme must be wss:// (or ws:// to loopback)")),
            None => return Err(invalid("it has no scheme")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "it carries credentials; pass the API key to WebSocketClient::new",
            ));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(invalid("it has no host"));
        }
        let host = host
            .strip_prefix('[')
            .and_then(|host| host.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let query = uri.query().unwrap_or("");
        if query
            .split('&')
            .any(|pair| pair == "token" || pair.starts_with("token="))
        {
            return Err(invalid(
                "it carries a token; pass the API key to WebSocketClient::new, which sends \
                 it in a header, out of URLs and logs",
            ));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let loopback = if tls {
            None
        } else {
            Some(SocketAddr::new(
                loopback_address(&host).ok_or(WebSocketError::InsecureUrl)?,
                port,
            ))
        };
        let target = uri
            .path_and_query()
            .map(|target| target.as_str())
            .filter(|target| !target.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(Self {
            authority: authority.as_str().to_owned(),
            host,
            port,
            target,
            tls,
            loopback,
        })
    }

    /// The URL to show: scheme, authority and path, without the query.
    pub(crate) fn display(&self) -> String {
        let path = self.target.split('?').next().unwrap_or("/");
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}{path}", self.authority)
    }
}

/// The loopback address `host` names: a literal one, or 127.0.0.1 for the name
/// `localhost` (RFC 6761 reserves it for loopback), which is mapped here rather than
/// resolved, since a hosts file or resolver may say otherwise.
fn loopback_address(host: &str) -> Option<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.parse::<IpAddr>()
        .ok()
        .filter(|address| address.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_url_parses() {
        let endpoint = Endpoint::parse(crate::websocket::DEFAULT_URL).unwrap();
        assert_eq!(
            endpoint,
            Endpoint {
                authority: "api.openmail.sh".into(),
                host: "api.openmail.sh".into(),
                port: 443,
                target: "/v1/ws".into(),
                tls: true,
                loopback: None,
            }
        );
        assert_eq!(endpoint.display(), "wss://api.openmail.sh/v1/ws");
    }

    #[test]
    fn plain_ws_only_to_loopback() {
        for url in [
            "ws://127.0.0.1:8080/v1/ws",
            "ws://127.1.2.3/v1/ws",
            "ws://[::1]:9000/v1/ws",
            "ws://localhost:1/",
            "WS://LOCALHOST/",
        ] {
            let endpoint = Endpoint::parse(url).unwrap_or_else(|error| panic!("{url}: {error}"));
            assert!(!endpoint.tls);
        }
        assert_eq!(Endpoint::parse("ws://[::1]:9000/x").unwrap().host, "::1");
        // The address is fixed at parse time, never left to a resolver.
        for (url, address) in [
            ("ws://localhost:1/", "127.0.0.1:1"),
            ("WS://LOCALHOST/", "127.0.0.1:80"),
            ("ws://127.1.2.3:5/", "127.1.2.3:5"),
            ("ws://[::1]:9000/x", "[::1]:9000"),
        ] {
            let endpoint = Endpoint::parse(url).unwrap();
            assert_eq!(endpoint.loopback, Some(address.parse().unwrap()), "{url}");
        }
        assert_eq!(
            Endpoint::parse("wss://localhost:1/").unwrap().loopback,
            None
        );
        for url in [
            "ws://api.openmail.sh/v1/ws",
            "ws://10.0.0.1/v1/ws",
            "ws://0.0.0.0/",
            "ws://[::]/",
            "ws://localhost.example.com/",
            "ws://localhost./",
            "ws://localhost4/",
            "ws://ip6-localhost/",
            "ws://[::ffff:127.0.0.1]/",
            "ws://127.0.0.1.example.com/",
        ] {
            assert!(
                matches!(Endpoint::parse(url), Err(WebSocketError::InsecureUrl)),
                "{url}"
            );
        }
        let remote = Endpoint::parse("wss://10.0.0.1:8443").unwrap();
        assert_eq!((remote.port, remote.target.as_str()), (8443, "/"));
    }

    #[test]
    fn urls_that_cannot_work_or_would_leak_the_key_are_refused() {
        for url in [
            "https://api.openmail.sh/v1/ws",
            "api.openmail.sh/v1/ws",
            "wss://user:om_key@api.openmail.sh/v1/ws",
            "wss://api.openmail.sh/v1/ws?token=om_key",
            "wss://api.openmail.sh/v1/ws?a=1&token=om_key",
            "wss:///v1/ws",
            "not a url",
            "",
        ] {
            assert!(
                matches!(Endpoint::parse(url), Err(WebSocketError::InvalidUrl { .. })),
                "{url}: {:?}",
                Endpoint::parse(url)
            );
        }
        let message = Endpoint::parse("wss://api.openmail.sh/?token=om_secret_key")
            .unwrap_err()
            .to_string();
        assert!(!message.contains("om_secret_key"), "{message}");
    }
}
