//! `shep up`: the whole topology in one process, on loopback.

use std::path::PathBuf;

use clap::Args;
use shep_cli::topology::{ClockKind, Topology, TopologyConfig};

use crate::exit::{CONFIG, Failure, WithCode};

#[derive(Args)]
pub struct UpArgs {
    /// A topology config file (see `shep example-config topology`); defaults apply without one
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Directory of the dev PKI; generated on the first run
    #[arg(long)]
    pki: Option<PathBuf>,
    /// Address every node listens on
    #[arg(long)]
    host: Option<String>,
    /// Seed of the synthetic country
    #[arg(long)]
    seed: Option<u64>,
    /// `system` (real time) or `manual` (advanced through the Scenario service)
    #[arg(long, value_enum)]
    clock: Option<ClockKind>,
    /// Listen on free ports chosen by the OS instead of 7000-7010
    #[arg(long)]
    any_ports: bool,
}

pub async fn up(a: UpArgs) -> Result<(), Failure> {
    let mut cfg: TopologyConfig =
        shep_runtime::config::load(a.config.as_deref(), std::env::vars()).code(CONFIG)?;
    if let Some(p) = a.pki {
        cfg.pki_dir = p;
    }
    if let Some(h) = a.host {
        cfg.host = h;
    }
    if let Some(s) = a.seed {
        cfg.sim.seed = s;
    }
    if let Some(c) = a.clock {
        cfg.clock = c;
    }
    if a.any_ports {
        cfg = cfg.with_free_ports();
    }
    shep_runtime::logging::init(&cfg.log);
    let shutdown = shep_runtime::Shutdown::new();
    shutdown.trigger_on_signals();
    let topo = Topology::start(cfg, shutdown.clone()).await?;
    print!("{}", topo.table());
    println!("ready: press Ctrl-C to stop");
    topo.wait().await?;
    Ok(())
}
