//! The working-day calendar of Kazakhstan, as data.
//!
//! Saturday and Sunday are days off by rule. Each year's table (`calendar/YEAR.toml`,
//! shipped; an operator file adds or replaces years without a rebuild) lists the public
//! holidays and the government's transfers of days off. A holiday that falls on a day off
//! moves to the next working day unless it is marked `carry_over = false` (7 January and the
//! first day of Kurban Ait); the carried days are computed here, not listed.
//!
//! A wait of N days "ends at the time of day the SMS was sent, on the N-th (working or plain)
//! day after the day it was sent" (DOMAIN.md), in Asia/Almaty: [`Calendar::deadline`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Weekday};
use serde::Deserialize;

use crate::dates::{almaty, de_date};
use crate::pilot::DayCount;

/// The shipped year tables.
pub const SHIPPED: &[(&str, &str)] = &[
    ("calendar/2025.toml", include_str!("../calendar/2025.toml")),
    ("calendar/2026.toml", include_str!("../calendar/2026.toml")),
    ("calendar/2027.toml", include_str!("../calendar/2027.toml")),
];

/// Why a calendar cannot be loaded or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The TOML does not parse or does not match the format.
    #[error("calendar {origin}: {message}")]
    Syntax { origin: String, message: String },
    /// The operator's file cannot be read.
    #[error("calendar {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// A year table breaks a rule of the format.
    #[error("calendar {origin}: year {year}: {message}")]
    Invalid {
        origin: String,
        year: i16,
        message: String,
    },
    /// Working days were asked for a year the calendar has no table for.
    #[error(
        "the working-day calendar has no table for {0}; add the year to the calendar file (`[sdu] calendar_file`)"
    )]
    YearNotCovered(i16),
    /// A date computation left the range of dates.
    #[error("date out of range: {0}")]
    OutOfRange(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HolidaySpec {
    #[serde(deserialize_with = "de_date")]
    date: Date,
    #[serde(default)]
    name: String,
    #[serde(default = "yes")]
    carry_over: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferSpec {
    /// A working day (Monday–Friday) made a day off.
    #[serde(deserialize_with = "de_date")]
    day_off: Date,
    /// A day off (Saturday or Sunday) made a working day in exchange.
    #[serde(deserialize_with = "de_date")]
    working_day: Date,
    #[serde(default)]
    #[allow(dead_code)]
    basis: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct YearSpec {
    year: i16,
    #[serde(default)]
    holidays: Vec<HolidaySpec>,
    #[serde(default)]
    transfers: Vec<TransferSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarFile {
    #[serde(default)]
    year: Vec<YearSpec>,
}

/// A day that is not worked, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayOff {
    /// Saturday or Sunday.
    Weekend,
    /// A public holiday (its name).
    Holiday(String),
    /// A holiday that fell on a day off, carried to this day (the holiday's name).
    CarriedOver(String),
    /// A working day made a day off by a transfer.
    Transferred,
}

/// The working-day calendar.
#[derive(Debug, Clone, Default)]
pub struct Calendar {
    years: BTreeMap<i16, YearSpec>,
    /// Non-weekend days off, computed from the years.
    days_off: BTreeMap<Date, DayOff>,
    /// Weekend days made working by a transfer.
    working: BTreeSet<Date>,
}

impl Calendar {
    /// The shipped years (2025–2027).
    pub fn shipped() -> Result<Self, CalendarError> {
        let mut c = Calendar::default();
        for (origin, text) in SHIPPED {
            c.merge_toml(text, origin)?;
        }
        Ok(c)
    }

    /// The shipped years, then the operator's file when given (a year there replaces the
    /// shipped table of that year; a new year is added).
    pub fn load(operator_file: Option<&Path>) -> Result<Self, CalendarError> {
        let mut c = Self::shipped()?;
        if let Some(p) = operator_file {
            let text = std::fs::read_to_string(p).map_err(|e| CalendarError::Read {
                path: p.to_owned(),
                message: e.to_string(),
            })?;
            c.merge_toml(&text, &p.display().to_string())?;
        }
        Ok(c)
    }

    /// Adds or replaces the years of a TOML text (`[[year]]` tables); `origin` names it in errors.
    pub fn merge_toml(&mut self, text: &str, origin: &str) -> Result<(), CalendarError> {
        let file: CalendarFile = toml::from_str(text).map_err(|e| CalendarError::Syntax {
            origin: origin.into(),
            message: e.to_string().trim().to_owned(),
        })?;
        for y in file.year {
            validate(&y).map_err(|message| CalendarError::Invalid {
                origin: origin.into(),
                year: y.year,
                message,
            })?;
            self.years.insert(y.year, y);
        }
        self.rebuild()
    }

    fn rebuild(&mut self) -> Result<(), CalendarError> {
        let mut days_off = BTreeMap::new();
        let mut working = BTreeSet::new();
        let holidays: BTreeMap<Date, &HolidaySpec> = self
            .years
            .values()
            .flat_map(|y| y.holidays.iter().map(|h| (h.date, h)))
            .collect();
        for y in self.years.values() {
            for t in &y.transfers {
                days_off.insert(t.day_off, DayOff::Transferred);
                working.insert(t.working_day);
            }
        }
        for (date, h) in &holidays {
            days_off.insert(*date, DayOff::Holiday(h.name.clone()));
        }
        // The carry-over rule, in date order so that two holidays on one weekend (Nauryz)
        // take consecutive working days.
        for (date, h) in &holidays {
            if !h.carry_over || !is_weekend(*date) {
                continue;
            }
            let mut d = *date;
            loop {
                d = d
                    .tomorrow()
                    .map_err(|e| CalendarError::OutOfRange(e.to_string()))?;
                if !is_weekend(d) && !days_off.contains_key(&d) {
                    break;
                }
            }
            days_off.insert(d, DayOff::CarriedOver(h.name.clone()));
        }
        self.days_off = days_off;
        self.working = working;
        Ok(())
    }

    /// The years with a table.
    pub fn years(&self) -> impl Iterator<Item = i16> + '_ {
        self.years.keys().copied()
    }

    /// Whether a year has a table.
    pub fn covers(&self, year: i16) -> bool {
        self.years.contains_key(&year)
    }

    /// Why `date` is not worked, or `None` for a working day.
    pub fn day_off(&self, date: Date) -> Result<Option<DayOff>, CalendarError> {
        if !self.covers(date.year()) {
            return Err(CalendarError::YearNotCovered(date.year()));
        }
        if self.working.contains(&date) {
            return Ok(None);
        }
        if let Some(why) = self.days_off.get(&date) {
            return Ok(Some(why.clone()));
        }
        Ok(is_weekend(date).then_some(DayOff::Weekend))
    }

    /// Whether `date` is a working day.
    pub fn is_working_day(&self, date: Date) -> Result<bool, CalendarError> {
        Ok(self.day_off(date)?.is_none())
    }

    /// The `n`-th day after `date` that counts: any day for [`DayCount::Calendar`], a
    /// working day for [`DayCount::Working`].
    pub fn nth_day_after(
        &self,
        date: Date,
        n: u32,
        count: DayCount,
    ) -> Result<Date, CalendarError> {
        let mut d = date;
        let mut counted = 0;
        // A year holds far fewer than 366 days off in a row; the bound only stops a loop on bad data.
        let mut steps = 0u32;
        while counted < n {
            d = d
                .tomorrow()
                .map_err(|e| CalendarError::OutOfRange(e.to_string()))?;
            steps += 1;
            if steps > n.saturating_mul(7).saturating_add(366) {
                return Err(CalendarError::OutOfRange(format!(
                    "no {n} working days after {date}"
                )));
            }
            if count == DayCount::Calendar || self.is_working_day(d)? {
                counted += 1;
            }
        }
        Ok(d)
    }

    /// When a wait of `days` that starts at `sent` ends: the same time of day (Asia/Almaty)
    /// on the `days`-th counted day after the day of `sent`.
    pub fn deadline(
        &self,
        sent: Timestamp,
        days: u32,
        count: DayCount,
    ) -> Result<Timestamp, CalendarError> {
        let tz = almaty();
        let local = sent.to_zoned_datetime(tz.clone());
        let day = self.nth_day_after(local.date(), days, count)?;
        let end = DateTime::from_parts(day, local.time())
            .to_zoned_datetime(tz)
            .map_err(|e| CalendarError::OutOfRange(e.to_string()))?;
        Ok(end.timestamp())
    }
}

fn is_weekend(d: Date) -> bool {
    matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday)
}

fn validate(y: &YearSpec) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for h in &y.holidays {
        if h.date.year() != y.year {
            return Err(format!("holiday {} is not in {}", h.date, y.year));
        }
        if !seen.insert(h.date) {
            return Err(format!("holiday {} listed twice", h.date));
        }
    }
    for t in &y.transfers {
        if t.day_off.year() != y.year && t.working_day.year() != y.year {
            return Err(format!(
                "transfer {} / {} is not in {}",
                t.day_off, t.working_day, y.year
            ));
        }
        if is_weekend(t.day_off) {
            return Err(format!(
                "transfer day_off {} is already a weekend day",
                t.day_off
            ));
        }
        if !is_weekend(t.working_day) {
            return Err(format!(
                "transfer working_day {} is not a Saturday or Sunday",
                t.working_day
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn cal() -> Calendar {
        Calendar::shipped().unwrap()
    }

    fn at(s: &str) -> Timestamp {
        // Local Almaty time, written without the zone.
        s.parse::<DateTime>()
            .unwrap()
            .to_zoned_datetime(almaty())
            .unwrap()
            .timestamp()
    }

    fn local(t: Timestamp) -> String {
        t.to_zoned_datetime(almaty()).datetime().to_string()
    }

    #[test]
    fn shipped_years_and_fixed_holidays() {
        let c = cal();
        assert_eq!(c.years().collect::<Vec<_>>(), [2025, 2026, 2027]);
        for d in [
            date(2025, 1, 1),
            date(2025, 3, 21),
            date(2025, 8, 30),
            date(2026, 5, 27),
            date(2027, 3, 15),
            date(2027, 12, 16),
        ] {
            assert!(!c.is_working_day(d).unwrap(), "{d} should be a day off");
        }
        // Constitution Day: 30 Aug through 2025, none in 2026, 15 Mar from 2027.
        assert!(
            c.is_working_day(date(2026, 8, 31)).unwrap(),
            "30 Aug 2026 is a Sunday and no holiday: no carry"
        );
        assert!(c.is_working_day(date(2027, 8, 30)).unwrap());
        assert!(c.is_working_day(date(2026, 3, 16)).unwrap());
        assert_eq!(
            c.day_off(date(2025, 3, 22)).unwrap(),
            Some(DayOff::Holiday("Наурыз мейрамы".into()))
        );
        assert_eq!(c.day_off(date(2025, 2, 8)).unwrap(), Some(DayOff::Weekend));
    }

    #[test]
    fn carry_over_and_its_exceptions() {
        let c = cal();
        // 8 Mar 2025 Saturday → Monday 10 Mar.
        assert!(matches!(
            c.day_off(date(2025, 3, 10)).unwrap(),
            Some(DayOff::CarriedOver(_))
        ));
        // Nauryz 2026: 21 Sat, 22 Sun, 23 Mon → 24 and 25 off.
        assert!(matches!(
            c.day_off(date(2026, 3, 24)).unwrap(),
            Some(DayOff::CarriedOver(_))
        ));
        assert!(matches!(
            c.day_off(date(2026, 3, 25)).unwrap(),
            Some(DayOff::CarriedOver(_))
        ));
        assert!(c.is_working_day(date(2026, 3, 26)).unwrap());
        // 2 Jan 2027 Saturday → Monday 4 Jan.
        assert!(!c.is_working_day(date(2027, 1, 4)).unwrap());
        // Kurban Ait 2027 on a Sunday does not carry over: Monday 17 May works.
        assert!(c.is_working_day(date(2027, 5, 17)).unwrap());
        // 9 May 2027 Sunday → Monday 10 May.
        assert!(!c.is_working_day(date(2027, 5, 10)).unwrap());
    }

    #[test]
    fn a_transfer_swaps_a_working_day_and_a_day_off() {
        let c = cal();
        assert_eq!(
            c.day_off(date(2025, 1, 3)).unwrap(),
            Some(DayOff::Transferred)
        );
        assert!(
            c.is_working_day(date(2025, 1, 5)).unwrap(),
            "Sunday 5 Jan 2025 is worked"
        );
        // Sent Thursday 2 Jan 2025 (a holiday) 10:00: 3 Jan off (transfer), 4 Sat, 5 Sun worked
        // (1), 6 Mon (2), 7 Tue Christmas, 8 Wed (3).
        let d = c
            .deadline(at("2025-01-02T10:00"), 3, DayCount::Working)
            .unwrap();
        assert_eq!(local(d), "2025-01-08T10:00:00");
    }

    #[test]
    fn a_wait_spanning_nauryz_weekends_and_carried_holidays() {
        let c = cal();
        // Sent Friday 20 Mar 2026 14:30: 21–22 weekend + Nauryz, 23 Nauryz, 24–25 carried,
        // 26 Thu (1), 27 Fri (2), 28–29 weekend, 30 Mon (3).
        let d = c
            .deadline(at("2026-03-20T14:30:15"), 3, DayCount::Working)
            .unwrap();
        assert_eq!(local(d), "2026-03-30T14:30:15");
        // Plain days: the third day after, same time.
        let d = c
            .deadline(at("2026-03-20T14:30:15"), 3, DayCount::Calendar)
            .unwrap();
        assert_eq!(local(d), "2026-03-23T14:30:15");
    }

    #[test]
    fn a_wait_over_a_plain_weekend() {
        let c = cal();
        // Thursday 5 Feb 2026 09:00: Fri (1), Mon (2), Tue (3).
        let d = c
            .deadline(at("2026-02-05T09:00"), 3, DayCount::Working)
            .unwrap();
        assert_eq!(local(d), "2026-02-10T09:00:00");
        // Sent on a Saturday: Mon, Tue, Wed.
        let d = c
            .deadline(at("2026-02-07T23:59:59"), 3, DayCount::Working)
            .unwrap();
        assert_eq!(local(d), "2026-02-11T23:59:59");
        // Late evening in Almaty is the previous UTC day; the local day counts.
        let sent: Timestamp = "2026-02-05T19:30:00Z".parse().unwrap(); // 00:30 Fri 6 Feb Almaty
        assert_eq!(
            local(c.deadline(sent, 3, DayCount::Calendar).unwrap()),
            "2026-02-09T00:30:00"
        );
    }

    #[test]
    fn uncovered_years_are_an_error_and_an_operator_file_adds_one() {
        let c = cal();
        let e = c
            .deadline(at("2027-12-30T10:00"), 3, DayCount::Working)
            .unwrap_err();
        assert_eq!(e, CalendarError::YearNotCovered(2028));
        assert!(e.to_string().contains("calendar_file"));
        // Plain days need no table.
        assert!(
            c.deadline(at("2027-12-30T10:00"), 3, DayCount::Calendar)
                .is_ok()
        );

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cal.toml");
        std::fs::write(
            &p,
            r#"
[[year]]
year = 2028
holidays = [ { date = 2028-01-01, name = "Новый год" }, { date = "2028-01-02" } ]
transfers = [ { day_off = "2028-01-03", working_day = "2028-01-08" } ]

[[year]]
year = 2027
holidays = []
"#,
        )
        .unwrap();
        let c = Calendar::load(Some(&p)).unwrap();
        // 1 Jan 2028 Saturday → Mon 3 Jan is taken by the transfer, so it carries to Tue 4;
        // 2 Jan Sunday → Wed 5.
        assert!(!c.is_working_day(date(2028, 1, 4)).unwrap());
        assert!(!c.is_working_day(date(2028, 1, 5)).unwrap());
        assert!(c.is_working_day(date(2028, 1, 8)).unwrap());
        // 2027 was replaced by an empty table: 15 Mar 2027 is worked now.
        assert!(c.is_working_day(date(2027, 3, 15)).unwrap());
        // From Thu 30 Dec 2027: Fri 31 (1), 1–2 weekend, 3 transfer, 4–5 carried, Thu 6 (2), Fri 7 (3).
        let d = c
            .deadline(at("2027-12-30T10:00"), 3, DayCount::Working)
            .unwrap();
        assert_eq!(local(d), "2028-01-07T10:00:00");
    }

    #[test]
    fn bad_tables_are_refused() {
        let mut c = Calendar::default();
        let e = c
            .merge_toml(
                "[[year]]\nyear = 2030\nholidays = [{ date = \"2031-01-01\" }]\n",
                "t",
            )
            .unwrap_err();
        assert!(e.to_string().contains("not in 2030"), "{e}");
        let e = c
            .merge_toml("[[year]]\nyear = 2030\ntransfers = [{ day_off = \"2030-01-05\", working_day = \"2030-01-06\" }]\n", "t")
            .unwrap_err();
        assert!(e.to_string().contains("weekend"), "{e}");
        let e = c
            .merge_toml("[[year]]\nyear = 2030\nholiday = []\n", "t")
            .unwrap_err();
        assert!(e.to_string().contains("holiday"), "{e}");
    }
}
