//! Individuals: IIN, name, address, and the rare statuses (dead, missing or declared dead,
//! abroad, incapable or limited, imprisoned).

use std::collections::HashSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shep_domain::{Iin, Sex};

use super::{CapacityKind, Court, MissingKind, NONE, Person, PersonExtra, Prison};
use crate::names::{self, NameRef, Origin, PatronymicStyle};
use crate::places::{self, AddressRef};
use crate::rng::{Stream, between, chance, index, stream};
use crate::settings::SimSettings;
use crate::time::Day;

/// Countries of permanent residence abroad.
const ABROAD: [&str; 12] = ["RU", "DE", "US", "TR", "KR", "AE", "CN", "UZ", "KG", "PL", "CA", "IL"];

/// Age buckets (from, to inclusive, weight per mille).
const AGES: [(i32, i32, u32); 4] = [(0, 17, 300), (18, 39, 330), (40, 64, 280), (65, 90, 90)];

fn birth_day(rng: &mut ChaCha8Rng, today: Day) -> Day {
    let mut x = rng.random_range(0..1000u32);
    let (lo, hi) = AGES
        .iter()
        .find(|(_, _, w)| {
            if x < *w {
                true
            } else {
                x -= w;
                false
            }
        })
        .map(|&(a, b, _)| (a, b))
        .unwrap_or((18, 39));
    // Born between (hi+1) years before today (exclusive) and lo years before today.
    let latest = today.plus_years(-lo);
    let earliest = today.plus_years(-(hi + 1)).plus(1);
    Day(between(rng, earliest.0 as i64, latest.0 as i64) as i32)
}

/// A random name of an origin for a person of `sex`.
pub(super) fn random_name(rng: &mut ChaCha8Rng, origin: Origin, sex: Sex) -> NameRef {
    let (s0, s1) = names::surname_range(origin);
    let (g0, g1) = names::given_range(origin, sex);
    let (f0, f1) = names::given_range(origin, Sex::Male);
    let surname = between(rng, s0 as i64, s1 as i64 - 1) as u16;
    let given = between(rng, g0 as i64, g1 as i64 - 1) as u16;
    let father = between(rng, f0 as i64, f1 as i64 - 1) as u16;
    let x = rng.random_range(0..100u32);
    let style = match origin {
        Origin::Kazakh if x < 35 => PatronymicStyle::Kazakh,
        Origin::Kazakh if x < 95 => PatronymicStyle::Russian,
        Origin::Russian if x < 97 => PatronymicStyle::Russian,
        _ => PatronymicStyle::None,
    };
    NameRef { surname, given, father, style }
}

fn random_address(rng: &mut ChaCha8Rng) -> AddressRef {
    let region = places::region_by_weight(rng.random_range(0..1000u32));
    let town = index(rng, places::town_count(region) as usize) as u8;
    let street = index(rng, places::street_count() as usize) as u16;
    let house = rng.random_range(1..=200u16);
    let flat = if chance(rng, 0.3) { 0 } else { rng.random_range(1..=300u16) };
    AddressRef { region, town, street, house, flat }
}

fn court(rng: &mut ChaCha8Rng, lo: Day, hi: Day) -> Option<Court> {
    if hi < lo {
        return None;
    }
    let decision = Day(between(rng, lo.0 as i64, hi.0 as i64) as i32);
    Some(Court { decision, effective: decision.plus(30), number: rng.random_range(1..=9999) })
}

/// Generates the persons (sorted by IIN) and their extra statuses.
pub(super) fn generate(s: &SimSettings, today: Day, history_start: Day) -> (Vec<Person>, Vec<PersonExtra>) {
    let n = s.individuals as usize;
    let mut rng = stream(s.seed, Stream::Persons);
    let mut seen: HashSet<Iin> = HashSet::with_capacity(n);
    let mut persons = Vec::with_capacity(n);
    while persons.len() < n {
        let sex = if rng.random::<bool>() { Sex::Male } else { Sex::Female };
        let birth = birth_day(&mut rng, today);
        let (y, m, d) = birth.ymd();
        let origin = if chance(&mut rng, 0.7) { Origin::Kazakh } else { Origin::Russian };
        let name = random_name(&mut rng, origin, sex);
        let address = random_address(&mut rng);
        // About one serial in eleven has no check digit; collisions are rare: retry both.
        let mut iin = None;
        for _ in 0..64 {
            let serial = rng.random_range(0..10_000u16);
            if let Some(i) = Iin::from_parts(y as u32, m, d, sex, serial)
                && seen.insert(i)
            {
                iin = Some(i);
                break;
            }
        }
        if let Some(iin) = iin {
            persons.push(Person { iin, name, address, extra: NONE });
        }
    }
    persons.sort_unstable_by_key(|p| p.iin);
    drop(seen);

    let mut extras = Vec::new();
    let mut rng = stream(s.seed, Stream::Statuses);
    let r = &s.statuses;
    for p in persons.iter_mut() {
        let birth = p.birth();
        let adult_from = birth.plus_years(18);
        let adult = adult_from <= today;
        let x: f64 = rng.random::<u32>() as f64 / 4_294_967_296.0;
        let mut e = PersonExtra::default();
        let (t1, t2, t3, t4) = {
            let t1 = r.dead;
            let t2 = t1 + r.missing;
            let t3 = t2 + r.declared_dead;
            (t1, t2, t3, t3 + r.abroad)
        };
        let recent = today.plus_years(-10).max(birth);
        if x < t1 {
            // Died before the history window (deaths inside it are history).
            let lo = today.plus_years(-20).max(birth);
            let hi = history_start.plus(-1);
            if lo <= hi {
                e.death = Some(Day(between(&mut rng, lo.0 as i64, hi.0 as i64) as i32));
            }
        } else if x < t2 {
            e.missing = court(&mut rng, recent, today.plus(-31)).map(|c| (MissingKind::Missing, c));
        } else if x < t3 {
            e.missing = court(&mut rng, recent, today.plus(-31)).map(|c| (MissingKind::DeclaredDead, c));
        } else if x < t4 {
            let lo = today.plus_years(-15).max(birth);
            if lo < today {
                let since = Day(between(&mut rng, lo.0 as i64, today.plus(-1).0 as i64) as i32);
                e.abroad = Some((ABROAD[index(&mut rng, ABROAD.len())], since));
            }
        } else if adult {
            // Shares of adults: draw again among the adults left, scaled so that the rate
            // holds among all adults.
            let y: f64 = rng.random::<u32>() as f64 / 4_294_967_296.0 * (1.0 - t4).max(f64::EPSILON);
            let lo = today.plus_years(-10).max(adult_from);
            if y < r.incapable {
                e.capacity = court(&mut rng, lo, today.plus(-31)).map(|c| (CapacityKind::Incapable, c));
            } else if y < r.incapable + r.limited_capacity {
                e.capacity = court(&mut rng, lo, today.plus(-31)).map(|c| (CapacityKind::Limited, c));
            } else if y < r.incapable + r.limited_capacity + r.imprisoned {
                let lo = today.plus_years(-8).max(adult_from);
                let hi = today.plus(-1);
                if lo <= hi {
                    let from = Day(between(&mut rng, lo.0 as i64, hi.0 as i64) as i32);
                    let to = if chance(&mut rng, 0.05) {
                        None
                    } else {
                        let years = rng.random_range(1..=15);
                        Some(from.plus_years(years).max(today.plus(rng.random_range(1..=900))))
                    };
                    e.prison = Some(Prison { from, to });
                }
            }
        }
        if e != PersonExtra::default() {
            p.extra = extras.len() as u32;
            extras.push(e);
        }
    }
    (persons, extras)
}
