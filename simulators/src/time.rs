//! Dates and times of the simulation: compact days, Almaty local time, proto conversions.
//!
//! Registry dates are civil dates in Asia/Almaty. Since 1 March 2024 all of Kazakhstan keeps
//! UTC+5 all year, so the simulation uses that fixed offset (and needs no time-zone
//! database, which keeps it the same on every machine). Times are Unix seconds.

use std::fmt;

/// The UTC offset of Asia/Almaty, in seconds (UTC+5 since 1 March 2024).
pub const ALMATY_OFFSET_SECS: i64 = 5 * 3600;
/// Seconds in a day.
pub const DAY_SECS: i64 = 86_400;

/// A civil date as a count of days since 1970-01-01: 4 bytes, `Copy`, ordered.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Day(pub i32);

impl Day {
    /// The day of a (year, month, day); `None` when it is not a real date.
    pub fn from_ymd(y: i32, m: u32, d: u32) -> Option<Day> {
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || !(1800..=9999).contains(&y) {
            return None;
        }
        Some(Day(days_from_civil(y, m, d)))
    }

    /// (year, month, day).
    pub fn ymd(self) -> (i32, u32, u32) {
        civil_from_days(self.0)
    }

    pub fn year(self) -> i32 {
        self.ymd().0
    }

    /// Days later (or earlier, when negative).
    pub fn plus(self, days: i32) -> Day {
        Day(self.0 + days)
    }

    /// 0 Monday .. 6 Sunday.
    pub fn weekday(self) -> u32 {
        // 1970-01-01 was a Thursday (3).
        (self.0 + 3).rem_euclid(7) as u32
    }

    /// The same month and day `years` later (28 Feb for 29 Feb in a common year).
    pub fn plus_years(self, years: i32) -> Day {
        let (y, m, d) = self.ymd();
        let y2 = y + years;
        let d2 = d.min(days_in_month(y2, m));
        Day(days_from_civil(y2, m, d2))
    }

    /// Whole years from `self` to `later` (an age).
    pub fn years_until(self, later: Day) -> i32 {
        let (y1, m1, d1) = self.ymd();
        let (y2, m2, d2) = later.ymd();
        let mut age = y2 - y1;
        if (m2, d2) < (m1, d1) {
            age -= 1;
        }
        age
    }

    /// The proto date.
    pub fn to_proto(self) -> shep_proto::shep::Date {
        let (y, m, d) = self.ymd();
        shep_proto::shep::Date { year: y, month: m as i32, day: d as i32 }
    }

    /// A proto date, validated.
    pub fn from_proto(d: &shep_proto::shep::Date) -> Option<Day> {
        if d.month < 1 || d.day < 1 {
            return None;
        }
        Day::from_ymd(d.year, d.month as u32, d.day as u32)
    }

    /// From a jiff civil date.
    pub fn from_civil(d: jiff::civil::Date) -> Day {
        Day(days_from_civil(d.year() as i32, d.month() as u32, d.day() as u32))
    }

    /// The Almaty instant `h:m` on this day, in Unix seconds.
    pub fn at_almaty(self, hour: u32, minute: u32) -> i64 {
        self.0 as i64 * DAY_SECS + hour as i64 * 3600 + minute as i64 * 60 - ALMATY_OFFSET_SECS
    }

    /// The Almaty date of a Unix time.
    pub fn of_unix(secs: i64) -> Day {
        Day((secs + ALMATY_OFFSET_SECS).div_euclid(DAY_SECS) as i32)
    }
}

/// Seconds since the Almaty midnight of a Unix time.
pub fn almaty_second_of_day(secs: i64) -> i64 {
    (secs + ALMATY_OFFSET_SECS).rem_euclid(DAY_SECS)
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl fmt::Debug for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Day({self})")
    }
}

/// A proto timestamp of Unix seconds.
pub fn ts(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: secs, nanos: 0 }
}

/// Unix seconds as RFC 3339 UTC text ("2026-03-02T04:00:00Z"), for exports.
pub fn rfc3339(secs: i64) -> String {
    let day = Day(secs.div_euclid(DAY_SECS) as i32);
    let s = secs.rem_euclid(DAY_SECS);
    format!("{day}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Days in a month of a year (0 for a month out of range).
pub fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

// Howard Hinnant's algorithms, proleptic Gregorian.
fn days_from_civil(y: i32, m: u32, d: u32) -> i32 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy as i32;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i32) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_weekdays() {
        assert_eq!(Day::from_ymd(1970, 1, 1), Some(Day(0)));
        for z in (-60_000..40_000).step_by(7) {
            let (y, m, d) = Day(z).ymd();
            assert_eq!(Day::from_ymd(y, m, d), Some(Day(z)));
        }
        // 2026-03-02 is a Monday.
        assert_eq!(Day::from_ymd(2026, 3, 2).unwrap().weekday(), 0);
        assert_eq!(Day::from_ymd(2026, 2, 29), None);
        assert_eq!(Day::from_ymd(2024, 2, 29).unwrap().plus_years(1).to_string(), "2025-02-28");
        let jd = jiff::civil::date(2025, 12, 31);
        assert_eq!(Day::from_civil(jd).to_string(), "2025-12-31");
    }

    #[test]
    fn almaty_times() {
        let day = Day::from_ymd(2026, 3, 2).unwrap();
        let nine = day.at_almaty(9, 0);
        assert_eq!(rfc3339(nine), "2026-03-02T04:00:00Z");
        assert_eq!(Day::of_unix(nine), day);
        assert_eq!(Day::of_unix(day.at_almaty(23, 59)), day);
        assert_eq!(almaty_second_of_day(nine), 9 * 3600);
        assert_eq!(Day::from_ymd(1990, 6, 15).unwrap().years_until(Day::from_ymd(2026, 6, 14).unwrap()), 35);
    }
}
