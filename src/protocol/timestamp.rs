use std::time::{SystemTime, UNIX_EPOCH};

use super::VerifyError;

/// Where "now" comes from when a timestamp is checked against the tolerance: the
/// operating system's wall clock, or the closure given to a `clock` builder method.
pub(crate) trait Clock: Send + Sync + 'static {
    /// The current time in whole seconds since the Unix epoch.
    fn now(&self) -> i64;
}

/// The operating system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            // A clock set before 1970 is wrong, but it is still a time to compare with.
            Err(before) => i64::try_from(before.duration().as_secs())
                .map(|secs| secs.saturating_neg())
                .unwrap_or(i64::MIN),
        }
    }
}

impl<F> Clock for F
where
    F: Fn() -> i64 + Send + Sync + 'static,
{
    fn now(&self) -> i64 {
        self()
    }
}

/// Parses `X-Timestamp` as a plain decimal integer: an optional `-` and ASCII digits, with
/// no sign, space, underscore or exponent. Overflow is a rejection, never a wrap or a panic.
pub(crate) fn parse_timestamp(raw: &[u8]) -> Result<i64, VerifyError> {
    let (negative, digits) = match raw.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, raw),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(VerifyError::TimestampMalformed);
    }
    let mut value: i64 = 0;
    for &digit in digits {
        let digit = i64::from(digit.wrapping_sub(b'0'));
        value = value
            .checked_mul(10)
            .and_then(|tens| {
                if negative {
                    tens.checked_sub(digit)
                } else {
                    tens.checked_add(digit)
                }
            })
            .ok_or(VerifyError::TimestampOutOfRange)?;
    }
    Ok(value)
}

/// Accepts `timestamp` when `|now - timestamp| <= tolerance`; both ends are inclusive.
pub(crate) fn check_freshness(timestamp: i64, now: i64, tolerance: u64) -> Result<(), VerifyError> {
    // i64 - i64 always fits in i128, so this never fails; checked all the same.
    let offset = i128::from(now)
        .checked_sub(i128::from(timestamp))
        .ok_or(VerifyError::TimestampOutOfRange)?;
    if offset.unsigned_abs() <= u128::from(tolerance) {
        return Ok(());
    }
    let offset = i64::try_from(offset).unwrap_or(if offset > 0 { i64::MAX } else { i64::MIN });
    Err(VerifyError::TimestampOutsideTolerance { offset, tolerance })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_decimal_integers_parse() {
        assert_eq!(parse_timestamp(b"1790000000"), Ok(1_790_000_000));
        assert_eq!(parse_timestamp(b"0001790000000"), Ok(1_790_000_000));
        assert_eq!(parse_timestamp(b"0"), Ok(0));
        assert_eq!(parse_timestamp(b"-5"), Ok(-5));
        assert_eq!(parse_timestamp(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_timestamp(b"-9223372036854775808"), Ok(i64::MIN));
    }

    #[test]
    fn anything_else_is_malformed() {
        for raw in [
            &b""[..],
            b"-",
            b"+1790000000",
            b" 1790000000",
            b"1790000000 ",
            b"1_790_000_000",
            b"1.79e9",
            b"1790000000.5",
            b"0x6AB0D780",
            b"--5",
            b"\xd9\xa1",
            b"\xff",
        ] {
            assert_eq!(
                parse_timestamp(raw),
                Err(VerifyError::TimestampMalformed),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn out_of_range_integers_are_rejected_without_overflow() {
        for raw in [
            &b"9223372036854775808"[..],
            b"-9223372036854775809",
            b"18446744073709551615",
            b"123456789012345678901234567890",
            b"-123456789012345678901234567890",
        ] {
            assert_eq!(
                parse_timestamp(raw),
                Err(VerifyError::TimestampOutOfRange),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn tolerance_is_inclusive_in_both_directions() {
        let now = 1_790_000_000;
        assert_eq!(check_freshness(now - 300, now, 300), Ok(()));
        assert_eq!(check_freshness(now + 300, now, 300), Ok(()));
        assert_eq!(
            check_freshness(now - 301, now, 300),
            Err(VerifyError::TimestampOutsideTolerance {
                offset: 301,
                tolerance: 300
            })
        );
        assert_eq!(
            check_freshness(now + 301, now, 300),
            Err(VerifyError::TimestampOutsideTolerance {
                offset: -301,
                tolerance: 300
            })
        );
    }

    #[test]
    fn extreme_timestamps_saturate_the_reported_offset() {
        assert_eq!(
            check_freshness(i64::MIN, i64::MAX, 300),
            Err(VerifyError::TimestampOutsideTolerance {
                offset: i64::MAX,
                tolerance: 300
            })
        );
        assert_eq!(
            check_freshness(i64::MAX, i64::MIN, u64::MAX),
            Ok(()),
            "a tolerance of u64::MAX seconds covers the whole i64 range"
        );
        assert_eq!(
            check_freshness(i64::MAX, i64::MIN, 0),
            Err(VerifyError::TimestampOutsideTolerance {
                offset: i64::MIN,
                tolerance: 0
            })
        );
    }

    #[test]
    fn the_message_says_how_far_off_and_which_way() {
        let old = check_freshness(1_000, 1_412, 300).unwrap_err().to_string();
        assert!(
            old.starts_with("X-Timestamp is 412 s old (tolerance 300 s)"),
            "{old}"
        );
        let future = check_freshness(1_412, 1_000, 300).unwrap_err().to_string();
        assert!(
            future.starts_with("X-Timestamp is 412 s in the future"),
            "{future}"
        );
    }
}
