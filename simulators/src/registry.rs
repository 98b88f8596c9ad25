//! The simulated registries: their system ids, default ports, services and methods.

/// One simulated registry (one node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Registry {
    GbdUl,
    GbdFl,
    Zags,
    ELicense,
    Bmg,
    Pep,
    Kdp,
}

impl Registry {
    /// Every registry, in the order of their default ports.
    pub const ALL: [Registry; 7] = [
        Registry::GbdUl,
        Registry::GbdFl,
        Registry::Zags,
        Registry::ELicense,
        Registry::Bmg,
        Registry::Pep,
        Registry::Kdp,
    ];

    /// The system id on the bus (and in the node's certificate).
    pub fn system_id(&self) -> &'static str {
        match self {
            Registry::GbdUl => "gbd-ul",
            Registry::GbdFl => "gbd-fl",
            Registry::Zags => "zags",
            Registry::ELicense => "e-license",
            Registry::Bmg => "bmg",
            Registry::Pep => "pep",
            Registry::Kdp => "kdp",
        }
    }

    /// The registry of a system id.
    pub fn from_system_id(id: &str) -> Option<Registry> {
        Registry::ALL.into_iter().find(|r| r.system_id() == id)
    }

    /// The default port: 7001 to 7007 in the order of [`Registry::ALL`].
    pub fn default_port(&self) -> u16 {
        7001 + Registry::ALL.iter().position(|r| r == self).unwrap_or(0) as u16
    }

    /// The full name of the gRPC service of the registry's contract.
    pub fn service(&self) -> &'static str {
        match self {
            Registry::GbdUl => "kz.gov.gbdul.v1.OrganizationRegistry",
            Registry::GbdFl => "kz.gov.gbdfl.v1.PersonRegistry",
            Registry::Zags => "kz.gov.zags.v1.CivilActRegistry",
            Registry::ELicense => "kz.gov.elicense.v1.PermitRegistry",
            Registry::Bmg => "kz.gov.bmg.v1.MobileRegistry",
            Registry::Pep => "kz.gov.pep.v1.Portal",
            Registry::Kdp => "kz.gov.kdp.v1.ConsentService",
        }
    }

    /// The method names of that service.
    pub fn methods(&self) -> &'static [&'static str] {
        match self {
            Registry::GbdUl => &["GetOrganization", "StreamNameChanges"],
            Registry::GbdFl => &["GetPerson", "GetPersons"],
            Registry::Zags => &["StreamActs", "GetPersonActs", "GetActsOfPersons"],
            Registry::ELicense => {
                &["ListPermits", "ListPermitsByBins", "GetPermit", "ReissuePermit", "ReissueOrganizationPermits", "ListCabinetNotifications"]
            }
            Registry::Bmg => &["GetMobileNumber", "GetMobileNumbers"],
            Registry::Pep => &["Notify", "NotifyMany", "StreamAnswers", "ListOutbox"],
            Registry::Kdp => &["IssueToken", "IssueTokens", "GetPublicKey", "GrantConsent", "RevokeConsent", "StreamRevocations"],
        }
    }

    /// The full gRPC paths of the methods ("/kz.gov.gbdfl.v1.PersonRegistry/GetPerson").
    pub fn method_paths(&self) -> Vec<String> {
        self.methods().iter().map(|m| format!("/{}/{m}", self.service())).collect()
    }
}

impl std::fmt::Display for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.system_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn ids_ports_and_methods_match_the_contracts() {
        assert_eq!(Registry::GbdUl.default_port(), 7001);
        assert_eq!(Registry::Kdp.default_port(), 7007);
        for r in Registry::ALL {
            assert_eq!(Registry::from_system_id(r.system_id()), Some(r));
        }
        let fds = prost_types::FileDescriptorSet::decode(shep_proto::FILE_DESCRIPTOR_SET).unwrap();
        for r in Registry::ALL {
            let (pkg, name) = r.service().rsplit_once('.').unwrap();
            let svc = fds
                .file
                .iter()
                .filter(|f| f.package() == pkg)
                .flat_map(|f| f.service.iter())
                .find(|s| s.name() == name)
                .unwrap_or_else(|| panic!("{} not in the contracts", r.service()));
            let methods: Vec<&str> = svc.method.iter().map(|m| m.name()).collect();
            assert_eq!(methods, r.methods(), "{r}");
        }
    }
}
