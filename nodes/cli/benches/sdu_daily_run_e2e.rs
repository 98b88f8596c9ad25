//! Benchmark: the SDU's daily run end to end through the real bus against the real
//! simulators — the whole topology of `shep up` in one process, over mutual TLS on loopback,
//! with every bus check (access, consent tokens, identifiers) and the audit on.
//!
//! The synthetic country has `SDU_E2E_ORGS` organizations (default 200 000) and
//! `SDU_E2E_PEOPLE` individuals (default 1 000 000); about `SDU_E2E_RENAMES` organizations
//! (default 100 000; the simulator spreads a day's count between half and one and a half
//! times the mean, so the exact number is printed) are renamed on the day of the run, every
//! one of them picked among the holders of a pilot permit. Citizens answer "1" within a
//! minute. The run starts, the diff is read, SMS go out; the manual clock then moves an hour
//! at a time until every case is closed.
//!
//! `SDU_E2E_AUDIT_SYNC=normal`: the bus's audit log without an fsync per group commit.
//!
//! Prints wall time (the diff and the first SMS; then to the last re-issue), cases per
//! second, the number of bus calls, and the peak resident memory of the process (VmHWM: the
//! simulators and the bus live in the same process and are included). Not run by
//! `cargo test`; `make bench` runs it.

use std::time::Instant;

use shep_cli::topology::{ClockKind, Topology, TopologyConfig};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let orgs = env_or("SDU_E2E_ORGS", 200_000) as u32;
    let people = env_or("SDU_E2E_PEOPLE", 1_000_000) as u32;
    let renames = env_or("SDU_E2E_RENAMES", 100_000) as u32;
    let concurrency = env_or("SDU_E2E_CONCURRENCY", 64) as usize;
    let pilot = "sez-000";
    let today = jiff::civil::date(2026, 3, 2);
    let date = jiff::civil::date(2026, 3, 1);

    let dir = tempfile::tempdir()?;
    let mut cfg = TopologyConfig {
        pki_dir: dir.path().join("pki"),
        data_dir: dir.path().join("data"),
        clock: ClockKind::Manual,
        ..TopologyConfig::default()
    }
    .with_free_ports();
    cfg.log.level = std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into());
    cfg.sim.seed = 7;
    cfg.sim.today = Some(today);
    cfg.sim.individuals = people;
    cfg.sim.organizations = orgs;
    cfg.sim.history_days = 2;
    cfg.sim.renames_per_day = renames;
    cfg.sim.name_changes_per_day = 0;
    cfg.sim.deaths_per_day = 0;
    cfg.sim.pilot_share_of_renames = 1.0;
    cfg.sim.phone_share = 1.0;
    cfg.sim.consent_share = 1.0;
    cfg.sim.answers.yes = 1.0;
    cfg.sim.answers.no = 0.0;
    cfg.sim.answers.other = 0.0;
    cfg.sim.answers.max_delay_minutes = 1;
    cfg.sdu.concurrency = concurrency;
    let normal = std::env::var("SDU_E2E_AUDIT_SYNC").is_ok_and(|v| v == "normal");
    if normal {
        cfg.audit_synchronous = shep_bus::config::Synchronous::Normal;
    }
    cfg.sdu.progress_every_secs = 3600;
    shep_runtime::logging::init(&cfg.log);

    let t0 = Instant::now();
    let topo = Topology::start(cfg, shep_runtime::Shutdown::new()).await?;
    let started = t0.elapsed();
    println!(
        "SDU daily run end to end through the bus: {people} individuals, {orgs} organizations, \
         pilot {pilot} for {date}, concurrency {concurrency}, bus audit synchronous={}",
        if normal { "NORMAL" } else { "FULL" }
    );
    println!("topology up in {:.1} s (country generated, nodes listening)", started.as_secs_f64());

    let sdu = topo.sdu.as_ref().ok_or_else(|| anyhow::anyhow!("the topology has no SDU node"))?;
    let t1 = Instant::now();
    let run = sdu.run_daily(pilot, date).await?;
    sdu.wait_run_settled(&run).await?;
    let diff_done = t1.elapsed();
    let mut steps = 0;
    loop {
        let report = sdu.report(pilot, date)?;
        if report.complete && report.counts.open == 0 {
            break;
        }
        if steps > 24 * 10 {
            anyhow::bail!("cases still open after ten simulated days:\n{}", report.render_text());
        }
        topo.sim.clock().advance(3600);
        sdu.wait_run_settled(&run).await?;
        steps += 1;
    }
    let total = t1.elapsed();
    let report = sdu.report(pilot, date)?;
    println!("\n{}", report.render_text());
    let cases = report.counts.with_permits;
    let audit = topo.data_dir().join("audit.sqlite");
    let audit_records = shep_bus::audit::verify(&audit)?;
    println!("\n{:<34} {:>10}", "what", "value");
    println!("{:<34} {:>10}", "subjects in the diff", report.counts.diffs);
    println!("{:<34} {:>10}", "cases", cases);
    println!("{:<34} {:>10.1}", "diff + first SMS, wall s", diff_done.as_secs_f64());
    println!("{:<34} {:>10.1}", "whole run to last outcome, wall s", total.as_secs_f64());
    println!("{:<34} {:>10.0}", "cases per second (whole run)", cases as f64 / total.as_secs_f64());
    println!("{:<34} {:>10.1}", "peak memory, MiB (whole process)", vm_hwm_mib());
    println!("bus audit: {audit_records}");
    println!("goal: 100 000 subjects in under 60 s and 300 MB");
    topo.stop().await?;
    Ok(())
}
