//! What scenarios changed about organizations (GBD UL): injected renames.

use std::collections::HashMap;

use shep_proto::shep::LocalizedText;

use crate::country::Country;
use crate::time::Day;

/// A rename recorded by a scenario.
#[derive(Debug, Clone)]
pub struct InjectedRename {
    pub day: Day,
    pub org: u32,
    pub old: LocalizedText,
    pub new: LocalizedText,
}

/// The injected changes of GBD UL.
#[derive(Debug, Clone, Default)]
pub struct OrgState {
    names: HashMap<u32, LocalizedText>,
    renames: Vec<InjectedRename>,
}

impl OrgState {
    /// The current name: injected, else generated.
    pub fn name(&self, country: &Country, o: u32) -> LocalizedText {
        self.names.get(&o).cloned().unwrap_or_else(|| country.orgs()[o as usize].name.to_proto())
    }

    /// The name at the end of `day`, taking injected renames into account.
    pub fn name_at(&self, country: &Country, o: u32, day: Day) -> LocalizedText {
        let base_later = country.renames_of(o).map(|i| &country.renames()[i as usize]).find(|r| r.day > day);
        let injected_later = self.renames.iter().filter(|r| r.org == o && r.day > day).min_by_key(|r| r.day);
        match (base_later, injected_later) {
            (Some(b), Some(i)) if i.day < b.day => i.old.clone(),
            (Some(b), _) => b.old.to_proto(),
            (None, Some(i)) => i.old.clone(),
            (None, None) => self.name(country, o),
        }
    }

    /// The injected renames, in the order recorded.
    pub fn renames(&self) -> &[InjectedRename] {
        &self.renames
    }

    /// The injected renames of one organization, in the order recorded.
    pub fn renames_of(&self, o: u32) -> impl Iterator<Item = &InjectedRename> {
        self.renames.iter().filter(move |r| r.org == o)
    }

    /// Renames an organization; returns the old name. Idempotent by effect: renaming to the
    /// current name on the day of the last injected rename to it changes nothing.
    pub fn rename(&mut self, country: &Country, o: u32, new: LocalizedText, day: Day) -> LocalizedText {
        if let Some(last) = self.renames.iter().rev().find(|r| r.org == o)
            && last.new == new
            && last.day == day
            && self.name(country, o) == new
        {
            return last.old.clone();
        }
        let old = self.name(country, o);
        self.names.insert(o, new.clone());
        self.renames.push(InjectedRename { day, org: o, old: old.clone(), new });
        old
    }
}
