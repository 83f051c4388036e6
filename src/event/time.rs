//! RFC 3339 timestamps, validated without a date-time dependency.
//!
//! OpenMail writes every time as an RFC 3339 string such as `2024-03-21T10:05:00.000Z`.
//! A receiver does three things with it: orders events (`occurred_at`), compares it with
//! the clock, and stores or forwards it. [`Timestamp`] does exactly that and no more:
//!
//! - it keeps the **original text**, so serialising an event gives back the string
//!   OpenMail sent, digit for digit (a re-formatted `…00Z` versus `…00.000Z` would make
//!   stored copies drift from what was signed);
//! - it holds the instant as Unix seconds plus nanoseconds, so comparing, sorting and
//!   hashing go by the instant, whatever offset the text was written in;
//! - converting to a calendar type is one call in the application's own time crate, from
//!   [`Timestamp::unix_seconds`] and [`Timestamp::subsec_nanos`] or from
//!   [`Timestamp::as_str`].
//!
//! Why not `time`, `chrono` or `jiff`? The crate would have to pick one for every user,
//! and applications already use different ones; the parse itself is about 290 lines
//! (240 without comments) of checked arithmetic over a fixed grammar, with a shortcut for
//! the form OpenMail sends. Validation is strict (RFC 3339 section 5.6:
//! four-digit year, real calendar dates, `T`, an optional fraction, `Z` or `±HH:MM`), so a
//! malformed time is caught here rather than in the application.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};

use crate::json::Short;

/// A validated RFC 3339 timestamp that remembers how it was written.
///
/// Equality, ordering and hashing go by the instant: `2024-03-21T10:05:00Z` and
/// `2024-03-21T11:05:00+01:00` are equal. A leap second (`:60`) reads as the first second
/// of the next minute, and digits of the fraction past the ninth are validated, then
/// dropped.
///
/// ```
/// use openmail_webhooks::event::Timestamp;
///
/// let utc: Timestamp = "2024-03-21T10:05:00.000Z".parse()?;
/// let paris: Timestamp = "2024-03-21T11:05:00+01:00".parse()?;
/// assert_eq!(utc, paris);
/// assert_eq!(utc.unix_seconds(), 1_711_015_500);
/// assert_eq!(utc.as_str(), "2024-03-21T10:05:00.000Z");
/// assert!("2024-02-30T00:00:00Z".parse::<Timestamp>().is_err());
/// # Ok::<(), openmail_webhooks::event::TimestampError>(())
/// ```
#[derive(Clone)]
pub struct Timestamp {
    text: Text,
    seconds: i64,
    nanos: u32,
    offset_minutes: i16,
}

/// The text as received. Every timestamp OpenMail writes fits inline, so parsing one
/// allocates nothing; a longer fraction goes to the heap.
#[derive(Clone)]
enum Text {
    Inline { bytes: [u8; INLINE], len: u8 },
    Long(Box<str>),
}

/// Room for `YYYY-MM-DDTHH:MM:SS.fffffffff+HH:MM` (35 bytes) and a little more.
const INLINE: usize = 40;

impl Text {
    /// `text` must be ASCII: the grammar has checked it.
    #[inline]
    fn new(text: &[u8]) -> Self {
        let mut bytes = [0; INLINE];
        match (bytes.get_mut(..text.len()), u8::try_from(text.len())) {
            (Some(inline), Ok(len)) => {
                inline.copy_from_slice(text);
                Self::Inline { bytes, len }
            }
            _ => Self::Long(String::from_utf8_lossy(text).into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole, so it is UTF-8.
            Self::Inline { bytes, len } => {
                std::str::from_utf8(bytes.get(..usize::from(*len)).unwrap_or_default())
                    .unwrap_or_default()
            }
            Self::Long(text) => text,
        }
    }
}

impl Timestamp {
    /// Parses and validates an RFC 3339 timestamp.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        Self::parse_bytes(text.as_bytes())
    }

    fn parse_bytes(text: &[u8]) -> Result<Self, TimestampError> {
        let fields = Fields::read(text)?;
        let (seconds, nanos) = fields.instant();
        Ok(Self {
            text: Text::new(text),
            seconds,
            nanos,
            offset_minutes: fields.offset_minutes,
        })
    }

    /// The text exactly as it was received.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// Whole seconds since 1970-01-01T00:00:00Z; negative before then.
    pub fn unix_seconds(&self) -> i64 {
        self.seconds
    }

    /// Nanoseconds past [`unix_seconds`](Self::unix_seconds), below one billion.
    pub fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    /// The offset from UTC the text was written in, in minutes (`Z` and `-00:00` are 0).
    pub fn offset_minutes(&self) -> i16 {
        self.offset_minutes
    }

    /// The instant as a [`SystemTime`], or `None` where the platform cannot represent it.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        let whole = Duration::from_secs(self.seconds.unsigned_abs());
        let fraction = Duration::from_nanos(u64::from(self.nanos));
        if self.seconds >= 0 {
            SystemTime::UNIX_EPOCH
                .checked_add(whole)?
                .checked_add(fraction)
        } else {
            SystemTime::UNIX_EPOCH
                .checked_sub(whole)?
                .checked_add(fraction)
        }
    }
}

impl PartialEq for Timestamp {
    fn eq(&self, other: &Self) -> bool {
        (self.seconds, self.nanos) == (other.seconds, other.nanos)
    }
}

impl Eq for Timestamp {}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.seconds, self.nanos).cmp(&(other.seconds, other.nanos))
    }
}

impl Hash for Timestamp {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.seconds, self.nanos).hash(state);
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Timestamp").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;

        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
                Timestamp::parse(text).map_err(|error| invalid(text, error))
            }
        }

        deserializer.deserialize_str(TimestampVisitor)
    }
}

/// The serde error for a bad timestamp: quotes the start of the text, which is what a
/// reader needs to see the mistake, escaped and without echoing an arbitrarily long
/// string, since the reason may reach a log line.
pub(super) fn invalid<E: de::Error>(text: &str, error: TimestampError) -> E {
    let shown: String = text.chars().take(40).flat_map(char::escape_debug).collect();
    let ellipsis = if text.chars().nth(40).is_some() {
        "…"
    } else {
        ""
    };
    E::custom(format_args!("`{shown}{ellipsis}`: {error}"))
}

/// A timestamp as an event keeps it: where its text is, already validated. The
/// [`Timestamp`], with its instant and a copy of the text, is made when it is asked for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp(pub(super) Short);

impl Stamp {
    /// Checks that `text` is a timestamp, without computing its instant.
    #[inline]
    pub(super) fn validate(text: &[u8]) -> Result<(), TimestampError> {
        if let Ok(text) = <&[u8; 24]>::try_from(text) {
            if usual(text) {
                return Ok(());
            }
        }
        Fields::read(text).map(drop)
    }

    /// The timestamp. `None` cannot happen for a stamp the parse made, which validated
    /// the same text.
    pub(super) fn timestamp(self, body: &[u8], decoded: &str) -> Option<Timestamp> {
        Timestamp::parse(self.0.get(body, decoded)).ok()
    }
}

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimestampError {
    /// The text does not have the shape `YYYY-MM-DDTHH:MM:SS[.fraction]` followed by `Z`
    /// or `±HH:MM`.
    Syntax,
    /// A field has the right shape but an impossible value, such as month 13, February
    /// 30th or hour 24.
    OutOfRange {
        /// Which field: `month`, `day`, `hour`, `minute`, `second`, `offset hour` or
        /// `offset minute`.
        field: &'static str,
        /// The value that was read.
        value: u32,
    },
}

impl fmt::Display for TimestampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax => f.write_str(
                "not an RFC 3339 timestamp: expected YYYY-MM-DDTHH:MM:SS[.fraction] \
                 followed by Z or ±HH:MM",
            ),
            Self::OutOfRange { field, value } => write!(
                f,
                "{field} {value} is out of range for an RFC 3339 timestamp; \
                 check how the sender formats dates"
            ),
        }
    }
}

impl std::error::Error for TimestampError {}

/// The numeric fields of a timestamp, each already range-checked.
struct Fields {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    offset_minutes: i16,
}

impl Fields {
    /// Reads a timestamp. The common shape, `YYYY-MM-DDTHH:MM:SS` followed by anything,
    /// is read in one step; any other text goes through [`Fields::read_slowly`], which
    /// finds the first mistake from the left. Both check the ranges in the same order, so
    /// they report the same error.
    #[inline]
    // Each value is at most four digits: far inside `u32`.
    #[allow(clippy::arithmetic_side_effects)]
    fn read(bytes: &[u8]) -> Result<Self, TimestampError> {
        let Some((head, rest)) = bytes.split_first_chunk::<19>() else {
            return Self::read_slowly(bytes);
        };
        #[rustfmt::skip]
        let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2, b'T' | b't', h1, h2, b':', i1, i2, b':', s1, s2] =
            *head
        else {
            return Self::read_slowly(bytes);
        };
        // The fourteen digits, eight lanes at a time.
        let low = u64::from_le_bytes([y1, y2, y3, y4, m1, m2, d1, d2]);
        let high = u64::from_le_bytes([h1, h2, i1, i2, s1, s2, b'0', b'0']);
        if not_digits(low) | not_digits(high) != 0 {
            return Self::read_slowly(bytes);
        }
        let [y1, y2, y3, y4, m1, m2, d1, d2] = low.wrapping_sub(ZEROS).to_le_bytes().map(u32::from);
        let [h1, h2, i1, i2, s1, s2, ..] = high.wrapping_sub(ZEROS).to_le_bytes().map(u32::from);
        let (year, month, day) = (
            y1 * 1000 + y2 * 100 + y3 * 10 + y4,
            m1 * 10 + m2,
            d1 * 10 + d2,
        );
        let (hour, minute, second) = (h1 * 10 + h2, i1 * 10 + i2, s1 * 10 + s2);
        let month = range("month", month, 1, 12)?;
        // Every month has 28 days; only a later day needs the calendar.
        let day = if (1..=28).contains(&day) {
            day
        } else {
            range("day", day, 1, days_in_month(year, month))?
        };
        let hour = range("hour", hour, 0, 23)?;
        let minute = range("minute", minute, 0, 59)?;
        let second = range("second", second, 0, 60)?;
        Self::finish(rest, [year, month, day, hour, minute, second])
    }

    #[cold]
    fn read_slowly(bytes: &[u8]) -> Result<Self, TimestampError> {
        let mut cursor = Cursor(bytes);
        let year = cursor.digits(4)?;
        cursor.expect(b'-', b'-')?;
        let month = range("month", cursor.digits(2)?, 1, 12)?;
        cursor.expect(b'-', b'-')?;
        let day = range("day", cursor.digits(2)?, 1, days_in_month(year, month))?;
        cursor.expect(b'T', b't')?;
        let hour = range("hour", cursor.digits(2)?, 0, 23)?;
        cursor.expect(b':', b':')?;
        let minute = range("minute", cursor.digits(2)?, 0, 59)?;
        cursor.expect(b':', b':')?;
        let second = range("second", cursor.digits(2)?, 0, 60)?;
        Self::finish(cursor.0, [year, month, day, hour, minute, second])
    }

    /// Reads what follows the seconds (an optional fraction, then the offset, then
    /// nothing) and completes the fields.
    #[inline]
    fn finish(
        rest: &[u8],
        [year, month, day, hour, minute, second]: [u32; 6],
    ) -> Result<Self, TimestampError> {
        let mut cursor = Cursor(rest);
        let nanos = cursor.fraction()?;
        let offset_minutes = cursor.offset()?;
        if !cursor.0.is_empty() {
            return Err(TimestampError::Syntax);
        }
        Ok(Self {
            year,
            month,
            day,
            hour,
            minute,
            second,
            nanos,
            offset_minutes,
        })
    }

    /// Unix seconds and nanoseconds.
    // Every field is bounded by `read` (year ≤ 9999, offset under a day), so the largest
    // intermediate is about 3.2e11: far inside i64.
    #[allow(clippy::arithmetic_side_effects)]
    fn instant(&self) -> (i64, u32) {
        let days = days_from_civil(i64::from(self.year), self.month, self.day);
        let seconds = days * 86_400
            + i64::from(self.hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.offset_minutes) * 60;
        (seconds, self.nanos)
    }
}

/// Eight ASCII `'0'`s in one word.
const ZEROS: u64 = u64::from_le_bytes([b'0'; 8]);

/// The eight bytes of `word` checked as ASCII digits at once: non-zero unless all are.
/// After subtracting `'0'` a digit lane is 0 to 9, and adding 0x76 sets its high bit only
/// if it was not; a borrow or carry into the next lane starts at a lane already found
/// wrong.
#[inline]
fn not_digits(word: u64) -> u64 {
    let lanes = word.wrapping_sub(ZEROS);
    (lanes.wrapping_add(0x7676_7676_7676_7676) | lanes) & 0x8080_8080_8080_8080
}

/// Whether `text` is a timestamp in the form OpenMail sends, `YYYY-MM-DDTHH:MM:SS.mmmZ`,
/// with a day of the month up to the 28th and a second up to 59: the common case, checked
/// in a few comparisons. `false` says nothing; [`Fields::read`] then decides. Every text
/// this accepts, [`Fields::read`] accepts too (a test holds the two together).
#[inline]
fn usual(text: &[u8; 24]) -> bool {
    #[rustfmt::skip]
    let [y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2, b'T', h1, h2, b':', i1, i2, b':', s1, s2, b'.', f1, f2, f3, b'Z'] =
        *text
    else {
        return false;
    };
    let date = u64::from_le_bytes([y1, y2, y3, y4, m1, m2, d1, d2]);
    let time = u64::from_le_bytes([h1, h2, i1, i2, s1, s2, f1, f2]);
    if not_digits(date) | not_digits(time) != 0 || !f3.is_ascii_digit() {
        return false;
    }
    // Each pair is two digits, so `b'0' * 11` is subtracted once from the pair's value.
    let pair = |tens: u8, units: u8| {
        u32::from(tens)
            .wrapping_mul(10)
            .wrapping_add(u32::from(units))
            .wrapping_sub(u32::from(b'0') * 11)
    };
    (1..=12).contains(&pair(m1, m2))
        && (1..=28).contains(&pair(d1, d2))
        && pair(h1, h2) <= 23
        && pair(i1, i2) <= 59
        && pair(s1, s2) <= 59
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's algorithm).
// Inputs are bounded (year 0..=9999, month 1..=12, day 1..=31) and every division is by a
// non-zero constant; all values stay below 4e6.
#[allow(clippy::arithmetic_side_effects)]
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn is_leap(year: u32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

#[inline]
fn range(field: &'static str, value: u32, low: u32, high: u32) -> Result<u32, TimestampError> {
    if (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(TimestampError::OutOfRange { field, value })
    }
}

/// Reads the grammar left to right; every step either consumes what it expects or fails.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    #[inline]
    fn next_if(&mut self, accept: impl Fn(u8) -> bool) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        if accept(first) {
            self.0 = rest;
            Some(first)
        } else {
            None
        }
    }

    /// One byte, `one` or `other`.
    #[inline]
    fn expect(&mut self, one: u8, other: u8) -> Result<u8, TimestampError> {
        self.next_if(|byte| byte == one || byte == other)
            .ok_or(TimestampError::Syntax)
    }

    #[inline]
    fn digit(&mut self) -> Option<u32> {
        self.next_if(|byte| byte.is_ascii_digit())
            .map(|byte| u32::from(byte.wrapping_sub(b'0')))
    }

    /// Exactly `count` (at most 4) ASCII digits.
    // At most four digits: the value stays below 10_000.
    #[allow(clippy::arithmetic_side_effects)]
    #[inline]
    fn digits(&mut self, count: usize) -> Result<u32, TimestampError> {
        let mut value = 0;
        for _ in 0..count {
            value = value * 10 + self.digit().ok_or(TimestampError::Syntax)?;
        }
        Ok(value)
    }

    /// An optional `.` and one or more digits, as nanoseconds.
    // `nanos` takes at most nine digits, so it stays below 1e9, and the scale is a power
    // of ten from the table.
    #[allow(clippy::arithmetic_side_effects)]
    #[inline]
    fn fraction(&mut self) -> Result<u32, TimestampError> {
        const SCALE: [u32; 10] = [
            1_000_000_000,
            100_000_000,
            10_000_000,
            1_000_000,
            100_000,
            10_000,
            1_000,
            100,
            10,
            1,
        ];
        if self.next_if(|byte| byte == b'.').is_none() {
            return Ok(0);
        }
        let mut nanos = 0;
        let mut count = 0_usize;
        while let Some(digit) = self.digit() {
            if count < 9 {
                nanos = nanos * 10 + digit;
            }
            count = count.saturating_add(1);
        }
        if count == 0 {
            return Err(TimestampError::Syntax);
        }
        Ok(nanos * SCALE.get(count.min(9)).copied().unwrap_or(1))
    }

    /// `Z`, or `+HH:MM` / `-HH:MM`, as minutes east of UTC.
    // Hours ≤ 23 and minutes ≤ 59 are checked first, so the result is within ±1439.
    #[allow(clippy::arithmetic_side_effects)]
    #[inline]
    fn offset(&mut self) -> Result<i16, TimestampError> {
        let sign = self
            .next_if(|byte| matches!(byte, b'Z' | b'z' | b'+' | b'-'))
            .ok_or(TimestampError::Syntax)?;
        if sign == b'Z' || sign == b'z' {
            return Ok(0);
        }
        let hours = range("offset hour", self.digits(2)?, 0, 23)?;
        self.expect(b':', b':')?;
        let minutes = range("offset minute", self.digits(2)?, 0, 59)?;
        let total = i16::try_from(hours * 60 + minutes).map_err(|_| TimestampError::Syntax)?;
        Ok(if sign == b'-' { -total } else { total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values from python3:
    // datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp(), floored.
    #[test]
    fn known_instants() {
        for (text, seconds, nanos) in [
            ("2024-03-21T10:05:00.000Z", 1_711_015_500, 0),
            ("2024-03-21T10:05:01.000Z", 1_711_015_501, 0),
            ("1970-01-01T00:00:00Z", 0, 0),
            (
                "2024-02-29T23:59:59.999999999+05:30",
                1_709_231_399,
                999_999_999,
            ),
            ("1969-12-31T23:59:59.5Z", -1, 500_000_000),
            ("0001-01-01T00:00:00Z", -62_135_596_800, 0),
            ("9999-12-31T23:59:59Z", 253_402_300_799, 0),
            ("2000-03-01T00:00:00-08:00", 951_897_600, 0),
        ] {
            let timestamp = Timestamp::parse(text).unwrap();
            assert_eq!(timestamp.unix_seconds(), seconds, "{text}");
            assert_eq!(timestamp.subsec_nanos(), nanos, "{text}");
            assert_eq!(timestamp.as_str(), text);
        }
    }

    #[test]
    fn instant_not_text_decides_equality_and_order() {
        let a = Timestamp::parse("2024-03-21T10:05:00Z").unwrap();
        let b = Timestamp::parse("2024-03-21t11:05:00.000000000+01:00").unwrap();
        let later = Timestamp::parse("2024-03-21T10:05:00.001Z").unwrap();
        assert_eq!(a, b);
        assert!(later > a);
        assert_eq!(b.offset_minutes(), 60);
        assert_eq!(
            Timestamp::parse("2024-03-21T10:05:00-00:30")
                .unwrap()
                .offset_minutes(),
            -30
        );
    }

    #[test]
    fn leap_second_reads_as_next_minute() {
        let leap = Timestamp::parse("2016-12-31T23:59:60Z").unwrap();
        let next = Timestamp::parse("2017-01-01T00:00:00Z").unwrap();
        assert_eq!(leap, next);
        assert_eq!(leap.as_str(), "2016-12-31T23:59:60Z");
    }

    #[test]
    fn fraction_past_nanoseconds_is_truncated() {
        let timestamp = Timestamp::parse("2024-03-21T10:05:00.1234567891234Z").unwrap();
        assert_eq!(timestamp.subsec_nanos(), 123_456_789);
    }

    /// The one-step read of the common shape and the step-by-step read agree, error
    /// included, on every single-byte change to a timestamp.
    #[test]
    fn the_quick_read_agrees_with_the_slow_one() {
        let summary = |result: Result<Fields, TimestampError>| {
            result.map(|fields| (fields.instant(), fields.offset_minutes))
        };
        for base in [
            "2024-02-29T23:59:60.123456789+05:30",
            "1999-12-31t00:00:00Z",
            "2023-02-28T12:30:45.5-08:00",
        ] {
            for at in 0..base.len() {
                for byte in b"0123459:-.+TtZz /a\xff"
                    .iter()
                    .copied()
                    .chain([0x80, b'3'])
                {
                    let mut text = base.as_bytes().to_vec();
                    text[at] = byte;
                    assert_eq!(
                        summary(Fields::read(&text)),
                        summary(Fields::read_slowly(&text)),
                        "{}",
                        String::from_utf8_lossy(&text)
                    );
                }
            }
        }
    }

    /// The shortcut for the usual form never accepts what the full read refuses, and
    /// takes the usual form whenever it can.
    #[test]
    fn the_usual_form_agrees_with_the_full_read() {
        for base in [
            "2024-03-21T10:05:00.000Z",
            "1999-12-28T23:59:59.999Z",
            "2000-01-01T00:00:00.000Z",
        ] {
            assert!(usual(base.as_bytes().try_into().unwrap()), "{base}");
            for at in 0..base.len() {
                for byte in 0..=255_u8 {
                    let mut text = base.as_bytes().to_vec();
                    text[at] = byte;
                    let text: [u8; 24] = text.try_into().unwrap();
                    if usual(&text) {
                        assert!(
                            Fields::read(&text).is_ok(),
                            "{}",
                            String::from_utf8_lossy(&text)
                        );
                    }
                }
            }
        }
        // Every month, day, hour, minute and second at the edge of its range.
        for (month, day, hour, minute, second) in [
            (0, 1, 0, 0, 0),
            (13, 1, 0, 0, 0),
            (12, 0, 0, 0, 0),
            (2, 29, 0, 0, 0),
            (2, 30, 0, 0, 0),
            (1, 28, 24, 0, 0),
            (1, 28, 23, 60, 0),
            (1, 28, 23, 59, 60),
            (1, 28, 23, 59, 61),
        ] {
            let text = format!("2023-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.000Z");
            let text: &[u8; 24] = text.as_bytes().try_into().unwrap();
            assert!(!usual(text) || Fields::read(text).is_ok());
            assert_eq!(
                Stamp::validate(text).is_ok(),
                Fields::read(text).is_ok(),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for text in [
            "",
            "2024-03-21",
            "2024-03-21 10:05:00Z",
            "2024-03-21T10:05:00",
            "2024-03-21T10:05Z",
            "2024-3-21T10:05:00Z",
            "24-03-21T10:05:00Z",
            "2024-03-21T10:05:00.Z",
            "2024-03-21T10:05:00+0100",
            "2024-03-21T10:05:00Z ",
            "+2024-03-21T10:05:00Z",
            "2024-03-21T10:05:00UTC",
            "١٩٧٠-01-01T00:00:00Z",
            "1711015500",
        ] {
            assert_eq!(
                Timestamp::parse(text).unwrap_err(),
                TimestampError::Syntax,
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejects_impossible_values() {
        for (text, field, value) in [
            ("2024-13-01T00:00:00Z", "month", 13),
            ("2024-00-01T00:00:00Z", "month", 0),
            ("2023-02-29T00:00:00Z", "day", 29),
            ("1900-02-29T00:00:00Z", "day", 29),
            ("2024-04-31T00:00:00Z", "day", 31),
            ("2024-03-21T24:00:00Z", "hour", 24),
            ("2024-03-21T10:60:00Z", "minute", 60),
            ("2024-03-21T10:05:61Z", "second", 61),
            ("2024-03-21T10:05:00+24:00", "offset hour", 24),
            ("2024-03-21T10:05:00+01:60", "offset minute", 60),
        ] {
            assert_eq!(
                Timestamp::parse(text).unwrap_err(),
                TimestampError::OutOfRange { field, value },
                "{text}"
            );
        }
        assert!(Timestamp::parse("2000-02-29T00:00:00Z").is_ok());
    }

    #[test]
    fn system_time_matches_unix_seconds() {
        let before = Timestamp::parse("1969-12-31T23:59:59.5Z").unwrap();
        assert_eq!(
            SystemTime::UNIX_EPOCH
                .duration_since(before.to_system_time().unwrap())
                .unwrap(),
            Duration::from_millis(500)
        );
        let after = Timestamp::parse("2024-03-21T10:05:00.25Z").unwrap();
        assert_eq!(
            after
                .to_system_time()
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap(),
            Duration::new(1_711_015_500, 250_000_000)
        );
    }

    #[test]
    fn serde_keeps_the_text_and_reports_bad_input() {
        let timestamp: Timestamp = serde_json::from_str(r#""2024-03-21T10:05:00.000Z""#).unwrap();
        assert_eq!(
            serde_json::to_string(&timestamp).unwrap(),
            r#""2024-03-21T10:05:00.000Z""#
        );
        let error = serde_json::from_str::<Timestamp>(r#""2024-02-30T00:00:00Z""#).unwrap_err();
        assert!(error.to_string().contains("day 30"), "{error}");
        assert!(serde_json::from_str::<Timestamp>("1711015500").is_err());
    }
}
