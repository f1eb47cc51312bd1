//! Text forms of the temporal types: what a written value may look like (sql.md §2.2) and how
//! results are rendered (§2.3): timestamps `YYYY-MM-DDTHH:MM:SS.ffffffZ`, dates `YYYY-MM-DD`,
//! times `HH:MM:SS.ffffff`.

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime};

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;
const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// The earliest TIMESTAMP, 0001-01-01T00:00:00.000000Z.
pub const MIN_TIMESTAMP_MICROS: i64 = -62_135_596_800 * MICROS_PER_SECOND;
/// The latest TIMESTAMP, 9999-12-31T23:59:59.999999Z.
pub const MAX_TIMESTAMP_MICROS: i64 = 253_402_300_800 * MICROS_PER_SECOND - 1;

/// Renders microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_timestamp_micros(micros: i64) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => micros.to_string(),
    }
}

/// Parses `YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]][Z|±HH[:MM]]` or `YYYY-MM-DD` (midnight) into
/// microseconds since the epoch, UTC. A value with an offset is converted to UTC, one without is
/// taken as UTC; fraction digits beyond the sixth are truncated; a seconds field of 60 rolls over
/// into the next minute. `None` outside years 0001-9999 (after the offset is applied).
pub fn parse_timestamp_micros(text: &str) -> Option<i64> {
    let mut scan = Scanner::new(text);
    let days = i64::from(scan.date()?);
    let mut micros = days * MICROS_PER_DAY;
    if !scan.is_empty() {
        scan.eat(b"Tt ")?;
        micros += scan.clock(true)?;
        if !scan.is_empty() {
            micros -= scan.offset_micros()?;
        }
    }
    scan.is_empty().then_some(micros).and_then(check_timestamp_micros)
}

/// `Some(micros)` if it lies within years 0001-9999, the TIMESTAMP domain.
pub fn check_timestamp_micros(micros: i64) -> Option<i64> {
    (MIN_TIMESTAMP_MICROS..=MAX_TIMESTAMP_MICROS).contains(&micros).then_some(micros)
}

pub fn format_date_days(days: i32) -> String {
    days.checked_add(UNIX_EPOCH_DAYS_FROM_CE)
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| days.to_string())
}

/// Parses `YYYY-MM-DD` (years 0001-9999) into days since the epoch.
pub fn parse_date_days(text: &str) -> Option<i32> {
    let mut scan = Scanner::new(text);
    let days = scan.date()?;
    scan.is_empty().then_some(days)
}

pub fn format_time_micros(micros: i64) -> String {
    let secs = (micros / 1_000_000) as u32;
    let nanos = ((micros % 1_000_000) * 1000) as u32;
    NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .map(|t| t.format("%H:%M:%S%.6f").to_string())
        .unwrap_or_else(|| micros.to_string())
}

/// Parses `HH:MM`, `HH:MM:SS` or `HH:MM:SS.fraction` (00 <= HH <= 23, fraction truncated to
/// microseconds) into microseconds since midnight.
pub fn parse_time_micros(text: &str) -> Option<i64> {
    let mut scan = Scanner::new(text);
    let micros = scan.clock(false)?;
    scan.is_empty().then_some(micros)
}

/// Reads the fixed-width fields of temporal text, left to right.
struct Scanner<'a> {
    rest: &'a [u8],
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text.trim().as_bytes() }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Consumes one of `any_of`.
    fn eat(&mut self, any_of: &[u8]) -> Option<u8> {
        let (&first, tail) = self.rest.split_first()?;
        any_of.contains(&first).then(|| {
            self.rest = tail;
            first
        })
    }

    /// Exactly `width` ASCII digits.
    fn number(&mut self, width: usize) -> Option<u32> {
        let (field, tail) = self.rest.split_at_checked(width)?;
        if !field.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.rest = tail;
        Some(field.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
    }

    /// `YYYY-MM-DD`, a real calendar date from 0001-01-01, as days since the epoch.
    fn date(&mut self) -> Option<i32> {
        let year = self.number(4)?;
        self.eat(b"-")?;
        let month = self.number(2)?;
        self.eat(b"-")?;
        let day = self.number(2)?;
        let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok().filter(|y| *y >= 1)?, month, day)?;
        Some(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE)
    }

    /// `HH:MM[:SS[.fraction]]` as microseconds since midnight. With `leap_second`, a seconds
    /// field of 60 is accepted (the result then reaches into the next minute).
    fn clock(&mut self, leap_second: bool) -> Option<i64> {
        let hour = self.number(2).filter(|h| *h <= 23)?;
        self.eat(b":")?;
        let minute = self.number(2).filter(|m| *m <= 59)?;
        let (mut second, mut fraction) = (0, 0);
        if self.eat(b":").is_some() {
            second = self.number(2).filter(|s| *s <= 59 || (leap_second && *s == 60))?;
            if self.eat(b".").is_some() {
                fraction = self.fraction_micros()?;
            }
        }
        let seconds = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
        Some(seconds * MICROS_PER_SECOND + fraction)
    }

    /// One or more digits after the decimal point, truncated to microseconds.
    fn fraction_micros(&mut self) -> Option<i64> {
        let len = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        let (digits, tail) = self.rest.split_at(len);
        self.rest = tail;
        let micros = digits.iter().chain(std::iter::repeat(&b'0')).take(6);
        Some(micros.fold(0, |acc, d| acc * 10 + i64::from(d - b'0')))
    }

    /// `Z` or `±HH[:MM]`, as the offset east of UTC in microseconds.
    fn offset_micros(&mut self) -> Option<i64> {
        if self.eat(b"Zz").is_some() {
            return Some(0);
        }
        let sign = if self.eat(b"+-")? == b'-' { -1 } else { 1 };
        let hours = self.number(2).filter(|h| *h <= 23)?;
        let minutes = if self.eat(b":").is_some() { self.number(2).filter(|m| *m <= 59)? } else { 0 };
        Some(sign * (i64::from(hours) * 3600 + i64::from(minutes) * 60) * MICROS_PER_SECOND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Option<String> {
        parse_timestamp_micros(text).map(format_timestamp_micros)
    }

    #[test]
    fn temporal_text_round_trips() {
        let ts = parse_timestamp_micros("2025-10-20T10:30:00.123456Z").unwrap();
        assert_eq!(format_timestamp_micros(ts), "2025-10-20T10:30:00.123456Z");
        assert_eq!(parse_timestamp_micros("2025-10-20 10:30:00"), parse_timestamp_micros("2025-10-20T10:30:00Z"));
        assert_eq!(format_date_days(parse_date_days("2024-02-29").unwrap()), "2024-02-29");
        assert_eq!(parse_date_days("1970-01-01"), Some(0));
        assert_eq!(format_time_micros(parse_time_micros("23:59:59.000001").unwrap()), "23:59:59.000001");
    }

    #[test]
    fn timestamps_take_every_documented_shape() {
        let expected = Some("2025-10-24T14:30:00.000000Z".to_string());
        for text in [
            "2025-10-24T14:30:00",
            "2025-10-24 14:30:00",
            "2025-10-24t14:30:00",
            "2025-10-24T14:30",
            "2025-10-24 14:30Z",
            "2025-10-24T14:30:00Z",
            "2025-10-24T14:30:00+00:00",
            "2025-10-24T19:30:00+05",
            "2025-10-24T20:00+05:30",
            "2025-10-24T09:30:00-05:00",
            "  2025-10-24T14:30:00.000  ",
        ] {
            assert_eq!(ts(text), expected, "{text}");
        }
        assert_eq!(ts("2025-10-24"), Some("2025-10-24T00:00:00.000000Z".into()));
        assert_eq!(ts("2025-10-24T14:30:00+05"), Some("2025-10-24T09:30:00.000000Z".into()));
        assert_eq!(ts("2025-03-30T03:30:00+02:00"), Some("2025-03-30T01:30:00.000000Z".into()));
    }

    #[test]
    fn fractions_truncate_and_leap_seconds_roll_over() {
        assert_eq!(ts("2025-10-24T14:30:00.123456789Z"), Some("2025-10-24T14:30:00.123456Z".into()));
        assert_eq!(ts("2025-10-24T14:30:00.9999999"), Some("2025-10-24T14:30:00.999999Z".into()));
        assert_eq!(ts("2025-10-24T14:30:00.5"), Some("2025-10-24T14:30:00.500000Z".into()));
        assert_eq!(ts("2025-06-30T23:59:60"), Some("2025-07-01T00:00:00.000000Z".into()));
        assert_eq!(ts("2025-06-30T23:59:60.25"), Some("2025-07-01T00:00:00.250000Z".into()));
    }

    #[test]
    fn timestamps_span_years_1_to_9999() {
        assert_eq!(parse_timestamp_micros("0001-01-01T00:00:00Z"), Some(MIN_TIMESTAMP_MICROS));
        assert_eq!(parse_timestamp_micros("9999-12-31T23:59:59.999999Z"), Some(MAX_TIMESTAMP_MICROS));
        assert_eq!(format_timestamp_micros(MIN_TIMESTAMP_MICROS), "0001-01-01T00:00:00.000000Z");
        assert_eq!(format_timestamp_micros(MAX_TIMESTAMP_MICROS), "9999-12-31T23:59:59.999999Z");
        assert_eq!(parse_timestamp_micros("0000-12-31T00:00:00Z"), None);
        // Valid as written, but the offset or the leap second leaves the domain.
        assert_eq!(parse_timestamp_micros("0001-01-01T00:00:00+01:00"), None);
        assert_eq!(parse_timestamp_micros("9999-12-31T23:59:60Z"), None);
        assert_eq!(check_timestamp_micros(MAX_TIMESTAMP_MICROS + 1), None);
        assert_eq!(check_timestamp_micros(0), Some(0));
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        for text in [
            "not a time",
            "",
            "2025-13-01",
            "2025-02-30",
            "2025-10-24T25:00:00",
            "2025-10-24T24:00:00",
            "2025-10-24T14:60:00",
            "2025-10-24T14:30:61",
            "24/10/2025",
            "2025-1-5",
            "+12025-01-01",
            "2025-10-24T",
            "2025-10-24T14",
            "2025-10-24T14:30:00.",
            "2025-10-24T14:30.5",
            "2025-10-24T14:30:00 +05:00",
            "2025-10-24T14:30:00+5",
            "2025-10-24T14:30:00+0530",
            "2025-10-24T14:30:00+24:00",
            "2025-10-24T14:30:00ZZ",
            "2025-10-24X14:30:00",
            "1761316200123456",
        ] {
            assert_eq!(parse_timestamp_micros(text), None, "{text}");
        }
    }

    #[test]
    fn dates_are_strict_calendar_dates() {
        assert_eq!(format_date_days(parse_date_days("0001-01-01").unwrap()), "0001-01-01");
        assert_eq!(format_date_days(parse_date_days("9999-12-31").unwrap()), "9999-12-31");
        for text in ["2025-02-30", "2025/10/24", "x", "0000-01-01", "2025-10-24T00:00:00", "2025-1-05", ""] {
            assert_eq!(parse_date_days(text), None, "{text}");
        }
    }

    #[test]
    fn times_are_hh_mm_with_optional_seconds() {
        let t = |text: &str| parse_time_micros(text).map(format_time_micros);
        assert_eq!(t("14:30"), Some("14:30:00.000000".into()));
        assert_eq!(t("00:00:00"), Some("00:00:00.000000".into()));
        assert_eq!(t("14:30:00.5"), Some("14:30:00.500000".into()));
        assert_eq!(t("23:59:59.999999"), Some("23:59:59.999999".into()));
        assert_eq!(t("23:59:59.9999999"), Some("23:59:59.999999".into()));
        for text in ["25:00:00", "24:00:00", "12:60:00", "12:00:60", "x", "1:30", "14", "14:30:", "14:30:00Z", ""] {
            assert_eq!(parse_time_micros(text), None, "{text}");
        }
    }
}
