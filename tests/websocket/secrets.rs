//! The API key never appears in logs, `Debug`, `Display` or errors: a connection's whole
//! life (subscribe, events, a reconnect, 4001, a refused certificate) runs with every
//! `log` record (tungstenite's, at trace level) and every `tracing` event captured, and
//! none holds the key. A control connection through tungstenite's own client handshake
//! shows that the capture would catch a leak.

#![cfg(feature = "websocket")]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::websocket_support::harness::{App, Running, Statuses};
use crate::websocket_support::tls::TestCa;
use crate::websocket_support::{ServerOptions, TestServer};
use openmail_webhooks::websocket::{ClientStatus, WebSocketClient};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::util::SubscriberInitExt;

const KEY: &str = "om_live_SECRET_never_shown_7f3a";
const CONTROL_KEY: &str = "om_live_CONTROL_through_tungstenite_91c2";

/// Everything logged, through `log` and `tracing`, by this test and by every other test of
/// the binary running beside it (which use other keys).
fn captured() -> &'static Arc<Mutex<String>> {
    static CAPTURED: OnceLock<Arc<Mutex<String>>> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Arc::new(Mutex::new(String::new()));
        log::set_boxed_logger(Box::new(Logger(Arc::clone(&captured)))).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        let writer = Arc::clone(&captured);
        tracing_subscriber::fmt()
            .with_max_level(LevelFilter::TRACE)
            .with_ansi(false)
            .with_writer(move || Writer(Arc::clone(&writer)))
            .finish()
            .try_init()
            .unwrap();
        // The other tests of this binary log too: a statement one of them ran while the
        // subscriber was being installed cached "never". Ask every statement again.
        tracing_core::callsite::rebuild_interest_cache();
        captured
    })
}

struct Logger(Arc<Mutex<String>>);

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!(
            "{} {}: {}\n",
            record.level(),
            record.target(),
            record.args()
        );
        self.0.lock().unwrap().push_str(&line);
    }

    fn flush(&self) {}
}

struct Writer(Arc<Mutex<String>>);

impl Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn options() -> ServerOptions {
    ServerOptions {
        api_keys: vec![KEY.to_owned(), CONTROL_KEY.to_owned()],
        ..ServerOptions::default()
    }
}

#[tokio::test]
async fn the_api_key_appears_in_no_log_debug_display_or_error() {
    let captured = captured();
    let mut shown = Vec::new();

    // A connection's life: events, a reconnect, then the key revoked (4001).
    let server = TestServer::with_options(options()).await;
    let statuses = Statuses::default();
    let client = WebSocketClient::new(KEY)
        .unwrap()
        .url(&server.url())
        .unwrap()
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .on_status(statuses.hook());
    shown.push(format!("{client:?}"));
    let mut running = Running::spawn(client, App::succeeding().router());
    server.wait_subscribed(1).await;
    server.push_event("evt_1", "inb_a");
    server.broadcast_text("not json");
    statuses
        .wait("evt_1", 1, |s| {
            matches!(s, ClientStatus::EventHandled { .. })
        })
        .await;
    server.close_all(1001, "");
    statuses
        .wait("subscribed again", 2, |s| {
            matches!(s, ClientStatus::Subscribed { .. })
        })
        .await;
    server.revoke(KEY);
    let error = running.finished().await.unwrap_err();
    shown.push(format!("{error} {error:?}"));

    // A key refused from the start, and a certificate refused.
    let error = WebSocketClient::new(KEY)
        .unwrap()
        .url(&server.url())
        .unwrap()
        .serve(App::succeeding().router())
        .await
        .unwrap_err();
    shown.push(format!("{error} {error:?}"));
    let ca = TestCa::new();
    let tls_server = TestServer::with_options(ServerOptions {
        tls: Some(ca.server_config()),
        ..options()
    })
    .await;
    let tls_statuses = Statuses::default();
    let refused = Running::spawn(
        WebSocketClient::new(KEY)
            .unwrap()
            .url(&tls_server.url())
            .unwrap()
            .on_status(tls_statuses.hook()),
        App::succeeding().router(),
    );
    tls_statuses
        .wait("a refused certificate", 1, |s| {
            matches!(s, ClientStatus::Reconnecting { .. })
        })
        .await;
    refused.stop().await.unwrap();

    for status in statuses.all().iter().chain(tls_statuses.all().iter()) {
        shown.push(format!("{status} {status:?}"));
    }
    let everything = format!("{}\n{}", captured.lock().unwrap(), shown.join("\n"));
    assert!(!everything.contains(KEY), "the key leaked:\n{everything}");
    assert!(
        !everything.contains("SECRET_never"),
        "part of the key leaked"
    );
    // The capture did see the stack at work.
    assert!(everything.contains("tungstenite"), "{everything}");
    if cfg!(feature = "tracing") {
        assert!(everything.contains("OpenMail WebSocket"), "{everything}");
    }

    // Control: tungstenite's own client handshake logs the request, key included.
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {CONTROL_KEY}").parse().unwrap(),
    );
    let stream = TcpStream::connect(server.addr()).await.unwrap();
    let _ = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert!(
        captured.lock().unwrap().contains(CONTROL_KEY),
        "the capture would not have caught a leak"
    );
}
