//! Dates named in a query ("on 13 October, 2023", "in June", "in 2022") and the window of
//! memory dates each one points at: people talk about an event on the day or in the days
//! after it happened, so a memory created in `[d, d + window]` is likely about a day `d`
//! named by the query (for a month or a year, `d` runs over the whole month or year).
//!
//! Only absolute dates are read, in English: month names (and their three-letter
//! abbreviations next to a number), day numbers with or without an ordinal suffix, four-digit
//! years 1900–2199, and ISO `YYYY-MM-DD`. A bare month name counts only when it is
//! capitalised and not the query's first word, or comes after "in", "of", "during", "since",
//! "early", "mid" or "late" ("May I …" and "they march" name no month). Dates are UTC
//! calendar days, as `created_at` is UTC.

const MS_PER_DAY: i64 = 86_400_000;
/// More dates than this in one query are ignored (a query is a question, not a calendar).
const NAMED_MAX: usize = 8;

/// One date the query names; `year: None` = any year ("in June", "on May 3").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Named {
    Day {
        year: Option<i64>,
        month: u8,
        day: u8,
    },
    Month {
        year: Option<i64>,
        month: u8,
    },
    Year(i64),
}

/// How precise a named date is; each has its own boost in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Granularity {
    Day,
    Month,
    Year,
}

impl Named {
    pub(crate) fn granularity(self) -> Granularity {
        match self {
            Named::Day { .. } => Granularity::Day,
            Named::Month { .. } => Granularity::Month,
            Named::Year(_) => Granularity::Year,
        }
    }

    /// Whether a memory created at `at_ms` lies in `[start, end + window_days]` of this date.
    pub(crate) fn covers(self, at_ms: i64, window_days: i64) -> bool {
        let at_day = at_ms.div_euclid(MS_PER_DAY);
        let (at_year, _, _) = civil_from_days(at_day);
        // A date of no year: the memory's own year, or the year before (a December date
        // whose window runs into January).
        let years = |year: Option<i64>| match year {
            Some(y) => [Some(y), None],
            None => [Some(at_year), Some(at_year - 1)],
        };
        let inside = |first: i64, last: i64| at_day >= first && at_day <= last + window_days;
        match self {
            Named::Day { year, month, day } => years(year).into_iter().flatten().any(|y| {
                let d = days_from_civil(y, i64::from(month), i64::from(day));
                inside(d, d)
            }),
            Named::Month { year, month } => years(year).into_iter().flatten().any(|y| {
                let first = days_from_civil(y, i64::from(month), 1);
                let next = if month == 12 {
                    days_from_civil(y + 1, 1, 1)
                } else {
                    days_from_civil(y, i64::from(month) + 1, 1)
                };
                inside(first, next - 1)
            }),
            Named::Year(y) => inside(days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1) - 1),
        }
    }
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Words after which a lowercase or sentence-initial month name still names a month.
const MONTH_LEADS: [&str; 7] = ["in", "of", "during", "since", "early", "mid", "late"];

/// One word of the query: its text and whether it started with a capital letter.
struct Word<'a> {
    text: &'a str,
    capital: bool,
}

/// `(month 1..=12, full name?)` for a month name or a three/four-letter abbreviation.
fn month_of(word: &str) -> Option<(u8, bool)> {
    let lower = word.to_ascii_lowercase();
    if let Some(i) = MONTHS.iter().position(|m| *m == lower) {
        return Some((i as u8 + 1, true));
    }
    if lower == "sept" {
        return Some((9, false));
    }
    if lower.len() == 3 {
        // "may" is a full name, found above.
        return MONTHS
            .iter()
            .position(|m| m.starts_with(lower.as_str()))
            .map(|i| (i as u8 + 1, false));
    }
    None
}

/// A day of the month: `13`, `13th`, `1st`, `2nd`, `3rd`.
fn day_of(word: &str) -> Option<u8> {
    let digits = word
        .strip_suffix("st")
        .or_else(|| word.strip_suffix("nd"))
        .or_else(|| word.strip_suffix("rd"))
        .or_else(|| word.strip_suffix("th"))
        .unwrap_or(word);
    if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let d: u8 = digits.parse().ok()?;
    (1..=31).contains(&d).then_some(d)
}

fn year_of(word: &str) -> Option<i64> {
    if word.len() != 4 || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = word.parse().ok()?;
    (1900..=2199).contains(&y).then_some(y)
}

/// An ISO `YYYY-MM-DD` date.
fn iso_of(token: &str) -> Option<Named> {
    let mut parts = token.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let year = year_of(y)?;
    let month: u8 = m.parse().ok().filter(|m| (1..=12).contains(m))?;
    let day = day_of(d)?;
    Some(Named::Day {
        year: Some(year),
        month,
        day,
    })
}

/// The dates `query` names, in order, without repeats (at most [`NAMED_MAX`]).
pub(crate) fn named_dates(query: &str) -> Vec<Named> {
    let mut out: Vec<Named> = Vec::new();
    let push = |n: Named, out: &mut Vec<Named>| {
        if !out.contains(&n) && out.len() < NAMED_MAX {
            out.push(n);
        }
    };
    // ISO dates first; their parts are then no words of their own.
    let mut rest: Vec<&str> = Vec::new();
    for token in query.split(|c: char| c.is_whitespace() || c == ',' || c == '/') {
        match iso_of(token.trim_matches(|c: char| !c.is_ascii_alphanumeric())) {
            Some(n) => push(n, &mut out),
            None => rest.push(token),
        }
    }
    let words: Vec<Word<'_>> = rest
        .iter()
        .flat_map(|t| t.split(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(|w| Word {
            text: w,
            capital: w.starts_with(|c: char| c.is_ascii_uppercase()),
        })
        .collect();
    let mut used = vec![false; words.len()];
    let mut i = 0;
    while i < words.len() {
        let Some((month, full)) = month_of(words[i].text) else {
            i += 1;
            continue;
        };
        let at = |j: usize| words.get(j).map(|w| w.text);
        // "13 October 2023", "13th of October 2023" (the day before the month).
        let day_before = i
            .checked_sub(1)
            .and_then(|j| day_of(words[j].text).map(|d| (j, d)))
            .or_else(|| {
                (i >= 2 && words[i - 1].text.eq_ignore_ascii_case("of"))
                    .then(|| day_of(words[i - 2].text).map(|d| (i - 2, d)))
                    .flatten()
            })
            .filter(|&(j, _)| !used[j]);
        // "October 13, 2023", "October 13th".
        let day_after = at(i + 1).and_then(day_of);
        let (day, mut end) = match (day_before, day_after) {
            (_, Some(d)) => (Some(d), i + 2),
            (Some((j, d)), None) => {
                used[j] = true;
                (Some(d), i + 1)
            }
            (None, None) => (None, i + 1),
        };
        let year = at(end).and_then(year_of);
        if year.is_some() {
            end += 1;
        }
        let named = match (day, year) {
            (Some(day), year) => Some(Named::Day { year, month, day }),
            (None, Some(y)) => Some(Named::Month {
                year: Some(y),
                month,
            }),
            (None, None) => {
                let led =
                    i > 0 && MONTH_LEADS.contains(&words[i - 1].text.to_ascii_lowercase().as_str());
                (full && (led || (words[i].capital && i > 0)))
                    .then_some(Named::Month { year: None, month })
            }
        };
        if let Some(n) = named {
            used[i..end].iter_mut().for_each(|u| *u = true);
            push(n, &mut out);
            i = end;
        } else {
            i += 1;
        }
    }
    for (i, w) in words.iter().enumerate() {
        if !used[i]
            && let Some(y) = year_of(w.text)
        {
            push(Named::Year(y), &mut out);
        }
    }
    out
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day number since 1970-01-01 (Hinnant's inverse).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    // Clamped far outside any real date so the arithmetic below cannot overflow.
    let z = z.clamp(-(1 << 40), 1 << 40) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i64, m: u8, d: u8) -> Named {
        Named::Day {
            year: Some(y),
            month: m,
            day: d,
        }
    }

    #[test]
    fn reads_the_date_forms_questions_use() {
        let cases: [(&str, Vec<Named>); 12] = [
            (
                "What painting did Melanie show on October 13, 2023?",
                vec![day(2023, 10, 13)],
            ),
            (
                "What did Gina find on 1 February, 2023?",
                vec![day(2023, 2, 1)],
            ),
            ("the 3rd of June 2022", vec![day(2022, 6, 3)]),
            ("on 2023-05-08 at noon", vec![day(2023, 5, 8)]),
            (
                "What setback did Melanie face in October 2023?",
                vec![Named::Month {
                    year: Some(2023),
                    month: 10,
                }],
            ),
            (
                "When did Melanie go camping in June?",
                vec![Named::Month {
                    year: None,
                    month: 6,
                }],
            ),
            (
                "Who did Maria see on May 3?",
                vec![Named::Day {
                    year: None,
                    month: 5,
                    day: 3,
                }],
            ),
            (
                "How many times has Melanie gone to the beach in 2023?",
                vec![Named::Year(2023)],
            ),
            ("May I ask what you did?", vec![]),
            ("they march on", vec![]),
            (
                "in 2022 and 2023",
                vec![Named::Year(2022), Named::Year(2023)],
            ),
            (
                "between Jan 5 2024 and march 2024",
                vec![
                    day(2024, 1, 5),
                    Named::Month {
                        year: Some(2024),
                        month: 3,
                    },
                ],
            ),
        ];
        for (query, want) in cases {
            assert_eq!(named_dates(query), want, "{query}");
        }
    }

    #[test]
    fn windows_start_on_the_date_and_run_the_window_past_its_end() {
        let ms = |y, m, d| days_from_civil(y, m, d) * MS_PER_DAY + 13 * 3_600_000;
        let oct13 = day(2023, 10, 13);
        assert!(oct13.covers(ms(2023, 10, 13), 14));
        assert!(oct13.covers(ms(2023, 10, 27), 14));
        assert!(!oct13.covers(ms(2023, 10, 28), 14));
        assert!(!oct13.covers(ms(2023, 10, 12), 14));
        let june = Named::Month {
            year: None,
            month: 6,
        };
        assert!(june.covers(ms(2022, 6, 1), 14));
        assert!(june.covers(ms(2023, 7, 14), 14));
        assert!(!june.covers(ms(2023, 7, 15), 14));
        assert!(!june.covers(ms(2023, 5, 31), 14));
        let dec = Named::Month {
            year: None,
            month: 12,
        };
        assert!(dec.covers(ms(2024, 1, 10), 14), "runs into the next year");
        assert!(Named::Year(2023).covers(ms(2024, 1, 14), 14));
        assert!(!Named::Year(2023).covers(ms(2024, 1, 15), 14));
        // Extreme timestamps neither panic nor match.
        assert!(!oct13.covers(i64::MIN, 14));
        assert!(!oct13.covers(i64::MAX, 14));
    }

    #[test]
    fn civil_round_trips() {
        for z in [-800_000, -1, 0, 1, 19_000, 60_000, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
