//! The synthetic country: individuals, organizations, permits, and a dated history of
//! changes, generated from a seed. Immutable once generated; what scenarios change lives in
//! the simulation's state (`crate::state`).
//!
//! Records are compact (a person is 32 bytes: the IIN, indexes into the name and address
//! tables, and an index into the rare extra statuses), kept sorted by IIN or BIN so that a
//! look-up is a binary search and every listing has a deterministic order.

mod history;
mod orgs;
mod people;
mod permits;

use shep_domain::{Bin, Iin, Sex};
use shep_proto::elicense::PermitStatus;
use shep_proto::gbdul::OrganizationStatus;
use shep_proto::zags::ActKind;

use crate::catalog::{CONSUMERS, READ_SCOPES, SCOPES};
use crate::names::NameRef;
use crate::orgnames::OrgName;
use crate::places::AddressRef;
use crate::rng::{hash_chance, hash3};
use crate::settings::SimSettings;
use crate::time::Day;

pub use permits::{parse_permit_number, permit_number};

/// "No record" in an index field.
pub const NONE: u32 = u32::MAX;

/// An individual: 32 bytes.
#[derive(Debug, Clone, Copy)]
pub struct Person {
    /// The IIN (carries the birth date and sex).
    pub iin: Iin,
    /// The name as of `today` (after the generated history).
    pub name: NameRef,
    /// The registered address.
    pub address: AddressRef,
    /// Index into the extra statuses, or [`NONE`].
    pub extra: u32,
}

impl Person {
    pub fn sex(&self) -> Sex {
        self.iin.sex()
    }

    /// The date of birth.
    pub fn birth(&self) -> Day {
        let (y, m, d) = self.iin.birth_date();
        Day::from_ymd(y as i32, m, d).unwrap_or_default()
    }
}

/// Missing or declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKind {
    Missing,
    DeclaredDead,
}

/// Capacity limited or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityKind {
    Limited,
    Incapable,
}

/// A court decision: dates and the number of the case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Court {
    pub decision: Day,
    pub effective: Day,
    pub number: u32,
}

/// Imprisonment: the first day and the expected release (`None` for life).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prison {
    pub from: Day,
    pub to: Option<Day>,
}

/// The statuses few persons have, stored apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersonExtra {
    pub death: Option<Day>,
    pub missing: Option<(MissingKind, Court)>,
    pub capacity: Option<(CapacityKind, Court)>,
    /// ISO country code and the date since.
    pub abroad: Option<(&'static str, Day)>,
    pub prison: Option<Prison>,
}

/// A legal entity.
#[derive(Debug, Clone, Copy)]
pub struct Org {
    pub bin: Bin,
    /// The name as of `today`.
    pub name: OrgName,
    pub registered: Day,
    pub status: OrganizationStatus,
    /// When the status took effect; `None` for an active organization.
    pub status_day: Option<Day>,
    pub address: AddressRef,
    /// The first head (person index), or [`NONE`].
    pub head: u32,
    pub head_since: Day,
}

/// The holder of a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HolderRef {
    Org(u32),
    Person(u32),
}

/// A permit of the generated country; its number is derived from its index.
#[derive(Debug, Clone, Copy)]
pub struct Permit {
    pub holder: HolderRef,
    /// Index into [`crate::catalog::SERVICES`].
    pub service: u8,
    /// Region code of the number (1..=20).
    pub region: u8,
    pub status: PermitStatus,
    pub issued: Day,
    pub valid_until: Option<Day>,
}

/// A change of an organization's name.
#[derive(Debug, Clone, Copy)]
pub struct Rename {
    pub day: Day,
    pub org: u32,
    pub old: OrgName,
    pub new: OrgName,
}

/// A civil act of the generated history.
#[derive(Debug, Clone, Copy)]
pub struct Act {
    pub day: Day,
    pub kind: ActKind,
    pub subject: u32,
    /// The spouse (marriage, divorce) or the parent (adoption, paternity), or [`NONE`].
    pub other: u32,
    /// The name before, when the act changed it.
    pub old: Option<NameRef>,
    /// The name after (or the name given, for a birth).
    pub new: Option<NameRef>,
    pub death: Option<Day>,
}

/// The mobile operators' prefixes (after +7).
const OPERATORS: [u16; 12] = [700, 701, 702, 705, 707, 708, 747, 771, 775, 776, 777, 778];
const PHONE_SALT: u64 = 0x5048_4F4E;
const CONSENT_SALT: u64 = 0x434F_4E53;
const OTHER_CONSENT_SALT: u64 = 0x4F54_4852;

/// A registered mobile number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    /// E.164 ("+77011234567").
    pub number: String,
    /// Unix seconds.
    pub registered_at: i64,
}

/// The generated country.
pub struct Country {
    seed: u64,
    today: Day,
    history_start: Day,
    phone_share: f64,
    consent_share: f64,
    other_consent_share: f64,
    persons: Vec<Person>,
    extras: Vec<PersonExtra>,
    orgs: Vec<Org>,
    permits: Vec<Permit>,
    by_holder: Vec<(HolderRef, u32)>,
    renames: Vec<Rename>,
    renames_by_org: Vec<(u32, u32)>,
    acts: Vec<Act>,
    acts_by_person: Vec<(u32, u32)>,
}

impl Country {
    /// Generates the country of `settings` whose history ends on `today`.
    pub fn generate(settings: &SimSettings, today: Day) -> Country {
        let history_start = today.plus(-(settings.history_days.max(1) as i32) + 1);
        let (mut persons, mut extras) = people::generate(settings, today, history_start);
        let mut orgs = orgs::generate(settings, today, &persons, &extras);
        let permits = permits::generate(settings, today, &persons, &extras, &orgs);
        let h = history::generate(settings, today, history_start, &mut persons, &mut extras, &mut orgs, &permits);

        let mut by_holder: Vec<(HolderRef, u32)> =
            permits.iter().enumerate().map(|(i, p)| (p.holder, i as u32)).collect();
        by_holder.sort_by_key(|&(h, i)| (h, permits[i as usize].issued, i));
        let mut renames_by_org: Vec<(u32, u32)> =
            h.renames.iter().enumerate().map(|(i, r)| (r.org, i as u32)).collect();
        renames_by_org.sort_unstable();
        let mut acts_by_person: Vec<(u32, u32)> = Vec::with_capacity(h.acts.len() * 2);
        for (i, a) in h.acts.iter().enumerate() {
            acts_by_person.push((a.subject, i as u32));
            if a.other != NONE && a.other != a.subject {
                acts_by_person.push((a.other, i as u32));
            }
        }
        acts_by_person.sort_unstable();
        Country {
            seed: settings.seed,
            today,
            history_start,
            phone_share: settings.phone_share,
            consent_share: settings.consent_share,
            other_consent_share: settings.other_consent_share,
            persons,
            extras,
            orgs,
            permits,
            by_holder,
            renames: h.renames,
            renames_by_org,
            acts: h.acts,
            acts_by_person,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The last day of the history.
    pub fn today(&self) -> Day {
        self.today
    }

    /// The first day of the history.
    pub fn history_start(&self) -> Day {
        self.history_start
    }

    /// Every individual, in IIN order.
    pub fn persons(&self) -> &[Person] {
        &self.persons
    }

    /// The extra statuses of a person, if any.
    pub fn extra(&self, p: u32) -> Option<&PersonExtra> {
        let x = self.persons.get(p as usize)?.extra;
        self.extras.get(x as usize)
    }

    /// Every organization, in BIN order.
    pub fn orgs(&self) -> &[Org] {
        &self.orgs
    }

    /// Every generated permit; the index is the serial of its number minus one.
    pub fn permits(&self) -> &[Permit] {
        &self.permits
    }

    /// Every rename of the history, in (date, BIN) order.
    pub fn renames(&self) -> &[Rename] {
        &self.renames
    }

    /// Every civil act of the history, in (date, act id) order; act id = index + 1.
    pub fn acts(&self) -> &[Act] {
        &self.acts
    }

    /// The index of the person with this IIN.
    pub fn person_index(&self, iin: &Iin) -> Option<u32> {
        self.persons.binary_search_by(|p| p.iin.cmp(iin)).ok().map(|i| i as u32)
    }

    /// The index of the organization with this BIN.
    pub fn org_index(&self, bin: &Bin) -> Option<u32> {
        self.orgs.binary_search_by(|o| o.bin.cmp(bin)).ok().map(|i| i as u32)
    }

    /// The permits of a holder (indexes), oldest issue first.
    pub fn permits_of(&self, h: HolderRef) -> impl Iterator<Item = u32> + '_ {
        let start = self.by_holder.partition_point(|&(x, _)| x < h);
        self.by_holder[start..].iter().take_while(move |&&(x, _)| x == h).map(|&(_, i)| i)
    }

    /// The renames of an organization (indexes into `renames`), oldest first.
    pub fn renames_of(&self, org: u32) -> impl Iterator<Item = u32> + '_ {
        let start = self.renames_by_org.partition_point(|&(o, _)| o < org);
        self.renames_by_org[start..].iter().take_while(move |&&(o, _)| o == org).map(|&(_, i)| i)
    }

    /// The acts in which a person is the subject, the spouse or the parent (indexes), oldest first.
    pub fn acts_of(&self, person: u32) -> impl Iterator<Item = u32> + '_ {
        let start = self.acts_by_person.partition_point(|&(p, _)| p < person);
        self.acts_by_person[start..].iter().take_while(move |&&(p, _)| p == person).map(|&(_, i)| i)
    }

    /// A person's generated name at the end of `day` (before any scenario injection).
    pub fn person_name_at(&self, p: u32, day: Day) -> Option<NameRef> {
        let current = self.persons.get(p as usize)?.name;
        let first_later =
            self.acts_of(p).map(|i| &self.acts[i as usize]).find(|a| a.subject == p && a.old.is_some() && a.day > day);
        Some(first_later.and_then(|a| a.old).unwrap_or(current))
    }

    /// An organization's generated name at the end of `day`.
    pub fn org_name_at(&self, o: u32, day: Day) -> Option<OrgName> {
        let current = self.orgs.get(o as usize)?.name;
        let first_later = self.renames_of(o).map(|i| &self.renames[i as usize]).find(|r| r.day > day);
        Some(first_later.map(|r| r.old).unwrap_or(current))
    }

    /// The phone a person registered in BMG, if any: persons aged 16 or more, a share of
    /// them by a keyed hash; numbers are unique (a bijection of the index).
    pub fn phone_of(&self, p: u32) -> Option<Phone> {
        let person = self.persons.get(p as usize)?;
        let birth = person.birth();
        if birth.years_until(self.today) < 16 {
            return None;
        }
        let h = hash3(self.seed, PHONE_SALT, p as u64);
        if !hash_chance(h, self.phone_share) {
            return None;
        }
        let op = OPERATORS[((h >> 32) % OPERATORS.len() as u64) as usize];
        let offset = crate::rng::mix(self.seed ^ PHONE_SALT) % 10_000_000;
        let local = (p as u64 * 7_654_321 + offset) % 10_000_000;
        let earliest = birth.plus_years(16).max(self.today.plus(-3650));
        let span = (self.history_start.0 - earliest.0).max(1) as u64;
        let day = Day(earliest.0 + ((h >> 40) % span) as i32);
        let minute = ((h >> 20) % 720) as u32;
        Some(Phone { number: format!("+7{op}{local:07}"), registered_at: day.at_almaty(9 + minute / 60, minute % 60) })
    }

    /// When a person consented (through KDP) to `scope` for `consumer`, in the generated
    /// data (Unix seconds); `None` when they did not. A share of persons consent to every
    /// scope for "sdu" and "pep", another share to the read scopes for the other consumers.
    pub fn base_consent(&self, p: u32, consumer: &str, scope: &str) -> Option<i64> {
        if p as usize >= self.persons.len() || !SCOPES.contains(&scope) {
            return None;
        }
        let h = match consumer {
            "sdu" | "pep" => {
                let h = hash3(self.seed, CONSENT_SALT, p as u64);
                hash_chance(h, self.consent_share).then_some(h)?
            }
            c if CONSUMERS.contains(&c) && READ_SCOPES.contains(&scope) => {
                let h = hash3(self.seed, OTHER_CONSENT_SALT, p as u64);
                hash_chance(h, self.other_consent_share).then_some(h)?
            }
            _ => return None,
        };
        let day = self.history_start.plus(-(((h >> 32) % 700) as i32) - 1);
        Some(day.at_almaty(10, ((h >> 48) % 60) as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Country {
        let s = SimSettings { individuals: 3_000, organizations: 300, ..Default::default() };
        Country::generate(&s, Day::from_ymd(2026, 3, 2).unwrap())
    }

    #[test]
    fn lookups_find_every_record() {
        let c = small();
        assert_eq!(c.persons().len(), 3_000);
        assert_eq!(c.orgs().len(), 300);
        for (i, p) in c.persons().iter().enumerate().step_by(37) {
            assert_eq!(c.person_index(&p.iin), Some(i as u32));
        }
        for (i, o) in c.orgs().iter().enumerate().step_by(7) {
            assert_eq!(c.org_index(&o.bin), Some(i as u32));
        }
        for (i, p) in c.permits().iter().enumerate() {
            assert!(c.permits_of(p.holder).any(|x| x == i as u32));
        }
    }

    #[test]
    fn names_at_dates_follow_the_history() {
        let c = small();
        let r = c.renames()[0];
        assert_eq!(c.org_name_at(r.org, r.day.plus(-1)), Some(r.old));
        assert!(c.org_name_at(r.org, c.today()).is_some());
        let a = c.acts().iter().find(|a| a.old.is_some()).copied().unwrap();
        assert_eq!(c.person_name_at(a.subject, a.day.plus(-1)), a.old);
    }

    #[test]
    fn phones_are_unique_and_adult() {
        let c = small();
        let mut seen = std::collections::BTreeSet::new();
        let mut n = 0;
        for i in 0..c.persons().len() as u32 {
            if let Some(ph) = c.phone_of(i) {
                n += 1;
                assert!(ph.number.starts_with("+77") && ph.number.len() == 12, "{}", ph.number);
                assert!(seen.insert(ph.number));
                assert!(c.persons()[i as usize].birth().years_until(c.today()) >= 16);
            }
        }
        assert!(n > 1_500, "{n}");
    }
}
