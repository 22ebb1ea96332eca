//! Loading the LoCoMo evaluation file (the dev split `locomo-dev.json`, not distributed with
//! the project; its path is given on the command line) into turns and questions, for the
//! `locomo` harness binary. The file is read in place, never copied.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::HashMap;

/// One dialogue turn, as the harness stores it: one memory.
#[derive(Debug, Clone)]
pub struct Turn {
    pub dia_id: String,
    /// `session_N`.
    pub session_id: String,
    /// `speaker: text`, plus ` [image: caption]` when the turn shared a picture.
    pub text: String,
    /// The session's start time plus one second per turn, so turns keep their order.
    pub created_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Question {
    pub question: String,
    pub category: usize,
    /// Indices into `Conversation::turns` of the evidence turns.
    pub evidence: Vec<usize>,
    /// Evidence ids that name no turn (a few are malformed in the source data).
    pub unknown_evidence: usize,
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub sample_id: String,
    pub turns: Vec<Turn>,
    pub questions: Vec<Question>,
}

/// Reads and parses the whole file.
pub fn load(path: &str) -> Result<Vec<Conversation>> {
    let bytes = std::fs::read(path)?;
    let root: Value = serde_json::from_slice(&bytes)?;
    let Some(items) = root.as_array() else {
        bail!("top level is not a list")
    };
    items.iter().map(conversation).collect()
}

fn conversation(item: &Value) -> Result<Conversation> {
    let sample_id = item["sample_id"].as_str().unwrap_or_default().to_owned();
    let conv = item["conversation"]
        .as_object()
        .context("no conversation object")?;
    let mut sessions: Vec<(usize, &Vec<Value>)> = conv
        .iter()
        .filter_map(|(key, value)| {
            let n = key.strip_prefix("session_")?.parse::<usize>().ok()?;
            Some((n, value.as_array()?))
        })
        .collect();
    sessions.sort_by_key(|s| s.0);
    let mut turns = Vec::new();
    for (n, list) in sessions {
        let when = conv
            .get(&format!("session_{n}_date_time"))
            .and_then(Value::as_str)
            .with_context(|| format!("{sample_id}: session_{n} has no date"))?;
        let start_ms = parse_date_time(when).with_context(|| format!("bad date {when:?}"))?;
        for (i, turn) in list.iter().enumerate() {
            let speaker = turn["speaker"].as_str().unwrap_or_default();
            let mut text = format!("{speaker}: {}", turn["text"].as_str().unwrap_or_default());
            if let Some(caption) = turn.get("blip_caption").and_then(Value::as_str) {
                text.push_str(&format!(" [image: {caption}]"));
            }
            turns.push(Turn {
                dia_id: turn["dia_id"].as_str().unwrap_or_default().to_owned(),
                session_id: format!("session_{n}"),
                text,
                created_at_ms: start_ms + 1000 * i as i64,
            });
        }
    }
    let by_id: HashMap<&str, usize> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| (t.dia_id.as_str(), i))
        .collect();
    let mut questions = Vec::new();
    for qa in item["qa"].as_array().context("no qa list")? {
        let mut evidence = Vec::new();
        let mut unknown_evidence = 0;
        for entry in qa["evidence"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            // A few entries hold two ids separated by ';' or a space.
            for id in entry
                .split([';', ' ', ','])
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                match by_id.get(id) {
                    Some(&i) if !evidence.contains(&i) => evidence.push(i),
                    Some(_) => {}
                    None => unknown_evidence += 1,
                }
            }
        }
        questions.push(Question {
            question: qa["question"].as_str().unwrap_or_default().to_owned(),
            category: qa["category"].as_u64().unwrap_or(0) as usize,
            evidence,
            unknown_evidence,
        });
    }
    Ok(Conversation {
        sample_id,
        turns,
        questions,
    })
}

/// Parses `1:56 pm on 8 May, 2023` into milliseconds since the Unix epoch (UTC).
pub fn parse_date_time(s: &str) -> Option<i64> {
    let (time, date) = s.split_once(" on ")?;
    let (clock, meridiem) = time.trim().split_once(' ')?;
    let (h, m) = clock.split_once(':')?;
    let (mut hour, minute): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    match meridiem.to_ascii_lowercase().as_str() {
        "am" if hour == 12 => hour = 0,
        "pm" if hour != 12 => hour += 12,
        "am" | "pm" => {}
        _ => return None,
    }
    let mut parts = date.split([' ', ',']).filter(|p| !p.is_empty());
    let day: i64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month_name))? as i64
        + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_date_time;

    #[test]
    fn parses_locomo_dates() {
        // 2023-05-08T13:56:00Z
        assert_eq!(
            parse_date_time("1:56 pm on 8 May, 2023"),
            Some(1_683_554_160_000)
        );
        // 2023-01-20T00:05:00Z
        assert_eq!(
            parse_date_time("12:05 am on 20 January, 2023"),
            Some(1_674_173_100_000)
        );
        assert_eq!(parse_date_time("yesterday"), None);
    }
}
