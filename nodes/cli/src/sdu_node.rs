//! `shep node sdu --config FILE`: the SDU node alone, as its own process. The file has the
//! `[node]` settings every node has, the `[sdu]` settings, and the clock: the system's, or
//! the simulation's read through the bus (`clock = "scenario"`, next to a topology on a
//! manual clock started with `shep up --without-sdu`).

use std::path::Path;
use std::sync::Arc;

use anyhow::anyhow;
use serde::Deserialize;
use shep_cli::scenario_clock::{ScenarioClock, ScenarioClockSettings};
use shep_runtime::{NodeConfig, Shutdown};
use shep_sdu::SduSettings;

use crate::exit::{CONFIG, Failure, RUNTIME, WithCode};

/// Where the SDU node's time comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SduClock {
    /// Real time.
    #[default]
    System,
    /// The simulation's time, read from `kz.shep.sim.v1.Scenario/GetClock` through the bus.
    Scenario,
}

/// The SDU node's config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SduNodeFile {
    node: NodeConfig,
    #[serde(default)]
    sdu: SduSettings,
    #[serde(default)]
    clock: SduClock,
    #[serde(default)]
    scenario_clock: ScenarioClockSettings,
}

pub async fn run(config: &Path) -> Result<(), Failure> {
    let file: SduNodeFile = shep_runtime::config::load(Some(config), std::env::vars()).code(CONFIG)?;
    shep_runtime::logging::init(&file.node.log);
    if file.node.system != "sdu" {
        return Err(anyhow!("{} configures system {:?} but you asked for node \"sdu\"", config.display(), file.node.system))
            .code(CONFIG);
    }
    file.sdu.validate().code(CONFIG)?;
    file.scenario_clock.validate().code(CONFIG)?;
    // Reads the TLS files now, so that a missing one is named before anything is created.
    let bus = shep_runtime::tls::channel(&file.node.tls, &file.sdu.bus_url).code(CONFIG)?;
    let clock: Arc<dyn shep_sdu::Clock> = match file.clock {
        SduClock::System => Arc::new(shep_sdu::SystemClock),
        SduClock::Scenario => ScenarioClock::start(bus, &file.sdu.bus_url, &file.scenario_clock).await.code(RUNTIME)?,
    };
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let sdu = shep_sdu::start(file.node, file.sdu, clock, shutdown).await.code(CONFIG)?;
    println!("sdu listening on {}", sdu.addr);
    sdu.wait().await.code(RUNTIME)?;
    Ok(())
}

/// The `clock` part of `shep example-config sdu` (before `[node]`).
pub const CLOCK_EXAMPLE: &str = r#"
# "system": real time (a deployment). "scenario": the simulation's time, read from
# kz.shep.sim.v1.Scenario/GetClock through the bus as system "sdu", for an SDU next to a
# topology on a manual clock (`shep up --without-sdu --clock manual`).
clock = "system"

[scenario_clock]
# How often the simulation's clock is read (ms).
poll_ms = 100
# The node does not start when the first reading takes longer than this (ms).
start_timeout_ms = 10000
# Deadline of one reading (ms).
call_timeout_ms = 2000
"#;

/// The `[sdu]` part of `shep example-config sdu`, with the defaults.
pub fn sdu_example() -> String {
    let d = SduSettings::default();
    format!(
        r#"
[sdu]
# The bus: every registry, PEP and KDP call goes through it, as system "sdu" (mutual TLS).
bus_url = "{bus}"
# The SQLite file of runs, cases, timers and cursors (created when missing, with <db>.lock
# beside it), or a PostgreSQL database: db = "postgres://sdu:secret@127.0.0.1:5432/sdu"
# (it must exist; no TLS: same host or a tunnel). One SDU node per database at a time; a
# node restarted on it resumes everything.
db = "var/data/sdu.sqlite"
# Cases driven at once, and permit look-ups of a diff in flight.
concurrency = {concurrency}
# Renamed organizations of a diff looked up together in one e-license ListPermitsByBins call
# (up to this many of those at hand, 1 to 1000); 1: one ListPermits per organization.
# Individuals are always looked up one by one, each with its consent token.
lookup_batch = {lookup_batch}
# Consent tokens and person checks (GBD FL and ZAGS) that cases ask for at the same time go
# in batch calls of up to this many subjects, each with its own token (1 to 32); 1: one
# IssueToken, GetPerson and GetPersonActs per subject. Organizations' permits are re-issued
# and SMS sent in batches of this size too (1: one ReissuePermit and one Notify each).
call_batch = {call_batch}
# An operator's pilot catalog ([[pilot]] tables) replacing or adding to the shipped one.
# pilots_file = "/etc/shep/pilots.toml"
# An operator's working-day calendar ([[year]] tables) for years not shipped (2025-2027).
# calendar_file = "/etc/shep/calendar.toml"
# Tries of a failing call before its case ends FAILED; the first retry delay, doubled at
# each try, up to the longest (ms).
max_attempts = {max_attempts}
retry_base_ms = {retry_base_ms}
retry_max_ms = {retry_max_ms}
# Deadline of one call to the bus (ms).
call_timeout_ms = {call_timeout_ms}
# How often deadlines are compared with the clock (ms).
timer_poll_ms = {timer_poll_ms}
# Log a run's progress every this many name changes, and every this many seconds.
progress_every_cases = {progress_every_cases}
progress_every_secs = {progress_every_secs}
"#,
        bus = d.bus_url,
        concurrency = d.concurrency,
        lookup_batch = d.lookup_batch,
        call_batch = d.call_batch,
        max_attempts = d.max_attempts,
        retry_base_ms = d.retry_base_ms,
        retry_max_ms = d.retry_max_ms,
        call_timeout_ms = d.call_timeout_ms,
        timer_poll_ms = d.timer_poll_ms,
        progress_every_cases = d.progress_every_cases,
        progress_every_secs = d.progress_every_secs,
    )
}
