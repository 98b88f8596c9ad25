//! Dates and times at the edges: TOML and proto dates, proto timestamps, Asia/Almaty.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer};

/// The time zone of every registry date and of the day counting.
pub const ZONE: &str = "Asia/Almaty";

/// Asia/Almaty from the bundled time-zone database (the same on every machine).
pub fn almaty() -> TimeZone {
    // The bundled tzdb always has Asia/Almaty; UTC+5 is its offset since 1 March 2024.
    TimeZone::get(ZONE).unwrap_or_else(|_| TimeZone::fixed(jiff::tz::offset(5)))
}

/// Parses "YYYY-MM-DD".
pub fn parse_date(s: &str) -> Result<Date, String> {
    s.trim()
        .parse::<Date>()
        .map_err(|e| format!("{s:?} is not a date YYYY-MM-DD: {e}"))
}

/// Serde: a date written as a string "YYYY-MM-DD" or as a TOML date literal.
pub fn de_date<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Str(String),
        Toml(toml::value::Datetime),
    }
    let text = match Repr::deserialize(d)? {
        Repr::Str(s) => s,
        Repr::Toml(dt) => match (dt.date, dt.time) {
            (Some(date), None) => date.to_string(),
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "{dt} is not a plain date"
                )));
            }
        },
    };
    parse_date(&text).map_err(serde::de::Error::custom)
}

/// A proto date, validated.
pub fn from_proto_date(d: &shep_proto::shep::Date) -> Option<Date> {
    let (y, m, day) = (
        i16::try_from(d.year).ok()?,
        i8::try_from(d.month).ok()?,
        i8::try_from(d.day).ok()?,
    );
    Date::new(y, m, day).ok()
}

/// The proto date.
pub fn to_proto_date(d: Date) -> shep_proto::shep::Date {
    shep_proto::shep::Date {
        year: d.year().into(),
        month: d.month().into(),
        day: d.day().into(),
    }
}

/// The proto timestamp.
pub fn to_proto_ts(t: jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// A proto timestamp; `None` when out of range.
pub fn from_proto_ts(t: &prost_types::Timestamp) -> Option<jiff::Timestamp> {
    jiff::Timestamp::new(t.seconds, t.nanos).ok()
}

/// Nanoseconds since the Unix epoch, as stored (fits i64 until 2262).
pub fn to_nanos(t: jiff::Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

/// The inverse of [`to_nanos`].
pub fn from_nanos(n: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(i128::from(n)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proto_round_trips_and_rejects_nonsense() {
        let d = jiff::civil::date(2026, 2, 3);
        assert_eq!(from_proto_date(&to_proto_date(d)), Some(d));
        assert_eq!(
            from_proto_date(&shep_proto::shep::Date {
                year: 2026,
                month: 2,
                day: 30
            }),
            None
        );
        assert_eq!(
            from_proto_date(&shep_proto::shep::Date {
                year: 99999,
                month: 1,
                day: 1
            }),
            None
        );
        let t: jiff::Timestamp = "2026-02-03T04:05:06.789Z".parse().unwrap();
        assert_eq!(from_proto_ts(&to_proto_ts(t)), Some(t));
        assert_eq!(from_nanos(to_nanos(t)), t);
    }

    #[test]
    fn almaty_is_utc_plus_5() {
        let t: jiff::Timestamp = "2026-02-03T04:00:00Z".parse().unwrap();
        let z = t.to_zoned_datetime(almaty());
        assert_eq!(z.datetime().to_string(), "2026-02-03T09:00:00");
    }
}
