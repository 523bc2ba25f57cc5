//! Five-field cron expressions (minute hour day-of-month month day-of-week) and their next
//! run in a time zone. Pure: the zone is a value (`time_zone.rs`; `local_zone.rs` finds the
//! machine's).
//!
//! Each field is `*` or a comma list of `a`, `a-b`, with an optional `/step` (`*/15`,
//! `1-30/2`, `5/10` = `5-59/10`); months and days may be named (`JAN`–`DEC`, `SUN`–`SAT`, any
//! case); day-of-week 7 is Sunday too. Shortcuts: `@hourly`, `@daily` (`@midnight`),
//! `@weekly`, `@monthly`, `@yearly` (`@annually`). As in classic cron, when both day fields
//! are restricted a day matching either one runs.
//!
//! Local time: a time that does not exist on a day (the clock springs forward over it) is
//! skipped that day; a time that happens twice (the clock falls back) runs once, the first time.

use crate::time_zone::{Date, TimeZone};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day-of-month field was `*` (then only the weekday decides, and vice versa).
    any_day: bool,
    any_weekday: bool,
}

/// Searching further than this finds nothing (`0 0 30 2 *` never runs): 8 years cover every
/// Feb 29, even across a century year that has none.
const SEARCH_DAYS: i32 = 366 * 9;

/// Runs and times are shown in four-digit years; a schedule has no run after 9999.
const LAST_YEAR: i64 = 9999;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[] },
    Field { name: "hour", min: 0, max: 23, names: &[] },
    Field { name: "day of month", min: 1, max: 31, names: &[] },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    },
    // 7 is Sunday as well; folded onto 0 below.
    Field { name: "day of week", min: 0, max: 7, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] },
];

impl Cron {
    /// Parse `text`; the error says which field is wrong and why, in words for the chat.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim().to_ascii_lowercase().as_str() {
            "@hourly" => "0 * * * *".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            other if other.starts_with('@') => {
                return Err(format!(
                    "unknown shortcut \"{}\" (use @hourly, @daily, @weekly, @monthly or @yearly)",
                    text.trim()
                ));
            }
            _ => text.to_string(),
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "a schedule has 5 fields (minute hour day-of-month month day-of-week), \"{}\" has {}",
                text.trim(),
                parts.len()
            ));
        }
        let mut bits = [0u64; 5];
        for (i, (part, field)) in parts.iter().zip(FIELDS.iter()).enumerate() {
            bits[i] = parse_field(part, field)?;
        }
        let weekdays = bits[4] | (bits[4] >> 7); // 7 → 0
        Ok(Cron {
            minutes: bits[0],
            hours: u32::try_from(bits[1]).unwrap_or(0),
            days: u32::try_from(bits[2]).unwrap_or(0),
            months: u16::try_from(bits[3]).unwrap_or(0),
            weekdays: u8::try_from(weekdays & 0x7f).unwrap_or(0),
            any_day: parts[2] == "*",
            any_weekday: parts[4] == "*",
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => by_weekday,
            (false, true) => by_day,
            (false, false) => by_day || by_weekday,
        }
    }

    /// The first run strictly after `after_ms` (Unix ms) in `zone`, in Unix ms.
    pub fn next_after(&self, after_ms: u64, zone: &TimeZone) -> Option<u64> {
        let after = i64::try_from(after_ms).ok()?;
        let mut date = zone.local_at(after.div_euclid(1000)).0.date;
        for _ in 0..SEARCH_DAYS {
            if date.year() > LAST_YEAR {
                return None;
            }
            if self.day_matches(date) {
                for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                    for minute in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                        // Skipped when the clock springs forward over it, the first time when
                        // it happens twice.
                        let Some(at) = zone.first_instant(date.at(hour, minute)) else { continue };
                        let at_ms = at.checked_mul(1000)?;
                        if at_ms > after {
                            return u64::try_from(at_ms).ok();
                        }
                    }
                }
            }
            date = date.tomorrow();
        }
        None
    }

    /// The next `count` runs after `after_ms`.
    pub fn next_runs(&self, after_ms: u64, zone: &TimeZone, count: usize) -> Vec<u64> {
        let mut runs = Vec::new();
        let mut from = after_ms;
        while runs.len() < count {
            let Some(next) = self.next_after(from, zone) else { break };
            runs.push(next);
            from = next;
        }
        runs
    }
}

fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let wrong = |why: String| format!("{} field \"{text}\": {why}", field.name);
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| wrong(format!("step \"{step}\" is not a number")))?;
                if step == 0 {
                    return Err(wrong("a step of 0 never advances".to_string()));
                }
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (field.min, if field.max == 7 { 6 } else { field.max })
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, field).map_err(wrong)?, value(b, field).map_err(wrong)?)
        } else {
            let a = value(range, field).map_err(wrong)?;
            // `5/10`: from 5 to the end.
            (a, if item.contains('/') { field.max } else { a })
        };
        if low > high {
            return Err(wrong(format!("the range {low}-{high} runs backwards")));
        }
        for v in (low..=high).step_by(usize::try_from(step).unwrap_or(1)) {
            bits |= 1u64 << v;
        }
    }
    Ok(bits)
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    if let Some(i) = field.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(field.min + u32::try_from(i).unwrap_or(0));
    }
    let v: u32 = text.parse().map_err(|_| match field.names.is_empty() {
        true => format!("\"{text}\" is not a number"),
        false => format!("\"{text}\" is neither a number nor a name such as {}", field.names[0].to_uppercase()),
    })?;
    if v < field.min || v > field.max {
        return Err(format!("{v} is outside {}–{}", field.min, field.max));
    }
    Ok(v)
}

/// `at_ms` as local time for people: `2026-12-02 14:30 CET`.
pub fn show(at_ms: u64, zone: &TimeZone) -> String {
    let (local, abbreviation) = zone.local_at(i64::try_from(at_ms / 1000).unwrap_or(i64::MAX));
    let date = local.date;
    if date.year() > LAST_YEAR {
        return format!("{at_ms} ms");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} {abbreviation}",
        date.year(),
        date.month(),
        date.day(),
        local.hour(),
        local.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `2026-03-01T10:00[:30]` in `zone`, in Unix ms.
    fn ms(text: &str, zone: &TimeZone) -> u64 {
        let number = |range: std::ops::Range<usize>| text.get(range).unwrap().parse::<u8>().unwrap();
        let date = Date::new(text.get(0..4).unwrap().parse().unwrap(), number(5..7), number(8..10)).unwrap();
        let seconds = if text.len() > 16 { i64::from(number(17..19)) } else { 0 };
        let at = zone.first_instant(date.at(number(11..13), number(14..16))).unwrap() + seconds;
        u64::try_from(at * 1000).unwrap()
    }

    /// `at` as `2026-03-01 10:01 Sun UTC`.
    fn local(at: u64, zone: &TimeZone) -> String {
        let (time, _) = zone.local_at(i64::try_from(at / 1000).unwrap());
        let weekday = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][usize::from(time.date.weekday())];
        let shown = show(at, zone);
        let (day, zone_name) = shown.rsplit_once(' ').unwrap();
        format!("{day} {weekday} {zone_name}")
    }

    #[test]
    fn next_runs_in_a_table() {
        let utc = TimeZone::UTC;
        // (expression, after (UTC), the next runs)
        let table: &[(&str, &str, &[&str])] = &[
            ("* * * * *", "2026-03-01T10:00:30", &["2026-03-01 10:01 Sun UTC", "2026-03-01 10:02 Sun UTC"]),
            ("*/15 9-10 * * *", "2026-03-01T10:40", &["2026-03-01 10:45 Sun UTC", "2026-03-02 09:00 Mon UTC"]),
            ("0 9 * * mon-fri", "2026-03-06T09:00", &["2026-03-09 09:00 Mon UTC", "2026-03-10 09:00 Tue UTC"]),
            ("30 8 1,15 * *", "2026-03-15T09:00", &["2026-04-01 08:30 Wed UTC", "2026-04-15 08:30 Wed UTC"]),
            // Month ends: the 31st only in months that have one.
            ("0 0 31 * *", "2026-01-31T00:00", &["2026-03-31 00:00 Tue UTC", "2026-05-31 00:00 Sun UTC"]),
            // Feb 29 only in leap years; 2100 is not one.
            ("0 12 29 feb *", "2026-01-01T00:00", &["2028-02-29 12:00 Tue UTC", "2032-02-29 12:00 Sun UTC"]),
            ("0 0 29 2 *", "2096-03-01T00:00", &["2104-02-29 00:00 Fri UTC"]),
            // Both day fields restricted: either matches.
            ("0 0 13 * fri", "2026-02-01T00:00", &["2026-02-06 00:00 Fri UTC", "2026-02-13 00:00 Fri UTC"]),
            // Sunday as 7, steps from a value, names in any case.
            ("0 0 * * 7", "2026-03-02T00:00", &["2026-03-08 00:00 Sun UTC"]),
            ("5/20 0 * JaN *", "2026-12-31T23:59", &["2027-01-01 00:05 Fri UTC", "2027-01-01 00:25 Fri UTC"]),
            ("@monthly", "2026-12-31T23:59", &["2027-01-01 00:00 Fri UTC"]),
            ("0 0 30 2 *", "2026-01-01T00:00", &[]),
        ];
        for (expr, after, expected) in table {
            let cron = Cron::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let runs: Vec<String> =
                cron.next_runs(ms(after, &utc), &utc, expected.len().max(1)).iter().map(|r| local(*r, &utc)).collect();
            assert_eq!(runs, *expected, "{expr} after {after}");
        }
    }

    #[test]
    fn daylight_saving_changes_in_a_fixed_zone_from_tz() {
        // As TZ would carry it (OpenWrt style): US Eastern, 2026: springs forward Mar 8 02:00,
        // falls back Nov 1 02:00.
        let zone = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        let table: &[(&str, &str, &[&str])] = &[
            // 02:30 does not exist on Mar 8: skipped that day.
            ("30 2 * * *", "2026-03-07T03:00", &["2026-03-09 02:30 Mon EDT"]),
            // Every 30 minutes across the gap: 01:30 EST then 03:00 EDT.
            ("*/30 * * * *", "2026-03-08T01:00", &["2026-03-08 01:30 Sun EST", "2026-03-08 03:00 Sun EDT"]),
            // 01:30 happens twice on Nov 1: it runs once, the first time.
            ("30 1 * * *", "2026-10-31T12:00", &["2026-11-01 01:30 Sun EDT", "2026-11-02 01:30 Mon EST"]),
            // Hourly across the fold: the repeated hour runs once.
            ("0 * * * *", "2026-11-01T00:30", &["2026-11-01 01:00 Sun EDT", "2026-11-01 02:00 Sun EST"]),
            // A daily 09:00 stays at 09:00 local on both sides.
            ("0 9 * * *", "2026-03-07T10:00", &["2026-03-08 09:00 Sun EDT", "2026-03-09 09:00 Mon EDT"]),
        ];
        for (expr, after, expected) in table {
            let cron = Cron::parse(expr).unwrap();
            let runs: Vec<String> =
                cron.next_runs(ms(after, &zone), &zone, expected.len()).iter().map(|r| local(*r, &zone)).collect();
            assert_eq!(runs, *expected, "{expr} after {after}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let table = [
            ("* * * *", "a schedule has 5 fields (minute hour day-of-month month day-of-week), \"* * * *\" has 4"),
            ("60 * * * *", "minute field \"60\": 60 is outside 0–59"),
            ("* 5-2 * * *", "hour field \"5-2\": the range 5-2 runs backwards"),
            ("*/0 * * * *", "minute field \"*/0\": a step of 0 never advances"),
            ("* * 0 * *", "day of month field \"0\": 0 is outside 1–31"),
            ("* * * foo *", "month field \"foo\": \"foo\" is neither a number nor a name such as JAN"),
            ("* * * * x/2", "day of week field \"x/2\": \"x\" is neither a number nor a name such as SUN"),
            ("@sometimes", "unknown shortcut \"@sometimes\" (use @hourly, @daily, @weekly, @monthly or @yearly)"),
        ];
        for (expr, error) in table {
            assert_eq!(Cron::parse(expr), Err(error.to_string()), "{expr}");
        }
    }
}
