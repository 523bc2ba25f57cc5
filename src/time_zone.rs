//! Time zones for loop schedules, without a crate: UTC, a fixed offset, a TZif file (RFC 8536,
//! versions 1 to 4) or a POSIX TZ string; an instant's UTC offset and abbreviation, and the
//! instant of a local date and time. Pure: `local_zone.rs` finds and reads the machine's zone.
//!
//! Instants are Unix seconds; dates are proleptic Gregorian. TZ strings and TZif files come
//! from the environment and the disk, so parsing is bounded and never panics (fuzz target
//! `time_zone`).

/// A civil date: a day of the proleptic Gregorian calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    year: i64,
    month: u8,
    day: u8,
}

/// A local date and time, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DateTime {
    pub date: Date,
    /// Seconds since the local midnight, `0..86_400`.
    pub second_of_day: u32,
}

const SECONDS_PER_DAY: i64 = 86_400;
/// Years beyond the instants' limit (about ±35.7 million) are not dates here.
const MAX_YEAR: i64 = 40_000_000;

/// Instants are clamped to ±2^50 s (about 35 million years) before any calendar arithmetic,
/// which then cannot overflow however hostile the input.
const INSTANT_LIMIT: i64 = 1 << 50;

/// A TZ string or a TZif file with more than this is refused: real ones have a few hundred.
const MAX_TRANSITIONS: usize = 20_000;
/// TZif types are indexed by a byte.
const MAX_TYPES: usize = 256;
const MAX_ABBREVIATION: usize = 32;

pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Date {
    /// `None` for a date that does not exist (`2100-02-29`, month 13, a year beyond `MAX_YEAR`).
    pub fn new(year: i64, month: u8, day: u8) -> Option<Date> {
        let valid =
            year.abs() <= MAX_YEAR && (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
        valid.then_some(Date { year, month, day })
    }

    pub fn year(self) -> i64 {
        self.year
    }

    pub fn month(self) -> u8 {
        self.month
    }

    pub fn day(self) -> u8 {
        self.day
    }

    /// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`: years counted from March,
    /// so the leap day ends a year, in 400-year eras of 146,097 days).
    pub fn days(self) -> i64 {
        let year = if self.month <= 2 { self.year - 1 } else { self.year };
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let month_from_march = (i64::from(self.month) + 9) % 12;
        let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(self.day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        era * 146_097 + day_of_era - 719_468
    }

    /// The date `days` after 1970-01-01 (Hinnant's `civil_from_days`, the inverse of `days`).
    pub fn from_days(days: i64) -> Date {
        let days = days.clamp(-INSTANT_LIMIT / SECONDS_PER_DAY, INSTANT_LIMIT / SECONDS_PER_DAY) + 719_468;
        let era = days.div_euclid(146_097);
        let day_of_era = days - era * 146_097;
        let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
        let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Date { year, month: u8::try_from(month).unwrap_or(1), day: u8::try_from(day).unwrap_or(1) }
    }

    /// 0 = Sunday … 6 = Saturday (1970-01-01 was a Thursday).
    pub fn weekday(self) -> u8 {
        u8::try_from((self.days() + 4).rem_euclid(7)).unwrap_or(0)
    }

    pub fn tomorrow(self) -> Date {
        if self.day < days_in_month(self.year, self.month) {
            Date { day: self.day + 1, ..self }
        } else if self.month < 12 {
            Date { month: self.month + 1, day: 1, ..self }
        } else {
            Date { year: self.year + 1, month: 1, day: 1 }
        }
    }

    pub fn at(self, hour: u8, minute: u8) -> DateTime {
        DateTime { date: self, second_of_day: u32::from(hour) * 3600 + u32::from(minute) * 60 }
    }
}

impl DateTime {
    /// The date and time at `seconds` after 1970-01-01 00:00 (of UTC, or of local time).
    pub fn from_seconds(seconds: i64) -> DateTime {
        let seconds = seconds.clamp(-INSTANT_LIMIT, INSTANT_LIMIT);
        let second_of_day = u32::try_from(seconds.rem_euclid(SECONDS_PER_DAY)).unwrap_or(0);
        DateTime { date: Date::from_days(seconds.div_euclid(SECONDS_PER_DAY)), second_of_day }
    }

    /// Seconds after 1970-01-01 00:00 of the same clock.
    pub fn seconds(self) -> i64 {
        self.date.days() * SECONDS_PER_DAY + i64::from(self.second_of_day)
    }

    pub fn hour(self) -> u32 {
        self.second_of_day / 3600
    }

    pub fn minute(self) -> u32 {
        self.second_of_day / 60 % 60
    }
}

/// A time zone: its name when it has one (`Europe/Berlin`) and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeZone {
    name: Option<Box<str>>,
    rules: Rules,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rules {
    Utc,
    Fixed(LocalType),
    Posix(Box<Posix>),
    Table(Box<Table>),
}

/// An offset from UTC (seconds east) and the abbreviation people see (`CEST`, `+0330`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalType {
    offset: i32,
    abbreviation: Box<str>,
}

/// A POSIX TZ string with daylight saving time: the two local types and when each begins.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Posix {
    standard: LocalType,
    daylight: LocalType,
    /// Daylight time begins (at a time of standard time) …
    start: Rule,
    /// … and ends (at a time of daylight time).
    end: Rule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    day: RuleDay,
    /// Seconds after that day's local midnight; RFC 8536 allows -167 h to 167 h.
    time: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleDay {
    /// `Jn`: day 1–365, February 29 never counted.
    NoLeapDay(u16),
    /// `n`: day 0–365, February 29 counted.
    Zero(u16),
    /// `Mm.w.d`: weekday `d` (0 = Sunday) of week `w` (5 = the last) of month `m`.
    MonthWeek { month: u8, week: u8, weekday: u8 },
}

/// The data of a TZif file: transitions (ascending), the local type from each, and the
/// footer's rules for the instants after the last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    transitions: Vec<i64>,
    type_after: Vec<u8>,
    types: Vec<LocalType>,
    footer: Option<Rules>,
}

impl TimeZone {
    pub const UTC: TimeZone = TimeZone { name: None, rules: Rules::Utc };

    /// A POSIX TZ string: `EST5EDT,M3.2.0,M11.1.0`, `<+0330>-3:30`, `UTC0` (a leading `:` is
    /// ignored). A daylight name without rules gets the US ones, as glibc does.
    pub fn posix(text: &str) -> Result<TimeZone, String> {
        let text = text.trim();
        let rules = parse_posix(text.strip_prefix(':').unwrap_or(text))?;
        Ok(TimeZone { name: None, rules })
    }

    /// The contents of a TZif file, named (`Europe/Berlin`) when it came from a zone name.
    pub fn tzif(name: Option<&str>, bytes: &[u8]) -> Result<TimeZone, String> {
        let table = parse_tzif(bytes)?;
        Ok(TimeZone { name: name.map(Box::from), rules: Rules::Table(Box::new(table)) })
    }

    /// The zone's name when it has one (`Europe/Berlin`, `UTC`); a POSIX string has none.
    pub fn name(&self) -> Option<&str> {
        match (&self.name, &self.rules) {
            (Some(name), _) => Some(name),
            (None, Rules::Utc) => Some("UTC"),
            (None, _) => None,
        }
    }

    /// The UTC offset (seconds east) at the instant `at` (Unix seconds), and its abbreviation.
    pub fn offset_at(&self, at: i64) -> (i32, &str) {
        let local = self.rules.local_type_at(at.clamp(-INSTANT_LIMIT, INSTANT_LIMIT));
        (local.0, local.1)
    }

    /// The local date and time at the instant `at`, and the abbreviation in effect.
    pub fn local_at(&self, at: i64) -> (DateTime, &str) {
        let at = at.clamp(-INSTANT_LIMIT, INSTANT_LIMIT);
        let (offset, abbreviation) = self.rules.local_type_at(at);
        (DateTime::from_seconds(at + i64::from(offset)), abbreviation)
    }

    /// The instant (Unix seconds) the local `time` happens: `None` when the clock springs
    /// forward over it, the first one when it happens twice (the clock falls back).
    pub fn first_instant(&self, time: DateTime) -> Option<i64> {
        let local = time.seconds();
        let mut offsets = Vec::new();
        self.rules.offsets(&mut offsets);
        // An instant `t` shows `local` exactly when `t + offset_at(t) == local`; every offset
        // the zone ever uses is a candidate, and the earliest match is the first time.
        offsets
            .iter()
            .map(|offset| (local - i64::from(*offset), *offset))
            .filter(|(at, offset)| self.rules.local_type_at(*at).0 == *offset)
            .map(|(at, _)| at)
            .min()
    }
}

impl Rules {
    fn local_type_at(&self, at: i64) -> (i32, &str) {
        match self {
            Rules::Utc => (0, "UTC"),
            Rules::Fixed(local) => (local.offset, &local.abbreviation),
            Rules::Posix(posix) => {
                let local = posix.local_type_at(at);
                (local.offset, &local.abbreviation)
            }
            Rules::Table(table) => {
                let after = table.transitions.partition_point(|t| *t <= at);
                match &table.footer {
                    Some(footer) if after == table.transitions.len() => footer.local_type_at(at),
                    _ => {
                        // Before the first transition: type 0 (RFC 8536, 3.2).
                        let index = after.checked_sub(1).and_then(|i| table.type_after.get(i)).copied().unwrap_or(0);
                        let local = table.types.get(usize::from(index)).or(table.types.first());
                        local.map_or((0, "UTC"), |l| (l.offset, &l.abbreviation))
                    }
                }
            }
        }
    }

    /// Every UTC offset these rules use.
    fn offsets(&self, into: &mut Vec<i32>) {
        let mut add = |offset: i32| {
            if !into.contains(&offset) {
                into.push(offset);
            }
        };
        match self {
            Rules::Utc => add(0),
            Rules::Fixed(local) => add(local.offset),
            Rules::Posix(posix) => {
                add(posix.standard.offset);
                add(posix.daylight.offset);
            }
            Rules::Table(table) => {
                table.types.iter().for_each(|t| add(t.offset));
                if let Some(footer) = &table.footer {
                    footer.offsets(into);
                }
            }
        }
    }
}

impl Posix {
    /// The type in effect at `at`: the later of the transitions at or before it, from the
    /// rules of the years around it (a rule's time may push it up to a week into the next).
    fn local_type_at(&self, at: i64) -> &LocalType {
        let year = DateTime::from_seconds(at + i64::from(self.standard.offset)).date.year();
        let mut latest: Option<(i64, bool)> = None;
        for year in year - 2..=year + 1 {
            for change in [(self.start_in(year), true), (self.end_in(year), false)] {
                // On a tie the start wins: `0/0,J365/25` is daylight time all year.
                if change.0 <= at && latest.is_none_or(|l| change > l) {
                    latest = Some(change);
                }
            }
        }
        match latest {
            Some((_, true)) => &self.daylight,
            _ => &self.standard,
        }
    }

    fn start_in(&self, year: i64) -> i64 {
        self.start.local_seconds(year) - i64::from(self.standard.offset)
    }

    fn end_in(&self, year: i64) -> i64 {
        self.end.local_seconds(year) - i64::from(self.daylight.offset)
    }
}

impl Rule {
    /// The rule's moment in `year`, in seconds of the local clock.
    fn local_seconds(self, year: i64) -> i64 {
        let january_first = Date { year, month: 1, day: 1 }.days();
        let day = match self.day {
            RuleDay::NoLeapDay(n) => january_first + i64::from(n) - 1 + i64::from(is_leap_year(year) && n >= 60),
            RuleDay::Zero(n) => january_first + i64::from(n),
            RuleDay::MonthWeek { month, week, weekday } => {
                let first = Date { year, month, day: 1 };
                let first_weekday = (i64::from(weekday) - i64::from(first.weekday())).rem_euclid(7);
                let mut day_of_month = 1 + first_weekday + 7 * (i64::from(week) - 1);
                while day_of_month > i64::from(days_in_month(year, month)) {
                    day_of_month -= 7;
                }
                first.days() + day_of_month - 1
            }
        };
        day * SECONDS_PER_DAY + i64::from(self.time)
    }
}

/// US rules, used by glibc for a daylight name without rules (`EST5EDT`).
const DEFAULT_RULES: (Rule, Rule) = (
    Rule { day: RuleDay::MonthWeek { month: 3, week: 2, weekday: 0 }, time: 7200 },
    Rule { day: RuleDay::MonthWeek { month: 11, week: 1, weekday: 0 }, time: 7200 },
);

fn parse_posix(text: &str) -> Result<Rules, String> {
    let wrong = |why: &str| format!("POSIX TZ string \"{text}\": {why}");
    if !text.is_ascii() {
        return Err(wrong("only ASCII letters, digits and +-:,./<> belong in it"));
    }
    let mut p = Parser { bytes: text.as_bytes(), at: 0 };
    let standard_name = p.abbreviation().map_err(|why| wrong(&format!("standard time: {why}")))?;
    let standard_offset = p.offset(24).map_err(|why| wrong(&format!("standard time's offset: {why}")))?;
    let standard = LocalType { offset: standard_offset, abbreviation: standard_name };
    if p.done() {
        return Ok(Rules::Fixed(standard));
    }
    let daylight_name = p.abbreviation().map_err(|why| wrong(&format!("daylight time: {why}")))?;
    let daylight_offset = match p.peek() {
        Some(b'+' | b'-' | b'0'..=b'9') => p.offset(24).map_err(|why| wrong(&format!("daylight offset: {why}")))?,
        _ => standard_offset + 3600,
    };
    let daylight = LocalType { offset: daylight_offset, abbreviation: daylight_name };
    let (start, end) = if p.done() {
        DEFAULT_RULES
    } else {
        p.expect(b',').map_err(|why| wrong(&why))?;
        let start = p.rule().map_err(|why| wrong(&format!("daylight time's start: {why}")))?;
        p.expect(b',').map_err(|why| wrong(&why))?;
        let end = p.rule().map_err(|why| wrong(&format!("daylight time's end: {why}")))?;
        (start, end)
    };
    if !p.done() {
        return Err(wrong(&format!("unexpected \"{}\" at the end", p.rest())));
    }
    Ok(Rules::Posix(Box::new(Posix { standard, daylight, start, end })))
}

/// A cursor over an ASCII TZ string.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn rest(&self) -> String {
        String::from_utf8_lossy(self.bytes.get(self.at..).unwrap_or_default()).into_owned()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        match self.eat(byte) {
            true => Ok(()),
            false if self.done() => Err(format!("\"{}\" expected at the end", char::from(byte))),
            false => Err(format!("\"{}\" expected before \"{}\"", char::from(byte), self.rest())),
        }
    }

    /// `EST` (letters) or `<+0330>` (letters, digits, + and -), at least 3 characters.
    fn abbreviation(&mut self) -> Result<Box<str>, String> {
        let quoted = self.eat(b'<');
        let start = self.at;
        while let Some(b) = self.peek() {
            let fits = b.is_ascii_alphabetic() || (quoted && (b.is_ascii_digit() || b == b'+' || b == b'-'));
            if !fits {
                break;
            }
            self.at += 1;
        }
        let name = String::from_utf8_lossy(self.bytes.get(start..self.at).unwrap_or_default()).into_owned();
        if quoted && !self.eat(b'>') {
            return Err(format!("the name <{name} has no closing >"));
        }
        if name.len() < 3 || name.len() > MAX_ABBREVIATION {
            let shape = if quoted { "<+0330>" } else { "EST" };
            return Err(format!(
                "a name of 3 to {MAX_ABBREVIATION} characters such as {shape} expected, found \"{name}\""
            ));
        }
        Ok(name.into())
    }

    /// A number of at most 3 digits.
    fn number(&mut self) -> Option<u16> {
        let start = self.at;
        let mut value: u16 = 0;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            if self.at - start == 3 {
                return None;
            }
            value = value * 10 + u16::from(digit - b'0');
            self.at += 1;
        }
        (self.at > start).then_some(value)
    }

    /// `[+-]hh[:mm[:ss]]` with hours up to `max_hours`, in seconds.
    fn duration(&mut self, max_hours: u16) -> Result<i32, String> {
        let negative = self.eat(b'-');
        if !negative {
            self.eat(b'+');
        }
        let shape = format!("hours (0–{max_hours}), optionally :minutes and :seconds");
        let hours = self.number().filter(|h| *h <= max_hours).ok_or_else(|| format!("{shape} expected"))?;
        let mut seconds = i32::from(hours) * 3600;
        for unit in [60, 1] {
            if !self.eat(b':') {
                break;
            }
            let part = self.number().filter(|v| *v < 60).ok_or_else(|| format!("{shape} expected"))?;
            seconds += i32::from(part) * unit;
        }
        Ok(if negative { -seconds } else { seconds })
    }

    /// A POSIX offset is hours west of UTC (`EST5`); ours is seconds east.
    fn offset(&mut self, max_hours: u16) -> Result<i32, String> {
        self.duration(max_hours).map(|west| -west)
    }

    /// `Jn`, `n` or `Mm.w.d`, then an optional `/time` (02:00 when absent).
    fn rule(&mut self) -> Result<Rule, String> {
        let day = if self.eat(b'J') {
            let n = self.number().filter(|n| (1..=365).contains(n)).ok_or("J needs a day 1–365")?;
            RuleDay::NoLeapDay(n)
        } else if self.eat(b'M') {
            let shape = "Mm.w.d needs a month 1–12, a week 1–5 and a weekday 0–6";
            let month = self.number().filter(|m| (1..=12).contains(m)).ok_or(shape)?;
            let week = self.eat(b'.').then(|| self.number()).flatten().filter(|w| (1..=5).contains(w)).ok_or(shape)?;
            let weekday = self.eat(b'.').then(|| self.number()).flatten().filter(|d| *d <= 6).ok_or(shape)?;
            let narrow = |v: u16| u8::try_from(v).unwrap_or(0);
            RuleDay::MonthWeek { month: narrow(month), week: narrow(week), weekday: narrow(weekday) }
        } else {
            let shape = "a day such as M3.2.0, J60 or 59 expected";
            RuleDay::Zero(self.number().filter(|n| *n <= 365).ok_or(shape)?)
        };
        let time = if self.eat(b'/') { self.duration(167)? } else { 7200 };
        Ok(Rule { day, time })
    }
}

/// A TZif file: the header, the version 1 data (skipped when version 2+ data follows), the
/// 64-bit data and the footer, a POSIX TZ string for the instants after the last transition.
fn parse_tzif(bytes: &[u8]) -> Result<Table, String> {
    let mut reader = Reader { bytes, at: 0 };
    let header = Header::read(&mut reader)?;
    if header.version == 0 {
        return header.read_data(&mut reader, 4);
    }
    reader.take(header.data_len(4)?)?;
    let header = Header::read(&mut reader)?;
    let mut table = header.read_data(&mut reader, 8)?;
    let footer_error = || "a TZif footer is a newline, a TZ string and a newline".to_string();
    if reader.take(1)? != b"\n" {
        return Err(footer_error());
    }
    let rest = reader.bytes.get(reader.at..).unwrap_or_default();
    let length = rest.iter().position(|b| *b == b'\n').ok_or_else(footer_error)?;
    let footer = std::str::from_utf8(rest.get(..length).unwrap_or_default()).map_err(|_| footer_error())?;
    if !footer.is_empty() {
        table.footer = Some(parse_posix(footer).map_err(|e| format!("in the TZif footer: {e}"))?);
    }
    Ok(table)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(length).filter(|end| *end <= self.bytes.len());
        let part = end.and_then(|end| self.bytes.get(self.at..end)).ok_or("the TZif data is cut short")?;
        self.at += length;
        Ok(part)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

struct Header {
    version: u8,
    is_ut: usize,
    is_std: usize,
    leaps: usize,
    times: usize,
    types: usize,
    chars: usize,
}

impl Header {
    fn read(reader: &mut Reader) -> Result<Header, String> {
        if reader.take(4)? != b"TZif" {
            return Err("not a TZif file (it does not start with \"TZif\")".to_string());
        }
        let version = match reader.take(1)?.first().copied().unwrap_or(0) {
            0 => 0,
            v @ b'2'..=b'9' => v - b'0',
            other => return Err(format!("unknown TZif version byte {other:#04x}")),
        };
        reader.take(15)?;
        let mut count = || reader.u32().map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let header = Header {
            version,
            is_ut: count()?,
            is_std: count()?,
            leaps: count()?,
            times: count()?,
            types: count()?,
            chars: count()?,
        };
        if header.types == 0 || header.types > MAX_TYPES || header.times > MAX_TRANSITIONS || header.chars == 0 {
            return Err(format!(
                "a TZif file with {} local time types, {} transitions and {} abbreviation bytes is not valid",
                header.types, header.times, header.chars
            ));
        }
        if (header.is_ut != 0 && header.is_ut != header.types) || (header.is_std != 0 && header.is_std != header.types)
        {
            return Err("a TZif file whose UT/standard indicators do not match its types".to_string());
        }
        Ok(header)
    }

    /// The length of the data after this header, with `time_size`-byte times.
    fn data_len(&self, time_size: usize) -> Result<usize, String> {
        let parts = [
            self.times.checked_mul(time_size + 1),
            self.types.checked_mul(6),
            Some(self.chars),
            self.leaps.checked_mul(time_size + 4),
            Some(self.is_std),
            Some(self.is_ut),
        ];
        parts
            .iter()
            .try_fold(0usize, |sum, part| sum.checked_add((*part)?))
            .ok_or_else(|| "TZif counts overflow".to_string())
    }

    fn read_data(&self, reader: &mut Reader, time_size: usize) -> Result<Table, String> {
        let times = reader.take(self.times.checked_mul(time_size).ok_or("TZif counts overflow")?)?;
        let transitions: Vec<i64> = times
            .chunks_exact(time_size)
            .map(|c| match *c {
                [a, b, c, d] => i64::from(i32::from_be_bytes([a, b, c, d])),
                [a, b, c, d, e, f, g, h] => i64::from_be_bytes([a, b, c, d, e, f, g, h]),
                _ => 0,
            })
            .collect();
        if transitions.windows(2).any(|w| w[0] >= w[1]) {
            return Err("the TZif transitions are not in ascending order".to_string());
        }
        let type_after = reader.take(self.times)?.to_vec();
        if type_after.iter().any(|t| usize::from(*t) >= self.types) {
            return Err("a TZif transition names a local time type that does not exist".to_string());
        }
        let raw_types = reader.take(self.types * 6)?;
        let chars = reader.take(self.chars)?;
        let mut types = Vec::with_capacity(self.types);
        for raw in raw_types.chunks_exact(6) {
            let offset = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            // RFC 8536: -89999 to 93599 (within a day either side).
            if !(-89_999..=93_599).contains(&offset) {
                return Err(format!("a TZif UTC offset of {offset} s is out of range"));
            }
            let from = chars.get(usize::from(raw[5])..).ok_or("a TZif abbreviation index is out of range")?;
            let name = from.split(|b| *b == 0).next().unwrap_or_default();
            if name.len() > MAX_ABBREVIATION || !name.iter().all(|b| b.is_ascii_graphic()) {
                return Err("a TZif abbreviation is not short printable ASCII".to_string());
            }
            let abbreviation = match name.is_empty() {
                true => offset_text(offset).into(),
                false => String::from_utf8_lossy(name).into_owned().into(),
            };
            types.push(LocalType { offset, abbreviation });
        }
        reader.take(self.leaps.checked_mul(time_size + 4).ok_or("TZif counts overflow")?)?;
        reader.take(self.is_std)?;
        reader.take(self.is_ut)?;
        Ok(Table { transitions, type_after, types, footer: None })
    }
}

/// An offset as people read it, for a TZif type without an abbreviation: `+0530`, `-03`.
fn offset_text(offset: i32) -> String {
    let sign = if offset < 0 { '-' } else { '+' };
    let minutes = offset.unsigned_abs() / 60;
    match minutes % 60 {
        0 => format!("{sign}{:02}", minutes / 60),
        m => format!("{sign}{:02}{m:02}", minutes / 60),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Unix seconds of a UTC date and time.
    fn utc(year: i64, month: u8, day: u8, hour: u8, minute: u8) -> i64 {
        Date::new(year, month, day).unwrap().at(hour, minute).seconds()
    }

    fn local(year: i64, month: u8, day: u8, hour: u8, minute: u8) -> DateTime {
        Date::new(year, month, day).unwrap().at(hour, minute)
    }

    #[test]
    fn civil_calendar() {
        assert_eq!(Date::new(1970, 1, 1).unwrap().days(), 0);
        assert_eq!(Date::from_days(0), Date::new(1970, 1, 1).unwrap());
        // (year, leap)
        for (year, leap) in [(2024, true), (2026, false), (2028, true), (1900, false), (2000, true), (2100, false)] {
            assert_eq!(is_leap_year(year), leap, "{year}");
            assert_eq!(Date::new(year, 2, 29).is_some(), leap, "{year}");
        }
        // (year, month, last day)
        for (year, month, last) in [(2026, 1, 31), (2026, 4, 30), (2026, 2, 28), (2028, 2, 29), (2026, 12, 31)] {
            assert_eq!(days_in_month(year, month), last);
            assert_eq!(Date::new(year, month, last).unwrap().tomorrow().day(), 1);
            assert!(Date::new(year, month, last + 1).is_none());
        }
        assert_eq!(Date::new(2026, 12, 31).unwrap().tomorrow(), Date::new(2027, 1, 1).unwrap());
        // (date, weekday): 2028-02-29 is a Tuesday, 2000-01-01 a Saturday.
        for ((y, m, d), weekday) in [((2028, 2, 29), 2), ((2000, 1, 1), 6), ((1970, 1, 1), 4), ((2026, 12, 2), 3)] {
            assert_eq!(Date::new(y, m, d).unwrap().weekday(), weekday, "{y}-{m}-{d}");
        }
        assert_eq!(utc(2028, 2, 29, 0, 0), 1_835_395_200);
        assert_eq!(Date::new(1969, 12, 31).unwrap().days(), -1);
        assert_eq!(Date::new(2100, 3, 1).unwrap().days() - Date::new(2100, 2, 28).unwrap().days(), 1);
        // Every day from 1600 to 2400 round-trips and follows the one before.
        let mut date = Date::new(1600, 1, 1).unwrap();
        for days in date.days()..Date::new(2400, 12, 31).unwrap().days() {
            assert_eq!(date.days(), days);
            assert_eq!(Date::from_days(days), date);
            date = date.tomorrow();
        }
        // Far instants are clamped, not overflowed.
        let far = DateTime::from_seconds(i64::MAX);
        assert!(far.date.year() > 30_000_000);
        assert!(DateTime::from_seconds(i64::MIN).date.year() < -30_000_000);
    }

    #[test]
    fn posix_strings_in_a_table() {
        // (TZ string, [(UTC instant, offset, abbreviation)]): either side of each change.
        /// (UTC instant, offset, abbreviation)
        type Expected<'a> = &'a [(i64, i32, &'a str)];
        let table: &[(&str, Expected)] = &[
            // US Eastern 2026: Mar 8 02:00 EST = 07:00 UTC; Nov 1 02:00 EDT = 06:00 UTC.
            (
                "EST5EDT,M3.2.0,M11.1.0",
                &[
                    (utc(2026, 3, 8, 6, 59), -5 * 3600, "EST"),
                    (utc(2026, 3, 8, 7, 0), -4 * 3600, "EDT"),
                    (utc(2026, 11, 1, 5, 59), -4 * 3600, "EDT"),
                    (utc(2026, 11, 1, 6, 0), -5 * 3600, "EST"),
                ],
            ),
            // Central Europe 2026: Mar 29 and Oct 25, both at 01:00 UTC.
            (
                "CET-1CEST,M3.5.0,M10.5.0/3",
                &[
                    (utc(2026, 3, 29, 0, 59), 3600, "CET"),
                    (utc(2026, 3, 29, 1, 0), 7200, "CEST"),
                    (utc(2026, 10, 25, 0, 59), 7200, "CEST"),
                    (utc(2026, 10, 25, 1, 0), 3600, "CET"),
                    (utc(2026, 7, 1, 0, 0), 7200, "CEST"),
                    (utc(2026, 1, 1, 0, 0), 3600, "CET"),
                ],
            ),
            // Sydney, southern hemisphere: ends Apr 5 03:00 AEDT, starts Oct 4 02:00 AEST (2026).
            (
                "AEST-10AEDT,M10.1.0,M4.1.0/3",
                &[
                    (utc(2026, 1, 1, 0, 0), 11 * 3600, "AEDT"),
                    (utc(2026, 4, 4, 15, 59), 11 * 3600, "AEDT"),
                    (utc(2026, 4, 4, 16, 0), 10 * 3600, "AEST"),
                    (utc(2026, 10, 3, 15, 59), 10 * 3600, "AEST"),
                    (utc(2026, 10, 3, 16, 0), 11 * 3600, "AEDT"),
                    (utc(2026, 12, 31, 23, 59), 11 * 3600, "AEDT"),
                ],
            ),
            // Fixed offsets, quoted names, minutes, a leading colon.
            ("<-03>3", &[(utc(2026, 6, 1, 0, 0), -3 * 3600, "-03")]),
            ("<+0330>-3:30", &[(utc(2026, 6, 1, 0, 0), 3 * 3600 + 1800, "+0330")]),
            ("UTC0", &[(utc(2026, 6, 1, 0, 0), 0, "UTC")]),
            (":JST-9", &[(utc(2026, 6, 1, 0, 0), 9 * 3600, "JST")]),
            ("<+0545>-5:45:00", &[(0, 5 * 3600 + 45 * 60, "+0545")]),
            // Julian days: J60 is Mar 1 in every year; 59 is Feb 29 in a leap year.
            ("AAA0BBB,J60/0,J300/0", &[(utc(2028, 2, 29, 23, 59), 0, "AAA"), (utc(2028, 3, 1, 0, 0), 3600, "BBB")]),
            ("AAA0BBB,59/0,300/0", &[(utc(2028, 2, 29, 0, 0), 3600, "BBB"), (utc(2027, 3, 1, 0, 0), 3600, "BBB")]),
            // Rule times beyond 24 h and negative (RFC 8536 v3): Jerusalem, Nuuk (2023+).
            (
                "IST-2IDT,M3.4.4/26,M10.5.0",
                // 2026: Friday Mar 27 02:00 IST (26 h after Thursday's midnight) = 00:00 UTC.
                &[(utc(2026, 3, 26, 23, 59), 7200, "IST"), (utc(2026, 3, 27, 0, 0), 3 * 3600, "IDT")],
            ),
            (
                "<-02>2<-01>,M3.5.0/-1,M10.5.0/0",
                // 2026: Sat Mar 28 23:00 -02 = Mar 29 01:00 UTC; Sun Oct 25 00:00 -01 = 01:00 UTC.
                &[
                    (utc(2026, 3, 29, 0, 59), -7200, "-02"),
                    (utc(2026, 3, 29, 1, 0), -3600, "-01"),
                    (utc(2026, 10, 25, 0, 59), -3600, "-01"),
                    (utc(2026, 10, 25, 1, 0), -7200, "-02"),
                ],
            ),
            // Daylight time all year (RFC 8536's example), and no rules (US ones, as glibc).
            (
                "EST5EDT,0/0,J365/25",
                &[(utc(2026, 1, 1, 4, 0), -4 * 3600, "EDT"), (utc(2026, 7, 1, 0, 0), -4 * 3600, "EDT")],
            ),
            ("EST5EDT", &[(utc(2026, 3, 8, 6, 59), -5 * 3600, "EST"), (utc(2026, 3, 8, 7, 0), -4 * 3600, "EDT")]),
        ];
        for (text, instants) in table {
            let zone = TimeZone::posix(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(zone.name(), None);
            for (at, offset, abbreviation) in *instants {
                assert_eq!(zone.offset_at(*at), (*offset, *abbreviation), "{text} at {at}");
            }
        }
    }

    #[test]
    fn posix_mistakes_are_named() {
        let table = [
            ("", "standard time: a name of 3 to 32 characters such as EST expected, found \"\""),
            ("EST", "standard time's offset: hours (0–24), optionally :minutes and :seconds expected"),
            ("Europe/Berlin", "standard time's offset: hours (0–24), optionally :minutes and :seconds expected"),
            ("<+03-3", "standard time: the name <+03-3 has no closing >"),
            ("EST25", "standard time's offset: hours (0–24), optionally :minutes and :seconds expected"),
            ("EST5EDT,M3.2.0", "\",\" expected at the end"),
            (
                "EST5EDT,M13.2.0,M11.1.0",
                "daylight time's start: Mm.w.d needs a month 1–12, a week 1–5 and a weekday 0–6",
            ),
            ("EST5EDT,M3.2.0,J366", "daylight time's end: J needs a day 1–365"),
            (
                "EST5EDT,M3.2.0,M11.1.0/168",
                "daylight time's end: hours (0–167), optionally :minutes and :seconds expected",
            ),
            ("EST5EDT,M3.2.0,M11.1.0 x", "unexpected \" x\" at the end"),
            ("EST5:60", "standard time's offset: hours (0–24), optionally :minutes and :seconds expected"),
            ("EST5EDT,M3.2.0,x", "daylight time's end: a day such as M3.2.0, J60 or 59 expected"),
            ("ÉST5", "only ASCII letters, digits and +-:,./<> belong in it"),
        ];
        for (text, why) in table {
            assert_eq!(TimeZone::posix(text), Err(format!("POSIX TZ string \"{text}\": {why}")), "{text}");
        }
    }

    #[test]
    fn local_times_resolve_with_gaps_skipped_and_folds_taken_first() {
        let zone = TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap();
        // (local time, instant): 02:30 on Mar 8 does not exist; 01:30 on Nov 1 happens twice.
        let table = [
            (local(2026, 3, 8, 1, 59), Some(utc(2026, 3, 8, 6, 59))),
            (local(2026, 3, 8, 2, 0), None),
            (local(2026, 3, 8, 2, 30), None),
            (local(2026, 3, 8, 3, 0), Some(utc(2026, 3, 8, 7, 0))),
            (local(2026, 11, 1, 0, 59), Some(utc(2026, 11, 1, 4, 59))),
            (local(2026, 11, 1, 1, 30), Some(utc(2026, 11, 1, 5, 30))),
            (local(2026, 11, 1, 2, 0), Some(utc(2026, 11, 1, 7, 0))),
            (local(2026, 7, 1, 12, 0), Some(utc(2026, 7, 1, 16, 0))),
        ];
        for (time, instant) in table {
            assert_eq!(zone.first_instant(time), instant, "{time:?}");
            if let Some(at) = instant {
                assert_eq!(zone.local_at(at).0, time);
            }
        }
        assert_eq!(TimeZone::UTC.first_instant(local(2026, 3, 8, 2, 30)), Some(utc(2026, 3, 8, 2, 30)));
        assert_eq!(TimeZone::UTC.name(), Some("UTC"));
        assert_eq!(TimeZone::UTC.local_at(utc(2028, 2, 29, 12, 0)), (local(2028, 2, 29, 12, 0), "UTC"));
    }

    /// A TZif file: version 1 data (times, types, abbreviations), then with a `footer` the
    /// same as version 2 (64-bit) data and the footer.
    pub(crate) fn tzif_blob(transitions: &[(i64, u8)], types: &[(i32, &str)], footer: Option<&str>) -> Vec<u8> {
        let mut chars = Vec::new();
        let mut raw_types = Vec::new();
        for (offset, name) in types {
            raw_types.extend_from_slice(&offset.to_be_bytes());
            raw_types.push(0); // is DST: not read
            raw_types.push(u8::try_from(chars.len()).unwrap());
            chars.extend_from_slice(name.as_bytes());
            chars.push(0);
        }
        let block = |wide: bool, version: u8| {
            let mut out = b"TZif".to_vec();
            out.push(version);
            out.extend_from_slice(&[0; 15]);
            let n = |v: usize| u32::try_from(v).unwrap().to_be_bytes();
            for count in [0, 0, 0, transitions.len(), types.len(), chars.len()] {
                out.extend_from_slice(&n(count));
            }
            for (at, _) in transitions {
                match wide {
                    true => out.extend_from_slice(&at.to_be_bytes()),
                    false => out.extend_from_slice(&i32::try_from(*at).unwrap().to_be_bytes()),
                }
            }
            out.extend(transitions.iter().map(|(_, t)| *t));
            out.extend_from_slice(&raw_types);
            out.extend_from_slice(&chars);
            out
        };
        match footer {
            None => block(false, 0),
            Some(footer) => {
                let mut out = block(false, b'2');
                out.extend(block(true, b'2'));
                out.extend(format!("\n{footer}\n").bytes());
                out
            }
        }
    }

    #[test]
    fn tzif_files() {
        // Berlin-like: LMT until 1893, then CET/CEST changes in 2025, then the footer's rules.
        let types = [(3208, "LMT"), (3600, "CET"), (7200, "CEST")];
        let transitions = [(-2_000_000_000, 1), (utc(2025, 3, 30, 1, 0), 2), (utc(2025, 10, 26, 1, 0), 1)];
        let v2 = tzif_blob(&transitions, &types, Some("CET-1CEST,M3.5.0,M10.5.0/3"));
        let v1 = tzif_blob(&transitions, &types, None);
        // (instant, offset, abbreviation) for the v2 file, then whether v1 (no footer) agrees.
        let table = [
            (-3_000_000_000, 3208, "LMT", true),
            (-2_000_000_000, 3600, "CET", true),
            (utc(2025, 3, 30, 0, 59), 3600, "CET", true),
            (utc(2025, 3, 30, 1, 0), 7200, "CEST", true),
            (utc(2025, 10, 26, 1, 0), 3600, "CET", true),
            // After the last transition: the footer's rules (v1 stays at the last type).
            (utc(2026, 3, 29, 1, 0), 7200, "CEST", false),
            (utc(2026, 10, 25, 1, 0), 3600, "CET", true),
            (utc(2099, 7, 1, 0, 0), 7200, "CEST", false),
        ];
        let zone = TimeZone::tzif(Some("Test/Berlin"), &v2).unwrap();
        let old = TimeZone::tzif(None, &v1).unwrap();
        assert_eq!(zone.name(), Some("Test/Berlin"));
        for (at, offset, abbreviation, v1_agrees) in table {
            assert_eq!(zone.offset_at(at), (offset, abbreviation), "v2 at {at}");
            assert_eq!(old.offset_at(at) == (offset, abbreviation), v1_agrees, "v1 at {at}");
        }
        // Local times through the table and the footer: gaps skipped, folds taken first.
        assert_eq!(zone.first_instant(local(2025, 3, 30, 2, 30)), None);
        assert_eq!(zone.first_instant(local(2026, 3, 29, 2, 30)), None);
        assert_eq!(zone.first_instant(local(2025, 10, 26, 2, 30)), Some(utc(2025, 10, 26, 0, 30)));
        assert_eq!(zone.first_instant(local(2026, 10, 25, 2, 30)), Some(utc(2026, 10, 25, 0, 30)));
        assert_eq!(zone.first_instant(local(2026, 10, 25, 3, 30)), Some(utc(2026, 10, 25, 2, 30)));
        // No transitions, a footer only (as Etc/UTC).
        let plain = TimeZone::tzif(None, &tzif_blob(&[], &[(0, "UTC")], Some("UTC0"))).unwrap();
        assert_eq!(plain.offset_at(utc(2026, 1, 1, 0, 0)), (0, "UTC"));
    }

    #[test]
    fn broken_tzif_files_are_refused() {
        let good = tzif_blob(&[(0, 1)], &[(0, "LMT"), (3600, "CET")], Some("CET-1"));
        assert!(TimeZone::tzif(None, &good).is_ok());
        let mut bad_footer = good.clone();
        bad_footer.truncate(good.len() - 1);
        let table: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "the TZif data is cut short"),
            ("not TZif", b"TZxf\0".to_vec(), "not a TZif file"),
            ("cut", good[..good.len() - 9].to_vec(), "cut short"),
            ("no final newline", bad_footer, "footer"),
            ("unsorted", tzif_blob(&[(10, 1), (5, 0)], &[(0, "LMT"), (3600, "CET")], None), "ascending"),
            ("type index", tzif_blob(&[(0, 7)], &[(0, "LMT")], None), "does not exist"),
            ("footer", tzif_blob(&[], &[(0, "UTC")], Some("nonsense")), "in the TZif footer"),
            ("offset", tzif_blob(&[], &[(100_000, "XXX")], None), "out of range"),
        ];
        for (what, bytes, why) in table {
            let error = TimeZone::tzif(None, &bytes).unwrap_err();
            assert!(error.contains(why), "{what}: {error}");
        }
        // A type without an abbreviation shows its offset.
        let nameless = TimeZone::tzif(None, &tzif_blob(&[], &[(12600, "")], None)).unwrap();
        assert_eq!(nameless.offset_at(0), (12600, "+0330"));
        // Huge counts are refused before anything is read or allocated.
        let mut huge = good.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(TimeZone::tzif(None, &huge).is_err());
    }

    #[test]
    fn the_systems_berlin_file_agrees_when_present() {
        let path = std::path::Path::new("/usr/share/zoneinfo/Europe/Berlin");
        let Ok(bytes) = std::fs::read(path) else {
            eprintln!("skipped: {} is absent (no tzdata on this machine)", path.display());
            return;
        };
        let zone = TimeZone::tzif(Some("Europe/Berlin"), &bytes).unwrap();
        let table = [
            (utc(1980, 1, 1, 0, 0), 3600, "CET"),
            // Midsummer time, double summer time, in 1945.
            (utc(1945, 6, 1, 0, 0), 10800, "CEMT"),
            (utc(1944, 7, 1, 0, 0), 7200, "CEST"),
            (utc(2026, 3, 29, 0, 59), 3600, "CET"),
            (utc(2026, 3, 29, 1, 0), 7200, "CEST"),
            (utc(2026, 10, 25, 0, 59), 7200, "CEST"),
            (utc(2026, 10, 25, 1, 0), 3600, "CET"),
            (utc(2071, 7, 1, 0, 0), 7200, "CEST"),
        ];
        for (at, offset, abbreviation) in table {
            assert_eq!(zone.offset_at(at), (offset, abbreviation), "at {at}");
        }
    }

    #[test]
    fn offsets_as_text() {
        for (offset, text) in [(0, "+00"), (-3 * 3600, "-03"), (12600, "+0330"), (-(9 * 3600 + 30 * 60), "-0930")] {
            assert_eq!(offset_text(offset), text);
        }
    }
}
