//! Timestamps and UTC days for the query log, and the date formats that log wrappers put in
//! front of a line.
//!
//! The parsers here are hand-written for the fixed layouts that containerd, Docker,
//! journald and CoreDNS print, because they run on every line of a busy log and must not
//! allocate. They return `None` on anything out of range instead of guessing.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};

const NANOS_PER_SEC: i64 = 1_000_000_000;
const NANOS_PER_MILLI: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// A point in time, in nanoseconds since the Unix epoch (UTC).
///
/// An `i64` of nanoseconds covers the years 1677 to 2262, so it holds every date a log line
/// carries in practice. The parsers reject dates outside that range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Creates a timestamp from nanoseconds since the Unix epoch.
    pub const fn from_unix_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// Creates a timestamp from milliseconds since the Unix epoch, saturating outside the
    /// representable range.
    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(NANOS_PER_MILLI))
    }

    /// Creates a timestamp from whole seconds since the Unix epoch, saturating outside the
    /// representable range.
    pub const fn from_unix_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(NANOS_PER_SEC))
    }

    /// Returns the current wall-clock time.
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// Converts a chrono time, saturating outside the representable range.
    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        match at.timestamp_nanos_opt() {
            Some(nanos) => Self(nanos),
            None if at.timestamp() < 0 => Self(i64::MIN),
            None => Self(i64::MAX),
        }
    }

    pub const fn unix_nanos(self) -> i64 {
        self.0
    }

    /// Milliseconds since the Unix epoch, rounded towards negative infinity.
    pub const fn unix_millis(self) -> i64 {
        self.0.div_euclid(NANOS_PER_MILLI)
    }

    /// Milliseconds from `earlier` to `self`, or 0 when `earlier` is later.
    pub const fn millis_since(self, earlier: Timestamp) -> u64 {
        let nanos = self.0.saturating_sub(earlier.0);
        if nanos <= 0 {
            0
        } else {
            (nanos / NANOS_PER_MILLI) as u64
        }
    }

    /// This time plus `millis` milliseconds, saturating.
    pub const fn plus_millis(self, millis: u64) -> Timestamp {
        let millis = if millis > i64::MAX as u64 {
            i64::MAX
        } else {
            millis as i64
        };
        Timestamp(
            self.0
                .saturating_add(millis.saturating_mul(NANOS_PER_MILLI)),
        )
    }

    /// Returns the UTC day this time falls on.
    pub const fn day(self) -> Day {
        Day(self.0.div_euclid(NANOS_PER_SEC * SECS_PER_DAY) as i32)
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.0)
    }

    /// RFC 3339 in UTC with millisecond precision, the form every Almagest message uses.
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A UTC calendar day, the unit that query counts are kept per. Displays as `YYYY-MM-DD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(i32);

impl Day {
    /// Returns the day `days` days after 1970-01-01.
    pub const fn from_days_since_epoch(days: i32) -> Self {
        Self(days)
    }

    pub const fn days_since_epoch(self) -> i32 {
        self.0
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Day> {
        let b = text.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let year = digits(&b[0..4])? as i64;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        let days = days_from_civil(year, month, day)?;
        Some(Day(i32::try_from(days).ok()?))
    }

    /// Year, month (1–12) and day of month (1–31).
    pub const fn ymd(self) -> (i64, u32, u32) {
        civil_from_days(self.0 as i64)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = self.ymd();
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

/// Parses a leading RFC 3339 timestamp and returns it with the number of bytes it used.
///
/// Accepts what containerd, Docker, kubectl, journald (`short-iso`) and CoreDNS print: a `T`
/// or space between date and time, up to nine fractional digits (more are read and ignored),
/// and a zone of `Z`, `z`, `±HH:MM`, `±HHMM` or `±HH`.
pub fn parse_rfc3339_prefix(text: &str) -> Option<(Timestamp, usize)> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let (seconds_of_day, mut pos) = parse_clock(b, 11)?;
    let (fraction_nanos, after_fraction) = parse_fraction(b, pos);
    pos = after_fraction;
    let (offset_secs, used) = parse_zone(&b[pos..])?;
    pos += used;
    let days = days_from_civil(year, month, day)?;
    let secs = days * SECS_PER_DAY + seconds_of_day - offset_secs;
    let nanos = secs
        .checked_mul(NANOS_PER_SEC)?
        .checked_add(fraction_nanos)?;
    Some((Timestamp(nanos), pos))
}

/// Parses the Common Log Format date CoreDNS put in brackets before 1.2.6, without the
/// brackets: `21/Aug/2018:09:14:03 +0000`.
pub fn parse_clf_date(text: &str) -> Option<Timestamp> {
    let b = text.as_bytes();
    if b.len() != 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[20] != b' ' {
        return None;
    }
    let day = digits(&b[0..2])?;
    let month = month_from_abbreviation(&b[3..6])?;
    let year = digits(&b[7..11])? as i64;
    let (seconds_of_day, end) = parse_clock(b, 12)?;
    if end != 20 {
        return None;
    }
    let (offset_secs, used) = parse_zone(&b[21..])?;
    if used != 5 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days * SECS_PER_DAY + seconds_of_day - offset_secs;
    Some(Timestamp(secs.checked_mul(NANOS_PER_SEC)?))
}

/// Parses the prefix Go's standard `log` package writes with its default flags,
/// `2018/08/15 14:37:17 ` (optionally with `.micros`), and returns it with the bytes used,
/// including the trailing space.
///
/// Go writes local time without a zone; this reads it as UTC, which is what a container
/// without a `TZ` setting prints.
pub fn parse_go_log_prefix(text: &str) -> Option<(Timestamp, usize)> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'/' || b[7] != b'/' || b[10] != b' ' {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let (seconds_of_day, pos) = parse_clock(b, 11)?;
    let (fraction_nanos, pos) = parse_fraction(b, pos);
    if b.get(pos) != Some(&b' ') {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days * SECS_PER_DAY + seconds_of_day;
    let nanos = secs
        .checked_mul(NANOS_PER_SEC)?
        .checked_add(fraction_nanos)?;
    Some((Timestamp(nanos), pos + 1))
}

/// Measures a leading BSD syslog timestamp (`Jul 03 13:12:37`, `Jul  3 13:12:37`, optionally
/// with a fraction as `journalctl -o short-precise` prints it) and returns the bytes it
/// uses, excluding the space after it.
///
/// The format has neither year nor zone, so it yields no [`Timestamp`].
pub fn measure_bsd_syslog_prefix(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    if b.len() < 15 || b[3] != b' ' {
        return None;
    }
    month_from_abbreviation(&b[0..3])?;
    let day_ok = match (b[4], b[5]) {
        (b' ', d) => d.is_ascii_digit(),
        (t, d) => t.is_ascii_digit() && d.is_ascii_digit(),
    };
    if !day_ok || b[6] != b' ' {
        return None;
    }
    let (_, pos) = parse_clock(b, 7)?;
    let (_, pos) = parse_fraction(b, pos);
    Some(pos)
}

/// Reads `HH:MM:SS` at `start`; returns the seconds of the day and the position after it.
/// A leap second (`:60`) is read as the first second of the next minute.
fn parse_clock(b: &[u8], start: usize) -> Option<(i64, usize)> {
    let clock = b.get(start..start + 8)?;
    if clock[2] != b':' || clock[5] != b':' {
        return None;
    }
    let hour = digits(&clock[0..2])?;
    let minute = digits(&clock[3..5])?;
    let second = digits(&clock[6..8])?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let seconds = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    Some((seconds, start + 8))
}

/// Reads an optional `.fraction` at `start` and returns nanoseconds and the position after
/// it. Digits beyond the ninth are consumed and ignored.
fn parse_fraction(b: &[u8], start: usize) -> (i64, usize) {
    if !matches!(b.get(start), Some(b'.' | b',')) {
        return (0, start);
    }
    let mut pos = start + 1;
    let mut nanos = 0i64;
    let mut scale = NANOS_PER_SEC;
    while let Some(&c) = b.get(pos) {
        if !c.is_ascii_digit() {
            break;
        }
        if scale > 1 {
            scale /= 10;
            nanos += i64::from(c - b'0') * scale;
        }
        pos += 1;
    }
    if pos == start + 1 {
        // A lone dot is not a fraction; leave it for the caller to reject.
        return (0, start);
    }
    (nanos, pos)
}

/// Reads a zone designator; returns its offset east of UTC in seconds and the bytes used.
fn parse_zone(b: &[u8]) -> Option<(i64, usize)> {
    let sign = match b.first()? {
        b'Z' | b'z' => return Some((0, 1)),
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hours = digits(b.get(1..3)?)?;
    let (minutes, used) = match b.get(3) {
        Some(b':') => (digits(b.get(4..6)?)?, 6),
        Some(c) if c.is_ascii_digit() => (digits(b.get(3..5)?)?, 5),
        _ => (0, 3),
    };
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((
        sign * (i64::from(hours) * 3600 + i64::from(minutes) * 60),
        used,
    ))
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(c - b'0');
    }
    Some(value)
}

fn month_from_abbreviation(b: &[u8]) -> Option<u32> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    MONTHS
        .iter()
        .position(|m| m.as_slice() == b)
        .map(|i| i as u32 + 1)
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date, or `None` for an invalid date.
///
/// The arithmetic is Howard Hinnant's `days_from_civil`
/// (<https://howardhinnant.github.io/date_algorithms.html>).
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = i64::from(month);
    let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

/// Converts days since 1970-01-01 to year, month and day (the inverse of
/// [`days_from_civil`]).
const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::from_datetime(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn rfc3339_with_nanoseconds_and_z() {
        let (at, used) = parse_rfc3339_prefix("2026-08-21T09:14:03.118349261Z stdout").unwrap();
        assert_eq!(at, ts("2026-08-21T09:14:03.118349261Z"));
        assert_eq!(used, 30);
    }

    #[test]
    fn rfc3339_with_offset_converts_to_utc() {
        let (at, _) = parse_rfc3339_prefix("2026-08-21T11:14:03.118349261+02:00").unwrap();
        assert_eq!(at, ts("2026-08-21T09:14:03.118349261Z"));
    }

    #[test]
    fn rfc3339_offset_without_colon() {
        let (at, used) = parse_rfc3339_prefix("2026-07-03T13:12:37+0200 host").unwrap();
        assert_eq!(at, ts("2026-07-03T11:12:37Z"));
        assert_eq!(used, 24);
    }

    #[test]
    fn rfc3339_milliseconds_as_coredns_prints() {
        let (at, _) = parse_rfc3339_prefix("2020-09-14T19:12:38.340Z [INFO]").unwrap();
        assert_eq!(at, ts("2020-09-14T19:12:38.340Z"));
    }

    #[test]
    fn rfc3339_rejects_invalid_dates() {
        for text in [
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00+2",
            "2026-01-01X00:00:00Z",
            "202a-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_prefix(text), None, "{text}");
        }
    }

    #[test]
    fn clf_date_with_zone() {
        let at = parse_clf_date("24/Jan/2018:10:10:10 +0100").unwrap();
        assert_eq!(at, ts("2018-01-24T09:10:10Z"));
    }

    #[test]
    fn clf_date_rejects_bad_month() {
        assert_eq!(parse_clf_date("24/Jnu/2018:10:10:10 +0000"), None);
    }

    #[test]
    fn go_log_prefix_reads_as_utc() {
        let (at, used) = parse_go_log_prefix("2018/08/15 14:37:17 [INFO] CoreDNS-1.2.2").unwrap();
        assert_eq!(at, ts("2018-08-15T14:37:17Z"));
        assert_eq!(used, 20);
    }

    #[test]
    fn bsd_syslog_prefix_lengths() {
        assert_eq!(
            measure_bsd_syslog_prefix("Jul 03 13:12:37 gateway-1"),
            Some(15)
        );
        assert_eq!(
            measure_bsd_syslog_prefix("Jul  3 13:12:37 gateway-1"),
            Some(15)
        );
        assert_eq!(
            measure_bsd_syslog_prefix("Jul  3 13:12:37.123456 gw"),
            Some(22)
        );
        assert_eq!(measure_bsd_syslog_prefix("Jux  3 13:12:37 gateway-1"), None);
    }

    #[test]
    fn day_displays_iso_date() {
        assert_eq!(
            ts("2026-08-21T23:59:59.999Z").day().to_string(),
            "2026-08-21"
        );
        assert_eq!(ts("1969-12-31T23:59:59Z").day().to_string(), "1969-12-31");
    }

    #[test]
    fn day_parse_round_trips() {
        let day = Day::parse("2024-02-29").unwrap();
        assert_eq!(day.to_string(), "2024-02-29");
        assert_eq!(Day::parse("2023-02-29"), None);
    }

    #[test]
    fn millis_since_saturates_at_zero() {
        let a = Timestamp::from_unix_millis(1_000);
        let b = Timestamp::from_unix_millis(4_500);
        assert_eq!(b.millis_since(a), 3_500);
        assert_eq!(a.millis_since(b), 0);
    }

    proptest! {
        #[test]
        fn rfc3339_matches_chrono(secs in -2_000_000_000i64..5_000_000_000, nanos in 0u32..1_000_000_000, offset_min in -1439i32..1439) {
            let offset = chrono::FixedOffset::east_opt(offset_min * 60).unwrap();
            let at = offset.timestamp_opt(secs, nanos).unwrap();
            let text = at.to_rfc3339_opts(SecondsFormat::Nanos, true);
            let (parsed, used) = parse_rfc3339_prefix(&text).unwrap();
            prop_assert_eq!(used, text.len());
            prop_assert_eq!(parsed, Timestamp::from_datetime(at.with_timezone(&Utc)));
        }

        #[test]
        fn civil_days_match_chrono(days in -719_162i32..2_932_896) {
            // The range is 0001-01-01 to 9999-12-31, the years a four-digit field can hold.
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
            let expected = epoch + chrono::TimeDelta::days(i64::from(days));
            let text = Day(days).to_string();
            prop_assert_eq!(&text, &expected.format("%Y-%m-%d").to_string());
            prop_assert_eq!(Day::parse(&text), Some(Day(days)));
        }

        #[test]
        fn date_parsers_never_panic(text in "\\PC{0,40}") {
            let _ = parse_rfc3339_prefix(&text);
            let _ = parse_clf_date(&text);
            let _ = parse_go_log_prefix(&text);
            let _ = measure_bsd_syslog_prefix(&text);
            let _ = Day::parse(&text);
        }
    }
}
