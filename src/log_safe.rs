//! Values from a request, made safe to print.
//!
//! Anything a client sent (an `inbox_id`, an `event_id`, a header) can hold newlines, ANSI
//! escapes or megabytes. Printed raw, it forges log lines, rewrites a terminal or fills a
//! disk. Every such value the crate puts in a `Display` or a log goes through [`LogSafe`],
//! and applications printing request values should do the same:
//!
//! ```
//! use openmail_webhooks::LogSafe;
//!
//! let hostile = "evt_1\nhandled message.received evt_2 inbox=inb_b\x1b[2J";
//! let shown = LogSafe::new(hostile).to_string();
//! assert_eq!(shown, r"evt_1\nhandled message.received evt_2 inbox=inb_b\u{1b}[2J");
//! assert!(!shown.contains('\n'));
//!
//! let huge = "x".repeat(1_000_000);
//! assert!(LogSafe::new(&huge).to_string().len() < 200);
//! ```

use std::fmt;

/// How many characters of a value are shown before it is cut short.
const LOG_SAFE_MAX_CHARS: usize = 96;

/// Displays a string from an untrusted source on one line, escaped and cut short.
///
/// - Control characters (newlines, tabs, escape, C1 controls), the backslash, and the
///   Unicode characters that move or reorder text (line and paragraph separators, bidi
///   overrides and isolates) are written as Rust escapes, such as `\n` or `\u{1b}`.
/// - At most 96 characters are shown; a longer value ends with
///   `…(+N bytes)`, where N counts the bytes left out.
#[derive(Clone, Copy)]
pub struct LogSafe<'a>(&'a str);

impl<'a> LogSafe<'a> {
    /// Wraps `value` for display.
    pub fn new(value: &'a str) -> Self {
        Self(value)
    }

    /// Wraps an optional value; `None` shows as `-`.
    pub fn or_dash(value: Option<&'a str>) -> Self {
        Self(value.unwrap_or("-"))
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plain characters go out in runs, one `write_str` each: behind an unbuffered
        // writer such as stderr every call is a system call, and `eprintln!` of an id
        // written a character at a time cost more than verifying the delivery.
        let mut run = 0;
        for (shown, (at, c)) in self.0.char_indices().enumerate() {
            if shown == LOG_SAFE_MAX_CHARS {
                write_run(f, self.0.get(run..at))?;
                let left = self.0.len().saturating_sub(at);
                return write!(f, "…(+{left} bytes)");
            }
            if needs_escape(c) {
                write_run(f, self.0.get(run..at))?;
                run = at.saturating_add(c.len_utf8());
                let escaped = c.escape_debug();
                // `escape_debug` leaves some format characters as they are.
                if escaped.len() == 1 {
                    write!(f, "\\u{{{:x}}}", u32::from(c))?;
                } else {
                    write!(f, "{escaped}")?;
                }
            }
        }
        write_run(f, self.0.get(run..))
    }
}

/// Writes a run of plain characters, if there is one.
fn write_run(f: &mut fmt::Formatter<'_>, run: Option<&str>) -> fmt::Result {
    match run {
        Some(run) if !run.is_empty() => f.write_str(run),
        _ => Ok(()),
    }
}

impl fmt::Debug for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    fn shown(value: &str) -> String {
        LogSafe::new(value).to_string()
    }

    #[test]
    fn plain_values_are_unchanged() {
        assert_eq!(shown("evt_abc123"), "evt_abc123");
        assert_eq!(shown("inb_92ma"), "inb_92ma");
        assert_eq!(
            shown("Ada Lovelace <ada@example.com>"),
            "Ada Lovelace <ada@example.com>"
        );
        assert_eq!(shown("sécret ключ"), "sécret ключ");
    }

    #[test]
    fn line_breaks_escapes_and_reordering_characters_are_escaped() {
        assert_eq!(shown("a\nb\r\tc"), r"a\nb\r\tc");
        assert_eq!(shown("\x1b[31mred"), r"\u{1b}[31mred");
        assert_eq!(shown("back\\slash"), r"back\\slash");
        assert_eq!(shown("a\u{2028}b"), r"a\u{2028}b");
        assert_eq!(shown("a\u{202e}b"), r"a\u{202e}b");
        assert_eq!(shown("a\u{2067}b"), r"a\u{2067}b");
        assert_eq!(shown("\u{85}"), r"\u{85}");
        for value in [
            "\n", "\r", "\x1b", "\u{2028}", "\u{2029}", "\u{202e}", "\x00",
        ] {
            let out = shown(value);
            assert!(
                out.chars().all(|c| !needs_escape(c) || c == '\\'),
                "{out:?}"
            );
        }
    }

    #[test]
    fn long_values_are_cut_and_say_how_much_was_left_out() {
        let value = "é".repeat(LOG_SAFE_MAX_CHARS + 10);
        let out = shown(&value);
        assert!(out.starts_with(&"é".repeat(LOG_SAFE_MAX_CHARS)));
        assert!(out.ends_with("…(+20 bytes)"), "{out}");
        let exact = "x".repeat(LOG_SAFE_MAX_CHARS);
        assert_eq!(shown(&exact), exact);
    }

    /// Counts the writes a `Display` makes, as an unbuffered writer would see them.
    #[derive(Default)]
    struct Writes {
        calls: usize,
        text: String,
    }

    impl fmt::Write for Writes {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.calls += 1;
            self.text.push_str(s);
            Ok(())
        }
    }

    fn writes(value: &str) -> Writes {
        let mut writes = Writes::default();
        write!(writes, "{}", LogSafe::new(value)).unwrap();
        writes
    }

    #[test]
    fn plain_characters_are_written_in_runs() {
        // Behind stderr each write is a system call: an id must not cost one per character.
        let id = writes("evt_7f3a9c21d4");
        assert_eq!((id.calls, id.text.as_str()), (1, "evt_7f3a9c21d4"));
        // A run, the escape, a run.
        let escaped = writes("inb\nx\u{1b}yz");
        assert_eq!(escaped.text, r"inb\nx\u{1b}yz");
        assert_eq!(escaped.calls, 5);
        let long = writes(&"x".repeat(LOG_SAFE_MAX_CHARS + 4));
        assert_eq!(
            long.text,
            format!("{}…(+4 bytes)", "x".repeat(LOG_SAFE_MAX_CHARS))
        );
        // The shown run, then the marker's three pieces.
        assert!(long.calls <= 4, "{} writes", long.calls);
        assert_eq!(writes("").calls, 0);
    }

    #[test]
    fn or_dash_shows_missing_values_as_a_dash() {
        assert_eq!(LogSafe::or_dash(None).to_string(), "-");
        assert_eq!(LogSafe::or_dash(Some("inb\n")).to_string(), r"inb\n");
    }
}
