//! The PostgreSQL store, for a deployment that outgrows one node: the same tables as the
//! SQLite store in PostgreSQL types, schema migrations with a version table, and a
//! session-level advisory lock (`pg_try_advisory_lock` on [`LOCK_KEY`]) held by the store's
//! writing connection for its lifetime, so that one runner at a time uses a database. The
//! server releases the lock when that session ends, also when the runner is killed; a
//! store that is dropped unlocks at once.
//!
//! Two connections, as in SQLite: one writes (every change is one transaction, compare-and-
//! swap on a case's version, the stream cursor committed with the change it moves), one
//! reads. A single writer also makes the event sequence (`events.seq`, an identity column)
//! increase in commit order, so [`Store::events_after`] never skips a late commit.
//!
//! A change takes few round trips: the compare-and-swap is one `UPDATE … RETURNING` of the
//! version read, then the permits, history, holder, cursor and run counters go out
//! together, pipelined on the connection, inside the same transaction.
//!
//! Durability is the server's: with PostgreSQL's default `synchronous_commit = on` a
//! committed change survives a crash of the server too. `?options=-c%20synchronous_commit%3Doff`
//! in the URL trades that for speed, to the SQLite store's level (a killed SDU loses
//! nothing; a server crash may drop the last commits, which the idempotent calls repeat).
//!
//! Times are stored as nanoseconds since the epoch (`BIGINT`), as in SQLite: a timestamp
//! round-trips exactly (PostgreSQL's `timestamptz` keeps microseconds). Identifiers are
//! `COLLATE "C"` so that pages by id follow the byte order both backends share.
//!
//! The client is `tokio-postgres`, its connection driven on a thread of its own with its own
//! single-threaded runtime; the store's synchronous methods wait for their queries with a
//! plain blocking wait. (The `postgres` crate's synchronous wrapper starts a runtime in the
//! calling thread and panics when that thread is inside tokio, as the gRPC service's reads
//! are.) The connection is not encrypted (no TLS): point it at PostgreSQL on the same host
//! (loopback or a Unix socket) or through a TLS tunnel; `sslmode=require` is refused.
//!
//! If the connection to the server is lost, every call fails with [`StoreError::Backend`]
//! and the store does not reconnect: the lost session released the lock, so the runner
//! must be restarted (and takes the lock again) rather than write without it. A server that
//! stops answering is given up on after 10 s to connect and 30 s for a write the server
//! does not acknowledge (TCP user timeout), unless the URL sets `connect_timeout` or
//! `tcp_user_timeout`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::executor::block_on;
use jiff::Timestamp;
use jiff::civil::Date;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, Config, GenericClient, NoTls, Row, Statement};

use super::rows::{
    CASE_COLS, CaseCols, CaseRow, EVENT_COLS, EventCols, RUN_COLS, RUN_STATE_KIND, RunCols,
    answer_str, class_code, corrupt, delta_of, funnel_outcome, funnel_sums, holder_from,
    move_delta, name_json, next_run_state, permits_json, run_event, state_cols, step_event,
};
use super::{
    CaseCommit, CaseFilter, CommitResult, DiffCommit, DiffPhase, DiffResult, EventRecord,
    EventWhat, FunnelCounts, HolderRecord, RunRecord, RunState, Store, StoreError, Versioned,
};
use crate::case::{Case, CaseId, HistoryEntry, PermitItem, RunId, Subject};
use crate::dates::to_nanos;

/// The key of the advisory lock a runner holds on its database ("SDU" and 1); advisory
/// locks are per database, so runners of different databases on one server do not meet.
pub const LOCK_KEY: i64 = 0x5344_5500_0000_0001;

/// The schema, one migration per version; never edit a released one, add the next. The
/// same tables and indexes as the SQLite store's, version for version.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
CREATE TABLE runs (
    run_id      TEXT COLLATE "C" PRIMARY KEY,
    pilot_id    TEXT NOT NULL,
    date        DATE NOT NULL,
    state       TEXT NOT NULL,
    phase       TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    error       TEXT,
    diffs       BIGINT NOT NULL DEFAULT 0,
    n_active    BIGINT NOT NULL DEFAULT 0,
    n_waiting   BIGINT NOT NULL DEFAULT 0,
    n_closed    BIGINT NOT NULL DEFAULT 0,
    UNIQUE (pilot_id, date)
);
CREATE TABLE cases (
    case_id       TEXT COLLATE "C" PRIMARY KEY,
    run_id        TEXT COLLATE "C" NOT NULL REFERENCES runs(run_id),
    pilot_id      TEXT NOT NULL,
    date          DATE NOT NULL,
    subject_tag   TEXT NOT NULL,
    subject_id    TEXT NOT NULL,
    old_name      TEXT NOT NULL,
    new_name      TEXT NOT NULL,
    recipient_iin TEXT,
    state         TEXT NOT NULL,
    attempt       BIGINT NOT NULL DEFAULT 0,
    deadline      BIGINT,
    outcome       TEXT,
    class         SMALLINT NOT NULL,
    sms_attempts  BIGINT NOT NULL DEFAULT 0,
    answer        TEXT,
    failures      BIGINT NOT NULL DEFAULT 0,
    n_permits     BIGINT NOT NULL,
    opened_at     BIGINT NOT NULL,
    closed_at     BIGINT,
    version       BIGINT NOT NULL
);
CREATE INDEX cases_by_run ON cases(run_id, case_id);
CREATE INDEX cases_active ON cases(case_id) WHERE class = 0;
CREATE INDEX cases_timers ON cases(deadline) WHERE deadline IS NOT NULL;
CREATE TABLE case_permits (
    case_id      TEXT COLLATE "C" NOT NULL,
    idx          BIGINT NOT NULL,
    number       TEXT NOT NULL,
    service_code TEXT NOT NULL,
    new_number   TEXT,
    PRIMARY KEY (case_id, idx)
);
CREATE TABLE events (
    seq      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    pilot_id TEXT NOT NULL,
    run_id   TEXT COLLATE "C" NOT NULL,
    case_id  TEXT COLLATE "C",
    kind     TEXT NOT NULL,
    attempt  BIGINT NOT NULL DEFAULT 0,
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
    case_id     TEXT COLLATE "C" NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (subject_tag, subject_id)
);
"#,
];

/// True when `db` names a PostgreSQL database (`postgres://` or `postgresql://` URL)
/// rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    let l = db.trim_start().to_ascii_lowercase();
    l.starts_with("postgres://") || l.starts_with("postgresql://")
}

/// The URL without its password (in the user part or a `password=` parameter), for errors
/// and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => format!("{}@{host}", user.split(':').next().unwrap_or("")),
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|kv| {
                    if kv.to_ascii_lowercase().starts_with("password=") {
                        "password=***"
                    } else {
                        kv
                    }
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The error's whole message: the server's (severity, message, detail, hint) for a
/// database error, whose `Display` says only "db error", else the chain of causes.
fn message(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        let mut m = format!("{}: {} ({})", d.severity(), d.message(), d.code().code());
        if let Some(x) = d.detail() {
            m.push_str(&format!("; {x}"));
        }
        if let Some(x) = d.hint() {
            m.push_str(&format!("; hint: {x}"));
        }
        return m;
    }
    let mut m = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !m.contains(&s_msg) {
            m.push_str(&format!(": {s_msg}"));
        }
        src = s.source();
    }
    m
}

fn db(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            StoreError::Busy(message(&e))
        }
        _ if e.is_closed() => StoreError::Backend(format!(
            "the connection to PostgreSQL is closed ({}); restart the SDU",
            message(&e)
        )),
        _ => StoreError::Backend(message(&e)),
    }
}

fn col<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i)
        .map_err(|e| corrupt(format!("column {i}: {e}")))
}

/// One connection: its client and the statements prepared on it. A thread of its own
/// drives it; dropping the client ends the session and so the thread (not joined: a server
/// that stopped answering must not hang the drop).
struct Conn {
    client: Client,
    cache: HashMap<String, Statement>,
}

impl Conn {
    fn connect(cfg: &Config, shown: &str) -> Result<Conn, StoreError> {
        let io = |message: String| StoreError::Io {
            path: shown.to_owned(),
            message,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let cfg = cfg.clone();
        std::thread::Builder::new()
            .name("sdu-postgres".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("starting its runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match cfg.connect(NoTls).await {
                        Ok((client, connection)) => {
                            let _ = tx.send(Ok(client));
                            if let Err(e) = connection.await {
                                tracing::warn!(error = %e, "the SDU's PostgreSQL connection ended");
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("cannot connect: {}", message(&e))));
                        }
                    }
                });
            })
            .map_err(|e| io(format!("starting a connection thread: {e}")))?;
        let client = match rx.recv() {
            Ok(Ok(c)) => c,
            Ok(Err(m)) => return Err(io(m)),
            Err(_) => return Err(io("the connection thread stopped".into())),
        };
        Ok(Conn {
            client,
            cache: HashMap::new(),
        })
    }

    fn q(&mut self) -> Q<'_, Client> {
        Q {
            c: &self.client,
            cache: &mut self.cache,
        }
    }

    /// Runs `f` in one transaction: `f` returns its result and whether to commit; an error
    /// or `false` rolls back.
    fn tx<T>(
        &mut self,
        f: impl FnOnce(&mut Q<'_, tokio_postgres::Transaction<'_>>) -> Result<(T, bool), StoreError>,
    ) -> Result<T, StoreError> {
        let tx = block_on(self.client.transaction()).map_err(db)?;
        let mut q = Q {
            c: &tx,
            cache: &mut self.cache,
        };
        let (out, commit) = f(&mut q)?;
        if commit {
            block_on(tx.commit()).map_err(db)?;
        }
        Ok(out)
    }
}

/// Queries on a client or a transaction, with the statements prepared once per connection.
struct Q<'a, C> {
    c: &'a C,
    cache: &'a mut HashMap<String, Statement>,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Q<'_, C> {
    fn st(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.cache.get(sql) {
            return Ok(s.clone());
        }
        let s = block_on(self.c.prepare(sql)).map_err(db)?;
        self.cache.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn exec(&mut self, sql: &str, p: &Params<'_>) -> Result<u64, StoreError> {
        let st = self.st(sql)?;
        block_on(self.c.execute(&st, p)).map_err(db)
    }

    fn all(&mut self, sql: &str, p: &Params<'_>) -> Result<Vec<Row>, StoreError> {
        let st = self.st(sql)?;
        block_on(self.c.query(&st, p)).map_err(db)
    }

    fn opt(&mut self, sql: &str, p: &Params<'_>) -> Result<Option<Row>, StoreError> {
        let st = self.st(sql)?;
        block_on(self.c.query_opt(&st, p)).map_err(db)
    }

    fn one(&mut self, sql: &str, p: &Params<'_>) -> Result<Row, StoreError> {
        let st = self.st(sql)?;
        block_on(self.c.query_one(&st, p)).map_err(db)
    }

    /// Runs statements in order, pipelined: sent together, one round trip for all. Returns
    /// the rows of each.
    fn batch(&mut self, b: &Batch) -> Result<Vec<Vec<Row>>, StoreError> {
        let sts =
            b.0.iter()
                .map(|(sql, _)| self.st(sql))
                .collect::<Result<Vec<_>, _>>()?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> =
            b.0.iter()
                .map(|(_, p)| {
                    p.iter()
                        .map(|x| x.as_ref() as &(dyn ToSql + Sync))
                        .collect()
                })
                .collect();
        let c = self.c;
        block_on(futures::future::try_join_all(
            sts.iter().zip(&params).map(|(st, p)| c.query(st, p)),
        ))
        .map_err(db)
    }
}

/// Statements to pipeline, with their parameters owned.
#[derive(Default)]
struct Batch(Vec<(String, Vec<Box<dyn ToSql + Sync>>)>);

impl Batch {
    /// Adds a statement; returns its index among the results.
    fn push(&mut self, sql: impl Into<String>, p: Vec<Box<dyn ToSql + Sync>>) -> usize {
        self.0.push((sql.into(), p));
        self.0.len() - 1
    }
}

/// Boxes a parameter for a [`Batch`].
fn bx<T: ToSql + Sync + 'static>(v: T) -> Box<dyn ToSql + Sync> {
    Box::new(v)
}

// ---- rows ↔ domain (see `rows`) -------------------------------------------------------

/// A column list with the `date` column read back as ISO text, whatever the server's
/// `DateStyle`.
fn pg_cols(cols: &str) -> String {
    cols.replacen(" date,", " to_char(date, 'YYYY-MM-DD'),", 1)
}

fn case_row(r: &Row) -> Result<CaseRow, StoreError> {
    CaseCols {
        id: col(r, 0)?,
        run: col(r, 1)?,
        pilot: col(r, 2)?,
        date: col(r, 3)?,
        tag: col(r, 4)?,
        sid: col(r, 5)?,
        old: col(r, 6)?,
        new: col(r, 7)?,
        recipient: col(r, 8)?,
        state: col(r, 9)?,
        attempt: col(r, 10)?,
        deadline: col(r, 11)?,
        outcome: col(r, 12)?,
        sms: col(r, 13)?,
        answer: col(r, 14)?,
        failures: col(r, 15)?,
        opened: col(r, 16)?,
        closed: col(r, 17)?,
        version: col(r, 18)?,
    }
    .build()
}

fn run_row(r: &Row) -> Result<RunRecord, StoreError> {
    RunCols {
        id: col(r, 0)?,
        pilot: col(r, 1)?,
        date: col(r, 2)?,
        state: col(r, 3)?,
        phase: col(r, 4)?,
        started: col(r, 5)?,
        finished: col(r, 6)?,
        error: col(r, 7)?,
        diffs: col(r, 8)?,
        active: col(r, 9)?,
        waiting: col(r, 10)?,
        closed: col(r, 11)?,
    }
    .build()
}

fn event_row(r: &Row) -> Result<EventRecord, StoreError> {
    EventCols {
        seq: col(r, 0)?,
        at: col(r, 1)?,
        pilot: col(r, 2)?,
        run: col(r, 3)?,
        case: col(r, 4)?,
        kind: col(r, 5)?,
        attempt: col(r, 6)?,
        detail: col(r, 7)?,
    }
    .build()
}

fn load_permits<C: GenericClient>(q: &mut Q<'_, C>, case: &mut Case) -> Result<(), StoreError> {
    let rows = q.all(
        "SELECT number, service_code, new_number FROM case_permits WHERE case_id = $1 ORDER BY idx",
        &[&case.id.0],
    )?;
    case.permits = rows
        .iter()
        .map(|r| {
            Ok(PermitItem {
                number: col(r, 0)?,
                service_code: col(r, 1)?,
                new_number: col(r, 2)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(())
}

fn get_run<C: GenericClient>(q: &mut Q<'_, C>, id: &str) -> Result<Option<RunRecord>, StoreError> {
    let sql = format!("SELECT {} FROM runs WHERE run_id = $1", pg_cols(RUN_COLS));
    q.opt(&sql, &[&id])?.as_ref().map(run_row).transpose()
}

fn runs_where<C: GenericClient>(
    q: &mut Q<'_, C>,
    cond: &str,
) -> Result<Vec<RunRecord>, StoreError> {
    let sql = format!(
        "SELECT {} FROM runs WHERE {cond} ORDER BY started_at, run_id",
        pg_cols(RUN_COLS)
    );
    q.all(&sql, &[])?.iter().map(run_row).collect()
}

fn insert_run_event<C: GenericClient>(
    q: &mut Q<'_, C>,
    pilot: &str,
    run: &RunId,
    state: RunState,
    at: Timestamp,
) -> Result<EventRecord, StoreError> {
    let seq: i64 = col(
        &q.one(
            INSERT_RUN_EVENT,
            &[
                &to_nanos(at),
                &pilot,
                &run.0,
                &RUN_STATE_KIND,
                &state.as_str(),
            ],
        )?,
        0,
    )?;
    Ok(run_event(seq, pilot, run, state, at))
}

/// Re-derives the state of a run whose counters or phase changed; writes the change and a
/// run event (pipelined) when it changed.
fn settle_run<C: GenericClient>(
    q: &mut Q<'_, C>,
    rec: &RunRecord,
    at: Timestamp,
) -> Result<Option<EventRecord>, StoreError> {
    let Some((next, finished)) = next_run_state(rec, at) else {
        return Ok(None);
    };
    let mut b = Batch::default();
    b.push(
        "UPDATE runs SET state = $2, finished_at = $3 WHERE run_id = $1",
        vec![bx(rec.id.0.clone()), bx(next.as_str()), bx(finished)],
    );
    b.push(INSERT_RUN_EVENT, run_event_params(rec, next, at));
    let rows = q.batch(&b)?;
    let seq: i64 = col(rows[1].first().ok_or_else(|| corrupt("no seq"))?, 0)?;
    Ok(Some(run_event(seq, &rec.pilot_id, &rec.id, next, at)))
}

/// Re-derives a run's state (after its phase changed); see [`settle_run`].
fn touch_run<C: GenericClient>(
    q: &mut Q<'_, C>,
    run: &RunId,
    at: Timestamp,
) -> Result<Option<EventRecord>, StoreError> {
    let rec = get_run(q, &run.0)?.ok_or_else(|| StoreError::NoRun(run.0.clone()))?;
    settle_run(q, &rec, at)
}

/// Adds counter deltas to a run, returning the run after them, to a batch.
fn bump_run(b: &mut Batch, run: &RunId, delta: [i64; 3], diffs: i64) -> usize {
    b.push(
        format!(
            "UPDATE runs SET n_active = n_active + $2, n_waiting = n_waiting + $3, n_closed = n_closed + $4, \
             diffs = diffs + $5 WHERE run_id = $1 RETURNING {}",
            pg_cols(RUN_COLS)
        ),
        vec![
            bx(run.0.clone()),
            bx(delta[0]),
            bx(delta[1]),
            bx(delta[2]),
            bx(diffs),
        ],
    )
}

/// The run a [`bump_run`] returned.
fn bumped(rows: &[Row], run: &RunId) -> Result<RunRecord, StoreError> {
    run_row(
        rows.first()
            .ok_or_else(|| StoreError::NoRun(run.0.clone()))?,
    )
}

const INSERT_STEP: &str = "INSERT INTO events (at, pilot_id, run_id, case_id, kind, attempt, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq";

const INSERT_RUN_EVENT: &str = "INSERT INTO events (at, pilot_id, run_id, case_id, kind, attempt, detail) \
     VALUES ($1, $2, $3, NULL, $4, 0, $5) RETURNING seq";

const UPSERT_CURSOR: &str = "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value";

fn run_event_params(rec: &RunRecord, state: RunState, at: Timestamp) -> Vec<Box<dyn ToSql + Sync>> {
    vec![
        bx(to_nanos(at)),
        bx(rec.pilot_id.clone()),
        bx(rec.id.0.clone()),
        bx(RUN_STATE_KIND),
        bx(state.as_str()),
    ]
}

/// Adds the history of a case to a batch; returns the index of each entry's insert.
fn push_steps(b: &mut Batch, case: &Case, history: &[HistoryEntry]) -> Vec<usize> {
    history
        .iter()
        .map(|h| {
            b.push(
                INSERT_STEP,
                vec![
                    bx(to_nanos(h.at)),
                    bx(case.pilot_id.clone()),
                    bx(case.run_id.0.clone()),
                    bx(case.id.0.clone()),
                    bx(h.kind.as_str()),
                    bx(i64::from(h.attempt)),
                    bx(h.detail.clone()),
                ],
            )
        })
        .collect()
}

/// The events of the history entries a batch inserted.
fn steps_written(
    rows: &[Vec<Row>],
    at: &[usize],
    case: &Case,
    history: &[HistoryEntry],
) -> Result<Vec<EventRecord>, StoreError> {
    at.iter()
        .zip(history)
        .map(|(&i, h)| {
            let seq: i64 = col(rows[i].first().ok_or_else(|| corrupt("no seq"))?, 0)?;
            Ok(step_event(seq, &case.pilot_id, &case.run_id, &case.id, h))
        })
        .collect()
}

fn set_cursor_q<C: GenericClient>(
    q: &mut Q<'_, C>,
    name: &str,
    value: &str,
) -> Result<(), StoreError> {
    q.exec(UPSERT_CURSOR, &[&name, &value])?;
    Ok(())
}

fn migrate(c: &mut Conn, shown: &str) -> Result<(), StoreError> {
    block_on(
        c.client
            .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"),
    )
    .map_err(db)?;
    let current: i64 = col(
        &c.q().one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
            &[],
        )?,
        0,
    )?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::NewerSchema {
            path: shown.to_owned(),
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = block_on(c.client.transaction()).map_err(db)?;
        block_on(tx.batch_execute(sql)).map_err(db)?;
        block_on(tx.execute("DELETE FROM schema_version", &[])).map_err(db)?;
        block_on(tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        ))
        .map_err(db)?;
        block_on(tx.commit()).map_err(db)?;
        tracing::info!(db = %shown, version = i + 1, "SDU database migrated");
    }
    Ok(())
}

/// Takes the runner's advisory lock on the writing connection, or says who holds it.
fn take_lock(c: &mut Conn, shown: &str) -> Result<(), StoreError> {
    let got: bool = col(
        &c.q().one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])?,
        0,
    )?;
    if got {
        return Ok(());
    }
    // A bigint advisory key shows in pg_locks as (classid, objid) = (high, low), objsubid 1.
    let holder = c.q().opt(
        "SELECT a.application_name, a.pid, COALESCE(host(a.client_addr), 'a local socket') \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid::BIGINT = $1 AND l.objid::BIGINT = $2",
        &[&(LOCK_KEY >> 32), &(LOCK_KEY & 0xffff_ffff)],
    )?;
    let holder = match holder {
        Some(r) => {
            let app: Option<String> = col(&r, 0)?;
            let pid: i32 = col(&r, 1)?;
            let from: String = col(&r, 2)?;
            let app = app
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "unknown client".into());
            format!("{app}; PostgreSQL backend {pid} from {from}")
        }
        // Released between the two queries: say so rather than guess.
        None => "a runner that has just stopped".to_owned(),
    };
    Err(StoreError::Locked {
        path: shown.to_owned(),
        holder,
    })
}

/// The PostgreSQL store.
pub struct PgStore {
    shown: String,
    write: Mutex<Conn>,
    read: Mutex<Conn>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.shown).finish()
    }
}

impl PgStore {
    /// Opens the database at `url` (`postgres://user@host:port/dbname`, or the key=value
    /// form) for a runner: connects, takes the advisory lock, migrates the schema. The
    /// database itself must exist.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let mut cfg: Config = url.parse().map_err(|e| StoreError::Io {
            path: shown.clone(),
            message: format!("not a valid PostgreSQL URL: {e}"),
        })?;
        if cfg.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::Io {
                path: shown,
                message: "sslmode=require, but this build connects without TLS: reach PostgreSQL on this host (loopback or a Unix socket) or through a TLS tunnel".into(),
            });
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name(format!("shep-sdu pid {}", std::process::id()));
        }
        // Bounds on a server that stops answering: connecting, unacknowledged writes (the
        // call then fails), and an idle connection's liveness.
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(10));
        }
        if cfg.get_tcp_user_timeout().is_none() {
            cfg.tcp_user_timeout(Duration::from_secs(30));
        }
        if cfg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            cfg.keepalives_idle(Duration::from_secs(30));
        }
        let mut write = Conn::connect(&cfg, &shown)?;
        take_lock(&mut write, &shown)?;
        migrate(&mut write, &shown)?;
        let read = Conn::connect(&cfg, &shown)?;
        Ok(PgStore {
            shown,
            write: Mutex::new(write),
            read: Mutex::new(read),
        })
    }

    /// The schema version this build writes.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// The database's URL, without its password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    fn w(&self) -> MutexGuard<'_, Conn> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn r(&self) -> MutexGuard<'_, Conn> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Unlock before closing, so the next runner never sees a lock whose session the
        // server has not yet ended.
        let mut w = self.w();
        if let Err(e) = w.q().one("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]) {
            tracing::debug!(error = %e, "unlocking the SDU database on close");
        }
    }
}

impl Store for PgStore {
    fn create_run(
        &self,
        pilot_id: &str,
        date: Date,
        at: Timestamp,
    ) -> Result<(RunRecord, bool, Vec<EventRecord>), StoreError> {
        let id = RunId::of(pilot_id, date);
        self.w().tx(|q| {
            if let Some(existing) = get_run(q, &id.0)? {
                return Ok(((existing, false, vec![]), false));
            }
            q.exec(
                "INSERT INTO runs (run_id, pilot_id, date, state, phase, started_at) \
                 VALUES ($1, $2, CAST($3::TEXT AS DATE), $4, $5, $6)",
                &[
                    &id.0,
                    &pilot_id,
                    &date.to_string(),
                    &RunState::Running.as_str(),
                    &DiffPhase::GbdUl.as_str(),
                    &to_nanos(at),
                ],
            )?;
            let ev = insert_run_event(q, pilot_id, &id, RunState::Running, at)?;
            let rec = get_run(q, &id.0)?.ok_or_else(|| StoreError::NoRun(id.0.clone()))?;
            Ok(((rec, true, vec![ev]), true))
        })
    }

    fn run(&self, id: &RunId) -> Result<Option<RunRecord>, StoreError> {
        get_run(&mut self.r().q(), &id.0)
    }

    fn runs_collecting(&self) -> Result<Vec<RunRecord>, StoreError> {
        runs_where(&mut self.r().q(), "phase != 'done' AND state != 'FAILED'")
    }

    fn runs_running(&self) -> Result<Vec<RunRecord>, StoreError> {
        runs_where(&mut self.r().q(), "state = 'RUNNING'")
    }

    fn set_phase(
        &self,
        run: &RunId,
        phase: DiffPhase,
        at: Timestamp,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.w().tx(|q| {
            let n = q.exec(
                "UPDATE runs SET phase = $2 WHERE run_id = $1",
                &[&run.0, &phase.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NoRun(run.0.clone()));
            }
            let ev = touch_run(q, run, at)?;
            Ok((ev.into_iter().collect(), true))
        })
    }

    fn fail_run(
        &self,
        run: &RunId,
        error: &str,
        at: Timestamp,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.w().tx(|q| {
            let rec = get_run(q, &run.0)?.ok_or_else(|| StoreError::NoRun(run.0.clone()))?;
            if rec.state == RunState::Failed {
                return Ok((vec![], false));
            }
            q.exec(
                "UPDATE runs SET state = $2, error = $3, finished_at = $4 WHERE run_id = $1",
                &[&run.0, &RunState::Failed.as_str(), &error, &to_nanos(at)],
            )?;
            let ev = insert_run_event(q, &rec.pilot_id, run, RunState::Failed, at)?;
            Ok((vec![ev], true))
        })
    }

    fn reopen_run(&self, run: &RunId, at: Timestamp) -> Result<Vec<EventRecord>, StoreError> {
        self.w().tx(|q| {
            let rec = get_run(q, &run.0)?.ok_or_else(|| StoreError::NoRun(run.0.clone()))?;
            if rec.state != RunState::Failed {
                return Ok((vec![], false));
            }
            // Back to RUNNING first; `touch_run` then derives the state from the counters.
            q.exec(
                "UPDATE runs SET state = $2, error = NULL, finished_at = NULL WHERE run_id = $1",
                &[&run.0, &RunState::Running.as_str()],
            )?;
            let mut events = vec![insert_run_event(
                q,
                &rec.pilot_id,
                run,
                RunState::Running,
                at,
            )?];
            events.extend(touch_run(q, run, at)?);
            Ok((events, true))
        })
    }

    fn commit_diff(&self, d: DiffCommit<'_>) -> Result<DiffResult, StoreError> {
        self.w().tx(|q| {
            let mut opened = None;
            let mut delta = [0; 3];
            if let Some((case, history)) = d.opened {
                let (state, attempt, deadline, outcome) = state_cols(&case.state);
                let sql = format!(
                    "INSERT INTO cases ({CASE_COLS}, class, n_permits) VALUES \
                     ($1, $2, $3, CAST($4::TEXT AS DATE), $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 1, $19, $20) \
                     ON CONFLICT (case_id) DO NOTHING"
                );
                let n = q.exec(
                    &sql,
                    &[
                        &case.id.0,
                        &case.run_id.0,
                        &case.pilot_id,
                        &case.date.to_string(),
                        &case.subject.tag(),
                        &case.subject.id(),
                        &name_json(&case.old_name)?,
                        &name_json(&case.new_name)?,
                        &case.recipient.map(|i| i.to_string()),
                        &state,
                        &attempt,
                        &deadline,
                        &outcome,
                        &i64::from(case.sms_attempts),
                        &answer_str(case.answer),
                        &i64::from(case.failures),
                        &to_nanos(case.opened_at),
                        &case.closed_at.map(to_nanos),
                        &(class_code(case.state.class()) as i16),
                        &(case.permits.len() as i64),
                    ],
                )?;
                if n == 1 {
                    opened = Some((case, history));
                    delta = delta_of(case.state.class(), 1);
                }
            }
            // The rest at once: permits, history, cursor, counters.
            let mut b = Batch::default();
            let mut steps = vec![];
            if let Some((case, history)) = opened {
                for (i, p) in case.permits.iter().enumerate() {
                    b.push(
                        "INSERT INTO case_permits (case_id, idx, number, service_code, new_number) VALUES ($1, $2, $3, $4, $5)",
                        vec![
                            bx(case.id.0.clone()),
                            bx(i as i64),
                            bx(p.number.clone()),
                            bx(p.service_code.clone()),
                            bx(p.new_number.clone()),
                        ],
                    );
                }
                steps = push_steps(&mut b, case, history);
            }
            b.push(
                UPSERT_CURSOR,
                vec![bx(d.phase.cursor_name(d.run)), bx(d.cursor.to_owned())],
            );
            let run_at = bump_run(&mut b, d.run, delta, i64::from(d.counted));
            let rows = q.batch(&b)?;
            let mut events = match opened {
                Some((case, history)) => steps_written(&rows, &steps, case, history)?,
                None => vec![],
            };
            let rec = bumped(&rows[run_at], d.run)?;
            events.extend(settle_run(q, &rec, d.at)?);
            Ok((
                DiffResult {
                    opened: opened.is_some(),
                    events,
                },
                true,
            ))
        })
    }

    fn case(&self, id: &CaseId) -> Result<Option<Versioned<Case>>, StoreError> {
        let mut c = self.r();
        let mut q = c.q();
        let sql = format!(
            "SELECT {} FROM cases WHERE case_id = $1",
            pg_cols(CASE_COLS)
        );
        let Some(row) = q.opt(&sql, &[&id.0])? else {
            return Ok(None);
        };
        let mut row = case_row(&row)?;
        load_permits(&mut q, &mut row.case)?;
        Ok(Some(Versioned {
            value: row.case,
            version: row.version,
        }))
    }

    fn commit_case(&self, cc: CaseCommit<'_>) -> Result<CommitResult, StoreError> {
        let case = cc.case;
        self.w().tx(|q| {
            // Compare-and-swap: the update applies only to the version read, and returns
            // the class the case had.
            let (state, attempt, deadline, outcome) = state_cols(&case.state);
            let new_class = class_code(case.state.class());
            let old = q.opt(
                "WITH old AS (SELECT case_id, class FROM cases WHERE case_id = $1 AND version = $12 FOR UPDATE) \
                 UPDATE cases c SET recipient_iin = $2, state = $3, attempt = $4, deadline = $5, outcome = $6, class = $7, \
                 sms_attempts = $8, answer = $9, failures = $10, closed_at = $11, version = c.version + 1 \
                 FROM old WHERE c.case_id = old.case_id RETURNING old.class",
                &[
                    &case.id.0,
                    &case.recipient.map(|i| i.to_string()),
                    &state,
                    &attempt,
                    &deadline,
                    &outcome,
                    &(new_class as i16),
                    &i64::from(case.sms_attempts),
                    &answer_str(case.answer),
                    &i64::from(case.failures),
                    &case.closed_at.map(to_nanos),
                    &(cc.expected_version as i64),
                ],
            )?;
            let Some(old) = old else {
                return Ok((CommitResult::Conflict, false));
            };
            let old_class = i64::from(col::<i16>(&old, 0)?);
            // The rest at once: permits, history, holder, cursor, counters.
            let mut b = Batch::default();
            for (i, p) in case.permits.iter().enumerate() {
                b.push(
                    "UPDATE case_permits SET new_number = $3 WHERE case_id = $1 AND idx = $2 AND new_number IS DISTINCT FROM $3",
                    vec![bx(case.id.0.clone()), bx(i as i64), bx(p.new_number.clone())],
                );
            }
            let steps = push_steps(&mut b, case, cc.history);
            if let Some(h) = cc.holder {
                b.push(
                    "INSERT INTO holders (subject_tag, subject_id, name, permits, case_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (subject_tag, subject_id) DO UPDATE SET name = excluded.name, permits = excluded.permits, \
                     case_id = excluded.case_id, updated_at = excluded.updated_at",
                    vec![
                        bx(h.subject.tag()),
                        bx(h.subject.id()),
                        bx(name_json(&h.name)?),
                        bx(permits_json(&h.permits)?),
                        bx(h.case_id.0.clone()),
                        bx(to_nanos(h.at)),
                    ],
                );
            }
            if let Some((name, value)) = cc.cursor {
                b.push(UPSERT_CURSOR, vec![bx(name.to_owned()), bx(value.to_owned())]);
            }
            let run_at = (old_class != new_class)
                .then(|| bump_run(&mut b, &case.run_id, move_delta(old_class, new_class), 0));
            let rows = q.batch(&b)?;
            let mut events = steps_written(&rows, &steps, case, cc.history)?;
            if let Some(i) = run_at {
                let rec = bumped(&rows[i], &case.run_id)?;
                events.extend(settle_run(q, &rec, cc.at)?);
            }
            Ok((CommitResult::Committed(events), true))
        })
    }

    fn history(&self, id: &CaseId) -> Result<Vec<HistoryEntry>, StoreError> {
        let sql = format!("SELECT {EVENT_COLS} FROM events WHERE case_id = $1 ORDER BY seq");
        let rows = self.r().q().all(&sql, &[&id.0])?;
        let mut out = vec![];
        for r in &rows {
            if let EventWhat::Step(h) = event_row(r)?.what {
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
        let after = after.map(|a| a.0.as_str()).unwrap_or("");
        self.r()
            .q()
            .all(
                "SELECT case_id FROM cases WHERE class = 0 AND case_id > $1 ORDER BY case_id LIMIT $2",
                &[&after, &(limit as i64)],
            )?
            .iter()
            .map(|r| col(r, 0).map(CaseId))
            .collect()
    }

    fn due_timers(&self, now: Timestamp, limit: usize) -> Result<Vec<(CaseId, u32)>, StoreError> {
        self.r()
            .q()
            .all(
                "SELECT case_id, attempt FROM cases WHERE deadline IS NOT NULL AND deadline <= $1 \
                 ORDER BY deadline, case_id LIMIT $2",
                &[&to_nanos(now), &(limit as i64)],
            )?
            .iter()
            .map(|r| {
                let a: i64 = col(r, 1)?;
                Ok((CaseId(col(r, 0)?), u32::try_from(a).unwrap_or(0)))
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
        let mut c = self.r();
        let mut q = c.q();
        let (cond, outcome) = match filter {
            CaseFilter::All => ("", None),
            CaseFilter::Open => (" AND class != 2", None),
            CaseFilter::Outcome(o) => (" AND outcome = $4", Some(o.as_str())),
        };
        let sql = format!(
            "SELECT {} FROM cases WHERE run_id = $1 AND case_id > $2{cond} ORDER BY case_id LIMIT $3",
            pg_cols(CASE_COLS)
        );
        let after = after.map(|a| a.0.as_str()).unwrap_or("");
        let limit = limit as i64;
        let rows = match &outcome {
            Some(o) => q.all(&sql, &[&run.0, &after, &limit, o])?,
            None => q.all(&sql, &[&run.0, &after, &limit])?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut case = case_row(r)?.case;
            load_permits(&mut q, &mut case)?;
            out.push(case);
        }
        Ok(out)
    }

    fn funnel(&self, run: &RunId) -> Result<FunnelCounts, StoreError> {
        let mut c = self.r();
        let mut q = c.q();
        let rec = get_run(&mut q, &run.0)?.ok_or_else(|| StoreError::NoRun(run.0.clone()))?;
        let mut f = FunnelCounts {
            diffs: rec.diffs,
            ..Default::default()
        };
        let r = q.one(
            "SELECT COUNT(*) FILTER (WHERE n_permits > 0), \
             COUNT(*) FILTER (WHERE n_permits > 0 AND recipient_iin IS NOT NULL), \
             COUNT(*) FILTER (WHERE sms_attempts >= 1), COUNT(*) FILTER (WHERE sms_attempts >= 2), \
             COUNT(*) FILTER (WHERE answer = 'agree'), COUNT(*) FILTER (WHERE answer = 'refuse'), \
             COUNT(*) FILTER (WHERE class != 2) \
             FROM cases WHERE run_id = $1",
            &[&run.0],
        )?;
        let mut sums = [0i64; 7];
        for (i, s) in sums.iter_mut().enumerate() {
            *s = col(&r, i)?;
        }
        funnel_sums(&mut f, sums);
        for r in q.all(
            "SELECT outcome, COUNT(*) FROM cases WHERE run_id = $1 AND outcome IS NOT NULL GROUP BY outcome",
            &[&run.0],
        )? {
            let o: String = col(&r, 0)?;
            funnel_outcome(&mut f, &o, col(&r, 1)?)?;
        }
        Ok(f)
    }

    fn cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.r()
            .q()
            .opt("SELECT value FROM cursors WHERE name = $1", &[&name])?
            .map(|r| col(&r, 0))
            .transpose()
    }

    fn set_cursor(&self, name: &str, value: &str) -> Result<(), StoreError> {
        set_cursor_q(&mut self.w().q(), name, value)
    }

    fn events_after(&self, seq: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let sql = format!("SELECT {EVENT_COLS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2");
        self.r()
            .q()
            .all(&sql, &[&(seq.min(i64::MAX as u64) as i64), &(limit as i64)])?
            .iter()
            .map(event_row)
            .collect()
    }

    fn holder(&self, subject: &Subject) -> Result<Option<HolderRecord>, StoreError> {
        let Some(r) = self.r().q().opt(
            "SELECT name, permits, case_id, updated_at FROM holders WHERE subject_tag = $1 AND subject_id = $2",
            &[&subject.tag(), &subject.id()],
        )?
        else {
            return Ok(None);
        };
        let name: String = col(&r, 0)?;
        let permits: String = col(&r, 1)?;
        holder_from(*subject, &name, &permits, col(&r, 2)?, col(&r, 3)?).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognised_and_passwords_never_shown() {
        assert!(is_postgres_url("postgres://u@h/db"));
        assert!(is_postgres_url("PostgreSQL://u@h/db"));
        assert!(!is_postgres_url("state/sdu.db"));
        assert!(!is_postgres_url("/var/lib/postgres/sdu.db"));
        assert_eq!(
            redact_url("postgres://sdu:s3cr3t@db.local:5432/shep"),
            "postgres://sdu@db.local:5432/shep"
        );
        assert_eq!(
            redact_url("postgresql://sdu@h/shep?password=s3cr3t&application_name=x"),
            "postgresql://sdu@h/shep?password=***&application_name=x"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn bad_urls_and_tls_requests_are_clear_errors() {
        let e = PgStore::open("postgres://sdu:pw@h:notaport/db").unwrap_err();
        assert!(
            matches!(&e, StoreError::Io { path, message } if path == "postgres://sdu@h:notaport/db" && message.contains("not a valid PostgreSQL URL")),
            "{e}"
        );
        let e = PgStore::open("postgres://sdu:pw@127.0.0.1/db?sslmode=require").unwrap_err();
        assert!(e.to_string().contains("without TLS"), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }
}
