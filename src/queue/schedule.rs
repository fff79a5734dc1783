//! Retry schedule (`outbound.ini temp_fail_intervals`, `maxTempFailures`).
//!
//! Haraka's rules (`outbound/config.js set_temp_fail_intervals`, haraka-behaviour.md 5.9):
//!
//! - `temp_fail_intervals` is a comma list of `<n><s|m|h|d>[*count]`, whitespace ignored,
//!   case ignored: `1m, 5m*2, 1h*3` is `[60, 300, 300, 3600, 3600, 3600]` seconds.
//! - `none` means no retries: the first temporary failure bounces.
//! - Unset, the schedule is `2^(i+5)` seconds for `i = 1..maxTempFailures-1`
//!   (13 → 64, 128, …, 131072 s, about 3 days in all).
//! - After failure number `k` the item waits `intervals[k-1]`; when `k` is past the end of the
//!   list it bounces ("Too many failures").
//!
//! One deliberate difference: Haraka logs a syntax error and silently falls back to the
//! default schedule. posta refuses the configuration with an error naming the bad element,
//! so a typo cannot quietly turn "retry for an hour" into "retry for three days".

use std::time::Duration;

/// Haraka's `maxTempFailures` default.
pub const DEFAULT_MAX_TEMP_FAILURES: u32 = 13;

/// Haraka's floor for one interval; a shorter one is a configuration error.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Upper bound on the length of a schedule, so `1m*4000000000` or `maxTempFailures=4e9`
/// is an error instead of gigabytes of intervals.
pub const MAX_RETRIES: usize = 10_000;

/// How long to wait after each temporary failure before the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    intervals: Vec<Duration>,
}

impl Default for RetrySchedule {
    /// Haraka's default: `2^(i+5)` s for 13 max temp failures.
    fn default() -> Self {
        Self::doubling(DEFAULT_MAX_TEMP_FAILURES)
    }
}

impl RetrySchedule {
    /// Build the schedule from `temp_fail_intervals` (`None` or empty when unset) and
    /// `maxTempFailures` (used only when `temp_fail_intervals` is unset; 0 means Haraka's 13,
    /// as Haraka treats 0 as unset).
    ///
    /// Errors name the element (1-based) and what is wrong with it. An interval under 5 s is
    /// an error, not clamped: Haraka rejects it too, and a silent clamp would hide the typo.
    pub fn parse(temp_fail_intervals: Option<&str>, max_temp_failures: u32) -> Result<RetrySchedule, String> {
        let spec: String = temp_fail_intervals
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        // Haraka's `if (!cfg.temp_fail_intervals)` treats an empty value as unset.
        if spec.is_empty() {
            let max = if max_temp_failures == 0 {
                DEFAULT_MAX_TEMP_FAILURES
            } else {
                max_temp_failures
            };
            if max as usize > MAX_RETRIES + 1 {
                return Err(format!(
                    "maxTempFailures {max} is too large (at most {})",
                    MAX_RETRIES + 1
                ));
            }
            return Ok(Self::doubling(max));
        }
        if spec == "none" {
            return Ok(RetrySchedule { intervals: Vec::new() });
        }
        let mut intervals = Vec::new();
        for (i, element) in spec.split(',').enumerate() {
            let (delay, count) = parse_element(element)
                .map_err(|why| format!("temp_fail_intervals element {} '{element}': {why}", i + 1))?;
            if intervals.len() + count > MAX_RETRIES {
                return Err(format!("temp_fail_intervals: more than {MAX_RETRIES} retries"));
            }
            intervals.extend(std::iter::repeat_n(delay, count));
        }
        Ok(RetrySchedule { intervals })
    }

    /// Haraka's legacy schedule: `2^(i+5)` seconds for `i = 1..max_temp_failures-1`.
    fn doubling(max_temp_failures: u32) -> RetrySchedule {
        let intervals = (1..max_temp_failures)
            .map(|i| Duration::from_secs(1u64.checked_shl(i + 5).unwrap_or(u64::MAX)))
            .collect();
        RetrySchedule { intervals }
    }

    /// The wait after failure number `failures` (counting the one that just happened, so the
    /// first temporary failure is 1; 0 is taken as 1). `None` means the retries are used up
    /// and the item bounces now.
    pub fn delay_after(&self, failures: u32) -> Option<Duration> {
        let idx = (failures.max(1) - 1) as usize;
        self.intervals.get(idx).copied()
    }

    /// The intervals in order.
    pub fn intervals(&self) -> &[Duration] {
        &self.intervals
    }

    /// How many temporary failures are retried (Haraka: `temp_fail_intervals.length`).
    pub fn retries(&self) -> usize {
        self.intervals.len()
    }

    /// Time from the first failure to the bounce, if every retry fails.
    pub fn total(&self) -> Duration {
        self.intervals.iter().fold(Duration::ZERO, |a, d| a.saturating_add(*d))
    }
}

/// One `<n><unit>[*count]` element, already stripped of whitespace and lower-cased.
fn parse_element(element: &str) -> Result<(Duration, usize), String> {
    if element.is_empty() {
        return Err("empty element".into());
    }
    let (span, count) = match element.split_once('*') {
        None => (element, 1),
        Some((span, count)) => {
            if count.contains('*') {
                return Err("too many '*'".into());
            }
            let n: usize = count
                .parse()
                .map_err(|_| format!("multiplier '{count}' is not a positive integer"))?;
            if n == 0 {
                return Err("multiplier must be at least 1".into());
            }
            (span, n)
        }
    };
    let Some(unit) = span.chars().last() else {
        return Err("missing time span".into());
    };
    let number = &span[..span.len() - unit.len_utf8()];
    let scale: f64 = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        _ => return Err(format!("unit '{unit}' is not one of s, m, h, d")),
    };
    // Haraka uses JavaScript's Number(), so `1.5m` is 90 s; take plain decimals only.
    let valid = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1
        && number != ".";
    if !valid {
        return Err(format!("'{number}' is not a number"));
    }
    let secs = number
        .parse::<f64>()
        .map_err(|_| format!("'{number}' is not a number"))?
        * scale;
    let delay = Duration::try_from_secs_f64(secs).map_err(|_| format!("'{span}' is out of range"))?;
    if delay < MIN_INTERVAL {
        return Err(format!(
            "delay {secs} s is too small, should be >= {} s",
            MIN_INTERVAL.as_secs()
        ));
    }
    Ok((delay, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &RetrySchedule) -> Vec<u64> {
        s.intervals().iter().map(|d| d.as_secs()).collect()
    }

    #[test]
    fn default_is_harakas_doubling() {
        let s = RetrySchedule::parse(None, 13).unwrap();
        assert_eq!(
            secs(&s),
            [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]
        );
        assert_eq!(s, RetrySchedule::default());
        assert_eq!(RetrySchedule::parse(Some(""), 13).unwrap(), s);
        assert_eq!(RetrySchedule::parse(None, 0).unwrap(), s);
        assert_eq!(secs(&RetrySchedule::parse(None, 3).unwrap()), [64, 128]);
        assert_eq!(RetrySchedule::parse(None, 1).unwrap().retries(), 0);
        // ≈ 3.03 days in all.
        assert_eq!(s.total().as_secs(), 262_080);
    }

    #[test]
    fn harakas_examples() {
        let s = RetrySchedule::parse(Some("10s, 1m*2"), 13).unwrap();
        assert_eq!(secs(&s), [10, 60, 60]);
        let s = RetrySchedule::parse(Some("1m, 5m*2, 1h*3"), 13).unwrap();
        assert_eq!(secs(&s), [60, 300, 300, 3600, 3600, 3600]);
        let s = RetrySchedule::parse(Some("30s, 1m, 5m, 9m, 15m*3, 30m*2, 1h*3, 2h*3, 1d"), 13).unwrap();
        assert_eq!(
            secs(&s),
            [30, 60, 300, 540, 900, 900, 900, 1800, 1800, 3600, 3600, 3600, 7200, 7200, 7200, 86400]
        );
    }

    #[test]
    fn none_bounces_on_first_failure() {
        let s = RetrySchedule::parse(Some(" NONE "), 13).unwrap();
        assert_eq!(s.retries(), 0);
        assert_eq!(s.delay_after(1), None);
    }

    #[test]
    fn whitespace_case_and_decimals() {
        let s = RetrySchedule::parse(Some(" 1 M * 2 ,\t2H "), 13).unwrap();
        assert_eq!(secs(&s), [60, 60, 7200]);
        let s = RetrySchedule::parse(Some("1.5m"), 13).unwrap();
        assert_eq!(secs(&s), [90]);
    }

    #[test]
    fn delay_after_counts_from_one() {
        let s = RetrySchedule::parse(Some("10s, 1m*2"), 13).unwrap();
        assert_eq!(s.delay_after(0), Some(Duration::from_secs(10)));
        assert_eq!(s.delay_after(1), Some(Duration::from_secs(10)));
        assert_eq!(s.delay_after(2), Some(Duration::from_secs(60)));
        assert_eq!(s.delay_after(3), Some(Duration::from_secs(60)));
        assert_eq!(s.delay_after(4), None);
        assert_eq!(s.delay_after(u32::MAX), None);
    }

    #[test]
    fn errors_name_the_bad_element() {
        let cases = [
            ("60 min", "element 1 '60min'"),
            ("10s, 1x", "element 2 '1x'"),
            ("10s,,1m", "element 2 ''"),
            ("1m*2*3", "too many '*'"),
            ("1m*x", "not a positive integer"),
            ("1m*0", "at least 1"),
            ("1m*-1", "not a positive integer"),
            ("m", "'' is not a number"),
            ("4s", "too small"),
            ("0.05m", "too small"),
            ("1e3s", "'1e3' is not a number"),
            ("..5s", "not a number"),
            ("1m*20000", "more than 10000"),
        ];
        for (spec, want) in cases {
            let err = RetrySchedule::parse(Some(spec), 13).unwrap_err();
            assert!(err.contains(want), "{spec:?}: {err:?} should contain {want:?}");
            assert!(err.contains("temp_fail_intervals"), "{err}");
        }
        assert!(RetrySchedule::parse(None, 20_000)
            .unwrap_err()
            .contains("maxTempFailures"));
    }

    #[test]
    fn five_seconds_is_allowed() {
        assert_eq!(secs(&RetrySchedule::parse(Some("5s"), 13).unwrap()), [5]);
    }

    #[test]
    fn huge_max_temp_failures_saturates_instead_of_overflowing() {
        let s = RetrySchedule::parse(None, 100).unwrap();
        assert_eq!(s.retries(), 99);
        assert_eq!(s.delay_after(99), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(s.total(), Duration::MAX);
    }
}
