//! The dated history: day by day over the span, organization renames (GBD UL) and civil
//! acts (ZAGS: births, deaths, marriages, divorces, changes of name, adoptions,
//! paternity). Days are processed in order and every change is applied to the records as
//! it happens, so a record ends with its name as of `today` and each change carries the
//! name before it.
//!
//! A share of the renamed organizations and of the renamed individuals is picked among the
//! holders of active permits of the pilots' services, so that the proactive pilots find
//! work every day.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shep_domain::Sex;
use shep_proto::elicense::PermitStatus;
use shep_proto::gbdul::OrganizationStatus;
use shep_proto::zags::ActKind;

use super::orgs::random_org_name;
use super::{Act, HolderRef, NONE, Org, Permit, Person, PersonExtra, Rename};
use crate::catalog;
use crate::names::{self, NameRef, PatronymicStyle};
use crate::rng::{Stream, between, chance, daily_count, index, stream};
use crate::settings::SimSettings;
use crate::time::Day;

/// What the history produced.
pub(super) struct History {
    pub renames: Vec<Rename>,
    pub acts: Vec<Act>,
}

struct World<'a> {
    persons: &'a mut [Person],
    extras: &'a mut Vec<PersonExtra>,
    changed: Vec<bool>,
}

impl World<'_> {
    fn alive(&self, p: usize, day: Day) -> bool {
        let x = self.persons[p].extra;
        self.extras.get(x as usize).is_none_or(|e| e.death.is_none_or(|d| d > day))
    }

    fn age(&self, p: usize, day: Day) -> i32 {
        self.persons[p].birth().years_until(day)
    }

    /// A random living person matching `ok`, or `None` after some tries.
    fn pick(&self, rng: &mut ChaCha8Rng, day: Day, ok: impl Fn(&Person, i32) -> bool) -> Option<usize> {
        for _ in 0..200 {
            let p = index(rng, self.persons.len());
            if self.alive(p, day) && self.persons[p].birth() <= day && ok(&self.persons[p], self.age(p, day)) {
                return Some(p);
            }
        }
        None
    }

    fn set_death(&mut self, p: usize, death: Day) {
        let x = self.persons[p].extra;
        match self.extras.get_mut(x as usize) {
            Some(e) => e.death = Some(death),
            None => {
                self.persons[p].extra = self.extras.len() as u32;
                self.extras.push(PersonExtra { death: Some(death), ..Default::default() });
            }
        }
    }
}

/// Holders of an active permit of a pilot service, with the earliest issue of one.
/// Holders (indexes) with the earliest issue of an active pilot permit.
type Pool = Vec<(u32, Day)>;

fn pilot_pools(permits: &[Permit]) -> (Pool, Pool) {
    let mut orgs = Vec::new();
    let mut persons = Vec::new();
    for p in permits {
        if p.status != PermitStatus::Active {
            continue;
        }
        match p.holder {
            HolderRef::Org(o) if catalog::is_pilot_service(p.service) => orgs.push((o, p.issued)),
            HolderRef::Person(i) if catalog::is_individual_pilot_service(p.service) => persons.push((i, p.issued)),
            _ => {}
        }
    }
    for v in [&mut orgs, &mut persons] {
        v.sort_unstable();
        v.dedup_by_key(|x| x.0);
    }
    (orgs, persons)
}

fn other_surname(rng: &mut ChaCha8Rng, name: NameRef) -> u16 {
    let (lo, hi) = names::surname_range(names::surname_origin(name.surname));
    loop {
        let s = between(rng, lo as i64, hi as i64 - 1) as u16;
        if s != name.surname {
            return s;
        }
    }
}

fn other_given(rng: &mut ChaCha8Rng, name: NameRef, sex: Sex) -> u16 {
    let (lo, hi) = names::given_range(names::given_origin(name.given, sex), sex);
    loop {
        let g = between(rng, lo as i64, hi as i64 - 1) as u16;
        if g != name.given {
            return g;
        }
    }
}

/// Generates the history and applies it to the records.
pub(super) fn generate(
    s: &SimSettings,
    today: Day,
    start: Day,
    persons: &mut [Person],
    extras: &mut Vec<PersonExtra>,
    orgs: &mut [Org],
    permits: &[Permit],
) -> History {
    let mut rng = stream(s.seed, Stream::History);
    let (org_pool, person_pool) = pilot_pools(permits);
    let n = persons.len();
    let mut w = World { persons, extras, changed: vec![false; n] };

    // Births inside the span, by registration day (a few days after the birth).
    let mut births: Vec<(Day, u32)> = w
        .persons
        .iter()
        .enumerate()
        .filter(|(_, p)| p.birth() >= start)
        .map(|(i, p)| (p.birth().plus(index(&mut rng, 8) as i32).min(today), i as u32))
        .collect();
    births.sort_unstable();
    let mut next_birth = 0;

    let mut renames = Vec::new();
    let mut renamed_flag = vec![false; orgs.len()];
    let mut acts: Vec<Act> = Vec::new();
    let mut day = start;
    while day <= today {
        while let Some(&(d, p)) = births.get(next_birth) {
            if d > day {
                break;
            }
            next_birth += 1;
            let name = w.persons[p as usize].name;
            acts.push(Act {
                day,
                kind: ActKind::Birth,
                subject: p,
                other: NONE,
                old: None,
                new: Some(name),
                death: None,
            });
        }

        // Organization renames.
        let first_rename = renames.len();
        for _ in 0..daily_count(&mut rng, s.renames_per_day) {
            // A flag per organization, not a scan of the day's renames: a day of 100,000
            // renames would otherwise take a quadratic time.
            let renamed_today = |o: u32| renamed_flag[o as usize];
            let eligible = |o: &Org| o.status == OrganizationStatus::Active && o.registered < day;
            let mut org = None;
            if !org_pool.is_empty() && chance(&mut rng, s.pilot_share_of_renames) {
                for _ in 0..20 {
                    let (o, since) = org_pool[index(&mut rng, org_pool.len())];
                    if since < day && eligible(&orgs[o as usize]) && !renamed_today(o) {
                        org = Some(o);
                        break;
                    }
                }
            }
            if org.is_none() {
                for _ in 0..100 {
                    let o = index(&mut rng, orgs.len()) as u32;
                    if eligible(&orgs[o as usize]) && !renamed_today(o) {
                        org = Some(o);
                        break;
                    }
                }
            }
            let Some(o) = org else { continue };
            let old = orgs[o as usize].name;
            let new = random_org_name(&mut rng, old.form, Some(old));
            orgs[o as usize].name = new;
            renamed_flag[o as usize] = true;
            renames.push(Rename { day, org: o, old, new });
        }
        for r in &renames[first_rename..] {
            renamed_flag[r.org as usize] = false;
        }
        renames[first_rename..].sort_by_key(|r| r.org);

        // Changes of name (counted), then marriages that change no name, then deaths.
        for _ in 0..daily_count(&mut rng, s.name_changes_per_day) {
            let mut subject = None;
            if !person_pool.is_empty() && chance(&mut rng, s.pilot_share_of_name_changes) {
                let mut fallback = None;
                for _ in 0..20 {
                    let (p, since) = person_pool[index(&mut rng, person_pool.len())];
                    if since < day && w.alive(p as usize, day) {
                        if !w.changed[p as usize] {
                            subject = Some(p as usize);
                            break;
                        }
                        fallback = fallback.or(Some(p as usize));
                    }
                }
                subject = subject.or(fallback);
            }
            let subject = subject.or_else(|| w.pick(&mut rng, day, |_, _| true));
            if let Some(p) = subject
                && let Some(act) = name_change(&mut rng, &mut w, &acts, p, day)
            {
                w.changed[p] = true;
                acts.push(act);
            }
        }
        for _ in 0..daily_count(&mut rng, s.name_changes_per_day / 3) {
            let bride = w.pick(&mut rng, day, |p, age| p.sex() == Sex::Female && (18..=55).contains(&age));
            let groom = w.pick(&mut rng, day, |p, age| p.sex() == Sex::Male && (18..=60).contains(&age));
            if let (Some(b), Some(g)) = (bride, groom) {
                acts.push(Act {
                    day,
                    kind: ActKind::Marriage,
                    subject: b as u32,
                    other: g as u32,
                    old: None,
                    new: None,
                    death: None,
                });
            }
        }
        for _ in 0..daily_count(&mut rng, s.deaths_per_day) {
            // The oldest of three: deaths lean to the old.
            let p = (0..3).filter_map(|_| w.pick(&mut rng, day, |_, _| true)).min_by_key(|&p| w.persons[p].birth());
            let Some(p) = p else { continue };
            let death = day.plus(-(index(&mut rng, 4) as i32)).max(w.persons[p].birth());
            w.set_death(p, death);
            acts.push(Act {
                day,
                kind: ActKind::Death,
                subject: p as u32,
                other: NONE,
                old: None,
                new: None,
                death: Some(death),
            });
        }
        day = day.plus(1);
    }
    History { renames, acts }
}

/// One act changing the name of person `p` on `day`, applied to the person.
fn name_change(rng: &mut ChaCha8Rng, w: &mut World<'_>, earlier: &[Act], p: usize, day: Day) -> Option<Act> {
    let person = w.persons[p];
    let sex = person.sex();
    let age = w.age(p, day);
    let old = person.name;
    let mut new = old;
    let mut other = NONE;
    let kind;
    if age < 18 {
        let parent_male = chance(rng, 0.6);
        kind = if parent_male && chance(rng, 0.5) { ActKind::Paternity } else { ActKind::Adoption };
        let want = if parent_male || kind == ActKind::Paternity { Sex::Male } else { Sex::Female };
        let parent = w.pick(rng, day, |q, a| q.sex() == want && a >= 20 + age)?;
        let pn = w.persons[parent].name;
        new.surname = pn.surname;
        if want == Sex::Male {
            new.father = pn.given;
            if new.style == PatronymicStyle::None {
                new.style = PatronymicStyle::Russian;
            }
        }
        other = parent as u32;
    } else if sex == Sex::Female && age <= 55 && chance(rng, 0.85) {
        if chance(rng, 0.7) {
            kind = ActKind::Marriage;
            let groom = w.pick(rng, day, |q, a| q.sex() == Sex::Male && (18..=65).contains(&a))?;
            new.surname = w.persons[groom].name.surname;
            other = groom as u32;
        } else {
            kind = ActKind::Divorce;
            // Back to the surname before an earlier marriage of the history, else another.
            let maiden = earlier.iter().rev().find(|a| a.subject == p as u32 && a.kind == ActKind::Marriage);
            new.surname = match maiden.and_then(|a| a.old) {
                Some(before) if before.surname != old.surname => before.surname,
                _ => other_surname(rng, old),
            };
            let groom = w.pick(rng, day, |q, a| q.sex() == Sex::Male && (18..=70).contains(&a))?;
            other = groom as u32;
        }
    } else {
        kind = ActKind::NameChange;
        match rng.random_range(0..10u32) {
            0..5 => new.surname = other_surname(rng, old),
            5..8 => new.given = other_given(rng, old, sex),
            _ => {
                new.surname = other_surname(rng, old);
                new.given = other_given(rng, old, sex);
            }
        }
    }
    if new == old {
        // A marriage to a man of the same surname: the name does not change.
        new.surname = other_surname(rng, old);
    }
    w.persons[p].name = new;
    Some(Act { day, kind, subject: p as u32, other, old: Some(old), new: Some(new), death: None })
}
