//! `shep sim`: the simulated country.

use std::path::PathBuf;

use clap::Subcommand;
use shep_proto::sim::ExportRequest;
use shep_proto::sim::scenario_client::ScenarioClient;
use shep_runtime::TlsConfig;
use shep_simulators::export::ReceiveError;
use shep_simulators::{ExportSummary, SimSettings, Simulation};

use crate::exit::{CONFIG, Failure, RUNTIME, WithCode};

#[derive(Subcommand)]
pub enum SimCommand {
    /// Write the country as JSON Lines, one file per registry (fields: see README): what a
    /// seed generates, or with --addr the current state of a running simulator node
    Export {
        /// Output directory (created); the files appear only once all of them are complete
        #[arg(long)]
        dir: PathBuf,
        /// A running simulator node ("https://127.0.0.1:7001" or "127.0.0.1:7001"): export its current state
        /// (injected changes, re-issued permits, cabinet notifications, SMS and answers)
        #[arg(long)]
        addr: Option<String>,
        /// The dev PKI, with --addr
        #[arg(long, default_value = "var/pki")]
        pki: PathBuf,
        /// The identity to call as, with --addr (a certificate NAME.pem / NAME.key in the PKI)
        #[arg(long, default_value = "operator")]
        identity: String,
        /// A config file with a [sim] section (as for `shep up`); defaults without one
        #[arg(long, short, conflicts_with = "addr")]
        config: Option<PathBuf>,
        /// Seed of the country
        #[arg(long, conflicts_with = "addr")]
        seed: Option<u64>,
    },
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct SimOnly {
    sim: SimSettings,
}

pub async fn run(cmd: SimCommand) -> Result<(), Failure> {
    match cmd {
        SimCommand::Export { dir, addr: Some(addr), pki, identity, .. } => {
            let summary = export_live(&addr, &pki, &identity, &dir).await?;
            println!("exported the state of {addr} to {}:\n{summary}", dir.display());
        }
        SimCommand::Export { dir, addr: None, config, seed, .. } => {
            let mut cfg: SimOnly = shep_runtime::config::load(config.as_deref(), std::env::vars()).code(CONFIG)?;
            if let Some(s) = seed {
                cfg.sim.seed = s;
            }
            let sim = Simulation::new(cfg.sim.clone(), shep_simulators::Clock::manual());
            let summary = shep_simulators::export_jsonl(&sim, &dir)?;
            println!("exported to {}:\n{summary}", dir.display());
        }
    }
    Ok(())
}

/// `Scenario/Export` of a running node into `dir`.
async fn export_live(
    addr: &str,
    pki: &std::path::Path,
    identity: &str,
    dir: &std::path::Path,
) -> Result<ExportSummary, Failure> {
    let url = if addr.contains("://") { addr.to_owned() } else { format!("https://{addr}") };
    let tls = TlsConfig::from_pki_dir(pki, identity);
    let channel = shep_runtime::tls::channel(&tls, &url).code(CONFIG)?;
    let mut client = ScenarioClient::new(channel);
    let chunks = client.export(ExportRequest {}).await.map_err(|s| status_failure(addr, identity, s))?.into_inner();
    shep_simulators::export::receive(chunks, dir).await.map_err(|e| match e {
        ReceiveError::Status(s) => status_failure(addr, identity, s),
        other => Failure { code: RUNTIME, error: anyhow::anyhow!("export from {addr}: {other}") },
    })
}

/// A refused or failed call, with what to check.
fn status_failure(addr: &str, identity: &str, s: tonic::Status) -> Failure {
    use tonic::Code;
    let source = std::error::Error::source(&s).map(|e| format!(" ({e})")).unwrap_or_default();
    let (code, hint) = match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => (RUNTIME, "; is the node running at this address?"),
        Code::PermissionDenied | Code::Unauthenticated => {
            (CONFIG, "; the registries accept the `operator` identity (--identity) from the topology's PKI (--pki)")
        }
        Code::Unimplemented => {
            (CONFIG, "; --addr must be a simulator node (gbd-ul, gbd-fl, zags, e-license, bmg, pep or kdp) or the bus of a simulated topology")
        }
        _ => (RUNTIME, ""),
    };
    let message = if s.message().is_empty() { String::new() } else { format!(": {}", s.message()) };
    let error = anyhow::anyhow!("export from {addr} as {identity}: {:?}{message}{source}{hint}", s.code());
    Failure { code, error }
}
