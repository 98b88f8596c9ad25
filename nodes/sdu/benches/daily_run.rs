//! Benchmark: a daily run of N renamed organizations (default 100 000; `SDU_BENCH_SUBJECTS`
//! to change, `SDU_BENCH_CONCURRENCY` for the calls in flight, default 32) against
//! in-process fake registries behind one mTLS "bus". Every organization holds one permit,
//! its head consents and has a phone, and answers "1" at once: each case goes the whole way
//! (GBD UL, KDP ×3, GBD FL + ZAGS, PEP, answer, e-license) and the run ends DONE
//! (`SDU_BENCH_ANSWERS=0`: nobody answers; the run is timed until every case waits).
//!
//! Prints wall time, cases per second and the peak resident memory of the process (VmHWM;
//! the fakes live in the same process and are included: they keep counters only, but PEP's
//! answers, about 100 bytes each, stay in memory). Not run by `cargo test`.

#[path = "../tests/fakes/mod.rs"]
mod fakes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fakes::{Country, Fakes, bin, iin, permit, person, text, url};
use shep_proto::elicense::PermitStatus::Active;
use shep_proto::{elicense, gbdfl, gbdul, shep, zags};
use shep_runtime::{NodeConfig, Shutdown};
use shep_sdu::{ManualClock, RunState, SduSettings};

/// A country computed from indexes: nothing is stored per organization.
struct Synth {
    n: u32,
    date: shep::Date,
    answers: bool,
}

/// The inverse of `fakes::bin`.
fn index_of(b: &str) -> Option<u32> {
    let d: Vec<u32> = b.bytes().map(|c| u32::from(c - b'0')).collect();
    if d.len() != 12 {
        return None;
    }
    let yy = d[0] * 10 + d[1];
    let mm = d[2] * 10 + d[3];
    let serial = d[6..11].iter().fold(0, |a, x| a * 10 + x);
    Some(((yy * 100_000) + serial) * 12 + (mm - 1))
}

impl Country for Synth {
    fn name_change(&self, date: &shep::Date, idx: usize) -> Option<gbdul::NameChange> {
        if *date != self.date || idx >= self.n as usize {
            return None;
        }
        let i = idx as u32;
        Some(gbdul::NameChange {
            bin: bin(i),
            old_name: Some(text(&format!("ТОО «Старое {i}»"))),
            new_name: Some(text(&format!("ТОО «Новое {i}»"))),
            change_date: Some(*date),
            head_iin: iin(i),
            cursor: String::new(),
        })
    }
    fn act(&self, _: &shep::Date, _: usize) -> Option<zags::CivilAct> {
        None
    }
    fn organization(&self, b: &str) -> Option<gbdul::Organization> {
        let i = index_of(b).filter(|i| *i < self.n)?;
        Some(gbdul::Organization {
            bin: b.into(),
            first_head: Some(gbdul::Head {
                iin: iin(i),
                full_name: None,
                since: None,
            }),
            ..Default::default()
        })
    }
    fn person(&self, i: &str) -> Option<gbdfl::Person> {
        Some(person(i))
    }
    fn person_acts(&self, _: &str) -> Vec<zags::CivilAct> {
        vec![]
    }
    fn permits(&self, holder: &str) -> Vec<elicense::Permit> {
        vec![permit(
            &format!("SEO-{holder}"),
            "SEZ-OBJ",
            holder,
            false,
            Active,
        )]
    }
    fn consents(&self, _: &str, _: &str) -> bool {
        true
    }
    fn has_phone(&self, _: &str) -> bool {
        true
    }
    fn answer(&self, _: &str, attempt: u32) -> Option<String> {
        (self.answers && attempt == 1).then(|| "1".to_owned())
    }
}

fn vm_hwm_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let n = env_or("SDU_BENCH_SUBJECTS", 100_000) as u32;
    let concurrency = env_or("SDU_BENCH_CONCURRENCY", 32);
    // SDU_BENCH_ANSWERS=0: nobody answers, the run ends WAITING (and the fakes keep nothing
    // per subject, so the peak memory is SDU's).
    let answers = env_or("SDU_BENCH_ANSWERS", 1) != 0;
    // Warnings and errors of SDU on stderr (RUST_LOG=info for its progress lines).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    shep_runtime::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    shep_pki::Pki::init(&pki, shep_pki::DEFAULT_SYSTEMS, false).expect("pki");
    let start: jiff::Timestamp = "2026-02-03T04:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let date = shep::Date {
        year: 2026,
        month: 2,
        day: 3,
    };
    let fakes = Fakes::lean(Arc::new(Synth { n, date, answers }), clock.clone());
    let bus = fakes.serve(&pki, Shutdown::new()).await;
    let db = dir.path().join("sdu.db");
    let settings = SduSettings {
        bus_url: url(bus.addr),
        db: db.clone(),
        concurrency,
        progress_every_secs: 3600,
        progress_every_cases: 0,
        ..Default::default()
    };
    let node = NodeConfig::from_pki_dir("sdu", "127.0.0.1:0".parse().unwrap(), &pki);
    let sdu = shep_sdu::start(node, settings, clock.clone(), Shutdown::new())
        .await
        .expect("sdu starts");
    let h = sdu.handle.clone();

    println!(
        "SDU daily run: {n} renamed organizations, concurrency {concurrency}, fakes over mTLS"
    );
    let t0 = Instant::now();
    let run = h
        .run_daily("sez-000", jiff::civil::date(2026, 2, 3))
        .await
        .expect("run starts");
    let mut last_print = Instant::now();
    loop {
        let r = h.run(&run).expect("run");
        if r.state == RunState::Done || r.state == RunState::Failed || (!answers && r.settled()) {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            println!(
                "  {:>6.1} s: diffs {:>7}, closed {:>7}, waiting {:>7}, active {:>5}",
                t0.elapsed().as_secs_f64(),
                r.diffs,
                r.closed,
                r.waiting,
                r.active
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = t0.elapsed();
    let report = h
        .report("sez-000", jiff::civil::date(2026, 2, 3))
        .expect("report");
    let size = |suffix: &str| {
        std::fs::metadata(format!("{}{suffix}", db.display()))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / (1024.0 * 1024.0)
    };
    let (db_mib, wal_mib, shm_mib) = (size(""), size("-wal"), size("-shm"));
    println!("{report}");
    println!("wall time        {:.2} s", wall.as_secs_f64());
    println!(
        "cases/s          {:.0}",
        f64::from(n) / wall.as_secs_f64().max(1e-9)
    );
    match vm_hwm_kib() {
        Some(k) => println!(
            "peak memory      {:.1} MiB (VmHWM, fakes included)",
            k as f64 / 1024.0
        ),
        None => println!("peak memory      unknown (no /proc/self/status)"),
    }
    println!("database         {db_mib:.1} MiB (+ WAL {wal_mib:.1} MiB, index {shm_mib:.1} MiB)");
    {
        let rec = fakes.rec();
        println!(
            "calls            {} Notify, {} ReissuePermit",
            rec.notify_count, rec.reissue_count
        );
    }

    sdu.kill().await;
}
