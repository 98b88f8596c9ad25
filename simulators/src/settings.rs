//! The settings of a simulation: the seed, the scale, the date, and every rate.
//!
//! Every field has a default, so an empty TOML table is a valid configuration; unknown keys
//! are refused. [`SimSettings::validate`] names the first field out of range.

use serde::{Deserialize, Serialize};

/// The date the simulation calls "today" when the settings name none and the clock is
/// manual (a Monday within the periods of the pilots).
pub const DEFAULT_TODAY: (i32, u32, u32) = (2026, 3, 2);

/// What the synthetic country looks like. Same settings (and the same resolved `today`) give
/// the same country on any machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimSettings {
    /// The seed of every random choice.
    pub seed: u64,
    /// How many individuals GBD FL holds.
    pub individuals: u32,
    /// How many legal entities GBD UL holds.
    pub organizations: u32,
    /// The last day of the generated history ("YYYY-MM-DD"). Empty: the Almaty date of the
    /// system clock with `Clock::System`, else the start date of the manual clock, else
    /// 2026-03-02.
    pub today: Option<jiff::civil::Date>,
    /// How many days of history (renames, civil acts) end on `today`, `today` included.
    pub history_days: u32,
    /// Mean number of organization renames registered per day; each day of the history
    /// gets between half and one and a half times this, and at least one when it is not 0.
    pub renames_per_day: u32,
    /// Mean number of civil acts changing a person's name (marriage, divorce, change of
    /// name, adoption, paternity) per day; at least one a day when not 0.
    pub name_changes_per_day: u32,
    /// Mean number of deaths registered per day.
    pub deaths_per_day: u32,
    /// Share of renamed organizations picked among the holders of an active permit of a
    /// pilot service (the rest are picked among all active organizations).
    pub pilot_share_of_renames: f64,
    /// Share of name changes picked among the individuals holding an active permit of a
    /// pilot service (SEZ).
    pub pilot_share_of_name_changes: f64,
    /// Statuses of individuals, each a share of the population.
    pub statuses: StatusRates,
    /// Share of organizations holding at least one permit.
    pub org_permit_share: f64,
    /// Share of adult individuals holding at least one permit (SEZ or medical).
    pub person_permit_share: f64,
    /// Share of individuals aged 16 or more with a phone registered in BMG.
    pub phone_share: f64,
    /// Share of individuals consenting (through KDP) to every scope for the consumers
    /// "sdu" and "pep".
    pub consent_share: f64,
    /// Share of individuals consenting to the read scopes for "expertiza" and "sur".
    pub other_consent_share: f64,
    /// How long a KDP token is valid, in seconds.
    pub token_ttl_secs: u64,
    /// How simulated citizens answer SMS.
    pub answers: AnswerSettings,
}

/// Shares of individuals with each status (each from 0 to 1). The first four are shares of
/// the whole population and exclude each other; the last three are shares of the adults
/// (18 or more), who alone can have them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusRates {
    /// Dead (with a date of death).
    pub dead: f64,
    /// Declared missing by a court.
    pub missing: f64,
    /// Declared dead by a court.
    pub declared_dead: f64,
    /// Living permanently abroad.
    pub abroad: f64,
    /// Declared legally incapable by a court.
    pub incapable: f64,
    /// Capacity limited by a court.
    pub limited_capacity: f64,
    /// In prison now (with the dates of the sentence).
    pub imprisoned: f64,
}

/// How simulated citizens answer an SMS. The shares of "1", "2" and other texts add up to
/// at most 1; the rest never answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnswerSettings {
    /// Share answering "1" (agree).
    pub yes: f64,
    /// Share answering "2" (refuse).
    pub no: f64,
    /// Share answering something else ("да", "1 ", "ok").
    pub other: f64,
    /// The longest delay of an answer, in minutes; delays spread from 1 minute up to it,
    /// most of them short, and an answer that would fall outside 09:00-21:00 Almaty
    /// arrives the next morning instead.
    pub max_delay_minutes: u32,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            seed: 42,
            individuals: 20_000,
            organizations: 2_000,
            today: None,
            history_days: 365,
            renames_per_day: 2,
            name_changes_per_day: 6,
            deaths_per_day: 2,
            pilot_share_of_renames: 0.6,
            pilot_share_of_name_changes: 0.2,
            statuses: StatusRates::default(),
            org_permit_share: 0.5,
            person_permit_share: 0.05,
            phone_share: 0.85,
            consent_share: 0.9,
            other_consent_share: 0.3,
            token_ttl_secs: 3600,
            answers: AnswerSettings::default(),
        }
    }
}

impl Default for StatusRates {
    fn default() -> Self {
        StatusRates {
            dead: 0.02,
            missing: 0.002,
            declared_dead: 0.001,
            abroad: 0.01,
            incapable: 0.003,
            limited_capacity: 0.001,
            imprisoned: 0.004,
        }
    }
}

impl Default for AnswerSettings {
    fn default() -> Self {
        AnswerSettings { yes: 0.6, no: 0.15, other: 0.05, max_delay_minutes: 5 * 24 * 60 }
    }
}

/// A setting out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("{field} must be between 0 and 1, got {value}")]
    Share { field: &'static str, value: f64 },
    #[error("{what} add up to {sum}, more than 1")]
    SumAboveOne { what: &'static str, sum: f64 },
    #[error("{field} must be between {min} and {max}, got {value}")]
    Range { field: &'static str, min: u64, max: u64, value: u64 },
}

/// Largest population: phone numbers and permit serials stay unique up to it.
pub const MAX_INDIVIDUALS: u32 = 10_000_000;
/// Largest number of organizations.
pub const MAX_ORGANIZATIONS: u32 = 2_000_000;

impl SimSettings {
    fn shares(&self) -> Vec<(&'static str, f64)> {
        let s = &self.statuses;
        vec![
            ("pilot_share_of_renames", self.pilot_share_of_renames),
            ("pilot_share_of_name_changes", self.pilot_share_of_name_changes),
            ("statuses.dead", s.dead),
            ("statuses.missing", s.missing),
            ("statuses.declared_dead", s.declared_dead),
            ("statuses.abroad", s.abroad),
            ("statuses.incapable", s.incapable),
            ("statuses.limited_capacity", s.limited_capacity),
            ("statuses.imprisoned", s.imprisoned),
            ("org_permit_share", self.org_permit_share),
            ("person_permit_share", self.person_permit_share),
            ("phone_share", self.phone_share),
            ("consent_share", self.consent_share),
            ("other_consent_share", self.other_consent_share),
            ("answers.yes", self.answers.yes),
            ("answers.no", self.answers.no),
            ("answers.other", self.answers.other),
        ]
    }

    /// Checks every field; the first one out of range is the error.
    pub fn validate(&self) -> Result<(), SettingsError> {
        for (field, value) in self.shares() {
            if !(0.0..=1.0).contains(&value) {
                return Err(SettingsError::Share { field, value });
            }
        }
        let a = &self.answers;
        let sum = a.yes + a.no + a.other;
        if sum > 1.0 + 1e-9 {
            return Err(SettingsError::SumAboveOne { what: "answers.yes, answers.no and answers.other", sum });
        }
        let s = &self.statuses;
        let sum = s.dead + s.missing + s.declared_dead + s.abroad + s.incapable + s.limited_capacity + s.imprisoned;
        if sum > 1.0 + 1e-9 {
            return Err(SettingsError::SumAboveOne { what: "the status rates", sum });
        }
        let ranges: [(&'static str, u64, u64, u64); 5] = [
            ("individuals", 100, MAX_INDIVIDUALS as u64, self.individuals as u64),
            ("organizations", 1, MAX_ORGANIZATIONS as u64, self.organizations as u64),
            ("history_days", 1, 3660, self.history_days as u64),
            ("token_ttl_secs", 1, 366 * 86_400, self.token_ttl_secs),
            ("answers.max_delay_minutes", 1, 60 * 24 * 60, a.max_delay_minutes as u64),
        ];
        for (field, min, max, value) in ranges {
            if value < min || value > max {
                return Err(SettingsError::Range { field, min, max, value });
            }
        }
        for (field, value) in [
            ("renames_per_day", self.renames_per_day),
            ("name_changes_per_day", self.name_changes_per_day),
            ("deaths_per_day", self.deaths_per_day),
        ] {
            if value > 100_000 {
                return Err(SettingsError::Range { field, min: 0, max: 100_000, value: value as u64 });
            }
        }
        Ok(())
    }

    /// A copy with every field brought into range (shares clamped, sums scaled down,
    /// counts clamped), for callers that must not fail.
    pub fn sanitized(&self) -> SimSettings {
        let mut s = self.clone();
        let clamp = |v: &mut f64| *v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
        for v in [
            &mut s.pilot_share_of_renames,
            &mut s.pilot_share_of_name_changes,
            &mut s.statuses.dead,
            &mut s.statuses.missing,
            &mut s.statuses.declared_dead,
            &mut s.statuses.abroad,
            &mut s.statuses.incapable,
            &mut s.statuses.limited_capacity,
            &mut s.statuses.imprisoned,
            &mut s.org_permit_share,
            &mut s.person_permit_share,
            &mut s.phone_share,
            &mut s.consent_share,
            &mut s.other_consent_share,
            &mut s.answers.yes,
            &mut s.answers.no,
            &mut s.answers.other,
        ] {
            clamp(v);
        }
        let sum = s.answers.yes + s.answers.no + s.answers.other;
        if sum > 1.0 {
            s.answers.yes /= sum;
            s.answers.no /= sum;
            s.answers.other /= sum;
        }
        let st = &mut s.statuses;
        let sum =
            st.dead + st.missing + st.declared_dead + st.abroad + st.incapable + st.limited_capacity + st.imprisoned;
        if sum > 1.0 {
            for v in [
                &mut st.dead,
                &mut st.missing,
                &mut st.declared_dead,
                &mut st.abroad,
                &mut st.incapable,
                &mut st.limited_capacity,
                &mut st.imprisoned,
            ] {
                *v /= sum;
            }
        }
        s.individuals = s.individuals.clamp(100, MAX_INDIVIDUALS);
        s.organizations = s.organizations.clamp(1, MAX_ORGANIZATIONS);
        s.history_days = s.history_days.clamp(1, 3660);
        s.token_ttl_secs = s.token_ttl_secs.clamp(1, 366 * 86_400);
        s.answers.max_delay_minutes = s.answers.max_delay_minutes.clamp(1, 60 * 24 * 60);
        s.renames_per_day = s.renames_per_day.min(100_000);
        s.name_changes_per_day = s.name_changes_per_day.min(100_000);
        s.deaths_per_day = s.deaths_per_day.min(100_000);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default_and_unknown_keys_are_refused() {
        let s: SimSettings = toml::from_str("").unwrap();
        assert_eq!(s, SimSettings::default());
        s.validate().unwrap();
        let s: SimSettings = toml::from_str("seed = 7\ntoday = \"2025-06-01\"\n[statuses]\ndead = 0.5\n").unwrap();
        assert_eq!(s.seed, 7);
        assert_eq!(s.today, Some(jiff::civil::date(2025, 6, 1)));
        assert_eq!(s.statuses.dead, 0.5);
        assert_eq!(s.statuses.abroad, StatusRates::default().abroad);
        let e = toml::from_str::<SimSettings>("sead = 7").unwrap_err().to_string();
        assert!(e.contains("sead"), "{e}");
        let e = toml::from_str::<SimSettings>("[answers]\nyess = 1.0").unwrap_err().to_string();
        assert!(e.contains("yess"), "{e}");
    }

    #[test]
    fn validation_names_the_field_and_sanitizing_fixes_it() {
        let mut s = SimSettings { phone_share: 1.5, ..Default::default() };
        assert_eq!(s.validate(), Err(SettingsError::Share { field: "phone_share", value: 1.5 }));
        s.phone_share = f64::NAN;
        assert!(s.validate().is_err());
        s.answers.yes = 0.9;
        s.answers.no = 0.9;
        s.individuals = 5;
        let fixed = s.sanitized();
        fixed.validate().unwrap();
        assert_eq!(fixed.phone_share, 0.0);
        assert_eq!(fixed.individuals, 100);
    }
}
