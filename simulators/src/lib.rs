//! The simulated state registries behind ShEP, and the synthetic country they serve.
//!
//! One [`Simulation`] generates a deterministic country from [`SimSettings`] (same seed,
//! same data on any machine) and holds what scenarios change on top of it, the [`Clock`]
//! and the injected faults. Each registry is a real gRPC node built by [`node()`]: GBD UL,
//! GBD FL, ZAGS, e-license, BMG, PEP and KDP, each also serving `kz.shep.sim.v1.Scenario`.
//! The nodes of a process share one `Arc<Simulation>`.
//!
//! Modules, one job each:
//! - [`settings`]: the settings and their validation; [`catalog`]: service codes, pilots,
//!   SMS texts; [`names`], [`orgnames`], [`places`]: the tables names and addresses come from.
//! - [`country`]: generation (people, organizations, permits, history) and look-ups;
//!   [`rng`]: deterministic randomness; [`time`]: days and Almaty time.
//! - [`state`]: what changed since the start, per registry; [`citizens`]: how simulated
//!   citizens answer SMS; [`clock`]; [`faults`]: fault injection (a tower layer).
//! - [`services`]: the gRPC services; [`views`]: records as messages; [`mod@node`]: the nodes;
//!   [`export`]: JSON Lines dumps.

pub mod catalog;
pub mod citizens;
pub mod clock;
pub mod country;
pub mod cursor;
pub mod export;
pub mod faults;
pub mod names;
pub mod node;
pub mod orgnames;
pub mod places;
pub mod registry;
pub mod rng;
pub mod services;
pub mod settings;
pub mod sim;
pub mod state;
pub mod time;
pub mod views;

pub use clock::Clock;
pub use export::{ExportSummary, export_jsonl};
pub use node::{PepLinks, node};
pub use registry::Registry;
pub use settings::{SettingsError, SimSettings};
pub use sim::Simulation;
