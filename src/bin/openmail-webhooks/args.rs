//! Reading the command line with lexopt, in the tool's own words.
//!
//! lexopt splits the arguments (`--name value`, `--name=value`, `-h`, `--`) and hands them
//! over as `OsString`s, so an argument that is not UTF-8 never panics (`std::env::args`
//! does): where text is needed, it is a usage error that shows the argument, escaped, and
//! a path (`send`'s `FILE`, `listen --resume-file`) is taken whatever its bytes. The
//! subcommands match the options themselves and word every error here, so that the
//! messages stay the tool's, not lexopt's.

use std::ffi::{OsStr, OsString};

use lexopt::{Arg, Parser};
use openmail_webhooks::LogSafe;

/// The value of `option`: what follows its `=`, or the next argument, whatever it starts
/// with (`--skew -5`).
pub fn value(parser: &mut Parser, option: &str, what: &str) -> Result<OsString, String> {
    parser.value().map_err(|_| format!("{option} needs {what}"))
}

/// The value of `option`, as text.
pub fn text(parser: &mut Parser, option: &str, what: &str) -> Result<String, String> {
    let value = value(parser, option, what)?;
    utf8(value, &format!("{option} needs {what} in UTF-8, not"))
}

/// `argument` as text; otherwise `context` followed by the argument, shown escaped.
pub fn utf8(argument: OsString, context: &str) -> Result<String, String> {
    argument
        .into_string()
        .map_err(|argument| format!("{context} {}", shown(&argument)))
}

/// Refuses a value given to a flag (`--json=yes`).
pub fn no_value(parser: &mut Parser, option: &str) -> Result<(), String> {
    match parser.optional_value() {
        Some(_) => Err(format!("{option} takes no value")),
        None => Ok(()),
    }
}

/// An argument as it is shown in a message: quoted, control characters escaped, and bytes
/// that are not UTF-8 written `\xFF`.
pub fn shown(argument: &OsStr) -> String {
    match argument.to_str() {
        Some(text) => format!("{:?}", LogSafe::new(text)),
        None => format!("{argument:?}"),
    }
}

/// The message for an option the subcommand does not know.
pub fn unknown(option: Arg<'_>) -> String {
    let option = match option {
        Arg::Short(short) => format!("-{short}"),
        Arg::Long(long) => format!("--{long}"),
        Arg::Value(value) => return format!("unexpected argument {}", shown(&value)),
    };
    format!("unknown option {}", LogSafe::new(&option))
}

/// The message for an error lexopt itself found while reading the next argument: the only
/// one it returns there is a value given to a flag that was not read.
pub fn error(error: lexopt::Error) -> String {
    match error {
        lexopt::Error::UnexpectedValue { option, .. } => format!("{option} takes no value"),
        other => other.to_string(),
    }
}
