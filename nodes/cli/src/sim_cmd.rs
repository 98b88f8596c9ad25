//! `shep sim`: the simulated country.

use std::path::PathBuf;

use clap::Subcommand;
use shep_simulators::{SimSettings, Simulation};

use crate::exit::{CONFIG, Failure, WithCode};

#[derive(Subcommand)]
pub enum SimCommand {
    /// Write the country as JSON Lines, one file per registry (fields: see README)
    Export {
        /// Output directory (created)
        #[arg(long)]
        dir: PathBuf,
        /// A config file with a [sim] section (as for `shep up`); defaults without one
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Seed of the country
        #[arg(long)]
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
        SimCommand::Export { dir, config, seed } => {
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
