//! The strict JSON reader under the event parse and the claim: it checks every byte of the
//! body and records where strings are, without copying them. Both readers of a body, the
//! `protocol::Claim` read before the signature is checked and the event
//! parse after it, use it, so they accept the same bodies.
//!
//! It accepts what `serde_json::from_slice::<serde_json::Value>` accepts (UTF-8
//! throughout, escapes that decode, numbers whose value is a finite `f64`, no trailing
//! commas or characters, and at most [`MAX_DEPTH`] nested arrays and objects, which is
//! serde_json's own limit) and one thing more: a `\u` escape of a lone surrogate, which
//! serde_json refuses. JavaScript's `JSON.stringify`, which writes OpenMail's events, writes
//! one for a text cut inside an emoji. In a text it decodes to U+FFFD, as JavaScript's and
//! WHATWG's decoders do; in an identifier it is kept as its escape (see [`Short::id`]).
//! [`value`] reads a body into a `serde_json::Value` with the same replacement.
//!
//! Strings are [`Span`]s: offsets into the body and whether the text holds escapes. The
//! model decodes a span only when it is read, and borrows it from the body when it holds
//! no escapes. The scan skips the plain bytes of a string eight at a time, the way
//! serde_json's own skim does.

use std::borrow::Cow;
use std::fmt::{self, Write};
use std::num::NonZeroU64;

/// The deepest nesting of arrays and objects accepted, the top-level object included:
/// serde_json's recursion limit, so that a body this reader accepts always parses into a
/// `serde_json::Value`.
pub(crate) const MAX_DEPTH: u32 = 127;

/// The largest body the reader indexes: 2 GiB, so that a span fits one word.
pub(crate) const MAX_BODY: usize = (1 << 31) - 1;

/// Where a string is, packed in one word: two 31-bit offsets and a flag. Small and `Copy`,
/// so that indexing a field is one store and moving an index is cheap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span(NonZeroU64);

const OFFSET: u64 = (1 << 31) - 1;
const PRESENT: u64 = 1 << 62;
const FLAG: u64 = 1 << 63;

impl Span {
    /// No text at all.
    pub(crate) const EMPTY: Self = match NonZeroU64::new(PRESENT) {
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
    pub(crate) fn raw(self, body: &[u8]) -> &[u8] {
        body.get(self.start()..self.end()).unwrap_or_default()
    }

    /// Whether the text holds escapes, so that decoding it copies.
    #[inline]
    pub(crate) fn escaped(self) -> bool {
        self.flag()
    }

    /// The text, borrowed from the body unless it holds escapes; a lone surrogate reads
    /// as U+FFFD.
    ///
    /// The reader has checked the body, so the text is UTF-8 and every escape decodes; were
    /// it not (a span used with the wrong body), the result would be empty or hold U+FFFD,
    /// never a panic.
    pub(crate) fn decode(self, body: &[u8]) -> Cow<'_, str> {
        self.decode_with(body, Lone::Replace)
    }

    /// The text of an identifier: as [`decode`](Self::decode), but a lone surrogate keeps
    /// its escape (see [`Short::id`]).
    pub(crate) fn decode_id(self, body: &[u8]) -> Cow<'_, str> {
        self.decode_with(body, Lone::Escape)
    }

    fn decode_with(self, body: &[u8], lone: Lone) -> Cow<'_, str> {
        let text = std::str::from_utf8(self.raw(body)).unwrap_or_default();
        if self.escaped() {
            let mut out = String::with_capacity(text.len());
            unescape_into(text, &mut out, lone);
            Cow::Owned(out)
        } else {
            Cow::Borrowed(text)
        }
    }

    /// Offset of the first byte after the closing quote.
    #[inline]
    pub(crate) fn after(self) -> usize {
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
pub(crate) struct Short(Span);

impl Default for Short {
    /// The empty string.
    fn default() -> Self {
        Self(Span::EMPTY)
    }
}

impl Short {
    /// A text: a lone surrogate reads as U+FFFD.
    #[inline]
    pub(crate) fn new(span: Span, body: &[u8], decoded: &mut String) -> Self {
        if !span.escaped() {
            return Self(span);
        }
        Self::decode(span, body, decoded, Lone::Replace)
    }

    /// An identifier (`event_id`, `inbox_id`): a lone surrogate keeps its escape, written
    /// `\udXXX` in lowercase, so that `evt_\ud800` and `evt_\udc00` stay two ids where
    /// U+FFFD would make them one. JavaScript compares strings by their UTF-16 code units,
    /// and so does this: two ids are equal when their code units are. OpenMail's ids are
    /// ASCII; only an id that spells such an escape with a literal backslash
    /// (`"evt_\\ud800"` in JSON) reads the same as one with the surrogate itself.
    #[inline]
    pub(crate) fn id(span: Span, body: &[u8], decoded: &mut String) -> Self {
        if !span.escaped() {
            return Self(span);
        }
        Self::decode(span, body, decoded, Lone::Escape)
    }

    #[cold]
    fn decode(span: Span, body: &[u8], decoded: &mut String, lone: Lone) -> Self {
        let start = decoded.len();
        unescape_into(
            std::str::from_utf8(span.raw(body)).unwrap_or_default(),
            decoded,
            lone,
        );
        Self(Span::new(start, decoded.len(), true))
    }

    /// The text, from the body and the decoded strings it was read with.
    #[inline]
    pub(crate) fn get<'a>(self, body: &'a [u8], decoded: &'a str) -> &'a str {
        if self.0.flag() {
            decoded
                .get(self.0.start()..self.0.end())
                .unwrap_or_default()
        } else {
            std::str::from_utf8(self.0.raw(body)).unwrap_or_default()
        }
    }
}

/// Where the decoded text of a [`Short`] goes: appended to the event's string of decoded
/// fields when the body is first read, or, when a list is walked again later
/// ([`Replay`]), only counted, to find where that first reading put it.
pub(crate) trait Decoded {
    /// The short text at `span`, a lone surrogate read as U+FFFD.
    fn text(&mut self, span: Span, body: &[u8]) -> Short;
}

impl Decoded for String {
    #[inline]
    fn text(&mut self, span: Span, body: &[u8]) -> Short {
        Short::new(span, body, self)
    }
}

/// Reads a list's short fields again, in the order the first reading decoded them: each
/// escaped one is the next stretch of the decoded string, starting at `0`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Replay(pub(crate) usize);

impl Decoded for Replay {
    fn text(&mut self, span: Span, body: &[u8]) -> Short {
        if !span.escaped() {
            return Short(span);
        }
        let mut length = Length(0);
        unescape_into(
            std::str::from_utf8(span.raw(body)).unwrap_or_default(),
            &mut length,
            Lone::Replace,
        );
        let start = self.0;
        self.0 = start.saturating_add(length.0);
        Short(Span::new(start, self.0, true))
    }
}

/// Counts what would be written.
struct Length(usize);

impl Write for Length {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0 = self.0.saturating_add(text.len());
        Ok(())
    }
}

/// What a `\u` escape of a lone surrogate decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lone {
    /// U+FFFD, as JavaScript's and WHATWG's decoders write it: for texts.
    Replace,
    /// The escape itself, `\udXXX` in lowercase: for identifiers.
    Escape,
}

/// Appends the decoded `text`, which the reader has checked, to `out`.
fn unescape_into(text: &str, out: &mut impl Write, lone: Lone) {
    let mut rest = text;
    while let Some(backslash) = rest.find('\\') {
        let (plain, escape) = rest.split_at(backslash);
        let _ = out.write_str(plain);
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
                match (decoded, lone) {
                    (Ok(decoded), _) => {
                        let _ = out.write_char(decoded);
                    }
                    (Err(_), Lone::Replace) => {
                        let _ = out.write_char(char::REPLACEMENT_CHARACTER);
                    }
                    (Err(unit), Lone::Escape) => {
                        let _ = out.write_str("\\u");
                        for shift in [12, 8, 4, 0] {
                            let digit = u32::from(unit >> shift & 0xF);
                            let _ = out.write_char(char::from_digit(digit, 16).unwrap_or('0'));
                        }
                    }
                }
                rest = after;
                continue;
            }
            _ => char::REPLACEMENT_CHARACTER,
        };
        let _ = out.write_char(decoded);
        rest = chars.as_str();
    }
    let _ = out.write_str(rest);
}

/// Decodes the hex digits after `\u`, and a low surrogate's escape after a high one: a
/// character, or the code unit of a lone surrogate.
fn unicode_escape(text: &str) -> (Result<char, u16>, &str) {
    let Some((unit, rest)) = hex4(text) else {
        return (Ok(char::REPLACEMENT_CHARACTER), text);
    };
    if !(0xD800..0xDC00).contains(&unit) {
        return (char::from_u32(u32::from(unit)).ok_or(unit), rest);
    }
    match rest.strip_prefix("\\u").and_then(hex4) {
        Some((low, after)) if (0xDC00..0xE000).contains(&low) => {
            let high = u32::from(unit).wrapping_sub(0xD800);
            let low = u32::from(low).wrapping_sub(0xDC00);
            let code = (high << 10 | low).wrapping_add(0x1_0000);
            (char::from_u32(code).ok_or(unit), after)
        }
        _ => (Err(unit), rest),
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
pub(crate) struct Syntax {
    pub(crate) code: Code,
    /// Byte offset into the body.
    pub(crate) at: usize,
}

/// The ways a body can fail to be JSON, worded as serde_json words them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
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
    TrailingComma,
    TrailingCharacters,
    RecursionLimitExceeded,
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
            Self::TrailingComma => "trailing comma",
            Self::TrailingCharacters => "trailing characters",
            Self::RecursionLimitExceeded => "recursion limit exceeded",
        })
    }
}

/// Line and column of a byte offset, counted as serde_json counts them: lines from 1,
/// and the column is the number of bytes before the offset on its line (so the column of
/// the byte just read).
pub(crate) fn line_column(body: &[u8], at: usize) -> (usize, usize) {
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

/// A body the [`Reader`] accepted, read into a `serde_json::Value`; a lone surrogate in a
/// string or key reads as U+FFFD. `None` for a body the reader refuses.
///
/// serde_json refuses a lone surrogate, so the body is given to it with each one's escape
/// rewritten as `\ufffd`: the same length, so any position serde_json reports is the
/// body's own. Only a body that holds one is copied.
pub(crate) fn value(body: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(&without_lone_surrogates(body)).ok()
}

/// The body for serde_json: each `\u` escape of a lone surrogate rewritten as `\ufffd`.
pub(crate) fn without_lone_surrogates(body: &[u8]) -> Cow<'_, [u8]> {
    let mut copy: Option<Vec<u8>> = None;
    let mut in_string = false;
    let mut at = 0_usize;
    while let Some(&byte) = body.get(at) {
        match (in_string, byte) {
            (_, b'"') => in_string = !in_string,
            (true, b'\\') => {
                let escape = body.get(at.saturating_add(1)..).unwrap_or_default();
                let unit = match escape {
                    [b'u', a, b, c, d, ..] => hex_value(*a, *b, *c, *d),
                    _ => None,
                };
                let Some(unit) = unit.filter(|unit| (0xD800..0xE000).contains(unit)) else {
                    // Any other escape: skip its first character, so that `\"` and `\\`
                    // are not read as a quote or the start of another escape.
                    at = at.saturating_add(2);
                    continue;
                };
                let low = match escape.get(5..) {
                    Some([b'\\', b'u', a, b, c, d, ..]) if unit < 0xDC00 => {
                        hex_value(*a, *b, *c, *d)
                    }
                    _ => None,
                };
                if low.is_some_and(|low| (0xDC00..0xE000).contains(&low)) {
                    at = at.saturating_add(12);
                    continue;
                }
                let digits = at.saturating_add(2)..at.saturating_add(6);
                let copy = copy.get_or_insert_with(|| body.to_vec());
                if let Some(slot) = copy.get_mut(digits) {
                    slot.copy_from_slice(b"fffd");
                }
                at = at.saturating_add(6);
                continue;
            }
            _ => {}
        }
        at = at.saturating_add(1);
    }
    match copy {
        Some(copy) => Cow::Owned(copy),
        None => Cow::Borrowed(body),
    }
}

/// A JSON number: its text, and what a quick look at it showed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Number<'a> {
    pub(crate) text: &'a [u8],
    /// Only digits, without sign, fraction or exponent.
    pub(crate) plain: bool,
}

impl Number<'_> {
    /// The value as a `u64`, when the text is plain digits that fit.
    #[inline]
    pub(crate) fn as_u64(&self) -> Option<u64> {
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
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    body: &'a [u8],
    rest: &'a [u8],
    depth: u32,
}

impl<'a> Reader<'a> {
    /// Starts reading `body`.
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Self {
            body,
            rest: body,
            depth: 0,
        }
    }

    /// Starts reading `body` at the offset `at` (which an earlier reading of the same body
    /// found); past its end, there is nothing to read.
    pub(crate) fn starting_at(body: &'a [u8], at: usize) -> Self {
        Self {
            body,
            rest: body.get(at..).unwrap_or_default(),
            depth: 0,
        }
    }

    /// Reads `byte` if it is next, after any whitespace.
    #[inline]
    pub(crate) fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        if next {
            self.advance();
        }
        next
    }

    /// The body being read.
    #[inline]
    pub(crate) fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The offset of the next unread byte.
    #[inline]
    pub(crate) fn at(&self) -> usize {
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
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.rest.first().copied()
    }

    #[inline]
    fn advance(&mut self) {
        self.rest = self.rest.get(1..).unwrap_or_default();
    }

    /// After the top-level value: only whitespace may follow.
    pub(crate) fn end(&mut self) -> Result<(), Syntax> {
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
    pub(crate) fn object(
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
    pub(crate) fn array(
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
    pub(crate) fn skip(&mut self) -> Result<(), Syntax> {
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
    pub(crate) fn literal(&mut self, word: &[u8]) -> Result<(), Syntax> {
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
    pub(crate) fn string(&mut self) -> Result<Span, Syntax> {
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
                // A high surrogate takes the low one that follows it, if one does; any
                // other surrogate is lone, which is allowed (see the module docs). What
                // follows a lone one is read as usual.
                if (0xD800..0xDC00).contains(&unit) {
                    if let [b'\\', b'u', a, b, c, d, rest @ ..] = self.rest {
                        if hex_value(*a, *b, *c, *d)
                            .is_some_and(|low| (0xDC00..0xE000).contains(&low))
                        {
                            self.rest = rest;
                        }
                    }
                }
                Ok(())
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
    pub(crate) fn number(&mut self) -> Result<Number<'a>, Syntax> {
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

    /// Lone surrogates are the one thing accepted that serde_json refuses: texts read them
    /// as U+FFFD, identifiers keep their escape, and [`value`] reads the body as serde_json
    /// would with U+FFFD in their place.
    #[test]
    fn lone_surrogates_are_accepted_and_read_as_javascript_reads_them() {
        for (body, text, id) in [
            (&br#""\ud800""#[..], "\u{fffd}", r"\ud800"),
            (br#""a\udc00""#, "a\u{fffd}", r"a\udc00"),
            (br#""\uD800\u0041""#, "\u{fffd}A", r"\ud800A"),
            (br#""\ud800\n""#, "\u{fffd}\n", "\\ud800\n"),
            (
                br#""\ud800\ud800\udc00""#,
                "\u{fffd}\u{10000}",
                "\\ud800\u{10000}",
            ),
            (br#""\\ud800""#, r"\ud800", r"\ud800"),
            (br#""\ud83d\ude00""#, "😀", "😀"),
        ] {
            assert!(check(body).is_ok(), "{}", String::from_utf8_lossy(body));
            let span = Reader::new(body).string().unwrap();
            assert_eq!(span.decode(body), text);
            assert_eq!(span.decode_id(body), id);
            let mut decoded = String::new();
            let short = Short::id(span, body, &mut decoded);
            assert_eq!(short.get(body, &decoded), id);
            assert_eq!(value(body), Some(serde_json::Value::String(text.into())));
        }
        let body = br#"{"\udc00":["\ud83d",1]}"#;
        assert_eq!(
            value(body),
            Some(serde_json::json!({"\u{fffd}": ["\u{fffd}", 1]}))
        );
        assert!(matches!(without_lone_surrogates(b"{}"), Cow::Borrowed(_)));
        for refused in [&br#""\ud80""#[..], br#""\ud800\u12"#, br#""\ud800\x""#] {
            assert!(
                check(refused).is_err(),
                "{}",
                String::from_utf8_lossy(refused)
            );
            assert_eq!(value(refused), None);
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
