//! `listen`: OpenMail's events as they happen, over the account's WebSocket, printed and
//! optionally forwarded to a local receiver, signed as OpenMail signs webhooks.
//!
//! ```text
//! OPENMAIL_API_KEY=om_... openmail-webhooks listen [--inbox-id ID].. [--event TYPE].. \
//!     [--json] [--forward-to URL] [--resume-file PATH]
//! ```
//!
//! - `OPENMAIL_API_KEY` is required; `OPENMAIL_WS_URL` overrides the WebSocket URL.
//! - It subscribes to every event of the account, or to the inboxes and event types given.
//! - Each event prints one stdout line as it arrives: `<type> <event_id> inbox=<inbox_id>`,
//!   each value escaped and cut short, or, with `--json`, the event's JSON on one line.
//! - `--forward-to URL` also POSTs each event to URL (plain `http://`, on this machine:
//!   a literal loopback address or `localhost`, which means 127.0.0.1 and is not looked
//!   up; another host needs `--allow-remote`, since the events are email content and
//!   plain HTTP carries them in cleartext), signed with
//!   `OPENMAIL_WEBHOOK_SECRET` as OpenMail signs a webhook: the body byte for byte,
//!   `Content-Type: application/json`, a fresh `X-Timestamp` and its `X-Signature` on every
//!   attempt, and `X-Event-Id` set to the event's `event_id` (left out when the id cannot
//!   be a header value). One stdout line reports each event's outcome: `forwarded
//!   <event_id> <status>` once the receiver answered `2xx`, or `failed <event_id> <status
//!   or error> after <n> attempts`. The WebSocket client retries a non-`2xx` with backoff
//!   (a `409` longer, without using the retries), without holding up the events behind
//!   it, and resumes after the last event done with when the connection comes back.
//! - The resume position (the last event done with in order: forwarded, or reported
//!   failed) is kept in memory, for reconnections, or with `--resume-file PATH` in a file,
//!   so that a restarted `listen` also gets the events that occurred while it was stopped
//!   (OpenMail replays up to 100).
//! - An event that still fails after its retries is reported (`failed …`) and given up
//!   on: the resume position moves past it, so that one bad event cannot hold back the
//!   ones after it (OpenMail's WebSocket never sends it again).
//! - Whatever the WebSocket server sends, `listen --forward-to` signs with the webhook
//!   secret. Over the default `wss://` the server is OpenMail, authenticated by TLS; over
//!   a plain `ws://` `OPENMAIL_WS_URL` (loopback only), any local process holding that
//!   port would be trusted alike, so `--forward-to` refuses a `ws://` URL unless
//!   `--allow-plain-ws` says it is a server you started, and then warns.
//! - Connections, reconnections, replays and failures are reported on stderr, escaped.
//! - Exit status: `0` after Ctrl-C (or SIGTERM); `2` for a usage error, a missing variable,
//!   or a key OpenMail refuses (close code `4001`); `1` for any other error that stops it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use lexopt::{Arg, Parser};
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::websocket::{
    ClientStatus, HandlerFailure, Subscription, WebSocketClient, WebSocketError,
};
use openmail_webhooks::{Delivery, LogSafe};

use crate::args;
use crate::http::{
    HttpClient, client, keep_host, loopback, parse_url, pinned, post, signed_request,
};
use crate::resume::FileResume;

/// The endpoint `WebSocketClient` connects to unless told otherwise.
const DEFAULT_URL: &str = "wss://api.openmail.sh/v1/ws";

/// The help text, also printed after a usage error.
pub const USAGE: &str = "\
usage: listen [OPTIONS]

Prints OpenMail's events as they happen, received over the account's WebSocket:
no public URL, no tunnel. The API key is read from OPENMAIL_API_KEY;
OPENMAIL_WS_URL overrides the WebSocket URL.

options:
  --inbox-id ID      only this inbox's events (repeat for several; default:
                     every inbox of the account)
  --event TYPE       only events of this type, such as message.received
                     (repeat for several; default: every type)
  --json             print each event's JSON, on one line, instead of its
                     type, event_id and inbox_id
  --forward-to URL   also POST each event to URL (plain http://), signed with
                     OPENMAIL_WEBHOOK_SECRET as OpenMail signs webhooks, and
                     print the receiver's answer; a non-2xx is retried with
                     backoff, without holding up later events, then reported
                     as failed and skipped. URL must be on this machine
                     (127.0.0.1, ::1, or localhost, which means 127.0.0.1)
                     unless --allow-remote is given. Whatever the WebSocket
                     server sends is signed: with a plain ws:// OPENMAIL_WS_URL,
                     any local process holding its port could have events
                     signed, so that needs --allow-plain-ws
  --allow-remote     let --forward-to send events to another machine, in
                     cleartext over plain HTTP
  --allow-plain-ws   let --forward-to sign events from a plain ws://
                     OPENMAIL_WS_URL (a local test server you started); without
                     it, that combination is refused
  --resume-file PATH keep the resume position (the last event done with:
                     forwarded, or reported failed) in PATH, so that a
                     restarted listen gets the events it missed while
                     stopped, up to 100 (default: in memory, for
                     reconnections only)
  -h, --help         print this help

Each event prints one line on stdout; with --forward-to, each outcome one more:
  message.received evt_123 inbox=inb_92ma
  forwarded evt_123 200 OK
Connections, reconnections and replays are reported on stderr.

exit status: 0 after Ctrl-C; 2 for a usage error, a missing variable, or an
API key OpenMail refuses; 1 for any other error that stops it.
";

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    json: bool,
    forward_to: Option<Uri>,
    inbox_ids: Vec<String>,
    event_types: Vec<String>,
    resume_file: Option<PathBuf>,
    allow_remote: bool,
    allow_plain_ws: bool,
}

/// Parses the arguments that follow `listen`. `None` asks for the help.
fn parse_args(mut parser: Parser) -> Result<Option<Options>, String> {
    let mut options = Options {
        json: false,
        forward_to: None,
        inbox_ids: Vec::new(),
        event_types: Vec::new(),
        resume_file: None,
        allow_remote: false,
        allow_plain_ws: false,
    };
    while let Some(arg) = parser.next().map_err(args::error)? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(None),
            Arg::Long("json") => {
                args::no_value(&mut parser, "--json")?;
                options.json = true;
            }
            Arg::Long("allow-remote") => {
                args::no_value(&mut parser, "--allow-remote")?;
                options.allow_remote = true;
            }
            Arg::Long("allow-plain-ws") => {
                args::no_value(&mut parser, "--allow-plain-ws")?;
                options.allow_plain_ws = true;
            }
            Arg::Long("forward-to") => {
                let url = args::text(&mut parser, "--forward-to", "a URL")?;
                options.forward_to = Some(parse_url(&url, "listen --forward-to")?);
            }
            Arg::Long("inbox-id") => {
                let inbox_id = args::text(&mut parser, "--inbox-id", "an inbox id")?;
                options.inbox_ids.push(inbox_id);
            }
            Arg::Long("event") => {
                let event_type = args::text(&mut parser, "--event", "an event type")?;
                options.event_types.push(event_type);
            }
            // A path, whatever its bytes.
            Arg::Long("resume-file") => {
                let path = args::value(&mut parser, "--resume-file", "a path")?;
                options.resume_file = Some(PathBuf::from(path));
            }
            Arg::Value(other) => {
                return Err(format!(
                    "unexpected argument {}: listen takes options only",
                    args::shown(&other)
                ));
            }
            option => return Err(args::unknown(option)),
        }
    }
    // Not a let chain: the crate's rust-version (1.85) predates them.
    let remote = options
        .forward_to
        .as_ref()
        .filter(|url| !options.allow_remote && loopback(url).is_none());
    if let Some(url) = remote {
        return Err(format!(
            "--forward-to {url} is not on this machine: the events are email content, \
             and plain HTTP would carry them in cleartext. Use 127.0.0.1, ::1 or \
             localhost, or add --allow-remote to send them there anyway"
        ));
    }
    Ok(Some(options))
}

/// What the environment gives `listen`.
pub struct Environment {
    /// `OPENMAIL_API_KEY`.
    pub api_key: Option<String>,
    /// `OPENMAIL_WS_URL`.
    pub url: Option<String>,
    /// `OPENMAIL_WEBHOOK_SECRET`, for `--forward-to`.
    pub secret: Option<String>,
}

impl Environment {
    /// Reads the process's environment.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Self {
            api_key: var("OPENMAIL_API_KEY"),
            url: var("OPENMAIL_WS_URL"),
            secret: var("OPENMAIL_WEBHOOK_SECRET"),
        }
    }
}

/// Where the forwarded events go, and how they are signed.
struct Forward {
    /// As given: what is printed, and the `Host` header.
    url: Uri,
    /// Where the requests go: on loopback, the address itself, so that no resolver
    /// chooses it.
    connect: Uri,
    secret: String,
    client: HttpClient,
}

/// What every copy of the service shares.
struct Shared {
    json: bool,
    forward: Option<Forward>,
    /// Events printed and not yet finished: the client calls the service again for each
    /// retry, and the event's line is printed once.
    in_progress: Mutex<HashSet<String>>,
}

/// The service the WebSocket client calls with each event.
#[derive(Clone)]
struct Listen {
    shared: Arc<Shared>,
}

impl tower::Service<Request<VerifiedBody>> for Listen {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<VerifiedBody>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let Some(delivery) = request.extensions().get::<Delivery>().cloned() else {
                return Ok(answer(StatusCode::INTERNAL_SERVER_ERROR));
            };
            shared.arrived(&delivery);
            let Some(forward) = &shared.forward else {
                return Ok(answer(StatusCode::OK));
            };
            Ok(answer(forward.attempt(&delivery).await))
        })
    }
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}

impl Shared {
    /// Prints the event's line, the first time it is seen.
    fn arrived(&self, delivery: &Delivery) {
        if let Some(event_id) = delivery.event_id() {
            let mut in_progress = self
                .in_progress
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !in_progress.insert(event_id.to_owned()) {
                return;
            }
        }
        let line = if self.json {
            one_line_json(delivery.body())
        } else {
            let event_type = serde_json::from_slice::<EventType>(delivery.body())
                .ok()
                .and_then(|event| event.event);
            format!(
                "{} {} inbox={}",
                LogSafe::or_dash(event_type.as_deref()),
                LogSafe::or_dash(delivery.event_id()),
                LogSafe::or_dash(delivery.inbox_id()),
            )
        };
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }

    /// The event is done with: handled, or given up on.
    fn finished(&self, event_id: Option<&str>) {
        if let Some(event_id) = event_id {
            self.in_progress
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(event_id);
        }
    }

    /// Reports what the WebSocket client is doing: outcomes of forwarded events on stdout,
    /// everything else on stderr.
    fn status(&self, status: &ClientStatus) {
        match status {
            ClientStatus::EventHandled {
                event_id,
                status,
                attempts,
                ..
            } => {
                self.finished(event_id.as_deref());
                if self.forward.is_some() {
                    let retried = match attempts {
                        1 => String::new(),
                        attempts => format!(" after {attempts} attempts"),
                    };
                    let _ = writeln!(
                        std::io::stdout().lock(),
                        "forwarded {} {status}{retried}",
                        LogSafe::or_dash(event_id.as_deref()),
                    );
                }
            }
            ClientStatus::HandlerFailed {
                event,
                attempts,
                failure,
                ..
            } => {
                let event_id = event.event_id();
                self.finished(event_id);
                let outcome = match failure {
                    HandlerFailure::Status(status) => status.to_string(),
                    other => format!("- ({other})"),
                };
                let _ = writeln!(
                    std::io::stdout().lock(),
                    "failed {} {outcome} after {attempts} attempts",
                    LogSafe::or_dash(event_id),
                );
                let _ = writeln!(std::io::stderr().lock(), "listen: {status}");
            }
            other => {
                let _ = writeln!(std::io::stderr().lock(), "{}", status_line(other));
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct EventType {
    event: Option<String>,
}

impl Forward {
    /// One delivery attempt, signed afresh. The receiver's status, or `502 Bad Gateway`
    /// when it gave none, which the WebSocket client retries like any other failure.
    async fn attempt(&self, delivery: &Delivery) -> StatusCode {
        let event_id = delivery.event_id().unwrap_or("");
        let shown = LogSafe::or_dash(delivery.event_id());
        let request = match signed_request(
            &self.connect,
            &self.secret,
            crate::unix_now(),
            event_id,
            delivery.body().clone(),
        ) {
            Ok(mut request) => {
                keep_host(&mut request, &self.url);
                request
            }
            Err(message) => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "listen: cannot forward {shown}: {message}"
                );
                return StatusCode::BAD_GATEWAY;
            }
        };
        match post(&self.client, request).await {
            Ok(answer) if answer.status.is_success() => answer.status,
            Ok(answer) => {
                let status = answer.status;
                let answer = String::from_utf8_lossy(&answer.body);
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "listen: {} answered {status} to {shown}{}{}",
                    self.url,
                    if answer.is_empty() { "" } else { ": " },
                    LogSafe::new(&answer),
                );
                status
            }
            Err(message) => {
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "listen: cannot forward {shown}: {message}"
                );
                StatusCode::BAD_GATEWAY
            }
        }
    }
}

/// An event's JSON on one line, meaning the same: a line break between tokens becomes a
/// space, and characters that would move the cursor or reorder text (control, line
/// separator and bidi characters, legal raw in JSON strings) become `\u` escapes.
fn one_line_json(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            // In valid JSON these occur only between tokens: strings escape them.
            '\n' | '\r' | '\t' => line.push(' '),
            c if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                line.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => line.push(c),
        }
    }
    line
}

/// A status as `listen` reports it on stderr: its `Display`, which shows a
/// reconnection's whole cause chain, escaped.
fn status_line(status: &ClientStatus) -> String {
    format!("listen: {status}")
}

/// An error and its causes on one line, each escaped and cut short: a cause can quote
/// what a server sent.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    // A few levels say enough; a cyclic or endless chain must not hang the printer.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        line.push_str(&format!(": {}", LogSafe::new(&cause.to_string())));
        source = cause.source();
    }
    line
}

/// The URL as it may be printed: no query, which could hold a `?token=`.
fn shown_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    LogSafe::new(without_query).to_string()
}

/// Resolves when the user asks the process to stop: Ctrl-C, or SIGTERM on Unix.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `listen`, from the arguments after its name to the exit code.
pub async fn main(
    parser: Parser,
    environment: Environment,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let options = match parse_args(parser) {
        Ok(Some(options)) => options,
        Ok(None) => {
            let _ = write!(out, "{USAGE}");
            return 0;
        }
        Err(message) => {
            let _ = writeln!(err, "listen: {message}\n\n{USAGE}");
            return 2;
        }
    };
    let Some(api_key) = environment.api_key else {
        let _ = writeln!(
            err,
            "listen: OPENMAIL_API_KEY is not set; set it to the account's API key from the \
             OpenMail dashboard (not the webhook secret)"
        );
        return 2;
    };
    let forward = match (options.forward_to, environment.secret) {
        (None, _) => None,
        (Some(_), None) => {
            let _ = writeln!(
                err,
                "listen: --forward-to signs each event, and OPENMAIL_WEBHOOK_SECRET is not \
                 set; set it to the secret your receiver verifies with"
            );
            return 2;
        }
        (Some(url), Some(secret)) => {
            let connect = match loopback(&url).map(|address| pinned(&url, address)) {
                None => url.clone(),
                Some(Ok(connect)) => connect,
                Some(Err(message)) => {
                    let _ = writeln!(err, "listen: {message}");
                    return 2;
                }
            };
            Some(Forward {
                url,
                connect,
                secret,
                client: client(),
            })
        }
    };
    let url = environment.url.unwrap_or_else(|| DEFAULT_URL.to_owned());
    let mut client = match WebSocketClient::new(api_key).and_then(|client| client.url(&url)) {
        Ok(client) => client,
        Err(error) => {
            let _ = writeln!(err, "listen: {error}");
            return 2;
        }
    };
    if let Some(path) = options.resume_file {
        match FileResume::open(path) {
            Ok(store) => client = client.resume_store(store),
            Err(message) => {
                let _ = writeln!(err, "listen: {message}");
                return 2;
            }
        }
    }
    let plain_ws = url
        .get(..5)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("ws://"));
    if let Some(forward) = forward.as_ref().filter(|_| plain_ws) {
        if !options.allow_plain_ws {
            let _ = writeln!(
                err,
                "listen: {} is plain ws://, and nothing authenticates that server: any \
                 process on this machine holding its port could send events, which \
                 --forward-to would sign with OPENMAIL_WEBHOOK_SECRET. Use wss://, or add \
                 --allow-plain-ws for a server you started",
                shown_url(&url),
            );
            return 2;
        }
        let _ = writeln!(
            err,
            "listen: warning: {} is plain ws://, so nothing authenticates the server: any \
             process on this machine holding that port can send events, and listen signs \
             them for {}",
            shown_url(&url),
            forward.url,
        );
    }
    let _ = writeln!(
        err,
        "listen: connecting to {}{}; Ctrl-C stops",
        shown_url(&url),
        match &forward {
            Some(forward) => format!(", forwarding each event to {}", forward.url),
            None => String::new(),
        }
    );
    let shared = Arc::new(Shared {
        json: options.json,
        forward,
        in_progress: Mutex::default(),
    });
    let reporter = Arc::clone(&shared);
    let result = client
        .subscribe(
            Subscription::all()
                .inbox_ids(options.inbox_ids)
                .event_types(options.event_types),
        )
        .on_status(move |status: &ClientStatus| reporter.status(status))
        .serve_with_shutdown(Listen { shared }, stop_requested())
        .await;
    match result {
        Ok(()) => {
            let _ = writeln!(err, "listen: stopped");
            0
        }
        Err(error) => {
            let _ = writeln!(err, "listen: {}", chain(&error));
            match error {
                WebSocketError::Unauthorized
                | WebSocketError::InvalidApiKey
                | WebSocketError::InvalidUrl { .. }
                | WebSocketError::InsecureUrl
                | WebSocketError::SubscribeRefused { .. } => 2,
                _ => 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        parse_args(Parser::from_args(args))
    }

    #[test]
    fn options_parse_and_usage_errors_say_what_is_wrong() {
        assert_eq!(
            parse(&[]).unwrap(),
            Some(Options {
                json: false,
                forward_to: None,
                inbox_ids: Vec::new(),
                event_types: Vec::new(),
                resume_file: None,
                allow_remote: false,
                allow_plain_ws: false,
            })
        );
        let options = parse(&["--inbox-id", "inb_a", "--inbox-id=inb_b", "--event", "x"])
            .unwrap()
            .unwrap();
        assert_eq!(options.inbox_ids, ["inb_a", "inb_b"]);
        assert_eq!(options.event_types, ["x"]);
        assert!(
            parse(&["--inbox-id"])
                .unwrap_err()
                .contains("needs an inbox id")
        );
        let options = parse(&["--json", "--forward-to=http://127.0.0.1:3000/webhooks"])
            .unwrap()
            .unwrap();
        assert!(options.json);
        assert_eq!(
            options.forward_to.unwrap(),
            "http://127.0.0.1:3000/webhooks"
        );
        assert_eq!(parse(&["-h"]).unwrap(), None);
        assert!(
            parse(&["--forward-to"])
                .unwrap_err()
                .contains("needs a URL")
        );
        assert!(
            parse(&["--forward-to", "https://x.ngrok.app/webhooks"])
                .unwrap_err()
                .contains("plain HTTP")
        );
        assert!(
            parse(&["--bogus"])
                .unwrap_err()
                .contains("unknown option --bogus")
        );
        assert!(parse(&["--json=yes"]).unwrap_err().contains("no value"));
        assert!(
            parse(&["extra"])
                .unwrap_err()
                .contains("unexpected argument")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_resume_file_is_a_path_whatever_its_bytes() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;

        let path = OsStr::from_bytes(b"resume-\xff");
        let options = parse_args(Parser::from_args([OsStr::new("--resume-file"), path]))
            .unwrap()
            .unwrap();
        assert_eq!(options.resume_file.unwrap(), path);
        let error = parse_args(Parser::from_args([OsStr::new("--event"), path])).unwrap_err();
        assert_eq!(
            error,
            r#"--event needs an event type in UTF-8, not "resume-\xFF""#
        );
    }

    #[test]
    fn json_is_printed_on_one_line_with_the_same_meaning() {
        let body = "{\"event\": \"x\",\n\t\"subject\": \"a\u{202e}b\u{85}\",\r\n\"n\": 1}";
        let line = one_line_json(body.as_bytes());
        assert!(!line.contains(['\n', '\r', '\u{202e}', '\u{85}']), "{line}");
        let before: serde_json::Value = serde_json::from_str(body).unwrap();
        let after: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(before, after);
        let compact = r#"{"event":"message.received","subject":"Café – €"}"#;
        assert_eq!(one_line_json(compact.as_bytes()), compact);
    }

    #[test]
    fn forward_to_stays_on_this_machine_unless_allowed() {
        for local in [
            "http://127.0.0.1:3000/webhooks",
            "http://127.9.9.9/webhooks",
            "http://[::1]:3000/webhooks",
            "http://localhost:3000/webhooks",
            "http://LOCALHOST/webhooks",
        ] {
            assert!(parse(&["--forward-to", local]).is_ok(), "{local}");
        }
        for remote in [
            "http://10.0.0.5:3000/webhooks",
            "http://receiver.example/webhooks",
            "http://localhost.example/webhooks",
            "http://127.0.0.1.example/webhooks",
            "http://0.0.0.0:3000/webhooks",
            "http://[::ffff:127.0.0.1]/webhooks",
        ] {
            let error = parse(&["--forward-to", remote]).unwrap_err();
            assert!(error.contains("--allow-remote"), "{remote}: {error}");
            let options = parse(&["--allow-remote", "--forward-to", remote])
                .unwrap()
                .unwrap();
            assert!(options.allow_remote);
        }
        assert!(
            parse(&["--allow-remote=yes"])
                .unwrap_err()
                .contains("no value")
        );
        // localhost is reached at 127.0.0.1, never looked up; Host stays as written.
        let url: Uri = "http://localhost:3000/webhooks?x=1".parse().unwrap();
        let address = loopback(&url).unwrap();
        assert_eq!(
            pinned(&url, address).unwrap(),
            "http://127.0.0.1:3000/webhooks?x=1"
        );
        let url: Uri = "http://[::1]/webhooks".parse().unwrap();
        assert_eq!(
            pinned(&url, loopback(&url).unwrap()).unwrap(),
            "http://[::1]:80/webhooks"
        );
    }

    #[test]
    fn error_chains_are_printed_escaped() {
        #[derive(Debug)]
        struct Hostile;
        impl std::fmt::Display for Hostile {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bad\nlisten: stopped\u{1b}[2J")
            }
        }
        impl std::error::Error for Hostile {}
        let error = WebSocketError::ResumeStore {
            source: Arc::new(Hostile),
        };
        let line = chain(&error);
        assert!(!line.contains(['\n', '\u{1b}']), "{line}");
        assert!(line.contains(r"bad\nlisten: stopped\u{1b}[2J"), "{line}");
        // A reconnection's chain, as listen prints it.
        let status = ClientStatus::Reconnecting {
            delay: std::time::Duration::from_secs(1),
            reason: error,
        };
        let line = status_line(&status);
        assert!(!line.contains(['\n', '\u{1b}']), "{line}");
        assert_eq!(line.matches("bad").count(), 1, "{line}");
    }

    #[test]
    fn a_token_in_the_url_is_never_printed() {
        assert_eq!(
            shown_url("wss://api.openmail.sh/v1/ws?token=om_secret"),
            "wss://api.openmail.sh/v1/ws"
        );
        assert_eq!(
            shown_url("ws://127.0.0.1:1/v1/ws"),
            "ws://127.0.0.1:1/v1/ws"
        );
    }
}
