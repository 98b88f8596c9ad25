//! Permits of e-license: which holders hold which services, issue dates, validity, status,
//! and the permit number format ("KZ" + region + 3 letters of the service + serial).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shep_proto::elicense::PermitStatus;

use super::{HolderRef, Org, Permit, Person, PersonExtra};
use crate::catalog::{self, SERVICES};
use crate::rng::{Stream, between, chance, index, stream};
use crate::settings::SimSettings;
use crate::time::Day;

/// Weights of the services among organizations, in the order of [`SERVICES`].
const ORG_WEIGHTS: [u32; 9] = [12, 8, 10, 10, 6, 10, 10, 17, 17];
/// Weights of the services among individuals (only those individuals may hold).
const PERSON_WEIGHTS: [u32; 9] = [20, 10, 25, 25, 0, 0, 0, 20, 0];

fn pick_service(rng: &mut ChaCha8Rng, weights: &[u32; 9]) -> u8 {
    let total: u32 = weights.iter().sum();
    let mut x = rng.random_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i as u8;
        }
        x -= w;
    }
    0
}

fn permit(rng: &mut ChaCha8Rng, today: Day, holder: HolderRef, service: u8, region: u8, from: Day) -> Option<Permit> {
    let lo = from.max(today.plus_years(-6));
    let hi = today.plus(-1);
    if lo > hi {
        return None;
    }
    let issued = Day(between(rng, lo.0 as i64, hi.0 as i64) as i32);
    let years = SERVICES[service as usize].valid_years;
    let valid_until = (years > 0).then(|| issued.plus_years(years));
    let status = if valid_until.is_some_and(|v| v < today) {
        PermitStatus::Expired
    } else {
        match rng.random_range(0..1000u32) {
            0..15 => PermitStatus::Suspended,
            15..25 => PermitStatus::Revoked,
            _ => PermitStatus::Active,
        }
    };
    Some(Permit { holder, service, region: region + 1, status, issued, valid_until })
}

fn services_for(rng: &mut ChaCha8Rng, count: usize, weights: &[u32; 9]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(count);
    for _ in 0..count * 4 {
        if out.len() == count {
            break;
        }
        let s = pick_service(rng, weights);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Generates the permits: a share of organizations hold one to three, a share of adult
/// individuals one or two (SEZ or medical).
pub(super) fn generate(
    s: &SimSettings,
    today: Day,
    persons: &[Person],
    extras: &[PersonExtra],
    orgs: &[Org],
) -> Vec<Permit> {
    let mut rng = stream(s.seed, Stream::Permits);
    let mut out = Vec::new();
    for (i, o) in orgs.iter().enumerate() {
        if !chance(&mut rng, s.org_permit_share) {
            continue;
        }
        let count = 1 + index(&mut rng, 3);
        for service in services_for(&mut rng, count, &ORG_WEIGHTS) {
            out.extend(permit(&mut rng, today, HolderRef::Org(i as u32), service, o.address.region, o.registered));
        }
    }
    for (i, p) in persons.iter().enumerate() {
        let alive = extras.get(p.extra as usize).is_none_or(|e| e.death.is_none());
        if !alive || p.birth().years_until(today) < 20 || !chance(&mut rng, s.person_permit_share) {
            continue;
        }
        let count = 1 + index(&mut rng, 2);
        let from = p.birth().plus_years(18);
        for service in services_for(&mut rng, count, &PERSON_WEIGHTS) {
            debug_assert!(SERVICES[service as usize].holders == catalog::Holders::Both);
            out.extend(permit(&mut rng, today, HolderRef::Person(i as u32), service, p.address.region, from));
        }
    }
    out
}

/// The number of a permit: "KZ", two digits of the region, three letters of the service,
/// eight digits of the serial ("KZ02SEO00012345").
pub fn permit_number(region: u8, service: u8, serial: u32) -> String {
    let letters = SERVICES.get(service as usize).map(|s| s.letters).unwrap_or("XXX");
    format!("KZ{region:02}{letters}{serial:08}")
}

/// The parts of a permit number: (region, service, serial); `None` when it is not one.
pub fn parse_permit_number(s: &str) -> Option<(u8, u8, u32)> {
    let b = s.as_bytes();
    if b.len() != 15 || !s.is_ascii() || &s[..2] != "KZ" {
        return None;
    }
    let region: u8 = s[2..4].parse().ok()?;
    let service = catalog::service_by_letters(&s[4..7])?;
    if !s[7..].bytes().all(|c| c.is_ascii_digit()) || !s[2..4].bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let serial: u32 = s[7..].parse().ok()?;
    Some((region, service, serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_refuse_garbage() {
        let n = permit_number(2, 0, 12_345);
        assert_eq!(n, "KZ02SEO00012345");
        assert_eq!(parse_permit_number(&n), Some((2, 0, 12_345)));
        for bad in [
            "",
            "KZ02SEO0001234",
            "KZ02XXX00012345",
            "KZ0ASEO00012345",
            "KZ02SEO0001234Ж",
            "US02SEO00012345",
            "KZ02SEO+0012345",
        ] {
            assert_eq!(parse_permit_number(bad), None, "{bad}");
        }
        assert!(
            PERSON_WEIGHTS.iter().zip(SERVICES.iter()).all(|(w, s)| *w == 0 || s.holders == catalog::Holders::Both)
        );
    }
}
