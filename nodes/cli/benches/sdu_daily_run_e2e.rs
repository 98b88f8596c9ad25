//! Benchmark: the SDU's daily run end to end through the real bus against the real
//! simulators — the whole topology of `shep up` in one process, over mutual TLS on loopback,
//! with every bus check (access, consent tokens, identifiers) and the audit on.
//!
//! The synthetic country has `SDU_E2E_ORGS` organizations (default 200 000) and
//! `SDU_E2E_PEOPLE` individuals (default 1 000 000); about `SDU_E2E_RENAMES` organizations
//! (default 100 000; the simulator spreads a day's count between half and one and a half
//! times the mean, so the exact number is printed) are renamed on the day of the run, every
//! one of them picked among the holders of a pilot permit. Citizens answer "1" within a
//! minute. The run starts, the diff is read, SMS go out; the manual clock then moves six
//! hours at a time, whenever the SDU has nothing left to do, until every case is closed.
//!
//! `SDU_E2E_AUDIT_SYNC=normal`: the bus's audit log without an fsync per group commit.
//!
//! The SDU runs as its own process (`shep node sdu`, following the simulation's clock
//! through the bus), as deployed; `SDU_E2E_IN_PROCESS=1` runs it inside the topology's
//! process instead.
//!
//! Prints wall time (the diff and the first SMS; then to the last re-issue), cases per
//! second, and the peak resident memory (VmHWM) of the SDU process and of the process of the
//! simulators and the bus. Not run by `cargo test`; `make bench` runs it.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::Context;
use shep_cli::topology::{ClockKind, Topology, TopologyConfig};
use shep_proto::sdu::proactive_service_client::ProactiveServiceClient;
use shep_proto::sdu::{GetReportRequest, GetRunRequest, RunDailyRequest, RunState};
use shep_sdu::FunnelReport;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How far the clock moves each time the SDU has nothing left to do: six hours (answers
/// come within a minute of an SMS; the waits are days).
const STEP_SECS: u64 = 6 * 3600;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The peak resident memory of a process (`self` or a pid), from /proc.
fn vm_hwm_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
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
    let separate = env_or("SDU_E2E_IN_PROCESS", 0) == 0;
    cfg.start_sdu = !separate;
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

    let mut sdu = if separate {
        Sdu::Process(SduProcess::start(&topo, dir.path(), concurrency).await?)
    } else {
        Sdu::InProcess(topo.sdu.clone().ok_or_else(|| anyhow::anyhow!("the topology has no SDU node"))?)
    };
    let t1 = Instant::now();
    sdu.run_daily(pilot, date).await?;
    let mut diff_done = None;
    let mut steps = 0;
    let report = loop {
        let now = topo.sim.now();
        let (report, state, caught_up) = sdu.state(pilot, date, now).await?;
        if state == RunState::Done {
            break report;
        }
        if state == RunState::Failed {
            anyhow::bail!("the run failed:\n{}", report.render_text());
        }
        if state == RunState::Waiting && caught_up {
            diff_done.get_or_insert_with(|| t1.elapsed());
            if steps > 4 * 15 {
                anyhow::bail!("cases still open after fifteen simulated days:\n{}", report.render_text());
            }
            topo.sim.clock().advance(STEP_SECS);
            steps += 1;
            eprintln!(
                "{:>6.1} s  clock +{} h  (open {}, SMS {}, re-issued {})",
                t1.elapsed().as_secs_f64(),
                steps * STEP_SECS / 3600,
                report.counts.open,
                report.counts.sms_sent,
                report.counts.reissued
            );
        } else {
            // The report reads the run's counters (kept as cases change), not the cases:
            // asking often costs the run nothing.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let total = t1.elapsed();
    let diff_done = diff_done.unwrap_or(total);
    let sdu_peak = sdu.peak_mib();
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
    match sdu_peak {
        Some(m) => {
            println!("{:<34} {:>10.1}", "peak memory of the SDU, MiB", m);
            println!("{:<34} {:>10.1}", "peak, simulators + bus, MiB", vm_hwm_mib("self"));
        }
        None => println!("{:<34} {:>10.1}", "peak memory, MiB (whole process)", vm_hwm_mib("self")),
    }
    println!("bus audit: {audit_records}");
    println!("records by caller and method:");
    for (caller, method, n) in shep_bus::audit::records_by_method(&audit)? {
        println!("  {n:>8}  {caller:<10} {method}");
    }
    println!("goal: 100 000 subjects in under 60 s and 300 MB");
    drop(sdu);
    topo.stop().await?;
    Ok(())
}

/// The SDU under test: in this process, or `shep node sdu` as a child.
enum Sdu {
    InProcess(shep_sdu::SduHandle),
    Process(SduProcess),
}

impl Sdu {
    async fn run_daily(&mut self, pilot: &str, date: jiff::civil::Date) -> anyhow::Result<()> {
        match self {
            Sdu::InProcess(h) => {
                h.run_daily(pilot, date).await?;
            }
            Sdu::Process(p) => {
                p.client
                    .run_daily(RunDailyRequest { pilot_id: pilot.into(), date: Some(pb_date(date)) })
                    .await?;
            }
        }
        Ok(())
    }

    /// The run's report and state, and whether the SDU has seen the clock at `now`.
    async fn state(
        &mut self,
        pilot: &str,
        date: jiff::civil::Date,
        now: i64,
    ) -> anyhow::Result<(FunnelReport, RunState, bool)> {
        match self {
            Sdu::InProcess(h) => {
                let id = h.run_for(pilot, date)?.id;
                let run = h.wait_run_settled(&id).await?;
                let report = h.report(pilot, date)?;
                let state = match run.state {
                    shep_sdu::RunState::Done => RunState::Done,
                    shep_sdu::RunState::Failed => RunState::Failed,
                    _ => RunState::Waiting,
                };
                Ok((report, state, true))
            }
            Sdu::Process(p) => {
                let r = p
                    .client
                    .get_report(GetReportRequest { pilot_id: pilot.into(), date: Some(pb_date(date)) })
                    .await?
                    .into_inner();
                let caught_up = r.generated_at.as_ref().is_some_and(|t| t.seconds >= now);
                let run_id = format!("{pilot}:{date}");
                let run = p.client.get_run(GetRunRequest { run_id }).await?.into_inner();
                let report = FunnelReport::from_proto(&r).map_err(|e| anyhow::anyhow!(e))?;
                Ok((report, RunState::try_from(run.state).unwrap_or(RunState::Unspecified), caught_up))
            }
        }
    }

    /// The SDU process's peak memory; `None` in process.
    fn peak_mib(&self) -> Option<f64> {
        match self {
            Sdu::InProcess(_) => None,
            Sdu::Process(p) => p.child.id().map(|pid| vm_hwm_mib(&pid.to_string())),
        }
    }
}

fn pb_date(d: jiff::civil::Date) -> shep_proto::shep::Date {
    shep_proto::shep::Date { year: i32::from(d.year()), month: i32::from(d.month()), day: i32::from(d.day()) }
}

/// `shep node sdu` next to the topology, on the simulation's clock (read through the bus).
struct SduProcess {
    child: tokio::process::Child,
    client: ProactiveServiceClient<tonic::transport::Channel>,
}

impl SduProcess {
    async fn start(topo: &Topology, dir: &Path, concurrency: usize) -> anyhow::Result<SduProcess> {
        let pki = topo.pki.dir();
        let p = |f: &str| pki.join(f).display().to_string();
        let config = dir.join("sdu.toml");
        std::fs::write(
            &config,
            format!(
                "clock = \"scenario\"\n[scenario_clock]\npoll_ms = 20\n[node]\nsystem = \"sdu\"\n\
                 listen = \"127.0.0.1:0\"\n[node.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
                 crl = \"{}\"\n[node.log]\nlevel = \"error\"\n[sdu]\nbus_url = \"https://127.0.0.1:{}\"\n\
                 db = \"{}\"\nconcurrency = {concurrency}\ntimer_poll_ms = 20\nprogress_every_secs = 3600\n",
                p("ca.pem"),
                p("sdu.pem"),
                p("sdu.key"),
                p("crl.pem"),
                topo.bus_addr.port(),
                dir.join("sdu.sqlite").display(),
            ),
        )?;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shep"))
            .current_dir(dir)
            .args(["node", "sdu", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().context("the child's stdout")?).lines();
        let addr = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("sdu listening on ") {
                    return Ok::<_, anyhow::Error>(a.trim().to_owned());
                }
            }
            anyhow::bail!("shep node sdu ended before it listened")
        })
        .await
        .context("shep node sdu did not print its address")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let tls = shep_runtime::TlsConfig::from_pki_dir(pki, "operator");
        let ch = shep_runtime::tls::channel(&tls, &format!("https://{addr}"))?;
        Ok(SduProcess { child, client: ProactiveServiceClient::new(ch) })
    }
}
