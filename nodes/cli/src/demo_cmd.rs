//! `shep demo`: the main job on embedded defaults. The whole topology on loopback (free
//! ports, a fresh dev PKI, a seeded synthetic country, a manual clock), a daily run of the
//! SDU through the bus, the clock advanced through the waits, the funnel report, and a
//! check of the bus's audit chain.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use shep_cli::topology::{ClockKind, Topology, TopologyConfig};

use crate::exit::{CONFIG, Failure, WithCode};

#[derive(Args)]
pub struct DemoArgs {
    /// The pilot to run: sez-000 (sanitary-epidemiological), eco-001, trusted-sw-004
    #[arg(long, default_value = "sez-000")]
    pilot: String,
    /// The day whose diff to run (YYYY-MM-DD); default: the day before the simulation's today
    #[arg(long)]
    date: Option<jiff::civil::Date>,
    /// The simulation's today (YYYY-MM-DD); its manual clock starts at 09:00 Asia/Almaty
    #[arg(long, default_value = "2026-03-02")]
    today: jiff::civil::Date,
    /// Seed of the synthetic country
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Individuals in the synthetic country
    #[arg(long)]
    individuals: Option<u32>,
    /// Organizations in the synthetic country
    #[arg(long)]
    organizations: Option<u32>,
    /// Organization renames per day in the synthetic history
    #[arg(long, default_value_t = 40)]
    renames: u32,
    /// Name changes of individuals per day in the synthetic history
    #[arg(long, default_value_t = 120)]
    name_changes: u32,
    /// Working directory (removed and recreated): PKI, audit log, SDU database
    #[arg(long, default_value = "var/demo")]
    dir: PathBuf,
    /// Hours the clock moves at each step of the waits
    #[arg(long, default_value_t = 3)]
    step_hours: u64,
    /// Also print one JSON record per case
    #[arg(long)]
    json: bool,
}

pub async fn run(a: DemoArgs) -> Result<(), Failure> {
    let started = Instant::now();
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("cleaning {}", a.dir.display()))?;
    }
    let mut cfg = TopologyConfig {
        pki_dir: a.dir.join("pki"),
        data_dir: a.dir.join("data"),
        clock: ClockKind::Manual,
        ..TopologyConfig::default()
    }
    .with_free_ports();
    cfg.log.level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    cfg.sim.seed = a.seed;
    cfg.sim.today = Some(a.today);
    if let Some(n) = a.individuals {
        cfg.sim.individuals = n;
    }
    if let Some(n) = a.organizations {
        cfg.sim.organizations = n;
    }
    // A busy day, so that every branch of the funnel shows up in a few seconds.
    cfg.sim.renames_per_day = a.renames;
    cfg.sim.name_changes_per_day = a.name_changes;
    shep_runtime::logging::init(&cfg.log);
    let date = a.date.unwrap_or_else(|| a.today.yesterday().unwrap_or(a.today));

    println!("== shep demo: pilot {} for {date} ==\n", a.pilot);
    let shutdown = shep_runtime::Shutdown::new();
    shutdown.trigger_on_signals();
    let topo = Topology::start(cfg, shutdown).await?;
    print!("{}", topo.table());
    println!(
        "\ncountry: seed {}, {} individuals, {} organizations; clock: manual, now {}",
        a.seed,
        topo.sim.settings().individuals,
        topo.sim.settings().organizations,
        now_text(&topo)
    );

    let outcome = drive(&topo, &a.pilot, date, a.step_hours, a.json).await;
    let stopped = topo.stop().await;
    outcome?;
    stopped?;
    println!("\ndone in {:.1} s (wall time)", started.elapsed().as_secs_f64());
    Ok(())
}

fn now_text(topo: &Topology) -> String {
    jiff::Timestamp::from_second(topo.sim.now())
        .map(|t| {
            t.to_zoned_datetime(jiff::tz::TimeZone::fixed(jiff::tz::offset(5)))
                .strftime("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
}

async fn drive(topo: &Topology, pilot: &str, date: jiff::civil::Date, step_hours: u64, json: bool) -> Result<(), Failure> {
    let sdu = topo.sdu.as_ref().context("the demo's topology has no SDU node")?;
    let run = sdu.run_daily(pilot, date).await.code(CONFIG)?;
    println!("\nSDU: daily run {} started", run.0);
    // The diff is read, recipients checked, first SMS sent; then the clock moves through the
    // waits (3 working days, a re-send, 3 more) while citizens answer.
    let max_steps = (24 / step_hours.max(1)) * 30;
    let mut last = String::new();
    for _ in 0..=max_steps {
        sdu.wait_run_settled(&run).await?;
        let report = sdu.report(pilot, date)?;
        let progress = report.progress_line();
        if progress != last {
            println!("  {}  {progress}", now_text(topo));
            last = progress;
        }
        if report.complete && report.counts.open == 0 {
            break;
        }
        topo.sim.clock().advance(step_hours * 3600);
    }
    let report = sdu.report(pilot, date)?;
    println!("\n{}", report.render_text());
    if json {
        for r in sdu.cases_json(pilot, date)? {
            println!("{}", r.to_json());
        }
    }
    let audit = topo.data_dir().join("audit.sqlite");
    if audit.exists() {
        let v = shep_bus::audit::verify(&audit)?;
        println!("bus audit log {}: {v}", audit.display());
    }
    if report.counts.open > 0 {
        return Err(anyhow::anyhow!("{} case(s) still open after the waits", report.counts.open).into());
    }
    Ok(())
}
