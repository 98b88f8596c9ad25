//! Rows ↔ domain, shared by every backend: each backend reads a row's columns into the
//! plain structs below (strings and integers, as stored) and builds the domain value here,
//! so that both read the same data the same way and report damage the same way.

use jiff::Timestamp;
use shep_domain::Iin;

use super::{DiffPhase, EventRecord, EventWhat, FunnelCounts, RunRecord, RunState, StoreError};
use crate::case::{
    Answer, Case, CaseId, HistoryEntry, Outcome, RunId, State, StateClass, StepKind, Subject,
    SubjectName,
};
use crate::dates::{from_nanos, parse_date, to_nanos};

/// The event kind of a run state change.
pub(super) const RUN_STATE_KIND: &str = "RUN_STATE";

pub(super) fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// The stored class of a state: 0 active, 1 waiting, 2 closed.
pub(super) fn class_code(c: StateClass) -> i64 {
    match c {
        StateClass::Active => 0,
        StateClass::Waiting => 1,
        StateClass::Closed => 2,
    }
}

/// The counter deltas (active, waiting, closed) of a case entering (`sign` 1) or leaving
/// (`sign` -1) a class.
pub(super) fn delta_of(c: StateClass, sign: i64) -> [i64; 3] {
    let mut d = [0; 3];
    d[class_code(c) as usize] = sign;
    d
}

/// The counter deltas of a case moving from one stored class to another.
pub(super) fn move_delta(old_class: i64, new_class: i64) -> [i64; 3] {
    let mut delta = [0; 3];
    delta[old_class.clamp(0, 2) as usize] -= 1;
    delta[new_class.clamp(0, 2) as usize] += 1;
    delta
}

/// A state's columns: (state, attempt, deadline, outcome).
pub(super) fn state_cols(s: &State) -> (&'static str, i64, Option<i64>, Option<&'static str>) {
    match s {
        State::ResolveRecipient => ("resolve_recipient", 0, None, None),
        State::CheckConsent => ("check_consent", 0, None, None),
        State::CheckCriteria => ("check_criteria", 0, None, None),
        State::Notify { attempt } => ("notify", i64::from(*attempt), None, None),
        State::AwaitAnswer { attempt, deadline } => (
            "await_answer",
            i64::from(*attempt),
            Some(to_nanos(*deadline)),
            None,
        ),
        State::Reissue => ("reissue", 0, None, None),
        State::Closed(o) => ("closed", 0, None, Some(o.as_str())),
    }
}

fn state_from(
    name: &str,
    attempt: i64,
    deadline: Option<i64>,
    outcome: Option<&str>,
) -> Result<State, StoreError> {
    let attempt = u32::try_from(attempt).map_err(|_| corrupt(format!("attempt {attempt}")))?;
    Ok(match name {
        "resolve_recipient" => State::ResolveRecipient,
        "check_consent" => State::CheckConsent,
        "check_criteria" => State::CheckCriteria,
        "notify" => State::Notify { attempt },
        "await_answer" => State::AwaitAnswer {
            attempt,
            deadline: from_nanos(
                deadline.ok_or_else(|| corrupt("await_answer without a deadline"))?,
            ),
        },
        "reissue" => State::Reissue,
        "closed" => State::Closed(
            outcome
                .and_then(Outcome::parse)
                .ok_or_else(|| corrupt(format!("closed with outcome {outcome:?}")))?,
        ),
        other => return Err(corrupt(format!("unknown case state {other:?}"))),
    })
}

pub(super) fn answer_str(a: Option<Answer>) -> Option<&'static str> {
    a.map(|a| match a {
        Answer::Agree => "agree",
        Answer::Refuse => "refuse",
    })
}

pub(super) fn name_json(n: &SubjectName) -> Result<String, StoreError> {
    serde_json::to_string(n).map_err(|e| corrupt(e.to_string()))
}

/// The columns every backend selects for a case, in this order.
pub(super) const CASE_COLS: &str = "case_id, run_id, pilot_id, date, subject_tag, subject_id, old_name, new_name, recipient_iin, \
     state, attempt, deadline, outcome, sms_attempts, answer, failures, opened_at, closed_at, version";

/// The columns every backend selects for a run, in this order.
pub(super) const RUN_COLS: &str = "run_id, pilot_id, date, state, phase, started_at, finished_at, error, diffs, n_active, n_waiting, n_closed";

/// The columns every backend selects for an event, in this order.
pub(super) const EVENT_COLS: &str = "seq, at, pilot_id, run_id, case_id, kind, attempt, detail";

/// A case as stored (without its permits).
pub(super) struct CaseCols {
    pub id: String,
    pub run: String,
    pub pilot: String,
    pub date: String,
    pub tag: String,
    pub sid: String,
    pub old: String,
    pub new: String,
    pub recipient: Option<String>,
    pub state: String,
    pub attempt: i64,
    pub deadline: Option<i64>,
    pub outcome: Option<String>,
    pub sms: i64,
    pub answer: Option<String>,
    pub failures: i64,
    pub opened: i64,
    pub closed: Option<i64>,
    pub version: i64,
}

/// A case read back, with its version.
pub(super) struct CaseRow {
    pub case: Case,
    pub version: u64,
}

impl CaseCols {
    pub(super) fn build(self) -> Result<CaseRow, StoreError> {
        let id = self.id;
        let case = Case {
            date: parse_date(&self.date).map_err(corrupt)?,
            subject: Subject::parse(&self.tag, &self.sid)
                .ok_or_else(|| corrupt(format!("case {id}: subject {}:{}", self.tag, self.sid)))?,
            old_name: serde_json::from_str(&self.old)
                .map_err(|e| corrupt(format!("case {id}: old name: {e}")))?,
            new_name: serde_json::from_str(&self.new)
                .map_err(|e| corrupt(format!("case {id}: new name: {e}")))?,
            recipient: self
                .recipient
                .map(|s| {
                    Iin::parse(&s).map_err(|e| corrupt(format!("case {id}: recipient {s}: {e}")))
                })
                .transpose()?,
            permits: vec![],
            state: state_from(
                &self.state,
                self.attempt,
                self.deadline,
                self.outcome.as_deref(),
            )?,
            sms_attempts: u32::try_from(self.sms).map_err(|_| corrupt("sms_attempts"))?,
            answer: match self.answer.as_deref() {
                None => None,
                Some("agree") => Some(Answer::Agree),
                Some("refuse") => Some(Answer::Refuse),
                Some(other) => return Err(corrupt(format!("case {id}: answer {other:?}"))),
            },
            failures: u32::try_from(self.failures).map_err(|_| corrupt("failures"))?,
            opened_at: from_nanos(self.opened),
            closed_at: self.closed.map(from_nanos),
            id: CaseId(id),
            run_id: RunId(self.run),
            pilot_id: self.pilot,
        };
        Ok(CaseRow {
            case,
            version: u64::try_from(self.version).map_err(|_| corrupt("version"))?,
        })
    }
}

/// A run as stored.
pub(super) struct RunCols {
    pub id: String,
    pub pilot: String,
    pub date: String,
    pub state: String,
    pub phase: String,
    pub started: i64,
    pub finished: Option<i64>,
    pub error: Option<String>,
    pub diffs: i64,
    pub active: i64,
    pub waiting: i64,
    pub closed: i64,
}

impl RunCols {
    pub(super) fn build(self) -> Result<RunRecord, StoreError> {
        let id = self.id;
        Ok(RunRecord {
            date: parse_date(&self.date).map_err(corrupt)?,
            state: RunState::parse(&self.state)
                .ok_or_else(|| corrupt(format!("run {id}: state {:?}", self.state)))?,
            phase: DiffPhase::parse(&self.phase)
                .ok_or_else(|| corrupt(format!("run {id}: phase {:?}", self.phase)))?,
            id: RunId(id),
            pilot_id: self.pilot,
            started_at: from_nanos(self.started),
            finished_at: self.finished.map(from_nanos),
            error: self.error,
            diffs: self.diffs.max(0) as u64,
            active: self.active.max(0) as u64,
            waiting: self.waiting.max(0) as u64,
            closed: self.closed.max(0) as u64,
        })
    }
}

/// An event as stored.
pub(super) struct EventCols {
    pub seq: i64,
    pub at: i64,
    pub pilot: String,
    pub run: String,
    pub case: Option<String>,
    pub kind: String,
    pub attempt: i64,
    pub detail: String,
}

impl EventCols {
    pub(super) fn build(self) -> Result<EventRecord, StoreError> {
        let seq = self.seq;
        let what = if self.kind == RUN_STATE_KIND {
            EventWhat::RunState(
                RunState::parse(&self.detail)
                    .ok_or_else(|| corrupt(format!("event {seq}: {:?}", self.detail)))?,
            )
        } else {
            EventWhat::Step(HistoryEntry {
                kind: StepKind::parse(&self.kind)
                    .ok_or_else(|| corrupt(format!("event {seq}: kind {:?}", self.kind)))?,
                at: from_nanos(self.at),
                attempt: u32::try_from(self.attempt).map_err(|_| corrupt("attempt"))?,
                detail: self.detail,
            })
        };
        Ok(EventRecord {
            seq: seq as u64,
            at: from_nanos(self.at),
            pilot_id: self.pilot,
            run_id: RunId(self.run),
            case_id: self.case.map(CaseId),
            what,
        })
    }
}

/// The event of a case step just written at `seq`.
pub(super) fn step_event(
    seq: i64,
    pilot: &str,
    run: &RunId,
    case: &CaseId,
    h: &HistoryEntry,
) -> EventRecord {
    EventRecord {
        seq: seq as u64,
        at: h.at,
        pilot_id: pilot.to_owned(),
        run_id: run.clone(),
        case_id: Some(case.clone()),
        what: EventWhat::Step(h.clone()),
    }
}

/// The event of a run state change just written at `seq`.
pub(super) fn run_event(
    seq: i64,
    pilot: &str,
    run: &RunId,
    state: RunState,
    at: Timestamp,
) -> EventRecord {
    EventRecord {
        seq: seq as u64,
        at,
        pilot_id: pilot.to_owned(),
        run_id: run.clone(),
        case_id: None,
        what: EventWhat::RunState(state),
    }
}

/// The new state of a run whose counters changed, and its `finished_at`, when it changed.
pub(super) fn next_run_state(rec: &RunRecord, at: Timestamp) -> Option<(RunState, Option<i64>)> {
    let next = super::derive_run_state(
        rec.phase,
        rec.state == RunState::Failed,
        rec.active,
        rec.waiting,
    );
    (next != rec.state).then(|| {
        let finished = matches!(next, RunState::Done | RunState::Failed).then(|| to_nanos(at));
        (next, finished)
    })
}

/// The funnel's case sums, in the order every backend selects them: with permits,
/// recipients, SMS sent, SMS resent, answered yes, answered no, open.
pub(super) fn funnel_sums(f: &mut FunnelCounts, sums: [i64; 7]) {
    let u = |v: i64| v.max(0) as u64;
    f.with_permits = u(sums[0]);
    f.recipients = u(sums[1]);
    f.sms_sent = u(sums[2]);
    f.sms_resent = u(sums[3]);
    f.answered_yes = u(sums[4]);
    f.answered_no = u(sums[5]);
    f.open = u(sums[6]);
}

/// Counts `n` cases closed with the stored outcome `o`.
pub(super) fn funnel_outcome(f: &mut FunnelCounts, o: &str, n: i64) -> Result<(), StoreError> {
    let n = n.max(0) as u64;
    match Outcome::parse(o).ok_or_else(|| corrupt(format!("outcome {o:?}")))? {
        Outcome::Reissued => f.reissued = n,
        Outcome::Refused => {}
        Outcome::NoAnswer => f.no_answer = n,
        Outcome::NoPhone => f.no_phone = n,
        Outcome::NoConsent => f.no_consent = n,
        Outcome::ExcludedDeadOrMissing => f.excluded_dead_or_missing = n,
        Outcome::ExcludedAbroad => f.excluded_abroad = n,
        Outcome::ExcludedIncapable => f.excluded_incapable = n,
        Outcome::ExcludedImprisoned => f.excluded_imprisoned = n,
        Outcome::Failed => f.failed = n,
    }
    Ok(())
}

/// A holder record from its stored columns.
pub(super) fn holder_from(
    subject: Subject,
    name: &str,
    permits: &str,
    case_id: String,
    at: i64,
) -> Result<super::HolderRecord, StoreError> {
    Ok(super::HolderRecord {
        subject,
        name: serde_json::from_str(name).map_err(|e| corrupt(e.to_string()))?,
        permits: serde_json::from_str(permits).map_err(|e| corrupt(e.to_string()))?,
        case_id: CaseId(case_id),
        updated_at: from_nanos(at),
    })
}

/// The holder's permits as stored (JSON).
pub(super) fn permits_json(p: &[(String, String)]) -> Result<String, StoreError> {
    serde_json::to_string(p).map_err(|e| corrupt(e.to_string()))
}
