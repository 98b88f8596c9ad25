//! What happened in e-license: re-issued permits, their idempotency keys, and the
//! notifications of the holders' personal cabinets.
//!
//! Permits are addressed by a global index: the generated ones first (index = serial - 1),
//! then the re-issued ones in the order they were formed.

use std::collections::HashMap;

use shep_proto::elicense::{HolderName, PermitStatus};

use crate::country::{Country, HolderRef, permit_number};
use crate::time::Day;

/// A permit formed by a re-issue.
#[derive(Debug, Clone)]
pub struct NewPermit {
    pub holder: HolderRef,
    pub service: u8,
    pub region: u8,
    pub issued: Day,
    pub valid_until: Option<Day>,
    pub holder_name: HolderName,
    /// Global index of the permit it replaced.
    pub replaces: u32,
}

/// A notification in a personal cabinet.
#[derive(Debug, Clone)]
pub struct CabinetNote {
    pub id: String,
    pub holder: HolderRef,
    pub created_at: i64,
    pub title: String,
    pub text: String,
    pub permit_number: String,
}

/// What an idempotency key stands for.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// The request it was first used with (a fingerprint of its fields).
    pub fingerprint: String,
    pub old: u32,
    pub new: u32,
}

/// A re-issue to record.
#[derive(Debug, Clone)]
pub struct Reissue<'a> {
    /// Global index of the permit replaced.
    pub old: u32,
    /// The holder's new name.
    pub holder_name: HolderName,
    /// The issue date of the new permit.
    pub issued: Day,
    /// The idempotency key.
    pub key: &'a str,
    /// A fingerprint of the request.
    pub fingerprint: String,
    /// When (Unix seconds).
    pub now: i64,
}

/// The state of e-license.
#[derive(Debug, Clone, Default)]
pub struct PermitState {
    replaced_by: HashMap<u32, u32>,
    new_permits: Vec<NewPermit>,
    keys: HashMap<String, KeyRecord>,
    cabinet: Vec<CabinetNote>,
}

/// A permit of either kind, as stored.
#[derive(Debug, Clone, Copy)]
pub struct PermitRef<'a> {
    pub index: u32,
    pub holder: HolderRef,
    pub service: u8,
    pub region: u8,
    pub issued: Day,
    pub valid_until: Option<Day>,
    pub status: PermitStatus,
    /// Set for a re-issued permit; generated ones take the holder's name at issue.
    pub holder_name: Option<&'a HolderName>,
    pub replaces: Option<u32>,
    pub replaced_by: Option<u32>,
}

impl PermitRef<'_> {
    pub fn number(&self) -> String {
        permit_number(self.region, self.service, self.index + 1)
    }
}

impl PermitState {
    /// A permit by global index.
    pub fn get<'a>(&'a self, country: &Country, index: u32) -> Option<PermitRef<'a>> {
        let base = country.permits().len() as u32;
        let replaced_by = self.replaced_by.get(&index).copied();
        if index < base {
            let p = &country.permits()[index as usize];
            Some(PermitRef {
                index,
                holder: p.holder,
                service: p.service,
                region: p.region,
                issued: p.issued,
                valid_until: p.valid_until,
                status: if replaced_by.is_some() { PermitStatus::Reissued } else { p.status },
                holder_name: None,
                replaces: None,
                replaced_by,
            })
        } else {
            let p = self.new_permits.get((index - base) as usize)?;
            Some(PermitRef {
                index,
                holder: p.holder,
                service: p.service,
                region: p.region,
                issued: p.issued,
                valid_until: p.valid_until,
                status: if replaced_by.is_some() { PermitStatus::Reissued } else { PermitStatus::Active },
                holder_name: Some(&p.holder_name),
                replaces: Some(p.replaces),
                replaced_by,
            })
        }
    }

    /// The global index of a permit number, when such a permit exists.
    pub fn find(&self, country: &Country, number: &str) -> Option<u32> {
        let (_, _, serial) = crate::country::parse_permit_number(number)?;
        let index = serial.checked_sub(1)?;
        let p = self.get(country, index)?;
        (p.number() == number).then_some(index)
    }

    /// The permits of a holder (global indexes), oldest issue first.
    pub fn of_holder(&self, country: &Country, holder: HolderRef) -> Vec<u32> {
        let base = country.permits().len() as u32;
        let mut v: Vec<u32> = country.permits_of(holder).collect();
        v.extend(self.new_permits.iter().enumerate().filter(|(_, p)| p.holder == holder).map(|(i, _)| base + i as u32));
        v.sort_by_key(|&i| (self.get(country, i).map(|p| p.issued).unwrap_or_default(), i));
        v
    }

    /// The record of an idempotency key.
    pub fn key(&self, key: &str) -> Option<&KeyRecord> {
        self.keys.get(key)
    }

    /// Forms the new permit replacing `old`, records the key and the cabinet note; returns
    /// the new permit's global index. The caller checked that `old` is active.
    pub fn reissue(
        &mut self,
        country: &Country,
        r: Reissue<'_>,
        note: impl FnOnce(&str, &str) -> (String, String),
    ) -> Option<u32> {
        let Reissue { old, holder_name, issued, key, fingerprint, now } = r;
        let o = self.get(country, old)?;
        let (holder, service, region, valid_until, old_number) =
            (o.holder, o.service, o.region, o.valid_until, o.number());
        let index = country.permits().len() as u32 + self.new_permits.len() as u32;
        self.new_permits.push(NewPermit { holder, service, region, issued, valid_until, holder_name, replaces: old });
        self.replaced_by.insert(old, index);
        self.keys.insert(key.to_owned(), KeyRecord { fingerprint, old, new: index });
        let new_number = permit_number(region, service, index + 1);
        let (title, text) = note(&old_number, &new_number);
        self.cabinet.push(CabinetNote {
            id: format!("N{:010}", self.cabinet.len() + 1),
            holder,
            created_at: now,
            title,
            text,
            permit_number: new_number,
        });
        Some(index)
    }

    /// The notes of a holder's cabinet, newest first.
    pub fn cabinet(&self, holder: HolderRef) -> Vec<&CabinetNote> {
        let mut v: Vec<&CabinetNote> = self.cabinet.iter().filter(|n| n.holder == holder).collect();
        v.reverse();
        v
    }

    /// Every cabinet note, oldest first (for exports).
    pub fn all_notes(&self) -> &[CabinetNote] {
        &self.cabinet
    }

    /// Number of re-issued permits.
    pub fn new_count(&self) -> usize {
        self.new_permits.len()
    }
}
