//! Records as the contracts' messages: the generated data with the scenario state applied.
//! Shared by the registry services and the export.

use shep_proto::elicense::{self, HolderName, holder, holder_name};
use shep_proto::gbdfl::{self, LegalCapacity, LifeStatus, MissingStatus};
use shep_proto::gbdul;
use shep_proto::shep::FullName;
use shep_proto::zags::{ActKind, CivilAct};

use crate::catalog::SERVICES;
use crate::country::{CapacityKind, Country, Court, HolderRef, MissingKind, NONE, Prison};
use crate::state::State;
use crate::time::Day;

fn court(c: &Country, p: u32, court: &Court) -> gbdfl::CourtDecision {
    let town = c.persons()[p as usize].address.town_name();
    let (y, _, _) = court.decision.ymd();
    gbdfl::CourtDecision {
        court: format!("Специализированный межрайонный суд по гражданским делам ({town})"),
        decision_number: format!("2-{}/{:02}", court.number, y % 100),
        decision_date: Some(court.decision.to_proto()),
        effective_date: Some(court.effective.to_proto()),
    }
}

/// A person as GBD FL serves it, on simulated day `today`.
pub fn person(c: &Country, st: &State, p: u32, today: Day) -> gbdfl::Person {
    let base = &c.persons()[p as usize];
    let extra = c.extra(p).cloned().unwrap_or_default();
    let ov = st.people.get(p).cloned().unwrap_or_default();
    let death = ov.death.or(extra.death);
    let (missing_status, missing_decision) = match extra.missing {
        Some((MissingKind::Missing, k)) => (MissingStatus::Missing, Some(court(c, p, &k))),
        Some((MissingKind::DeclaredDead, k)) => (MissingStatus::DeclaredDead, Some(court(c, p, &k))),
        None => (MissingStatus::None, None),
    };
    let (legal_capacity, capacity_decision) = match ov.capacity.or(extra.capacity) {
        Some((CapacityKind::Incapable, k)) => (LegalCapacity::Incapable, Some(court(c, p, &k))),
        Some((CapacityKind::Limited, k)) => (LegalCapacity::Limited, Some(court(c, p, &k))),
        None => (LegalCapacity::Capable, None),
    };
    let abroad = ov.abroad.clone().or(extra.abroad.map(|(cc, d)| (cc.to_owned(), d)));
    let residence = match abroad {
        Some((country, since)) if since <= today => {
            gbdfl::Residence { permanent_abroad: true, country, since: Some(since.to_proto()) }
        }
        _ => gbdfl::Residence::default(),
    };
    let prison: Option<Prison> = ov.prison.or(extra.prison);
    let imprisonment = match prison {
        Some(Prison { from, to }) if from <= today && to.is_none_or(|t| t >= today) => {
            gbdfl::Imprisonment { imprisoned: true, from: Some(from.to_proto()), to: to.map(Day::to_proto) }
        }
        _ => gbdfl::Imprisonment::default(),
    };
    gbdfl::Person {
        iin: base.iin.to_string(),
        full_name: Some(st.people.name(c, p)),
        birth_date: Some(base.birth().to_proto()),
        sex: match base.sex() {
            shep_domain::Sex::Male => gbdfl::Sex::Male,
            shep_domain::Sex::Female => gbdfl::Sex::Female,
        } as i32,
        citizenship: "KZ".into(),
        life_status: if death.is_some() { LifeStatus::Dead } else { LifeStatus::Alive } as i32,
        death_date: death.map(Day::to_proto),
        missing_status: missing_status as i32,
        missing_decision,
        legal_capacity: legal_capacity as i32,
        capacity_decision,
        residence: Some(residence),
        imprisonment: Some(imprisonment),
        address: Some(base.address.to_proto()),
    }
}

/// One entry of the feed of name changes: generated (`seq` = index among the generated
/// renames) or injected (`seq` = generated count + index among the injected).
#[derive(Debug, Clone)]
pub struct RenameEntry {
    pub day: Day,
    pub org: u32,
    pub seq: u32,
}

/// The renames of the feed in `[from, to]`, in (date, BIN, seq) order.
pub fn renames_in(c: &Country, st: &State, from: Day, to: Day) -> Vec<RenameEntry> {
    let base = c.renames();
    let start = base.partition_point(|r| r.day < from);
    let mut v: Vec<RenameEntry> = base[start..]
        .iter()
        .enumerate()
        .take_while(|(_, r)| r.day <= to)
        .map(|(i, r)| RenameEntry { day: r.day, org: r.org, seq: (start + i) as u32 })
        .collect();
    let n = base.len() as u32;
    v.extend(
        st.orgs.renames().iter().enumerate().filter(|(_, r)| r.day >= from && r.day <= to).map(|(i, r)| RenameEntry {
            day: r.day,
            org: r.org,
            seq: n + i as u32,
        }),
    );
    v.sort_by_key(|e| (e.day, e.org, e.seq));
    v
}

/// A feed entry as the contract's message (without the cursor).
pub fn name_change(c: &Country, st: &State, e: &RenameEntry) -> gbdul::NameChange {
    let base = c.renames();
    let (old, new) = match base.get(e.seq as usize) {
        Some(r) => (r.old.to_proto(), r.new.to_proto()),
        None => {
            let r = &st.orgs.renames()[e.seq as usize - base.len()];
            (r.old.clone(), r.new.clone())
        }
    };
    let head = c.orgs()[e.org as usize].head;
    gbdul::NameChange {
        bin: c.orgs()[e.org as usize].bin.to_string(),
        old_name: Some(old),
        new_name: Some(new),
        change_date: Some(e.day.to_proto()),
        head_iin: if head == NONE { String::new() } else { c.persons()[head as usize].iin.to_string() },
        cursor: String::new(),
    }
}

/// An organization as GBD UL serves it.
pub fn organization(c: &Country, st: &State, o: u32) -> gbdul::Organization {
    let org = &c.orgs()[o as usize];
    let mut history: Vec<(Day, u32, gbdul::NameHistoryEntry)> = c
        .renames_of(o)
        .map(|i| {
            let r = &c.renames()[i as usize];
            (
                r.day,
                0,
                gbdul::NameHistoryEntry {
                    old_name: Some(r.old.to_proto()),
                    new_name: Some(r.new.to_proto()),
                    change_date: Some(r.day.to_proto()),
                },
            )
        })
        .collect();
    history.extend(st.orgs.renames_of(o).enumerate().map(|(i, r)| {
        (
            r.day,
            1 + i as u32,
            gbdul::NameHistoryEntry {
                old_name: Some(r.old.clone()),
                new_name: Some(r.new.clone()),
                change_date: Some(r.day.to_proto()),
            },
        )
    }));
    history.sort_by_key(|(d, k, _)| (*d, *k));
    let first_head = (org.head != NONE).then(|| gbdul::Head {
        iin: c.persons()[org.head as usize].iin.to_string(),
        full_name: Some(st.people.name(c, org.head)),
        since: Some(org.head_since.to_proto()),
    });
    gbdul::Organization {
        bin: org.bin.to_string(),
        name: Some(st.orgs.name(c, o)),
        legal_form: org.name.legal_form() as i32,
        status: org.status as i32,
        status_date: org.status_day.map(Day::to_proto),
        registration_date: Some(org.registered.to_proto()),
        address: Some(org.address.to_proto()),
        first_head,
        name_history: history.into_iter().map(|(_, _, h)| h).collect(),
    }
}

/// An act's id: "AZ" and ten digits of its number (generated acts first, then injected).
pub fn act_id(number: u32) -> String {
    format!("AZ{number:010}")
}

/// The number of an act id; `None` when it is not one.
pub fn act_number(id: &str) -> Option<u32> {
    let digits = id.strip_prefix("AZ")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// An act (by global index: generated first, then injected) as ZAGS serves it.
pub fn act(c: &Country, st: &State, index: usize) -> Option<CivilAct> {
    let base = c.acts();
    let (day, kind, subject, other, old, new, death): (
        Day,
        ActKind,
        u32,
        u32,
        Option<FullName>,
        Option<FullName>,
        Option<Day>,
    ) = match base.get(index) {
        Some(a) => {
            let sex = c.persons()[a.subject as usize].sex();
            (a.day, a.kind, a.subject, a.other, a.old.map(|n| n.to_proto(sex)), a.new.map(|n| n.to_proto(sex)), a.death)
        }
        None => {
            let a = st.people.acts().get(index - base.len())?;
            (a.day, a.kind, a.subject, NONE, a.old.clone(), a.new.clone(), a.death)
        }
    };
    let iin = |p: u32| if p == NONE { String::new() } else { c.persons()[p as usize].iin.to_string() };
    let (spouse, parent) = match kind {
        ActKind::Marriage | ActKind::Divorce => (iin(other), String::new()),
        ActKind::Adoption | ActKind::Paternity => (String::new(), iin(other)),
        _ => (String::new(), String::new()),
    };
    let town = c.persons()[subject as usize].address.town_name();
    Some(CivilAct {
        act_id: act_id(index as u32 + 1),
        kind: kind as i32,
        registration_date: Some(day.to_proto()),
        subject_iin: iin(subject),
        old_name: old,
        new_name: new,
        death_date: death.map(Day::to_proto),
        spouse_iin: spouse,
        parent_iin: parent,
        registry_office: format!("Отдел регистрации актов гражданского состояния ({town})"),
        cursor: String::new(),
    })
}

/// The acts (global indexes) registered in `[from, to]`, in (date, act id) order.
pub fn acts_in(c: &Country, st: &State, from: Day, to: Day) -> Vec<(Day, usize)> {
    let base = c.acts();
    let start = base.partition_point(|a| a.day < from);
    let mut v: Vec<(Day, usize)> =
        base[start..].iter().enumerate().take_while(|(_, a)| a.day <= to).map(|(i, a)| (a.day, start + i)).collect();
    v.extend(
        st.people
            .acts()
            .iter()
            .enumerate()
            .filter(|(_, a)| a.day >= from && a.day <= to)
            .map(|(i, a)| (a.day, base.len() + i)),
    );
    v.sort_unstable();
    v
}

/// The kind of an act by global index.
pub fn act_kind(c: &Country, st: &State, index: usize) -> Option<ActKind> {
    match c.acts().get(index) {
        Some(a) => Some(a.kind),
        None => st.people.acts().get(index - c.acts().len()).map(|a| a.kind),
    }
}

/// The acts (global indexes) of a person as subject, spouse or parent, oldest first.
pub fn acts_of(c: &Country, st: &State, p: u32) -> Vec<usize> {
    let mut v: Vec<(Day, usize)> = c.acts_of(p).map(|i| (c.acts()[i as usize].day, i as usize)).collect();
    v.extend(
        st.people.acts().iter().enumerate().filter(|(_, a)| a.subject == p).map(|(i, a)| (a.day, c.acts().len() + i)),
    );
    v.sort_unstable();
    v.into_iter().map(|(_, i)| i).collect()
}

/// The holder as the contract's message.
pub fn holder(c: &Country, h: HolderRef) -> elicense::Holder {
    let id = match h {
        HolderRef::Org(o) => holder::Id::Bin(c.orgs()[o as usize].bin.to_string()),
        HolderRef::Person(p) => holder::Id::Iin(c.persons()[p as usize].iin.to_string()),
    };
    elicense::Holder { id: Some(id) }
}

/// A holder's name at the end of `day`.
pub fn holder_name_at(c: &Country, st: &State, h: HolderRef, day: Day) -> HolderName {
    let name = match h {
        HolderRef::Org(o) => holder_name::Name::Organization(st.orgs.name_at(c, o, day)),
        HolderRef::Person(p) => holder_name::Name::Person(st.people.name_at(c, p, day)),
    };
    HolderName { name: Some(name) }
}

/// A permit (global index) as e-license serves it.
pub fn permit(c: &Country, st: &State, index: u32) -> Option<elicense::Permit> {
    let p = st.permits.get(c, index)?;
    let service = SERVICES.get(p.service as usize)?;
    let number = |i: u32| st.permits.get(c, i).map(|x| x.number()).unwrap_or_default();
    Some(elicense::Permit {
        number: p.number(),
        service_code: service.code.into(),
        service_name: Some(shep_proto::shep::LocalizedText { ru: service.ru.into(), kk: service.kk.into() }),
        holder: Some(holder(c, p.holder)),
        holder_name: Some(p.holder_name.cloned().unwrap_or_else(|| holder_name_at(c, st, p.holder, p.issued))),
        status: p.status as i32,
        issue_date: Some(p.issued.to_proto()),
        valid_until: p.valid_until.map(Day::to_proto),
        replaces: p.replaces.map(number).unwrap_or_default(),
        replaced_by: p.replaced_by.map(number).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_ids_round_trip() {
        assert_eq!(act_id(12), "AZ0000000012");
        assert_eq!(act_number("AZ0000000012"), Some(12));
        assert_eq!(act_number("AZ12"), None);
        assert_eq!(act_number("XX0000000012"), None);
    }
}
