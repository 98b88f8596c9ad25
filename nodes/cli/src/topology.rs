//! The whole topology in one process: the simulated registries, the bus in front of them
//! and the SDU node (unless `start_sdu = false`: then it runs as its own process, `shep node
//! sdu`), each a real mTLS gRPC node on its own port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use shep_bus::BusSettings;
use shep_pki::{DEFAULT_SYSTEMS, DEFAULT_VALIDITY_DAYS, Pki, Validity};
use shep_runtime::{LogConfig, NodeConfig, Shutdown, TlsConfig};
use shep_sdu::{SduHandle, SduSettings};
use shep_simulators::{PepLinks, Registry, SimSettings, Simulation};

/// The clock of the simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClockKind {
    /// Real time.
    #[default]
    System,
    /// Starts at the simulation's `today`, 09:00 Asia/Almaty, and moves only when a tester
    /// advances it (Scenario/AdvanceClock).
    Manual,
}

/// Who may call a registry directly: the bus, and the `operator` identity for diagnostics.
pub const REGISTRY_CALLERS: &[&str] = &["bus", "operator"];

/// Default ports by system id.
pub const DEFAULT_PORTS: &[(&str, u16)] = &[
    ("bus", 7000),
    ("gbd-ul", 7001),
    ("gbd-fl", 7002),
    ("zags", 7003),
    ("e-license", 7004),
    ("bmg", 7005),
    ("pep", 7006),
    ("kdp", 7007),
    ("sdu", 7010),
    ("metrics", 9000),
];

/// The configuration of `shep up` (file `--config`, or defaults, then `SHEP__` overrides).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopologyConfig {
    /// The address every node listens on ("127.0.0.1").
    pub host: String,
    /// The dev PKI; generated there on the first run.
    pub pki_dir: PathBuf,
    /// Where nodes keep their state (the bus's audit log, the SDU's cases).
    pub data_dir: PathBuf,
    /// Port by system id (bus, gbd-ul, gbd-fl, zags, e-license, bmg, pep, kdp, sdu,
    /// metrics); systems not listed keep their default; 0 picks a free port.
    pub ports: BTreeMap<String, u16>,
    /// Logging of every node.
    pub log: LogConfig,
    /// The synthetic country.
    pub sim: SimSettings,
    /// `system` or `manual`.
    pub clock: ClockKind,
    /// The bus; by default routes to this topology's nodes with the default access matrix.
    pub bus: Option<BusSettings>,
    /// The SDU node; `bus_url` is set to this topology's bus, `db` defaults to
    /// `data_dir/sdu.sqlite`.
    pub sdu: SduSettings,
    /// Start the SDU node in this process (default). With `false` the topology is the
    /// registries and the bus only, and the SDU runs as its own process (`shep node sdu`,
    /// `clock = "scenario"` to follow a manual clock); the bus still routes to its port.
    pub start_sdu: bool,
    /// The durability of the default bus's audit log (ignored with a `[bus]` section, which
    /// says it in `audit.synchronous`): `full` (default: fsync per group commit, a power cut
    /// loses no answered call's record) or `normal` (a power cut can lose the last ones).
    pub audit_synchronous: shep_bus::config::Synchronous,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            host: "127.0.0.1".into(),
            pki_dir: PathBuf::from("var/pki"),
            data_dir: PathBuf::from("var/data"),
            ports: BTreeMap::new(),
            log: LogConfig::default(),
            sim: SimSettings::default(),
            clock: ClockKind::System,
            bus: None,
            sdu: SduSettings::default(),
            start_sdu: true,
            audit_synchronous: shep_bus::config::Synchronous::Full,
        }
    }
}

impl TopologyConfig {
    /// Every port, defaults filled in, free ports chosen for 0 (except the registries', which
    /// bind port 0 themselves: nothing needs their port before they listen); unknown names
    /// refused.
    fn resolve_ports(&self) -> anyhow::Result<BTreeMap<String, u16>> {
        for name in self.ports.keys() {
            if !DEFAULT_PORTS.iter().any(|(n, _)| n == name) {
                let known: Vec<&str> = DEFAULT_PORTS.iter().map(|(n, _)| *n).collect();
                bail!("unknown system {name:?} in [ports]; known: {}", known.join(", "));
            }
        }
        let mut out = BTreeMap::new();
        for (name, default) in DEFAULT_PORTS {
            let port = match self.ports.get(*name).copied().unwrap_or(*default) {
                0 if Registry::ALL.iter().any(|r| r.system_id() == *name) => 0,
                0 => free_port(&self.host)?,
                p => p,
            };
            out.insert(name.to_string(), port);
        }
        Ok(out)
    }

    /// All ports 0: every node on a free port (tests, several topologies side by side).
    pub fn with_free_ports(mut self) -> Self {
        self.ports = DEFAULT_PORTS.iter().map(|(n, _)| (n.to_string(), 0)).collect();
        self
    }
}

fn free_port(host: &str) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((host, 0)).with_context(|| format!("cannot bind {host}:0"))?;
    Ok(l.local_addr()?.port())
}

/// Makes sure the PKI exists with a certificate for every system; creates what is missing.
pub fn ensure_pki(dir: &Path) -> anyhow::Result<(Pki, bool)> {
    if !dir.join("ca.pem").exists() {
        let pki = Pki::init(dir, DEFAULT_SYSTEMS, false)?;
        return Ok((pki, true));
    }
    let pki = Pki::open(dir)?;
    for name in DEFAULT_SYSTEMS {
        if !pki.paths(name).cert.exists() {
            pki.issue(name, Validity::days(DEFAULT_VALIDITY_DAYS), true)?;
        }
    }
    Ok((pki, false))
}

/// One node of a running topology.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub system: String,
    pub addr: SocketAddr,
    pub services: Vec<String>,
}

/// A running topology.
pub struct Topology {
    pub nodes: Vec<NodeInfo>,
    pub sim: Arc<Simulation>,
    pub pki: Pki,
    pub pki_created: bool,
    pub shutdown: Shutdown,
    pub bus_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    /// The SDU node's handle (start runs, read reports); none when the SDU runs as its own
    /// process (`start_sdu = false`).
    pub sdu: Option<SduHandle>,
    /// Where the bus expects the SDU node (its route for `kz.gov.sdu.v1.ProactiveService`).
    pub sdu_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

fn client_host(host: &str) -> &str {
    match host {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        h => h,
    }
}

impl Topology {
    /// Starts every node and returns once all listen.
    pub async fn start(cfg: TopologyConfig, shutdown: Shutdown) -> anyhow::Result<Topology> {
        let mut ports = cfg.resolve_ports()?;
        let (pki, pki_created) = ensure_pki(&cfg.pki_dir)
            .with_context(|| format!("preparing the dev PKI in {}", cfg.pki_dir.display()))?;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating the data directory {}", cfg.data_dir.display()))?;
        let host = cfg.host.clone();
        let chost = client_host(&host).to_owned();
        let node_cfg = |system: &str, port: u16| -> anyhow::Result<NodeConfig> {
            let listen: SocketAddr = format!("{host}:{port}")
                .parse()
                .with_context(|| format!("bad host {host:?}"))?;
            let mut c = NodeConfig::from_pki_dir(system, listen, pki.dir());
            c.log = cfg.log.clone();
            Ok(c)
        };
        let bus_url = format!("https://{chost}:{}", ports["bus"]);
        let sim = Simulation::new(cfg.sim.clone(), clock(cfg.clock));
        close_streams_on_shutdown(&sim, &shutdown);

        let mut nodes = vec![];
        let mut tasks = vec![];
        for reg in Registry::ALL {
            let system = reg.system_id();
            let links = if matches!(reg, Registry::Pep) {
                let tls = TlsConfig::from_pki_dir(pki.dir(), system);
                let ch = shep_runtime::tls::channel(&tls, &bus_url)?;
                Some(PepLinks { bmg: ch.clone(), kdp: ch })
            } else {
                None
            };
            let mut cfg_reg = node_cfg(system, ports[system])?;
            // Registries sit behind the bus: only the bus and people may call them.
            cfg_reg.allowed_callers = REGISTRY_CALLERS.iter().map(|s| s.to_string()).collect();
            let running = shep_simulators::node(reg, sim.clone(), cfg_reg, links)
                .start(shutdown.clone())
                .await?;
            ports.insert(system.to_owned(), running.addr.port());
            nodes.push(NodeInfo { system: system.into(), addr: running.addr, services: running.services.clone() });
            tasks.push(tokio::spawn(async move { running.wait().await.map_err(anyhow::Error::from) }));
        }

        let settings = match cfg.bus.clone() {
            Some(s) => s,
            None => {
                let mut s = bus_settings(&chost, &ports);
                s.audit.path = cfg.data_dir.join("audit.sqlite");
                s.audit.synchronous = cfg.audit_synchronous;
                s
            }
        };
        let sim_now = sim.clone();
        let token_clock: shep_bus::TokenClock = Arc::new(move || sim_now.now());
        let bus = shep_bus::start_with_token_clock(node_cfg("bus", ports["bus"])?, settings, shutdown.clone(), token_clock).await?;
        let bus_addr = bus.addr;
        let metrics_addr = bus.metrics_addr;
        nodes.insert(0, NodeInfo { system: "bus".into(), addr: bus.addr, services: bus.services().to_vec() });
        tasks.push(tokio::spawn(async move { bus.wait().await.map_err(anyhow::Error::from) }));

        let mut sdu_addr = node_cfg("sdu", ports["sdu"])?.listen;
        let mut sdu_handle = None;
        if cfg.start_sdu {
            let mut sdu_settings = cfg.sdu.clone();
            sdu_settings.bus_url = bus_url.clone();
            if sdu_settings.db.as_os_str().is_empty() || sdu_settings.db == SduSettings::default().db {
                sdu_settings.db = cfg.data_dir.join("sdu.sqlite");
            }
            let sdu_clock: Arc<dyn shep_sdu::Clock> = Arc::new(SimulationClock(sim.clone()));
            let sdu = shep_sdu::start(node_cfg("sdu", ports["sdu"])?, sdu_settings, sdu_clock, shutdown.clone()).await?;
            sdu_handle = Some(sdu.handle.clone());
            sdu_addr = sdu.addr;
            nodes.push(NodeInfo { system: "sdu".into(), addr: sdu.addr, services: sdu.services.clone() });
            tasks.push(tokio::spawn(async move { sdu.wait().await.map_err(anyhow::Error::from) }));
        }

        Ok(Topology {
            nodes,
            sim,
            pki,
            pki_created,
            shutdown,
            bus_addr,
            metrics_addr: Some(metrics_addr),
            data_dir: cfg.data_dir.clone(),
            sdu: sdu_handle,
            sdu_addr,
            tasks,
        })
    }

    /// Where the nodes keep their state.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A table of what listens where, and how to reach it with grpcurl.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if self.pki_created {
            let _ = writeln!(s, "generated a development PKI in {}", self.pki.dir().display());
        }
        let _ = writeln!(s, "{:<10} {:<22} services", "system", "listens on (mTLS)");
        for n in &self.nodes {
            let services: Vec<&str> = n
                .services
                .iter()
                .map(String::as_str)
                .filter(|s| !s.starts_with("grpc."))
                .collect();
            let _ = writeln!(s, "{:<10} {:<22} {}", n.system, n.addr.to_string(), services.join(", "));
        }
        if self.sdu.is_none() {
            let _ = writeln!(
                s,
                "{:<10} {:<22} not started here: run `shep node sdu --config FILE` (clock = \"scenario\")",
                "sdu",
                self.sdu_addr.to_string()
            );
        }
        if let Some(m) = self.metrics_addr {
            let _ = writeln!(s, "{:<10} {:<22} Prometheus metrics at http://{m}/metrics", "metrics", m.to_string());
        }
        let d = self.pki.dir().display();
        let _ = writeln!(
            s,
            "\ntry: grpcurl -cacert {d}/ca.pem -cert {d}/operator.pem -key {d}/operator.key {} list",
            self.bus_addr
        );
        s
    }

    /// Waits until every node has stopped (after the shutdown signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        let mut first_err = None;
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(e.into());
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Stops every node and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.wait().await
    }
}

/// The bus of a topology: [`BusSettings::default_topology`], plus the simulators'
/// `kz.shep.sim.v1.Scenario` routed to GBD UL (every simulator of a topology serves the same
/// simulation), callable through the bus by the operator and, for `GetClock` only, by the
/// SDU: an SDU process of its own follows a manual clock that way.
pub fn bus_settings(host: &str, ports: &BTreeMap<String, u16>) -> BusSettings {
    let mut s = BusSettings::default_topology(host, ports);
    if let Some(gbd_ul) = s.systems.get_mut("gbd-ul") {
        gbd_ul.services.push(SCENARIO_SERVICE.to_owned());
    }
    s.access.insert(0, shep_bus::config::AccessRule::allow("sdu", &format!("{SCENARIO_SERVICE}/GetClock")));
    s
}

/// The simulators' scenario control.
pub const SCENARIO_SERVICE: &str = "kz.shep.sim.v1.Scenario";

/// The simulation's clock for a `clock` setting.
pub fn clock(kind: ClockKind) -> shep_simulators::Clock {
    match kind {
        ClockKind::System => shep_simulators::Clock::System,
        ClockKind::Manual => shep_simulators::Clock::manual(),
    }
}

/// Ends the simulators' following streams when the shutdown starts, so that a stop does
/// not wait out the grace period on streams that never end by themselves.
pub fn close_streams_on_shutdown(sim: &Arc<Simulation>, shutdown: &Shutdown) {
    let (sim, shutdown) = (sim.clone(), shutdown.clone());
    tokio::spawn(async move {
        shutdown.wait().await;
        sim.close_streams();
    });
}

/// The SDU reads the simulation's clock, so that a manual clock moves both together.
pub struct SimulationClock(pub Arc<Simulation>);

impl shep_sdu::Clock for SimulationClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_second(self.0.now()).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}
