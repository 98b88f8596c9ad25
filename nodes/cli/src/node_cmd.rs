//! `shep node NAME --config FILE`: one node alone, as a deployment runs one node per host.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;
use serde::Deserialize;
use shep_bus::BusSettings;
use shep_runtime::{NodeConfig, Shutdown, TlsConfig};
use shep_simulators::{PepLinks, Registry, SimSettings, Simulation};

use crate::exit::{CONFIG, Failure, WithCode};

#[derive(Args)]
pub struct NodeArgs {
    /// bus, gbd-ul, gbd-fl, zags, e-license, bmg, pep, kdp or sdu
    name: String,
    /// The node's config file (print an example with `shep example-config NAME`)
    #[arg(long, short)]
    config: PathBuf,
}

/// The config file of one node.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    /// What every node has: system id, listen address, TLS files, logging, limits.
    node: NodeConfig,
    /// The synthetic country (simulators only); every simulator host must use the same
    /// settings so that they simulate the same country.
    #[serde(default)]
    sim: SimSettings,
    /// `system` or `manual` clock (simulators only).
    #[serde(default)]
    clock: shep_cli::topology::ClockKind,
    /// Where PEP reaches BMG and KDP: the bus (PEP only).
    #[serde(default)]
    pep: Option<PepSection>,
    /// The bus's routes, access matrix, consent, audit and metrics (bus only).
    #[serde(default)]
    bus: Option<BusSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PepSection {
    /// The bus URL, e.g. "https://bus.internal:7000".
    bus_url: String,
}

pub async fn run(a: NodeArgs) -> Result<(), Failure> {
    if a.name == "sdu" {
        return crate::sdu_node::run(&a.config).await;
    }
    let file: NodeFile = shep_runtime::config::load(Some(&a.config), std::env::vars()).code(CONFIG)?;
    shep_runtime::logging::init(&file.node.log);
    if file.node.system != a.name {
        return Err(anyhow!(
            "{} configures system {:?} but you asked for node {:?}",
            a.config.display(),
            file.node.system,
            a.name
        ))
        .code(CONFIG);
    }
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    if a.name == "bus" {
        let settings = file
            .bus
            .ok_or_else(|| anyhow!("the bus needs a [bus] section in {}", a.config.display()))
            .code(CONFIG)?;
        let bus = shep_bus::start(file.node, settings, shutdown).await.code(CONFIG)?;
        println!("bus listening on {}", bus.addr);
        bus.wait().await?;
        return Ok(());
    }
    let reg = Registry::ALL
        .into_iter()
        .find(|r| r.system_id() == a.name)
        .ok_or_else(|| anyhow!("unknown node {:?}; known: bus, {}, sdu", a.name, registry_names()))
        .code(CONFIG)?;
    let links = match (reg, &file.pep) {
        (Registry::Pep, Some(p)) => {
            let tls: &TlsConfig = &file.node.tls;
            let ch = shep_runtime::tls::channel(tls, &p.bus_url).code(CONFIG)?;
            Some(PepLinks { bmg: ch.clone(), kdp: ch })
        }
        (Registry::Pep, None) => {
            return Err(anyhow!("PEP needs a [pep] section with bus_url in {}", a.config.display())).code(CONFIG);
        }
        _ => None,
    };
    let sim = Simulation::new(file.sim, shep_cli::topology::clock(file.clock));
    shep_cli::topology::close_streams_on_shutdown(&sim, &shutdown);
    let node = shep_simulators::node(reg, sim, file.node, links).start(shutdown).await.code(CONFIG)?;
    println!("{} listening on {}", node.system, node.addr);
    node.wait().await?;
    Ok(())
}

fn registry_names() -> String {
    Registry::ALL.iter().map(|r| r.system_id()).collect::<Vec<_>>().join(", ")
}

/// `shep example-config NAME`.
pub fn example(name: &str, pki: &Path) -> Result<(), Failure> {
    let port = shep_cli::topology::DEFAULT_PORTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p);
    let d = pki.display();
    let common = |system: &str, port: u16, top: &str| {
        let callers = if system == "bus" { String::new() } else { "\"bus\", \"operator\"".to_owned() };
        format!(
            r#"# shep node {system} --config THIS_FILE
# Every setting can be overridden from the environment: SHEP__NODE__LISTEN=0.0.0.0:{port}
{top}
[node]
# The system id; must be the one its certificate names (CN and SAN urn:shep:system:{system}).
system = "{system}"
# Address to listen on; port 0 picks a free port.
listen = "0.0.0.0:{port}"
# Systems allowed to call this node (by certificate); empty allows every system of the CA.
allowed_callers = [{callers}]

[node.tls]
# CA bundle that client certificates must chain to.
ca = "{d}/ca.pem"
# This node's certificate and key (PEM). Re-read when they change on disk.
cert = "{d}/{system}.pem"
key = "{d}/{system}.key"
# The CA's CRL; revoked clients are refused from the next handshake on. Omit to skip.
crl = "{d}/crl.pem"
# How often the four files are checked for changes (ms).
reload_interval_ms = 1000
# How long a client has to finish the TLS handshake (ms).
handshake_timeout_ms = 5000

[node.log]
# "human" or "json" (one object per line). RUST_LOG overrides `level`.
format = "human"
level = "info"

[node.limits]
# Largest gRPC message accepted, in bytes.
max_message_bytes = 4194304
# How long in-flight calls may finish after SIGINT/SIGTERM (ms).
shutdown_grace_ms = 10000
"#
        )
    };
    let text = match (name, port) {
        ("topology", _) => TOPOLOGY_EXAMPLE.replace("PKI_DIR", &d.to_string()),
        ("bus", Some(port)) => format!("{}\n{}", common("bus", port, ""), bus_example()),
        ("sdu", Some(port)) => format!("{}{}", common("sdu", port, crate::sdu_node::CLOCK_EXAMPLE), crate::sdu_node::sdu_example()),
        ("pep", Some(port)) => format!(
            "{}\n{}\n[pep]\n# PEP reaches BMG and KDP through the bus.\nbus_url = \"https://127.0.0.1:7000\"\n",
            common("pep", port, CLOCK_EXAMPLE),
            SIM_EXAMPLE
        ),
        (n, Some(port)) if Registry::ALL.iter().any(|r| r.system_id() == n) => {
            format!("{}\n{}", common(n, port, CLOCK_EXAMPLE), SIM_EXAMPLE)
        }
        _ => {
            return Err(anyhow!("no example for {name:?}; try topology, bus, {}, sdu", registry_names())).code(CONFIG);
        }
    };
    print!("{text}");
    Ok(())
}

const SIM_EXAMPLE: &str = r#"# The simulated country. Every simulator host must use the same values, so that all of
# them simulate the same country (generation is deterministic for a seed).
[sim]
seed = 42
"#;

const CLOCK_EXAMPLE: &str = r#"
# "system" clock, or "manual" (advanced through kz.shep.sim.v1.Scenario/AdvanceClock).
clock = "system"
"#;

const TOPOLOGY_EXAMPLE: &str = r#"# shep up --config THIS_FILE
# Every setting can be overridden from the environment: SHEP__HOST=0.0.0.0, SHEP__SIM__SEED=7

# The address every node listens on.
host = "127.0.0.1"
# The dev PKI; generated on the first run.
pki_dir = "PKI_DIR"
# Where nodes keep state (the bus's audit log, the SDU's cases).
data_dir = "var/data"
# "system" or "manual".
clock = "system"
# Start the SDU node here too; false: the registries and the bus only, and the SDU runs as
# its own process (`shep node sdu`, with clock = "scenario" to follow a manual clock).
start_sdu = true

# Port by system id; 0 picks a free port; systems not listed keep these defaults.
[ports]
bus = 7000
gbd-ul = 7001
gbd-fl = 7002
zags = 7003
e-license = 7004
bmg = 7005
pep = 7006
kdp = 7007
sdu = 7010
metrics = 9000

[log]
format = "human"
level = "info"

# The synthetic country (see README: "The simulators").
[sim]
seed = 42
"#;

fn bus_example() -> String {
    let ports = shep_cli::topology::DEFAULT_PORTS.iter().map(|(n, p)| (n.to_string(), *p)).collect();
    let settings = shep_cli::topology::bus_settings("127.0.0.1", &ports);
    match toml::to_string_pretty(&BusWrapper { bus: settings }) {
        Ok(t) => format!("# The bus: routes, access matrix, consent, audit, limits, metrics.\n{t}"),
        Err(e) => format!("# (cannot render the bus defaults: {e})\n"),
    }
}

#[derive(serde::Serialize)]
struct BusWrapper {
    bus: BusSettings,
}
