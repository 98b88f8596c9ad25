//! The audit log: every call, allowed or refused, as hash-chained records.
//!
//! **Writing.** [`AuditLog::append`] queues a record and waits until the write that holds
//! it is done. Whoever writes takes the records waiting (up to `batch_max`), numbers them,
//! chains them (each record's `hash` is SHA-256 over the previous record's hash and this
//! record's content) and appends them to the open journal file in one write (see
//! [`journal`]): with `synchronous = full` (the default) a writer thread does it and
//! follows with one fdatasync (group commit), so a written record survives a power cut;
//! with `synchronous = normal` the caller that finds the writer free does it itself. When
//! a write fails, every call of the group gets the error and the chain head does not move.
//!
//! **The archive.** Every 200 ms a maintenance thread switches the writer to a new journal
//! file, moves the records of the closed ones into the SQLite archive (one transaction,
//! fsynced) and deletes them, fills the subject index and checkpoints the archive. Opening
//! the log moves whatever journal files a stopped or killed bus left. Readers ([`verify`],
//! [`subject_accesses`], [`query`]) read the journal files, then the archive, so a record is
//! found from the moment its call was answered.
//!
//! **Records of a call.** A unary call forwarded by the bus has one `call` record
//! (allowed, final status, duration, sizes), committed once the upstream has answered and
//! before any byte of the answer reaches the caller (the bus holds the answer until then).
//! A streaming call, whose answer cannot be held, has two: a `decision` record (allowed,
//! status -1 = pending) committed before it is forwarded, and a `completion` record (final
//! status, duration, sizes; `call_seq` = the decision's `seq`) committed before its final
//! status reaches the caller. A refused call has one `decision` record carrying its status.
//!
//! **Append-only.** Triggers refuse UPDATE and DELETE in the archive; the chain makes any
//! edit made around them, or to a journal file, visible to [`verify`], which names the first
//! record altered, removed or reordered. Removing records at the *end* of the log leaves a
//! shorter valid chain: compare the head ([`VerifyReport::head_hash`]) with one kept
//! elsewhere to detect truncation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, TryLockError, Weak};

use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::config::{AuditSettings, Synchronous};

mod journal;
use journal::Journal;

/// How often the journal is moved into the archive, off the commit path.
const MAINTENANCE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("audit log {path}: {why}")]
    Other { path: PathBuf, why: String },
    #[error("the audit writer has stopped")]
    WriterStopped,
}

/// Allowed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allowed,
    Refused,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Refused => "refused",
        }
    }
    fn parse(s: &str) -> Decision {
        if s == "allowed" {
            Decision::Allowed
        } else {
            Decision::Refused
        }
    }
}

/// Which record of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written before the call is forwarded (or refused).
    Decision,
    /// Written when the call ends, before its status reaches the caller.
    Completion,
    /// The single record of a forwarded unary call: the decision and the outcome, written
    /// before any of the answer reaches the caller.
    Call,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Decision => "decision",
            Phase::Completion => "completion",
            Phase::Call => "call",
        }
    }
    fn parse(s: &str) -> Phase {
        match s {
            "completion" => Phase::Completion,
            "call" => Phase::Call,
            _ => Phase::Decision,
        }
    }
}

/// What a call contributes to a record; the writer adds the position and the hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// For a completion record: the `seq` of the call's decision record.
    pub call_seq: Option<u64>,
    /// The single record of a forwarded unary call ([`Phase::Call`]).
    pub whole: bool,
    /// From metadata `x-message-id` (or the envelope), else a generated UUIDv7.
    pub message_id: String,
    /// From metadata `x-correlation-id` (or the envelope); may be empty.
    pub correlation_id: String,
    /// The calling system (empty when the certificate named none).
    pub caller: String,
    /// `/package.Service/Method`.
    pub method: String,
    /// The data subjects, comma-separated (empty when none).
    pub subject: String,
    /// The consent token ids used, comma-separated.
    pub token_ids: String,
    pub allowed: bool,
    /// The refusal reason, `FORWARDED` for a decision to forward, `COMPLETED` for a
    /// completion record.
    pub reason: String,
    /// The gRPC status code; -1 in a decision record of a forwarded call (not known yet).
    pub grpc_status: i32,
    /// When the bus received the call, unix microseconds.
    pub received_at_us: i64,
    pub duration_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The W3C trace id of the call (from `traceparent`), for joining with logs.
    pub trace_id: String,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    pub phase: Phase,
    /// The `seq` of the call's decision record (its own `seq` for a decision record).
    pub call_seq: u64,
    pub message_id: String,
    pub correlation_id: String,
    pub caller: String,
    pub method: String,
    pub subject: String,
    pub token_ids: String,
    pub decision: Decision,
    pub reason: String,
    pub grpc_status: i32,
    pub received_at_us: i64,
    pub duration_us: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub trace_id: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// `received_at` as RFC 3339 (UTC).
    pub fn received_at_rfc3339(&self) -> String {
        jiff::Timestamp::from_microsecond(self.received_at_us)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    /// The bytes the hash covers (everything but the hashes), length-prefixed so that no
    /// two different records serialize alike.
    pub fn content(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.content_into(&mut out);
        out
    }

    fn content_into(&self, out: &mut Vec<u8>) {
        use journal::put;
        put(out, &self.seq.to_string());
        put(out, self.phase.as_str());
        put(out, &self.call_seq.to_string());
        put(out, &self.message_id);
        put(out, &self.correlation_id);
        put(out, &self.caller);
        put(out, &self.method);
        put(out, &self.subject);
        put(out, &self.token_ids);
        put(out, self.decision.as_str());
        put(out, &self.reason);
        put(out, &self.grpc_status.to_string());
        put(out, &self.received_at_us.to_string());
        put(out, &self.duration_us.to_string());
        put(out, &self.request_bytes.to_string());
        put(out, &self.response_bytes.to_string());
        put(out, &self.trace_id);
    }

    /// SHA-256 (hex) of `prev_hash` and the content.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(self.content());
        hex::encode(h.finalize())
    }

    fn from_entry(e: Entry, seq: u64, prev_hash: &str) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            phase: if e.call_seq.is_some() {
                Phase::Completion
            } else if e.whole {
                Phase::Call
            } else {
                Phase::Decision
            },
            call_seq: e.call_seq.unwrap_or(seq),
            message_id: e.message_id,
            correlation_id: e.correlation_id,
            caller: e.caller,
            method: e.method,
            subject: e.subject,
            token_ids: e.token_ids,
            decision: if e.allowed {
                Decision::Allowed
            } else {
                Decision::Refused
            },
            reason: e.reason,
            grpc_status: e.grpc_status,
            received_at_us: e.received_at_us,
            duration_us: e.duration_us,
            request_bytes: e.request_bytes,
            response_bytes: e.response_bytes,
            trace_id: e.trace_id,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// The subjects of the record, one by one.
    pub fn subjects(&self) -> impl Iterator<Item = &str> {
        subjects_of(&self.subject)
    }
}

/// The subjects in a record's `subject` column (comma-separated, empty for none).
fn subjects_of(column: &str) -> impl Iterator<Item = &str> {
    column.split(',').filter(|s| !s.is_empty())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    phase TEXT NOT NULL,
    call_seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    method TEXT NOT NULL,
    subject TEXT NOT NULL,
    token_ids TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    grpc_status INTEGER NOT NULL,
    received_at_us INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    request_bytes INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_subject (
    subject TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (subject, seq)
) WITHOUT ROWID;
-- How far audit_subject covers the records (it is filled off the commit path, see
-- index_subjects). A log written before the index was deferred is covered to its head.
CREATE TABLE IF NOT EXISTS audit_indexed (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    upto INTEGER NOT NULL
);
INSERT OR IGNORE INTO audit_indexed (id, upto) SELECT 1, COALESCE(MAX(seq), 0) FROM audit;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

const COLUMNS: &str = "seq, phase, call_seq, message_id, correlation_id, caller, method, subject, token_ids, \
    decision, reason, grpc_status, received_at_us, duration_us, request_bytes, response_bytes, trace_id, \
    prev_hash, hash";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.get::<_, i64>(0)? as u64,
        phase: Phase::parse(&row.get::<_, String>(1)?),
        call_seq: row.get::<_, i64>(2)? as u64,
        message_id: row.get(3)?,
        correlation_id: row.get(4)?,
        caller: row.get(5)?,
        method: row.get(6)?,
        subject: row.get(7)?,
        token_ids: row.get(8)?,
        decision: Decision::parse(&row.get::<_, String>(9)?),
        reason: row.get(10)?,
        grpc_status: row.get(11)?,
        received_at_us: row.get(12)?,
        duration_us: row.get::<_, i64>(13)? as u64,
        request_bytes: row.get::<_, i64>(14)? as u64,
        response_bytes: row.get::<_, i64>(15)? as u64,
        trace_id: row.get(16)?,
        prev_hash: row.get(17)?,
        hash: row.get(18)?,
    })
}

struct Job {
    entry: Entry,
    done: oneshot::Sender<Result<u64, String>>,
}

/// The handle of the log: cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    // Dropped before `closer`: the last handle's sink goes first, so the writer has
    // stopped when the closer runs.
    sink: Sink,
    depth: Arc<AtomicI64>,
    path: PathBuf,
    closer: Arc<Closer>,
}

/// Closes the log when its last handle is dropped: waits for the writer thread, moves the
/// last journal into the archive and lets the lock file go, so that the log can be opened
/// again at once.
struct Closer {
    archive: Arc<Mutex<Archive>>,
    writer: WriterRef,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        if let Some(t) = self.writer_thread.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
        let mut a = self.archive.lock().unwrap_or_else(|p| p.into_inner());
        if !a.closed {
            let _ = a.pass(&self.writer);
        }
        a.closed = true;
        a.lock = None;
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
    move |source| AuditError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

fn io_error(path: &Path, what: &str) -> impl Fn(std::io::Error) -> AuditError {
    let path = path.to_owned();
    let what = what.to_owned();
    move |e| AuditError::Other { path: path.clone(), why: format!("{what}: {e}") }
}

/// Opens (creating when missing) the archive for writing: WAL, the schema, the pragmas.
/// Only the maintenance thread writes it, so every commit is `synchronous = FULL`: a
/// journal file is deleted only once its records are durably in the archive.
fn open_archive(settings: &AuditSettings) -> Result<Connection, AuditError> {
    let path = &settings.path;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| AuditError::Other {
            path: path.clone(),
            why: format!("cannot create its directory: {e}"),
        })?;
    }
    let conn = Connection::open(path).map_err(sqlite(path))?;
    conn.busy_timeout(std::time::Duration::from_millis(settings.busy_timeout_ms))
        .map_err(sqlite(path))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(sqlite(path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(AuditError::Other {
            path: path.clone(),
            why: format!("cannot switch to WAL (journal_mode={mode})"),
        });
    }
    // Checkpoints are the maintenance thread's, after each move; a WAL grown by a burst is
    // cut back to 64 MiB when it starts again.
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;")
        .map_err(sqlite(path))?;
    conn.execute_batch(SCHEMA).map_err(sqlite(path))?;
    Ok(conn)
}

fn head(conn: &Connection, path: &Path) -> Result<(u64, String), AuditError> {
    let r: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| {
            if matches!(e, rusqlite::Error::QueryReturnedNoRows) {
                Ok(None)
            } else {
                Err(e)
            }
        })
        .map_err(sqlite(path))?;
    Ok(r.map(|(s, h)| (s as u64, h))
        .unwrap_or((0, GENESIS.to_owned())))
}

/// Runs `body` in a transaction opened with `begin` ("BEGIN", "BEGIN IMMEDIATE"), committed
/// when it succeeds and rolled back when it fails. BEGIN and COMMIT are cached statements:
/// parsed once, not at every transaction.
fn in_transaction<T>(
    conn: &Connection,
    begin: &str,
    body: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(begin)?.execute([])?;
    let done = body(conn).and_then(|out| {
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(out)
    });
    if done.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    done
}

fn insert_records(conn: &Connection, records: &[AuditRecord]) -> rusqlite::Result<()> {
    let mut ins = conn.prepare_cached(&format!(
        "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
    ))?;
    for r in records {
        ins.execute(params![
            r.seq as i64,
            r.phase.as_str(),
            r.call_seq as i64,
            r.message_id,
            r.correlation_id,
            r.caller,
            r.method,
            r.subject,
            r.token_ids,
            r.decision.as_str(),
            r.reason,
            r.grpc_status,
            r.received_at_us,
            r.duration_us as i64,
            r.request_bytes as i64,
            r.response_bytes as i64,
            r.trace_id,
            r.prev_hash,
            r.hash,
        ])?;
    }
    Ok(())
}

/// Most records one [`index_subjects`] transaction covers.
const INDEX_CHUNK: i64 = 20_000;

/// Adds the records after `audit_indexed.upto` (at most [`INDEX_CHUNK`]) to the subject
/// index, in key order, and moves the mark; returns how many records it covered.
fn index_subjects(conn: &Connection) -> rusqlite::Result<usize> {
    in_transaction(conn, "BEGIN IMMEDIATE", |conn| {
        let upto: i64 = conn.query_row("SELECT upto FROM audit_indexed WHERE id = 1", [], |r| r.get(0))?;
        let mut rows: Vec<(String, i64)> = Vec::new();
        let mut last = upto;
        let mut n = 0;
        {
            let mut q = conn.prepare_cached("SELECT seq, subject FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let mut it = q.query(params![upto, INDEX_CHUNK])?;
            while let Some(r) = it.next()? {
                let seq: i64 = r.get(0)?;
                let subject: String = r.get(1)?;
                rows.extend(subjects_of(&subject).map(|x| (x.to_owned(), seq)));
                last = seq;
                n += 1;
            }
        }
        if n == 0 {
            return Ok(0);
        }
        rows.sort_unstable();
        rows.dedup();
        let mut ins = conn.prepare_cached("INSERT OR IGNORE INTO audit_subject (subject, seq) VALUES (?1, ?2)")?;
        for (subject, seq) in &rows {
            ins.execute(params![subject, seq])?;
        }
        conn.prepare_cached("UPDATE audit_indexed SET upto = ?1 WHERE id = 1")?.execute([last])?;
        Ok(n)
    })
}

/// The writing end: the open journal file and the head of the chain.
struct Writer {
    journal: Journal,
    head: (u64, String),
    path: PathBuf,
    depth: Arc<AtomicI64>,
    /// `synchronous = full`: an fdatasync per group.
    durable: bool,
    buf: Vec<u8>,
}

impl Writer {
    /// Writes `jobs` to the journal in one write and answers each: its `seq`, or the
    /// group's error (the head of the chain then stays where it was).
    fn commit(&mut self, jobs: &mut Vec<Job>) {
        let n = jobs.len() as i64;
        let (first, mut prev) = self.head.clone();
        let mut seq = first;
        let mut done = Vec::with_capacity(jobs.len());
        self.buf.clear();
        for j in jobs.drain(..) {
            seq += 1;
            let r = AuditRecord::from_entry(j.entry, seq, &prev);
            journal::encode(&r, &mut self.buf);
            done.push(j.done);
            prev = r.hash;
        }
        let written = self.journal.append(&self.buf, self.durable);
        self.depth.fetch_sub(n, Ordering::Relaxed);
        match written {
            Ok(()) => {
                self.head = (seq, prev);
                for (d, seq) in done.into_iter().zip(first + 1..) {
                    let _ = d.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, records = n, "audit records not written; their calls are refused");
                let why = format!("cannot write the journal: {e}");
                for d in done {
                    let _ = d.send(Err(why.clone()));
                }
            }
        }
    }
}

/// Records waiting for a commit, and the writer, taken by whichever caller finds it free
/// (`synchronous = normal`: a commit is a write to the journal, short enough to run where
/// the call runs, without handing it to a thread and back).
struct Inline {
    queue: Mutex<Vec<Job>>,
    writer: Mutex<Writer>,
    batch_max: usize,
}

impl Inline {
    /// Commits queued records while there are any, unless another caller holds the
    /// writer: that one commits them. The queue is looked at again after the writer is let
    /// go, so that a record queued meanwhile is never left behind.
    fn drain(&self) {
        loop {
            let mut w = match self.writer.try_lock() {
                Ok(w) => w,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let mut jobs: Vec<Job> = {
                    let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let k = q.len().min(self.batch_max);
                    q.drain(..k).collect()
                };
                if jobs.is_empty() {
                    break;
                }
                w.commit(&mut jobs);
            }
            drop(w);
            if self.queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                return;
            }
        }
    }
}

/// Where [`AuditLog::append`] hands its records.
#[derive(Clone)]
enum Sink {
    /// `synchronous = full`: a writer thread (a commit waits for an fsync).
    Thread(mpsc::Sender<Job>),
    /// `synchronous = normal`: committed by the callers themselves, see [`Inline`].
    Inline(Arc<Inline>),
}

/// The writer as the maintenance thread reaches it, without keeping the log open.
#[derive(Clone)]
enum WriterRef {
    Inline(Weak<Inline>),
    Thread(Weak<Mutex<Writer>>),
}

impl WriterRef {
    /// Runs `f` with the writer held (no commit meanwhile); `None` once the log is closed.
    /// Records queued meanwhile (`synchronous = normal`) are committed before it returns.
    fn with<T>(&self, f: impl FnOnce(&mut Writer) -> T) -> Option<T> {
        match self {
            WriterRef::Inline(w) => {
                let inline = w.upgrade()?;
                let r = f(&mut inline.writer.lock().unwrap_or_else(|p| p.into_inner()));
                inline.drain();
                Some(r)
            }
            WriterRef::Thread(w) => {
                let writer = w.upgrade()?;
                let r = f(&mut writer.lock().unwrap_or_else(|p| p.into_inner()));
                Some(r)
            }
        }
    }
}

/// The SQLite archive, as the maintenance thread (or [`AuditLog::flush`]) writes it.
struct Archive {
    conn: Connection,
    path: PathBuf,
    durable: bool,
    /// The next journal file, created ahead so that switching to it costs a commit nothing.
    spare: Option<Journal>,
    /// The number the next journal file gets.
    next_number: u64,
    /// The last problem logged, so that one that persists is not logged every pass.
    last_problem: Option<String>,
    /// The lock file, held (one bus per log) until the log is closed.
    lock: Option<std::fs::File>,
    /// Everything moved and the lock let go: nothing more to do.
    closed: bool,
}

impl Archive {
    /// Moves the records of the journal files older than `current` (all of them when
    /// `None`) into the archive, in one transaction, then deletes the files. Records the
    /// archive already holds (a move cut short after its commit) are skipped; the others
    /// must continue its chain. A torn record at the end of a file (a write cut short by a
    /// crash: its call was never answered) is dropped.
    fn move_journals(&mut self, current: Option<u64>) -> Result<u64, AuditError> {
        let files: Vec<(u64, PathBuf)> = journal::list(&self.path)
            .map_err(io_error(&self.path, "cannot list its journal files"))?
            .into_iter()
            .filter(|(g, _)| current.is_none_or(|c| *g < c))
            .filter(|(g, _)| self.spare.as_ref().is_none_or(|s| s.number != *g))
            .collect();
        if files.is_empty() {
            return Ok(0);
        }
        let (mut seq, mut prev) = head(&self.conn, &self.path)?;
        let mut fresh = vec![];
        for (_, file) in &files {
            let bytes = std::fs::read(file).map_err(io_error(file, "cannot read"))?;
            let parsed = journal::parse(&bytes);
            if let Some((at, why)) = parsed.damage {
                return Err(AuditError::Other {
                    path: file.clone(),
                    why: format!("damaged at byte {at} (after record {}): {why}", parsed.records.last().map_or(seq, |r| r.seq)),
                });
            }
            if parsed.torn {
                tracing::warn!(file = %file.display(), "audit journal ends in a record cut short (a crash while writing it); that record's call was never answered");
            }
            for r in parsed.records {
                if r.seq <= seq {
                    continue;
                }
                if let Err((bad, why)) = check_chain(std::iter::once(&r), seq + 1, &prev) {
                    return Err(AuditError::Other {
                        path: file.clone(),
                        why: format!("record {bad} does not continue the archive's chain: {why}"),
                    });
                }
                seq = r.seq;
                prev = r.hash.clone();
                fresh.push(r);
            }
        }
        let n = fresh.len() as u64;
        if n > 0 {
            in_transaction(&self.conn, "BEGIN IMMEDIATE", |c| insert_records(c, &fresh)).map_err(sqlite(&self.path))?;
        }
        for (_, file) in &files {
            std::fs::remove_file(file).map_err(io_error(file, "cannot delete a moved journal"))?;
        }
        Ok(n)
    }

    /// One pass: switches the writer to a new journal file, moves the closed ones into the
    /// archive, fills the subject index and checkpoints the archive's WAL (complete: this
    /// connection is its only writer). `None` once the log is closed (everything moved).
    fn pass(&mut self, writer: &WriterRef) -> Option<Result<u64, AuditError>> {
        if self.spare.is_none() {
            match Journal::create(&self.path, self.next_number, self.durable) {
                Ok(j) => {
                    self.next_number += 1;
                    self.spare = Some(j);
                }
                Err(e) => return Some(Err(io_error(&self.path, "cannot create a journal file")(e))),
            }
        }
        let spare = &mut self.spare;
        let switched = writer.with(|w| {
            let mut old = None;
            if w.journal.len > 0
                && let Some(next) = spare.take()
            {
                old = Some(std::mem::replace(&mut w.journal, next));
            }
            (w.journal.number, old)
        });
        let (current, old) = switched.map_or((None, None), |(c, old)| (Some(c), old));
        // With `normal` the journal's writes were not synced: the file just closed is, now,
        // off the commit path, so that a power cut loses at most what the last pass had not
        // reached (about `MAINTENANCE_EVERY` of calls), even when the move below fails.
        if let Some(old) = old
            && !self.durable
            && let Err(e) = old.sync()
        {
            return Some(Err(io_error(&self.path, "cannot sync a closed journal file")(e)));
        }
        let moved = self.move_journals(current);
        let closed = current.is_none();
        let r = moved.and_then(|n| {
            index_subjects(&self.conn).map_err(sqlite(&self.path))?;
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(sqlite(&self.path))?;
            Ok(n)
        });
        if closed {
            self.closed = true;
            if let Some(j) = self.spare.take() {
                let _ = std::fs::remove_file(journal::file_of(&self.path, j.number));
            }
            if let Err(e) = &r {
                tracing::error!(path = %self.path.display(), error = %e, "audit journal not moved into the archive at close; the next open moves it");
            }
            return None;
        }
        Some(r)
    }

    /// Logs a failed pass once per distinct problem.
    fn report(&mut self, r: &Result<u64, AuditError>) {
        match r {
            Ok(_) => self.last_problem = None,
            Err(e) => {
                let why = e.to_string();
                if self.last_problem.as_deref() != Some(&why) {
                    tracing::error!(path = %self.path.display(), error = %why, "audit journal not moved into the archive; tried again every pass");
                    self.last_problem = Some(why);
                }
            }
        }
    }
}

/// Every `every`, off the commit path, until the log is closed: a [`Archive::pass`].
fn spawn_maintenance(archive: Arc<Mutex<Archive>>, writer: WriterRef, every: std::time::Duration) -> Result<(), AuditError> {
    let path = archive.lock().unwrap_or_else(|p| p.into_inner()).path.clone();
    std::thread::Builder::new()
        .name("shep-audit-maintenance".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let mut a = archive.lock().unwrap_or_else(|p| p.into_inner());
            if a.closed {
                return;
            }
            match a.pass(&writer) {
                None => return,
                Some(r) => a.report(&r),
            }
        })
        .map_err(|e| AuditError::Other { path, why: format!("cannot start the maintenance thread: {e}") })?;
    Ok(())
}

impl AuditLog {
    /// Opens the log: takes its lock file (one bus per log), opens the archive, moves into
    /// it what journal files a stopped bus left, opens a new journal file, and starts the
    /// writer thread (`synchronous = full`) and the maintenance thread. Fails when another
    /// process has the log open, a file cannot be opened or created, or a journal left
    /// behind is damaged (the records must not be lost or skipped: the error names the
    /// file and where, for a person to look at).
    pub fn open(settings: &AuditSettings) -> Result<AuditLog, AuditError> {
        let path = settings.path.clone();
        let conn = open_archive(settings)?;
        let lock_path = journal::lock_file(&path);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path, "cannot open the lock file"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::Other {
                    path: path.clone(),
                    why: "in use by another process (one bus per audit log)".into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&lock_path, "cannot lock")(e)),
        }
        let durable = settings.synchronous == Synchronous::Full;
        let mut archive = Archive {
            conn,
            path: path.clone(),
            durable,
            spare: None,
            next_number: 1,
            last_problem: None,
            lock: Some(lock),
            closed: false,
        };
        archive.move_journals(None)?;
        index_subjects(&archive.conn).map_err(sqlite(&path))?;
        let head = head(&archive.conn, &path)?;
        // Every journal left was moved and deleted: numbering starts again.
        let journal = Journal::create(&path, archive.next_number, durable)
            .map_err(io_error(&path, "cannot create a journal file"))?;
        archive.next_number += 1;
        let depth = Arc::new(AtomicI64::new(0));
        let writer = Writer {
            journal,
            head,
            path: path.clone(),
            depth: depth.clone(),
            durable,
            buf: Vec::with_capacity(4096),
        };
        let batch_max = settings.batch_max;
        let mut writer_thread = None;
        let (sink, writer_ref) = match settings.synchronous {
            Synchronous::Normal => {
                let inline = Arc::new(Inline {
                    queue: Mutex::new(Vec::new()),
                    writer: Mutex::new(writer),
                    batch_max,
                });
                let r = WriterRef::Inline(Arc::downgrade(&inline));
                (Sink::Inline(inline), r)
            }
            Synchronous::Full => {
                let writer = Arc::new(Mutex::new(writer));
                let r = WriterRef::Thread(Arc::downgrade(&writer));
                let (tx, mut rx) = mpsc::channel::<Job>(settings.queue_capacity);
                let t = std::thread::Builder::new()
                    .name("shep-audit-writer".into())
                    .spawn(move || {
                        let mut jobs = Vec::with_capacity(batch_max);
                        while let Some(first) = rx.blocking_recv() {
                            jobs.push(first);
                            while jobs.len() < batch_max {
                                match rx.try_recv() {
                                    Ok(j) => jobs.push(j),
                                    Err(_) => break,
                                }
                            }
                            writer.lock().unwrap_or_else(|p| p.into_inner()).commit(&mut jobs);
                        }
                    })
                    .map_err(|e| AuditError::Other { path: path.clone(), why: format!("cannot start the writer: {e}") })?;
                writer_thread = Some(t);
                (Sink::Thread(tx), r)
            }
        };
        let archive = Arc::new(Mutex::new(archive));
        spawn_maintenance(archive.clone(), writer_ref.clone(), MAINTENANCE_EVERY)?;
        let closer = Arc::new(Closer {
            archive,
            writer: writer_ref,
            writer_thread: Mutex::new(writer_thread),
        });
        Ok(AuditLog { sink, depth, path, closer })
    }

    /// Appends a record and waits until it is committed; returns its `seq`.
    pub async fn append(&self, entry: Entry) -> Result<u64, AuditError> {
        let (done, rx) = oneshot::channel();
        self.depth.fetch_add(1, Ordering::Relaxed);
        let job = Job { entry, done };
        match &self.sink {
            Sink::Thread(tx) => {
                if tx.send(job).await.is_err() {
                    self.depth.fetch_sub(1, Ordering::Relaxed);
                    return Err(AuditError::WriterStopped);
                }
            }
            Sink::Inline(inline) => {
                inline.queue.lock().unwrap_or_else(|p| p.into_inner()).push(job);
                inline.drain();
            }
        }
        match rx.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(why)) => Err(AuditError::Other {
                path: self.path.clone(),
                why,
            }),
            Err(_) => Err(AuditError::WriterStopped),
        }
    }

    /// Moves every record committed so far into the archive now (blocking; the
    /// maintenance thread does it every 200 ms anyway). Returns how many it moved.
    pub fn flush(&self) -> Result<u64, AuditError> {
        let mut a = self.closer.archive.lock().unwrap_or_else(|p| p.into_inner());
        let r = a.pass(&self.closer.writer).unwrap_or(Ok(0));
        a.report(&r);
        r
    }

    /// Records waiting for (or in) a commit.
    pub fn queue_depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The records in the journal files: committed, and not yet moved into the archive (or
/// moved after the files were listed: a reader drops those it finds in the archive too).
/// Read *before* the archive, so that a record moved meanwhile is found in one or the other.
struct Pending {
    records: Vec<AuditRecord>,
    /// Where the journal stops making records (a file and what is wrong), other than a
    /// write cut short at the end of the last file.
    damage: Option<String>,
}

fn pending(path: &Path) -> Result<Pending, AuditError> {
    let files = journal::list(path).map_err(io_error(path, "cannot list its journal files"))?;
    let read = |file: &Path| match std::fs::read(file) {
        // Moved into the archive and deleted since it was listed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        r => r.map_err(io_error(file, "cannot read")),
    };
    let mut contents = files.iter().map(|(_, f)| read(f)).collect::<Result<Vec<_>, _>>()?;
    let last_with_data = contents.iter().rposition(|b| !b.is_empty()).unwrap_or(0);
    let mut p = Pending { records: vec![], damage: None };
    for (i, (_, file)) in files.iter().enumerate() {
        let mut parsed = journal::parse(&contents[i]);
        if parsed.torn && i < last_with_data {
            // A write in progress when the file was read, finished before the writer moved
            // on to the next file: read it again. (A torn record that stays torn was never
            // acknowledged; if it was, the chain shows the gap.)
            contents[i] = read(file)?;
            parsed = journal::parse(&contents[i]);
        }
        p.records.extend(parsed.records);
        if let Some((at, why)) = parsed.damage {
            p.damage = Some(format!("journal {} damaged at byte {at}: {why}", file.display()));
            break;
        }
    }
    Ok(p)
}

impl Pending {
    /// The records after the archive's head `seq`.
    fn after(self, seq: u64) -> impl Iterator<Item = AuditRecord> {
        self.records.into_iter().filter(move |r| r.seq > seq)
    }
}

/// What a reader reads: the journal files, then the archive in one read transaction
/// (one snapshot for everything it asks of it).
fn snapshot(path: &Path) -> Result<(Pending, Connection), AuditError> {
    let journal = pending(path)?;
    let conn = open_read(path)?;
    conn.execute_batch("BEGIN").map_err(sqlite(path))?;
    Ok((journal, conn))
}

fn open_read(path: &Path) -> Result<Connection, AuditError> {
    if !path.exists() {
        return Err(AuditError::Other {
            path: path.to_owned(),
            why: "no such file".into(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite(path))?;
    Ok(conn)
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// True when every record is in place, links to the previous one and hashes to its hash.
    pub intact: bool,
    /// Records checked.
    pub records: u64,
    /// The first record found altered, removed or reordered.
    pub first_bad_seq: Option<u64>,
    /// What is wrong with it.
    pub problem: Option<String>,
    /// The last record's `seq` (0 for an empty log).
    pub head_seq: u64,
    /// The last record's hash ([`GENESIS`] for an empty log). Keep it elsewhere: a later
    /// verification whose chain does not reach it shows the log was truncated.
    pub head_hash: String,
}

impl VerifyReport {
    fn broken(records: u64, bad: u64, problem: String, head_seq: u64, head_hash: String) -> VerifyReport {
        VerifyReport {
            intact: false,
            records,
            first_bad_seq: Some(bad),
            problem: Some(problem),
            head_seq,
            head_hash,
        }
    }
}

/// Pure check of records read in `seq` order, starting at `expected` after a record whose
/// hash is `prev`: `(records checked, head seq, head hash)` or the first bad record and what
/// is wrong with it.
pub fn check_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
    mut expected: u64,
    prev: &str,
) -> Result<(u64, u64, String), (u64, String)> {
    let mut prev = prev.to_owned();
    let mut n = 0;
    for r in records {
        if r.seq != expected {
            return Err(if r.seq > expected {
                let range = if r.seq == expected + 1 {
                    format!("{expected}")
                } else {
                    format!("{expected}..{}", r.seq - 1)
                };
                (
                    expected,
                    format!(
                        "record {range} removed (the log jumps from {} to {})",
                        expected - 1,
                        r.seq
                    ),
                )
            } else {
                (
                    r.seq,
                    format!("record {} out of order (expected {expected})", r.seq),
                )
            });
        }
        if r.prev_hash != prev {
            return Err((
                r.seq,
                format!(
                    "record {} does not link to record {} (a record before it was removed, reordered or its hash altered)",
                    r.seq,
                    r.seq.saturating_sub(1)
                ),
            ));
        }
        if r.compute_hash() != r.hash {
            return Err((
                r.seq,
                format!(
                    "record {} altered: its content does not hash to its hash",
                    r.seq
                ),
            ));
        }
        prev = r.hash.clone();
        expected += 1;
        n += 1;
    }
    Ok((n, expected - 1, prev))
}

/// Checks the whole chain of the log at `path`, and that the subject index agrees with
/// the records. Names the first record altered, removed or reordered.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let (journal, conn) = snapshot(path)?;
    let s = sqlite(path);
    let upto = indexed_upto(&conn).map_err(&s)?;
    let mut stmt = conn
        .prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))
        .map_err(&s)?;
    let rows = stmt.query_map([], row_to_record).map_err(&s)?;
    let mut expected = 1u64;
    let mut prev = GENESIS.to_owned();
    let mut n = 0u64;
    let mut index: std::collections::BTreeSet<(String, u64)> = Default::default();
    for row in rows {
        let r = row.map_err(&s)?;
        if let Err((bad, problem)) = check_chain(std::iter::once(&r), expected, &prev) {
            return Ok(VerifyReport::broken(n, bad, problem, expected - 1, prev));
        }
        if r.seq as i64 <= upto {
            for sub in r.subjects() {
                index.insert((sub.to_owned(), r.seq));
            }
        }
        prev = r.hash;
        expected += 1;
        n += 1;
    }
    // The subject index is derived from the records it covers; an edit to it hides or
    // invents accesses (a row beyond what it covers is one).
    let mut stmt = conn
        .prepare("SELECT subject, seq FROM audit_subject")
        .map_err(&s)?;
    let stored: std::collections::BTreeSet<(String, u64)> = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .map_err(&s)?
        .collect::<Result<_, _>>()
        .map_err(&s)?;
    if stored != index {
        let bad = stored
            .symmetric_difference(&index)
            .map(|(_, seq)| *seq)
            .min()
            .unwrap_or(0);
        let problem = format!("the subject index disagrees with record {bad}");
        return Ok(VerifyReport::broken(n, bad, problem, expected - 1, prev));
    }
    // Then the records still in the journal, continuing the archive's chain.
    let damage = journal.damage.clone();
    for r in journal.after(expected - 1) {
        if let Err((bad, problem)) = check_chain(std::iter::once(&r), expected, &prev) {
            return Ok(VerifyReport::broken(n, bad, problem, expected - 1, prev));
        }
        prev = r.hash;
        expected += 1;
        n += 1;
    }
    if let Some(problem) = damage {
        return Ok(VerifyReport::broken(n, expected, problem, expected - 1, prev));
    }
    Ok(VerifyReport {
        intact: true,
        records: n,
        first_bad_seq: None,
        problem: None,
        head_seq: expected - 1,
        head_hash: prev,
    })
}

/// The last record the subject index covers (a log from before the index was filled off
/// the commit path has no such mark, and is covered whole).
fn indexed_upto(conn: &Connection) -> rusqlite::Result<i64> {
    match conn.query_row("SELECT upto FROM audit_indexed WHERE id = 1", [], |r| r.get(0)) {
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok(i64::MAX),
        r => r,
    }
}

/// Every access to one person's data, oldest first: one entry per call — its completion
/// record when there is one (final status, duration, sizes), else its decision record (a
/// refusal, or a call whose completion was never written).
pub fn subject_accesses(path: &Path, iin: &str) -> Result<Vec<AuditRecord>, AuditError> {
    let (journal, conn) = snapshot(path)?;
    let s = sqlite(path);
    let cols = COLUMNS
        .split(", ")
        .map(|c| format!("a.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    // The index covers the records up to `upto`; the ones after, it does not yet.
    let upto = indexed_upto(&conn).map_err(&s)?;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {cols} FROM audit_subject s JOIN audit a ON a.seq = s.seq WHERE s.subject = ?1 AND s.seq <= ?2 \
             UNION ALL \
             SELECT {cols} FROM audit a WHERE a.seq > ?2 AND instr(',' || a.subject || ',', ',' || ?1 || ',') > 0 \
             ORDER BY 1"
        ))
        .map_err(&s)?;
    let mut rows: Vec<AuditRecord> = stmt
        .query_map(params![iin, upto], row_to_record)
        .map_err(&s)?
        .collect::<Result<_, _>>()
        .map_err(&s)?;
    let (head, _) = head(&conn, path)?;
    rows.extend(journal.after(head).filter(|r| r.subjects().any(|x| x == iin)));
    Ok(one_per_call(rows))
}

/// How many records each (caller, method) left, most first: where a run's calls went.
pub fn records_by_method(path: &Path) -> Result<Vec<(String, String, u64)>, AuditError> {
    let (journal, conn) = snapshot(path)?;
    let s = sqlite(path);
    let mut stmt = conn
        .prepare("SELECT caller, method, count(*) AS n FROM audit GROUP BY caller, method")
        .map_err(&s)?;
    let mut counts: std::collections::BTreeMap<(String, String), u64> = stmt
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64)))
        .map_err(&s)?
        .collect::<Result<_, _>>()
        .map_err(&s)?;
    let (head, _) = head(&conn, path)?;
    for r in journal.after(head) {
        *counts.entry((r.caller, r.method)).or_default() += 1;
    }
    let mut rows: Vec<(String, String, u64)> = counts.into_iter().map(|((c, m), n)| (c, m, n)).collect();
    rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
    Ok(rows)
}

/// Keeps one record per call (by `call_seq`): the last one, in the order of the calls.
pub fn one_per_call(rows: Vec<AuditRecord>) -> Vec<AuditRecord> {
    let mut by_call: std::collections::BTreeMap<u64, AuditRecord> = Default::default();
    for r in rows {
        by_call.insert(r.call_seq, r);
    }
    by_call.into_values().collect()
}

/// Records after `after_seq`, in order, optionally only those of `caller`, at most `limit`
/// (0 for all).
pub fn query(
    path: &Path,
    after_seq: u64,
    caller: Option<&str>,
    limit: u32,
) -> Result<Vec<AuditRecord>, AuditError> {
    let (journal, conn) = snapshot(path)?;
    let s = sqlite(path);
    let lim: i64 = if limit == 0 { -1 } else { limit as i64 };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM audit WHERE seq > ?1 AND (?2 IS NULL OR caller = ?2) ORDER BY seq LIMIT ?3"
        ))
        .map_err(&s)?;
    let mut rows: Vec<AuditRecord> = stmt
        .query_map(params![after_seq as i64, caller, lim], row_to_record)
        .map_err(&s)?
        .collect::<Result<_, _>>()
        .map_err(&s)?;
    let (head, _) = head(&conn, path)?;
    rows.extend(
        journal
            .after(head.max(after_seq))
            .filter(|r| caller.is_none_or(|c| r.caller == c)),
    );
    if limit > 0 {
        rows.truncate(limit as usize);
    }
    Ok(rows)
}

impl std::fmt::Display for VerifyReport {
    /// One line for a person: intact with its head, or where the chain breaks.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.intact {
            write!(
                f,
                "intact: {} records, head #{} {}",
                self.records, self.head_seq, self.head_hash
            )
        } else {
            write!(
                f,
                "BROKEN at record #{}: {} ({} records checked)",
                self.first_bad_seq.unwrap_or(0),
                self.problem.as_deref().unwrap_or("unknown problem"),
                self.records
            )
        }
    }
}

impl std::fmt::Display for AuditRecord {
    /// One line: when, who, what, about whom, the decision and the status.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{:<6} {} {:<10} {:<8} {:<9} {} subject={} status={}",
            self.seq,
            self.received_at_rfc3339(),
            self.phase.as_str(),
            self.caller,
            self.decision.as_str(),
            self.method,
            if self.subject.is_empty() { "-" } else { &self.subject },
            self.grpc_status,
        )?;
        if !self.reason.is_empty() {
            write!(f, " reason={}", self.reason)?;
        }
        if !self.message_id.is_empty() {
            write!(f, " message={}", self.message_id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> AuditSettings {
        AuditSettings {
            path: dir.join("audit.sqlite"),
            busy_timeout_ms: 100,
            ..Default::default()
        }
    }

    fn entry(i: u32, subject: &str) -> Entry {
        Entry {
            message_id: format!("m{i}"),
            caller: "sdu".into(),
            method: "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson".into(),
            subject: subject.into(),
            allowed: true,
            reason: "FORWARDED".into(),
            grpc_status: -1,
            received_at_us: 1_700_000_000_000_000 + i as i64,
            ..Default::default()
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn raw(path: &Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.execute_batch("DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;")
            .unwrap();
        c
    }

    #[test]
    fn appends_chain_and_verify() {
        for sync in [Synchronous::Full, Synchronous::Normal] {
            appends_chain_and_verify_with(sync);
        }
    }

    fn appends_chain_and_verify_with(synchronous: Synchronous) {
        let dir = tempfile::tempdir().unwrap();
        let s = AuditSettings { synchronous, ..settings(dir.path()) };
        let many = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        many.block_on(async {
            let log = AuditLog::open(&s).unwrap();
            // Concurrent appends from several threads: group commit, gapless numbering.
            let mut handles = vec![];
            for i in 0..50 {
                let log = log.clone();
                handles.push(tokio::spawn(async move {
                    log.append(entry(i, "900515300018")).await.unwrap()
                }));
            }
            let mut seqs = vec![];
            for h in handles {
                seqs.push(h.await.unwrap());
            }
            seqs.sort();
            assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
            let done = Entry {
                call_seq: Some(7),
                reason: "COMPLETED".into(),
                grpc_status: 0,
                ..entry(7, "900515300018")
            };
            assert_eq!(log.append(done).await.unwrap(), 51);
            assert_eq!(log.queue_depth(), 0);
        });
        let rep = verify(&s.path).unwrap();
        assert!(rep.intact, "{rep:?}");
        assert_eq!((rep.records, rep.head_seq), (51, 51));
        // Re-opening continues the chain.
        rt().block_on(async {
            let log = AuditLog::open(&s).unwrap();
            assert_eq!(log.append(entry(99, "")).await.unwrap(), 52);
        });
        assert!(verify(&s.path).unwrap().intact);
        // One entry per call, the completion replacing the decision.
        let acc = subject_accesses(&s.path, "900515300018").unwrap();
        assert_eq!(acc.len(), 50);
        let seventh = acc.iter().find(|r| r.call_seq == 7).unwrap();
        assert_eq!(
            (seventh.phase, seventh.grpc_status, seventh.seq),
            (Phase::Completion, 0, 51)
        );
        assert!(
            subject_accesses(&s.path, "111111111111")
                .unwrap()
                .is_empty()
        );
        assert_eq!(query(&s.path, 50, None, 0).unwrap().len(), 2);
        assert_eq!(query(&s.path, 0, Some("nobody"), 0).unwrap().len(), 0);
        assert_eq!(query(&s.path, 0, Some("sdu"), 5).unwrap().len(), 5);
    }

    #[test]
    fn triggers_refuse_edits() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        rt().block_on(async {
            let log = AuditLog::open(&s).unwrap();
            log.append(entry(1, "")).await.unwrap();
        });
        let c = Connection::open(&s.path).unwrap();
        assert!(c.execute("UPDATE audit SET caller = 'x'", []).is_err());
        assert!(c.execute("DELETE FROM audit", []).is_err());
    }

    /// A log of `n` records, closed: all in the archive, its subject index filled.
    fn log_of(n: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        rt().block_on(async {
            let log = AuditLog::open(&s).unwrap();
            for i in 0..n {
                log.append(entry(i, "900515300018")).await.unwrap();
            }
        });
        let c = raw(&s.path);
        let archived: i64 = c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0)).unwrap();
        assert_eq!(archived, n as i64);
        assert_eq!(index_subjects(&c).unwrap(), 0, "indexed at close");
        assert!(journal::list(&s.path).unwrap().is_empty(), "no journal left");
        (dir, s.path)
    }

    #[test]
    fn the_subject_index_is_filled_off_the_commit_path() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let (a, b) = ("900515300018", "111111111111");
        rt().block_on(async {
            let log = AuditLog::open(&s).unwrap();
            for i in 0..6 {
                let who = if i % 2 == 0 { a.to_owned() } else { format!("{a},{b}") };
                log.append(entry(i, &who)).await.unwrap();
            }
        });
        let c = raw(&s.path);
        let count = |c: &Connection| c.query_row("SELECT count(*) FROM audit_subject", [], |r| r.get::<_, i64>(0)).unwrap();
        let seqs = |p: &Path, who: &str| subject_accesses(p, who).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>();
        // Closing the log moved the records into the archive and indexed them; undo the index.
        assert_eq!(count(&c), 9);
        c.execute("UPDATE audit_indexed SET upto = 0", []).unwrap();
        c.execute("DELETE FROM audit_subject", []).unwrap();
        // Before the index covers them, the records are found all the same.
        let before = (seqs(&s.path, a), seqs(&s.path, b));
        assert_eq!(before, (vec![1, 2, 3, 4, 5, 6], vec![2, 4, 6]));
        assert!(verify(&s.path).unwrap().intact);
        // Covered: found the same way, and verified.
        assert_eq!(index_subjects(&c).unwrap(), 6);
        assert_eq!(count(&c), 9);
        assert_eq!(index_subjects(&c).unwrap(), 0, "nothing left");
        assert_eq!((seqs(&s.path, a), seqs(&s.path, b)), before);
        assert!(verify(&s.path).unwrap().intact);
        // A row beyond what the index covers invents an access.
        c.execute("UPDATE audit_indexed SET upto = 4", []).unwrap();
        let rep = verify(&s.path).unwrap();
        assert_eq!(rep.first_bad_seq, Some(5), "{rep:?}");
        assert!(rep.problem.unwrap().contains("subject index"));
    }

    #[test]
    fn a_log_from_before_the_deferred_index_is_covered_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        rt().block_on(async {
            let log = AuditLog::open(&s).unwrap();
            for i in 0..3 {
                log.append(entry(i, "900515300018")).await.unwrap();
            }
        });
        // The log as the earlier bus left it: every record indexed as it was written, and
        // no coverage mark.
        let c = raw(&s.path);
        index_subjects(&c).unwrap();
        c.execute("DROP TABLE audit_indexed", []).unwrap();
        assert_eq!(subject_accesses(&s.path, "900515300018").unwrap().len(), 3);
        assert!(verify(&s.path).unwrap().intact);
        drop(c);
        rt().block_on(async {
            let log = AuditLog::open(&s).unwrap();
            log.append(entry(9, "900515300018")).await.unwrap();
        });
        let upto: i64 = raw(&s.path).query_row("SELECT upto FROM audit_indexed", [], |r| r.get(0)).unwrap();
        assert!(upto >= 3, "the earlier records are covered: {upto}");
        assert_eq!(subject_accesses(&s.path, "900515300018").unwrap().len(), 4);
        assert!(verify(&s.path).unwrap().intact);
    }

    #[test]
    fn records_are_counted_by_caller_and_method() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        rt().block_on(async {
            let log = AuditLog::open(&s).unwrap();
            for i in 0..5 {
                let mut e = entry(i, "900515300018");
                if i % 2 == 0 {
                    e.caller = "pep".into();
                }
                log.append(e).await.unwrap();
            }
            let mut e = entry(9, "");
            e.method = "/kz.gov.pep.v1.Portal/Notify".into();
            log.append(e).await.unwrap();
        });
        let gbdfl = "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson".to_owned();
        assert_eq!(
            records_by_method(&s.path).unwrap(),
            vec![
                ("pep".to_owned(), gbdfl.clone(), 3),
                ("sdu".to_owned(), gbdfl, 2),
                ("sdu".to_owned(), "/kz.gov.pep.v1.Portal/Notify".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn verify_names_an_altered_record() {
        let (_d, p) = log_of(10);
        raw(&p)
            .execute("UPDATE audit SET caller = 'mallory' WHERE seq = 4", [])
            .unwrap();
        let rep = verify(&p).unwrap();
        assert!(!rep.intact);
        assert_eq!(rep.first_bad_seq, Some(4));
        assert!(rep.problem.unwrap().contains("altered"));
        assert_eq!(rep.records, 3);
    }

    #[test]
    fn verify_names_a_removed_record() {
        let (_d, p) = log_of(10);
        raw(&p)
            .execute("DELETE FROM audit WHERE seq = 6", [])
            .unwrap();
        let rep = verify(&p).unwrap();
        assert_eq!(rep.first_bad_seq, Some(6));
        assert!(rep.problem.unwrap().contains("removed"), "");
    }

    #[test]
    fn verify_names_reordered_records() {
        let (_d, p) = log_of(10);
        // Swap the contents of 3 and 5 keeping the numbering: 3 no longer links to 2.
        let c = raw(&p);
        c.execute_batch(
            "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = -3;",
        )
        .unwrap();
        let rep = verify(&p).unwrap();
        assert_eq!(rep.first_bad_seq, Some(3));
    }

    #[test]
    fn verify_catches_a_rewritten_hash_and_a_forged_index() {
        let (_d, p) = log_of(5);
        let c = raw(&p);
        // Recompute record 2's own hash after editing it: record 3 no longer links.
        let mut r = query(&p, 1, None, 1).unwrap().remove(0);
        r.caller = "mallory".into();
        r.hash = r.compute_hash();
        c.execute(
            "UPDATE audit SET caller = ?1, hash = ?2 WHERE seq = 2",
            params![r.caller, r.hash],
        )
        .unwrap();
        let rep = verify(&p).unwrap();
        assert_eq!(rep.first_bad_seq, Some(3));
        assert!(rep.problem.unwrap().contains("does not link"));

        let (_d2, p2) = log_of(5);
        raw(&p2)
            .execute("DELETE FROM audit_subject WHERE seq = 4", [])
            .unwrap();
        let rep = verify(&p2).unwrap();
        assert_eq!(rep.first_bad_seq, Some(4));
        assert!(rep.problem.unwrap().contains("subject index"));
    }


    /// Records committed by the callers themselves, while others queue theirs: each gets its
    /// own `seq`, none is left waiting, and the subject index is filled and the WAL
    /// checkpointed off the commit path.
    #[test]
    fn inline_commits_leave_no_record_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = AuditSettings { synchronous: Synchronous::Normal, batch_max: 2, ..settings(dir.path()) };
        let many = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let log = AuditLog::open(&s).unwrap();
        many.block_on(async {
            let mut handles = vec![];
            for t in 0..40u32 {
                let log = log.clone();
                handles.push(tokio::spawn(async move {
                    let mut seqs = vec![];
                    for i in 0..20 {
                        let e = entry(t * 1000 + i, "900515300018");
                        let seq = tokio::time::timeout(std::time::Duration::from_secs(10), log.append(e))
                            .await
                            .expect("committed, not left in the queue")
                            .unwrap();
                        seqs.push(seq);
                    }
                    seqs
                }));
            }
            let mut all = vec![];
            for h in handles {
                let seqs = h.await.unwrap();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "each caller's records in its order");
                all.extend(seqs);
            }
            all.sort();
            assert_eq!(all, (1..=800).collect::<Vec<_>>());
            assert_eq!(log.queue_depth(), 0);
        });
        let rep = verify(&s.path).unwrap();
        assert!(rep.intact && rep.records == 800, "{rep:?}");
        // The checkpointer has copied the WAL into the database meanwhile.
        std::thread::sleep(MAINTENANCE_EVERY * 3);
        let c = raw(&s.path);
        let (log_frames, checkpointed): (i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(1)?, r.get(2)?)))
            .unwrap();
        assert_eq!(log_frames, checkpointed, "nothing left to checkpoint");
        let upto: i64 = c.query_row("SELECT upto FROM audit_indexed", [], |r| r.get(0)).unwrap();
        assert_eq!(upto, 800, "the subject index covers every record");
        drop(log);
    }

    /// Under commits that never pause, the journal files are moved into the archive and
    /// deleted pass after pass, and the archive's WAL is written from its start again after
    /// each (a WAL checkpointed while commits race it never restarts and grows forever).
    #[test]
    fn journals_are_moved_and_the_wal_reused_under_constant_commits() {
        for synchronous in [Synchronous::Full, Synchronous::Normal] {
            let dir = tempfile::tempdir().unwrap();
            let s = AuditSettings { synchronous, ..settings(dir.path()) };
            let wal = s.path.with_extension("sqlite-wal");
            let log = AuditLog::open(&s).unwrap();
            let mut sizes = vec![];
            let mut i = 0;
            rt().block_on(async {
                for _ in 0..8 {
                    let until = std::time::Instant::now() + MAINTENANCE_EVERY * 2;
                    while std::time::Instant::now() < until {
                        i += 1;
                        log.append(entry(i, "900515300018")).await.unwrap();
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    sizes.push(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
                    let files = journal::list(&s.path).unwrap().len();
                    assert!(files <= 3, "{synchronous:?}: {files} journal files: they are not moved");
                }
            });
            assert!(sizes[7] < sizes[2] * 2, "{synchronous:?}: the WAL grew with every round: {sizes:?}");
            drop(log);
            let rep = verify(&s.path).unwrap();
            assert!(rep.intact && rep.records == i as u64, "{rep:?}");
        }
    }

    /// Another process holding the archive's write lock delays the move into the archive,
    /// not the commits: the calls go on, and the records move once the lock is let go.
    #[test]
    fn a_locked_archive_delays_the_move_not_the_commits() {
        for synchronous in [Synchronous::Full, Synchronous::Normal] {
            let dir = tempfile::tempdir().unwrap();
            let s = AuditSettings { synchronous, ..settings(dir.path()) };
            rt().block_on(async {
                let log = AuditLog::open(&s).unwrap();
                assert_eq!(log.append(entry(1, "")).await.unwrap(), 1);
                let other = Connection::open(&s.path).unwrap();
                other.execute_batch("BEGIN IMMEDIATE;").unwrap();
                assert_eq!(log.append(entry(2, "")).await.unwrap(), 2);
                let e = log.flush().unwrap_err();
                assert!(e.to_string().contains("locked"), "{e}");
                assert_eq!(verify(&s.path).unwrap().records, 2, "found in the journal");
                other.execute_batch("ROLLBACK;").unwrap();
                assert_eq!(log.append(entry(3, "")).await.unwrap(), 3);
                log.flush().unwrap();
                let archived: i64 = raw(&s.path).query_row("SELECT count(*) FROM audit", [], |r| r.get(0)).unwrap();
                assert_eq!(archived, 3);
            });
            assert!(verify(&s.path).unwrap().intact);
        }
    }

    /// Journal files as a killed bus leaves them: `n` records after the archive's head in
    /// two files, the second ending in a record cut short; `alter` changes one record's
    /// content after it was hashed.
    fn leave_journal(path: &Path, n: u64, alter: Option<u64>) {
        let head = verify(path).unwrap();
        let (mut seq, mut prev) = (head.head_seq, head.head_hash);
        let mut files = [vec![], vec![]];
        for k in 0..n {
            seq += 1;
            let mut r = AuditRecord::from_entry(entry(100 + k as u32, "900515300018"), seq, &prev);
            prev = r.hash.clone();
            if alter == Some(seq) {
                r.caller = "mallory".into();
            }
            journal::encode(&r, &mut files[(2 * k / n) as usize]);
        }
        let mut torn = vec![];
        journal::encode(&AuditRecord::from_entry(entry(999, ""), seq + 1, &prev), &mut torn);
        files[1].extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(journal::file_of(path, 7), &files[0]).unwrap();
        std::fs::write(journal::file_of(path, 8), &files[1]).unwrap();
    }

    #[test]
    fn records_a_killed_bus_left_in_its_journal_are_read_and_moved_at_open() {
        let (_dir, p) = log_of(3);
        leave_journal(&p, 4, None);
        // Readers see them before any bus moves them; the torn record is no record.
        let rep = verify(&p).unwrap();
        assert!(rep.intact && rep.records == 7 && rep.head_seq == 7, "{rep:?}");
        assert_eq!(subject_accesses(&p, "900515300018").unwrap().len(), 7);
        assert_eq!(query(&p, 5, None, 0).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![6, 7]);
        assert_eq!(query(&p, 0, None, 4).unwrap().len(), 4);
        assert_eq!(records_by_method(&p).unwrap()[0].2, 7);
        // The next bus moves them into the archive and goes on after them.
        let s = settings(p.parent().unwrap());
        rt().block_on(async {
            let log = AuditLog::open(&s).unwrap();
            assert_eq!(log.append(entry(50, "")).await.unwrap(), 8);
        });
        let archived: i64 = raw(&p).query_row("SELECT count(*) FROM audit", [], |r| r.get(0)).unwrap();
        assert_eq!(archived, 8);
        assert!(journal::list(&p).unwrap().is_empty());
        let rep = verify(&p).unwrap();
        assert!(rep.intact && rep.records == 8, "{rep:?}");
    }

    #[test]
    fn an_altered_journal_record_is_named_and_the_log_does_not_open() {
        let (_dir, p) = log_of(3);
        leave_journal(&p, 4, Some(5));
        let rep = verify(&p).unwrap();
        assert!(!rep.intact);
        assert_eq!(rep.first_bad_seq, Some(5), "{rep:?}");
        let e = AuditLog::open(&settings(p.parent().unwrap())).unwrap_err().to_string();
        assert!(e.contains("journal.0000000007") && e.contains("record 5 altered"), "{e}");
        // Nothing was moved or deleted: the evidence stays for a person to look at.
        assert_eq!(journal::list(&p).unwrap().len(), 2);
    }

    #[test]
    fn one_bus_per_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path());
        let first = AuditLog::open(&s).unwrap();
        let e = AuditLog::open(&s).unwrap_err().to_string();
        assert!(e.contains("in use by another process"), "{e}");
        drop(first);
        rt().block_on(async {
            let again = AuditLog::open(&s).unwrap();
            assert_eq!(again.append(entry(1, "")).await.unwrap(), 1);
        });
    }

    #[test]
    fn pure_chain_check() {
        let mut prev = GENESIS.to_owned();
        let mut recs = vec![];
        for i in 1..=3u64 {
            let r = AuditRecord::from_entry(entry(i as u32, ""), i, &prev);
            prev = r.hash.clone();
            recs.push(r);
        }
        assert_eq!(check_chain(&recs, 1, GENESIS).unwrap().0, 3);
        let mut gap = recs.clone();
        gap.remove(1);
        assert_eq!(check_chain(&gap, 1, GENESIS).unwrap_err().0, 2);
        let mut alt = recs.clone();
        alt[2].reason = "X".into();
        assert_eq!(check_chain(&alt, 1, GENESIS).unwrap_err().0, 3);
        // Content is unambiguous: moving a character between fields changes the hash.
        let mut a = recs[0].clone();
        a.caller = "ab".into();
        a.method = "c".into();
        let mut b = recs[0].clone();
        b.caller = "a".into();
        b.method = "bc".into();
        assert_ne!(a.compute_hash(), b.compute_hash());
    }
}
