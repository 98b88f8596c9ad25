//! What happened: the funnel of a run as a table, and one JSON-ready record per case.

use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::Serialize;

use crate::case::{Answer, Case, HistoryEntry, PermitItem, RunId, State, Subject, SubjectName};
use crate::pilot::SubjectKind;
use crate::store::{FunnelCounts, RunState};

/// The funnel of a pilot for a date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FunnelReport {
    /// The pilot.
    pub pilot_id: String,
    /// The date of the run.
    pub date: Date,
    /// The run.
    pub run_id: RunId,
    /// The run's state.
    pub run_state: RunState,
    /// The counts.
    pub counts: FunnelCounts,
    /// Every case closed and the diff read: the counts will not change.
    pub complete: bool,
    /// When the report was formed (injected clock).
    pub generated_at: Timestamp,
}

impl FunnelReport {
    /// The rows of the table: (label, count), in funnel order.
    pub fn rows(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counts;
        vec![
            ("name changes found", c.diffs),
            ("with permits of the pilot", c.with_permits),
            ("recipients resolved", c.recipients),
            ("excluded: missing or dead", c.excluded_dead_or_missing),
            ("excluded: lives abroad", c.excluded_abroad),
            ("excluded: legally incapable", c.excluded_incapable),
            ("excluded: in prison", c.excluded_imprisoned),
            ("without consent (KDP)", c.no_consent),
            ("without phone (BMG)", c.no_phone),
            ("SMS sent", c.sms_sent),
            ("SMS re-sent", c.sms_resent),
            ("answered 1 (agree)", c.answered_yes),
            ("answered 2 (refuse)", c.answered_no),
            ("no answer", c.no_answer),
            ("re-issued", c.reissued),
            ("failed", c.failed),
            ("open", c.open),
        ]
    }

    /// The human-readable table (the same as `Display`).
    pub fn render_text(&self) -> String {
        self.to_string()
    }
}

impl FunnelReport {
    /// Reads a report back from the contract's message (for clients such as `shep sdu`).
    pub fn from_proto(r: &shep_proto::sdu::FunnelReport) -> Result<FunnelReport, String> {
        use shep_proto::sdu::RunState as Pb;
        let date = r
            .date
            .as_ref()
            .and_then(crate::dates::from_proto_date)
            .ok_or("the report has no valid date")?;
        let c = r.counts.unwrap_or_default();
        let run_state = match Pb::try_from(r.run_state).unwrap_or(Pb::Unspecified) {
            Pb::Waiting => RunState::Waiting,
            Pb::Done => RunState::Done,
            Pb::Failed => RunState::Failed,
            Pb::Running | Pb::Unspecified => RunState::Running,
        };
        let generated_at = r
            .generated_at
            .and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Ok(FunnelReport {
            pilot_id: r.pilot_id.clone(),
            date,
            run_id: RunId(r.run_id.clone()),
            run_state,
            counts: FunnelCounts {
                diffs: c.diffs,
                with_permits: c.with_permits,
                recipients: c.recipients,
                excluded_dead_or_missing: c.excluded_dead_or_missing,
                excluded_abroad: c.excluded_abroad,
                excluded_incapable: c.excluded_incapable,
                excluded_imprisoned: c.excluded_imprisoned,
                no_consent: c.no_consent,
                no_phone: c.no_phone,
                sms_sent: c.sms_sent,
                sms_resent: c.sms_resent,
                answered_yes: c.answered_yes,
                answered_no: c.answered_no,
                no_answer: c.no_answer,
                reissued: c.reissued,
                failed: c.failed,
                open: c.open,
            },
            complete: r.complete,
            generated_at,
        })
    }

    /// One line of progress: SMS, answers, re-issues, open cases.
    pub fn progress_line(&self) -> String {
        let c = &self.counts;
        format!(
            "cases {:>5}  sms sent {:>5}  re-sent {:>5}  answered 1/2 {:>5}/{:<5} re-issued {:>5}  open {:>5}",
            c.with_permits,
            c.sms_sent,
            c.sms_resent,
            c.answered_yes,
            c.answered_no,
            c.reissued,
            c.open
        )
    }
}

impl fmt::Display for FunnelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Pilot {} — {} (run {}, {}{})",
            self.pilot_id,
            self.date,
            self.run_id,
            self.run_state.as_str(),
            if self.complete {
                ", complete"
            } else {
                ", in progress"
            }
        )?;
        let rows = self.rows();
        let width = rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        for (label, n) in rows {
            writeln!(f, "  {label:<width$}  {n:>8}")?;
        }
        write!(f, "  (formed {})", self.generated_at)
    }
}

/// A case as one JSON record: identity, outcome, permits, and every step with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseRecord {
    pub case_id: String,
    pub run_id: String,
    pub pilot_id: String,
    pub date: Date,
    pub subject_kind: SubjectKind,
    /// The organization's BIN, for an organization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_bin: Option<String>,
    /// The individual's IIN, for an individual.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_iin: Option<String>,
    pub old_name: SubjectName,
    pub new_name: SubjectName,
    pub recipient_iin: Option<String>,
    pub permits: Vec<PermitItem>,
    /// The outcome, or "OPEN".
    pub outcome: String,
    /// Where an open case stands ("await_answer", ...); the outcome when closed.
    pub state: String,
    pub sms_attempts: u32,
    /// "1", "2" or none.
    pub answer: Option<String>,
    pub answer_deadline: Option<Timestamp>,
    pub opened_at: Timestamp,
    pub closed_at: Option<Timestamp>,
    pub steps: Vec<HistoryEntry>,
}

impl CaseRecord {
    /// The record of a case and its history.
    pub fn new(c: &Case, steps: Vec<HistoryEntry>) -> Self {
        let (bin, iin) = match c.subject {
            Subject::Organization(b) => (Some(b.to_string()), None),
            Subject::Individual(i) => (None, Some(i.to_string())),
        };
        let state = match c.state {
            State::ResolveRecipient => "resolve_recipient".to_owned(),
            State::CheckConsent => "check_consent".to_owned(),
            State::CheckCriteria => "check_criteria".to_owned(),
            State::Notify { attempt } => format!("notify_{attempt}"),
            State::AwaitAnswer { attempt, .. } => format!("await_answer_{attempt}"),
            State::Reissue => "reissue".to_owned(),
            State::Closed(o) => o.as_str().to_owned(),
        };
        CaseRecord {
            case_id: c.id.0.clone(),
            run_id: c.run_id.0.clone(),
            pilot_id: c.pilot_id.clone(),
            date: c.date,
            subject_kind: c.subject.kind(),
            subject_bin: bin,
            subject_iin: iin,
            old_name: c.old_name.clone(),
            new_name: c.new_name.clone(),
            recipient_iin: c.recipient.map(|i| i.to_string()),
            permits: c.permits.clone(),
            outcome: c
                .state
                .outcome()
                .map(|o| o.as_str().to_owned())
                .unwrap_or_else(|| "OPEN".to_owned()),
            state,
            sms_attempts: c.sms_attempts,
            answer: c.answer.map(|a| match a {
                Answer::Agree => "1".to_owned(),
                Answer::Refuse => "2".to_owned(),
            }),
            answer_deadline: c.deadline(),
            opened_at: c.opened_at,
            closed_at: c.closed_at,
            steps,
        }
    }

    /// As a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn the_table_lists_every_stage_with_its_count() {
        let r = FunnelReport {
            pilot_id: "sez-000".into(),
            date: date(2026, 2, 3),
            run_id: RunId("sez-000:2026-02-03".into()),
            run_state: RunState::Waiting,
            counts: FunnelCounts {
                diffs: 12,
                with_permits: 9,
                sms_sent: 7,
                reissued: 3,
                open: 2,
                ..Default::default()
            },
            complete: false,
            generated_at: "2026-02-03T05:00:00Z".parse().unwrap(),
        };
        let text = r.render_text();
        assert!(
            text.starts_with(
                "Pilot sez-000 — 2026-02-03 (run sez-000:2026-02-03, WAITING, in progress)"
            ),
            "{text}"
        );
        let line = |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap()
                .to_owned()
        };
        assert!(line("name changes found").trim_end().ends_with(" 12"));
        assert!(line("with permits").trim_end().ends_with(" 9"));
        assert!(line("re-issued").trim_end().ends_with(" 3"));
        assert!(line("excluded: in prison").trim_end().ends_with(" 0"));
        assert_eq!(r.rows().len(), 17);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["counts"]["diffs"], 12);
        assert_eq!(json["run_state"], "WAITING");
    }
}
