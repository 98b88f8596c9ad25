//! Generation time and peak memory at scale, GBD FL `GetPerson` calls per second over
//! mutual TLS, and the live export (`Scenario/Export`) streamed over mutual TLS to a client
//! that checks each file's totals: its speed and how much memory it adds. A plain program (`harness = false`) that prints a table:
//!
//! ```text
//! cargo bench -p shep-simulators --bench generate
//! ```
//!
//! The scale can be changed with `SHEP_BENCH_INDIVIDUALS`, `SHEP_BENCH_ORGANIZATIONS`,
//! `SHEP_BENCH_CALLS` and `SHEP_BENCH_CONCURRENCY`. Run without `--bench` (as `cargo test
//! --benches` does) it only smoke-tests itself at a small scale.

use std::sync::Arc;
use std::time::Instant;

use shep_proto::gbdfl::GetPersonRequest;
use shep_proto::gbdfl::person_registry_client::PersonRegistryClient;
use shep_proto::sim::ExportRequest;
use shep_proto::sim::scenario_client::ScenarioClient;
use shep_runtime::{NodeConfig, Shutdown, TlsConfig};
use shep_simulators::export::{ExportTarget, ExportedFile, receive_into};
use shep_simulators::{Clock, Registry, SimSettings, Simulation};
use tonic::transport::Channel;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Peak resident memory of this process (VmHWM), in MiB; 0 where /proc is missing.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    shep_runtime::install_crypto_provider();
    // `cargo bench` passes --bench; anything else (cargo test --benches) gets a smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (i, o, n) = if full { (1_000_000, 100_000, 20_000) } else { (5_000, 500, 200) };
    let individuals = env_or("SHEP_BENCH_INDIVIDUALS", i) as u32;
    let organizations = env_or("SHEP_BENCH_ORGANIZATIONS", o) as u32;
    let calls = env_or("SHEP_BENCH_CALLS", n) as usize;
    let concurrency = env_or("SHEP_BENCH_CONCURRENCY", 32).max(1) as usize;

    let settings = SimSettings { individuals, organizations, ..SimSettings::default() };
    let before = peak_mib();
    let t = Instant::now();
    let sim = Simulation::try_new(settings, Clock::manual())?;
    let gen_secs = t.elapsed().as_secs_f64();
    let peak = peak_mib();
    let c = sim.country();
    let counts = format!(
        "{} persons, {} orgs, {} permits, {} renames, {} acts",
        c.persons().len(),
        c.orgs().len(),
        c.permits().len(),
        c.renames().len(),
        c.acts().len()
    );

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ((qps, errors), (export_bytes, export_secs), export_peak) = rt.block_on(async {
        let dir = tempfile::tempdir()?;
        shep_pki::Pki::init(dir.path(), shep_pki::DEFAULT_SYSTEMS, false)?;
        let shutdown = Shutdown::new();
        let cfg = NodeConfig::from_pki_dir("gbd-fl", "127.0.0.1:0".parse()?, dir.path());
        let node = shep_simulators::node(Registry::GbdFl, sim.clone(), cfg, None).start(shutdown.clone()).await?;
        let channel = shep_runtime::tls::channel(
            &TlsConfig::from_pki_dir(dir.path(), "sdu"),
            &format!("https://127.0.0.1:{}", node.addr.port()),
        )?;
        let rate = get_person_rate(&sim, channel.clone(), calls, concurrency).await?;
        let before_export = peak_mib();
        let export = export_rate(channel).await?;
        let export_peak = peak_mib() - before_export;
        shutdown.trigger();
        let _ = node.wait().await;
        Ok::<_, Box<dyn std::error::Error>>((rate, export, export_peak))
    })?;

    println!("| measure | value |");
    println!("|---|---|");
    println!("| generate {individuals} individuals + {organizations} organizations | {gen_secs:.2} s |");
    println!("| generated | {counts} |");
    println!("| peak memory (VmHWM) | {peak:.0} MiB (before generation {before:.0} MiB) |");
    println!(
        "| GBD FL GetPerson over mTLS, {calls} calls, {concurrency} concurrent | {qps:.0} calls/s ({errors} errors) |"
    );
    println!(
        "| live export over mTLS, totals checked | {:.0} MiB in {export_secs:.2} s ({:.0} MiB/s), peak memory +{export_peak:.0} MiB |",
        export_bytes as f64 / 1048576.0,
        export_bytes as f64 / 1048576.0 / export_secs
    );
    Ok(())
}

async fn get_person_rate(
    sim: &Simulation,
    channel: Channel,
    calls: usize,
    concurrency: usize,
) -> Result<(f64, usize), Box<dyn std::error::Error>> {
    let iins: Arc<Vec<String>> =
        Arc::new(sim.country().persons().iter().step_by(97).map(|p| p.iin.to_string()).collect());
    // Warm up the connection.
    PersonRegistryClient::new(channel.clone()).get_person(GetPersonRequest { iin: iins[0].clone() }).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = PersonRegistryClient::new(channel.clone());
        let iins = iins.clone();
        let n = calls / concurrency + usize::from(w < calls % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut errors = 0;
            for i in 0..n {
                let iin = iins[(w * 7919 + i * 31) % iins.len()].clone();
                if client.get_person(GetPersonRequest { iin }).await.is_err() {
                    errors += 1;
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await?;
    }
    let qps = calls as f64 / start.elapsed().as_secs_f64();
    Ok((qps, errors))
}

/// Takes the bytes of an export and keeps nothing.
struct Discard;

impl ExportTarget for Discard {
    fn begin(&mut self, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn end(&mut self, _: &ExportedFile) -> std::io::Result<()> {
        Ok(())
    }
}

/// The whole export received as `shep sim export --addr` does (each file checked against
/// its totals), without writing it: (bytes, seconds).
async fn export_rate(channel: Channel) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let chunks = ScenarioClient::new(channel).export(ExportRequest {}).await?.into_inner();
    let files = receive_into(chunks, &mut Discard).await?;
    Ok((files.iter().map(|f| f.bytes).sum(), start.elapsed().as_secs_f64()))
}
