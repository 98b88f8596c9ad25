//! The mutable state of a simulation: everything scenarios and calls changed on top of the
//! generated country, one part per registry. `Reset` replaces it with the default.

pub mod consents;
pub mod orgs;
pub mod people;
pub mod permits;
pub mod sms;

/// Everything that changed since the start (or the last reset).
#[derive(Debug, Clone, Default)]
pub struct State {
    /// GBD FL and ZAGS.
    pub people: people::PeopleState,
    /// GBD UL.
    pub orgs: orgs::OrgState,
    /// e-license.
    pub permits: permits::PermitState,
    /// KDP.
    pub consents: consents::ConsentState,
    /// PEP.
    pub sms: sms::SmsState,
}
