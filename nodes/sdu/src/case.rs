//! The case: one holder whose name changed and who holds permits of a pilot's services, and
//! what became of the offer to re-issue them. PURE: no I/O, no clock, no randomness.
//!
//! [`step`] takes a case, an [`Event`] (a fact the runner learned: a call's answer, an SMS
//! answer, a timer, or `Resume`), the time, the pilot and the calendar, and returns the new
//! case and the [`Effect`]s: history entries (persisted with the new case in one
//! transaction), holder data to record, and at most one call to make. The runner commits the
//! case, then performs the call and feeds its answer back as the next event.
//!
//! The order of the process is fixed (DOMAIN.md): recipient → consent (KDP) → the four
//! criteria (GBD FL, ZAGS) in the order missing-or-dead, abroad, incapable, imprisoned →
//! SMS → answer or wait → re-send once → "1" re-issues every permit, "2" refuses, silence
//! twice ends without an answer.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shep_domain::{Bin, Iin};

use crate::calendar::Calendar;
use crate::pilot::{Pilot, SubjectKind};

/// KDP scope for GBD FL `GetPerson`.
pub const SCOPE_PERSON: &str = "gbdfl.person.read";
/// KDP scope for ZAGS `GetPersonActs`.
pub const SCOPE_ACTS: &str = "zags.acts.read";
/// KDP scope for PEP `Notify`.
pub const SCOPE_NOTIFY: &str = "pep.notify";
/// KDP scope for e-license `ListPermits` of an individual holder.
pub const SCOPE_PERMITS_READ: &str = "elicense.permits.read";
/// KDP scope for e-license `ReissuePermit` of an individual holder.
pub const SCOPE_REISSUE: &str = "elicense.permits.reissue";

/// The consents a recipient must have given before any of their data is read: every
/// personal-data call the rest of the case makes about them.
pub fn consent_scopes(kind: SubjectKind) -> Vec<String> {
    let mut s = vec![SCOPE_PERSON, SCOPE_ACTS, SCOPE_NOTIFY];
    if kind == SubjectKind::Individual {
        s.push(SCOPE_REISSUE);
    }
    s.into_iter().map(str::to_owned).collect()
}

/// A run's id: one per pilot and date ("sez-000:2026-02-03").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// The run of `pilot` for `date`.
    pub fn of(pilot: &str, date: Date) -> RunId {
        RunId(format!("{pilot}:{date}"))
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A case's id: one per run and subject ("sez-000:2026-02-03:ul:123456789012"). It is also
/// the idempotency key of the case's PEP notifications (with the attempt).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CaseId(pub String);

impl CaseId {
    /// The case of `subject` in `run`.
    pub fn of(run: &RunId, subject: &Subject) -> CaseId {
        CaseId(format!("{run}:{}:{}", subject.tag(), subject.id()))
    }
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The idempotency key of the re-issue of one permit in one case.
pub fn reissue_key(case: &CaseId, permit_number: &str) -> String {
    let mut h = Sha256::new();
    h.update(case.0.as_bytes());
    h.update([0]);
    h.update(permit_number.as_bytes());
    format!("sdu-reissue-{}", &hex::encode(h.finalize())[..32])
}

/// Whose name changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An organization, by BIN.
    Organization(Bin),
    /// An individual, by IIN.
    Individual(Iin),
}

impl Subject {
    /// Organization or individual.
    pub fn kind(&self) -> SubjectKind {
        match self {
            Subject::Organization(_) => SubjectKind::Organization,
            Subject::Individual(_) => SubjectKind::Individual,
        }
    }

    /// The BIN or IIN.
    pub fn id(&self) -> String {
        match self {
            Subject::Organization(b) => b.to_string(),
            Subject::Individual(i) => i.to_string(),
        }
    }

    /// "ul" (legal entity) or "fl" (individual).
    pub fn tag(&self) -> &'static str {
        match self {
            Subject::Organization(_) => "ul",
            Subject::Individual(_) => "fl",
        }
    }

    /// Parses a [`Subject::tag`] and an id back.
    pub fn parse(tag: &str, id: &str) -> Option<Subject> {
        match tag {
            "ul" => Bin::parse(id).ok().map(Subject::Organization),
            "fl" => Iin::parse(id).ok().map(Subject::Individual),
            _ => None,
        }
    }
}

/// A name as SDU records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SubjectName {
    /// An organization's name in Russian and Kazakh.
    Organization { ru: String, kk: String },
    /// A person's full name.
    Person {
        surname: String,
        name: String,
        patronymic: String,
    },
}

impl SubjectName {
    /// The name as written in an SMS or a report: the organization's name in the language
    /// asked for (the other when empty), or "Surname Name Patronymic".
    pub fn display(&self, kazakh: bool) -> String {
        match self {
            SubjectName::Organization { ru, kk } => {
                let (first, other) = if kazakh { (kk, ru) } else { (ru, kk) };
                if first.trim().is_empty() {
                    other.clone()
                } else {
                    first.clone()
                }
            }
            SubjectName::Person {
                surname,
                name,
                patronymic,
            } => [surname, name, patronymic]
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// Answered "1"; every permit re-issued.
    Reissued,
    /// Answered "2".
    Refused,
    /// No answer to the SMS nor to its re-sends.
    NoAnswer,
    /// The recipient has no phone in BMG.
    NoPhone,
    /// KDP refused a token.
    NoConsent,
    /// Dead, declared dead or declared missing.
    ExcludedDeadOrMissing,
    /// Lives permanently abroad.
    ExcludedAbroad,
    /// Legally incapable.
    ExcludedIncapable,
    /// In prison.
    ExcludedImprisoned,
    /// A step kept failing after bounded retries, or could not be done.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order of the funnel.
    pub const ALL: [Outcome; 10] = [
        Outcome::ExcludedDeadOrMissing,
        Outcome::ExcludedAbroad,
        Outcome::ExcludedIncapable,
        Outcome::ExcludedImprisoned,
        Outcome::NoConsent,
        Outcome::NoPhone,
        Outcome::Refused,
        Outcome::NoAnswer,
        Outcome::Reissued,
        Outcome::Failed,
    ];

    /// The stable name ("NO_ANSWER").
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Reissued => "REISSUED",
            Outcome::Refused => "REFUSED",
            Outcome::NoAnswer => "NO_ANSWER",
            Outcome::NoPhone => "NO_PHONE",
            Outcome::NoConsent => "NO_CONSENT",
            Outcome::ExcludedDeadOrMissing => "EXCLUDED_DEAD_OR_MISSING",
            Outcome::ExcludedAbroad => "EXCLUDED_ABROAD",
            Outcome::ExcludedIncapable => "EXCLUDED_INCAPABLE",
            Outcome::ExcludedImprisoned => "EXCLUDED_IMPRISONED",
            Outcome::Failed => "FAILED",
        }
    }

    /// The inverse of [`Outcome::as_str`].
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The four exclusion criteria, in the order the orders list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Criterion {
    /// Declared missing, declared dead, or dead.
    DeadOrMissing,
    /// Lives permanently in another country.
    Abroad,
    /// Declared legally incapable.
    Incapable,
    /// In prison.
    Imprisoned,
}

impl Criterion {
    /// The outcome of a case excluded by this criterion.
    pub fn outcome(self) -> Outcome {
        match self {
            Criterion::DeadOrMissing => Outcome::ExcludedDeadOrMissing,
            Criterion::Abroad => Outcome::ExcludedAbroad,
            Criterion::Incapable => Outcome::ExcludedIncapable,
            Criterion::Imprisoned => Outcome::ExcludedImprisoned,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Criterion::DeadOrMissing => "missing or dead",
            Criterion::Abroad => "permanent residence abroad",
            Criterion::Incapable => "legally incapable",
            Criterion::Imprisoned => "in prison",
        }
    }
}

/// What GBD FL and ZAGS say about a recipient, reduced to the criteria.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonFacts {
    /// GBD FL: life status DEAD.
    pub dead: bool,
    /// GBD FL: declared missing or declared dead by a court.
    pub declared_missing_or_dead: bool,
    /// ZAGS: a death act names the person.
    pub death_act: bool,
    /// GBD FL: permanent residence abroad.
    pub abroad: bool,
    /// GBD FL: declared incapable by a court.
    pub incapable: bool,
    /// GBD FL: in prison now.
    pub imprisoned: bool,
}

impl PersonFacts {
    /// The first criterion that excludes the person, in the fixed order.
    pub fn first_criterion(&self) -> Option<Criterion> {
        if self.dead || self.declared_missing_or_dead || self.death_act {
            Some(Criterion::DeadOrMissing)
        } else if self.abroad {
            Some(Criterion::Abroad)
        } else if self.incapable {
            Some(Criterion::Incapable)
        } else if self.imprisoned {
            Some(Criterion::Imprisoned)
        } else {
            None
        }
    }
}

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Find the organization's first head (GBD UL).
    ResolveRecipient,
    /// Obtain the recipient's KDP tokens.
    CheckConsent,
    /// Check the recipient against the four criteria (GBD FL, ZAGS).
    CheckCriteria,
    /// Have PEP send SMS number `attempt`.
    Notify { attempt: u32 },
    /// Wait for the answer to SMS number `attempt` until `deadline`.
    AwaitAnswer { attempt: u32, deadline: Timestamp },
    /// Re-issue the permits not re-issued yet, one by one.
    Reissue,
    /// Ended.
    Closed(Outcome),
}

/// Which of three classes a state is in: the runner drives active cases, timers and
/// answers move waiting ones, closed ones never change (their history may still grow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateClass {
    /// A call is due.
    Active,
    /// Waiting for an answer or its deadline.
    Waiting,
    /// Ended.
    Closed,
}

impl State {
    /// The class of the state.
    pub fn class(&self) -> StateClass {
        match self {
            State::AwaitAnswer { .. } => StateClass::Waiting,
            State::Closed(_) => StateClass::Closed,
            _ => StateClass::Active,
        }
    }

    /// The outcome, or `None` while open.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            State::Closed(o) => Some(*o),
            _ => None,
        }
    }
}

/// The recipient's answer, once taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// "1".
    Agree,
    /// "2".
    Refuse,
}

/// A permit offered for re-issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermitItem {
    /// Its number.
    pub number: String,
    /// Its service code.
    pub service_code: String,
    /// The number of the permit that replaced it, once re-issued.
    pub new_number: Option<String>,
}

/// The kind of a history entry (as in the contract's `CaseStepKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepKind {
    Opened,
    RecipientResolved,
    ConsentObtained,
    ConsentRefused,
    ChecksPassed,
    Excluded,
    SmsSent,
    NoPhone,
    AnswerReceived,
    AnswerTimeout,
    PermitReissued,
    CallFailed,
    Closed,
}

impl StepKind {
    const ALL: [StepKind; 13] = [
        StepKind::Opened,
        StepKind::RecipientResolved,
        StepKind::ConsentObtained,
        StepKind::ConsentRefused,
        StepKind::ChecksPassed,
        StepKind::Excluded,
        StepKind::SmsSent,
        StepKind::NoPhone,
        StepKind::AnswerReceived,
        StepKind::AnswerTimeout,
        StepKind::PermitReissued,
        StepKind::CallFailed,
        StepKind::Closed,
    ];

    /// The stable name ("SMS_SENT").
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Opened => "OPENED",
            StepKind::RecipientResolved => "RECIPIENT_RESOLVED",
            StepKind::ConsentObtained => "CONSENT_OBTAINED",
            StepKind::ConsentRefused => "CONSENT_REFUSED",
            StepKind::ChecksPassed => "CHECKS_PASSED",
            StepKind::Excluded => "EXCLUDED",
            StepKind::SmsSent => "SMS_SENT",
            StepKind::NoPhone => "NO_PHONE",
            StepKind::AnswerReceived => "ANSWER_RECEIVED",
            StepKind::AnswerTimeout => "ANSWER_TIMEOUT",
            StepKind::PermitReissued => "PERMIT_REISSUED",
            StepKind::CallFailed => "CALL_FAILED",
            StepKind::Closed => "CLOSED",
        }
    }

    /// The inverse of [`StepKind::as_str`].
    pub fn parse(s: &str) -> Option<StepKind> {
        StepKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One entry of a case's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// What happened.
    pub kind: StepKind,
    /// When (injected clock).
    pub at: Timestamp,
    /// The SMS attempt it belongs to; 0 for none.
    pub attempt: u32,
    /// Human-readable details.
    pub detail: String,
}

/// A case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Its id.
    pub id: CaseId,
    /// The run.
    pub run_id: RunId,
    /// The pilot.
    pub pilot_id: String,
    /// The date of the run.
    pub date: Date,
    /// Whose name changed.
    pub subject: Subject,
    /// The name before.
    pub old_name: SubjectName,
    /// The name after.
    pub new_name: SubjectName,
    /// Who is asked, once known.
    pub recipient: Option<Iin>,
    /// The permits offered.
    pub permits: Vec<PermitItem>,
    /// Where it stands.
    pub state: State,
    /// SMS sent so far (0, 1, 2...).
    pub sms_attempts: u32,
    /// The answer taken, if any.
    pub answer: Option<Answer>,
    /// Consecutive failures of the current call.
    pub failures: u32,
    /// When it was opened.
    pub opened_at: Timestamp,
    /// When it ended.
    pub closed_at: Option<Timestamp>,
}

impl Case {
    /// The deadline of the current wait, if waiting.
    pub fn deadline(&self) -> Option<Timestamp> {
        match self.state {
            State::AwaitAnswer { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// The permit numbers offered.
    pub fn permit_numbers(&self) -> Vec<String> {
        self.permits.iter().map(|p| p.number.clone()).collect()
    }
}

/// A call to another system, named for the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// GBD UL `GetOrganization`.
    GetOrganization,
    /// KDP `IssueToken`.
    IssueToken,
    /// GBD FL `GetPerson` and ZAGS `GetPersonActs`.
    CheckPerson,
    /// PEP `Notify`.
    Notify,
    /// e-license `ReissuePermit`.
    ReissuePermit,
}

impl CallKind {
    /// The method(s), for the history.
    pub fn method(&self) -> &'static str {
        match self {
            CallKind::GetOrganization => "gbdul.GetOrganization",
            CallKind::IssueToken => "kdp.IssueToken",
            CallKind::CheckPerson => "gbdfl.GetPerson/zags.GetPersonActs",
            CallKind::Notify => "pep.Notify",
            CallKind::ReissuePermit => "elicense.ReissuePermit",
        }
    }
}

/// A call the runner is to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// GBD UL `GetOrganization`: the first head of the organization.
    ResolveRecipient { bin: Bin },
    /// KDP `IssueToken` for each scope: the recipient's consent.
    CheckConsent { iin: Iin, scopes: Vec<String> },
    /// GBD FL `GetPerson` and ZAGS `GetPersonActs`: the four criteria.
    CheckPerson { iin: Iin },
    /// PEP `Notify`: SMS number `attempt` (idempotent per case and attempt).
    Notify { attempt: u32 },
    /// e-license `ReissuePermit` of permit `index` (idempotent by `idempotency_key`).
    Reissue {
        index: usize,
        idempotency_key: String,
    },
}

impl Call {
    /// A look-up: it only reads (GBD UL, KDP, GBD FL, ZAGS), so repeating it changes
    /// nothing anywhere. The runner may chain look-ups and commit their steps together with
    /// the next step that matters; a crash in between only repeats the look-ups.
    pub fn is_lookup(&self) -> bool {
        matches!(
            self,
            Call::ResolveRecipient { .. } | Call::CheckConsent { .. } | Call::CheckPerson { .. }
        )
    }

    /// What kind of call.
    pub fn kind(&self) -> CallKind {
        match self {
            Call::ResolveRecipient { .. } => CallKind::GetOrganization,
            Call::CheckConsent { .. } => CallKind::IssueToken,
            Call::CheckPerson { .. } => CallKind::CheckPerson,
            Call::Notify { .. } => CallKind::Notify,
            Call::Reissue { .. } => CallKind::ReissuePermit,
        }
    }
}

/// The updated holder data SDU records after a re-issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderUpdate {
    /// The holder.
    pub subject: Subject,
    /// The new name.
    pub name: SubjectName,
    /// (old, new) permit numbers.
    pub permits: Vec<(String, String)>,
    /// The case that updated it.
    pub case_id: CaseId,
    /// When.
    pub at: Timestamp,
}

/// What the runner is to do after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Append to the case's history (in the same transaction as the new case).
    History(HistoryEntry),
    /// Record the holder's updated data (in the same transaction as the new case).
    SaveHolder(HolderUpdate),
    /// Make this call now.
    Call(Call),
    /// Make this call after `delay` (a retry with backoff).
    CallAfter { delay: Duration, call: Call },
}

/// A fact the runner learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Nothing new: (re)start the current state's call. Used when a case is first driven
    /// and after a restart.
    Resume,
    /// GBD UL named the first head.
    RecipientResolved { iin: Iin },
    /// KDP issued a token for every scope.
    ConsentObtained { scopes: Vec<String> },
    /// KDP refused a token (at any step that needed one).
    ConsentRefused { scope: String },
    /// GBD FL and ZAGS answered.
    PersonChecked(PersonFacts),
    /// PEP sent SMS number `attempt`.
    Notified {
        attempt: u32,
        sms_id: String,
        sent_at: Timestamp,
    },
    /// PEP found no phone.
    NoPhone { attempt: u32 },
    /// An answer to SMS number `attempt` (PEP's `sms_id`) arrived.
    Answer {
        attempt: u32,
        sms_id: String,
        text: String,
        received_at: Timestamp,
    },
    /// The wait for the answer to SMS number `attempt` may have run out (checked against `now`).
    Timeout { attempt: u32 },
    /// Permit `index` was re-issued as `new_number`.
    Reissued { index: usize, new_number: String },
    /// A call failed; `retryable` when trying again may help.
    CallFailed {
        call: CallKind,
        error: String,
        retryable: bool,
    },
}

/// Bounded retries with exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of one call before the case fails (at least 1).
    pub max_attempts: u32,
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before try `failures + 1`.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// What a case is opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    /// The run.
    pub run_id: RunId,
    /// The pilot.
    pub pilot_id: String,
    /// The date of the run.
    pub date: Date,
    /// Whose name changed.
    pub subject: Subject,
    /// The name before.
    pub old_name: SubjectName,
    /// The name after.
    pub new_name: SubjectName,
    /// The permits of the pilot's services the subject holds (active ones).
    pub permits: Vec<PermitItem>,
    /// An organization's first head as GBD UL gave it with the name change; without it the
    /// case asks GBD UL for the head.
    pub head: Option<Iin>,
}

/// Why an individual's case ends as soon as it is opened: the permit look-up itself needs
/// the person's consent, or kept failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupFailure {
    /// KDP refused the token for the look-up.
    ConsentRefused { scope: String },
    /// The look-up kept failing.
    Failed { error: String },
}

fn entry(kind: StepKind, at: Timestamp, attempt: u32, detail: impl Into<String>) -> Effect {
    Effect::History(HistoryEntry {
        kind,
        at,
        attempt,
        detail: detail.into(),
    })
}

/// Opens a case: returns it and its first history entries. An organization whose change
/// came with its first head has it as recipient, else starts by asking GBD UL for it; an
/// individual is the recipient. Either way with a recipient the case starts with consent.
pub fn open(o: Opening, now: Timestamp) -> (Case, Vec<Effect>) {
    let id = CaseId::of(&o.run_id, &o.subject);
    let permits = o
        .permits
        .iter()
        .map(|p| format!("{} ({})", p.number, p.service_code))
        .collect::<Vec<_>>();
    let mut fx = vec![entry(
        StepKind::Opened,
        now,
        0,
        format!("permits: {}", permits.join(", ")),
    )];
    let (recipient, state) = match o.subject {
        Subject::Organization(_) => match o.head {
            None => (None, State::ResolveRecipient),
            Some(iin) => {
                fx.push(entry(
                    StepKind::RecipientResolved,
                    now,
                    0,
                    format!("{iin} (first head, with the GBD UL change)"),
                ));
                (Some(iin), State::CheckConsent)
            }
        },
        Subject::Individual(iin) => {
            fx.push(entry(
                StepKind::RecipientResolved,
                now,
                0,
                format!("{iin} (the holder)"),
            ));
            (Some(iin), State::CheckConsent)
        }
    };
    let case = Case {
        id,
        run_id: o.run_id,
        pilot_id: o.pilot_id,
        date: o.date,
        subject: o.subject,
        old_name: o.old_name,
        new_name: o.new_name,
        recipient,
        permits: o.permits,
        state,
        sms_attempts: 0,
        answer: None,
        failures: 0,
        opened_at: now,
        closed_at: None,
    };
    (case, fx)
}

/// Opens an individual's case that ends at once because the permit look-up could not be
/// made: without consent (NO_CONSENT) or after repeated failures (FAILED).
pub fn open_closed(o: Opening, why: LookupFailure, now: Timestamp) -> (Case, Vec<Effect>) {
    let (mut case, mut fx) = open(o, now);
    let outcome = match why {
        LookupFailure::ConsentRefused { scope } => {
            fx.push(entry(
                StepKind::ConsentRefused,
                now,
                0,
                format!("{scope} (permit look-up)"),
            ));
            Outcome::NoConsent
        }
        LookupFailure::Failed { error } => {
            fx.push(entry(
                StepKind::CallFailed,
                now,
                0,
                format!("permit look-up: {error} (giving up)"),
            ));
            Outcome::Failed
        }
    };
    close(&mut case, &mut fx, outcome, now, String::new());
    (case, fx)
}

fn close(c: &mut Case, fx: &mut Vec<Effect>, outcome: Outcome, now: Timestamp, why: String) {
    let detail = if why.is_empty() {
        outcome.as_str().to_owned()
    } else {
        format!("{outcome}: {why}")
    };
    fx.push(entry(StepKind::Closed, now, 0, detail));
    c.state = State::Closed(outcome);
    c.closed_at = Some(now);
    c.failures = 0;
}

/// The call the current state needs, if any.
pub fn pending_call(c: &Case) -> Option<Call> {
    match c.state {
        State::ResolveRecipient => match c.subject {
            Subject::Organization(bin) => Some(Call::ResolveRecipient { bin }),
            Subject::Individual(_) => None,
        },
        State::CheckConsent => c.recipient.map(|iin| Call::CheckConsent {
            iin,
            scopes: consent_scopes(c.subject.kind()),
        }),
        State::CheckCriteria => c.recipient.map(|iin| Call::CheckPerson { iin }),
        State::Notify { attempt } => Some(Call::Notify { attempt }),
        State::Reissue => c
            .permits
            .iter()
            .position(|p| p.new_number.is_none())
            .map(|index| Call::Reissue {
                index,
                idempotency_key: reissue_key(&c.id, &c.permits[index].number),
            }),
        State::AwaitAnswer { .. } | State::Closed(_) => None,
    }
}

fn expects(state: &State, call: CallKind) -> bool {
    matches!(
        (state, call),
        (State::ResolveRecipient, CallKind::GetOrganization)
            | (State::CheckConsent, CallKind::IssueToken)
            | (State::CheckCriteria, CallKind::CheckPerson)
            | (State::Notify { .. }, CallKind::Notify)
            | (State::Reissue, CallKind::ReissuePermit)
    )
}

/// The transition function: the new case and what to do. Events that no longer fit the
/// case (a stale answer of a call made before the case moved on) change nothing, except
/// that an SMS sent or an answer received is always recorded in the history.
pub fn step(
    case: &Case,
    event: Event,
    now: Timestamp,
    pilot: &Pilot,
    calendar: &Calendar,
    retry: &RetryPolicy,
) -> (Case, Vec<Effect>) {
    let mut c = case.clone();
    let mut fx = Vec::new();
    let resume = matches!(event, Event::Resume);
    match event {
        Event::Resume => {}
        Event::RecipientResolved { iin } => {
            if c.state == State::ResolveRecipient {
                c.recipient = Some(iin);
                c.failures = 0;
                fx.push(entry(
                    StepKind::RecipientResolved,
                    now,
                    0,
                    format!("{iin} (first head)"),
                ));
                c.state = State::CheckConsent;
            }
        }
        Event::ConsentObtained { scopes } => {
            if c.state == State::CheckConsent {
                c.failures = 0;
                fx.push(entry(StepKind::ConsentObtained, now, 0, scopes.join(", ")));
                c.state = State::CheckCriteria;
            }
        }
        Event::ConsentRefused { scope } => {
            if c.state.class() == StateClass::Active {
                let attempt = match c.state {
                    State::Notify { attempt } => attempt,
                    _ => 0,
                };
                fx.push(entry(StepKind::ConsentRefused, now, attempt, scope));
                close(&mut c, &mut fx, Outcome::NoConsent, now, String::new());
            }
        }
        Event::PersonChecked(facts) => {
            if c.state == State::CheckCriteria {
                c.failures = 0;
                match facts.first_criterion() {
                    None => {
                        fx.push(entry(
                            StepKind::ChecksPassed,
                            now,
                            0,
                            "not missing or dead, not abroad, capable, not in prison",
                        ));
                        c.state = State::Notify { attempt: 1 };
                    }
                    Some(cr) => {
                        fx.push(entry(StepKind::Excluded, now, 0, cr.describe()));
                        close(&mut c, &mut fx, cr.outcome(), now, String::new());
                    }
                }
            }
        }
        Event::Notified {
            attempt,
            sms_id,
            sent_at,
        } => {
            // Recorded once: an answer may have told of this SMS before its Notify returned.
            if c.sms_attempts < attempt {
                fx.push(entry(StepKind::SmsSent, now, attempt, sms_id));
                c.sms_attempts = attempt;
            }
            if c.state == (State::Notify { attempt }) {
                c.failures = 0;
                match calendar.deadline(sent_at, pilot.wait_days, pilot.day_count) {
                    Ok(deadline) => c.state = State::AwaitAnswer { attempt, deadline },
                    Err(e) => close(
                        &mut c,
                        &mut fx,
                        Outcome::Failed,
                        now,
                        format!("cannot count the wait: {e}"),
                    ),
                }
            }
        }
        Event::NoPhone { attempt } => {
            if c.state == (State::Notify { attempt }) {
                fx.push(entry(
                    StepKind::NoPhone,
                    now,
                    attempt,
                    "no phone registered in BMG",
                ));
                close(&mut c, &mut fx, Outcome::NoPhone, now, String::new());
            }
        }
        Event::Answer {
            attempt,
            sms_id,
            text,
            received_at,
        } => on_answer(
            &mut c,
            &mut fx,
            attempt,
            &sms_id,
            &text,
            received_at,
            now,
            pilot,
        ),
        Event::Timeout { attempt } => {
            if let State::AwaitAnswer {
                attempt: a,
                deadline,
            } = c.state
                && a == attempt
                && now >= deadline
            {
                on_timeout(&mut c, &mut fx, a, deadline, pilot);
            }
        }
        Event::Reissued { index, new_number } => {
            if c.state == State::Reissue {
                if let Some(p) = c.permits.get_mut(index).filter(|p| p.new_number.is_none()) {
                    fx.push(entry(
                        StepKind::PermitReissued,
                        now,
                        0,
                        format!("{} → {new_number}", p.number),
                    ));
                    p.new_number = Some(new_number);
                    c.failures = 0;
                }
                if c.permits.iter().all(|p| p.new_number.is_some()) {
                    fx.push(Effect::SaveHolder(HolderUpdate {
                        subject: c.subject,
                        name: c.new_name.clone(),
                        permits: c
                            .permits
                            .iter()
                            .map(|p| (p.number.clone(), p.new_number.clone().unwrap_or_default()))
                            .collect(),
                        case_id: c.id.clone(),
                        at: now,
                    }));
                    close(&mut c, &mut fx, Outcome::Reissued, now, String::new());
                }
            }
        }
        Event::CallFailed {
            call,
            error,
            retryable,
        } => {
            if expects(&c.state, call) {
                c.failures += 1;
                let attempt = match c.state {
                    State::Notify { attempt } => attempt,
                    _ => 0,
                };
                let max = retry.max_attempts.max(1);
                if retryable && c.failures < max {
                    let delay = retry.delay(c.failures);
                    fx.push(entry(
                        StepKind::CallFailed,
                        now,
                        attempt,
                        format!(
                            "{}: {error} (try {} of {max}; again in {} ms)",
                            call.method(),
                            c.failures,
                            delay.as_millis()
                        ),
                    ));
                    if let Some(call) = pending_call(&c) {
                        fx.push(Effect::CallAfter { delay, call });
                    }
                    return (c, fx);
                }
                let why = if retryable {
                    format!("gave up after {} tries", c.failures)
                } else {
                    "not retryable".to_owned()
                };
                fx.push(entry(
                    StepKind::CallFailed,
                    now,
                    attempt,
                    format!("{}: {error} ({why})", call.method()),
                ));
                close(
                    &mut c,
                    &mut fx,
                    Outcome::Failed,
                    now,
                    format!("{} failed", call.method()),
                );
            }
        }
    }
    if resume || c.state != case.state || c.permits != case.permits {
        if let Some(call) = pending_call(&c) {
            fx.push(Effect::Call(call));
        } else if c.state.class() == StateClass::Active {
            // An active state without its data (cannot happen with cases made by `open`).
            close(
                &mut c,
                &mut fx,
                Outcome::Failed,
                now,
                "inconsistent case: no call for its state".into(),
            );
        }
    }
    (c, fx)
}

fn on_timeout(
    c: &mut Case,
    fx: &mut Vec<Effect>,
    attempt: u32,
    deadline: Timestamp,
    pilot: &Pilot,
) {
    fx.push(entry(
        StepKind::AnswerTimeout,
        deadline,
        attempt,
        format!("no answer to SMS {attempt} by {deadline}"),
    ));
    if attempt < pilot.max_attempts() {
        c.state = State::Notify {
            attempt: attempt + 1,
        };
    } else {
        close(c, fx, Outcome::NoAnswer, deadline, String::new());
    }
}

#[allow(clippy::too_many_arguments)]
fn on_answer(
    c: &mut Case,
    fx: &mut Vec<Effect>,
    attempt: u32,
    sms_id: &str,
    text: &str,
    received_at: Timestamp,
    now: Timestamp,
    pilot: &Pilot,
) {
    // An answer to the SMS being sent proves it went out, though its Notify has not
    // returned yet: the history tells the SMS first.
    if c.state == (State::Notify { attempt }) && c.sms_attempts < attempt {
        fx.push(entry(
            StepKind::SmsSent,
            now,
            attempt,
            format!("{sms_id} (known from the answer)"),
        ));
        c.sms_attempts = attempt;
    }
    // An answer that arrived after the wait ran out comes after the timeout, whichever the
    // runner saw first: the outcome does not depend on the order of processing.
    if let State::AwaitAnswer {
        attempt: a,
        deadline,
    } = c.state
        && received_at >= deadline
    {
        on_timeout(c, fx, a, deadline, pilot);
    }
    let shown = format!("{text:?}");
    match c.state {
        State::Notify { .. } | State::AwaitAnswer { .. } => match text.trim() {
            "1" => {
                fx.push(entry(
                    StepKind::AnswerReceived,
                    now,
                    attempt,
                    format!("{shown}: agrees"),
                ));
                c.answer = Some(Answer::Agree);
                c.failures = 0;
                c.state = State::Reissue;
            }
            "2" => {
                fx.push(entry(
                    StepKind::AnswerReceived,
                    now,
                    attempt,
                    format!("{shown}: refuses"),
                ));
                c.answer = Some(Answer::Refuse);
                close(c, fx, Outcome::Refused, now, String::new());
            }
            _ => fx.push(entry(
                StepKind::AnswerReceived,
                now,
                attempt,
                format!("{shown}: neither 1 nor 2; treated as no answer"),
            )),
        },
        State::Closed(o) => fx.push(entry(
            StepKind::AnswerReceived,
            now,
            attempt,
            format!("{shown}: after the case closed ({o}); ignored"),
        )),
        State::Reissue => fx.push(entry(
            StepKind::AnswerReceived,
            now,
            attempt,
            format!("{shown}: an answer was already taken; ignored"),
        )),
        _ => fx.push(entry(
            StepKind::AnswerReceived,
            now,
            attempt,
            format!("{shown}: before any SMS; ignored"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pilot::PilotCatalog;
    use jiff::civil::date;

    struct World {
        pilots: PilotCatalog,
        cal: Calendar,
        retry: RetryPolicy,
    }

    fn world() -> World {
        World {
            pilots: PilotCatalog::shipped().unwrap(),
            cal: Calendar::shipped().unwrap(),
            retry: RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const BIN: &str = "100140001237";
    const HEAD: &str = "850101300013";

    fn valid_bin() -> Bin {
        // Find a valid BIN near the constant (the test only needs one).
        Bin::parse(BIN).unwrap_or_else(|_| {
            (0..99_999)
                .find_map(|s| Bin::from_parts(2010, 1, 4, 0, s))
                .unwrap()
        })
    }

    fn valid_iin(serial: u16) -> Iin {
        Iin::parse(HEAD)
            .ok()
            .filter(|_| serial == 0)
            .unwrap_or_else(|| {
                (serial..9999)
                    .find_map(|s| Iin::from_parts(1985, 1, 1, shep_domain::Sex::Male, s))
                    .unwrap()
            })
    }

    fn opening(subject: Subject, permits: usize) -> Opening {
        Opening {
            run_id: RunId::of("sez-000", date(2026, 2, 3)),
            pilot_id: "sez-000".into(),
            date: date(2026, 2, 3),
            subject,
            head: None,
            old_name: SubjectName::Organization {
                ru: "ТОО А".into(),
                kk: "А ЖШС".into(),
            },
            new_name: SubjectName::Organization {
                ru: "ТОО Б".into(),
                kk: "Б ЖШС".into(),
            },
            permits: (0..permits)
                .map(|i| PermitItem {
                    number: format!("SEO-{i}"),
                    service_code: "SEZ-OBJ".into(),
                    new_number: None,
                })
                .collect(),
        }
    }

    /// Drives a case: applies `event` and returns the case, its history entries and the call.
    struct Drive<'w> {
        w: &'w World,
        pilot: &'w str,
        case: Case,
        history: Vec<HistoryEntry>,
        last_call: Option<Call>,
        holder: Option<HolderUpdate>,
    }

    impl<'w> Drive<'w> {
        fn new(w: &'w World, pilot: &'w str, o: Opening, now: Timestamp) -> Self {
            let (case, fx) = open(o, now);
            let mut d = Drive {
                w,
                pilot,
                case,
                history: vec![],
                last_call: None,
                holder: None,
            };
            d.absorb(fx);
            d.on(Event::Resume, now);
            d
        }

        fn absorb(&mut self, fx: Vec<Effect>) {
            for e in fx {
                match e {
                    Effect::History(h) => self.history.push(h),
                    Effect::SaveHolder(h) => self.holder = Some(h),
                    Effect::Call(c) | Effect::CallAfter { call: c, .. } => self.last_call = Some(c),
                }
            }
        }

        fn on(&mut self, ev: Event, now: Timestamp) -> Vec<Effect> {
            let pilot = self.w.pilots.get(self.pilot).unwrap();
            let (c, fx) = step(&self.case, ev, now, pilot, &self.w.cal, &self.w.retry);
            self.case = c;
            self.last_call = None;
            self.absorb(fx.clone());
            fx
        }

        fn kinds(&self) -> Vec<StepKind> {
            self.history.iter().map(|h| h.kind).collect()
        }

        /// Through consent and checks to the first SMS.
        fn through_to_first_sms(&mut self, now: Timestamp) {
            if self.case.state == State::ResolveRecipient {
                self.on(Event::RecipientResolved { iin: valid_iin(0) }, now);
            }
            self.on(
                Event::ConsentObtained {
                    scopes: consent_scopes(self.case.subject.kind()),
                },
                now,
            );
            assert_eq!(
                self.last_call,
                Some(Call::CheckPerson {
                    iin: self.case.recipient.unwrap()
                })
            );
            self.on(Event::PersonChecked(PersonFacts::default()), now);
            assert_eq!(self.last_call, Some(Call::Notify { attempt: 1 }));
        }
    }

    #[test]
    fn a_head_given_with_the_change_is_the_recipient_without_asking_gbd_ul() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let head = valid_iin(3);
        let d = Drive::new(
            &w,
            "sez-000",
            Opening {
                head: Some(head),
                ..opening(Subject::Organization(valid_bin()), 1)
            },
            now,
        );
        assert_eq!(d.case.recipient, Some(head));
        assert_eq!(d.kinds(), vec![StepKind::Opened, StepKind::RecipientResolved]);
        assert!(d.history[1].detail.contains(&head.to_string()));
        // Straight to consent for the head: no GBD UL call.
        assert!(
            matches!(&d.last_call, Some(Call::CheckConsent { iin, .. }) if *iin == head),
            "{:?}",
            d.last_call
        );
    }

    #[test]
    fn answer_1_reissues_every_permit_with_one_sms() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z"); // 10:00 Almaty, Tuesday
        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 3),
            now,
        );
        assert_eq!(
            d.last_call,
            Some(Call::ResolveRecipient { bin: valid_bin() })
        );
        d.through_to_first_sms(now);
        d.on(
            Event::Notified {
                attempt: 1,
                sms_id: "sms-1".into(),
                sent_at: now,
            },
            now,
        );
        // Three working days: Wed, Thu, Fri → Friday 6 Feb 10:00 Almaty.
        assert_eq!(
            d.case.state,
            State::AwaitAnswer {
                attempt: 1,
                deadline: t("2026-02-06T05:00:00Z")
            }
        );
        assert_eq!(d.last_call, None);
        d.on(
            Event::Answer {
                attempt: 1,
                sms_id: "s".into(),
                text: " 1\n".into(),
                received_at: now,
            },
            now,
        );
        assert_eq!(d.case.answer, Some(Answer::Agree));
        let mut keys = vec![];
        for i in 0..3 {
            let Some(Call::Reissue {
                index,
                idempotency_key,
            }) = d.last_call.clone()
            else {
                panic!("{:?}", d.last_call)
            };
            assert_eq!(index, i);
            assert_eq!(
                idempotency_key,
                reissue_key(&d.case.id, &format!("SEO-{i}"))
            );
            keys.push(idempotency_key);
            d.on(
                Event::Reissued {
                    index,
                    new_number: format!("NEW-{i}"),
                },
                now,
            );
        }
        keys.dedup();
        assert_eq!(keys.len(), 3);
        assert_eq!(d.case.state, State::Closed(Outcome::Reissued));
        assert_eq!(d.case.sms_attempts, 1);
        assert_eq!(d.case.closed_at, Some(now));
        let h = d.holder.clone().expect("holder data recorded");
        assert_eq!(
            h.permits,
            vec![
                ("SEO-0".into(), "NEW-0".into()),
                ("SEO-1".into(), "NEW-1".into()),
                ("SEO-2".into(), "NEW-2".into())
            ]
        );
        assert_eq!(h.name, d.case.new_name);
        use StepKind::*;
        assert_eq!(
            d.kinds(),
            [
                Opened,
                RecipientResolved,
                ConsentObtained,
                ChecksPassed,
                SmsSent,
                AnswerReceived,
                PermitReissued,
                PermitReissued,
                PermitReissued,
                Closed
            ]
        );
        // A stale repeat of a re-issue answer changes nothing.
        let before = d.case.clone();
        let fx = d.on(
            Event::Reissued {
                index: 0,
                new_number: "NEW-0".into(),
            },
            now,
        );
        assert!(fx.is_empty());
        assert_eq!(d.case, before);
    }

    #[test]
    fn answer_2_refuses() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        d.through_to_first_sms(now);
        d.on(
            Event::Notified {
                attempt: 1,
                sms_id: "s".into(),
                sent_at: now,
            },
            now,
        );
        d.on(
            Event::Answer {
                attempt: 1,
                sms_id: "s".into(),
                text: "2".into(),
                received_at: now,
            },
            now,
        );
        assert_eq!(d.case.state, State::Closed(Outcome::Refused));
        assert_eq!(d.case.answer, Some(Answer::Refuse));
        assert_eq!(d.last_call, None);
        // An answer after the close is recorded and ignored.
        d.on(
            Event::Answer {
                attempt: 1,
                sms_id: "s".into(),
                text: "1".into(),
                received_at: now,
            },
            now,
        );
        assert_eq!(d.case.state, State::Closed(Outcome::Refused));
        assert!(d.history.last().unwrap().detail.contains("ignored"));
    }

    #[test]
    fn silence_twice_is_no_answer_and_other_text_counts_as_silence() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        d.through_to_first_sms(now);
        d.on(
            Event::Notified {
                attempt: 1,
                sms_id: "s1".into(),
                sent_at: now,
            },
            now,
        );
        let dl1 = d.case.deadline().unwrap();
        d.on(
            Event::Answer {
                attempt: 1,
                sms_id: "s".into(),
                text: "да".into(),
                received_at: now,
            },
            now,
        );
        assert!(
            matches!(d.case.state, State::AwaitAnswer { attempt: 1, .. }),
            "other text: still waiting"
        );
        assert!(
            d.history
                .last()
                .unwrap()
                .detail
                .contains("treated as no answer")
        );
        // A timer that fires early does nothing.
        let fx = d.on(Event::Timeout { attempt: 1 }, t("2026-02-06T04:59:59Z"));
        assert!(fx.is_empty());
        d.on(Event::Timeout { attempt: 1 }, dl1);
        assert_eq!(d.case.state, State::Notify { attempt: 2 });
        assert_eq!(d.last_call, Some(Call::Notify { attempt: 2 }));
        let sent2 = t("2026-02-06T06:00:00Z"); // Friday 11:00 → Mon, Tue, Wed 11:00
        d.on(
            Event::Notified {
                attempt: 2,
                sms_id: "s2".into(),
                sent_at: sent2,
            },
            sent2,
        );
        assert_eq!(d.case.deadline(), Some(t("2026-02-11T06:00:00Z")));
        // A timeout for the old attempt is stale.
        assert!(
            d.on(Event::Timeout { attempt: 1 }, t("2026-03-01T00:00:00Z"))
                .is_empty()
        );
        d.on(Event::Timeout { attempt: 2 }, t("2026-02-11T06:00:00Z"));
        assert_eq!(d.case.state, State::Closed(Outcome::NoAnswer));
        assert_eq!(d.case.sms_attempts, 2);
        assert_eq!(d.case.closed_at, Some(t("2026-02-11T06:00:00Z")));
    }

    #[test]
    fn an_answer_to_the_first_sms_counts_while_the_second_is_pending() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let mut d = Drive::new(
            &w,
            "eco-001",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        d.case.pilot_id = "eco-001".into();
        d.through_to_first_sms(now);
        d.on(
            Event::Notified {
                attempt: 1,
                sms_id: "s1".into(),
                sent_at: now,
            },
            now,
        );
        // Plain days: Friday 6 Feb 10:00.
        assert_eq!(d.case.deadline(), Some(t("2026-02-06T05:00:00Z")));
        d.on(Event::Timeout { attempt: 1 }, t("2026-02-06T05:00:00Z"));
        assert_eq!(d.case.state, State::Notify { attempt: 2 });
        d.on(
            Event::Answer {
                attempt: 1,
                sms_id: "s".into(),
                text: "1".into(),
                received_at: t("2026-02-06T05:00:01Z"),
            },
            now,
        );
        assert_eq!(d.case.state, State::Reissue);
        // The SMS 2 that was in flight is recorded but moves nothing.
        let fx = d.on(
            Event::Notified {
                attempt: 2,
                sms_id: "s2".into(),
                sent_at: now,
            },
            now,
        );
        assert_eq!(d.case.state, State::Reissue);
        assert_eq!(d.case.sms_attempts, 2);
        assert!(fx.iter().all(|e| matches!(e, Effect::History(_))));
    }

    #[test]
    fn an_answer_that_overtakes_its_notify_records_the_sms_once() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        d.through_to_first_sms(now);
        d.on(
            Event::Answer {
                attempt: 1,
                sms_id: "sms-9".into(),
                text: "1".into(),
                received_at: now,
            },
            now,
        );
        assert_eq!((d.case.state, d.case.sms_attempts), (State::Reissue, 1));
        let fx = d.on(
            Event::Notified {
                attempt: 1,
                sms_id: "sms-9".into(),
                sent_at: now,
            },
            now,
        );
        assert!(fx.is_empty(), "{fx:?}");
        use StepKind::*;
        assert_eq!(
            d.kinds(),
            [
                Opened,
                RecipientResolved,
                ConsentObtained,
                ChecksPassed,
                SmsSent,
                AnswerReceived
            ]
        );
        assert!(d.history[4].detail.contains("sms-9"));
    }

    #[test]
    fn a_late_answer_is_ordered_after_the_timeout_whatever_the_runner_saw_first() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        d.through_to_first_sms(now);
        d.on(
            Event::Notified {
                attempt: 1,
                sms_id: "s1".into(),
                sent_at: now,
            },
            now,
        );
        d.on(Event::Timeout { attempt: 1 }, t("2026-02-06T05:00:00Z"));
        d.on(
            Event::Notified {
                attempt: 2,
                sms_id: "s2".into(),
                sent_at: t("2026-02-06T05:00:00Z"),
            },
            now,
        );
        let dl2 = d.case.deadline().unwrap();
        // The answer came after the second deadline but the timer had not fired yet.
        d.on(
            Event::Answer {
                attempt: 2,
                sms_id: "s".into(),
                text: "1".into(),
                received_at: dl2,
            },
            dl2,
        );
        assert_eq!(d.case.state, State::Closed(Outcome::NoAnswer));
        use StepKind::*;
        assert_eq!(
            d.kinds()[d.kinds().len() - 3..],
            [AnswerTimeout, Closed, AnswerReceived]
        );
    }

    #[test]
    fn no_phone_no_consent_and_each_criterion() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        d.through_to_first_sms(now);
        d.on(Event::NoPhone { attempt: 1 }, now);
        assert_eq!(d.case.state, State::Closed(Outcome::NoPhone));

        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        d.on(Event::RecipientResolved { iin: valid_iin(0) }, now);
        assert_eq!(
            d.last_call,
            Some(Call::CheckConsent {
                iin: valid_iin(0),
                scopes: consent_scopes(SubjectKind::Organization)
            })
        );
        d.on(
            Event::ConsentRefused {
                scope: SCOPE_PERSON.into(),
            },
            now,
        );
        assert_eq!(d.case.state, State::Closed(Outcome::NoConsent));
        assert_eq!(d.last_call, None, "no GBD FL call without consent");

        let cases = [
            (
                PersonFacts {
                    dead: true,
                    abroad: true,
                    ..Default::default()
                },
                Outcome::ExcludedDeadOrMissing,
            ),
            (
                PersonFacts {
                    declared_missing_or_dead: true,
                    imprisoned: true,
                    ..Default::default()
                },
                Outcome::ExcludedDeadOrMissing,
            ),
            (
                PersonFacts {
                    death_act: true,
                    ..Default::default()
                },
                Outcome::ExcludedDeadOrMissing,
            ),
            (
                PersonFacts {
                    abroad: true,
                    incapable: true,
                    imprisoned: true,
                    ..Default::default()
                },
                Outcome::ExcludedAbroad,
            ),
            (
                PersonFacts {
                    incapable: true,
                    imprisoned: true,
                    ..Default::default()
                },
                Outcome::ExcludedIncapable,
            ),
            (
                PersonFacts {
                    imprisoned: true,
                    ..Default::default()
                },
                Outcome::ExcludedImprisoned,
            ),
        ];
        for (facts, want) in cases {
            let mut d = Drive::new(
                &w,
                "sez-000",
                opening(Subject::Organization(valid_bin()), 1),
                now,
            );
            d.on(Event::RecipientResolved { iin: valid_iin(0) }, now);
            d.on(Event::ConsentObtained { scopes: vec![] }, now);
            d.on(Event::PersonChecked(facts), now);
            assert_eq!(d.case.state, State::Closed(want), "{facts:?}");
            assert_eq!(d.last_call, None);
            assert!(d.kinds().contains(&StepKind::Excluded));
        }
    }

    #[test]
    fn consent_can_be_withdrawn_later_and_an_individual_is_their_own_recipient() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let iin = valid_iin(7);
        let mut o = opening(Subject::Individual(iin), 2);
        o.new_name = SubjectName::Person {
            surname: "Иванова".into(),
            name: "Анна".into(),
            patronymic: String::new(),
        };
        let mut d = Drive::new(&w, "sez-000", o, now);
        assert_eq!(d.case.recipient, Some(iin));
        assert_eq!(
            d.last_call,
            Some(Call::CheckConsent {
                iin,
                scopes: consent_scopes(SubjectKind::Individual)
            })
        );
        assert!(consent_scopes(SubjectKind::Individual).contains(&SCOPE_REISSUE.to_owned()));
        d.through_to_first_sms(now);
        d.on(
            Event::Notified {
                attempt: 1,
                sms_id: "s".into(),
                sent_at: now,
            },
            now,
        );
        d.on(
            Event::Answer {
                attempt: 1,
                sms_id: "s".into(),
                text: "1".into(),
                received_at: now,
            },
            now,
        );
        d.on(
            Event::Reissued {
                index: 0,
                new_number: "N0".into(),
            },
            now,
        );
        d.on(
            Event::ConsentRefused {
                scope: SCOPE_REISSUE.into(),
            },
            now,
        );
        assert_eq!(d.case.state, State::Closed(Outcome::NoConsent));
        assert_eq!(d.case.permits[0].new_number.as_deref(), Some("N0"));
        assert_eq!(d.case.permits[1].new_number, None);
    }

    #[test]
    fn failing_calls_are_retried_with_backoff_then_fail() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        let fail = |retryable| Event::CallFailed {
            call: CallKind::GetOrganization,
            error: "unavailable".into(),
            retryable,
        };
        let fx = d.on(fail(true), now);
        assert!(fx.contains(&Effect::CallAfter {
            delay: Duration::from_millis(100),
            call: Call::ResolveRecipient { bin: valid_bin() }
        }));
        let fx = d.on(fail(true), now);
        assert!(fx.iter().any(
            |e| matches!(e, Effect::CallAfter { delay, .. } if *delay == Duration::from_millis(200))
        ));
        // A success resets the count.
        d.on(Event::RecipientResolved { iin: valid_iin(0) }, now);
        assert_eq!(d.case.failures, 0);
        // A failure of a call the case no longer expects is stale.
        assert!(d.on(fail(true), now).is_empty());
        let consent_fail = |retryable| Event::CallFailed {
            call: CallKind::IssueToken,
            error: "x".into(),
            retryable,
        };
        d.on(consent_fail(true), now);
        d.on(consent_fail(true), now);
        assert_eq!(d.case.state, State::CheckConsent);
        d.on(consent_fail(true), now);
        assert_eq!(d.case.state, State::Closed(Outcome::Failed));
        assert!(
            d.history
                .iter()
                .any(|h| h.detail.contains("gave up after 3 tries"))
        );

        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 1),
            now,
        );
        d.on(fail(false), now);
        assert_eq!(
            d.case.state,
            State::Closed(Outcome::Failed),
            "non-retryable fails at once"
        );
    }

    #[test]
    fn resume_repeats_the_pending_call_and_nothing_else() {
        let w = world();
        let now = t("2026-02-03T05:00:00Z");
        let mut d = Drive::new(
            &w,
            "sez-000",
            opening(Subject::Organization(valid_bin()), 2),
            now,
        );
        d.through_to_first_sms(now);
        let fx = d.on(Event::Resume, now);
        assert_eq!(fx, vec![Effect::Call(Call::Notify { attempt: 1 })]);
        d.on(
            Event::Notified {
                attempt: 1,
                sms_id: "s".into(),
                sent_at: now,
            },
            now,
        );
        assert!(
            d.on(Event::Resume, now).is_empty(),
            "waiting: nothing to do"
        );
        d.on(
            Event::Answer {
                attempt: 1,
                sms_id: "s".into(),
                text: "1".into(),
                received_at: now,
            },
            now,
        );
        d.on(
            Event::Reissued {
                index: 0,
                new_number: "N".into(),
            },
            now,
        );
        let fx = d.on(Event::Resume, now);
        assert_eq!(
            fx,
            vec![Effect::Call(Call::Reissue {
                index: 1,
                idempotency_key: reissue_key(&d.case.id, "SEO-1")
            })]
        );
    }

    #[test]
    fn lookup_failures_open_closed_cases() {
        let now = t("2026-02-03T05:00:00Z");
        let iin = valid_iin(3);
        let (c, fx) = open_closed(
            opening(Subject::Individual(iin), 0),
            LookupFailure::ConsentRefused {
                scope: SCOPE_PERMITS_READ.into(),
            },
            now,
        );
        assert_eq!(c.state, State::Closed(Outcome::NoConsent));
        assert_eq!(c.recipient, Some(iin));
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::History(h) if h.kind == StepKind::ConsentRefused))
        );
        let (c, _) = open_closed(
            opening(Subject::Individual(iin), 0),
            LookupFailure::Failed {
                error: "down".into(),
            },
            now,
        );
        assert_eq!(c.state, State::Closed(Outcome::Failed));
    }

    #[test]
    fn ids_keys_and_names() {
        let run = RunId::of("sez-000", date(2026, 2, 3));
        assert_eq!(run.0, "sez-000:2026-02-03");
        let s = Subject::Organization(valid_bin());
        let id = CaseId::of(&run, &s);
        assert_eq!(id.0, format!("sez-000:2026-02-03:ul:{}", valid_bin()));
        assert_eq!(Subject::parse("ul", &s.id()), Some(s));
        assert_eq!(
            Subject::parse("fl", &s.id()).map(|x| x.kind()),
            Subject::parse("fl", &s.id()).map(|_| SubjectKind::Individual)
        );
        assert_ne!(reissue_key(&id, "A"), reissue_key(&id, "B"));
        assert_eq!(reissue_key(&id, "A"), reissue_key(&id, "A"));
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        for k in StepKind::ALL {
            assert_eq!(StepKind::parse(k.as_str()), Some(k));
        }
        let p = SubjectName::Person {
            surname: "Ким".into(),
            name: "Ли".into(),
            patronymic: "".into(),
        };
        assert_eq!(p.display(false), "Ким Ли");
        let o = SubjectName::Organization {
            ru: "ТОО Б".into(),
            kk: "".into(),
        };
        assert_eq!(o.display(true), "ТОО Б");
        assert_eq!(RetryPolicy::default().delay(30), Duration::from_secs(30));
    }
}
