//! Exponential backoff with jitter: the schedule as a pure function, and the randomness
//! apart from it.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// A doubling schedule: `initial`, `2 × initial`, … capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// A schedule from `initial` to `max`. A zero `initial` becomes 1 ms, so that a
    /// failing server is never hammered in a tight loop, and `max` is at least `initial`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The schedule's delay before retry number `step` (from 0), without jitter.
    pub(crate) fn ceiling(&self, step: u32) -> Duration {
        let factor = 1u32.checked_shl(step).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay before retry number `step`, with jitter: between half the ceiling and the
    /// ceiling, placed by `unit` (from 0 to 1). Never more than the schedule says, and
    /// never less than half of it, so replicas spread out without retrying much sooner.
    pub(crate) fn delay(&self, step: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(step);
        let half = ceiling.checked_div(2).unwrap_or_default();
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        half.saturating_add(half.mul_f64(unit))
    }

    /// [`delay`](Self::delay) with a random `unit`.
    pub(crate) fn jittered(&self, step: u32) -> Duration {
        self.delay(step, random_unit())
    }
}

/// A number from 0 (inclusive) to 1 (exclusive), different in every call and every
/// process. Jitter needs spread, not unpredictability: std's `RandomState` is seeded from
/// the operating system's randomness once per thread and offset per instance, which is
/// plenty, and saves a dependency on a random number generator.
pub(crate) fn random_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    // 53 random bits: exactly what an f64 mantissa holds.
    let bits = hasher.finish() >> 11;
    #[allow(clippy::cast_precision_loss)] // 53 bits fit an f64 exactly
    let value = bits as f64;
    value / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(value: f64) -> Duration {
        Duration::from_secs_f64(value)
    }

    #[test]
    fn the_documented_schedule_doubles_from_1_s_to_30_s() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let ceilings: Vec<u64> = (0..8).map(|step| backoff.ceiling(step).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(30));
        assert_eq!(backoff.ceiling(40), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_between_half_the_ceiling_and_the_ceiling() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(backoff.delay(0, 0.0), seconds(0.5));
        assert_eq!(backoff.delay(0, 1.0), seconds(1.0));
        assert_eq!(backoff.delay(2, 0.5), seconds(3.0));
        assert_eq!(backoff.delay(9, 0.0), seconds(15.0));
        assert_eq!(backoff.delay(9, f64::NAN), seconds(15.0));
        assert_eq!(backoff.delay(9, 7.0), seconds(30.0));
        for step in 0..10 {
            let delay = backoff.jittered(step);
            let ceiling = backoff.ceiling(step);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{delay:?} {ceiling:?}"
            );
        }
    }

    #[test]
    fn random_units_spread() {
        let units: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
        assert!(units.iter().all(|unit| (0.0..1.0).contains(unit)));
        let low = units.iter().filter(|unit| **unit < 0.5).count();
        // A fair coin gives 500 ± 16 (one standard deviation); this fails 1 in 10^20 times.
        assert!((350..650).contains(&low), "{low} of 1000 below 0.5");
    }

    #[test]
    fn a_zero_or_inverted_configuration_is_made_safe() {
        let backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(backoff.ceiling(0), Duration::from_millis(1));
        let backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(3), Duration::from_secs(5));
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.ceiling(3), Duration::MAX);
        assert!(huge.delay(3, 1.0) <= Duration::MAX);
    }
}
