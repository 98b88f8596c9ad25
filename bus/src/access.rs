//! The access matrix: may this caller call this method?
//!
//! Rules are tried in order; the first whose caller and method patterns both match decides
//! (allow or deny). A call that no rule matches is refused by the implicit last rule
//! "deny everything else". A refusal names the rule that refused it.

use crate::config::{AccessRule, Effect};

/// Matches `text` against a pattern in which `*` stands for any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The refusing rule, as text: `access[3]: deny caller="x" method="y"`, or
    /// `default: deny (no rule allows it)`.
    pub rule: String,
}

/// The access matrix.
#[derive(Debug, Clone, Default)]
pub struct AccessMatrix {
    rules: Vec<AccessRule>,
}

impl AccessMatrix {
    pub fn new(rules: Vec<AccessRule>) -> Self {
        AccessMatrix { rules }
    }

    /// Decides on `caller` calling `method` (`package.Service/Method`). On allow, returns the
    /// index of the allowing rule.
    pub fn decide(&self, caller: &str, method: &str) -> Result<usize, Denial> {
        for (i, r) in self.rules.iter().enumerate() {
            if glob(&r.caller, caller) && glob(&r.method, method) {
                return match r.effect {
                    Effect::Allow => Ok(i),
                    Effect::Deny => Err(Denial {
                        rule: format!(
                            "access[{i}]: deny caller={:?} method={:?}",
                            r.caller, r.method
                        ),
                    }),
                };
            }
        }
        Err(Denial {
            rule: "default: deny (no access rule allows this caller this method)".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BusSettings;

    #[test]
    fn glob_matches() {
        assert!(glob("*", ""));
        assert!(glob("*", "anything/at all"));
        assert!(glob(
            "kz.gov.gbdfl.v1.PersonRegistry/*",
            "kz.gov.gbdfl.v1.PersonRegistry/GetPerson"
        ));
        assert!(!glob(
            "kz.gov.gbdfl.v1.PersonRegistry/*",
            "kz.gov.gbdfl.v1.PersonRegistryX/GetPerson"
        ));
        assert!(glob("*/Get*", "a.B/GetPerson"));
        assert!(!glob("*/Get*", "a.B/ListPermits"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(!glob("sdu", "sdu2"));
        assert!(glob("e-*", "e-license"));
    }

    #[test]
    fn first_match_decides_and_refusals_name_the_rule() {
        let m = AccessMatrix::new(vec![
            AccessRule {
                caller: "sdu".into(),
                method: "x.S/Secret".into(),
                effect: Effect::Deny,
            },
            AccessRule::allow("sdu", "x.S/*"),
        ]);
        assert_eq!(m.decide("sdu", "x.S/Get"), Ok(1));
        assert!(
            m.decide("sdu", "x.S/Secret")
                .unwrap_err()
                .rule
                .starts_with("access[0]: deny")
        );
        assert!(
            m.decide("pep", "x.S/Get")
                .unwrap_err()
                .rule
                .starts_with("default")
        );
    }

    #[test]
    fn default_topology_grants_exactly_the_algorithm() {
        let s = BusSettings::default_topology("127.0.0.1", &Default::default());
        let m = AccessMatrix::new(s.access);
        let ok = |c: &str, meth: &str| m.decide(c, meth).is_ok();
        assert!(ok("sdu", "kz.gov.gbdfl.v1.PersonRegistry/GetPerson"));
        assert!(ok("sdu", "kz.gov.elicense.v1.PermitRegistry/ReissuePermit"));
        assert!(ok("sdu", "kz.gov.kdp.v1.ConsentService/IssueToken"));
        assert!(ok("sdu", "kz.gov.pep.v1.Portal/Notify"));
        assert!(ok("sdu", "kz.gov.pep.v1.Portal/NotifyMany"));
        assert!(ok("sdu", "kz.gov.pep.v1.Portal/StreamAnswers"));
        assert!(!ok("sdu", "kz.gov.pep.v1.Portal/ListOutbox"));
        assert!(!ok("sdu", "kz.gov.bmg.v1.MobileRegistry/GetMobileNumber"));
        assert!(!ok("sdu", "kz.gov.kdp.v1.ConsentService/GrantConsent"));
        assert!(!ok("sdu", "kz.shep.v1.BusAdmin/VerifyAudit"));
        assert!(ok("pep", "kz.gov.bmg.v1.MobileRegistry/GetMobileNumber"));
        assert!(ok("pep", "kz.gov.kdp.v1.ConsentService/IssueToken"));
        assert!(!ok("pep", "kz.gov.gbdfl.v1.PersonRegistry/GetPerson"));
        assert!(ok(
            "expertiza",
            "kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization"
        ));
        assert!(ok("sur", "kz.gov.elicense.v1.PermitRegistry/ListPermits"));
        assert!(!ok(
            "sur",
            "kz.gov.elicense.v1.PermitRegistry/ReissuePermit"
        ));
        assert!(!ok("expertiza", "kz.gov.gbdfl.v1.PersonRegistry/GetPerson"));
        assert!(ok("operator", "kz.shep.v1.BusAdmin/VerifyAudit"));
        assert!(ok("operator", "kz.gov.kdp.v1.ConsentService/GrantConsent"));
        assert!(!ok(
            "gbd-fl",
            "kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization"
        ));
    }
}
