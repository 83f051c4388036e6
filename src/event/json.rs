//! The strict JSON reader under the event parse: it checks every byte of the body and
//! records where strings are, without copying them.
//!
//! It accepts exactly what `serde_json::from_slice::<serde_json::Value>` accepts: UTF-8
//! throughout, escapes that decode (a `\u` surrogate must be half of a pair), numbers whose
//! value is a finite `f64`, no trailing commas or characters, and at most
//! [`MAX_DEPTH`] nested arrays and objects, which is serde_json's own limit. So whatever
//! the parse accepts, `serde_json` can read again, and a field the model never looks at
//! is held to the same rules as one it does.
//!
//! Strings are [`Span`]s: offsets into the body and whether the text holds escapes. The
//! model decodes a span only when it is read, and borrows it from the body when it holds
//! no escapes. The scan skips the plain bytes of a string eight at a time, the way
//! serde_json's own skim does.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU64;

/// The deepest nesting of arrays and objects accepted, the top-level object included:
/// serde_json's recursion limit, so that a body this reader accepts always parses into a
/// `serde_json::Value`.
pub(super) const MAX_DEPTH: u32 = 127;

/// The largest body the reader indexes: 2 GiB, so that a span fits one word.
pub(super) const MAX_BODY: usize = (1 << 31) - 1;

/// Where a string is, packed in one word: two 31-bit offsets and a flag. Small and `Copy`,
/// so that indexing a field is one store and moving an index is cheap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Span(NonZeroU64);

const OFFSET: u64 = (1 << 31) - 1;
const PRESENT: u64 = 1 << 62;
const FLAG: u64 = 1 << 63;

impl Span {
    /// No text at all.
    pub(super) const EMPTY: Self = match NonZeroU64::new(PRESENT) {
        Some(word) => Self(word),
        None => Self(NonZeroU64::MIN),
    };

    /// Offsets must be at most [`MAX_BODY`]; the reader refuses longer bodies.
    #[inline]
    fn new(start: usize, end: usize, flag: bool) -> Self {
        // Both offsets are below 2^31 (the reader refuses longer bodies), so they don't
        // overlap.
        let word = start as u64 | (end as u64) << 31 | PRESENT | u64::from(flag) << 63;
        Self(NonZeroU64::new(word).unwrap_or(NonZeroU64::MIN))
    }

    #[inline]
    fn start(self) -> usize {
        (self.0.get() & OFFSET) as usize
    }

    #[inline]
    fn end(self) -> usize {
        (self.0.get() >> 31 & OFFSET) as usize
    }

    #[inline]
    fn flag(self) -> bool {
        self.0.get() & FLAG != 0
    }

    /// The bytes between the quotes, escapes undecoded.
    #[inline]
    pub(super) fn raw(self, body: &[u8]) -> &[u8] {
        body.get(self.start()..self.end()).unwrap_or_default()
    }

    /// Whether the text holds escapes, so that decoding it copies.
    #[inline]
    pub(super) fn escaped(self) -> bool {
        self.flag()
    }

    /// The text, borrowed from the body unless it holds escapes.
    ///
    /// The reader has checked the body, so the text is UTF-8 and every escape decodes; were
    /// it not (a span used with the wrong body), the result would be empty or hold U+FFFD,
    /// never a panic.
    pub(super) fn decode(self, body: &[u8]) -> Cow<'_, str> {
        let text = std::str::from_utf8(self.raw(body)).unwrap_or_default();
        if self.escaped() {
            Cow::Owned(unescape(text))
        } else {
            Cow::Borrowed(text)
        }
    }

    /// Offset of the first byte after the closing quote.
    #[inline]
    pub(super) fn after(self) -> usize {
        self.end().saturating_add(1)
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start(), self.end())?;
        if self.flag() {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// A short string field (an id, an address, a subject), decoded as it is read. Where the
/// JSON holds no escapes it is a span of the body, so reading it copies nothing; otherwise
/// its decoded text is appended to a string kept next to the body (`decoded`), and it is
/// a span of that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Short(Span);

impl Default for Short {
    /// The empty string.
    fn default() -> Self {
        Self(Span::EMPTY)
    }
}

impl Short {
    #[inline]
    pub(super) fn new(span: Span, body: &[u8], decoded: &mut String) -> Self {
        if !span.escaped() {
            return Self(span);
        }
        Self::decode(span, body, decoded)
    }

    #[cold]
    fn decode(span: Span, body: &[u8], decoded: &mut String) -> Self {
        let start = decoded.len();
        unescape_into(
            std::str::from_utf8(span.raw(body)).unwrap_or_default(),
            decoded,
        );
        Self(Span::new(start, decoded.len(), true))
    }

    /// The text, from the body and the decoded strings it was read with.
    #[inline]
    pub(super) fn get<'a>(self, body: &'a [u8], decoded: &'a str) -> &'a str {
        if self.0.flag() {
            decoded
                .get(self.0.start()..self.0.end())
                .unwrap_or_default()
        } else {
            std::str::from_utf8(self.0.raw(body)).unwrap_or_default()
        }
    }
}

/// Decodes JSON escapes in text that the reader has checked.
#[cold]
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    unescape_into(text, &mut out);
    out
}

/// Appends the decoded `text` to `out`.
fn unescape_into(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(backslash) = rest.find('\\') {
        let (plain, escape) = rest.split_at(backslash);
        out.push_str(plain);
        let mut chars = escape.chars();
        chars.next();
        let decoded = match chars.next() {
            Some('"') => '"',
            Some('\\') => '\\',
            Some('/') => '/',
            Some('b') => '\u{8}',
            Some('f') => '\u{c}',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('u') => {
                let (decoded, after) = unicode_escape(chars.as_str());
                out.push(decoded);
                rest = after;
                continue;
            }
            _ => char::REPLACEMENT_CHARACTER,
        };
        out.push(decoded);
        rest = chars.as_str();
    }
    out.push_str(rest);
}

/// Decodes the hex digits after `\u`, and a low surrogate's escape after a high one.
fn unicode_escape(text: &str) -> (char, &str) {
    let Some((unit, rest)) = hex4(text) else {
        return (char::REPLACEMENT_CHARACTER, text);
    };
    if !(0xD800..0xDC00).contains(&unit) {
        return (
            char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER),
            rest,
        );
    }
    match rest.strip_prefix("\\u").and_then(hex4) {
        Some((low, after)) if (0xDC00..0xE000).contains(&low) => {
            let high = u32::from(unit).wrapping_sub(0xD800);
            let low = u32::from(low).wrapping_sub(0xDC00);
            let code = (high << 10 | low).wrapping_add(0x1_0000);
            (
                char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER),
                after,
            )
        }
        _ => (char::REPLACEMENT_CHARACTER, rest),
    }
}

fn hex4(text: &str) -> Option<(u16, &str)> {
    let digits = text.get(..4)?;
    let rest = text.get(4..)?;
    let [a, b, c, d] = *digits.as_bytes() else {
        return None;
    };
    Some((hex_value(a, b, c, d)?, rest))
}

fn hex_value(a: u8, b: u8, c: u8, d: u8) -> Option<u16> {
    fn digit(byte: u8) -> Option<u16> {
        char::from(byte)
            .to_digit(16)
            .and_then(|value| u16::try_from(value).ok())
    }
    Some(digit(a)? << 12 | digit(b)? << 8 | digit(c)? << 4 | digit(d)?)
}

/// What the reader found wrong with the body, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Syntax {
    pub(super) code: Code,
    /// Byte offset into the body.
    pub(super) at: usize,
}

/// The ways a body can fail to be JSON, worded as serde_json words them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
    EofWhileParsingList,
    EofWhileParsingObject,
    EofWhileParsingString,
    EofWhileParsingValue,
    ExpectedColon,
    ExpectedListCommaOrEnd,
    ExpectedObjectCommaOrEnd,
    ExpectedSomeIdent,
    ExpectedSomeValue,
    InvalidEscape,
    InvalidNumber,
    NumberOutOfRange,
    InvalidUnicodeCodePoint,
    ControlCharacterWhileParsingString,
    KeyMustBeAString,
    LoneLeadingSurrogateInHexEscape,
    TrailingComma,
    TrailingCharacters,
    UnexpectedEndOfHexEscape,
    RecursionLimitExceeded,
    /// The body is JSON, but not an object.
    NotAnObject,
    /// The object has no `event`.
    MissingEvent,
    /// `event` is not a string.
    EventNotAString,
    /// An envelope field (`event`, `event_id`, `inbox_id`, `pod_id`) appears twice.
    DuplicateField(&'static str),
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EofWhileParsingList => "EOF while parsing a list",
            Self::EofWhileParsingObject => "EOF while parsing an object",
            Self::EofWhileParsingString => "EOF while parsing a string",
            Self::EofWhileParsingValue => "EOF while parsing a value",
            Self::ExpectedColon => "expected `:`",
            Self::ExpectedListCommaOrEnd => "expected `,` or `]`",
            Self::ExpectedObjectCommaOrEnd => "expected `,` or `}`",
            Self::ExpectedSomeIdent => "expected ident",
            Self::ExpectedSomeValue => "expected value",
            Self::InvalidEscape => "invalid escape",
            Self::InvalidNumber => "invalid number",
            Self::NumberOutOfRange => "number out of range",
            Self::InvalidUnicodeCodePoint => "invalid unicode code point",
            Self::ControlCharacterWhileParsingString => {
                "control character (\\u0000-\\u001F) found while parsing a string"
            }
            Self::KeyMustBeAString => "key must be a string",
            Self::LoneLeadingSurrogateInHexEscape => "lone leading surrogate in hex escape",
            Self::TrailingComma => "trailing comma",
            Self::TrailingCharacters => "trailing characters",
            Self::UnexpectedEndOfHexEscape => "unexpected end of hex escape",
            Self::RecursionLimitExceeded => "recursion limit exceeded",
            Self::NotAnObject => "invalid type: expected a JSON object",
            Self::MissingEvent => "missing field `event`",
            Self::EventNotAString => "invalid type: `event` must be a string",
            Self::DuplicateField(name) => return write!(f, "duplicate field `{name}`"),
        })
    }
}

/// Line and column of a byte offset, counted as serde_json counts them: lines from 1,
/// and the column is the number of bytes before the offset on its line (so the column of
/// the byte just read).
pub(super) fn line_column(body: &[u8], at: usize) -> (usize, usize) {
    let before = body.get(..at).unwrap_or(body);
    let line_start = before
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline.saturating_add(1));
    let lines = before
        .iter()
        .take(line_start)
        .filter(|&&byte| byte == b'\n')
        .count();
    (
        lines.saturating_add(1),
        before.len().saturating_sub(line_start),
    )
}

/// A JSON number: its text, and what a quick look at it showed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Number<'a> {
    pub(super) text: &'a [u8],
    /// Only digits, without sign, fraction or exponent.
    pub(super) plain: bool,
}

impl Number<'_> {
    /// The value as a `u64`, when the text is plain digits that fit.
    #[inline]
    pub(super) fn as_u64(&self) -> Option<u64> {
        if !self.plain || self.text.len() > 19 {
            return None;
        }
        let mut value: u64 = 0;
        for &digit in self.text {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit.wrapping_sub(b'0')))?;
        }
        Some(value)
    }
}

/// Reads a body front to back. Every method leaves the reader just past what it read.
pub(super) struct Reader<'a> {
    body: &'a [u8],
    rest: &'a [u8],
    depth: u32,
}

impl<'a> Reader<'a> {
    /// Starts reading `body`.
    pub(super) fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            rest: body,
            depth: 0,
        }
    }

    /// The body being read.
    #[inline]
    pub(super) fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The offset of the next unread byte.
    #[inline]
    pub(super) fn at(&self) -> usize {
        self.body.len().wrapping_sub(self.rest.len())
    }

    #[cold]
    fn error<T>(&self, code: Code) -> Result<T, Syntax> {
        Err(Syntax {
            code,
            at: self.at(),
        })
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        // Every whitespace byte is at most a space: one comparison settles compact JSON.
        if matches!(self.rest.first(), Some(byte) if *byte > b' ') {
            return;
        }
        while let [b' ' | b'\n' | b'\r' | b'\t', rest @ ..] = self.rest {
            self.rest = rest;
        }
    }

    /// The next byte that is not whitespace, without reading it.
    #[inline]
    pub(super) fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.rest.first().copied()
    }

    #[inline]
    fn advance(&mut self) {
        self.rest = self.rest.get(1..).unwrap_or_default();
    }

    /// After the top-level value: only whitespace may follow.
    pub(super) fn end(&mut self) -> Result<(), Syntax> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.error(Code::TrailingCharacters),
        }
    }

    #[inline]
    fn enter(&mut self) -> Result<(), Syntax> {
        self.depth = self.depth.saturating_add(1);
        if self.depth > MAX_DEPTH {
            return self.error(Code::RecursionLimitExceeded);
        }
        Ok(())
    }

    #[inline]
    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Reads an object, calling `member` with each key once the reader stands on its
    /// value; `member` must read the value. The reader must stand on `{`.
    pub(super) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Span) -> Result<(), Syntax>,
    ) -> Result<(), Syntax> {
        self.enter()?;
        self.advance();
        match self.peek() {
            Some(b'}') => {
                self.advance();
                self.leave();
                return Ok(());
            }
            Some(b'"') => {}
            Some(_) => return self.error(Code::KeyMustBeAString),
            None => return self.error(Code::EofWhileParsingObject),
        }
        loop {
            let key = self.string()?;
            match self.peek() {
                Some(b':') => self.advance(),
                Some(_) => return self.error(Code::ExpectedColon),
                None => return self.error(Code::EofWhileParsingObject),
            }
            if self.peek().is_none() {
                return self.error(Code::EofWhileParsingValue);
            }
            member(self, key)?;
            match self.peek() {
                Some(b',') => {
                    self.advance();
                    match self.peek() {
                        Some(b'"') => {}
                        Some(b'}') => return self.error(Code::TrailingComma),
                        Some(_) => return self.error(Code::KeyMustBeAString),
                        None => return self.error(Code::EofWhileParsingValue),
                    }
                }
                Some(b'}') => {
                    self.advance();
                    self.leave();
                    return Ok(());
                }
                Some(_) => return self.error(Code::ExpectedObjectCommaOrEnd),
                None => return self.error(Code::EofWhileParsingObject),
            }
        }
    }

    /// Reads an array, calling `element` once the reader stands on each element; it must
    /// read the element. The reader must stand on `[`.
    pub(super) fn array(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), Syntax>,
    ) -> Result<(), Syntax> {
        self.enter()?;
        self.advance();
        match self.peek() {
            Some(b']') => {
                self.advance();
                self.leave();
                return Ok(());
            }
            Some(_) => {}
            None => return self.error(Code::EofWhileParsingList),
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => {
                    self.advance();
                    match self.peek() {
                        Some(b']') => return self.error(Code::TrailingComma),
                        Some(_) => {}
                        None => return self.error(Code::EofWhileParsingValue),
                    }
                }
                Some(b']') => {
                    self.advance();
                    self.leave();
                    return Ok(());
                }
                Some(_) => return self.error(Code::ExpectedListCommaOrEnd),
                None => return self.error(Code::EofWhileParsingList),
            }
        }
    }

    /// Reads any value and checks it.
    pub(super) fn skip(&mut self) -> Result<(), Syntax> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.object(|reader, _| reader.skip()),
            Some(b'[') => self.array(Self::skip),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => self.error(Code::ExpectedSomeValue),
            None => self.error(Code::EofWhileParsingValue),
        }
    }

    /// Reads `true`, `false` or `null`, whichever `word` is; the reader stands on its
    /// first letter.
    #[inline]
    pub(super) fn literal(&mut self, word: &[u8]) -> Result<(), Syntax> {
        match self.rest.strip_prefix(word) {
            Some(rest) => {
                self.rest = rest;
                Ok(())
            }
            None => {
                let matching = self
                    .rest
                    .iter()
                    .zip(word)
                    .take_while(|(read, expected)| read == expected)
                    .count();
                self.rest = self.rest.get(matching..).unwrap_or_default();
                if self.rest.is_empty() {
                    self.error(Code::EofWhileParsingValue)
                } else {
                    self.error(Code::ExpectedSomeIdent)
                }
            }
        }
    }

    /// Reads a string; the reader stands on its opening quote.
    ///
    /// Plain ASCII is skipped eight bytes at a time; the scan stops at a quote, a
    /// backslash, a control character or a byte of a multi-byte character, which it checks
    /// as UTF-8 right there. Outside strings JSON is ASCII, so this is where the whole body
    /// is checked as UTF-8.
    #[inline(always)]
    pub(super) fn string(&mut self) -> Result<Span, Syntax> {
        self.advance();
        let start = self.at();
        let mut escaped = false;
        loop {
            let plain = plain_prefix(self.rest);
            self.rest = self.rest.get(plain..).unwrap_or_default();
            match self.rest {
                [b'"', rest @ ..] => {
                    let end = self.at();
                    self.rest = rest;
                    return Ok(Span::new(start, end, escaped));
                }
                // The escapes of one character, which mail text is full of.
                [
                    b'\\',
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't',
                    rest @ ..,
                ] => {
                    escaped = true;
                    self.rest = rest;
                }
                [b'\\', rest @ ..] => {
                    escaped = true;
                    self.rest = rest;
                    self.escape()?;
                }
                [0x80..=0xFF, ..] => match utf8_width(self.rest) {
                    Some(width) => self.rest = self.rest.get(width..).unwrap_or_default(),
                    None => return self.error(Code::InvalidUnicodeCodePoint),
                },
                [_, ..] => return self.error(Code::ControlCharacterWhileParsingString),
                [] => return self.error(Code::EofWhileParsingString),
            }
        }
    }

    /// Checks an escape; the reader stands just past its backslash.
    fn escape(&mut self) -> Result<(), Syntax> {
        match self.rest {
            [
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't',
                rest @ ..,
            ] => {
                self.rest = rest;
                Ok(())
            }
            [b'u', rest @ ..] => {
                self.rest = rest;
                let unit = self.hex_escape()?;
                if (0xDC00..0xE000).contains(&unit) {
                    return self.error(Code::LoneLeadingSurrogateInHexEscape);
                }
                if !(0xD800..0xDC00).contains(&unit) {
                    return Ok(());
                }
                match self.rest {
                    [b'\\', b'u', rest @ ..] => self.rest = rest,
                    [] | [b'\\'] => return self.error(Code::EofWhileParsingString),
                    [_, ..] => return self.error(Code::UnexpectedEndOfHexEscape),
                }
                let low = self.hex_escape()?;
                if (0xDC00..0xE000).contains(&low) {
                    Ok(())
                } else {
                    self.error(Code::LoneLeadingSurrogateInHexEscape)
                }
            }
            [_, ..] => self.error(Code::InvalidEscape),
            [] => self.error(Code::EofWhileParsingString),
        }
    }

    /// Reads the four hex digits of a `\u` escape.
    fn hex_escape(&mut self) -> Result<u16, Syntax> {
        match self.rest {
            [a, b, c, d, rest @ ..] => {
                let value = hex_value(*a, *b, *c, *d);
                self.rest = rest;
                match value {
                    Some(value) => Ok(value),
                    None => self.error(Code::InvalidEscape),
                }
            }
            _ => {
                self.rest = &[];
                self.error(Code::EofWhileParsingString)
            }
        }
    }

    /// Reads a number and checks that its value is a finite `f64`; the reader stands on
    /// its first character.
    pub(super) fn number(&mut self) -> Result<Number<'a>, Syntax> {
        let all = self.rest;
        let negative = matches!(self.rest.first(), Some(b'-'));
        if negative {
            self.advance();
        }
        let integer = match self.rest.first() {
            // A leading zero stands alone.
            Some(b'0') => {
                self.advance();
                if matches!(self.rest.first(), Some(b'0'..=b'9')) {
                    return self.error(Code::InvalidNumber);
                }
                1
            }
            _ => self.digits(),
        };
        if integer == 0 {
            return self.after_missing_digit();
        }
        let mut exponent: u64 = 0;
        let mut exponent_negative = false;
        let plain =
            !negative && !matches!(self.rest.first(), Some(b'.' | b'e' | b'E')) && integer <= 19;
        if let Some(b'.') = self.rest.first() {
            self.advance();
            if self.digits() == 0 {
                return self.after_missing_digit();
            }
        }
        if let Some(b'e' | b'E') = self.rest.first() {
            self.advance();
            if let Some(sign @ (b'+' | b'-')) = self.rest.first() {
                exponent_negative = *sign == b'-';
                self.advance();
            }
            let digits = self.rest;
            let count = self.digits();
            if count == 0 {
                return self.after_missing_digit();
            }
            for &digit in digits.get(..count).unwrap_or_default() {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(u64::from(digit.wrapping_sub(b'0')));
            }
        }
        let length = all.len().wrapping_sub(self.rest.len());
        let text = all.get(..length).unwrap_or_default();
        // A value below 10^300 is finite however it is rounded; only a longer number or a
        // large exponent needs the exact answer, which serde_json's own parse gives, so
        // that the two agree at the edge of the range.
        let magnitude = if exponent_negative {
            integer as u64
        } else {
            (integer as u64).saturating_add(exponent)
        };
        if magnitude > 300 && serde_json::from_slice::<f64>(text).is_err() {
            return self.error(Code::NumberOutOfRange);
        }
        Ok(Number { text, plain })
    }

    /// Counts and reads the digits at the front.
    #[inline]
    fn digits(&mut self) -> usize {
        let count = self
            .rest
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        self.rest = self.rest.get(count..).unwrap_or_default();
        count
    }

    fn after_missing_digit<T>(&mut self) -> Result<T, Syntax> {
        if self.rest.is_empty() {
            self.error(Code::EofWhileParsingValue)
        } else {
            self.error(Code::InvalidNumber)
        }
    }
}

/// How many bytes at the front of `bytes` a string holds as they are: ASCII that is
/// neither a quote, a backslash nor a control character. Eight bytes at a time, as
/// serde_json's skim does, with the non-ASCII bytes added to what stops the scan.
#[inline]
fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut count = 0_usize;
    let mut rest = bytes;
    while let Some(word) = rest.first_chunk::<8>() {
        let word = u64::from_le_bytes(*word);
        // Each term sets the high bit of a byte it finds: below 0x20, a quote, a backslash
        // (those three by borrowing), or 0x80 and up. A borrow can also set the high bit
        // of a byte above one already found, never below, so the lowest bit set is right.
        let control = word.wrapping_sub(ONES.wrapping_mul(0x20));
        let quote = (word ^ ONES.wrapping_mul(u64::from(b'"'))).wrapping_sub(ONES);
        let backslash = (word ^ ONES.wrapping_mul(u64::from(b'\\'))).wrapping_sub(ONES);
        let found = (control | quote | backslash | word) & HIGH;
        if found != 0 {
            return count.wrapping_add(found.trailing_zeros() as usize / 8);
        }
        count = count.wrapping_add(8);
        rest = rest.get(8..).unwrap_or_default();
    }
    for &byte in rest {
        if byte == b'"' || byte == b'\\' || !(0x20..0x80).contains(&byte) {
            return count;
        }
        count = count.wrapping_add(1);
    }
    count
}

/// The length of the UTF-8 character at the front of `bytes`, if it is one (RFC 3629:
/// no overlong forms, no surrogates, nothing above U+10FFFF).
fn utf8_width(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [0x00..=0x7F, ..] => Some(1),
        [0xC2..=0xDF, 0x80..=0xBF, ..] => Some(2),
        [0xE0, 0xA0..=0xBF, 0x80..=0xBF, ..]
        | [0xE1..=0xEC | 0xEE..=0xEF, 0x80..=0xBF, 0x80..=0xBF, ..]
        | [0xED, 0x80..=0x9F, 0x80..=0xBF, ..] => Some(3),
        [0xF0, 0x90..=0xBF, 0x80..=0xBF, 0x80..=0xBF, ..]
        | [0xF1..=0xF3, 0x80..=0xBF, 0x80..=0xBF, 0x80..=0xBF, ..]
        | [0xF4, 0x80..=0x8F, 0x80..=0xBF, 0x80..=0xBF, ..] => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8]) -> Result<(), Syntax> {
        let mut reader = Reader::new(body);
        reader.skip()?;
        reader.end()
    }

    #[test]
    fn plain_prefix_stops_at_the_first_special_byte() {
        for length in 0..40 {
            for special in [b'"', b'\\', b'\n', 0x1f, 0] {
                let mut bytes = vec![b'a'; length];
                bytes.extend_from_slice(&[special, b'b', b'"']);
                assert_eq!(plain_prefix(&bytes), length, "{length} {special}");
            }
            // 0x20 and DEL are plain; a byte with the high bit set stops the scan.
            let mut bytes = [b' ', 0x7F].repeat(length);
            assert_eq!(plain_prefix(&bytes), bytes.len());
            bytes.push(0xC3);
            assert_eq!(plain_prefix(&bytes), bytes.len() - 1);
        }
    }

    #[test]
    fn spans_decode_and_borrow() {
        let body = br#""plain" "a\nb\u00e9\ud83d\ude00\"\/""#;
        let mut reader = Reader::new(body);
        assert_eq!(reader.peek(), Some(b'"'));
        let plain = reader.string().unwrap();
        assert!(matches!(plain.decode(body), Cow::Borrowed("plain")));
        assert_eq!(reader.peek(), Some(b'"'));
        let escaped = reader.string().unwrap();
        assert!(escaped.escaped());
        assert_eq!(escaped.decode(body), "a\nbé😀\"/");
    }

    #[test]
    fn accepts_and_refuses_like_serde_json() {
        for (body, ok) in [
            (
                &br#"{"a":[1,-0,0.5,1e2,1E-2,-1.5e+3,true,false,null,"x",{}]}"#[..],
                true,
            ),
            (b" {} ", true),
            (b"{} x", false),
            (b"{,}", false),
            (br#"{"a":1,}"#, false),
            (b"[1,]", false),
            (b"01", false),
            (b"[-01]", false),
            (b"[0,10,-0.0,100]", true),
            (b"-", false),
            (b"1.", false),
            (b"1e", false),
            (b"1e999", false),
            (b"-1e999", false),
            (b"1e-999", true),
            (br#""\ud800""#, false),
            (br#""\udc00""#, false),
            (br#""\ud800\u0041""#, false),
            (br#""\ud800\n""#, false),
            (br#""\x""#, false),
            (br#""\u12g4""#, false),
            (b"\"\x01\"", false),
            (b"\"\xff\"", false),
            (b"nul", false),
            (b"nulx", false),
            (b"tru", false),
        ] {
            let ours = check(body).is_ok();
            let theirs = serde_json::from_slice::<serde_json::Value>(body).is_ok();
            assert_eq!(theirs, ok, "{}", String::from_utf8_lossy(body));
            assert_eq!(ours, ok, "{}", String::from_utf8_lossy(body));
        }
    }

    /// Every 1-, 2-, 3- and 4-byte sequence std accepts, and no other, at every offset
    /// within a word.
    #[test]
    fn utf8_agrees_with_std() {
        let mut sequences: Vec<Vec<u8>> = Vec::new();
        for first in 0x80..=0xFF_u8 {
            sequences.push(vec![first]);
            for second in 0x00..=0xFF_u8 {
                sequences.push(vec![first, second]);
                for third in [0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0] {
                    sequences.push(vec![first, second, third]);
                    for fourth in [0x7F, 0x80, 0xBF, 0xC0] {
                        sequences.push(vec![first, second, third, fourth]);
                    }
                }
            }
        }
        for sequence in sequences {
            for offset in [0, 3, 7, 8, 13] {
                let mut body = vec![b'"'];
                body.extend(std::iter::repeat_n(b'a', offset));
                body.extend_from_slice(&sequence);
                body.push(b'"');
                let inner = &body[1..body.len() - 1];
                assert_eq!(
                    check(&body).is_ok(),
                    std::str::from_utf8(inner).is_ok_and(
                        |text| !text.contains(|c: char| c < ' ' || c == '"' || c == '\\')
                    ),
                    "{body:x?}"
                );
            }
        }
    }

    #[test]
    fn the_depth_limit_is_serde_jsons() {
        for depth in [126, 127, 128, 129] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let ours = check(body.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<serde_json::Value>(&body).is_ok();
            assert_eq!(ours, theirs, "{depth}");
            assert_eq!(ours, depth <= MAX_DEPTH as usize, "{depth}");
        }
    }

    #[test]
    fn line_and_column_count_like_serde_json() {
        let body = b"{\n  \"a\": 1,\n  \"b\" 2}";
        let error = check(body).unwrap_err();
        assert_eq!(error.code, Code::ExpectedColon);
        let theirs = serde_json::from_slice::<serde_json::Value>(body).unwrap_err();
        let (line, column) = line_column(body, error.at);
        assert_eq!(
            (line, column.saturating_add(1)),
            (theirs.line(), theirs.column())
        );
    }
}
