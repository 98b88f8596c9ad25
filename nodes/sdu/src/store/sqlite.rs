//! The SQLite store: one file in WAL mode, schema migrations with a version table, and an
//! exclusive lock file (`<db>.lock`) so that one runner at a time uses a database. The lock
//! is an OS file lock: a runner killed with SIGKILL releases it with its process.
//!
//! Two connections: one writes (every change is one transaction), one reads (WAL lets it
//! read while the writer writes). `synchronous = NORMAL`: a committed transaction survives
//! the process being killed; only a power loss may drop the last ones.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use jiff::civil::Date;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::rows::{
    CASE_COLS, CaseCols, CaseRow, EventCols, RUN_COLS, RUN_STATE_KIND, RunCols, answer_str,
    class_code, delta_of, funnel_outcome, funnel_sums, holder_from, move_delta, name_json,
    next_run_state, permits_json, run_event, state_cols, step_event,
};
use super::{
    CaseCommit, CaseFilter, CommitResult, DiffCommit, DiffPhase, DiffResult, EventRecord,
    EventWhat, FunnelCounts, HolderRecord, RunRecord, RunState, Store, StoreError, Versioned,
};
use crate::case::{Case, CaseId, HistoryEntry, PermitItem, RunId, Subject};
use crate::dates::to_nanos;

/// The schema, one migration per version; never edit a released one, add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    pilot_id    TEXT NOT NULL,
    date        TEXT NOT NULL,
    state       TEXT NOT NULL,
    phase       TEXT NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    error       TEXT,
    diffs       INTEGER NOT NULL DEFAULT 0,
    n_active    INTEGER NOT NULL DEFAULT 0,
    n_waiting   INTEGER NOT NULL DEFAULT 0,
    n_closed    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (pilot_id, date)
);
CREATE TABLE cases (
    case_id       TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs(run_id),
    pilot_id      TEXT NOT NULL,
    date          TEXT NOT NULL,
    subject_tag   TEXT NOT NULL,
    subject_id    TEXT NOT NULL,
    old_name      TEXT NOT NULL,
    new_name      TEXT NOT NULL,
    recipient_iin TEXT,
    state         TEXT NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 0,
    deadline      INTEGER,
    outcome       TEXT,
    class         INTEGER NOT NULL,
    sms_attempts  INTEGER NOT NULL DEFAULT 0,
    answer        TEXT,
    failures      INTEGER NOT NULL DEFAULT 0,
    n_permits     INTEGER NOT NULL,
    opened_at     INTEGER NOT NULL,
    closed_at     INTEGER,
    version       INTEGER NOT NULL
);
CREATE INDEX cases_by_run ON cases(run_id, case_id);
CREATE INDEX cases_active ON cases(case_id) WHERE class = 0;
CREATE INDEX cases_timers ON cases(deadline) WHERE deadline IS NOT NULL;
CREATE TABLE case_permits (
    case_id      TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    number       TEXT NOT NULL,
    service_code TEXT NOT NULL,
    new_number   TEXT,
    PRIMARY KEY (case_id, idx)
) WITHOUT ROWID;
CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    pilot_id TEXT NOT NULL,
    run_id   TEXT NOT NULL,
    case_id  TEXT,
    kind     TEXT NOT NULL,
    attempt  INTEGER NOT NULL DEFAULT 0,
    detail   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_by_case ON events(case_id, seq) WHERE case_id IS NOT NULL;
CREATE TABLE cursors (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE holders (
    subject_tag TEXT NOT NULL,
    subject_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    permits     TEXT NOT NULL,
    case_id     TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (subject_tag, subject_id)
);
"#,
    // 2: the funnel of each run kept by triggers, so a report reads one row instead of
    // scanning the run's cases (and holding the read connection while it does).
    r#"
CREATE TABLE run_funnel (
    run_id                   TEXT PRIMARY KEY,
    with_permits             INTEGER NOT NULL DEFAULT 0,
    recipients               INTEGER NOT NULL DEFAULT 0,
    sms_sent                 INTEGER NOT NULL DEFAULT 0,
    sms_resent               INTEGER NOT NULL DEFAULT 0,
    answered_yes             INTEGER NOT NULL DEFAULT 0,
    answered_no              INTEGER NOT NULL DEFAULT 0,
    open                     INTEGER NOT NULL DEFAULT 0,
    reissued                 INTEGER NOT NULL DEFAULT 0,
    no_answer                INTEGER NOT NULL DEFAULT 0,
    no_phone                 INTEGER NOT NULL DEFAULT 0,
    no_consent               INTEGER NOT NULL DEFAULT 0,
    excluded_dead_or_missing INTEGER NOT NULL DEFAULT 0,
    excluded_abroad          INTEGER NOT NULL DEFAULT 0,
    excluded_incapable       INTEGER NOT NULL DEFAULT 0,
    excluded_imprisoned      INTEGER NOT NULL DEFAULT 0,
    failed                   INTEGER NOT NULL DEFAULT 0
);
INSERT INTO run_funnel
SELECT run_id,
    SUM(n_permits > 0), SUM(n_permits > 0 AND recipient_iin IS NOT NULL),
    SUM(sms_attempts >= 1), SUM(sms_attempts >= 2),
    SUM(answer IS 'agree'), SUM(answer IS 'refuse'), SUM(class != 2),
    SUM(outcome IS 'REISSUED'), SUM(outcome IS 'NO_ANSWER'), SUM(outcome IS 'NO_PHONE'),
    SUM(outcome IS 'NO_CONSENT'), SUM(outcome IS 'EXCLUDED_DEAD_OR_MISSING'),
    SUM(outcome IS 'EXCLUDED_ABROAD'), SUM(outcome IS 'EXCLUDED_INCAPABLE'),
    SUM(outcome IS 'EXCLUDED_IMPRISONED'), SUM(outcome IS 'FAILED')
FROM cases GROUP BY run_id;
CREATE TRIGGER cases_funnel_insert AFTER INSERT ON cases BEGIN
    INSERT OR IGNORE INTO run_funnel (run_id) VALUES (NEW.run_id);
    UPDATE run_funnel SET
        with_permits = with_permits + (NEW.n_permits > 0),
        recipients = recipients + (NEW.n_permits > 0 AND NEW.recipient_iin IS NOT NULL),
        sms_sent = sms_sent + (NEW.sms_attempts >= 1),
        sms_resent = sms_resent + (NEW.sms_attempts >= 2),
        answered_yes = answered_yes + (NEW.answer IS 'agree'),
        answered_no = answered_no + (NEW.answer IS 'refuse'),
        open = open + (NEW.class != 2),
        reissued = reissued + (NEW.outcome IS 'REISSUED'),
        no_answer = no_answer + (NEW.outcome IS 'NO_ANSWER'),
        no_phone = no_phone + (NEW.outcome IS 'NO_PHONE'),
        no_consent = no_consent + (NEW.outcome IS 'NO_CONSENT'),
        excluded_dead_or_missing = excluded_dead_or_missing + (NEW.outcome IS 'EXCLUDED_DEAD_OR_MISSING'),
        excluded_abroad = excluded_abroad + (NEW.outcome IS 'EXCLUDED_ABROAD'),
        excluded_incapable = excluded_incapable + (NEW.outcome IS 'EXCLUDED_INCAPABLE'),
        excluded_imprisoned = excluded_imprisoned + (NEW.outcome IS 'EXCLUDED_IMPRISONED'),
        failed = failed + (NEW.outcome IS 'FAILED')
    WHERE run_id = NEW.run_id;
END;
CREATE TRIGGER cases_funnel_update AFTER UPDATE ON cases
WHEN OLD.n_permits IS NOT NEW.n_permits OR OLD.recipient_iin IS NOT NEW.recipient_iin
    OR OLD.sms_attempts IS NOT NEW.sms_attempts OR OLD.answer IS NOT NEW.answer
    OR OLD.class IS NOT NEW.class OR OLD.outcome IS NOT NEW.outcome OR OLD.run_id IS NOT NEW.run_id
BEGIN
    INSERT OR IGNORE INTO run_funnel (run_id) VALUES (NEW.run_id);
    UPDATE run_funnel SET
        with_permits = with_permits - (OLD.n_permits > 0),
        recipients = recipients - (OLD.n_permits > 0 AND OLD.recipient_iin IS NOT NULL),
        sms_sent = sms_sent - (OLD.sms_attempts >= 1),
        sms_resent = sms_resent - (OLD.sms_attempts >= 2),
        answered_yes = answered_yes - (OLD.answer IS 'agree'),
        answered_no = answered_no - (OLD.answer IS 'refuse'),
        open = open - (OLD.class != 2),
        reissued = reissued - (OLD.outcome IS 'REISSUED'),
        no_answer = no_answer - (OLD.outcome IS 'NO_ANSWER'),
        no_phone = no_phone - (OLD.outcome IS 'NO_PHONE'),
        no_consent = no_consent - (OLD.outcome IS 'NO_CONSENT'),
        excluded_dead_or_missing = excluded_dead_or_missing - (OLD.outcome IS 'EXCLUDED_DEAD_OR_MISSING'),
        excluded_abroad = excluded_abroad - (OLD.outcome IS 'EXCLUDED_ABROAD'),
        excluded_incapable = excluded_incapable - (OLD.outcome IS 'EXCLUDED_INCAPABLE'),
        excluded_imprisoned = excluded_imprisoned - (OLD.outcome IS 'EXCLUDED_IMPRISONED'),
        failed = failed - (OLD.outcome IS 'FAILED')
    WHERE run_id = OLD.run_id;
    UPDATE run_funnel SET
        with_permits = with_permits + (NEW.n_permits > 0),
        recipients = recipients + (NEW.n_permits > 0 AND NEW.recipient_iin IS NOT NULL),
        sms_sent = sms_sent + (NEW.sms_attempts >= 1),
        sms_resent = sms_resent + (NEW.sms_attempts >= 2),
        answered_yes = answered_yes + (NEW.answer IS 'agree'),
        answered_no = answered_no + (NEW.answer IS 'refuse'),
        open = open + (NEW.class != 2),
        reissued = reissued + (NEW.outcome IS 'REISSUED'),
        no_answer = no_answer + (NEW.outcome IS 'NO_ANSWER'),
        no_phone = no_phone + (NEW.outcome IS 'NO_PHONE'),
        no_consent = no_consent + (NEW.outcome IS 'NO_CONSENT'),
        excluded_dead_or_missing = excluded_dead_or_missing + (NEW.outcome IS 'EXCLUDED_DEAD_OR_MISSING'),
        excluded_abroad = excluded_abroad + (NEW.outcome IS 'EXCLUDED_ABROAD'),
        excluded_incapable = excluded_incapable + (NEW.outcome IS 'EXCLUDED_INCAPABLE'),
        excluded_imprisoned = excluded_imprisoned + (NEW.outcome IS 'EXCLUDED_IMPRISONED'),
        failed = failed + (NEW.outcome IS 'FAILED')
    WHERE run_id = NEW.run_id;
END;
"#,
];

fn db(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Busy(format!("{e} (extended code {})", f.extended_code))
        }
        rusqlite::Error::SqliteFailure(f, _) => {
            StoreError::Backend(format!("{e} (extended code {})", f.extended_code))
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
    /// Case commits waiting for the writer (see [`SqliteStore::commit_case`]).
    pending: Mutex<Vec<Queued>>,
    // Held for the store's lifetime; the OS releases it when the process dies.
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn take_lock(path: &Path) -> Result<File, StoreError> {
    let lp = lock_path(path);
    let io = |e: std::io::Error| StoreError::Io {
        path: lp.display().to_string(),
        message: e.to_string(),
    };
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lp)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = if holder.trim().is_empty() {
                "unknown process".to_owned()
            } else {
                holder.trim().to_owned()
            };
            return Err(StoreError::Locked {
                path: path.display().to_string(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    writeln!(f, "pid {}", std::process::id()).map_err(io)?;
    f.flush().map_err(io)?;
    Ok(f)
}

fn configure(c: &Connection) -> Result<(), StoreError> {
    c.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    c.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
    c.pragma_update(None, "synchronous", "NORMAL").map_err(db)?;
    c.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(())
}

fn migrate(c: &mut Connection, path: &Path) -> Result<(), StoreError> {
    c.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(db)?;
    let current: i64 = c
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::NewerSchema {
            path: path.display().to_string(),
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.execute("DELETE FROM schema_version", []).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::info!(path = %path.display(), version = i + 1, "SDU database migrated");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `path` for a runner: takes the lock,
    /// migrates the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let lock = take_lock(path)?;
        let mut write = Connection::open(path).map_err(|e| StoreError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        configure(&write)?;
        migrate(&mut write, path)?;
        let read = Connection::open(path).map_err(|e| StoreError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        configure(&read)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            write: Mutex::new(write),
            read: Mutex::new(read),
            pending: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    /// The schema version this build writes.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn w(&self) -> MutexGuard<'_, Connection> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn r(&self) -> MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A case commit queued for the writer, and where its result goes.
struct Queued {
    case: Case,
    expected_version: u64,
    history: Vec<HistoryEntry>,
    holder: Option<crate::case::HolderUpdate>,
    cursor: Option<(String, String)>,
    at: Timestamp,
    result: Arc<Mutex<Option<Result<CommitResult, StoreError>>>>,
}

impl Queued {
    fn commit(&self) -> CaseCommit<'_> {
        CaseCommit {
            case: &self.case,
            expected_version: self.expected_version,
            history: &self.history,
            holder: self.holder.as_ref(),
            cursor: self.cursor.as_ref().map(|(n, v)| (n.as_str(), v.as_str())),
            at: self.at,
        }
    }
}

/// The queued commits in one transaction; their results once it has committed. Should one
/// of them fail, the transaction is rolled back and each is committed alone, so that the
/// failure is that one's result and the others go on.
fn commit_queued(c: &mut Connection, batch: &[Queued]) -> Vec<Result<CommitResult, StoreError>> {
    let together = (|| {
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let out = batch
            .iter()
            .map(|q| commit_case_in(&tx, &q.commit()))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().map_err(db)?;
        Ok::<_, StoreError>(out)
    })();
    match together {
        Ok(out) => out.into_iter().map(Ok).collect(),
        Err(e) if batch.len() == 1 => vec![Err(e)],
        Err(_) => batch
            .iter()
            .map(|q| {
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db)?;
                let r = commit_case_in(&tx, &q.commit())?;
                tx.commit().map_err(db)?;
                Ok(r)
            })
            .collect(),
    }
}

// ---- rows ↔ domain (see `rows`) -------------------------------------------------------

fn case_row(r: &Row<'_>) -> rusqlite::Result<Result<CaseRow, StoreError>> {
    Ok(CaseCols {
        id: r.get(0)?,
        run: r.get(1)?,
        pilot: r.get(2)?,
        date: r.get(3)?,
        tag: r.get(4)?,
        sid: r.get(5)?,
        old: r.get(6)?,
        new: r.get(7)?,
        recipient: r.get(8)?,
        state: r.get(9)?,
        attempt: r.get(10)?,
        deadline: r.get(11)?,
        outcome: r.get(12)?,
        sms: r.get(13)?,
        answer: r.get(14)?,
        failures: r.get(15)?,
        opened: r.get(16)?,
        closed: r.get(17)?,
        version: r.get(18)?,
    }
    .build())
}

fn load_permits(c: &Connection, case: &mut Case) -> Result<(), StoreError> {
    let mut st = c
        .prepare_cached("SELECT number, service_code, new_number FROM case_permits WHERE case_id = ?1 ORDER BY idx")
        .map_err(db)?;
    let rows = st
        .query_map([&case.id.0], |r| {
            Ok(PermitItem {
                number: r.get(0)?,
                service_code: r.get(1)?,
                new_number: r.get(2)?,
            })
        })
        .map_err(db)?;
    case.permits = rows.collect::<Result<_, _>>().map_err(db)?;
    Ok(())
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<Result<RunRecord, StoreError>> {
    Ok(RunCols {
        id: r.get(0)?,
        pilot: r.get(1)?,
        date: r.get(2)?,
        state: r.get(3)?,
        phase: r.get(4)?,
        started: r.get(5)?,
        finished: r.get(6)?,
        error: r.get(7)?,
        diffs: r.get(8)?,
        active: r.get(9)?,
        waiting: r.get(10)?,
        closed: r.get(11)?,
    }
    .build())
}

fn get_run(c: &Connection, id: &str) -> Result<Option<RunRecord>, StoreError> {
    let mut st = c
        .prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE run_id = ?1"))
        .map_err(db)?;
    st.query_row([id], run_row)
        .optional()
        .map_err(db)?
        .transpose()
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<Result<EventRecord, StoreError>> {
    Ok(EventCols {
        seq: r.get(0)?,
        at: r.get(1)?,
        pilot: r.get(2)?,
        run: r.get(3)?,
        case: r.get(4)?,
        kind: r.get(5)?,
        attempt: r.get(6)?,
        detail: r.get(7)?,
    }
    .build())
}

fn insert_step(
    tx: &Connection,
    pilot: &str,
    run: &RunId,
    case: &CaseId,
    h: &HistoryEntry,
) -> Result<EventRecord, StoreError> {
    let mut st = tx
        .prepare_cached(
            "INSERT INTO events (at, pilot_id, run_id, case_id, kind, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db)?;
    st.execute(params![
        to_nanos(h.at),
        pilot,
        run.0,
        case.0,
        h.kind.as_str(),
        i64::from(h.attempt),
        h.detail
    ])
    .map_err(db)?;
    Ok(step_event(tx.last_insert_rowid(), pilot, run, case, h))
}

/// Applies counter deltas and re-derives the run state; writes a run event when it changed.
fn touch_run(
    tx: &Connection,
    run: &RunId,
    delta: [i64; 3],
    diffs: i64,
    at: Timestamp,
) -> Result<Option<EventRecord>, StoreError> {
    if delta != [0, 0, 0] || diffs != 0 {
        tx.prepare_cached(
            "UPDATE runs SET n_active = n_active + ?2, n_waiting = n_waiting + ?3, n_closed = n_closed + ?4, \
             diffs = diffs + ?5 WHERE run_id = ?1",
        )
        .map_err(db)?
        .execute(params![run.0, delta[0], delta[1], delta[2], diffs])
        .map_err(db)?;
    }
    let rec = get_run(tx, &run.0)?.ok_or_else(|| StoreError::NoRun(run.0.clone()))?;
    let Some((next, finished)) = next_run_state(&rec, at) else {
        return Ok(None);
    };
    tx.prepare_cached("UPDATE runs SET state = ?2, finished_at = ?3 WHERE run_id = ?1")
        .map_err(db)?
        .execute(params![run.0, next.as_str(), finished])
        .map_err(db)?;
    Ok(Some(insert_run_event(tx, &rec.pilot_id, run, next, at)?))
}

fn insert_run_event(
    tx: &Connection,
    pilot: &str,
    run: &RunId,
    state: RunState,
    at: Timestamp,
) -> Result<EventRecord, StoreError> {
    tx.prepare_cached("INSERT INTO events (at, pilot_id, run_id, case_id, kind, attempt, detail) VALUES (?1, ?2, ?3, NULL, ?4, 0, ?5)")
        .map_err(db)?
        .execute(params![to_nanos(at), pilot, run.0, RUN_STATE_KIND, state.as_str()])
        .map_err(db)?;
    Ok(run_event(tx.last_insert_rowid(), pilot, run, state, at))
}

fn set_cursor_tx(tx: &Connection, name: &str, value: &str) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO cursors (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value")
        .map_err(db)?
        .execute([name, value])
        .map_err(db)?;
    Ok(())
}

/// [`Store::commit_diff`] inside a transaction the caller commits.
fn commit_diff_in(tx: &rusqlite::Transaction<'_>, d: &DiffCommit<'_>) -> Result<DiffResult, StoreError> {
    let mut events = vec![];
    let mut opened = false;
    let mut delta = [0; 3];
    if let Some((case, history)) = d.opened {
        let (state, attempt, deadline, outcome) = state_cols(&case.state);
        let n = tx
            .prepare_cached(&format!(
                "INSERT INTO cases ({CASE_COLS}, class, n_permits) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, 1, ?19, ?20) \
                 ON CONFLICT(case_id) DO NOTHING"
            ))
            .map_err(db)?
            .execute(params![
                case.id.0,
                case.run_id.0,
                case.pilot_id,
                case.date.to_string(),
                case.subject.tag(),
                case.subject.id(),
                name_json(&case.old_name)?,
                name_json(&case.new_name)?,
                case.recipient.map(|i| i.to_string()),
                state,
                attempt,
                deadline,
                outcome,
                i64::from(case.sms_attempts),
                answer_str(case.answer),
                i64::from(case.failures),
                to_nanos(case.opened_at),
                case.closed_at.map(to_nanos),
                class_code(case.state.class()),
                case.permits.len() as i64,
            ])
            .map_err(db)?;
        if n == 1 {
            opened = true;
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO case_permits (case_id, idx, number, service_code, new_number) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db)?;
            for (i, p) in case.permits.iter().enumerate() {
                st.execute(params![
                    case.id.0,
                    i as i64,
                    p.number,
                    p.service_code,
                    p.new_number
                ])
                .map_err(db)?;
            }
            for h in history {
                events.push(insert_step(tx, &case.pilot_id, &case.run_id, &case.id, h)?);
            }
            delta = delta_of(case.state.class(), 1);
        }
    }
    set_cursor_tx(tx, &d.phase.cursor_name(d.run), d.cursor)?;
    events.extend(touch_run(tx, d.run, delta, i64::from(d.counted), d.at)?);
    Ok(DiffResult { opened, events })
}

/// [`Store::commit_case`] inside a transaction the caller commits.
fn commit_case_in(tx: &rusqlite::Transaction<'_>, cc: &CaseCommit<'_>) -> Result<CommitResult, StoreError> {
    let case = cc.case;
    let old_class: Option<i64> = tx
        .prepare_cached("SELECT class FROM cases WHERE case_id = ?1 AND version = ?2")
        .map_err(db)?
        .query_row(params![case.id.0, cc.expected_version as i64], |r| r.get(0))
        .optional()
        .map_err(db)?;
    let Some(old_class) = old_class else {
        return Ok(CommitResult::Conflict);
    };
    let (state, attempt, deadline, outcome) = state_cols(&case.state);
    let new_class = class_code(case.state.class());
    tx.prepare_cached(
        "UPDATE cases SET recipient_iin = ?2, state = ?3, attempt = ?4, deadline = ?5, outcome = ?6, class = ?7, \
         sms_attempts = ?8, answer = ?9, failures = ?10, closed_at = ?11, version = version + 1 WHERE case_id = ?1",
    )
    .map_err(db)?
    .execute(params![
        case.id.0,
        case.recipient.map(|i| i.to_string()),
        state,
        attempt,
        deadline,
        outcome,
        new_class,
        i64::from(case.sms_attempts),
        answer_str(case.answer),
        i64::from(case.failures),
        case.closed_at.map(to_nanos),
    ])
    .map_err(db)?;
    {
        let mut st = tx
            .prepare_cached("UPDATE case_permits SET new_number = ?3 WHERE case_id = ?1 AND idx = ?2 AND new_number IS NOT ?3")
            .map_err(db)?;
        for (i, p) in case.permits.iter().enumerate() {
            st.execute(params![case.id.0, i as i64, p.new_number])
                .map_err(db)?;
        }
    }
    let mut events = Vec::with_capacity(cc.history.len() + 1);
    for h in cc.history {
        events.push(insert_step(tx, &case.pilot_id, &case.run_id, &case.id, h)?);
    }
    if let Some(h) = cc.holder {
        let permits = permits_json(&h.permits)?;
        tx.prepare_cached(
            "INSERT INTO holders (subject_tag, subject_id, name, permits, case_id, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(subject_tag, subject_id) DO UPDATE SET name = excluded.name, permits = excluded.permits, \
             case_id = excluded.case_id, updated_at = excluded.updated_at",
        )
        .map_err(db)?
        .execute(params![h.subject.tag(), h.subject.id(), name_json(&h.name)?, permits, h.case_id.0, to_nanos(h.at)])
        .map_err(db)?;
    }
    if let Some((name, value)) = cc.cursor {
        set_cursor_tx(tx, name, value)?;
    }
    if old_class != new_class {
        let delta = move_delta(old_class, new_class);
        events.extend(touch_run(tx, &case.run_id, delta, 0, cc.at)?);
    }
    Ok(CommitResult::Committed(events))
}

impl Store for SqliteStore {
    fn create_run(
        &self,
        pilot_id: &str,
        date: Date,
        at: Timestamp,
    ) -> Result<(RunRecord, bool, Vec<EventRecord>), StoreError> {
        let id = RunId::of(pilot_id, date);
        let mut c = self.w();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        if let Some(existing) = get_run(&tx, &id.0)? {
            return Ok((existing, false, vec![]));
        }
        tx.execute(
            "INSERT INTO runs (run_id, pilot_id, date, state, phase, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id.0, pilot_id, date.to_string(), RunState::Running.as_str(), DiffPhase::GbdUl.as_str(), to_nanos(at)],
        )
        .map_err(db)?;
        let ev = insert_run_event(&tx, pilot_id, &id, RunState::Running, at)?;
        let rec = get_run(&tx, &id.0)?.ok_or_else(|| StoreError::NoRun(id.0.clone()))?;
        tx.commit().map_err(db)?;
        Ok((rec, true, vec![ev]))
    }

    fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        get_run(&self.r(), &id.0)
    }

    fn runs_collecting(&self) -> Result<Vec<RunRecord>, StoreError> {
        let c = self.r();
        let mut st = c
            .prepare(&format!("SELECT {RUN_COLS} FROM runs WHERE phase != 'done' AND state != 'FAILED' ORDER BY started_at, run_id"))
            .map_err(db)?;
        let rows = st.query_map([], run_row).map_err(db)?;
        rows.map(|r| r.map_err(db).and_then(|x| x)).collect()
    }

    fn runs_running(&self) -> Result<Vec<RunRecord>, StoreError> {
        let c = self.r();
        let mut st = c
            .prepare(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE state = 'RUNNING' ORDER BY started_at, run_id"
            ))
            .map_err(db)?;
        let rows = st.query_map([], run_row).map_err(db)?;
        rows.map(|r| r.map_err(db).and_then(|x| x)).collect()
    }

    fn set_phase(
        &self,
        run: &RunId,
        phase: DiffPhase,
        at: Timestamp,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut c = self.w();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let n = tx
            .execute(
                "UPDATE runs SET phase = ?2 WHERE run_id = ?1",
                params![run.0, phase.as_str()],
            )
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NoRun(run.0.clone()));
        }
        let ev = touch_run(&tx, run, [0; 3], 0, at)?;
        tx.commit().map_err(db)?;
        Ok(ev.into_iter().collect())
    }

    fn fail_run(
        &self,
        run: &RunId,
        error: &str,
        at: Timestamp,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut c = self.w();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let rec = get_run(&tx, &run.0)?.ok_or_else(|| StoreError::NoRun(run.0.clone()))?;
        if rec.state == RunState::Failed {
            return Ok(vec![]);
        }
        tx.execute(
            "UPDATE runs SET state = ?2, error = ?3, finished_at = ?4 WHERE run_id = ?1",
            params![run.0, RunState::Failed.as_str(), error, to_nanos(at)],
        )
        .map_err(db)?;
        let ev = insert_run_event(&tx, &rec.pilot_id, run, RunState::Failed, at)?;
        tx.commit().map_err(db)?;
        Ok(vec![ev])
    }

    fn reopen_run(&self, run: &RunId, at: Timestamp) -> Result<Vec<EventRecord>, StoreError> {
        let mut c = self.w();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let rec = get_run(&tx, &run.0)?.ok_or_else(|| StoreError::NoRun(run.0.clone()))?;
        if rec.state != RunState::Failed {
            return Ok(vec![]);
        }
        // Back to RUNNING first; `touch_run` then derives the state from the counters.
        tx.execute(
            "UPDATE runs SET state = ?2, error = NULL, finished_at = NULL WHERE run_id = ?1",
            params![run.0, RunState::Running.as_str()],
        )
        .map_err(db)?;
        let mut events = vec![insert_run_event(
            &tx,
            &rec.pilot_id,
            run,
            RunState::Running,
            at,
        )?];
        events.extend(touch_run(&tx, run, [0; 3], 0, at)?);
        tx.commit().map_err(db)?;
        Ok(events)
    }

    fn commit_diff(&self, d: DiffCommit<'_>) -> Result<DiffResult, StoreError> {
        self.commit_diffs(std::slice::from_ref(&d))?
            .pop()
            .ok_or_else(|| StoreError::Backend("a diff committed without a result".into()))
    }

    /// One transaction for the whole batch: one WAL commit instead of one per diff.
    fn commit_diffs(&self, ds: &[DiffCommit<'_>]) -> Result<Vec<DiffResult>, StoreError> {
        let mut c = self.w();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let out = ds
            .iter()
            .map(|d| commit_diff_in(&tx, d))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn case(&self, id: &CaseId) -> Result<Option<Versioned<Case>>, StoreError> {
        let c = self.r();
        let mut st = c
            .prepare_cached(&format!("SELECT {CASE_COLS} FROM cases WHERE case_id = ?1"))
            .map_err(db)?;
        let Some(row) = st.query_row([&id.0], case_row).optional().map_err(db)? else {
            return Ok(None);
        };
        let mut row = row?;
        load_permits(&c, &mut row.case)?;
        Ok(Some(Versioned {
            value: row.case,
            version: row.version,
        }))
    }

    /// Group commit: the commit is queued, then the writer is taken. Whoever takes it first
    /// commits every queued change in one transaction and hands each its result; a caller
    /// that finds its result there returns it. Workers committing at the same time thus
    /// share one WAL commit, instead of writing the same pages (the run's counters, the
    /// tail of the events, index pages) once each.
    fn commit_case(&self, cc: CaseCommit<'_>) -> Result<CommitResult, StoreError> {
        let result = Arc::new(Mutex::new(None));
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Queued {
                case: cc.case.clone(),
                expected_version: cc.expected_version,
                history: cc.history.to_vec(),
                holder: cc.holder.cloned(),
                cursor: cc.cursor.map(|(n, v)| (n.to_owned(), v.to_owned())),
                at: cc.at,
                result: result.clone(),
            });
        let take = |r: &Mutex<Option<_>>| r.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut c = self.w();
        // A queued commit leaves the queue only with the writer held, and has its result
        // before the writer is let go: done by another, or still queued for this one.
        if let Some(r) = take(&result) {
            return r;
        }
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (q, r) in batch.iter().zip(commit_queued(&mut c, &batch)) {
            *q.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        }
        drop(c);
        take(&result).unwrap_or_else(|| Err(StoreError::Backend("a case committed without a result".into())))
    }

    /// One transaction for the whole batch: one WAL commit instead of one per case.
    fn commit_cases(&self, cs: &[CaseCommit<'_>]) -> Result<Vec<CommitResult>, StoreError> {
        let mut c = self.w();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut out = Vec::with_capacity(cs.len());
        for cc in cs {
            let r = commit_case_in(&tx, cc)?;
            let stop = r == CommitResult::Conflict;
            out.push(r);
            if stop {
                break;
            }
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn history(&self, id: &CaseId) -> Result<Vec<HistoryEntry>, StoreError> {
        let c = self.r();
        let mut st = c
            .prepare_cached(
                "SELECT seq, at, pilot_id, run_id, case_id, kind, attempt, detail FROM events WHERE case_id = ?1 ORDER BY seq",
            )
            .map_err(db)?;
        let rows = st.query_map([&id.0], event_row).map_err(db)?;
        let mut out = vec![];
        for r in rows {
            if let EventWhat::Step(h) = r.map_err(db)??.what {
                out.push(h);
            }
        }
        Ok(out)
    }

    fn actionable_cases(
        &self,
        after: Option<&CaseId>,
        limit: usize,
    ) -> Result<Vec<CaseId>, StoreError> {
        let c = self.r();
        let mut st = c
            .prepare_cached("SELECT case_id FROM cases WHERE class = 0 AND case_id > ?1 ORDER BY case_id LIMIT ?2")
            .map_err(db)?;
        let rows = st
            .query_map(
                params![after.map(|a| a.0.as_str()).unwrap_or(""), limit as i64],
                |r| r.get::<_, String>(0),
            )
            .map_err(db)?;
        rows.map(|r| r.map(CaseId).map_err(db)).collect()
    }

    fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<(CaseId, u32)>, StoreError> {
        let c = self.r();
        let mut st = c
            .prepare_cached(
                "SELECT case_id, attempt FROM cases WHERE deadline IS NOT NULL AND deadline <= ?1 ORDER BY deadline, case_id LIMIT ?2",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![to_nanos(now), limit as i64], |r| {
                Ok((CaseId(r.get(0)?), r.get::<_, i64>(1)?))
            })
            .map_err(db)?;
        rows.map(|r| {
            r.map_err(db)
                .map(|(id, a)| (id, u32::try_from(a).unwrap_or(0)))
        })
        .collect()
    }

    fn cases(
        &self,
        run: &RunId,
        filter: CaseFilter,
        after: Option<&CaseId>,
        limit: usize,
    ) -> Result<Vec<Case>, StoreError> {
        let c = self.r();
        let (cond, outcome) = match filter {
            CaseFilter::All => ("", None),
            CaseFilter::Open => (" AND class != 2", None),
            CaseFilter::Outcome(o) => (" AND outcome = ?4", Some(o.as_str())),
        };
        let sql = format!(
            "SELECT {CASE_COLS} FROM cases WHERE run_id = ?1 AND case_id > ?2{cond} ORDER BY case_id LIMIT ?3"
        );
        let mut st = c.prepare_cached(&sql).map_err(db)?;
        let after = after.map(|a| a.0.as_str()).unwrap_or("");
        let rows: Vec<Result<CaseRow, StoreError>> = match outcome {
            Some(o) => st.query_map(params![run.0, after, limit as i64, o], case_row),
            None => st.query_map(params![run.0, after, limit as i64], case_row),
        }
        .map_err(db)?
        .collect::<Result<_, _>>()
        .map_err(db)?;
        drop(st);
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut case = r?.case;
            load_permits(&c, &mut case)?;
            out.push(case);
        }
        Ok(out)
    }

    fn funnel(&self, run: &RunId) -> Result<FunnelCounts, StoreError> {
        let c = self.r();
        let rec = get_run(&c, &run.0)?.ok_or_else(|| StoreError::NoRun(run.0.clone()))?;
        let mut f = FunnelCounts {
            diffs: rec.diffs,
            ..Default::default()
        };
        // Kept by the triggers of migration 2; no row yet: a run without cases.
        let row: Option<[i64; 16]> = c
            .prepare_cached(
                "SELECT with_permits, recipients, sms_sent, sms_resent, answered_yes, answered_no, open, \
                 reissued, no_answer, no_phone, no_consent, excluded_dead_or_missing, excluded_abroad, \
                 excluded_incapable, excluded_imprisoned, failed FROM run_funnel WHERE run_id = ?1",
            )
            .map_err(db)?
            .query_row([&run.0], |r| {
                let mut v = [0i64; 16];
                for (i, x) in v.iter_mut().enumerate() {
                    *x = r.get(i)?;
                }
                Ok(v)
            })
            .optional()
            .map_err(db)?;
        let Some(v) = row else { return Ok(f) };
        funnel_sums(&mut f, [v[0], v[1], v[2], v[3], v[4], v[5], v[6]]);
        for (o, n) in [
            ("REISSUED", v[7]),
            ("NO_ANSWER", v[8]),
            ("NO_PHONE", v[9]),
            ("NO_CONSENT", v[10]),
            ("EXCLUDED_DEAD_OR_MISSING", v[11]),
            ("EXCLUDED_ABROAD", v[12]),
            ("EXCLUDED_INCAPABLE", v[13]),
            ("EXCLUDED_IMPRISONED", v[14]),
            ("FAILED", v[15]),
        ] {
            funnel_outcome(&mut f, o, n)?;
        }
        Ok(f)
    }

    fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.r()
            .prepare_cached("SELECT value FROM cursors WHERE name = ?1")
            .map_err(db)?
            .query_row([name], |r| r.get(0))
            .optional()
            .map_err(db)
    }

    fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        set_cursor_tx(&self.w(), name, value)
    }

    fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let c = self.r();
        let mut st = c
            .prepare_cached(
                "SELECT seq, at, pilot_id, run_id, case_id, kind, attempt, detail FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![seq as i64, limit as i64], event_row)
            .map_err(db)?;
        rows.map(|r| r.map_err(db).and_then(|x| x)).collect()
    }

    fn holder(&self, subject: &Subject) -> Result<Option<HolderRecord>, StoreError> {
        let c = self.r();
        let row: Option<(String, String, String, i64)> = c
            .prepare_cached("SELECT name, permits, case_id, updated_at FROM holders WHERE subject_tag = ?1 AND subject_id = ?2")
            .map_err(db)?
            .query_row(params![subject.tag(), subject.id()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()
            .map_err(db)?;
        let Some((name, permits, case_id, at)) = row else {
            return Ok(None);
        };
        holder_from(*subject, &name, &permits, case_id, at).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Opening, PermitItem, SubjectName};

    fn open_cases(s: &SqliteStore, n: u32) -> (RunId, Vec<Versioned<Case>>) {
        let at: Timestamp = "2026-02-03T05:00:00Z".parse().unwrap();
        let (run, ..) = s.create_run("sez-000", Date::constant(2026, 2, 3), at).unwrap();
        let name = |s: &str| SubjectName::Organization { ru: s.into(), kk: s.into() };
        let mut out = vec![];
        for i in 0..n {
            let bin = (i * 20..)
                .find_map(|x| shep_domain::Bin::from_parts(2015, 3, 4, 0, x))
                .unwrap();
            let (case, fx) = crate::case::open(
                Opening {
                    run_id: run.id.clone(),
                    pilot_id: "sez-000".into(),
                    date: Date::constant(2026, 2, 3),
                    subject: Subject::Organization(bin),
                    old_name: name("old"),
                    new_name: name("new"),
                    permits: vec![PermitItem {
                        number: format!("P-{i}"),
                        service_code: "SEZ-OBJ".into(),
                        new_number: None,
                    }],
                    head: None,
                },
                at,
            );
            let hist: Vec<HistoryEntry> = fx
                .into_iter()
                .filter_map(|e| match e {
                    crate::case::Effect::History(h) => Some(h),
                    _ => None,
                })
                .collect();
            s.commit_diff(DiffCommit {
                run: &run.id,
                phase: DiffPhase::GbdUl,
                counted: true,
                cursor: "c",
                opened: Some((&case, &hist)),
                at,
            })
            .unwrap();
            out.push(s.case(&case.id).unwrap().unwrap());
        }
        (run.id, out)
    }

    /// Commits queued together are independent: the one that fails is undone alone and
    /// gets its error; the others commit.
    #[test]
    fn a_failing_commit_of_a_group_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("sdu.db")).unwrap();
        let (_, cases) = open_cases(&s, 3);
        let victim = cases[1].value.id.0.clone();
        s.w()
            .execute_batch(&format!(
                "CREATE TRIGGER boom BEFORE UPDATE ON cases WHEN NEW.case_id = '{victim}' \
                 BEGIN SELECT RAISE(ABORT, 'boom'); END;"
            ))
            .unwrap();
        let at = cases[0].value.opened_at;
        let batch: Vec<Queued> = cases
            .iter()
            .map(|v| Queued {
                case: Case {
                    failures: 7,
                    ..v.value.clone()
                },
                expected_version: v.version,
                history: vec![HistoryEntry {
                    kind: crate::case::StepKind::CallFailed,
                    at,
                    attempt: 0,
                    detail: "x".into(),
                }],
                holder: None,
                cursor: Some(("pep".into(), v.value.id.0.clone())),
                at,
                result: Arc::new(Mutex::new(None)),
            })
            .collect();
        let results = commit_queued(&mut s.w(), &batch);
        assert!(matches!(results[0], Ok(CommitResult::Committed(_))), "{results:?}");
        assert!(matches!(&results[1], Err(e) if e.to_string().contains("boom")), "{results:?}");
        assert!(matches!(results[2], Ok(CommitResult::Committed(_))), "{results:?}");
        for (i, v) in cases.iter().enumerate() {
            let now = s.case(&v.value.id).unwrap().unwrap();
            let (version, failures, steps) = if i == 1 { (1, 0, 1) } else { (2, 7, 2) };
            assert_eq!((now.version, now.value.failures), (version, failures), "case {i}");
            assert_eq!(s.history(&v.value.id).unwrap().len(), steps, "case {i}");
        }
        // The cursor of the last commit that went through.
        assert_eq!(s.cursor("pep").unwrap(), Some(cases[2].value.id.0.clone()));
    }
}
