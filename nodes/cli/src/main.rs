//! `shep`: starts the nodes of the bus (one, or the whole topology on loopback), manages
//! the development PKI, exports the simulated country and checks the audit log.
//!
//! Exit codes: 0 success; 1 failure at run time; 2 bad usage (from clap);
//! 3 bad configuration or missing files; 4 a check found a problem (`audit verify`).

mod audit_cmd;
mod demo_cmd;
mod exit;
mod node_cmd;
mod pki_cmd;
mod sdu_cmd;
mod sdu_node;
mod sim_cmd;
mod up_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::Failure;

/// Threads for blocking work (the SDU's store calls, exports): beyond, calls queue for one.
/// Each thread keeps an allocator heap of its own; tokio's default of 512 let the SDU grow
/// to well over a hundred under load.
const MAX_BLOCKING_THREADS: usize = 16;

/// mimalloc instead of glibc's allocator: the bus's request path allocates per frame and
/// per call from every worker thread, and glibc's arenas made allocation about a fifth of
/// its CPU (`bus_vs_nginx`: 1.39 → 1.06 CPU s per 10k calls, 12.4k → 17.3k calls/s).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shep",
    version,
    about = "An integration bus in the manner of Kazakhstan's e-government gateway (ShEP), the simulated state registries behind it, and the SDU proactive-service node",
    long_about = None,
    after_help = "Start here: `shep up` runs the whole topology on loopback with a generated dev PKI.\nExit codes: 0 ok, 1 run-time failure, 2 usage, 3 configuration or missing files, 4 a check failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job on embedded defaults: the topology, a daily run of the SDU, its report
    Demo(demo_cmd::DemoArgs),
    /// Start the whole topology in one process on loopback (bus, registries, SDU unless --without-sdu)
    Up(up_cmd::UpArgs),
    /// Run one node alone, from a config file (one node per host in a deployment)
    Node(node_cmd::NodeArgs),
    /// The development PKI: a CA and a certificate per system
    #[command(subcommand)]
    Pki(pki_cmd::PkiCommand),
    /// The SDU node: start a daily run, print its funnel report
    #[command(subcommand)]
    Sdu(sdu_cmd::SduCommand),
    /// The simulated country: export it as JSON Lines
    #[command(subcommand)]
    Sim(sim_cmd::SimCommand),
    /// The bus's audit log: verify its hash chain, list accesses to a person's data
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Print a documented example config for a node (or `topology` for `shep up`)
    ExampleConfig {
        /// bus, gbd-ul, gbd-fl, zags, e-license, bmg, pep, kdp, sdu, or topology
        name: String,
        /// Directory of the PKI the example points at
        #[arg(long, default_value = "var/pki")]
        pki: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shep_runtime::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res: Result<(), Failure> = rt.block_on(async move {
        match cli.command {
            Command::Demo(a) => demo_cmd::run(a).await,
            Command::Up(a) => up_cmd::up(a).await,
            Command::Node(a) => node_cmd::run(a).await,
            Command::Pki(c) => pki_cmd::run(c),
            Command::Sdu(c) => sdu_cmd::run(c).await,
            Command::Sim(c) => sim_cmd::run(c).await,
            Command::Audit(c) => audit_cmd::run(c),
            Command::ExampleConfig { name, pki } => node_cmd::example(&name, &pki),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
