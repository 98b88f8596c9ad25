//! Legal entities: BIN, names ru/kk with the legal form, status, and a first head chosen
//! among the living adults.

use std::collections::HashSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shep_domain::Bin;
use shep_proto::gbdul::{LegalForm, OrganizationStatus};

use super::{NONE, Org, Person, PersonExtra};
use crate::orgnames::{self, OrgName};
use crate::places::{self, AddressRef};
use crate::rng::{Stream, between, chance, index, stream};
use crate::settings::SimSettings;
use crate::time::Day;

/// A random name of a legal form, different from `not` when given.
pub(super) fn random_org_name(rng: &mut ChaCha8Rng, form: u8, not: Option<OrgName>) -> OrgName {
    let (b, a, s) = orgnames::table_sizes();
    loop {
        let name = OrgName {
            form,
            brand: index(rng, b as usize) as u16,
            activity: index(rng, a as usize) as u16,
            suffix: if chance(rng, 0.3) { index(rng, s as usize) as u16 } else { u16::MAX },
        };
        if Some(name) != not {
            return name;
        }
    }
}

fn alive(persons: &[Person], extras: &[PersonExtra], p: usize) -> bool {
    let x = persons[p].extra;
    extras.get(x as usize).is_none_or(|e| e.death.is_none() && e.missing.is_none())
}

/// Generates the organizations, sorted by BIN.
pub(super) fn generate(s: &SimSettings, today: Day, persons: &[Person], extras: &[PersonExtra]) -> Vec<Org> {
    let n = s.organizations as usize;
    let mut rng = stream(s.seed, Stream::Orgs);
    let mut seen: HashSet<Bin> = HashSet::with_capacity(n);
    let mut orgs = Vec::with_capacity(n);
    let first = today.plus_years(-28);
    let last = today.plus(-60);
    while orgs.len() < n {
        let registered = Day(between(&mut rng, first.0 as i64, last.0 as i64) as i32);
        let form = orgnames::form_by_weight(rng.random_range(0..1000));
        let legal_form = orgnames::FORMS[form as usize].0;
        let kind = if legal_form == LegalForm::Ip { 6 } else { 4 };
        let attribute = if legal_form == LegalForm::Kh { 3 } else { 0 };
        let (y, m, _) = registered.ymd();
        let mut bin = None;
        for _ in 0..64 {
            let serial = rng.random_range(0..100_000u32);
            if let Some(b) = Bin::from_parts(y as u32, m, kind, attribute, serial)
                && seen.insert(b)
            {
                bin = Some(b);
                break;
            }
        }
        let name = random_org_name(&mut rng, form, None);
        let region = places::region_by_weight(rng.random_range(0..1000));
        let address = AddressRef {
            region,
            town: index(&mut rng, places::town_count(region) as usize) as u8,
            street: index(&mut rng, places::street_count() as usize) as u16,
            house: rng.random_range(1..=300),
            flat: if chance(&mut rng, 0.5) { rng.random_range(1..=50) } else { 0 },
        };
        let x = rng.random_range(0..100u32);
        let status = match x {
            0..93 => OrganizationStatus::Active,
            93..95 => OrganizationStatus::Suspended,
            95..97 => OrganizationStatus::InLiquidation,
            97..99 => OrganizationStatus::Liquidated,
            _ => OrganizationStatus::Reorganized,
        };
        let status_day = (status != OrganizationStatus::Active).then(|| {
            let lo = registered.plus(365).min(today.plus(-1));
            Day(between(&mut rng, lo.0 as i64, today.plus(-1).0 as i64) as i32)
        });
        // The first head: a living adult, head since registration or later.
        let mut head = (NONE, registered);
        for _ in 0..100 {
            let p = index(&mut rng, persons.len());
            let adult_from = persons[p].birth().plus_years(18);
            if !alive(persons, extras, p) || persons[p].birth().years_until(today) < 20 {
                continue;
            }
            let lo = registered.max(adult_from);
            let hi = today.plus(-30).max(lo);
            head = (p as u32, Day(between(&mut rng, lo.0 as i64, hi.0 as i64) as i32));
            break;
        }
        if let Some(bin) = bin {
            orgs.push(Org { bin, name, registered, status, status_day, address, head: head.0, head_since: head.1 });
        }
    }
    orgs.sort_unstable_by_key(|o| o.bin);
    orgs
}
