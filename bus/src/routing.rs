//! The routing table: which system serves which gRPC service, and where.

use std::collections::BTreeMap;

use crate::config::BusSettings;

/// A gRPC method named by a request path `/package.Service/Method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodPath<'a> {
    /// `package.Service`.
    pub service: &'a str,
    /// `Method`.
    pub method: &'a str,
}

impl<'a> MethodPath<'a> {
    /// Parses a request path (`/kz.gov.gbdfl.v1.PersonRegistry/GetPerson`) or an envelope
    /// service id (the same with or without the leading `/`). `None` when it is not
    /// `service/method` with both parts non-empty and no further `/`.
    pub fn parse(path: &'a str) -> Option<MethodPath<'a>> {
        let p = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = p.split_once('/')?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        };
        (ok(service) && ok(method) && !service.starts_with('.'))
            .then_some(MethodPath { service, method })
    }

    /// `package.Service/Method`, the form the access matrix matches.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.service, self.method)
    }

    /// `/package.Service/Method`, the HTTP/2 path and the form the audit records.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// Where a routed service lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The system id ("gbd-fl").
    pub system: String,
    /// Its endpoint ("https://127.0.0.1:7002").
    pub endpoint: String,
}

/// Service name → upstream.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: BTreeMap<String, Upstream>,
}

impl RouteTable {
    /// The routes of the settings (systems with an endpoint and services).
    pub fn from_settings(settings: &BusSettings) -> RouteTable {
        let mut routes = BTreeMap::new();
        for (id, s) in &settings.systems {
            let Some(endpoint) = &s.endpoint else {
                continue;
            };
            for svc in &s.services {
                routes.insert(
                    svc.clone(),
                    Upstream {
                        system: id.clone(),
                        endpoint: endpoint.clone(),
                    },
                );
            }
        }
        RouteTable { routes }
    }

    /// The upstream serving `service`, if routed.
    pub fn lookup(&self, service: &str) -> Option<&Upstream> {
        self.routes.get(service)
    }

    /// Every route, sorted by service.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Upstream)> {
        self.routes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The routed service names, sorted.
    pub fn services(&self) -> Vec<String> {
        self.routes.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_service_ids() {
        let p = MethodPath::parse("/kz.gov.gbdfl.v1.PersonRegistry/GetPerson").unwrap();
        assert_eq!(
            (p.service, p.method),
            ("kz.gov.gbdfl.v1.PersonRegistry", "GetPerson")
        );
        assert_eq!(
            MethodPath::parse("kz.gov.gbdfl.v1.PersonRegistry/GetPerson"),
            Some(p.clone())
        );
        assert_eq!(p.path(), "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson");
        assert_eq!(p.qualified(), "kz.gov.gbdfl.v1.PersonRegistry/GetPerson");
        for bad in ["", "/", "/a", "/a/", "//b", "/a/b/c", "/a b/c", "x"] {
            assert_eq!(MethodPath::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes_from_default_topology() {
        let s = BusSettings::default_topology("127.0.0.1", &Default::default());
        let t = RouteTable::from_settings(&s);
        let u = t.lookup("kz.gov.gbdfl.v1.PersonRegistry").unwrap();
        assert_eq!(u.system, "gbd-fl");
        assert_eq!(u.endpoint, "https://127.0.0.1:7002");
        assert!(t.lookup("kz.shep.v1.BusAdmin").is_none());
        assert_eq!(t.services().len(), 8);
    }
}
