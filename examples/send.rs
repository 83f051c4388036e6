//! Sends a signed OpenMail delivery to a receiver, the way OpenMail would. No tunnel needed.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... cargo run --example send -- [OPTIONS] URL [FILE]
//! ```
//!
//! - The secret comes from `OPENMAIL_WEBHOOK_SECRET` only, so it stays out of shell history
//!   and process listings.
//! - The body is `FILE`, sent byte for byte, or, without `FILE`, a built-in realistic sample
//!   of the event type chosen with `--event` (every documented type, and the dashboard's
//!   test event).
//! - Each delivery carries `Content-Type: application/json`, a fresh `X-Timestamp`, its
//!   `X-Signature = hex(HMAC-SHA256(secret, X-Timestamp + "." + body))`, and `X-Event-Id`
//!   equal to the body's `event_id` (a fresh `evt_` id when the body has none).
//! - It prints each request's summary, then the response's status and body, to stdout.
//! - Exit status: `0` when every response is a `2xx`; `1` when one is not, or a request
//!   could not be sent; `2` for a usage error or a missing secret.
//!
//! `URL` is plain `http://`: point it at the receiver's local port, not at a tunnel.
//! Run with `--help` for the options.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use openmail_webhooks::{sign, Clock, SystemClock};

/// The help text, also printed after a usage error.
pub const USAGE: &str = "\
usage: send [OPTIONS] URL [FILE]

POSTs a signed OpenMail delivery to URL (plain http://), the way OpenMail does.
The body is FILE, sent byte for byte, or a built-in sample.
The secret is read from OPENMAIL_WEBHOOK_SECRET.

options (for the built-in sample only):
  --event TYPE     the event type (default message.received), one of:
                   message.received, inbox.suspended, inbox.reactivated,
                   pod.suspended, pod.reactivated, setup.test (the dashboard's
                   test event)
  --event-id ID    the event_id (default: a fresh evt_ id on every run)
  --inbox-id ID    the inbox_id (default inb_92ma; pod events have none)
  --attempt N      the `attempt` of the first delivery (default 1);
                   message.received only, the other events carry no attempt

options (for any body):
  --times N        deliver the same event N times (default 1), as OpenMail's
                   retries and duplicate deliveries do: same event_id, a fresh
                   X-Timestamp and X-Signature each time, and the next attempt
                   number in the built-in message.received sample
  --skew SECONDS   add SECONDS to X-Timestamp (negative: into the past), to see
                   what a receiver with a skewed clock answers
  -h, --help       print this help

exit status: 0 when every response is a 2xx; 1 when one is not, or a
request could not be sent; 2 for a usage error or a missing secret.
";

/// The event types the built-in sample can take: the documented ones, and the test event
/// the dashboard's "Test webhook" button sends.
pub const EVENT_TYPES: [&str; 6] = [
    "message.received",
    "inbox.suspended",
    "inbox.reactivated",
    "pod.suspended",
    "pod.reactivated",
    "setup.test",
];

/// How long OpenMail waits for a `2xx` before it counts a delivery as failed.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// What to send, parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Where to POST.
    pub url: Uri,
    /// The body.
    pub body: BodySource,
    /// How many times to deliver the event.
    pub times: u32,
    /// Seconds added to `X-Timestamp`.
    pub skew: i64,
}

/// Where the body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodySource {
    /// A file, sent byte for byte.
    File(PathBuf),
    /// The built-in sample.
    Sample(Sample),
}

/// The built-in sample's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// One of [`EVENT_TYPES`].
    pub event_type: String,
    /// The `event_id`; a fresh one when `None`.
    pub event_id: Option<String>,
    /// The `inbox_id`.
    pub inbox_id: String,
    /// The first delivery's `attempt`.
    pub attempt: u32,
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the help.
    Help,
    /// Send deliveries.
    Send(Options),
}

/// Parses the arguments that follow the program name. The error says what is wrong.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mut positional = Vec::new();
    let mut event_type = None;
    let mut event_id = None;
    let mut inbox_id = None;
    let mut attempt = None;
    let mut times = 1;
    let mut skew = 0;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| match inline {
            Some(value) => Ok(value.to_owned()),
            None => args.next().ok_or(format!("{name} needs {what}")),
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--event" => event_type = Some(value("an event type")?),
            "--event-id" => event_id = Some(value("an id")?),
            "--inbox-id" => inbox_id = Some(value("an id")?),
            "--attempt" => attempt = Some(number(&name, &value("a number")?, 1)?),
            "--times" => times = number(&name, &value("a number")?, 1)?,
            "--skew" => {
                let seconds = value("a number of seconds")?;
                skew = seconds.parse().map_err(|_| {
                    format!("--skew takes whole seconds, such as -400 or 400, not {seconds:?}")
                })?;
            }
            "--" => positional.extend(args.by_ref()),
            option if option.starts_with('-') && option.len() > 1 => {
                return Err(format!("unknown option {option}"));
            }
            _ => positional.push(arg),
        }
    }

    let mut positional = positional.into_iter();
    let url = parse_url(&positional.next().ok_or("URL is missing")?)?;
    let file = positional.next();
    if let Some(extra) = positional.next() {
        return Err(format!(
            "unexpected argument {extra:?}: give one URL and at most one FILE"
        ));
    }

    let body = match file {
        Some(file) => {
            let shaping = [
                ("--event", event_type.is_some()),
                ("--event-id", event_id.is_some()),
                ("--inbox-id", inbox_id.is_some()),
                ("--attempt", attempt.is_some()),
            ];
            if let Some((option, _)) = shaping.iter().find(|(_, given)| *given) {
                return Err(format!(
                    "{option} shapes the built-in sample, but FILE is sent byte for byte; \
                     edit the file instead"
                ));
            }
            BodySource::File(PathBuf::from(file))
        }
        None => {
            let event_type = event_type.unwrap_or_else(|| "message.received".to_owned());
            if !EVENT_TYPES.contains(&event_type.as_str()) {
                return Err(format!(
                    "unknown event type {event_type:?}; choose one of {}",
                    EVENT_TYPES.join(", ")
                ));
            }
            if attempt.is_some() && event_type != "message.received" {
                return Err(format!(
                    "--attempt applies to message.received only: {event_type} carries no attempt"
                ));
            }
            if inbox_id.is_some() && event_type.starts_with("pod.") {
                return Err(format!("{event_type} carries no inbox_id (it is null)"));
            }
            BodySource::Sample(Sample {
                event_type,
                event_id,
                inbox_id: inbox_id.unwrap_or_else(|| "inb_92ma".to_owned()),
                attempt: attempt.unwrap_or(1),
            })
        }
    };
    Ok(Command::Send(Options {
        url,
        body,
        times,
        skew,
    }))
}

fn number(option: &str, value: &str, at_least: u32) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(number) if number >= at_least => Ok(number),
        _ => Err(format!(
            "{option} takes a whole number from {at_least} up, not {value:?}"
        )),
    }
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("{url:?} is not a URL: {error}"))?;
    match uri.scheme_str() {
        Some("http") if uri.authority().is_some() => Ok(uri),
        Some("https") => Err(format!(
            "{url} is https; send speaks plain HTTP, for a receiver on this machine. \
             Point it at the receiver's local port (http://127.0.0.1:3000/webhooks) \
             rather than at the tunnel"
        )),
        _ => Err(format!(
            "{url:?} is not an http:// URL with a host, such as http://127.0.0.1:3000/webhooks"
        )),
    }
}

/// The built-in sample's body for delivery number `attempt`, delivered at `now` (Unix
/// seconds). Compact JSON, as OpenMail sends it, in the documented field order; the
/// `message.received` sample has an attachment (camelCase keys) and non-ASCII text.
pub fn sample_body(sample: &Sample, event_id: &str, attempt: u32, now: i64) -> String {
    let string = |value: &str| serde_json::Value::from(value).to_string();
    let occurred_at = string(&rfc3339(now.saturating_sub(1)));
    let delivered_at = string(&rfc3339(now));
    let event = string(&sample.event_type);
    let event_id = string(event_id);
    let inbox_id = string(&sample.inbox_id);
    match sample.event_type.as_str() {
        "message.received" => format!(
            concat!(
                r#"{{"event":{event},"event_id":{event_id},"occurred_at":{occurred_at},"#,
                r#""delivered_at":{delivered_at},"attempt":{attempt},"inbox_id":{inbox_id},"#,
                r#""thread_id":"thr_7f3a9c","message":{{"id":"msg_4c8d5e6f","#,
                r#""rfc_message_id":"<CAF=3xq9.7d1@mail.example.com>","#,
                r#""from":"Ada Lovelace <ada@example.com>","to":"agent@yourdomain.com","#,
                r#""cc":["carol@example.com"],"subject":"Invoice #2847 – March","#,
                r#""body_text":"Hi,\n\nThe March invoice is attached: €1,280.00, due on the 30th.\n\nAda","#,
                r#""attachments":[{{"filename":"invoice-2847.pdf","contentType":"application/pdf","#,
                r#""sizeBytes":48213,"#,
                r#""url":"https://api.openmail.sh/v1/attachments/msg_4c8d5e6f/invoice-2847.pdf","#,
                r#""parsedText":"Invoice #2847\nAmount due: €1,280.00","extractionMethod":"pdf"}}],"#,
                r#""received_at":{occurred_at}}}}}"#,
            ),
            event = event,
            event_id = event_id,
            occurred_at = occurred_at,
            delivered_at = delivered_at,
            attempt = attempt,
            inbox_id = inbox_id,
        ),
        "inbox.suspended" | "inbox.reactivated" => format!(
            concat!(
                r#"{{"event":{},"event_id":{},"occurred_at":{},"inbox_id":{},"#,
                r#""inbox_address":"agent@yourdomain.com","pod_id":"pod_abc","reason":{}}}"#,
            ),
            event,
            event_id,
            occurred_at,
            inbox_id,
            if sample.event_type == "inbox.suspended" {
                r#""high_bounce_rate""#
            } else {
                "null"
            },
        ),
        "pod.suspended" | "pod.reactivated" => format!(
            concat!(
                r#"{{"event":{},"event_id":{},"occurred_at":{},"inbox_id":null,"#,
                r#""inbox_address":null,"pod_id":"pod_abc","reason":{}}}"#,
            ),
            event,
            event_id,
            occurred_at,
            if sample.event_type == "pod.suspended" {
                r#""high_complaint_rate""#
            } else {
                "null"
            },
        ),
        // The test event's body is undocumented; this is the envelope every event shares.
        _ => format!(
            r#"{{"event":{event},"event_id":{event_id},"occurred_at":{occurred_at},"inbox_id":{inbox_id}}}"#
        ),
    }
}

/// `unix` seconds as RFC 3339 UTC with milliseconds, as OpenMail writes times.
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm, for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

/// The body's `event_id`, when it is a JSON object with a string one.
pub fn event_id_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct EventId {
        event_id: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<EventId>(body).ok()?.event_id? {
        serde_json::Value::String(id) => Some(id),
        _ => None,
    }
}

/// A fresh event id, different on every run.
pub fn fresh_event_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("evt_local_{:x}{:x}", nanos, std::process::id())
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

/// An HTTP client for plain-HTTP receivers.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
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

/// One delivery and its answer.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The `attempt` number (1-based count of deliveries of this event in this run, offset by
    /// `--attempt`).
    pub attempt: u32,
    /// The `X-Event-Id` sent.
    pub event_id: String,
    /// The `X-Timestamp` sent.
    pub timestamp: i64,
    /// The body sent.
    pub sent: Bytes,
    /// The answer's status.
    pub status: StatusCode,
    /// The answer's body.
    pub response: Bytes,
}

/// Delivers the event `options.times` times, printing each exchange to `out`.
///
/// Every delivery is sent whatever the previous answer was, as duplicate deliveries arrive
/// after a lost `2xx` too. Fails only when a request cannot be built, sent or answered.
pub async fn run(
    options: &Options,
    secret: &str,
    out: &mut impl Write,
) -> Result<Vec<Outcome>, String> {
    let file = match &options.body {
        BodySource::File(path) => {
            Some(Bytes::from(std::fs::read(path).map_err(|error| {
                format!("cannot read {}: {error}", path.display())
            })?))
        }
        BodySource::Sample(_) => None,
    };
    let event_id = match (&options.body, &file) {
        (BodySource::Sample(sample), _) => sample.event_id.clone(),
        (BodySource::File(_), Some(bytes)) => event_id_of(bytes),
        (BodySource::File(_), None) => None,
    };
    let event_id = event_id.unwrap_or_else(|| {
        let fresh = fresh_event_id();
        if file.is_some() {
            let _ = writeln!(
                out,
                "note: FILE has no string event_id; X-Event-Id is {fresh} for every delivery"
            );
        }
        fresh
    });

    let client = client();
    let mut outcomes = Vec::new();
    for delivery in 0..options.times {
        let now = SystemClock.now();
        let (body, attempt) = match (&options.body, &file) {
            (BodySource::Sample(sample), _) => {
                let attempt = sample.attempt.saturating_add(delivery);
                let body = sample_body(sample, &event_id, attempt, now);
                (Bytes::from(body), attempt)
            }
            (_, Some(bytes)) => (bytes.clone(), delivery.saturating_add(1)),
            (_, None) => return Err("no body to send".to_owned()),
        };
        let timestamp = now.saturating_add(options.skew);
        let request = signed_request(&options.url, secret, timestamp, &event_id, body.clone())?;
        let _ = writeln!(
            out,
            "> POST {} ({} bytes, X-Event-Id {event_id}, delivery {} of {}, X-Timestamp {timestamp}{})",
            options.url,
            body.len(),
            delivery.saturating_add(1),
            options.times,
            match options.skew {
                0 => String::new(),
                skew => format!(", skewed {skew:+} s"),
            },
        );
        let (status, response) = post(&client, request).await?;
        let _ = writeln!(out, "< {status}");
        if !response.is_empty() {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&response));
        }
        outcomes.push(Outcome {
            attempt,
            event_id: event_id.clone(),
            timestamp,
            sent: body,
            status,
            response,
        });
    }
    Ok(outcomes)
}

/// The whole program: arguments (without the program name) and the secret in, exit code
/// out. Results go to `out`, problems to `err`.
pub async fn cli(
    args: impl IntoIterator<Item = String>,
    secret: Option<String>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let options = match parse_args(args) {
        Ok(Command::Help) => {
            let _ = write!(out, "{USAGE}");
            return 0;
        }
        Ok(Command::Send(options)) => options,
        Err(message) => {
            let _ = writeln!(err, "send: {message}\n\n{USAGE}");
            return 2;
        }
    };
    let Some(secret) = secret.filter(|secret| !secret.is_empty()) else {
        let _ = writeln!(
            err,
            "send: OPENMAIL_WEBHOOK_SECRET is not set; set it to the receiver's webhook secret \
             (the one the OpenMail dashboard shows, whsec_ prefix included)"
        );
        return 2;
    };
    match run(&options, &secret, out).await {
        Ok(outcomes) if outcomes.iter().all(|outcome| outcome.status.is_success()) => 0,
        Ok(_) => 1,
        Err(message) => {
            let _ = writeln!(err, "send: {message}");
            1
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let code = cli(
        std::env::args().skip(1),
        std::env::var("OPENMAIL_WEBHOOK_SECRET").ok(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )
    .await;
    ExitCode::from(code)
}
