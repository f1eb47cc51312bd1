//! Text forms of the temporal types (sql.md §2.3): timestamps `YYYY-MM-DDTHH:MM:SS.ffffffZ`,
//! dates `YYYY-MM-DD`, times `HH:MM:SS.ffffff`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Renders microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_timestamp_micros(micros: i64) -> String {
    match DateTime::from_timestamp_micros(micros) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => micros.to_string(),
    }
}

/// Parses `2025-10-20T10:30:00Z`, `2025-10-20 10:30:00.123`, RFC 3339 with offsets, or a date.
pub fn parse_timestamp_micros(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.timestamp_micros());
    }
    let t = t.trim_end_matches('Z');
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
}

pub fn format_date_days(days: i32) -> String {
    NaiveDate::from_num_days_from_ce_opt(days + UNIX_EPOCH_DAYS_FROM_CE)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| days.to_string())
}

pub fn parse_date_days(text: &str) -> Option<i32> {
    use chrono::Datelike;
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok().map(|d| d.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE)
}

pub fn format_time_micros(micros: i64) -> String {
    let secs = (micros / 1_000_000) as u32;
    let nanos = ((micros % 1_000_000) * 1000) as u32;
    NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .map(|t| t.format("%H:%M:%S%.6f").to_string())
        .unwrap_or_else(|| micros.to_string())
}

pub fn parse_time_micros(text: &str) -> Option<i64> {
    NaiveTime::parse_from_str(text.trim(), "%H:%M:%S%.f")
        .ok()
        .map(|t| t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporal_text_round_trips() {
        let ts = parse_timestamp_micros("2025-10-20T10:30:00.123456Z").unwrap();
        assert_eq!(format_timestamp_micros(ts), "2025-10-20T10:30:00.123456Z");
        assert_eq!(parse_timestamp_micros("2025-10-20 10:30:00"), parse_timestamp_micros("2025-10-20T10:30:00Z"));
        assert_eq!(format_date_days(parse_date_days("2024-02-29").unwrap()), "2024-02-29");
        assert_eq!(parse_date_days("1970-01-01"), Some(0));
        assert_eq!(format_time_micros(parse_time_micros("23:59:59.000001").unwrap()), "23:59:59.000001");
    }
}
