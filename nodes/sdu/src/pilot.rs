//! Pilots as data: which services, which subjects, how days are counted, how long to wait,
//! the SMS, and the period of force — one `[[pilot]]` per order (see `pilots.toml`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::dates::de_date;

/// The catalog shipped in the crate.
pub const SHIPPED: &str = include_str!("../pilots.toml");

/// Why a catalog cannot be loaded or a pilot not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PilotError {
    /// The TOML does not parse or does not match the format.
    #[error("pilot catalog {origin}: {message}")]
    Syntax { origin: String, message: String },
    /// The operator's file cannot be read.
    #[error("pilot catalog {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// A pilot breaks a rule of the format.
    #[error("pilot catalog {origin}: pilot {id:?}: {message}")]
    Invalid {
        origin: String,
        id: String,
        message: String,
    },
    /// No pilot has this id.
    #[error("no pilot {0:?} in the catalog")]
    Unknown(String),
    /// The date is outside the pilot's period of force.
    #[error("pilot {pilot} is in force from {from} to {to}; it is not run for {date}")]
    OutOfForce {
        pilot: String,
        date: Date,
        from: Date,
        to: Date,
    },
}

/// Whose name change a pilot covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    /// An organization renamed in GBD UL; the recipient is its first head.
    Organization,
    /// An individual whose ФИО changed in ZAGS; the recipient is the individual.
    Individual,
}

/// How the days of a wait are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DayCount {
    /// Working days of the Kazakhstan calendar.
    Working,
    /// Plain calendar days.
    Calendar,
}

/// The language of the SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Russian.
    Ru,
    /// Kazakh.
    Kk,
}

/// One pilot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pilot {
    /// Stable id ("sez-000"), `[a-z0-9-]`.
    pub id: String,
    /// Human-readable name.
    pub title: String,
    /// The order that establishes the pilot.
    #[serde(default)]
    pub basis: String,
    /// e-license service codes whose permits are offered for re-issue.
    pub services: Vec<String>,
    /// Whose name changes are covered.
    pub subjects: Vec<SubjectKind>,
    /// How the days of the wait are counted.
    pub day_count: DayCount,
    /// Days to wait for an answer after each SMS.
    pub wait_days: u32,
    /// How many times the SMS is sent again after no answer.
    pub resends: u32,
    /// The language of the SMS.
    pub language: Language,
    /// The SMS text (`{holder_name}` and `{permits}` are filled in when present).
    pub sms_text: String,
    /// First day in force.
    #[serde(deserialize_with = "de_date")]
    pub in_force_from: Date,
    /// Last day in force, inclusive.
    #[serde(deserialize_with = "de_date")]
    pub in_force_to: Date,
}

impl Pilot {
    /// Whether the pilot covers this kind of subject.
    pub fn covers(&self, kind: SubjectKind) -> bool {
        self.subjects.contains(&kind)
    }

    /// How many SMS a case may get: the first and the re-sends.
    pub fn max_attempts(&self) -> u32 {
        1 + self.resends
    }

    /// `Ok` when `date` is in the period of force.
    pub fn check_in_force(&self, date: Date) -> Result<(), PilotError> {
        if date < self.in_force_from || date > self.in_force_to {
            return Err(PilotError::OutOfForce {
                pilot: self.id.clone(),
                date,
                from: self.in_force_from,
                to: self.in_force_to,
            });
        }
        Ok(())
    }

    /// The SMS for a holder and its permits.
    pub fn render_sms(&self, holder_name: &str, permits: &[String]) -> String {
        self.sms_text
            .replace("{holder_name}", holder_name)
            .replace("{permits}", &permits.join(", "))
    }

    fn validate(&self) -> Result<(), String> {
        if self.id.is_empty()
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("id must be non-empty and use only a-z, 0-9 and '-'".into());
        }
        if self.services.is_empty() || self.services.iter().any(|s| s.trim().is_empty()) {
            return Err("services must name at least one non-empty service code".into());
        }
        if self.subjects.is_empty() {
            return Err("subjects must list \"organization\" and/or \"individual\"".into());
        }
        if !(1..=60).contains(&self.wait_days) {
            return Err(format!(
                "wait_days {} is not between 1 and 60",
                self.wait_days
            ));
        }
        if self.resends > 5 {
            return Err(format!("resends {} is more than 5", self.resends));
        }
        if self.sms_text.trim().is_empty() {
            return Err("sms_text is empty".into());
        }
        if self.in_force_from > self.in_force_to {
            return Err(format!(
                "in_force_from {} is after in_force_to {}",
                self.in_force_from, self.in_force_to
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    pilot: Vec<Pilot>,
}

/// The pilots by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PilotCatalog {
    pilots: BTreeMap<String, Pilot>,
}

impl PilotCatalog {
    /// The shipped catalog.
    pub fn shipped() -> Result<Self, PilotError> {
        let mut c = PilotCatalog {
            pilots: BTreeMap::new(),
        };
        c.merge_toml(SHIPPED, "pilots.toml (shipped)")?;
        Ok(c)
    }

    /// The shipped catalog, then the operator's file when given (same id replaces, new id adds).
    pub fn load(operator_file: Option<&Path>) -> Result<Self, PilotError> {
        let mut c = Self::shipped()?;
        if let Some(p) = operator_file {
            let text = std::fs::read_to_string(p).map_err(|e| PilotError::Read {
                path: p.to_owned(),
                message: e.to_string(),
            })?;
            c.merge_toml(&text, &p.display().to_string())?;
        }
        Ok(c)
    }

    /// Adds or replaces the pilots of a TOML text; `origin` names it in errors.
    pub fn merge_toml(&mut self, text: &str, origin: &str) -> Result<(), PilotError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| PilotError::Syntax {
            origin: origin.into(),
            message: e.to_string().trim().to_owned(),
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for p in file.pilot {
            p.validate().map_err(|message| PilotError::Invalid {
                origin: origin.into(),
                id: p.id.clone(),
                message,
            })?;
            if !seen.insert(p.id.clone()) {
                return Err(PilotError::Invalid {
                    origin: origin.into(),
                    id: p.id.clone(),
                    message: "defined twice in the same file".into(),
                });
            }
            self.pilots.insert(p.id.clone(), p);
        }
        Ok(())
    }

    /// One pilot.
    pub fn get(&self, id: &str) -> Result<&Pilot, PilotError> {
        self.pilots
            .get(id)
            .ok_or_else(|| PilotError::Unknown(id.to_owned()))
    }

    /// Every pilot, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Pilot> {
        self.pilots.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn shipped_catalog_has_the_three_pilots_of_the_seeds() {
        let c = PilotCatalog::shipped().unwrap();
        let ids: Vec<&str> = c.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["eco-001", "sez-000", "trusted-sw-004"]);

        let sez = c.get("sez-000").unwrap();
        assert_eq!(
            sez.services,
            ["SEZ-OBJ", "SEZ-PROJ", "SEZ-PRODUCT", "SEZ-ACTIVITY"]
        );
        assert!(sez.covers(SubjectKind::Organization) && sez.covers(SubjectKind::Individual));
        assert_eq!(sez.day_count, DayCount::Working);
        assert_eq!((sez.wait_days, sez.resends, sez.max_attempts()), (3, 1, 2));
        assert_eq!(sez.language, Language::Ru);
        assert!(
            sez.sms_text
                .contains("отправьте цифру 1, в случае отказа цифру 2")
        );
        assert_eq!(
            (sez.in_force_from, sez.in_force_to),
            (date(2026, 1, 30), date(2027, 1, 30))
        );

        let eco = c.get("eco-001").unwrap();
        assert_eq!(eco.services, ["ECO-I", "ECO-II"]);
        assert!(eco.covers(SubjectKind::Organization) && !eco.covers(SubjectKind::Individual));
        assert_eq!(eco.day_count, DayCount::Calendar);
        assert!(eco.sms_text.contains("1 согласен(на), 2-не согласен(на)"));
        assert_eq!(
            (eco.in_force_from, eco.in_force_to),
            (date(2025, 1, 23), date(2025, 12, 24))
        );

        let sw = c.get("trusted-sw-004").unwrap();
        assert_eq!(sw.services, ["TRUSTED-SW"]);
        assert!(!sw.covers(SubjectKind::Individual));
        assert_eq!(
            (sw.day_count, sw.language),
            (DayCount::Calendar, Language::Kk)
        );
        assert!(
            sw.sms_text
                .contains("келіскен жағдайда 1 санын, келіспеген жағдайда 2 санын")
        );
        assert_eq!(
            (sw.in_force_from, sw.in_force_to),
            (date(2025, 5, 9), date(2026, 5, 8))
        );
    }

    #[test]
    fn period_of_force_is_inclusive_and_errors_name_it() {
        let c = PilotCatalog::shipped().unwrap();
        let sez = c.get("sez-000").unwrap();
        assert!(sez.check_in_force(date(2026, 1, 30)).is_ok());
        assert!(sez.check_in_force(date(2027, 1, 30)).is_ok());
        let e = sez.check_in_force(date(2026, 1, 29)).unwrap_err();
        assert_eq!(
            e,
            PilotError::OutOfForce {
                pilot: "sez-000".into(),
                date: date(2026, 1, 29),
                from: date(2026, 1, 30),
                to: date(2027, 1, 30)
            }
        );
        assert!(e.to_string().contains("2026-01-30") && e.to_string().contains("2027-01-30"));
        assert!(sez.check_in_force(date(2027, 1, 31)).is_err());
        let eco = c.get("eco-001").unwrap();
        assert!(eco.check_in_force(date(2025, 12, 24)).is_ok());
        assert!(eco.check_in_force(date(2025, 12, 25)).is_err());
        assert_eq!(
            c.get("nope").unwrap_err(),
            PilotError::Unknown("nope".into())
        );
    }

    #[test]
    fn an_operator_file_adds_a_fourth_pilot_and_replaces_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pilots.toml");
        std::fs::write(
            &p,
            r#"
[[pilot]]
id = "med-lic-005"
title = "Medical licenses"
services = ["MED-LIC"]
subjects = ["organization"]
day_count = "calendar"
wait_days = 5
resends = 0
language = "ru"
sms_text = "Ответьте 1 или 2 ({holder_name}: {permits})"
in_force_from = 2026-03-01
in_force_to = "2026-12-31"

[[pilot]]
id = "eco-001"
title = "Eco, extended"
services = ["ECO-I"]
subjects = ["organization"]
day_count = "working"
wait_days = 3
resends = 1
language = "ru"
sms_text = "x"
in_force_from = "2025-01-23"
in_force_to = "2026-12-31"
"#,
        )
        .unwrap();
        let c = PilotCatalog::load(Some(&p)).unwrap();
        let med = c.get("med-lic-005").unwrap();
        assert_eq!(
            (med.wait_days, med.max_attempts(), med.in_force_from),
            (5, 1, date(2026, 3, 1))
        );
        assert_eq!(
            med.render_sms("ТОО Б", &["A1".into(), "A2".into()]),
            "Ответьте 1 или 2 (ТОО Б: A1, A2)"
        );
        assert_eq!(c.get("eco-001").unwrap().services, ["ECO-I"]);
        assert!(c.get("sez-000").is_ok());
    }

    #[test]
    fn bad_catalogs_are_refused_with_the_reason() {
        let mut c = PilotCatalog::shipped().unwrap();
        let bad = |body: &str| {
            format!(
                "[[pilot]]\nid = \"x-1\"\ntitle = \"t\"\nservices = [\"A\"]\nsubjects = [\"organization\"]\nday_count = \"calendar\"\nwait_days = 3\nresends = 1\nlanguage = \"ru\"\nsms_text = \"s\"\nin_force_from = \"2025-01-01\"\nin_force_to = \"2025-12-31\"\n{body}"
            )
        };
        assert!(c.merge_toml(&bad(""), "t").is_ok());
        let e = c
            .merge_toml(&bad("colour = 1\n"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = c
            .merge_toml(&bad("").replace("wait_days = 3", "wait_days = 0"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("wait_days"), "{e}");
        let e = c
            .merge_toml(&bad("").replace("2025-12-31", "2024-12-31"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("after"), "{e}");
        let e = c
            .merge_toml(&bad("").replace("2025-12-31", "2025-13-31"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("date"), "{e}");
        let e = c
            .merge_toml(&bad("").replace("x-1", "X 1"), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a-z"), "{e}");
        let e = PilotCatalog::load(Some(Path::new("/nonexistent/p.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/p.toml"), "{e}");
    }
}
