//! Timestamps on the wire: RFC 3339 with milliseconds out, RFC 3339 or epoch milliseconds in.
//!
//! The engine stores `created_at` as epoch milliseconds; clients read and write RFC 3339
//! strings (`2026-06-05T21:00:00.000Z`), and backfilling clients often send epoch
//! milliseconds. Offsets other than `Z` (`+02:00`) are accepted and normalised to UTC.
//!
//! **Range.** RFC 3339 has four-digit years and humantime prints nothing before 1970, so
//! the times every reader and formatter handles are [`MS_MIN`]..=[`MS_MAX`] (1970 to the
//! end of 9999, UTC). A stored `created_at` is held to it (`request::check_created_at`);
//! [`format_ms`] clamps anything outside it (a record written before the check), so no
//! stored value can make a read fail.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Earliest time stored or shown: the Unix epoch.
pub(crate) const MS_MIN: i64 = 0;
/// Latest time stored or shown: 9999-12-31T23:59:59.999Z.
pub(crate) const MS_MAX: i64 = 253_402_300_799_999;

/// `ms` within [`MS_MIN`]..=[`MS_MAX`].
pub(crate) fn clamp_ms(ms: i64) -> i64 {
    ms.clamp(MS_MIN, MS_MAX)
}

/// Milliseconds since the Unix epoch, now. A clock before 1970 reads as 0.
pub(crate) fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds, clamped to
/// [`MS_MIN`]..=[`MS_MAX`]: humantime prints nothing before 1970 and fails (which
/// `to_string` turns into a panic) past 9999.
pub(crate) fn format_ms(ms: i64) -> String {
    let clamped = u64::try_from(clamp_ms(ms)).unwrap_or(0);
    let time = UNIX_EPOCH + Duration::from_millis(clamped);
    let mut out = String::with_capacity(24);
    if write!(out, "{}", humantime::format_rfc3339_millis(time)).is_err() {
        // Unreachable within the range; never a panic on a read path.
        return "1970-01-01T00:00:00.000Z".to_owned();
    }
    out
}

/// Parses an RFC 3339 timestamp (`Z` or `±HH:MM` offset) into epoch milliseconds.
pub(crate) fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let (base, offset_minutes) = split_offset(text)?;
    let with_z = format!("{base}Z");
    let time = humantime::parse_rfc3339_weak(&with_z).ok()?;
    let ms = i64::try_from(time.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()?;
    Some(ms - offset_minutes * 60_000)
}

/// Splits `…Z`, `…z` or `…+HH:MM`/`…-HH:MM` into the local part and the offset in minutes.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(base) = text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        return Some((base, 0));
    }
    // An offset is the last six characters: sign, two digits, colon, two digits.
    let split = text.len().checked_sub(6)?;
    if !text.is_char_boundary(split) {
        return None;
    }
    let (base, offset) = text.split_at(split);
    let bytes = offset.as_bytes();
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if bytes[3] != b':' {
        return None;
    }
    let hours: i64 = offset.get(1..3)?.parse().ok()?;
    let minutes: i64 = offset.get(4..6)?.parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((base, sign * (hours * 60 + minutes)))
}

/// Parses a `created_at`/`timestamp` JSON value: an RFC 3339 string, epoch milliseconds as a
/// number, or epoch milliseconds as a string of digits.
pub(crate) fn parse_json_ms(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .filter(|ms| *ms >= 0),
        serde_json::Value::String(s) => {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok()
            } else {
                parse_rfc3339_ms(s)
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339() {
        let ms = parse_rfc3339_ms("2026-06-05T21:00:00.000Z").unwrap();
        assert_eq!(format_ms(ms), "2026-06-05T21:00:00.000Z");
    }

    #[test]
    fn applies_offsets() {
        let utc = parse_rfc3339_ms("2026-06-05T21:00:00Z").unwrap();
        let plus_two = parse_rfc3339_ms("2026-06-05T23:00:00+02:00").unwrap();
        assert_eq!(utc, plus_two);
    }

    #[test]
    fn parses_epoch_ms_in_either_form() {
        assert_eq!(
            parse_json_ms(&serde_json::json!(1_700_000_000_000_i64)),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_json_ms(&serde_json::json!("1700000000000")),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_json_ms(&serde_json::json!("yesterday")), None);
        assert_eq!(parse_json_ms(&serde_json::json!(true)), None);
    }

    #[test]
    fn every_i64_formats_clamped_to_the_range() {
        assert_eq!(format_ms(MS_MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_ms(MS_MIN), "1970-01-01T00:00:00.000Z");
        for ms in [MS_MAX + 1, 253_402_300_800_000, i64::MAX] {
            assert_eq!(format_ms(ms), "9999-12-31T23:59:59.999Z", "{ms}");
        }
        for ms in [-1, i64::MIN] {
            assert_eq!(format_ms(ms), "1970-01-01T00:00:00.000Z", "{ms}");
        }
        // The inputs parse (so the range check, not the parser, refuses them).
        assert_eq!(
            parse_rfc3339_ms("9999-12-31T23:59:59-23:59"),
            Some(MS_MAX - 999 + (23 * 60 + 59) * 60_000)
        );
        assert_eq!(parse_json_ms(&serde_json::json!(1e300)), Some(i64::MAX));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00+00:01"), Some(-60_000));
    }
}
