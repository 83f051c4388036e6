//! `openmail-webhooks`: the developer tool for OpenMail events, with no tunnel.
//!
//! ```text
//! cargo install openmail-webhooks --features cli
//! OPENMAIL_API_KEY=om_... openmail-webhooks listen --forward-to http://127.0.0.1:3000/webhooks
//! openmail-webhooks send [OPTIONS] URL [FILE]
//! ```
//!
//! - `listen` prints OpenMail's events as they happen, received over the account's
//!   WebSocket, and with `--forward-to` POSTs each one to a receiver on this machine, signed
//!   as OpenMail signs webhooks: real events, no public URL, no tunnel.
//! - `send` POSTs a signed delivery to a receiver on this machine, the way OpenMail does.
//!
//! There is no printing receiver of its own: with `listen --forward-to`, real events reach
//! the developer's own receiver, whose verification layer reports a rejection's precise
//! reason through `on_rejection`.
//!
//! Each subcommand's module says what it prints and how it exits.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

mod args;
mod http;
mod listen;
mod resume;
mod send;

use std::io::Write;
use std::process::ExitCode;

/// The help text, also printed after a usage error.
const USAGE: &str = "\
usage: openmail-webhooks COMMAND [OPTIONS]

The developer tool for OpenMail events.

commands:
  listen   print OpenMail's events as they happen, over the account's
           WebSocket, and forward them to a receiver on this machine,
           signed as webhooks (`openmail-webhooks listen --help`)
  send     POST a signed delivery to a receiver on this machine, the way
           OpenMail does (`openmail-webhooks send --help`)

options:
  -h, --help       print this help
  -V, --version    print the version
";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // `args_os`, not `args`, which panics on an argument that is not UTF-8. The command is
    // the first argument, matched whole; what follows it is the subcommand's, for lexopt.
    let mut args = std::env::args_os().skip(1);
    let command = args.next();
    let parser = lexopt::Parser::from_args(args);
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let code = match command
        .as_deref()
        .map(|command| command.to_str().ok_or(command))
    {
        Some(Ok("send")) => {
            send::main(
                parser,
                std::env::var("OPENMAIL_WEBHOOK_SECRET").ok(),
                &mut out,
                &mut err,
            )
            .await
        }
        Some(Ok("listen")) => {
            listen::main(
                parser,
                listen::Environment::from_process(),
                &mut out,
                &mut err,
            )
            .await
        }
        Some(Ok("-h" | "--help" | "help")) => {
            let _ = write!(out, "{USAGE}");
            0
        }
        Some(Ok("-V" | "--version")) => {
            let _ = writeln!(out, "openmail-webhooks {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some(Ok(other)) => {
            let _ = writeln!(
                err,
                "openmail-webhooks: unknown command {}\n\n{USAGE}",
                args::shown(std::ffi::OsStr::new(other))
            );
            2
        }
        Some(Err(other)) => {
            let _ = writeln!(
                err,
                "openmail-webhooks: unknown command {} (not UTF-8)\n\n{USAGE}",
                args::shown(other)
            );
            2
        }
        None => {
            let _ = write!(err, "{USAGE}");
            2
        }
    };
    ExitCode::from(code)
}

/// The system clock in whole Unix seconds (0 for a clock set before 1970, which the
/// receiver will refuse as stale anyway).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}
