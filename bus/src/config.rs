//! The bus's settings: section `[bus]` of the bus node's TOML.
//!
//! ```toml
//! [bus]
//! metrics_listen = "127.0.0.1:9000"
//!
//! [bus.systems.gbd-fl]
//! description = "ГБД ФЛ — state database of individuals"
//! endpoint = "https://127.0.0.1:7002"
//! services = ["kz.gov.gbdfl.v1.PersonRegistry"]
//!
//! [bus.systems.sdu]
//! description = "Smart Data Ukimet"
//!
//! [[bus.access]]
//! caller = "sdu"
//! method = "kz.gov.gbdfl.v1.PersonRegistry/*"
//!
//! [bus.audit]
//! path = "/var/lib/shep/bus-audit.sqlite"
//! ```
//!
//! [`BusSettings::default_topology`] builds the settings of the whole simulated country.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the bus needs besides the node settings (listen address, TLS, logging).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    /// The systems known to the bus, by system id (the id their certificates name). A
    /// system with an `endpoint` and `services` is an upstream: the bus routes those gRPC
    /// services to it. A system without is only a caller (a consumer such as "expertiza").
    #[serde(default)]
    pub systems: BTreeMap<String, SystemSettings>,
    /// The access matrix: which caller may call which method. Rules are tried in order
    /// and the first that matches decides; a call no rule matches is refused. See
    /// [`AccessRule`].
    #[serde(default)]
    pub access: Vec<AccessRule>,
    /// Per-caller limits (rate, concurrency) and the largest message.
    #[serde(default)]
    pub limits: LimitSettings,
    /// How consent tokens are verified (KDP's key, KDP's revocation feed).
    #[serde(default)]
    pub consent: ConsentSettings,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditSettings,
    /// Timeouts and health polling of upstreams.
    #[serde(default)]
    pub upstream: UpstreamSettings,
    /// Address of the plain-HTTP Prometheus endpoint (`GET /metrics`); port 0 picks one.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: SocketAddr,
    /// Extra encoded `FileDescriptorSet` files (beyond the built-in contracts) describing
    /// services the bus routes; every routed service must be described by one of them, so
    /// that its methods, identifier fields and personal-data options are known.
    #[serde(default)]
    pub descriptor_sets: Vec<PathBuf>,
}

/// One system registered on the bus.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSettings {
    /// A human-readable name, shown by `BusAdmin/ListSystems`.
    #[serde(default)]
    pub description: String,
    /// Where the bus reaches the system (`https://127.0.0.1:7002`); none for a system that
    /// only calls. The bus connects with mutual TLS and its own certificate.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Full names of the gRPC services the system serves and the bus routes to it
    /// (`kz.gov.gbdfl.v1.PersonRegistry`). Needs an `endpoint`.
    #[serde(default)]
    pub services: Vec<String>,
}

/// What an access rule does when it matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// The call may proceed (to the consent and field checks).
    #[default]
    Allow,
    /// The call is refused with PERMISSION_DENIED naming this rule.
    Deny,
}

/// One line of the access matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// The calling system id; `*` matches any characters (`"*"` every caller).
    pub caller: String,
    /// The method as `package.Service/Method`; `*` matches any characters
    /// (`"kz.gov.gbdfl.v1.PersonRegistry/*"`, `"*"`).
    pub method: String,
    /// Allow (default) or deny.
    #[serde(default)]
    pub effect: Effect,
}

impl AccessRule {
    /// An allow rule.
    pub fn allow(caller: &str, method: &str) -> AccessRule {
        AccessRule {
            caller: caller.to_owned(),
            method: method.to_owned(),
            effect: Effect::Allow,
        }
    }
}

/// Limits of one caller.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerLimits {
    /// Sustained calls per second (a token bucket refilled at this rate); 0 for no limit.
    #[serde(default = "default_rps")]
    pub requests_per_second: f64,
    /// Calls that may arrive at once above the sustained rate (the bucket's size); at
    /// least 1 when a rate is set.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Calls of this caller in flight at once (until their last response byte); 0 for no
    /// limit.
    #[serde(default = "default_concurrent")]
    pub max_concurrent: u32,
}

impl Default for CallerLimits {
    fn default() -> Self {
        CallerLimits {
            requests_per_second: default_rps(),
            burst: default_burst(),
            max_concurrent: default_concurrent(),
        }
    }
}

/// Limits of the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Limits of every caller without an entry in `per_caller`.
    #[serde(default)]
    pub default: CallerLimits,
    /// Limits of particular callers, by system id.
    #[serde(default)]
    pub per_caller: BTreeMap<String, CallerLimits>,
    /// Largest gRPC message (request or response) in bytes; a larger one ends the call
    /// with RESOURCE_EXHAUSTED (reason `MESSAGE_TOO_LARGE`).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            default: CallerLimits::default(),
            per_caller: BTreeMap::new(),
            max_message_bytes: default_max_message(),
        }
    }
}

impl LimitSettings {
    /// The limits that apply to `caller`.
    pub fn for_caller(&self, caller: &str) -> CallerLimits {
        self.per_caller.get(caller).copied().unwrap_or(self.default)
    }
}

/// Verification of KDP consent tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSettings {
    /// The system id of KDP among `systems`; its endpoint serves `GetPublicKey` and
    /// `StreamRevocations`.
    #[serde(default = "default_kdp")]
    pub kdp_system: String,
    /// When the revocation feed has been lost (or not yet caught up) for longer than
    /// this, in milliseconds, personal-data calls are refused (fail closed).
    #[serde(default = "default_stale_ms")]
    pub revocations_stale_after_ms: u64,
    /// How often KDP's public key is fetched again (key rotation), in milliseconds.
    #[serde(default = "default_key_refresh_ms")]
    pub key_refresh_ms: u64,
    /// Longest pause between two attempts to reach KDP, in milliseconds.
    #[serde(default = "default_retry_ms")]
    pub retry_max_ms: u64,
    /// The longest lifetime (expiry minus issue, in seconds) of a token the bus accepts;
    /// a longer-lived token is refused (`CONSENT_TOKEN_MALFORMED`). It bounds the
    /// revocations kept: a revocation at `t` can only apply to tokens issued at or before
    /// `t`, all expired after `t + max_token_lifetime_secs`, so it is dropped then.
    /// Default: KDP's own upper bound on `token_ttl_secs`, 366 days.
    #[serde(default = "default_max_token_lifetime")]
    pub max_token_lifetime_secs: u64,
}

fn default_max_token_lifetime() -> u64 {
    366 * 86_400
}

impl Default for ConsentSettings {
    fn default() -> Self {
        ConsentSettings {
            kdp_system: default_kdp(),
            revocations_stale_after_ms: default_stale_ms(),
            key_refresh_ms: default_key_refresh_ms(),
            retry_max_ms: default_retry_ms(),
            max_token_lifetime_secs: default_max_token_lifetime(),
        }
    }
}

/// How SQLite makes a commit durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync of the WAL at every commit: a committed record survives a power cut.
    #[default]
    Full,
    /// No fsync at commit (WAL): survives a crash of the process, not of the machine.
    Normal,
}

/// The audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// The SQLite archive (created when missing; WAL mode). The journal files
    /// (`<path>.journal.N`) and the lock file (`<path>.lock`) live beside it.
    #[serde(default = "default_audit_path")]
    pub path: PathBuf,
    /// Most records written to the journal at once (group commit).
    #[serde(default = "default_batch")]
    pub batch_max: usize,
    /// Records waiting for the writer at most; a call waits for room beyond it.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// Durability of a commit.
    #[serde(default)]
    pub synchronous: Synchronous,
    /// How long moving the journal into the archive waits for a lock on the archive held by
    /// another process (a reader), in milliseconds; past it the move is tried again at the
    /// next pass. Calls do not wait for it.
    #[serde(default = "default_busy_ms")]
    pub busy_timeout_ms: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            path: default_audit_path(),
            batch_max: default_batch(),
            queue_capacity: default_queue(),
            synchronous: Synchronous::Full,
            busy_timeout_ms: default_busy_ms(),
        }
    }
}

/// Upstream timeouts and health.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// TCP + TLS connect timeout, in milliseconds.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Deadline of a unary call whose caller sent no `grpc-timeout`, in milliseconds (so
    /// that a silent upstream never holds a call forever). Streaming calls without a
    /// deadline have none (they may follow a feed), but see `response_headers_timeout_ms`.
    #[serde(default = "default_unary_ms")]
    pub default_unary_timeout_ms: u64,
    /// For calls whose request is not a stream: how long the upstream may take to start its
    /// answer (response headers), in milliseconds, when the caller set no earlier deadline.
    #[serde(default = "default_headers_ms")]
    pub response_headers_timeout_ms: u64,
    /// How often each upstream's `grpc.health.v1.Health/Check` is polled, in milliseconds.
    #[serde(default = "default_health_ms")]
    pub health_interval_ms: u64,
    /// How often the connection to an upstream is pinged (HTTP/2 PING), in milliseconds.
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_interval_ms: u64,
    /// How long a ping may go unanswered before the connection is dropped (and made again
    /// by the next call), in milliseconds: an upstream behind a dead network path is
    /// otherwise only found out by each call's deadline.
    #[serde(default = "default_keepalive_timeout_ms")]
    pub keepalive_timeout_ms: u64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout_ms: default_connect_ms(),
            default_unary_timeout_ms: default_unary_ms(),
            response_headers_timeout_ms: default_headers_ms(),
            health_interval_ms: default_health_ms(),
            keepalive_interval_ms: default_keepalive_ms(),
            keepalive_timeout_ms: default_keepalive_timeout_ms(),
        }
    }
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000))
}
fn default_rps() -> f64 {
    1000.0
}
fn default_burst() -> u32 {
    2000
}
fn default_concurrent() -> u32 {
    256
}
fn default_max_message() -> usize {
    4 * 1024 * 1024
}
fn default_kdp() -> String {
    "kdp".into()
}
fn default_stale_ms() -> u64 {
    3000
}
fn default_key_refresh_ms() -> u64 {
    60_000
}
fn default_retry_ms() -> u64 {
    1000
}
fn default_audit_path() -> PathBuf {
    PathBuf::from("bus-audit.sqlite")
}
fn default_batch() -> usize {
    512
}
fn default_queue() -> usize {
    8192
}
fn default_busy_ms() -> u64 {
    2000
}
fn default_connect_ms() -> u64 {
    2000
}
fn default_unary_ms() -> u64 {
    30_000
}
fn default_headers_ms() -> u64 {
    30_000
}
fn default_health_ms() -> u64 {
    3000
}

fn default_keepalive_ms() -> u64 {
    10_000
}

fn default_keepalive_timeout_ms() -> u64 {
    5000
}

/// The upstream systems of the simulated country: id, description, default port, services.
const UPSTREAMS: &[(&str, &str, u16, &[&str])] = &[
    (
        "gbd-ul",
        "ГБД ЮЛ — state database of legal entities",
        7001,
        &["kz.gov.gbdul.v1.OrganizationRegistry"],
    ),
    (
        "gbd-fl",
        "ГБД ФЛ — state database of individuals",
        7002,
        &["kz.gov.gbdfl.v1.PersonRegistry"],
    ),
    (
        "zags",
        "ИС ЗАГС — civil registry acts",
        7003,
        &["kz.gov.zags.v1.CivilActRegistry"],
    ),
    (
        "e-license",
        "e-license — permits and the holder's personal cabinet",
        7004,
        &["kz.gov.elicense.v1.PermitRegistry"],
    ),
    (
        "bmg",
        "БМГ — base of mobile citizens",
        7005,
        &["kz.gov.bmg.v1.MobileRegistry"],
    ),
    (
        "pep",
        "ПЭП — e-government portal (SMS)",
        7006,
        &["kz.gov.pep.v1.Portal"],
    ),
    (
        "kdp",
        "КДП — control of access to personal data (consent tokens)",
        7007,
        &["kz.gov.kdp.v1.ConsentService"],
    ),
    (
        "sdu",
        "Smart Data Ukimet — orchestrator of proactive services",
        7010,
        &["kz.gov.sdu.v1.ProactiveService"],
    ),
];

/// Systems that only call.
const CONSUMERS: &[(&str, &str)] = &[
    ("expertiza", "Expertiza portal — reads GBD UL and e-license"),
    ("sur", "SUR — reads GBD UL and e-license"),
    (
        "operator",
        "operator of the bus (administration, every method)",
    ),
];

impl BusSettings {
    /// The settings of the whole simulated topology on `host`: every upstream at
    /// `https://host:PORT` (ports by system id; missing ones default to gbd-ul 7001,
    /// gbd-fl 7002, zags 7003, e-license 7004, bmg 7005, pep 7006, kdp 7007, sdu 7010; the
    /// key `metrics` sets the metrics port, default 9000), and the access matrix that the
    /// proactive algorithm needs and nothing more:
    ///
    /// - `sdu`: GBD UL, GBD FL, ZAGS, e-license (all methods), KDP `IssueToken` and
    ///   `IssueTokens`, PEP `Notify` and `StreamAnswers`;
    /// - `pep`: BMG `GetMobileNumber` and `GetMobileNumbers`, KDP `IssueToken` and
    ///   `IssueTokens`;
    /// - `expertiza`, `sur`: GBD UL (reads), e-license `ListPermits`, `ListPermitsByBins`,
    ///   `GetPermit`, `ListCabinetNotifications`;
    /// - `operator`: everything (including `BusAdmin`).
    pub fn default_topology(host: &str, ports: &BTreeMap<String, u16>) -> BusSettings {
        let mut systems = BTreeMap::new();
        for (id, description, port, services) in UPSTREAMS {
            let port = ports.get(*id).copied().unwrap_or(*port);
            systems.insert(
                id.to_string(),
                SystemSettings {
                    description: description.to_string(),
                    endpoint: Some(format!("https://{host}:{port}")),
                    services: services.iter().map(|s| s.to_string()).collect(),
                },
            );
        }
        for (id, description) in CONSUMERS {
            systems.insert(
                id.to_string(),
                SystemSettings {
                    description: description.to_string(),
                    endpoint: None,
                    services: vec![],
                },
            );
        }
        let mut access = vec![];
        for m in [
            "kz.gov.gbdul.v1.OrganizationRegistry/*",
            "kz.gov.gbdfl.v1.PersonRegistry/*",
            "kz.gov.zags.v1.CivilActRegistry/*",
            "kz.gov.elicense.v1.PermitRegistry/*",
            "kz.gov.kdp.v1.ConsentService/IssueToken",
            "kz.gov.kdp.v1.ConsentService/IssueTokens",
            "kz.gov.pep.v1.Portal/Notify",
            "kz.gov.pep.v1.Portal/NotifyMany",
            "kz.gov.pep.v1.Portal/StreamAnswers",
        ] {
            access.push(AccessRule::allow("sdu", m));
        }
        for m in [
            "kz.gov.bmg.v1.MobileRegistry/GetMobileNumber",
            "kz.gov.bmg.v1.MobileRegistry/GetMobileNumbers",
            "kz.gov.kdp.v1.ConsentService/IssueToken",
            "kz.gov.kdp.v1.ConsentService/IssueTokens",
        ] {
            access.push(AccessRule::allow("pep", m));
        }
        for consumer in ["expertiza", "sur"] {
            for m in [
                "kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization",
                "kz.gov.gbdul.v1.OrganizationRegistry/StreamNameChanges",
                "kz.gov.elicense.v1.PermitRegistry/ListPermits",
                "kz.gov.elicense.v1.PermitRegistry/ListPermitsByBins",
                "kz.gov.elicense.v1.PermitRegistry/GetPermit",
                "kz.gov.elicense.v1.PermitRegistry/ListCabinetNotifications",
            ] {
                access.push(AccessRule::allow(consumer, m));
            }
        }
        access.push(AccessRule::allow("operator", "*"));
        let metrics_port = ports.get("metrics").copied().unwrap_or(9000);
        let metrics_listen = format!("{host}:{metrics_port}")
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], metrics_port)));
        // The SDU's daily run and PEP's SMS are batch work of the platform itself: their
        // pace is set by their own concurrency, not by the limit meant for consumer systems.
        let batch = CallerLimits {
            requests_per_second: 50_000.0,
            burst: 100_000,
            max_concurrent: 1024,
        };
        let limits = LimitSettings {
            per_caller: ["sdu", "pep"].into_iter().map(|c| (c.to_string(), batch)).collect(),
            ..LimitSettings::default()
        };
        BusSettings {
            systems,
            access,
            limits,
            consent: ConsentSettings::default(),
            audit: AuditSettings::default(),
            upstream: UpstreamSettings::default(),
            metrics_listen,
            descriptor_sets: vec![],
        }
    }

    /// Checks what can be checked without the descriptors: system ids, endpoints, a
    /// service routed twice, the KDP system. The service names are checked against the
    /// descriptors at start.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, s) in &self.systems {
            shep_domain::SystemId::parse(id).map_err(|e| format!("bus.systems: {e}"))?;
            if !s.services.is_empty() && s.endpoint.is_none() {
                return Err(format!(
                    "bus.systems.{id}: serves {:?} but has no endpoint",
                    s.services
                ));
            }
            if let Some(ep) = &s.endpoint {
                let uri: http::Uri = ep
                    .parse()
                    .map_err(|e| format!("bus.systems.{id}.endpoint {ep:?}: {e}"))?;
                if uri.scheme_str() != Some("https") || uri.host().is_none() {
                    return Err(format!(
                        "bus.systems.{id}.endpoint {ep:?}: expected https://HOST:PORT"
                    ));
                }
            }
            for svc in &s.services {
                if let Some(other) = seen.insert(svc, id) {
                    return Err(format!("service {svc} is routed to both {other} and {id}"));
                }
            }
        }
        if self
            .systems
            .get(&self.consent.kdp_system)
            .is_none_or(|s| s.endpoint.is_none())
        {
            return Err(format!(
                "bus.consent.kdp_system = {:?} is not a system with an endpoint in bus.systems",
                self.consent.kdp_system
            ));
        }
        if self.consent.max_token_lifetime_secs == 0
            || self.consent.max_token_lifetime_secs > i64::MAX as u64 / 2
        {
            return Err("bus.consent.max_token_lifetime_secs must be at least 1 (and sane)".into());
        }
        for (i, r) in self.access.iter().enumerate() {
            if r.caller.is_empty() || r.method.is_empty() {
                return Err(format!(
                    "bus.access[{i}]: caller and method must not be empty"
                ));
            }
        }
        if self.limits.max_message_bytes < 64 {
            return Err("bus.limits.max_message_bytes must be at least 64".into());
        }
        if self.audit.batch_max == 0 || self.audit.queue_capacity == 0 {
            return Err("bus.audit.batch_max and queue_capacity must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_routes_every_registry_and_validates() {
        let ports = BTreeMap::from([
            ("gbd-fl".to_string(), 17002u16),
            ("metrics".to_string(), 19000),
        ]);
        let s = BusSettings::default_topology("127.0.0.1", &ports);
        s.validate().unwrap();
        assert_eq!(
            s.systems["gbd-fl"].endpoint.as_deref(),
            Some("https://127.0.0.1:17002")
        );
        assert_eq!(
            s.systems["gbd-ul"].endpoint.as_deref(),
            Some("https://127.0.0.1:7001")
        );
        assert_eq!(
            s.systems["kdp"].services,
            vec!["kz.gov.kdp.v1.ConsentService"]
        );
        assert!(s.systems["expertiza"].endpoint.is_none());
        assert_eq!(s.metrics_listen.port(), 19000);
        // Batch work of the platform is not held to a consumer's rate.
        assert_eq!(s.limits.for_caller("expertiza"), CallerLimits::default());
        assert!(s.limits.for_caller("sdu").requests_per_second >= 10.0 * CallerLimits::default().requests_per_second);
        assert_eq!(s.limits.for_caller("pep"), s.limits.for_caller("sdu"));
        // Round trip through TOML: what the CLI writes is what the bus reads.
        let text = toml::to_string(&s).unwrap();
        let back: BusSettings = toml::from_str(&text).unwrap();
        assert_eq!(back.access, s.access);
    }

    #[test]
    fn the_batched_permit_look_up_is_granted_like_list_permits() {
        let s = BusSettings::default_topology("127.0.0.1", &BTreeMap::new());
        let m = crate::access::AccessMatrix::new(s.access);
        let by_bins = "kz.gov.elicense.v1.PermitRegistry/ListPermitsByBins";
        let one = "kz.gov.elicense.v1.PermitRegistry/ListPermits";
        for caller in ["sdu", "expertiza", "sur", "operator", "pep", "gbd-ul"] {
            assert_eq!(
                m.decide(caller, by_bins).is_ok(),
                m.decide(caller, one).is_ok(),
                "{caller}"
            );
        }
        assert!(m.decide("sdu", by_bins).is_ok() && m.decide("sur", by_bins).is_ok());
        assert!(m.decide("pep", by_bins).is_err());
        // The SDU's batch look-ups of tokens and persons: the SDU only.
        for batch in [
            "kz.gov.kdp.v1.ConsentService/IssueTokens",
            "kz.gov.gbdfl.v1.PersonRegistry/GetPersons",
            "kz.gov.zags.v1.CivilActRegistry/GetActsOfPersons",
        ] {
            assert!(m.decide("sdu", batch).is_ok(), "{batch}");
            for other in ["expertiza", "sur"] {
                assert!(m.decide(other, batch).is_err(), "{other} {batch}");
            }
        }
        // PEP's: its tokens and the phones, in batches as one by one.
        let phones = "kz.gov.bmg.v1.MobileRegistry/GetMobileNumbers";
        assert!(m.decide("pep", phones).is_ok() && m.decide("sdu", phones).is_err());
        assert!(m.decide("pep", "kz.gov.kdp.v1.ConsentService/IssueTokens").is_ok());
        assert!(m.decide("pep", "kz.gov.gbdfl.v1.PersonRegistry/GetPersons").is_err());
    }

    #[test]
    fn unknown_fields_and_bad_settings_are_refused() {
        let e =
            toml::from_str::<BusSettings>("[systems.x]\nendpoit = \"https://a:1\"\n").unwrap_err();
        assert!(e.to_string().contains("endpoit"), "{e}");
        let mut s = BusSettings::default_topology("127.0.0.1", &BTreeMap::new());
        s.systems
            .get_mut("bmg")
            .unwrap()
            .services
            .push("kz.gov.gbdfl.v1.PersonRegistry".into());
        assert!(s.validate().unwrap_err().contains("routed to both"));
        let mut s = BusSettings::default_topology("127.0.0.1", &BTreeMap::new());
        s.systems.get_mut("bmg").unwrap().endpoint = Some("http://127.0.0.1:1".into());
        assert!(s.validate().unwrap_err().contains("https"));
        let mut s = BusSettings::default_topology("127.0.0.1", &BTreeMap::new());
        s.consent.kdp_system = "nobody".into();
        assert!(s.validate().unwrap_err().contains("kdp_system"));
    }

    #[test]
    fn minimal_toml_takes_defaults() {
        let s: BusSettings = toml::from_str(
            r#"
[systems.kdp]
endpoint = "https://127.0.0.1:7007"
services = ["kz.gov.kdp.v1.ConsentService"]
[[access]]
caller = "sdu"
method = "kz.gov.kdp.v1.ConsentService/IssueToken"
"#,
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.access[0].effect, Effect::Allow);
        assert_eq!(s.limits.for_caller("sdu"), CallerLimits::default());
        assert_eq!(s.audit.synchronous, Synchronous::Full);
    }
}
