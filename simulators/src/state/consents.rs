//! KDP: consents per (subject, consumer, scope) on top of the generated ones, the tokens
//! issued under them, and the feed of revocations.
//!
//! A change recorded here carries a sequence number; for a (subject, consumer) the latest
//! change to the scope itself or to "*" (every scope) decides, else the generated consent.

use std::collections::HashMap;

use shep_domain::Iin;

use crate::catalog::SCOPES;
use crate::country::Country;

/// The scope that stands for every scope.
pub const ANY_SCOPE: &str = "*";

#[derive(Debug, Clone)]
struct Change {
    seq: u64,
    granted: bool,
    granted_at: i64,
    valid_until: Option<i64>,
}

/// A consent in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InForce {
    pub granted_at: i64,
    pub valid_until: Option<i64>,
}

/// A withdrawn consent, as the feed gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub token_ids: Vec<String>,
    pub subject: Iin,
    pub consumer: String,
    pub scope: String,
    pub revoked_at: i64,
}

type Key = (Iin, String, String);

/// The state of KDP.
#[derive(Debug, Clone, Default)]
pub struct ConsentState {
    changes: HashMap<Key, Change>,
    seq: u64,
    tokens: HashMap<Key, Vec<(String, i64)>>,
    revocations: Vec<Revoked>,
    issued: u64,
}

fn key(subject: Iin, consumer: &str, scope: &str) -> Key {
    (subject, consumer.to_owned(), scope.to_owned())
}

impl ConsentState {
    /// The consent for (subject, consumer, scope) in force at `now`, if any.
    pub fn in_force(&self, country: &Country, subject: Iin, consumer: &str, scope: &str, now: i64) -> Option<InForce> {
        let own = self.changes.get(&key(subject, consumer, scope));
        let any = if scope == ANY_SCOPE { None } else { self.changes.get(&key(subject, consumer, ANY_SCOPE)) };
        let latest = match (own, any) {
            (Some(a), Some(b)) => Some(if a.seq >= b.seq { a } else { b }),
            (a, b) => a.or(b),
        };
        match latest {
            Some(c) => (c.granted && c.valid_until.is_none_or(|v| v > now))
                .then_some(InForce { granted_at: c.granted_at, valid_until: c.valid_until }),
            None => {
                let p = country.person_index(&subject)?;
                let granted_at = country.base_consent(p, consumer, scope)?;
                Some(InForce { granted_at, valid_until: None })
            }
        }
    }

    /// Records a grant (replacing any end date).
    pub fn grant(&mut self, subject: Iin, consumer: &str, scope: &str, now: i64, valid_until: Option<i64>) -> InForce {
        self.seq += 1;
        self.changes.insert(
            key(subject, consumer, scope),
            Change { seq: self.seq, granted: true, granted_at: now, valid_until },
        );
        InForce { granted_at: now, valid_until }
    }

    /// Withdraws a consent. Returns the revocation when one was in force (for "*": when any
    /// scope was), after revoking the unexpired tokens issued under it.
    pub fn revoke(
        &mut self,
        country: &Country,
        subject: Iin,
        consumer: &str,
        scope: &str,
        now: i64,
    ) -> Option<Revoked> {
        let scopes: Vec<&str> =
            if scope == ANY_SCOPE { SCOPES.iter().copied().chain([ANY_SCOPE]).collect() } else { vec![scope] };
        let was = scopes.iter().any(|s| self.in_force(country, subject, consumer, s, now).is_some());
        self.seq += 1;
        self.changes.insert(
            key(subject, consumer, scope),
            Change { seq: self.seq, granted: false, granted_at: now, valid_until: None },
        );
        if !was {
            return None;
        }
        let mut token_ids = Vec::new();
        let keys: Vec<Key> = if scope == ANY_SCOPE {
            let mut k: Vec<Key> =
                self.tokens.keys().filter(|(s, c, _)| *s == subject && c == consumer).cloned().collect();
            k.sort();
            k
        } else {
            vec![key(subject, consumer, scope)]
        };
        for k in keys {
            if let Some(list) = self.tokens.remove(&k) {
                token_ids.extend(list.into_iter().filter(|(_, exp)| *exp > now).map(|(id, _)| id));
            }
        }
        let r = Revoked { token_ids, subject, consumer: consumer.to_owned(), scope: scope.to_owned(), revoked_at: now };
        self.revocations.push(r.clone());
        Some(r)
    }

    /// A fresh token number (for deterministic token ids).
    pub fn next_token_number(&mut self) -> u64 {
        self.issued += 1;
        self.issued
    }

    /// Remembers a token issued under a consent, until it expires or is revoked.
    pub fn remember_token(
        &mut self,
        subject: Iin,
        consumer: &str,
        scope: &str,
        token_id: String,
        expires_at: i64,
        now: i64,
    ) {
        let list = self.tokens.entry(key(subject, consumer, scope)).or_default();
        list.retain(|(_, exp)| *exp > now);
        list.push((token_id, expires_at));
    }

    /// The expiries of the tokens remembered for (subject, consumer, scope): those issued
    /// since the last one that expired (a token of several scopes is under each).
    pub fn token_expiries(&self, subject: Iin, consumer: &str, scope: &str) -> Vec<i64> {
        self.tokens.get(&key(subject, consumer, scope)).map_or_else(Vec::new, |l| l.iter().map(|(_, e)| *e).collect())
    }

    /// The revocations, in order.
    pub fn revocations(&self) -> &[Revoked] {
        &self.revocations
    }

    /// Every recorded change, sorted (for exports): (subject, consumer, scope, granted,
    /// granted_at, valid_until).
    pub fn changes(&self) -> Vec<(Iin, String, String, bool, i64, Option<i64>)> {
        let mut v: Vec<_> = self
            .changes
            .iter()
            .map(|((s, c, sc), ch)| (*s, c.clone(), sc.clone(), ch.granted, ch.granted_at, ch.valid_until))
            .collect();
        v.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        v
    }
}
