//! A topology of the seven simulator nodes on 127.0.0.1 with a PKI in a temporary
//! directory, sharing one simulation; PEP reaches BMG and KDP directly.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use shep_runtime::{NodeConfig, RunningNode, Shutdown, TlsConfig};
use shep_simulators::{Clock, PepLinks, Registry, SimSettings, Simulation};
use tonic::transport::Channel;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub sim: Arc<Simulation>,
    pub shutdown: Shutdown,
    pub ports: BTreeMap<Registry, u16>,
    _nodes: Vec<RunningNode>,
}

/// Small settings that generate fast in debug builds.
pub fn small() -> SimSettings {
    SimSettings { individuals: 4_000, organizations: 400, ..SimSettings::default() }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(small()).await
    }

    pub async fn start_with(settings: SimSettings) -> Harness {
        shep_runtime::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        shep_pki::Pki::init(dir.path(), shep_pki::DEFAULT_SYSTEMS, false).expect("pki");
        let sim = Simulation::try_new(settings, Clock::manual()).expect("settings");
        let shutdown = Shutdown::new();
        let mut ports = BTreeMap::new();
        let mut nodes = Vec::new();
        for r in Registry::ALL.into_iter().filter(|r| *r != Registry::Pep) {
            let cfg = NodeConfig::from_pki_dir(r.system_id(), "127.0.0.1:0".parse().unwrap(), dir.path());
            let node =
                shep_simulators::node(r, sim.clone(), cfg, None).start(shutdown.clone()).await.expect("node starts");
            ports.insert(r, node.addr.port());
            nodes.push(node);
        }
        let pep_tls = TlsConfig::from_pki_dir(dir.path(), "pep");
        let links = PepLinks {
            bmg: shep_runtime::tls::channel(&pep_tls, &format!("https://127.0.0.1:{}", ports[&Registry::Bmg])).unwrap(),
            kdp: shep_runtime::tls::channel(&pep_tls, &format!("https://127.0.0.1:{}", ports[&Registry::Kdp])).unwrap(),
        };
        let cfg = NodeConfig::from_pki_dir("pep", "127.0.0.1:0".parse().unwrap(), dir.path());
        let node = shep_simulators::node(Registry::Pep, sim.clone(), cfg, Some(links))
            .start(shutdown.clone())
            .await
            .expect("pep starts");
        ports.insert(Registry::Pep, node.addr.port());
        nodes.push(node);
        Harness { dir, sim, shutdown, ports, _nodes: nodes }
    }

    /// A channel to a node, presenting the certificate of `system` ("sdu", "operator").
    pub fn channel(&self, r: Registry, system: &str) -> Channel {
        let tls = TlsConfig::from_pki_dir(self.dir.path(), system);
        shep_runtime::tls::channel(&tls, &format!("https://127.0.0.1:{}", self.ports[&r])).expect("channel")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The IIN of the first generated person for whom `f` holds.
pub fn person_where(h: &Harness, f: impl Fn(u32) -> bool) -> String {
    let c = h.sim.country();
    let p = (0..c.persons().len() as u32).find(|&i| f(i)).expect("such a person");
    c.persons()[p as usize].iin.to_string()
}

/// The first generated active permit held by an organization: (the holder's BIN, the
/// permit number).
pub fn active_org_permit(h: &Harness) -> (String, String) {
    use shep_proto::elicense::PermitStatus;
    use shep_simulators::country::HolderRef;
    let c = h.sim.country();
    let (index, permit, o) = c
        .permits()
        .iter()
        .enumerate()
        .find_map(|(i, p)| match p.holder {
            HolderRef::Org(o) if p.status == PermitStatus::Active => Some((i, p, o)),
            _ => None,
        })
        .expect("an active permit of an organization");
    let number = shep_simulators::country::permit_number(permit.region, permit.service, index as u32 + 1);
    (c.orgs()[o as usize].bin.to_string(), number)
}

/// The BadRequest field violations of a status, as (field, description).
pub fn violations(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_details_bad_request().map(|b| b.field_violations.into_iter().map(|v| v.field).collect()).unwrap_or_default()
}

/// The ErrorInfo reason of a status.
pub fn reason(s: &tonic::Status) -> String {
    shep_runtime::status::reason(s)
}

/// Collects a server stream.
pub async fn collect<T>(mut s: tonic::Streaming<T>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(x) = s.message().await.expect("stream item") {
        out.push(x);
    }
    out
}
