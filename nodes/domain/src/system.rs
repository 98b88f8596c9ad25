use std::fmt;

/// The id of a system on the bus ("gbd-fl", "sdu", "operator"): lower-case ASCII letters,
/// digits and '-', 1 to 63 characters, starting with a letter. It is what a certificate
/// names (CN and the SAN URI `urn:shep:system:<id>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SystemId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid system id {0:?}: use 1-63 lower-case letters, digits or '-', starting with a letter")]
pub struct SystemIdError(pub String);

/// The URI prefix of the SAN that carries a system id in a certificate.
pub const SYSTEM_URI_PREFIX: &str = "urn:shep:system:";

impl SystemId {
    pub fn parse(s: &str) -> Result<Self, SystemIdError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if ok { Ok(SystemId(s.to_owned())) } else { Err(SystemIdError(s.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SAN URI that names this system in a certificate.
    pub fn uri(&self) -> String {
        format!("{SYSTEM_URI_PREFIX}{}", self.0)
    }

    /// Reads a system id back from a SAN URI; `None` when the URI is not ours.
    pub fn from_uri(uri: &str) -> Option<Self> {
        uri.strip_prefix(SYSTEM_URI_PREFIX).and_then(|s| SystemId::parse(s).ok())
    }
}

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SystemId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips_uri() {
        let id = SystemId::parse("gbd-fl").unwrap();
        assert_eq!(id.uri(), "urn:shep:system:gbd-fl");
        assert_eq!(SystemId::from_uri(&id.uri()), Some(id));
        for bad in ["", "GBD", "1abc", "a b", "a_b", &"a".repeat(64)] {
            assert!(SystemId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(SystemId::from_uri("spiffe://x/gbd-fl"), None);
    }
}
