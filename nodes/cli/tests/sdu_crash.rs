//! The SDU as its own process (`shep node sdu`, `clock = "scenario"`) next to a topology
//! without one (registries and bus in this test's process, on a manual clock), and its
//! crash safety: killed with SIGKILL during the diff stream, between SMS and answers, and
//! during re-issue, and restarted on the same database each time, it reaches the same
//! outcomes as an uninterrupted run of the same seed, with no SMS and no re-issue twice
//! (checked against PEP's outbox and e-license).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use shep_cli::scenario_clock::{ScenarioClock, ScenarioClockSettings};
use shep_cli::topology::{ClockKind, Topology, TopologyConfig};
use shep_proto::sdu::proactive_service_client::ProactiveServiceClient;
use shep_proto::sdu::{Case, GetReportRequest, GetRunRequest, ListCasesRequest, Outcome, RunDailyRequest, RunState};
use shep_proto::sim::scenario_client::ScenarioClient;
use shep_proto::sim::{AdvanceClockRequest, GetClockRequest};
use shep_runtime::{Shutdown, TlsConfig};
use shep_sdu::Clock as _;
use shep_simulators::Registry;
use shep_simulators::faults::Fault;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

const PILOT: &str = "sez-000";
/// Generous bound of every wait: the machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(90);
const LIST_PERMITS: &str = "/kz.gov.elicense.v1.PermitRegistry/ListPermits";
const LIST_PERMITS_BY_BINS: &str = "/kz.gov.elicense.v1.PermitRegistry/ListPermitsByBins";
const REISSUE: &str = "/kz.gov.elicense.v1.PermitRegistry/ReissuePermit";
/// The batch form the SDU re-issues organizations' permits with.
const REISSUE_BATCH: &str = "/kz.gov.elicense.v1.PermitRegistry/ReissueOrganizationPermits";
const NOTIFY: &str = "/kz.gov.pep.v1.Portal/Notify";
/// The batch form the SDU sends its SMS with.
const NOTIFY_BATCH: &str = "/kz.gov.pep.v1.Portal/NotifyMany";

/// The tests of this file one at a time: each runs a topology and SDU processes, and two at
/// once only slow each other down on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn run_date() -> shep_proto::shep::Date {
    shep_proto::shep::Date { year: 2026, month: 3, day: 1 }
}

/// Polls `f` until it gives a value; panics naming `what` after [`PATIENCE`].
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A topology without an SDU on a manual clock, with a seeded country busy enough for
/// every branch of the funnel, and the config file of an SDU process next to it.
struct World {
    dir: tempfile::TempDir,
    topo: Topology,
    sdu_config: PathBuf,
}

impl World {
    async fn start() -> World {
        shep_runtime::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = TopologyConfig {
            pki_dir: dir.path().join("pki"),
            data_dir: dir.path().join("data"),
            clock: ClockKind::Manual,
            start_sdu: false,
            ..TopologyConfig::default()
        }
        .with_free_ports();
        cfg.log.level = "warn".into();
        cfg.sim.seed = 42;
        cfg.sim.individuals = 5_000;
        cfg.sim.organizations = 500;
        cfg.sim.renames_per_day = 30;
        cfg.sim.name_changes_per_day = 60;
        cfg.sim.today = Some(jiff::civil::date(2026, 3, 2));
        // Every answer comes well within the 3-day wait, so an outcome does not depend on
        // when the clock moved past an answer (the answers themselves are drawn per case).
        cfg.sim.answers.max_delay_minutes = 12 * 60;
        let topo = Topology::start(cfg, Shutdown::new()).await.expect("the topology starts");
        let pki = topo.pki.dir().to_owned();
        let p = |f: &str| pki.join(f).display().to_string();
        let sdu_config = dir.path().join("sdu.toml");
        std::fs::write(
            &sdu_config,
            format!(
                r#"clock = "scenario"
[scenario_clock]
poll_ms = 20
[node]
system = "sdu"
listen = "127.0.0.1:0"
[node.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
crl = "{crl}"
[node.log]
level = "warn"
[sdu]
bus_url = "https://127.0.0.1:{bus}"
db = "{db}"
concurrency = 4
lookup_batch = 4
timer_poll_ms = 20
retry_base_ms = 50
retry_max_ms = 1000
"#,
                ca = p("ca.pem"),
                cert = p("sdu.pem"),
                key = p("sdu.key"),
                crl = p("crl.pem"),
                bus = topo.bus_addr.port(),
                db = dir.path().join("data/sdu.sqlite").display(),
            ),
        )
        .unwrap();
        World { dir, topo, sdu_config }
    }

    /// Starts `shep node sdu` on the world's database.
    async fn sdu(&self) -> SduProcess {
        SduProcess::start(&self.sdu_config, self.topo.pki.dir(), self.dir.path()).await
    }

    fn fault(&self, registry: Registry, method: &str, latency_ms: u32) {
        let f = Fault { code: tonic::Code::Ok, rate: 0.0, latency_ms, jitter_ms: 0, outage: None };
        self.topo.sim.faults().set(registry, method, f);
    }

    /// The SMS in PEP's outbox, by (case, attempt).
    fn outbox(&self) -> BTreeMap<(String, u32), usize> {
        let st = self.topo.sim.state();
        let mut m = BTreeMap::new();
        for s in st.sms.outbox() {
            *m.entry((s.case_id.clone(), s.attempt)).or_insert(0) += 1;
        }
        m
    }

    fn sms_count(&self) -> usize {
        self.topo.sim.state().sms.outbox().len()
    }

    /// The permits e-license formed by re-issue, by the number of the permit each replaced.
    fn reissues(&self) -> BTreeMap<String, usize> {
        let st = self.topo.sim.state();
        let country = self.topo.sim.country();
        let base = country.permits().len() as u32;
        let mut m = BTreeMap::new();
        for i in base..base + st.permits.new_count() as u32 {
            let new = st.permits.get(country, i).expect("a formed permit");
            let old = st.permits.get(country, new.replaces.expect("replaces a permit")).expect("the old permit");
            *m.entry(old.number()).or_insert(0) += 1;
        }
        m
    }

    fn reissue_count(&self) -> usize {
        self.topo.sim.state().permits.new_count()
    }

    /// Moves the simulation's clock; returns the new time (Unix seconds).
    fn advance(&self, secs: u64) -> i64 {
        self.topo.sim.clock().advance(secs)
    }
}

/// A `shep node sdu` child process; killed (SIGKILL) when dropped, so none outlives a test.
struct SduProcess {
    child: tokio::process::Child,
    client: ProactiveServiceClient<Channel>,
}

impl SduProcess {
    async fn start(config: &Path, pki: &Path, cwd: &Path) -> SduProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shep"))
            .current_dir(cwd)
            .args(["node", "sdu", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("shep node sdu starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr: SocketAddr = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(a) = line.strip_prefix("sdu listening on ") {
                    return a.trim().parse().unwrap();
                }
            }
            panic!("shep node sdu ended before it listened");
        })
        .await
        .expect("shep node sdu prints its address");
        // Keep reading so that the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let tls = TlsConfig::from_pki_dir(pki, "operator");
        let ch = shep_runtime::tls::channel(&tls, &format!("https://127.0.0.1:{}", addr.port())).unwrap();
        SduProcess { child, client: ProactiveServiceClient::new(ch) }
    }

    /// SIGKILL, and waits until the process is gone.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let status = self.child.wait().await.unwrap();
        assert!(!status.success(), "killed, not exited: {status:?}");
    }

    async fn run_daily(&mut self) {
        self.client
            .run_daily(RunDailyRequest { pilot_id: PILOT.into(), date: Some(run_date()) })
            .await
            .expect("RunDaily");
    }

    async fn run(&mut self) -> shep_proto::sdu::Run {
        let run_id = format!("{PILOT}:2026-03-01");
        self.client.get_run(GetRunRequest { run_id }).await.expect("GetRun").into_inner()
    }

    async fn cases(&mut self) -> Vec<Case> {
        let req = ListCasesRequest { pilot_id: PILOT.into(), date: Some(run_date()), ..Default::default() };
        let mut s = self.client.list_cases(req).await.expect("ListCases").into_inner();
        let mut out = vec![];
        while let Some(c) = s.message().await.expect("a case") {
            out.push(c);
        }
        out
    }

    /// True when the node has seen the clock at `now` and has nothing to do until an answer
    /// or a later deadline: its clock caught up, the diff is read, no case has a call due,
    /// no wait has ended without being acted on.
    async fn settled(&mut self, now: i64) -> bool {
        let rep = self
            .client
            .get_report(GetReportRequest { pilot_id: PILOT.into(), date: Some(run_date()) })
            .await
            .expect("GetReport")
            .into_inner();
        if rep.generated_at.is_none_or(|t| t.seconds < now) {
            return false;
        }
        let state = self.run().await.state;
        if ![RunState::Waiting as i32, RunState::Done as i32, RunState::Failed as i32].contains(&state) {
            return false;
        }
        self.cases().await.iter().all(|c| {
            c.outcome != Outcome::Open as i32 || c.answer_deadline.as_ref().is_some_and(|d| d.seconds > now)
        })
    }

    /// Moves the clock through the waits, half a day at a time, until every case has ended.
    async fn finish(&mut self, w: &World) {
        for _ in 0..60 {
            let now = w.topo.sim.now();
            let mut settled = false;
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while !settled {
                assert!(tokio::time::Instant::now() < deadline, "the SDU did not settle at {now}");
                settled = self.settled(now).await;
                if !settled {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let run = self.run().await;
            assert_ne!(run.state, RunState::Failed as i32, "the run failed: {}", run.error);
            if run.state == RunState::Done as i32 {
                return;
            }
            w.advance(12 * 3600);
        }
        panic!("cases still open after 30 days of waits");
    }
}

/// What a run ended with, per subject: outcome, SMS sent, permits offered.
type Outcomes = BTreeMap<String, (i32, u32, Vec<String>)>;

fn outcomes(cases: &[Case]) -> Outcomes {
    cases
        .iter()
        .map(|c| {
            let subject = if c.subject_bin.is_empty() { c.subject_iin.clone() } else { c.subject_bin.clone() };
            (subject, (c.outcome, c.sms_attempts, c.permit_numbers.clone()))
        })
        .collect()
}

fn count(o: &Outcomes, outcome: Outcome) -> usize {
    o.values().filter(|(x, _, _)| *x == outcome as i32).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_sigkill_at_three_points_the_sdu_process_ends_as_an_uninterrupted_run() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The reference: the same seed, the SDU process never interrupted.
    let (reference, ref_sms, ref_reissues, ref_diffs) = {
        let w = World::start().await;
        let mut sdu = w.sdu().await;
        sdu.run_daily().await;
        sdu.finish(&w).await;
        let cases = sdu.cases().await;
        // PEP attributes an answer to the latest SMS sent to the phone: with two cases of one
        // recipient the order of sending (timing) could swap answers. Not in this country.
        let mut asked: Vec<&str> = cases.iter().filter(|c| c.sms_attempts > 0).map(|c| c.recipient_iin.as_str()).collect();
        let n = asked.len();
        asked.sort_unstable();
        asked.dedup();
        assert_eq!(asked.len(), n, "one case per recipient asked");
        let o = outcomes(&cases);
        let diffs = sdu.run().await.counts.map(|c| c.diffs).unwrap_or(0);
        let (sms, re) = (w.outbox(), w.reissues());
        sdu.kill().await;
        w.topo.stop().await.unwrap();
        (o, sms, re, diffs)
    };
    // The country exercises the funnel: SMS, re-sends, re-issues, refusals, silence.
    let reissued_cases = count(&reference, Outcome::Reissued);
    assert!(ref_diffs >= 40, "a diff long enough to be killed in: {ref_diffs}");
    assert!(reissued_cases >= 8, "{reference:?}");
    assert!(count(&reference, Outcome::Refused) + count(&reference, Outcome::NoAnswer) >= 1, "{reference:?}");
    assert!(ref_sms.keys().any(|(_, attempt)| *attempt == 2), "some SMS re-sent: {ref_sms:?}");
    assert!(ref_sms.values().all(|n| *n == 1) && ref_reissues.values().all(|n| *n == 1));
    let first_sms = ref_sms.keys().filter(|(_, a)| *a == 1).count();

    let w = World::start().await;

    // (a) During the diff stream: permit look-ups are slow, so the diff takes seconds
    // (organizations are looked up a few at a time, individuals one by one).
    w.fault(Registry::ELicense, LIST_PERMITS, 100);
    w.fault(Registry::ELicense, LIST_PERMITS_BY_BINS, 100);
    let mut sdu = w.sdu().await;
    sdu.run_daily().await;
    let diffs_at_kill = eventually("a few diffs committed", || {
        let c = sdu.client.clone();
        async move {
            let mut c = c;
            let run = c.get_run(GetRunRequest { run_id: format!("{PILOT}:2026-03-01") }).await.ok()?.into_inner();
            run.counts.map(|c| c.diffs).filter(|d| *d >= 5)
        }
    })
    .await;
    sdu.kill().await;

    // (b) Between SMS and answers: SMS go out slowly; the node dies with some sent (and
    // others in flight), then the citizens answer while it is down.
    w.fault(Registry::Pep, NOTIFY, 150);
    w.fault(Registry::Pep, NOTIFY_BATCH, 150);
    let mut sdu = w.sdu().await;
    // Look-ups are still slow: what the restarted node found is what the killed one left.
    let run = sdu.run().await;
    assert!(run.counts.as_ref().is_some_and(|c| c.diffs < ref_diffs), "killed during the diff: {run:?}");
    assert!(diffs_at_kill < ref_diffs);
    w.fault(Registry::ELicense, LIST_PERMITS, 0);
    w.fault(Registry::ELicense, LIST_PERMITS_BY_BINS, 0);
    eventually("a third of the first SMS sent", || async { (w.sms_count() * 3 >= first_sms).then_some(()) }).await;
    sdu.kill().await;
    w.fault(Registry::Pep, NOTIFY, 0);
    w.fault(Registry::Pep, NOTIFY_BATCH, 0);
    let sent_at_kill = w.sms_count();
    assert!(sent_at_kill < first_sms, "killed while SMS were going out: {sent_at_kill} of {first_sms}");
    w.advance(24 * 3600);

    // (c) During re-issue: the answers taken after the restart lead to slow re-issues.
    w.fault(Registry::ELicense, REISSUE, 300);
    w.fault(Registry::ELicense, REISSUE_BATCH, 300);
    let sdu = w.sdu().await;
    eventually("the first re-issues", || async { (w.reissue_count() >= 2).then_some(()) }).await;
    sdu.kill().await;
    w.fault(Registry::ELicense, REISSUE, 0);
    w.fault(Registry::ELicense, REISSUE_BATCH, 0);
    let reissued_at_kill = w.reissue_count();
    assert!(reissued_at_kill < ref_reissues.len(), "killed during re-issue: {reissued_at_kill} of {}", ref_reissues.len());

    eprintln!(
        "reference: {} diffs, {} cases ({reissued_cases} re-issued), {} SMS, {} permits re-issued; \
         killed at {diffs_at_kill} diffs, at {sent_at_kill} SMS, at {reissued_at_kill} re-issues",
        ref_diffs,
        reference.len(),
        ref_sms.len(),
        ref_reissues.len()
    );

    // Restarted once more on the same database, it finishes the run.
    let mut sdu = w.sdu().await;
    sdu.finish(&w).await;
    let after = outcomes(&sdu.cases().await);
    assert_eq!(after, reference, "the same outcome per subject as the uninterrupted run");
    let sms = w.outbox();
    assert!(sms.values().all(|n| *n == 1), "one SMS per case and attempt: {sms:?}");
    assert_eq!(sms.len(), ref_sms.len(), "as many SMS as the uninterrupted run");
    assert_eq!(sms.keys().collect::<Vec<_>>(), ref_sms.keys().collect::<Vec<_>>());
    let reissues = w.reissues();
    assert!(reissues.values().all(|n| *n == 1), "one re-issue per permit: {reissues:?}");
    assert_eq!(reissues, ref_reissues, "the same permits re-issued");
    sdu.kill().await;
    w.topo.stop().await.unwrap();
}

/// The clock a separate SDU process follows: the simulation's, through the bus, read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenario_clock_follows_the_simulation_through_the_bus_and_fails_clearly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let w = World::start().await;
    let pki = w.topo.pki.dir().to_owned();
    let bus = format!("https://127.0.0.1:{}", w.topo.bus_addr.port());
    let channel = |system: &str, url: &str| shep_runtime::tls::channel(&TlsConfig::from_pki_dir(&pki, system), url).unwrap();
    let settings = ScenarioClockSettings { poll_ms: 20, ..Default::default() };

    let clock: Arc<ScenarioClock> = ScenarioClock::start(channel("sdu", &bus), &bus, &settings).await.unwrap();
    assert_eq!(clock.now().as_second(), w.topo.sim.now());
    let later = w.advance(3 * 3600);
    eventually("the clock follows", || async { (clock.now().as_second() == later).then_some(()) }).await;
    // Never backwards: a reset of the simulation leaves the node's clock where it was.
    w.topo.sim.reset();
    assert!(w.topo.sim.now() < later);
    let mut reads = ScenarioClient::new(channel("operator", &bus));
    reads.get_clock(GetClockRequest {}).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // several polls: none may move it back
    assert_eq!(clock.now().as_second(), later);

    // Through the bus the SDU may read the clock, not move it; the operator may.
    let err = ScenarioClient::new(channel("sdu", &bus))
        .advance_clock(AdvanceClockRequest { seconds: 60 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    reads.advance_clock(AdvanceClockRequest { seconds: 60 }).await.expect("the operator drives Scenario through the bus");

    // Unreachable: the start fails within its timeout and says what it tried.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let quick = ScenarioClockSettings { start_timeout_ms: 300, call_timeout_ms: 200, ..settings.clone() };
    let err = match ScenarioClock::start(channel("sdu", &dead), &dead, &quick).await {
        Ok(_) => panic!("a clock from nowhere"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cannot read the simulation's clock") && err.contains(&dead), "{err}");
    // Refused by the bus (a system without the GetClock grant): at once, no retries.
    let err = match ScenarioClock::start(channel("pep", &bus), &bus, &settings).await {
        Ok(_) => panic!("PEP may not read the clock through the bus"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("PermissionDenied"), "{err}");

    // `shep node sdu` with a scenario clock it cannot read: exit 1 and the reason.
    let cfg = std::fs::read_to_string(&w.sdu_config)
        .unwrap()
        .replace(&format!("https://127.0.0.1:{}", w.topo.bus_addr.port()), &dead)
        .replace("[scenario_clock]\n", "[scenario_clock]\nstart_timeout_ms = 300\n");
    let path = w.dir.path().join("dead.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shep"))
        .current_dir(w.dir.path())
        .args(["node", "sdu", "--config"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot read the simulation's clock"), "{stderr}");
    w.topo.stop().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
