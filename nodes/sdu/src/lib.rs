//! SDU (Smart Data Ukimet): the orchestrator of the proactive re-issue of permits after a
//! change of name (joint orders 000, 001, 004; see `shared/DOMAIN.md`).
//!
//! Modules, one job each:
//! - [`pilot`]: pilots as data (`pilots.toml`, extendable by an operator file);
//! - [`calendar`]: the working-day calendar as data (`calendar/*.toml`), waits in Asia/Almaty;
//! - [`case`]: the case state machine — PURE: `step(case, event, now, pilot, calendar, retry)`;
//! - [`store`]: durable state behind a trait; SQLite (a file) or PostgreSQL (a URL);
//! - [`clients`]: the calls through the bus, prost ↔ domain at the edge;
//! - `runner`: the only part that does I/O: the daily diff, workers, answers and timers;
//! - [`service`]: the gRPC `ProactiveService`;
//! - [`report`]: the funnel table and the per-case JSON records;
//! - [`clock`]: injected time.
//!
//! [`start`] serves the node and resumes every open run, case and timer from the database.

pub mod calendar;
pub mod case;
pub mod clients;
pub mod clock;
pub mod dates;
pub mod error;
pub mod pilot;
pub mod report;
mod runner;
pub mod service;
pub mod settings;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use jiff::civil::Date;
use shep_runtime::{NodeBuilder, NodeConfig, RunningNode, Shutdown};
use tokio::sync::broadcast;

pub use case::{CaseId, Outcome, RunId};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::SduError;
pub use report::{CaseRecord, FunnelReport};
pub use runner::{ANSWER_CURSOR, RunnerConfig};
pub use settings::SduSettings;
pub use store::{EventRecord, FunnelCounts, RunRecord, RunState};

use calendar::Calendar;
use clients::Upstream;
use pilot::PilotCatalog;
use runner::Runner;
use store::{CaseFilter, Store};

/// A handle on a running SDU: what the CLI and the gRPC service call. It does not keep the
/// node alive; after the node stops its methods answer [`SduError::ShuttingDown`].
#[derive(Clone)]
pub struct SduHandle {
    runner: Weak<Runner>,
}

/// The SDU node, serving.
pub struct RunningSdu {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The gRPC services it serves.
    pub services: Vec<String>,
    /// The handle.
    pub handle: SduHandle,
    runner: Arc<Runner>,
    node: RunningNode,
    node_shutdown: Shutdown,
    bridge: tokio::task::JoinHandle<()>,
}

/// Starts the SDU node: loads the pilots and the calendar, opens the database (refusing a
/// second runner), connects to the bus, serves `kz.gov.sdu.v1.ProactiveService`, and
/// resumes every open run, case and timer. Stops when `shutdown` is triggered.
pub async fn start(
    node: NodeConfig,
    settings: SduSettings,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) -> Result<RunningSdu, SduError> {
    settings.validate()?;
    let pilots = Arc::new(PilotCatalog::load(settings.pilots_file.as_deref())?);
    let calendar = Arc::new(Calendar::load(settings.calendar_file.as_deref())?);
    let db = settings.db.clone();
    let store: Arc<dyn Store> = match tokio::task::spawn_blocking(move || store::open(&db)).await {
        Ok(r) => r?,
        Err(e) => return Err(SduError::Settings(format!("opening the database: {e}"))),
    };
    let channel =
        shep_runtime::tls::channel(&node.tls, &settings.bus_url).map_err(|e| SduError::Bus {
            url: settings.bus_url.clone(),
            message: e.to_string(),
        })?;
    let up = Upstream::new(
        channel,
        &node.system,
        Duration::from_millis(settings.call_timeout_ms),
    )
    .batching(settings.call_batch);
    let cfg = RunnerConfig {
        concurrency: settings.concurrency,
        lookup_batch: settings.lookup_batch,
        retry: settings.retry(),
        timer_poll: Duration::from_millis(settings.timer_poll_ms),
        progress_every_cases: settings.progress_every_cases,
        progress_every: Duration::from_secs(settings.progress_every_secs.max(1)),
    };
    let runner = Runner::new(store, up, clock, pilots, calendar, cfg);
    let handle = SduHandle {
        runner: Arc::downgrade(&runner),
    };
    let node_shutdown = Shutdown::new();
    let svc = shep_proto::sdu::proactive_service_server::ProactiveServiceServer::new(
        service::ProactiveApi::new(handle.clone()),
    );
    let running = NodeBuilder::new(node)
        .add_service(svc)
        .descriptor_set(shep_proto::FILE_DESCRIPTOR_SET)
        .start(node_shutdown.clone())
        .await?;
    runner.start();
    let weak = Arc::downgrade(&runner);
    let ns = node_shutdown.clone();
    let bridge = tokio::spawn(async move {
        shutdown.wait().await;
        if let Some(r) = weak.upgrade() {
            r.stop().await;
        }
        ns.trigger();
    });
    tracing::info!(addr = %running.addr, db = %store::describe(&settings.db), bus = %settings.bus_url, "SDU started");
    Ok(RunningSdu {
        addr: running.addr,
        services: running.services.clone(),
        handle,
        runner,
        node: running,
        node_shutdown,
        bridge,
    })
}

impl RunningSdu {
    /// Waits until the node has stopped (after the shutdown signal) and released its database.
    pub async fn wait(self) -> Result<(), SduError> {
        let RunningSdu {
            runner,
            node,
            bridge,
            ..
        } = self;
        let r = node.wait().await;
        let _ = bridge.await;
        runner.stop().await;
        release(runner).await;
        r.map_err(SduError::from)
    }

    /// Stops at once, as if the process were killed: no call in flight is finished, nothing
    /// more is written; the database is released. For tests of resumption.
    pub async fn kill(self) {
        let RunningSdu {
            runner,
            node,
            node_shutdown,
            bridge,
            ..
        } = self;
        bridge.abort();
        runner.stop().await;
        node_shutdown.trigger();
        let _ = node.wait().await;
        release(runner).await;
    }
}

/// Drops the runner once the store calls still running (they cannot be cancelled) finish,
/// so the database lock is free when this returns.
async fn release(runner: Arc<Runner>) {
    for _ in 0..200 {
        if Arc::strong_count(&runner.store) == 1 && Arc::strong_count(&runner) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(runner);
}

impl SduHandle {
    fn runner(&self) -> Result<Arc<Runner>, SduError> {
        self.runner.upgrade().ok_or(SduError::ShuttingDown)
    }

    /// Starts the run of `pilot` for `date` and returns its id at once (the existing run's id
    /// when there is one). Errors: unknown pilot, date out of the pilot's period of force,
    /// calendar without the year of the waits.
    pub async fn run_daily(&self, pilot: &str, date: Date) -> Result<RunId, SduError> {
        Ok(self.runner()?.run_daily(pilot, date).await?.0.id)
    }

    /// As [`SduHandle::run_daily`], with the run and whether it was started now.
    pub async fn start_run(&self, pilot: &str, date: Date) -> Result<(RunRecord, bool), SduError> {
        self.runner()?.run_daily(pilot, date).await
    }

    /// Returns when every case of the run has an outcome or waits on a timer or an answer
    /// (and the run's diff is read, or the run failed).
    pub async fn wait_run_settled(&self, run: &RunId) -> Result<RunRecord, SduError> {
        self.runner()?.wait_settled(run).await
    }

    /// One run.
    pub fn run(&self, run: &RunId) -> Result<RunRecord, SduError> {
        self.runner()?
            .store
            .run(run)?
            .ok_or_else(|| SduError::NoRun(run.0.clone()))
    }

    /// The run of a pilot for a date.
    pub fn run_for(&self, pilot: &str, date: Date) -> Result<RunRecord, SduError> {
        self.runner()?
            .store
            .run(&RunId::of(pilot, date))?
            .ok_or_else(|| SduError::NoRunFor {
                pilot: pilot.to_owned(),
                date,
            })
    }

    /// The funnel of a pilot for a date.
    pub fn report(&self, pilot: &str, date: Date) -> Result<FunnelReport, SduError> {
        let run = self.run_for(pilot, date)?;
        self.report_of(&run)
    }

    /// The funnel of a run.
    pub fn report_of(&self, run: &RunRecord) -> Result<FunnelReport, SduError> {
        let r = self.runner()?;
        let counts = r.store.funnel(&run.id)?;
        Ok(FunnelReport {
            pilot_id: run.pilot_id.clone(),
            date: run.date,
            run_id: run.id.clone(),
            run_state: run.state,
            counts,
            complete: run.state == RunState::Done,
            generated_at: r.now(),
        })
    }

    /// One record per case of a pilot's run for a date, ordered by case id, with the full
    /// history (for `--json`). See [`SduHandle::for_each_case_record`] to stream instead.
    pub fn cases_json(&self, pilot: &str, date: Date) -> Result<Vec<CaseRecord>, SduError> {
        let mut out = vec![];
        self.for_each_case_record(pilot, date, |r| out.push(r))?;
        Ok(out)
    }

    /// Calls `f` with the record of each case of a pilot's run for a date, a page at a time.
    pub fn for_each_case_record(
        &self,
        pilot: &str,
        date: Date,
        mut f: impl FnMut(CaseRecord),
    ) -> Result<(), SduError> {
        let run = self.run_for(pilot, date)?;
        let r = self.runner()?;
        let mut after: Option<CaseId> = None;
        loop {
            let page = r
                .store
                .cases(&run.id, CaseFilter::All, after.as_ref(), 500)?;
            let Some(last) = page.last().map(|c| c.id.clone()) else {
                return Ok(());
            };
            for c in page {
                let steps = r.store.history(&c.id)?;
                f(CaseRecord::new(&c, steps));
            }
            after = Some(last);
        }
    }

    /// One case with its history.
    pub fn case(&self, id: &CaseId) -> Result<(case::Case, Vec<case::HistoryEntry>), SduError> {
        let r = self.runner()?;
        let c = r
            .store
            .case(id)?
            .ok_or_else(|| SduError::NoCase(id.0.clone()))?;
        Ok((c.value, r.store.history(id)?))
    }

    /// A page of a run's cases, by id, after `after`.
    pub fn cases(
        &self,
        run: &RunId,
        filter: CaseFilter,
        after: Option<&CaseId>,
        limit: usize,
    ) -> Result<Vec<case::Case>, SduError> {
        Ok(self.runner()?.store.cases(run, filter, after, limit)?)
    }

    /// Stored events after `seq`, oldest first.
    pub fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<EventRecord>, SduError> {
        Ok(self.runner()?.store.events_after(seq, limit)?)
    }

    /// New events as they are committed.
    pub fn subscribe(&self) -> Result<broadcast::Receiver<EventRecord>, SduError> {
        Ok(self.runner()?.events.subscribe())
    }

    /// The pilots.
    pub fn pilots(&self) -> Result<Vec<pilot::Pilot>, SduError> {
        Ok(self.runner()?.pilots.iter().cloned().collect())
    }

    /// Resolves when the node stops.
    pub async fn stopped(&self) {
        let Ok(r) = self.runner() else { return };
        let mut rx = r.stopping.subscribe();
        drop(r);
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The recorded data of a holder after a re-issue.
    pub fn holder(&self, subject: &case::Subject) -> Result<Option<store::HolderRecord>, SduError> {
        Ok(self.runner()?.store.holder(subject)?)
    }
}
