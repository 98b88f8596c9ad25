//! The runner: the only part of SDU that does I/O. It feeds events to the pure state
//! machine ([`crate::case::step`]), commits what it returns, and performs its calls.
//!
//! Tasks:
//! - a **collector** per run reads the day's diff (GBD UL, then ZAGS) as a stream, looks up
//!   permits with bounded concurrency (`buffered`, so commits stay in stream order) —
//!   consecutive organizations at hand together, up to `lookup_batch` in one e-license
//!   `ListPermitsByBins` call, individuals one by one with their consent token — and
//!   commits each diff with its stream cursor (those at hand, up to 256, in one store
//!   call): memory does not grow with the diff, and a restart continues after the last
//!   committed diff;
//! - **workers** drive cases (at most `concurrency` at once, each case by one worker at a
//!   time) until they wait or close;
//! - the **answer loop** follows PEP's answers with a durable cursor committed in the same
//!   transaction as the case the answer moves, and fires due timers (after draining the
//!   answers PEP already holds, so an answer given in time is never overtaken by its timer);
//! - a **progress** reporter logs running runs.
//!
//! Every commit is compare-and-swap on the case's version; a step that lost a race is
//! replayed on the fresh case. Every call is idempotent (PEP by case and attempt, e-license
//! by a key from case and permit), so a call repeated after a crash sends no second SMS and
//! re-issues nothing twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use jiff::civil::Date;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinSet;

use crate::calendar::Calendar;
use crate::case::{
    self, Call, CallKind, Case, CaseId, Effect, Event, HistoryEntry, HolderUpdate, LookupFailure,
    Opening, RetryPolicy, SCOPE_ACTS, SCOPE_NOTIFY, SCOPE_PERMITS_READ, SCOPE_PERSON,
    SCOPE_REISSUE, Subject,
};
use crate::clients::{AnswerItem, CallError, DiffItem, Notified, NotifyRequest, Token, Upstream};
use crate::clock::Clock;
use crate::dates::almaty;
use crate::error::SduError;
use crate::pilot::{DayCount, Language, Pilot, PilotCatalog, SubjectKind};
use crate::store::{
    CaseCommit, CommitResult, DiffCommit, DiffPhase, EventRecord, RunRecord, RunState, Store,
    StoreError, Versioned,
};

/// How often cases with a call due and no worker are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The durable cursor of PEP's answer stream.
pub const ANSWER_CURSOR: &str = "pep:answers";

/// Answers taken together at most: their cases read at once and their changes committed in
/// one store call (see [`Runner::take_answers`]).
const ANSWER_BATCH: usize = 256;

/// Diffs committed together at most (one store call, one SQLite transaction).
const DIFF_COMMIT_BATCH: usize = 256;

/// How the runner behaves (from [`crate::SduSettings`]).
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Cases driven at once, and diff look-ups in flight at once.
    pub concurrency: usize,
    /// Organizations of a diff looked up in one call (1: one `ListPermits` per subject).
    pub lookup_batch: usize,
    /// Retries of calls and streams.
    pub retry: RetryPolicy,
    /// How often timers are checked.
    pub timer_poll: Duration,
    /// Log a run's diff progress every this many diffs.
    pub progress_every_cases: u64,
    /// Log running runs every this long.
    pub progress_every: Duration,
}

pub(crate) struct Runner {
    pub(crate) store: Arc<dyn Store>,
    up: Upstream,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) pilots: Arc<PilotCatalog>,
    calendar: Arc<Calendar>,
    cfg: RunnerConfig,
    pub(crate) events: broadcast::Sender<EventRecord>,
    pub(crate) changed: watch::Sender<u64>,
    /// The clock time (unix seconds) up to which the timer loop has fired due deadlines:
    /// a run is not settled while the clock is ahead of it (a manual clock just jumped).
    timers_at: watch::Sender<i64>,
    inflight: Mutex<HashMap<CaseId, bool>>,
    slots: Arc<Semaphore>,
    sweep_now: tokio::sync::Notify,
    tasks: Mutex<JoinSet<()>>,
    collecting: Mutex<HashSet<crate::case::RunId>>,
    pub(crate) stopping: watch::Sender<bool>,
}

enum Looked {
    Skip,
    NoPermits,
    Open(Box<(Case, Vec<HistoryEntry>)>),
}

impl Looked {
    /// The case opened, with its first history entries.
    fn opened(&self) -> Option<(&Case, &[HistoryEntry])> {
        match self {
            Looked::Open(b) => Some((&b.0, b.1.as_slice())),
            Looked::Skip | Looked::NoPermits => None,
        }
    }
}

/// The result of looking up one diff item: its cursor, whether it is a change that counts,
/// and what was found.
type LookedItem = (String, bool, Looked);

/// What one look-up future of the diff handles: one item (an individual, an entry that is
/// no change, a broken stream), or consecutive organizations looked up in one call.
enum Unit {
    One(Result<DiffItem, CallError>),
    Orgs(Vec<DiffItem>),
}

/// Splits a chunk of the diff stream into units, in order: each run of consecutive
/// organizations is one [`Unit::Orgs`], everything else a [`Unit::One`].
fn units(chunk: Vec<Result<DiffItem, CallError>>) -> Vec<Unit> {
    let mut out = vec![];
    let mut orgs = vec![];
    for item in chunk {
        match item {
            Ok(d) if matches!(&d.change, Some(c) if matches!(c.subject, Subject::Organization(_))) => {
                orgs.push(d)
            }
            other => {
                if !orgs.is_empty() {
                    out.push(Unit::Orgs(std::mem::take(&mut orgs)));
                }
                out.push(Unit::One(other));
            }
        }
    }
    if !orgs.is_empty() {
        out.push(Unit::Orgs(orgs));
    }
    out
}

/// A spawned task, awaited for its output and aborted when dropped (a stopped run stops
/// its look-ups).
struct Spawned<T>(tokio::task::JoinHandle<T>);

impl<T: Send + 'static> Spawned<T> {
    fn new(f: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Spawned(tokio::spawn(f))
    }
}

impl<T> Drop for Spawned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for Spawned<T> {
    type Output = T;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<T> {
        match std::pin::Pin::new(&mut self.0).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Ok(v)) => std::task::Poll::Ready(v),
            // Cancelled: the runtime is shutting down, and this future with it.
            std::task::Poll::Ready(Err(e)) if e.is_cancelled() => std::task::Poll::Pending,
            // A panic in a look-up is a bug: pass it on.
            std::task::Poll::Ready(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// PEP's answer stream, in the chunks at hand (up to [`ANSWER_BATCH`]).
type AnswerChunks =
    futures::stream::BoxStream<'static, Vec<Result<AnswerItem, CallError>>>;

/// A case stepped through one event: the new case, its history entries and holder data,
/// the call due, and whether anything changed at all.
struct Stepped {
    next: Case,
    history: Vec<HistoryEntry>,
    holder: Option<HolderUpdate>,
    call: Option<(Duration, Call)>,
    changed: bool,
}

/// The event of an answer from PEP; `now` when PEP gave no time.
fn answer_event(a: &AnswerItem, now: Timestamp) -> Event {
    Event::Answer {
        attempt: a.attempt,
        sms_id: a.sms_id.clone(),
        text: a.text.clone(),
        received_at: a.received_at.unwrap_or(now),
    }
}

/// The items of a chunk of a stream up to its first error, and that error: a stream that
/// broke ends with it.
fn ok_prefix<T>(chunk: Vec<Result<T, CallError>>) -> (Vec<T>, Option<CallError>) {
    let mut items = Vec::with_capacity(chunk.len());
    for item in chunk {
        match item {
            Ok(a) => items.push(a),
            Err(e) => return (items, Some(e)),
        }
    }
    (items, None)
}

fn split(
    fx: Vec<Effect>,
) -> (
    Vec<HistoryEntry>,
    Option<HolderUpdate>,
    Option<(Duration, Call)>,
) {
    let mut history = vec![];
    let mut holder = None;
    let mut call = None;
    for e in fx {
        match e {
            Effect::History(h) => history.push(h),
            Effect::SaveHolder(h) => holder = Some(h),
            Effect::Call(c) => call = Some((Duration::ZERO, c)),
            Effect::CallAfter { delay, call: c } => call = Some((delay, c)),
        }
    }
    (history, holder, call)
}

fn failed(kind: CallKind, e: CallError) -> Event {
    match e.consent_refused {
        Some(scope) => Event::ConsentRefused { scope },
        None => Event::CallFailed {
            call: kind,
            error: e.message,
            retryable: e.retryable,
        },
    }
}

/// What the permit look-up of one change found: no case without permits, else its case,
/// open, or closed at once when the look-up failed.
fn looked(
    run: &RunRecord,
    pilot: &Pilot,
    change: &crate::clients::NameChange,
    result: Result<Vec<case::PermitItem>, LookupFailure>,
    now: Timestamp,
) -> Looked {
    let opening = |permits| Opening {
        run_id: run.id.clone(),
        pilot_id: pilot.id.clone(),
        date: run.date,
        subject: change.subject,
        old_name: change.old_name.clone(),
        new_name: change.new_name.clone(),
        permits,
        head: change.head,
    };
    let (case, fx) = match result {
        Ok(permits) if permits.is_empty() => return Looked::NoPermits,
        Ok(permits) => case::open(opening(permits), now),
        Err(why) => case::open_closed(opening(vec![]), why, now),
    };
    let (history, _, _) = split(fx);
    Looked::Open(Box::new((case, history)))
}

/// Tokens obtained while one worker drives one case.
#[derive(Default)]
struct Tokens(HashMap<(shep_domain::Iin, &'static str), Token>);

impl Runner {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        up: Upstream,
        clock: Arc<dyn Clock>,
        pilots: Arc<PilotCatalog>,
        calendar: Arc<Calendar>,
        cfg: RunnerConfig,
    ) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        Arc::new(Runner {
            store,
            up,
            clock,
            pilots,
            calendar,
            cfg,
            events: broadcast::channel(4096).0,
            changed: watch::channel(0).0,
            timers_at: watch::channel(i64::MIN).0,
            inflight: Mutex::new(HashMap::new()),
            slots,
            sweep_now: tokio::sync::Notify::new(),
            tasks: Mutex::new(JoinSet::new()),
            collecting: Mutex::new(HashSet::new()),
            stopping: watch::channel(false).0,
        })
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow with the number of cases.
        while tasks.try_join_next().is_some() {}
        if !*self.stopping.borrow() {
            tasks.spawn(fut);
        }
    }

    /// Stops every task at once (the work is durable; a restart resumes it) and waits until
    /// they are gone.
    pub(crate) async fn stop(&self) {
        self.stopping.send_replace(true);
        self.slots.close();
        let mut set = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        set.abort_all();
        while set.join_next().await.is_some() {}
    }

    async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Runs a store call off the async threads.
    /// A busy database (locked for a moment) is tried again, for up to about ten seconds.
    pub(crate) async fn st<T: Send + 'static>(
        &self,
        f: impl Fn(&dyn Store) -> Result<T, StoreError> + Send + Sync + 'static,
    ) -> Result<T, StoreError> {
        let f = Arc::new(f);
        let mut tries = 0u32;
        loop {
            let (store, f2) = (self.store.clone(), f.clone());
            let r = match tokio::task::spawn_blocking(move || f2(store.as_ref())).await {
                Ok(r) => r,
                Err(e) => Err(StoreError::Backend(format!("store task: {e}"))),
            };
            match r {
                Err(StoreError::Busy(why)) if tries < 100 => {
                    tries += 1;
                    if tries == 1 {
                        tracing::warn!(why = %why, "the database is busy; trying again");
                    }
                    tokio::time::sleep(Duration::from_millis(u64::from(tries.min(10)) * 10)).await;
                }
                other => return other,
            }
        }
    }

    pub(crate) fn publish(&self, events: Vec<EventRecord>) {
        let run_changed = events
            .iter()
            .any(|e| matches!(e.what, crate::store::EventWhat::RunState(_)));
        for e in events {
            let _ = self.events.send(e);
        }
        if run_changed {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    // ---- starting -----------------------------------------------------------------------

    /// Resumes every open piece of work: collectors of runs still reading their diff, every
    /// case with a call due, and the answer/timer loop.
    pub(crate) fn start(self: &Arc<Self>) {
        let this = self.clone();
        self.spawn(async move { this.answer_loop().await });
        let this = self.clone();
        self.spawn(async move { this.progress_loop().await });
        let this = self.clone();
        self.spawn(async move { this.sweep_loop().await });
        let this = self.clone();
        self.spawn(async move {
            match this.st(|s| s.runs_collecting()).await {
                Ok(runs) => {
                    for run in runs {
                        tracing::info!(run = %run.id, phase = run.phase.as_str(), diffs = run.diffs, "resuming the diff of a run");
                        this.start_collector(run);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list the runs to resume"),
            }
            let mut after: Option<CaseId> = None;
            let mut resumed = 0u64;
            loop {
                let a = after.clone();
                let page = match this.st(move |s| s.actionable_cases(a.as_ref(), 500)).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot list the cases to resume");
                        break;
                    }
                };
                let Some(last) = page.last().cloned() else { break };
                for id in page {
                    resumed += 1;
                    this.dispatch(id).await;
                }
                after = Some(last);
            }
            if resumed > 0 {
                tracing::info!(cases = resumed, "resumed the open cases");
            }
        });
    }

    /// Starts (or finds) the run of `pilot` for `date`; returns at once.
    pub(crate) async fn run_daily(
        self: &Arc<Self>,
        pilot_id: &str,
        date: Date,
    ) -> Result<(RunRecord, bool), SduError> {
        if *self.stopping.borrow() {
            return Err(SduError::ShuttingDown);
        }
        let pilot = self.pilots.get(pilot_id)?;
        pilot.check_in_force(date)?;
        let now = self.clock.now();
        if pilot.day_count == DayCount::Working {
            // The waits are counted from when the SMS go out: now and the weeks after.
            let today = now.to_zoned_datetime(almaty()).date();
            let later = today.saturating_add(jiff::Span::new().days(45));
            for y in [today.year(), later.year()] {
                if !self.calendar.covers(y) {
                    return Err(crate::calendar::CalendarError::YearNotCovered(y).into());
                }
            }
        }
        let pid = pilot_id.to_owned();
        let (rec, created, events) = self.st(move |s| s.create_run(&pid, date, now)).await?;
        self.publish(events);
        if created {
            tracing::info!(run = %rec.id, pilot = pilot_id, %date, "run started");
            self.start_collector(rec.clone());
            return Ok((rec, true));
        }
        if rec.state == RunState::Failed && rec.phase != DiffPhase::Done {
            // Asked again after its diff failed: go on from the last diff taken.
            let rid = rec.id.clone();
            let events = self.st(move |s| s.reopen_run(&rid, now)).await?;
            self.publish(events);
            let rid = rec.id.clone();
            let rec = self
                .st(move |s| s.run(&rid))
                .await?
                .ok_or_else(|| SduError::NoRun(rec.id.0.clone()))?;
            tracing::info!(run = %rec.id, diffs = rec.diffs, "failed run resumed");
            self.start_collector(rec.clone());
            return Ok((rec, false));
        }
        Ok((rec, false))
    }

    // ---- the diff -------------------------------------------------------------------------

    fn start_collector(self: &Arc<Self>, run: RunRecord) {
        if !self
            .collecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run.id.clone())
        {
            return;
        }
        let this = self.clone();
        self.spawn(async move {
            let id = run.id.clone();
            let result = this.collect(run).await;
            // Leave the set before the failure is visible, so that a RunDaily that sees the
            // run FAILED can start a new collector.
            this.collecting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            if let Err(e) = result {
                tracing::error!(run = %id, error = %e, "the run failed");
                let at = this.clock.now();
                let (rid, msg) = (id.clone(), e.to_string());
                match this.st(move |s| s.fail_run(&rid, &msg, at)).await {
                    Ok(ev) => this.publish(ev),
                    Err(e) => tracing::error!(run = %id, error = %e, "cannot record the failure of the run"),
                }
            }
        });
    }

    async fn collect(self: &Arc<Self>, run: RunRecord) -> Result<(), String> {
        let pilot = self
            .pilots
            .get(&run.pilot_id)
            .map_err(|e| e.to_string())?
            .clone();
        let mut phase = run.phase;
        loop {
            let (covered, next) = match phase {
                DiffPhase::GbdUl => (pilot.covers(SubjectKind::Organization), DiffPhase::Zags),
                DiffPhase::Zags => (pilot.covers(SubjectKind::Individual), DiffPhase::Done),
                DiffPhase::Done => break,
            };
            if covered {
                self.collect_phase(&run, &pilot, phase).await?;
            }
            let (rid, at) = (run.id.clone(), self.clock.now());
            let ev = self
                .st(move |s| s.set_phase(&rid, next, at))
                .await
                .map_err(|e| e.to_string())?;
            self.publish(ev);
            phase = next;
        }
        let rec = self
            .st({
                let rid = run.id.clone();
                move |s| s.run(&rid)
            })
            .await
            .map_err(|e| e.to_string())?;
        if let Some(r) = rec {
            tracing::info!(run = %r.id, diffs = r.diffs, cases = r.active + r.waiting + r.closed, "diff read");
        }
        Ok(())
    }

    async fn collect_phase(
        self: &Arc<Self>,
        run: &RunRecord,
        pilot: &Pilot,
        phase: DiffPhase,
    ) -> Result<(), String> {
        let mut failures = 0u32;
        let cursor_name = phase.cursor_name(&run.id);
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut seen = 0u64;
        let mut opened = 0u64;
        loop {
            let name = cursor_name.clone();
            let cursor = self
                .st(move |s| s.cursor(&name))
                .await
                .map_err(|e| e.to_string())?;
            let stream = match phase {
                DiffPhase::GbdUl => {
                    self.bounded(
                        "gbdul.StreamNameChanges",
                        self.up.name_changes(run.date, cursor),
                    )
                    .await
                }
                _ => {
                    self.bounded("zags.StreamActs", self.up.name_acts(run.date, cursor))
                        .await
                }
            };
            let broken = match stream {
                Err(e) => Some(e),
                Ok(stream) => {
                    let this = self.clone();
                    let pilot2 = pilot.clone();
                    let run2 = run.clone();
                    // Units in stream order: with batching, the consecutive organizations at
                    // hand (up to `lookup_batch`) form one; without, every item is its own.
                    let batch = self.cfg.lookup_batch.max(1);
                    let units: futures::stream::BoxStream<'static, Unit> = if batch == 1 {
                        stream.map(Unit::One).boxed()
                    } else {
                        stream
                            .ready_chunks(batch)
                            .flat_map(|chunk| futures::stream::iter(units(chunk)))
                            .boxed()
                    };
                    // Each look-up runs as a task of its own, so that its answer is read as
                    // it arrives even while this loop waits for a worker to take a case: an
                    // answer left unread would hold the HTTP/2 connection's flow-control
                    // window that the workers' calls need, and the workers would never free
                    // the slot this loop waits for.
                    let looked = units
                        .map(move |unit| {
                            let (this, pilot, run) = (this.clone(), pilot2.clone(), run2.clone());
                            Spawned::new(async move {
                                match unit {
                                    Unit::One(Ok(d)) => {
                                        let l = this.lookup(&run, &pilot, &d).await;
                                        vec![Ok((d.cursor, d.change.is_some(), l))]
                                    }
                                    Unit::One(Err(e)) => vec![Err(e)],
                                    Unit::Orgs(items) => this
                                        .lookup_orgs(&run, &pilot, items)
                                        .await
                                        .into_iter()
                                        .map(Ok)
                                        .collect(),
                                }
                            })
                        })
                        .buffered(self.cfg.concurrency.max(1))
                        .flat_map(futures::stream::iter);
                    // The diffs looked up at hand are committed together (in order, one
                    // store call), then their cases are dispatched.
                    let looked = looked.ready_chunks(DIFF_COMMIT_BATCH);
                    futures::pin_mut!(looked);
                    let mut broken = None;
                    while let Some(chunk) = looked.next().await {
                        let (items, err) = ok_prefix(chunk);
                        broken = err;
                        if !items.is_empty() {
                            failures = 0;
                        }
                        let counted = items.iter().filter(|(_, c, _)| *c).count() as u64;
                        opened += self
                            .commit_diffs(run, phase, items)
                            .await
                            .map_err(|e| e.to_string())?;
                        let before = seen;
                        seen += counted;
                        let every = self.cfg.progress_every_cases;
                        if (every > 0 && seen / every > before / every)
                            || last_log.elapsed() >= self.cfg.progress_every
                        {
                            last_log = Instant::now();
                            let secs = started.elapsed().as_secs_f64().max(1e-9);
                            tracing::info!(
                                run = %run.id,
                                phase = phase.as_str(),
                                diffs = seen,
                                cases = opened,
                                per_sec = format!("{:.0}", seen as f64 / secs),
                                "reading the diff"
                            );
                        }
                        if broken.is_some() {
                            break;
                        }
                    }
                    broken
                }
            };
            let Some(e) = broken else { return Ok(()) };
            failures += 1;
            if !e.retryable || failures >= self.cfg.retry.max_attempts {
                return Err(format!("the diff stream failed: {}", e.message));
            }
            let delay = self.cfg.retry.delay(failures);
            tracing::warn!(run = %run.id, error = %e.message, retry_in_ms = delay.as_millis() as u64, "the diff stream broke; resuming from the last diff taken");
            tokio::time::sleep(delay).await;
        }
    }

    /// Runs a diff's look-up until it succeeds, is refused for want of consent, fails for
    /// good, or has failed `retry.max_attempts` times, pausing between tries as the retry
    /// policy says.
    async fn retrying<T, F>(&self, mut attempt: impl FnMut() -> F) -> Result<T, LookupFailure>
    where
        F: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut failures = 0u32;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if let Some(scope) = e.consent_refused {
                        return Err(LookupFailure::ConsentRefused { scope });
                    }
                    failures += 1;
                    if !e.retryable || failures >= self.cfg.retry.max_attempts {
                        return Err(LookupFailure::Failed { error: e.message });
                    }
                    tokio::time::sleep(self.cfg.retry.delay(failures)).await;
                }
            }
        }
    }

    /// Looks up one diff's permits (with retries), and opens its case when it has some.
    async fn lookup(&self, run: &RunRecord, pilot: &Pilot, d: &DiffItem) -> Looked {
        let Some(change) = &d.change else {
            return Looked::Skip;
        };
        let result = self
            .retrying(|| async {
                let token = match change.subject {
                    Subject::Organization(_) => None,
                    Subject::Individual(iin) => Some(
                        self.bounded(
                            "kdp.IssueToken",
                            self.up.issue_token(iin, SCOPE_PERMITS_READ),
                        )
                        .await?,
                    ),
                };
                self.bounded(
                    "elicense.ListPermits",
                    self.up
                        .list_permits(&change.subject, &pilot.services, token.as_ref()),
                )
                .await
            })
            .await;
        looked(run, pilot, change, result, self.clock.now())
    }

    /// Looks up the permits of consecutive organizations of a diff in one e-license
    /// `ListPermitsByBins` call (retried as a single look-up is), and opens the case of each
    /// that has some; when the call keeps failing, every case of the group is opened FAILED,
    /// as after a failed single look-up. One result per item, in order.
    async fn lookup_orgs(
        &self,
        run: &RunRecord,
        pilot: &Pilot,
        items: Vec<DiffItem>,
    ) -> Vec<LookedItem> {
        let bins: Vec<shep_domain::Bin> = items
            .iter()
            .filter_map(|d| match d.change.as_ref().map(|c| c.subject) {
                Some(Subject::Organization(b)) => Some(b),
                _ => None,
            })
            .collect();
        let result = self
            .retrying(|| {
                self.bounded(
                    "elicense.ListPermitsByBins",
                    self.up.list_permits_by_bins(&bins, &pilot.services),
                )
            })
            .await;
        let now = self.clock.now();
        let mut found = match result {
            Ok(found) => Ok(found.into_iter()),
            Err(why) => Err(why),
        };
        items
            .into_iter()
            .map(|d| {
                let l = match &d.change {
                    // Not an organization: `units` never puts one here.
                    None => Looked::Skip,
                    Some(change) => {
                        let r = match &mut found {
                            Ok(it) => it.next().map(|(_, permits)| permits).ok_or_else(|| {
                                LookupFailure::Failed {
                                    error: "elicense.ListPermitsByBins: fewer entries than BINs"
                                        .into(),
                                }
                            }),
                            Err(why) => Err(why.clone()),
                        };
                        looked(run, pilot, change, r, now)
                    }
                };
                (d.cursor, d.change.is_some(), l)
            })
            .collect()
    }

    /// Commits diffs in order in one store call, then dispatches the cases they opened.
    /// Returns how many cases were opened.
    async fn commit_diffs(
        self: &Arc<Self>,
        run: &RunRecord,
        phase: DiffPhase,
        items: Vec<LookedItem>,
    ) -> Result<u64, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let rid = run.id.clone();
        let at = self.clock.now();
        let items = Arc::new(items);
        let i2 = items.clone();
        let results = self
            .st(move |s| {
                let commits: Vec<DiffCommit<'_>> = i2
                    .iter()
                    .map(|(cursor, counted, looked)| DiffCommit {
                        run: &rid,
                        phase,
                        cursor,
                        counted: *counted,
                        opened: looked.opened(),
                        at,
                    })
                    .collect();
                s.commit_diffs(&commits)
            })
            .await?;
        let mut opened = 0;
        for ((_, _, looked), res) in items.iter().zip(results) {
            self.publish(res.events);
            if !res.opened {
                continue;
            }
            opened += 1;
            if let Some((c, _)) = looked.opened().filter(|(c, _)| c.state.class() == case::StateClass::Active) {
                self.dispatch(c.id.clone()).await;
            }
        }
        Ok(opened)
    }

    // ---- driving cases ----------------------------------------------------------------------

    /// Has a worker drive the case; waits for a free slot. A case already being driven is
    /// driven once more by its worker instead.
    pub(crate) async fn dispatch(self: &Arc<Self>, id: CaseId) {
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = inflight.get_mut(&id) {
                *again = true;
                return;
            }
            inflight.insert(id.clone(), false);
        }
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            self.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return;
        };
        self.run_worker(id, slot);
    }

    fn run_worker(self: &Arc<Self>, id: CaseId, slot: tokio::sync::OwnedSemaphorePermit) {
        let this = self.clone();
        self.spawn(async move {
            let _slot = slot;
            loop {
                this.drive(&id).await;
                let mut inflight = this.inflight.lock().unwrap_or_else(|p| p.into_inner());
                match inflight.get_mut(&id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        inflight.remove(&id);
                        break;
                    }
                }
            }
        });
    }

    /// Hands a case to a worker when one is free now; otherwise wakes the sweeper, which
    /// hands it over as soon as one is. Used where waiting for a worker would hold up
    /// something else (taking the next answer, firing the next timer).
    fn try_dispatch(self: &Arc<Self>, id: CaseId) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(again) = inflight.get_mut(&id) {
            *again = true;
            return;
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            drop(inflight);
            self.sweep_now.notify_one();
            return;
        };
        inflight.insert(id.clone(), false);
        drop(inflight);
        self.run_worker(id, slot);
    }

    async fn load(&self, id: &CaseId) -> Result<Option<Versioned<Case>>, StoreError> {
        let id2 = id.clone();
        self.st(move |s| s.case(&id2)).await
    }

    /// Steps a case through `event`; `None` (logged) when its pilot is no longer in the
    /// catalog: the case is then left as it is.
    fn step_case(&self, case: &Case, event: Event, now: Timestamp) -> Option<Stepped> {
        let pilot = match self.pilots.get(&case.pilot_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(case = %case.id, error = %e, "the case's pilot is no longer in the catalog; the case is left as it is");
                return None;
            }
        };
        let (next, fx) = case::step(case, event, now, pilot, &self.calendar, &self.cfg.retry);
        let (history, holder, call) = split(fx);
        let changed = next != *case || !history.is_empty() || holder.is_some();
        Some(Stepped {
            next,
            history,
            holder,
            call,
            changed,
        })
    }

    /// Steps the case with `event`, commits (replaying on a conflict on the fresh case), and
    /// returns the case as committed with the call due, if any. `known` is the case as the
    /// caller last committed it (saves a read; a stale one only costs a conflict). `cursor`
    /// is committed with the change, or alone when the step changes nothing or the case is
    /// not one of ours.
    ///
    /// With `deferred` (a worker driving a case), a step whose next call is a look-up due
    /// now is not committed: its history waits in `deferred` and is committed with the
    /// next step that is (a call with an effect, a wait, an outcome). The returned case then
    /// keeps the committed version. Should that commit lose a race, the deferred steps are
    /// dropped and the case resumes from what is committed (the look-ups are made again).
    async fn apply(
        &self,
        id: &CaseId,
        mut event: Event,
        cursor: Option<(String, String)>,
        mut known: Option<Versioned<Case>>,
        mut deferred: Option<&mut Vec<HistoryEntry>>,
    ) -> Result<Option<(Versioned<Case>, Option<(Duration, Call)>)>, StoreError> {
        loop {
            let v = match known.take() {
                Some(v) => v,
                None => match self.load(id).await? {
                    Some(v) => v,
                    None => {
                        self.save_cursor(cursor).await?;
                        return Ok(None);
                    }
                },
            };
            let now = self.clock.now();
            let Some(Stepped {
                next,
                mut history,
                holder,
                call,
                changed,
            }) = self.step_case(&v.value, event.clone(), now)
            else {
                self.save_cursor(cursor).await?;
                return Ok(None);
            };
            if !changed {
                self.save_cursor(cursor).await?;
                return Ok(Some((v, call)));
            }
            let mut chained = false;
            if let Some(d) = deferred.as_deref_mut() {
                let lookup_now = matches!(&call, Some((delay, c)) if delay.is_zero() && c.is_lookup());
                if lookup_now && holder.is_none() && cursor.is_none() {
                    d.append(&mut history);
                    return Ok(Some((Versioned { value: next, version: v.version }, call)));
                }
                if !d.is_empty() {
                    chained = true;
                    let mut all = std::mem::take(d);
                    all.append(&mut history);
                    history = all;
                }
            }
            let (case2, cur2, version) = (next.clone(), cursor.clone(), v.version);
            let res = self
                .st(move |s| {
                    s.commit_case(CaseCommit {
                        case: &case2,
                        expected_version: version,
                        history: &history,
                        holder: holder.as_ref(),
                        cursor: cur2.as_ref().map(|(n, v)| (n.as_str(), v.as_str())),
                        at: now,
                    })
                })
                .await;
            match res {
                Ok(CommitResult::Committed(events)) => {
                    self.publish(events);
                    return Ok(Some((
                        Versioned {
                            value: next,
                            version: version + 1,
                        },
                        call,
                    )));
                }
                Ok(CommitResult::Conflict) if chained => {
                    // The case moved under the chained look-ups: start again from the store.
                    event = Event::Resume;
                    continue;
                }
                Ok(CommitResult::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn save_cursor(&self, cursor: Option<(String, String)>) -> Result<(), StoreError> {
        match cursor {
            Some((name, value)) => self.st(move |s| s.set_cursor(&name, &value)).await,
            None => Ok(()),
        }
    }

    /// Drives a case until it waits or closes.
    async fn drive(&self, id: &CaseId) {
        let mut event = Event::Resume;
        let mut tokens = Tokens::default();
        let mut known = None;
        let mut deferred = Vec::new();
        loop {
            if *self.stopping.borrow() {
                return;
            }
            let (v, delay, call) = match self.apply(id, event, None, known, Some(&mut deferred)).await {
                Ok(Some((v, Some((delay, call))))) => (v, delay, call),
                Ok(_) => return,
                Err(e) => {
                    // The case stays as last committed; the sweeper hands it to a worker again.
                    tracing::error!(case = %id, error = %e, "cannot store the case's step");
                    return;
                }
            };
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.stopped() => return,
                }
            }
            event = self.perform(&v.value, call, &mut tokens).await;
            if matches!(event, Event::CallFailed { .. }) {
                // The try after a failure asks for fresh tokens: one may have expired.
                tokens.0.clear();
            }
            known = Some(v);
        }
    }

    /// A call bounded by the call deadline on this side too.
    async fn bounded<T>(
        &self,
        method: &str,
        fut: impl std::future::Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.up.timeout(), fut).await {
            Ok(r) => r,
            Err(_) => Err(CallError {
                message: format!(
                    "{method}: no answer within {} ms",
                    self.up.timeout().as_millis()
                ),
                retryable: true,
                consent_refused: None,
            }),
        }
    }

    async fn token(
        &self,
        tokens: &mut Tokens,
        iin: shep_domain::Iin,
        scope: &'static str,
    ) -> Result<Token, CallError> {
        if let Some(t) = tokens.0.get(&(iin, scope)) {
            return Ok(t.clone());
        }
        let t = self.up.issue_token(iin, scope).await?;
        tokens.0.insert((iin, scope), t.clone());
        Ok(t)
    }

    /// Makes a call, bounded in time (each call to the bus has a deadline; a call needing
    /// several, such as the consent of four scopes, gets one per call); its answer as the
    /// next event.
    async fn perform(&self, case: &Case, call: Call, tokens: &mut Tokens) -> Event {
        let kind = call.kind();
        let calls = match &call {
            Call::CheckConsent { scopes, .. } => scopes.len() as u32,
            Call::CheckPerson { .. } | Call::Notify { .. } | Call::Reissue { .. } => 3,
            Call::ResolveRecipient { .. } => 1,
        };
        let budget = self.up.timeout().saturating_mul(calls.max(1)) + Duration::from_secs(1);
        match tokio::time::timeout(budget, self.perform_unbounded(case, call, tokens)).await {
            Ok(ev) => ev,
            Err(_) => Event::CallFailed {
                call: kind,
                error: format!(
                    "{}: no answer within {} ms",
                    kind.method(),
                    budget.as_millis()
                ),
                retryable: true,
            },
        }
    }

    async fn perform_unbounded(&self, case: &Case, call: Call, tokens: &mut Tokens) -> Event {
        let kind = call.kind();
        match call {
            Call::ResolveRecipient { bin } => match self.up.first_head(bin).await {
                Ok(Some(iin)) => Event::RecipientResolved { iin },
                Ok(None) => Event::CallFailed {
                    call: kind,
                    error: format!("GBD UL names no first head for {bin}"),
                    retryable: false,
                },
                Err(e) => failed(kind, e),
            },
            Call::CheckConsent { iin, scopes } => {
                // One token covering every scope still without one: one KDP call, and one
                // signature for the bus to verify, instead of one per scope.
                let mut missing: Vec<&'static str> = Vec::with_capacity(scopes.len());
                for scope in &scopes {
                    let s: &'static str = match scope.as_str() {
                        SCOPE_PERSON => SCOPE_PERSON,
                        SCOPE_ACTS => SCOPE_ACTS,
                        SCOPE_NOTIFY => SCOPE_NOTIFY,
                        SCOPE_REISSUE => SCOPE_REISSUE,
                        SCOPE_PERMITS_READ => SCOPE_PERMITS_READ,
                        other => {
                            return Event::CallFailed {
                                call: kind,
                                error: format!("unknown scope {other}"),
                                retryable: false,
                            };
                        }
                    };
                    if !tokens.0.contains_key(&(iin, s)) && !missing.contains(&s) {
                        missing.push(s);
                    }
                }
                if !missing.is_empty() {
                    match self.up.issue_token(iin, &missing.join(" ")).await {
                        Ok(t) => {
                            for s in missing {
                                tokens.0.insert((iin, s), t.clone());
                            }
                        }
                        Err(e) => return failed(kind, e),
                    }
                }
                Event::ConsentObtained { scopes }
            }
            Call::CheckPerson { iin } => {
                let p = self.token(tokens, iin, SCOPE_PERSON).await;
                let a = self.token(tokens, iin, SCOPE_ACTS).await;
                match (p, a) {
                    (Ok(p), Ok(a)) => match self.up.person_facts(iin, &p, &a).await {
                        Ok(f) => Event::PersonChecked(f),
                        Err(e) => failed(kind, e),
                    },
                    (Err(e), _) | (_, Err(e)) => failed(kind, e),
                }
            }
            Call::Notify { attempt } => {
                let Some(iin) = case.recipient else {
                    return Event::CallFailed {
                        call: kind,
                        error: "no recipient".into(),
                        retryable: false,
                    };
                };
                let token = match self.token(tokens, iin, SCOPE_NOTIFY).await {
                    Ok(t) => t,
                    Err(e) => return failed(kind, e),
                };
                let Ok(pilot) = self.pilots.get(&case.pilot_id) else {
                    return Event::CallFailed {
                        call: kind,
                        error: "pilot not in the catalog".into(),
                        retryable: false,
                    };
                };
                let holder_name = case.new_name.display(pilot.language == Language::Kk);
                let permits = case.permit_numbers();
                let req = NotifyRequest {
                    case_id: case.id.0.clone(),
                    attempt,
                    iin,
                    pilot_id: case.pilot_id.clone(),
                    text: pilot.render_sms(&holder_name, &permits),
                    permit_numbers: permits,
                    holder_bin: match case.subject {
                        Subject::Organization(b) => Some(b),
                        Subject::Individual(_) => None,
                    },
                    holder_name,
                    language: pilot.language,
                };
                match self.up.notify(req, &token).await {
                    Ok(Notified::Sent { sms_id, sent_at }) => Event::Notified {
                        attempt,
                        sms_id,
                        sent_at: sent_at.unwrap_or_else(|| self.clock.now()),
                    },
                    Ok(Notified::NoPhone) => Event::NoPhone { attempt },
                    Err(e) => failed(kind, e),
                }
            }
            Call::Reissue {
                index,
                idempotency_key,
            } => {
                let Some(permit) = case.permits.get(index) else {
                    return Event::CallFailed {
                        call: kind,
                        error: format!("no permit {index}"),
                        retryable: false,
                    };
                };
                let token = match case.subject {
                    Subject::Organization(_) => None,
                    Subject::Individual(iin) => {
                        match self.token(tokens, iin, SCOPE_REISSUE).await {
                            Ok(t) => Some(t),
                            Err(e) => return failed(kind, e),
                        }
                    }
                };
                let reason = format!(
                    "proactive re-issue, pilot {}: change of name registered {} (SDU case {})",
                    case.pilot_id, case.date, case.id
                );
                match self
                    .up
                    .reissue(
                        &permit.number,
                        &case.subject,
                        &case.new_name,
                        &idempotency_key,
                        reason,
                        token.as_ref(),
                    )
                    .await
                {
                    Ok(new_number) => Event::Reissued { index, new_number },
                    Err(e) => failed(kind, e),
                }
            }
        }
    }

    // ---- answers and timers ----------------------------------------------------------------

    /// Takes one answer; its cursor is stored with the case it moves. An error leaves the
    /// cursor before the answer, so it is read again.
    async fn take_answer(self: &Arc<Self>, a: AnswerItem) -> Result<(), StoreError> {
        // An answer for a case that is not ours (another consumer of PEP) only moves the cursor.
        let id = CaseId(a.case_id.clone());
        let ev = answer_event(&a, self.clock.now());
        if let Some((_, Some(_))) = self
            .apply(&id, ev, Some((ANSWER_CURSOR.to_owned(), a.cursor)), None, None)
            .await?
        {
            self.try_dispatch(id);
        }
        Ok(())
    }

    /// Takes answers in stream order, as [`Runner::take_answer`] takes one, with fewer trips
    /// to the store: the cases of the answers (up to the first case answered twice in the
    /// batch) are read in one store call, each is stepped, and the changes are committed in
    /// order in one [`Store::commit_cases`], each with its answer's cursor, so a crash keeps
    /// a prefix of the batch and the cursor of its last answer. From the first change that
    /// conflicts (its case moved meanwhile), and after the first repeated case, the answers
    /// are taken one by one.
    async fn take_answers(self: &Arc<Self>, batch: Vec<AnswerItem>) -> Result<(), StoreError> {
        if batch.len() <= 1 {
            for a in batch {
                self.take_answer(a).await?;
            }
            return Ok(());
        }
        let mut seen = HashSet::new();
        let distinct = batch
            .iter()
            .take_while(|a| seen.insert(a.case_id.as_str()))
            .count();
        let ids: Vec<CaseId> = batch[..distinct]
            .iter()
            .map(|a| CaseId(a.case_id.clone()))
            .collect();
        let loaded = self
            .st(move |s| ids.iter().map(|id| s.case(id)).collect::<Result<Vec<_>, _>>())
            .await?;
        let now = self.clock.now();
        /// An answer's change of its case.
        struct Planned {
            item: usize,
            case: Case,
            version: u64,
            history: Vec<HistoryEntry>,
            holder: Option<HolderUpdate>,
            call: bool,
            cursor: String,
        }
        let mut plans = vec![];
        // Answers that change nothing but whose case has a call to make (dispatched once
        // their cursor is committed), by item.
        let mut unchanged = vec![];
        for (i, (a, v)) in batch.iter().zip(loaded).enumerate() {
            // An answer for a case that is not ours only moves the cursor.
            let Some(v) = v else { continue };
            let Some(st) = self.step_case(&v.value, answer_event(a, now), now) else {
                continue;
            };
            if !st.changed {
                if st.call.is_some() {
                    unchanged.push((i, v.value.id.clone()));
                }
                continue;
            }
            plans.push(Planned {
                item: i,
                case: st.next,
                version: v.version,
                history: st.history,
                holder: st.holder,
                call: st.call.is_some(),
                cursor: a.cursor.clone(),
            });
        }
        let plans = Arc::new(plans);
        let (p2, last) = (plans.clone(), batch[distinct - 1].cursor.clone());
        let results = self
            .st(move |s| {
                let commits: Vec<CaseCommit<'_>> = p2
                    .iter()
                    .map(|p| CaseCommit {
                        case: &p.case,
                        expected_version: p.version,
                        history: &p.history,
                        holder: p.holder.as_ref(),
                        cursor: Some((ANSWER_CURSOR, p.cursor.as_str())),
                        at: now,
                    })
                    .collect();
                let r = s.commit_cases(&commits)?;
                if r.len() == commits.len() && r.last() != Some(&CommitResult::Conflict) {
                    // Answers after the last change moved nothing but the cursor.
                    s.set_cursor(ANSWER_CURSOR, &last)?;
                }
                Ok(r)
            })
            .await?;
        // Items from `rest` on are taken again one by one.
        let mut rest = distinct;
        for (p, r) in plans.iter().zip(results) {
            match r {
                CommitResult::Committed(events) => {
                    self.publish(events);
                    if p.call {
                        self.try_dispatch(p.case.id.clone());
                    }
                }
                CommitResult::Conflict => {
                    rest = plans
                        .iter()
                        .rev()
                        .find(|q| q.item < p.item)
                        .map_or(0, |q| q.item + 1);
                    break;
                }
            }
        }
        for (_, id) in unchanged.into_iter().filter(|(i, _)| *i < rest) {
            self.try_dispatch(id);
        }
        for a in batch.into_iter().skip(rest) {
            self.take_answer(a).await?;
        }
        Ok(())
    }

    /// Takes every answer PEP holds now (a stream without follow).
    async fn drain_answers(self: &Arc<Self>) -> Result<(), CallError> {
        let cursor = self
            .st(|s| s.cursor(ANSWER_CURSOR))
            .await
            .map_err(|e| CallError {
                message: e.to_string(),
                retryable: true,
                consent_refused: None,
            })?;
        let s = self
            .bounded("pep.StreamAnswers", self.up.answers(cursor, false))
            .await?;
        let mut chunks = s.ready_chunks(ANSWER_BATCH);
        while let Some(chunk) = chunks.next().await {
            let (batch, broken) = ok_prefix(chunk);
            self.take_answers(batch).await.map_err(|e| CallError {
                message: e.to_string(),
                retryable: true,
                consent_refused: None,
            })?;
            if let Some(e) = broken {
                return Err(e);
            }
        }
        Ok(())
    }

    async fn fire_timers(self: &Arc<Self>, due: Vec<(CaseId, u32)>) {
        for (id, attempt) in due {
            match self
                .apply(&id, Event::Timeout { attempt }, None, None, None)
                .await
            {
                Ok(Some((_, Some(_)))) => self.try_dispatch(id),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(case = %id, error = %e, "cannot store a timeout; retried at the next tick")
                }
            }
        }
    }

    async fn answer_loop(self: Arc<Self>) {
        let mut follow: Option<AnswerChunks> = None;
        let mut failures = 0u32;
        let mut tick = tokio::time::interval(self.cfg.timer_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if follow.is_none() {
                let cursor = match self.st(|s| s.cursor(ANSWER_CURSOR)).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the answer cursor");
                        None
                    }
                };
                match self
                    .bounded("pep.StreamAnswers", self.up.answers(cursor, true))
                    .await
                {
                    Ok(s) => follow = Some(s.ready_chunks(ANSWER_BATCH).boxed()),
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(20) {
                            tracing::warn!(error = %e.message, "cannot follow PEP's answers; retrying");
                        }
                    }
                }
            }
            let next = async {
                match follow.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stopped() => return,
                chunk = next => match chunk {
                    Some(chunk) => {
                        let (batch, broken) = ok_prefix(chunk);
                        if !batch.is_empty() {
                            failures = 0;
                        }
                        if let Err(e) = self.take_answers(batch).await {
                            // Read again from the stored cursor after a pause.
                            tracing::error!(error = %e, "cannot store an answer; reading it again");
                            follow = None;
                            tokio::select! { _ = tokio::time::sleep(self.cfg.retry.delay(3)) => {}, _ = self.stopped() => return }
                        } else if let Some(e) = broken {
                            tracing::warn!(error = %e.message, "PEP's answer stream broke; reconnecting");
                            follow = None;
                        }
                    }
                    None => follow = None,
                },
                _ = tick.tick() => {
                    if follow.is_none() && failures > 0 {
                        // Back off between reconnects while PEP is unreachable.
                        let d = self.cfg.retry.delay(failures.min(8));
                        tokio::select! { _ = tokio::time::sleep(d) => {}, _ = self.stopped() => return }
                    }
                    let now = self.clock.now();
                    let due = match self.st(move |s| s.due_timers(now, 1000)).await {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the timers");
                            continue;
                        }
                    };
                    if due.is_empty() {
                        self.timers_at.send_replace(now.as_second());
                        continue;
                    }
                    // Take what PEP already holds before any wait is declared over.
                    follow = None;
                    match self.drain_answers().await {
                        Ok(()) => {
                            self.fire_timers(due).await;
                            self.timers_at.send_replace(now.as_second());
                        }
                        Err(e) => tracing::warn!(error = %e.message, "cannot read PEP's answers; timers wait"),
                    }
                }
            }
        }
    }

    /// Hands every case with a call due that no worker drives to a worker: when woken (an
    /// answer or a timer made a case ready while every worker was busy), and every few
    /// seconds as a safety net (a worker that stopped on a database error, say).
    async fn sweep_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = self.stopped() => return,
                _ = tick.tick() => {}
                _ = self.sweep_now.notified() => {}
            }
            let mut after: Option<CaseId> = None;
            let mut found = 0u64;
            loop {
                let a = after.clone();
                let Ok(page) = self.st(move |s| s.actionable_cases(a.as_ref(), 500)).await else {
                    break;
                };
                let Some(last) = page.last().cloned() else {
                    break;
                };
                for id in page {
                    let idle = !self
                        .inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains_key(&id);
                    if idle {
                        found += 1;
                        self.dispatch(id).await;
                    }
                }
                after = Some(last);
            }
            if found > 0 {
                tracing::debug!(cases = found, "cases with a call due handed to workers");
            }
        }
    }

    async fn progress_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.progress_every.max(Duration::from_secs(1)));
        tick.tick().await;
        let mut last: HashMap<crate::case::RunId, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = self.stopped() => return,
                _ = tick.tick() => {}
            }
            let running: Vec<RunRecord> = match self.st(|s| s.runs_running()).await {
                Ok(v) => v,
                Err(_) => continue,
            };
            for r in running {
                let done = r.closed + r.waiting;
                let prev = last.insert(r.id.clone(), done).unwrap_or(0);
                tracing::info!(
                    run = %r.id,
                    diffs = r.diffs,
                    active = r.active,
                    waiting = r.waiting,
                    closed = r.closed,
                    cases_per_sec = format!("{:.0}", (done.saturating_sub(prev)) as f64 / self.cfg.progress_every.as_secs_f64().max(1.0)),
                    "run progress"
                );
            }
        }
    }

    /// Waits until the run is settled (its diff read and no case with a call due).
    pub(crate) async fn wait_settled(
        &self,
        run: &crate::case::RunId,
    ) -> Result<RunRecord, SduError> {
        let mut rx = self.changed.subscribe();
        // First let the timer loop catch up with the clock as it is now, so that a deadline
        // passed by a jump of a manual clock is fired before the run can count as settled.
        // Bounded: while PEP is unreachable timers wait, and so would this.
        let now = self.clock.now().as_second();
        let mut timers = self.timers_at.subscribe();
        let catch_up = tokio::time::timeout(Duration::from_secs(2), timers.wait_for(|t| *t >= now));
        tokio::select! {
            _ = catch_up => {}
            _ = self.stopped() => return Err(SduError::ShuttingDown),
        }
        loop {
            let rid = run.clone();
            let rec = self
                .st(move |s| s.run(&rid))
                .await?
                .ok_or_else(|| SduError::NoRun(run.0.clone()))?;
            if rec.settled() {
                return Ok(rec);
            }
            if *self.stopping.borrow() {
                return Err(SduError::ShuttingDown);
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = self.stopped() => return Err(SduError::ShuttingDown),
            }
        }
    }

    /// The clock's now.
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spawned_look_up_runs_without_being_polled_and_stops_when_dropped() {
        // Runs on its own: its work is done before anyone awaits it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let s = Spawned::new(async move {
            let _ = tx.send(());
            7
        });
        rx.await.unwrap();
        assert_eq!(s.await, 7);

        // Dropped: the task is aborted (its guard is dropped without it finishing).
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s = Spawned::new(async move {
            let _guard = tx;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        drop(s);
        let ended = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the task still runs after its handle was dropped");
        assert!(ended.is_err(), "the task ended without sending: it was aborted");
    }
}
