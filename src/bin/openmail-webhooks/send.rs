//! `send`: a signed OpenMail delivery to a local receiver, the way OpenMail would send it.
//!
//! ```text
//! OPENMAIL_WEBHOOK_SECRET=whsec_... openmail-webhooks send [OPTIONS] URL [FILE]
//! ```
//!
//! - The secret comes from `OPENMAIL_WEBHOOK_SECRET` only, so it stays out of shell history
//!   and process listings.
//! - The body is `FILE`, sent byte for byte, or, without `FILE`, the realistic sample of the
//!   event type chosen with `--event` ([`Sample`], the one `test_util` gives users' tests).
//! - Each delivery carries `Content-Type: application/json`, a fresh `X-Timestamp`, its
//!   `X-Signature = hex(HMAC-SHA256(secret, X-Timestamp + "." + body))`, and `X-Event-Id`
//!   equal to the body's `event_id` (a fresh `evt_` id when the body has none).
//! - It prints each request's summary, then the response's status and body, to stdout;
//!   with `--print-body`, the body it sends too.
//! - With `--as-openmail`, it behaves as OpenMail's delivery does: each attempt waits at
//!   most 15 s for an answer, a non-`2xx` (or no answer) is tried again after 30 s, 60 s,
//!   2 min and 4 min (five attempts in all; `--speedup N` divides these delays by N), each
//!   attempt is signed afresh, and it stops at the first `2xx`.
//! - Exit status: `0` when every response is a `2xx` (with `--as-openmail`: when one
//!   attempt got a `2xx`); `1` when one is not, or a request could not be sent; `2` for a
//!   usage error or a missing secret.
//!
//! `X-Timestamp` is the clock's second at sending, so two of the `--times` deliveries can
//! share it, as two of OpenMail's can. No two carry the same `X-Signature`, though: the
//! sample's `attempt` changes its body, and a `FILE` delivered again within the same second
//! waits for the next one. A receiver that remembers signatures to refuse replays therefore
//! takes every delivery for a new one, and only the `event_id` says they are one event.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Uri;
use lexopt::{Arg, Parser};
use openmail_webhooks::LogSafe;
use openmail_webhooks::test_util::Sample;

use crate::args;
use crate::http::{ANSWER_KEPT, client, event_id_header, parse_url, post, signed_request};

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
  --as-openmail    deliver as OpenMail does: wait at most 15 s for each answer,
                   try again after a non-2xx or no answer 30 s, 60 s, 2 min and
                   4 min later (five attempts in all), sign each attempt afresh
                   (with the next attempt number in the built-in
                   message.received sample), print each attempt's status, and
                   stop at the first 2xx
  --speedup N      with --as-openmail, divide the delays between attempts by N
                   (10: 3 s, 6 s, 12 s, 24 s); the 15 s per attempt stays
  --print-body     print the body of each delivery after its summary line
  -h, --help       print this help

exit status: 0 when every response is a 2xx (with --as-openmail: when an
attempt got a 2xx); 1 when one is not, or a request could not be sent; 2 for a
usage error or a missing secret.
";

/// OpenMail's attempts at a delivery.
const OPENMAIL_ATTEMPTS: u32 = 5;

/// OpenMail's delays before its second to fifth attempts.
const OPENMAIL_RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(240),
];

/// How much of a response body is printed: what is kept of it.
const RESPONSE_SHOWN: usize = ANSWER_KEPT;

/// What to send, parsed from the command line.
#[derive(Debug, Clone)]
struct Options {
    url: Uri,
    body: BodySource,
    times: u32,
    skew: i64,
    /// `--as-openmail`, with the `--speedup` factor (1 without it).
    as_openmail: Option<u32>,
    print_body: bool,
}

/// Where the body comes from.
#[derive(Debug, Clone)]
enum BodySource {
    /// A file, sent byte for byte.
    File(PathBuf),
    /// The sample, its `event_id` already set, and the first delivery's `attempt`.
    Sample {
        sample: Sample,
        event_id: String,
        attempt: u32,
    },
}

/// What the command line asked for.
#[allow(clippy::large_enum_variant)] // one per run
enum Command {
    Help,
    Send(Options),
}

/// Parses the arguments that follow `send`. The error says what is wrong.
fn parse_args(mut parser: Parser) -> Result<Command, String> {
    let mut positional = Vec::new();
    let mut event_type = None;
    let mut event_id = None;
    let mut inbox_id = None;
    let mut attempt = None;
    let mut times = None;
    let mut skew = 0;
    let mut as_openmail = false;
    let mut speedup = None;
    let mut print_body = false;
    while let Some(arg) = parser.next().map_err(args::error)? {
        match arg {
            Arg::Short('h') | Arg::Long("help") => return Ok(Command::Help),
            Arg::Long("event") => {
                event_type = Some(args::text(&mut parser, "--event", "an event type")?);
            }
            Arg::Long("event-id") => {
                event_id = Some(args::text(&mut parser, "--event-id", "an id")?)
            }
            Arg::Long("inbox-id") => {
                inbox_id = Some(args::text(&mut parser, "--inbox-id", "an id")?)
            }
            Arg::Long("attempt") => attempt = Some(number(&mut parser, "--attempt", 1)?),
            Arg::Long("times") => times = Some(number(&mut parser, "--times", 1)?),
            Arg::Long("as-openmail") => {
                args::no_value(&mut parser, "--as-openmail")?;
                as_openmail = true;
            }
            Arg::Long("print-body") => {
                args::no_value(&mut parser, "--print-body")?;
                print_body = true;
            }
            Arg::Long("speedup") => speedup = Some(number(&mut parser, "--speedup", 1)?),
            Arg::Long("skew") => {
                let seconds = args::text(&mut parser, "--skew", "a number of seconds")?;
                skew = seconds.parse().map_err(|_| {
                    format!("--skew takes whole seconds, such as -400 or 400, not {seconds:?}")
                })?;
            }
            Arg::Value(value) => positional.push(value),
            option => return Err(args::unknown(option)),
        }
    }

    if as_openmail && times.is_some() {
        return Err(
            "--times and --as-openmail don't go together: --as-openmail delivers until the \
             first 2xx, at most five attempts, as OpenMail does"
                .to_owned(),
        );
    }
    if speedup.is_some() && !as_openmail {
        return Err("--speedup scales --as-openmail's delays; add --as-openmail".to_owned());
    }
    let as_openmail = as_openmail.then(|| speedup.unwrap_or(1));
    let times = match as_openmail {
        Some(_) => OPENMAIL_ATTEMPTS,
        None => times.unwrap_or(1),
    };

    let mut positional = positional.into_iter();
    let url = args::utf8(
        positional.next().ok_or("URL is missing")?,
        "URL is not UTF-8:",
    )?;
    let url = parse_url(&url, "send")?;
    let file = positional.next();
    if let Some(extra) = positional.next() {
        return Err(format!(
            "unexpected argument {}: give one URL and at most one FILE",
            args::shown(&extra)
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
            let Some(mut sample) = Sample::of_type(&event_type) else {
                return Err(format!(
                    "unknown event type {event_type:?}; choose one of {}",
                    Sample::EVENT_TYPES.join(", ")
                ));
            };
            if attempt.is_some() && event_type != "message.received" {
                return Err(format!(
                    "--attempt applies to message.received only: {event_type} carries no attempt"
                ));
            }
            if let Some(inbox_id) = inbox_id {
                if event_type.starts_with("pod.") {
                    return Err(format!("{event_type} carries no inbox_id (it is null)"));
                }
                sample = sample.inbox_id(inbox_id);
            }
            let event_id = event_id.unwrap_or_else(fresh_event_id);
            BodySource::Sample {
                sample: sample.event_id(event_id.clone()),
                event_id,
                attempt: attempt.unwrap_or(1),
            }
        }
    };
    Ok(Command::Send(Options {
        url,
        body,
        times,
        skew,
        as_openmail,
        print_body,
    }))
}

/// The value of `option`, a whole number from `at_least` up.
fn number(parser: &mut Parser, option: &str, at_least: u32) -> Result<u32, String> {
    let value = args::text(parser, option, "a number")?;
    match value.parse::<u32>() {
        Ok(number) if number >= at_least => Ok(number),
        _ => Err(format!(
            "{option} takes a whole number from {at_least} up, not {value:?}"
        )),
    }
}

/// The body's `event_id`, when it is a JSON object with a string one.
fn event_id_of(body: &[u8]) -> Option<String> {
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
fn fresh_event_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("evt_local_{:x}{:x}", nanos, std::process::id())
}

/// Waits for the system clock's next second.
async fn next_second() {
    let into_second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let left = 1_000_000_000_u32.saturating_sub(into_second);
    tokio::time::sleep(Duration::from_nanos(u64::from(left))).await;
}

/// Delivers the event `options.times` times, printing each exchange to `out`. Returns
/// whether every answer was a `2xx`.
///
/// Every delivery is sent whatever the previous answer was, as duplicate deliveries arrive
/// after a lost `2xx` too. Fails only when a request cannot be built, sent or answered.
///
/// With `--as-openmail`, attempts follow OpenMail's schedule until the first `2xx`: a
/// request that cannot be sent or answered is a failed attempt, printed, not the end.
/// Returns whether an attempt got a `2xx`.
async fn run(options: &Options, secret: &str, out: &mut impl Write) -> Result<bool, String> {
    let file = match &options.body {
        BodySource::File(path) => {
            Some(Bytes::from(std::fs::read(path).map_err(|error| {
                format!("cannot read {}: {error}", path.display())
            })?))
        }
        BodySource::Sample { .. } => None,
    };
    let event_id = match (&options.body, &file) {
        (BodySource::Sample { event_id, .. }, _) => event_id.clone(),
        (BodySource::File(_), bytes) => {
            bytes.as_deref().and_then(event_id_of).unwrap_or_else(|| {
                let fresh = fresh_event_id();
                let _ = writeln!(
                    out,
                    "note: FILE has no string event_id; X-Event-Id is {fresh} for every delivery"
                );
                fresh
            })
        }
    };
    if event_id_header(&event_id).is_none() {
        let _ = writeln!(
            out,
            "note: the event_id {} cannot be an HTTP header value; X-Event-Id is left out, \
             and the body still carries it",
            LogSafe::new(&event_id)
        );
    }

    let client = client();
    let mut all_success = true;
    let mut previous: Option<(i64, Bytes)> = None;
    for delivery in 0..options.times {
        if let (Some(speedup), Some(index)) = (options.as_openmail, delivery.checked_sub(1)) {
            let delay = openmail_delay(index, speedup);
            let _ = writeln!(
                out,
                "next attempt in {} (OpenMail waits {} s)",
                seconds(delay),
                openmail_delay(index, 1).as_secs()
            );
            tokio::time::sleep(delay).await;
        }
        let mut now = crate::unix_now();
        let mut body = body_at(options, &file, delivery, now)?;
        // The same body in the same second would carry the same signature as the last one.
        if previous.as_ref() == Some(&(now, body.clone())) {
            next_second().await;
            now = crate::unix_now();
            body = body_at(options, &file, delivery, now)?;
        }
        let timestamp = now.saturating_add(options.skew);
        let request = signed_request(&options.url, secret, timestamp, &event_id, body.clone())?;
        let _ = writeln!(
            out,
            "> POST {} ({} bytes, X-Event-Id {}, {} {} of {}, X-Timestamp {timestamp}{})",
            options.url,
            body.len(),
            LogSafe::new(&event_id),
            match options.as_openmail {
                Some(_) => "attempt",
                None => "delivery",
            },
            delivery.saturating_add(1),
            options.times,
            match options.skew {
                0 => String::new(),
                skew => format!(", skewed {skew:+} s"),
            },
        );
        if options.print_body {
            let _ = writeln!(out, "{}", printable(&body, body.len() as u64));
        }
        let answer = match (post(&client, request).await, options.as_openmail) {
            (Ok(answer), _) => answer,
            (Err(message), None) => return Err(message),
            (Err(message), Some(_)) => {
                let _ = writeln!(out, "< no answer: {message}");
                previous = Some((now, body));
                continue;
            }
        };
        let _ = writeln!(out, "< {}", answer.status);
        if answer.length > 0 {
            let _ = writeln!(out, "{}", printable(&answer.body, answer.length));
        }
        previous = Some((now, body));
        if options.as_openmail.is_some() {
            if answer.status.is_success() {
                return Ok(true);
            }
            continue;
        }
        all_success &= answer.status.is_success();
    }
    if options.as_openmail.is_some() {
        let _ = writeln!(
            out,
            "gave up after {} attempts without a 2xx: OpenMail marks the event failed, and \
             the receiver never gets it",
            options.times
        );
        return Ok(false);
    }
    Ok(all_success)
}

/// OpenMail's delay before retry number `index` (from 0), divided by `speedup`.
fn openmail_delay(index: u32, speedup: u32) -> Duration {
    let delay = usize::try_from(index)
        .ok()
        .and_then(|index| OPENMAIL_RETRY_DELAYS.get(index))
        .copied()
        .unwrap_or(Duration::ZERO);
    delay.checked_div(speedup).unwrap_or(delay)
}

/// A delay as people read it: `30 s`, `3 s`, `0.3 s`.
fn seconds(delay: Duration) -> String {
    let text = format!("{:.3}", delay.as_secs_f64());
    format!("{} s", text.trim_end_matches('0').trim_end_matches('.'))
}

/// The body of delivery number `delivery` (from 0), sent at `now`.
fn body_at(
    options: &Options,
    file: &Option<Bytes>,
    delivery: u32,
    now: i64,
) -> Result<Bytes, String> {
    match (&options.body, file) {
        (
            BodySource::Sample {
                sample, attempt, ..
            },
            _,
        ) => {
            let attempt = attempt.saturating_add(delivery);
            Ok(Bytes::from(
                sample.clone().attempt(attempt).at(now).to_json(),
            ))
        }
        (_, Some(bytes)) => Ok(bytes.clone()),
        (_, None) => Err("no body to send".to_owned()),
    }
}

/// A body as text for a terminal: line ends and tabs kept, other control characters
/// (terminal escapes, a lone carriage return) written as escapes, and cut short past
/// [`RESPONSE_SHOWN`] bytes. `length` is the whole body's, of which `response` may be
/// only the start.
fn printable(response: &[u8], length: u64) -> String {
    let shown = response.get(..RESPONSE_SHOWN).unwrap_or(response);
    let text = String::from_utf8_lossy(shown);
    let mut printed = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let line_end = c == '\r' && chars.peek() == Some(&'\n');
        if c.is_control() && c != '\n' && c != '\t' && !line_end {
            printed.extend(c.escape_unicode());
        } else {
            printed.push(c);
        }
    }
    let left = length.saturating_sub(shown.len() as u64);
    if left > 0 {
        printed.push_str(&format!("…(+{left} bytes)"));
    }
    printed
}

/// `send`, from the arguments after its name to the exit code. Results go to `out`,
/// problems to `err`.
pub async fn main(
    parser: Parser,
    secret: Option<String>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let options = match parse_args(parser) {
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
        Ok(true) => 0,
        Ok(false) => 1,
        Err(message) => {
            let _ = writeln!(err, "send: {message}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn error(args: &[&str]) -> String {
        match parse_args(Parser::from_args(args)) {
            Err(message) => message,
            Ok(_) => panic!("{args:?} should be refused"),
        }
    }

    fn options(args: &[&str]) -> Options {
        match parse_args(Parser::from_args(args)).unwrap() {
            Command::Send(options) => options,
            Command::Help => panic!("{args:?} asked for help"),
        }
    }

    const URL: &str = "http://127.0.0.1:3000/webhooks";

    #[test]
    fn usage_errors_say_what_is_wrong() {
        assert!(error(&["--event", "message.sent", URL]).contains("unknown event type"));
        assert!(error(&["--event", "inbox.suspended", URL, "body.json"]).contains("byte for byte"));
        assert!(error(&["--attempt", "2", URL, "body.json"]).contains("byte for byte"));
        assert!(
            error(&["--event", "inbox.suspended", "--attempt", "2", URL])
                .contains("carries no attempt")
        );
        assert!(
            error(&["--event", "pod.suspended", "--inbox-id", "inb_1", URL]).contains("inbox_id")
        );
        assert!(error(&["--times", "0", URL]).contains("whole number from 1"));
        assert!(error(&["--skew", "soon", URL]).contains("whole seconds"));
        assert!(error(&["--bogus", URL]).contains("unknown option --bogus"));
        assert!(error(&["https://abc.ngrok.app/webhooks"]).contains("plain HTTP"));
        assert!(error(&["127.0.0.1:3000"]).contains("http://"));
        assert!(error(&[URL, "a.json", "b.json"]).contains("unexpected argument"));
        assert!(error(&["--event"]).contains("--event needs an event type"));
    }

    #[test]
    fn options_take_inline_values_and_shape_the_sample() {
        let parsed = options(&["--times=3", "--skew", "-5", "--event=pod.reactivated", URL]);
        assert_eq!(parsed.times, 3);
        assert_eq!(parsed.skew, -5);
        let BodySource::Sample {
            sample,
            event_id,
            attempt,
        } = parsed.body
        else {
            panic!("a sample")
        };
        assert_eq!(sample.event_type(), "pod.reactivated");
        assert!(event_id.starts_with("evt_local_"), "{event_id}");
        assert_eq!(attempt, 1);

        let parsed = options(&["--event-id", "evt_x", "--inbox-id", "inb_y", URL]);
        let BodySource::Sample { sample, .. } = parsed.body else {
            panic!("a sample")
        };
        let json = sample.to_json();
        assert!(json.contains(r#""event_id":"evt_x""#), "{json}");
        assert!(json.contains(r#""inbox_id":"inb_y""#), "{json}");
    }

    #[test]
    fn flags_take_no_value_and_a_double_dash_ends_the_options() {
        assert!(error(&["--as-openmail=yes", URL]).contains("--as-openmail takes no value"));
        assert!(error(&["--print-body=1", URL]).contains("--print-body takes no value"));
        assert!(error(&["--speedup", "10", URL]).contains("add --as-openmail"));
        assert!(error(&["--as-openmail", "--times", "2", URL]).contains("don't go together"));
        let parsed = options(&["--as-openmail", "--speedup=10", "--print-body", URL]);
        assert_eq!(parsed.as_openmail, Some(10));
        assert_eq!(parsed.times, OPENMAIL_ATTEMPTS);
        assert!(parsed.print_body);
        let parsed = options(&[URL, "--", "--print-body"]);
        assert!(!parsed.print_body);
        assert!(matches!(parsed.body, BodySource::File(path) if path == Path::new("--print-body")));
    }

    #[test]
    fn responses_are_printed_without_terminal_escapes() {
        let shown = |body: &[u8]| printable(body, body.len() as u64);
        assert_eq!(shown(b"{\"ok\":true}\n"), "{\"ok\":true}\n");
        assert_eq!(shown(b"a\x1b[2Jb\tc"), "a\\u{1b}[2Jb\tc");
        assert_eq!(shown(b"a\r\nb\rc"), "a\r\nb\\u{d}c");
        let huge = vec![b'x'; RESPONSE_SHOWN + 10];
        assert!(shown(&huge).ends_with("…(+10 bytes)"));
        // Only the kept start of a longer answer: the rest is counted.
        assert!(
            printable(&huge[..RESPONSE_SHOWN], 1 << 30).ends_with(&format!(
                "…(+{} bytes)",
                (1u64 << 30) - RESPONSE_SHOWN as u64
            ))
        );
    }
}
