//! Durable state behind a trait: runs, cases with their permits and history, timers
//! (a waiting case's deadline), stream cursors, the feed of events, and the holders'
//! updated data. Two backends implement it with the same semantics: [`sqlite`] (one file,
//! the default) and [`postgres`] (a PostgreSQL database, for a deployment that outgrows one
//! node); [`open`] picks one from the `[sdu] db` setting. Nothing outside the backends
//! names a database type; rows ↔ domain conversions are shared (`rows`), so both read
//! the same data the same way.
//!
//! Contract of every implementation:
//! - one runner per store at a time: opening a store for a runner takes an exclusive lock
//!   that the process holds until the store is dropped (or the process dies): a lock file
//!   for SQLite, a session-level advisory lock for PostgreSQL; a second runner gets
//!   [`StoreError::Locked`] from either;
//! - [`Store::commit_case`] is atomic and conditional on the case's version
//!   (compare-and-swap): the new case, its history, the holder data and a stream cursor
//!   land together or not at all, so an answer is never taken twice nor lost;
//! - [`Store::commit_diff`] opens a case (at most once per run and subject) and advances
//!   the diff cursor in one transaction;
//! - run counters and the run state change in the same transaction as the cases.

pub mod postgres;
mod rows;
pub mod sqlite;

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;

use crate::case::{Case, CaseId, HistoryEntry, HolderUpdate, Outcome, RunId, Subject, SubjectName};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Opens the store `db` names for a runner: a PostgreSQL database when it is a
/// `postgres://` or `postgresql://` URL, else a SQLite file at that path.
pub fn open(db: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match db.to_str() {
        Some(url) if postgres::is_postgres_url(url) => Ok(Arc::new(PgStore::open(url.trim())?)),
        _ => Ok(Arc::new(SqliteStore::open(db)?)),
    }
}

/// How `db` is shown in logs and errors: a URL without its password, or the path.
pub fn describe(db: &Path) -> String {
    match db.to_str() {
        Some(url) if postgres::is_postgres_url(url) => postgres::redact_url(url.trim()),
        _ => db.display().to_string(),
    }
}

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another runner holds the store.
    #[error(
        "the SDU database {path} is in use by another runner ({holder}); stop it first, or point this one at another database"
    )]
    Locked { path: String, holder: String },
    /// The database was written by a newer SDU.
    #[error(
        "the SDU database {path} has schema version {found}; this build knows up to {known}: upgrade SDU"
    )]
    NewerSchema {
        path: String,
        found: i64,
        known: i64,
    },
    /// A file could not be opened or created.
    #[error("the SDU database {path}: {message}")]
    Io { path: String, message: String },
    /// The database engine failed.
    #[error("database: {0}")]
    Backend(String),
    /// The database was busy (locked for a moment); trying again may succeed.
    #[error("database busy: {0}")]
    Busy(String),
    /// A stored value cannot be read back (the file was edited or damaged).
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A run that does not exist was named.
    #[error("no run {0}")]
    NoRun(String),
}

/// The state of a run (as in the contract's `RunState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunState {
    /// Collecting changes, or cases have calls due.
    Running,
    /// Every case notified or closed; some wait for answers.
    Waiting,
    /// Every case closed.
    Done,
    /// Stopped by an error; closed cases keep their outcomes.
    Failed,
}

impl RunState {
    /// The stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Running => "RUNNING",
            RunState::Waiting => "WAITING",
            RunState::Done => "DONE",
            RunState::Failed => "FAILED",
        }
    }

    /// The inverse of [`RunState::as_str`].
    pub fn parse(s: &str) -> Option<RunState> {
        [
            RunState::Running,
            RunState::Waiting,
            RunState::Done,
            RunState::Failed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Which diff stream a run is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffPhase {
    /// Renamed organizations (GBD UL `StreamNameChanges`).
    GbdUl,
    /// Changes of ФИО (ZAGS `StreamActs`), for pilots that cover individuals.
    Zags,
    /// Every diff read.
    Done,
}

impl DiffPhase {
    /// The stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            DiffPhase::GbdUl => "gbdul",
            DiffPhase::Zags => "zags",
            DiffPhase::Done => "done",
        }
    }

    /// The inverse of [`DiffPhase::as_str`].
    pub fn parse(s: &str) -> Option<DiffPhase> {
        [DiffPhase::GbdUl, DiffPhase::Zags, DiffPhase::Done]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// The name of this phase's stream cursor for a run.
    pub fn cursor_name(&self, run: &RunId) -> String {
        format!("diff:{run}:{}", self.as_str())
    }
}

/// The run's state from its phase and counters: the one rule, shared by every backend.
pub fn derive_run_state(phase: DiffPhase, failed: bool, active: u64, waiting: u64) -> RunState {
    if failed {
        RunState::Failed
    } else if phase != DiffPhase::Done || active > 0 {
        RunState::Running
    } else if waiting > 0 {
        RunState::Waiting
    } else {
        RunState::Done
    }
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// Its id.
    pub id: RunId,
    /// The pilot.
    pub pilot_id: String,
    /// The date processed.
    pub date: Date,
    /// The state.
    pub state: RunState,
    /// Which diff stream it reads.
    pub phase: DiffPhase,
    /// When it started.
    pub started_at: Timestamp,
    /// When it finished (DONE or FAILED).
    pub finished_at: Option<Timestamp>,
    /// Why it failed.
    pub error: Option<String>,
    /// Name changes read so far.
    pub diffs: u64,
    /// Cases with a call due.
    pub active: u64,
    /// Cases waiting for an answer.
    pub waiting: u64,
    /// Cases closed.
    pub closed: u64,
}

impl RunRecord {
    /// True when nothing is left to do until an answer or a deadline: the diff is read (or
    /// the run failed) and no case has a call due.
    pub fn settled(&self) -> bool {
        (self.phase == DiffPhase::Done || self.state == RunState::Failed) && self.active == 0
    }
}

/// A value with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its version, for [`Store::commit_case`].
    pub version: u64,
}

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventWhat {
    /// A case took a step.
    Step(HistoryEntry),
    /// The run entered a state.
    RunState(RunState),
}

/// One entry of the feed of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Position in the feed (increasing).
    pub seq: u64,
    /// When (injected clock).
    pub at: Timestamp,
    /// The pilot.
    pub pilot_id: String,
    /// The run.
    pub run_id: RunId,
    /// The case; `None` for a run event.
    pub case_id: Option<CaseId>,
    /// What happened.
    pub what: EventWhat,
}

/// A change of one case, applied if the case is still at `expected_version`.
#[derive(Debug, Clone)]
pub struct CaseCommit<'a> {
    /// The new case.
    pub case: &'a Case,
    /// The version it was read at.
    pub expected_version: u64,
    /// History entries to append.
    pub history: &'a [HistoryEntry],
    /// Holder data to record.
    pub holder: Option<&'a HolderUpdate>,
    /// A stream cursor (name, value) advanced with this change.
    pub cursor: Option<(&'a str, &'a str)>,
    /// Now, for a run event.
    pub at: Timestamp,
}

/// The result of [`Store::commit_case`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitResult {
    /// Applied; the events written.
    Committed(Vec<EventRecord>),
    /// The case changed since it was read (or does not exist): nothing was written.
    Conflict,
}

/// One diff taken: the cursor after it, and the case it opened, if any.
#[derive(Debug, Clone)]
pub struct DiffCommit<'a> {
    /// The run.
    pub run: &'a RunId,
    /// The stream it came from.
    pub phase: DiffPhase,
    /// The stream cursor after it.
    pub cursor: &'a str,
    /// Whether it is a name change (counted in `diffs`) rather than an entry skipped.
    pub counted: bool,
    /// The case opened, with its first history entries.
    pub opened: Option<(&'a Case, &'a [HistoryEntry])>,
    /// Now.
    pub at: Timestamp,
}

/// The result of [`Store::commit_diff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffResult {
    /// False when the run had a case for this subject already (a second change the same day).
    pub opened: bool,
    /// The events written.
    pub events: Vec<EventRecord>,
}

/// Which cases of a run to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseFilter {
    /// All.
    All,
    /// Not ended.
    Open,
    /// Ended with this outcome.
    Outcome(Outcome),
}

/// The counts of a run's funnel (as in the contract's `FunnelCounts`): `diffs` counts name
/// changes, every other field counts cases. `answered_no` is the REFUSED outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct FunnelCounts {
    pub diffs: u64,
    pub with_permits: u64,
    pub recipients: u64,
    pub excluded_dead_or_missing: u64,
    pub excluded_abroad: u64,
    pub excluded_incapable: u64,
    pub excluded_imprisoned: u64,
    pub no_consent: u64,
    pub no_phone: u64,
    pub sms_sent: u64,
    pub sms_resent: u64,
    pub answered_yes: u64,
    pub answered_no: u64,
    pub no_answer: u64,
    pub reissued: u64,
    pub failed: u64,
    pub open: u64,
}

/// The holder data recorded after a re-issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderRecord {
    /// The holder.
    pub subject: Subject,
    /// The new name.
    pub name: SubjectName,
    /// (old, new) permit numbers.
    pub permits: Vec<(String, String)>,
    /// The case that recorded it.
    pub case_id: CaseId,
    /// When.
    pub updated_at: Timestamp,
}

/// The durable state of SDU. Every method is synchronous and short; the runner calls them
/// off the async threads.
pub trait Store: Send + Sync {
    /// Creates the run of a pilot for a date, or returns the existing one (`false`).
    fn create_run(
        &self,
        pilot_id: &str,
        date: Date,
        at: Timestamp,
    ) -> Result<(RunRecord, bool, Vec<EventRecord>), StoreError>;
    /// One run.
    fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError>;
    /// Runs still reading their diff (not failed).
    fn runs_collecting(&self) -> Result<Vec<RunRecord>, StoreError>;
    /// Runs in the RUNNING state.
    fn runs_running(&self) -> Result<Vec<RunRecord>, StoreError>;
    /// Moves a run to the next diff phase.
    fn set_phase(
        &self,
        run: &RunId,
        phase: DiffPhase,
        at: Timestamp,
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// Marks a run failed.
    fn fail_run(
        &self,
        run: &RunId,
        error: &str,
        at: Timestamp,
    ) -> Result<Vec<EventRecord>, StoreError>;
    /// Clears a run's failure so that its diff goes on; its state is derived again.
    fn reopen_run(&self, run: &RunId, at: Timestamp) -> Result<Vec<EventRecord>, StoreError>;
    /// Records one diff: counts it, advances the phase's cursor, opens its case if any.
    fn commit_diff(&self, d: DiffCommit<'_>) -> Result<DiffResult, StoreError>;
    /// Records several diffs in order, each as [`Store::commit_diff`] would. A backend may
    /// commit them in one transaction (SQLite does); either way an error leaves a prefix of
    /// them committed, with the cursor of its last.
    fn commit_diffs(&self, ds: &[DiffCommit<'_>]) -> Result<Vec<DiffResult>, StoreError> {
        ds.iter().map(|d| self.commit_diff(d.clone())).collect()
    }
    /// One case.
    fn case(&self, id: &CaseId) -> Result<Option<Versioned<Case>>, StoreError>;
    /// Applies a change to a case if it is still at the expected version.
    fn commit_case(&self, c: CaseCommit<'_>) -> Result<CommitResult, StoreError>;
    /// Applies changes to several cases in order, each as [`Store::commit_case`] would,
    /// stopping at the first conflict: returns the result of every change tried, the
    /// conflict last. A backend may commit them in one transaction (SQLite does); either
    /// way the changes before a conflict are committed and nothing after it is.
    fn commit_cases(&self, cs: &[CaseCommit<'_>]) -> Result<Vec<CommitResult>, StoreError> {
        let mut out = Vec::with_capacity(cs.len());
        for c in cs {
            let r = self.commit_case(c.clone())?;
            let stop = r == CommitResult::Conflict;
            out.push(r);
            if stop {
                break;
            }
        }
        Ok(out)
    }
    /// A case's history, oldest first.
    fn history(&self, id: &CaseId) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Cases with a call due, by id, after `after`.
    fn actionable_cases(
        &self,
        after: Option<&CaseId>,
        limit: usize,
    ) -> Result<Vec<CaseId>, StoreError>;
    /// Waiting cases whose deadline is at or before `now`, with the attempt they wait on.
    fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<(CaseId, u32)>, StoreError>;
    /// The cases of a run, by id, after `after`.
    fn cases(
        &self,
        run: &RunId,
        filter: CaseFilter,
        after: Option<&CaseId>,
        limit: usize,
    ) -> Result<Vec<Case>, StoreError>;
    /// The funnel of a run.
    fn funnel(&self, run: &RunId) -> Result<FunnelCounts, StoreError>;
    /// A stream cursor.
    fn cursor(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Sets a stream cursor.
    fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError>;
    /// The events after `seq`, oldest first.
    fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;
    /// The recorded data of a holder.
    fn holder(&self, subject: &Subject) -> Result<Option<HolderRecord>, StoreError>;
}
