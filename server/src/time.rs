//! Timestamps on the wire: RFC 3339 with milliseconds out, RFC 3339 or epoch milliseconds in.
//!
//! The engine stores `created_at` as epoch milliseconds; clients read and write RFC 3339
//! strings (`2026-06-05T21:00:00.000Z`), and backfilling clients often send epoch
//! milliseconds. Offsets other than `Z` (`+02:00`) are accepted and normalised to UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now. A clock before 1970 reads as 0.
pub(crate) fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with milliseconds. Times before 1970 are
/// clamped to the epoch because humantime cannot print them.
pub(crate) fn format_ms(ms: i64) -> String {
    let clamped = u64::try_from(ms).unwrap_or(0);
    let time = UNIX_EPOCH + Duration::from_millis(clamped);
    humantime::format_rfc3339_millis(time).to_string()
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
}
