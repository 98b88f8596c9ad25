//! What scenarios changed about individuals (GBD FL) and the acts they added (ZAGS).

use std::collections::HashMap;

use shep_proto::shep::FullName;
use shep_proto::zags::ActKind;

use crate::country::{CapacityKind, Country, Court, Phone, Prison};
use crate::time::Day;

/// The changes of one person.
#[derive(Debug, Clone, Default)]
pub struct PersonOverride {
    /// The current name, when changed.
    pub name: Option<FullName>,
    pub death: Option<Day>,
    pub prison: Option<Prison>,
    /// ISO country code and the date since.
    pub abroad: Option<(String, Day)>,
    /// A court decision on legal capacity.
    pub capacity: Option<(CapacityKind, Court)>,
    /// The number registered in BMG, when set by a scenario: `Some(None)` for none.
    pub phone: Option<Option<Phone>>,
}

/// An act recorded by a scenario.
#[derive(Debug, Clone)]
pub struct InjectedAct {
    pub day: Day,
    pub kind: ActKind,
    pub subject: u32,
    pub old: Option<FullName>,
    pub new: Option<FullName>,
    pub death: Option<Day>,
}

/// The injected changes of GBD FL and ZAGS.
#[derive(Debug, Clone, Default)]
pub struct PeopleState {
    overrides: HashMap<u32, PersonOverride>,
    acts: Vec<InjectedAct>,
}

/// The outcome of an injected change of name or death: the act and the name before.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Index of the act among the injected ones.
    pub act: usize,
    pub old_name: Option<FullName>,
}

impl PeopleState {
    pub fn get(&self, p: u32) -> Option<&PersonOverride> {
        self.overrides.get(&p)
    }

    /// The injected acts, in the order recorded.
    pub fn acts(&self) -> &[InjectedAct] {
        &self.acts
    }

    /// The person's current name: injected, else generated.
    pub fn name(&self, country: &Country, p: u32) -> FullName {
        if let Some(n) = self.overrides.get(&p).and_then(|o| o.name.clone()) {
            return n;
        }
        let person = &country.persons()[p as usize];
        person.name.to_proto(person.sex())
    }

    /// The person's name at the end of `day`, taking injected acts into account.
    pub fn name_at(&self, country: &Country, p: u32, day: Day) -> FullName {
        let person = &country.persons()[p as usize];
        let base_later = country
            .acts_of(p)
            .map(|i| &country.acts()[i as usize])
            .find(|a| a.subject == p && a.old.is_some() && a.day > day)
            .and_then(|a| Some((a.day, a.old?.to_proto(person.sex()))));
        let injected_later = self
            .acts
            .iter()
            .filter(|a| a.subject == p && a.old.is_some() && a.day > day)
            .min_by_key(|a| a.day)
            .and_then(|a| Some((a.day, a.old.clone()?)));
        match (base_later, injected_later) {
            (Some(b), Some(i)) => {
                if b.0 <= i.0 {
                    b.1
                } else {
                    i.1
                }
            }
            (Some(b), None) => b.1,
            (None, Some(i)) => i.1,
            (None, None) => self.name(country, p),
        }
    }

    /// Whether the person is dead (generated or injected).
    pub fn death(&self, country: &Country, p: u32) -> Option<Day> {
        self.overrides.get(&p).and_then(|o| o.death).or_else(|| country.extra(p).and_then(|e| e.death))
    }

    /// Records a change of name. Idempotent by effect: when the person already bears
    /// `new` through an injected act of the same kind and date, that act is returned.
    pub fn change_name(&mut self, country: &Country, p: u32, new: FullName, kind: ActKind, day: Day) -> Recorded {
        let same = |a: &InjectedAct| a.subject == p && a.kind == kind && a.day == day && a.new.as_ref() == Some(&new);
        if let Some(i) = self.acts.iter().rposition(same)
            && self.name(country, p) == new
        {
            return Recorded { act: i, old_name: self.acts[i].old.clone() };
        }
        let old = self.name(country, p);
        self.overrides.entry(p).or_default().name = Some(new.clone());
        self.acts.push(InjectedAct { day, kind, subject: p, old: Some(old.clone()), new: Some(new), death: None });
        Recorded { act: self.acts.len() - 1, old_name: Some(old) }
    }

    /// Records a death on `day`. Idempotent: a person already dead by injection on that day
    /// gives the act recorded then.
    pub fn record_death(&mut self, p: u32, day: Day) -> Recorded {
        if let Some(i) =
            self.acts.iter().rposition(|a| a.subject == p && a.kind == ActKind::Death && a.death == Some(day))
        {
            return Recorded { act: i, old_name: None };
        }
        self.overrides.entry(p).or_default().death = Some(day);
        self.acts.push(InjectedAct { day, kind: ActKind::Death, subject: p, old: None, new: None, death: Some(day) });
        Recorded { act: self.acts.len() - 1, old_name: None }
    }

    /// Records an imprisonment.
    pub fn imprison(&mut self, p: u32, prison: Prison) {
        self.overrides.entry(p).or_default().prison = Some(prison);
    }

    /// Records a move abroad.
    pub fn move_abroad(&mut self, p: u32, country: String, since: Day) {
        self.overrides.entry(p).or_default().abroad = Some((country, since));
    }

    /// Records a court decision on legal capacity.
    pub fn set_capacity(&mut self, p: u32, kind: CapacityKind, court: Court) {
        self.overrides.entry(p).or_default().capacity = Some((kind, court));
    }

    /// Registers a number in BMG (`None` removes the person's number).
    pub fn set_phone(&mut self, p: u32, phone: Option<Phone>) {
        self.overrides.entry(p).or_default().phone = Some(phone);
    }

    /// The number a person has in BMG: set by a scenario, else generated.
    pub fn phone(&self, country: &Country, p: u32) -> Option<Phone> {
        match self.overrides.get(&p).and_then(|o| o.phone.clone()) {
            Some(set) => set,
            None => country.phone_of(p),
        }
    }

    /// The persons with changes, in index order (for exports).
    pub fn changed_persons(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.overrides.keys().copied().collect();
        v.sort_unstable();
        v
    }
}
