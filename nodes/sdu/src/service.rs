//! The gRPC service `kz.gov.sdu.v1.ProactiveService`: domain ↔ proto, nothing else.

use std::pin::Pin;

use futures::Stream;
use shep_proto::sdu as pb;
use shep_runtime::status::invalid_field;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::case::{
    Case, CaseId, HistoryEntry, Outcome, RunId, State, StepKind, Subject, SubjectName,
};
use crate::dates::{from_proto_date, to_proto_date, to_proto_ts};
use crate::store::{CaseFilter, EventRecord, EventWhat, FunnelCounts, RunRecord, RunState};
use crate::{FunnelReport, SduError, SduHandle};

/// The implementation of `ProactiveService` over an [`SduHandle`].
pub struct ProactiveApi {
    handle: SduHandle,
}

impl ProactiveApi {
    /// The service of a running SDU.
    pub fn new(handle: SduHandle) -> Self {
        ProactiveApi { handle }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn outcome_pb(o: Option<Outcome>) -> pb::Outcome {
    match o {
        None => pb::Outcome::Open,
        Some(Outcome::Reissued) => pb::Outcome::Reissued,
        Some(Outcome::Refused) => pb::Outcome::Refused,
        Some(Outcome::NoAnswer) => pb::Outcome::NoAnswer,
        Some(Outcome::NoPhone) => pb::Outcome::NoPhone,
        Some(Outcome::NoConsent) => pb::Outcome::NoConsent,
        Some(Outcome::ExcludedDeadOrMissing) => pb::Outcome::ExcludedDeadOrMissing,
        Some(Outcome::ExcludedAbroad) => pb::Outcome::ExcludedAbroad,
        Some(Outcome::ExcludedIncapable) => pb::Outcome::ExcludedIncapable,
        Some(Outcome::ExcludedImprisoned) => pb::Outcome::ExcludedImprisoned,
        Some(Outcome::Failed) => pb::Outcome::Failed,
    }
}

fn filter_of(o: pb::Outcome) -> CaseFilter {
    match o {
        pb::Outcome::Unspecified => CaseFilter::All,
        pb::Outcome::Open => CaseFilter::Open,
        pb::Outcome::Reissued => CaseFilter::Outcome(Outcome::Reissued),
        pb::Outcome::Refused => CaseFilter::Outcome(Outcome::Refused),
        pb::Outcome::NoAnswer => CaseFilter::Outcome(Outcome::NoAnswer),
        pb::Outcome::NoPhone => CaseFilter::Outcome(Outcome::NoPhone),
        pb::Outcome::NoConsent => CaseFilter::Outcome(Outcome::NoConsent),
        pb::Outcome::ExcludedDeadOrMissing => CaseFilter::Outcome(Outcome::ExcludedDeadOrMissing),
        pb::Outcome::ExcludedAbroad => CaseFilter::Outcome(Outcome::ExcludedAbroad),
        pb::Outcome::ExcludedIncapable => CaseFilter::Outcome(Outcome::ExcludedIncapable),
        pb::Outcome::ExcludedImprisoned => CaseFilter::Outcome(Outcome::ExcludedImprisoned),
        pb::Outcome::Failed => CaseFilter::Outcome(Outcome::Failed),
    }
}

fn step_kind_pb(k: StepKind) -> pb::CaseStepKind {
    match k {
        StepKind::Opened => pb::CaseStepKind::Opened,
        StepKind::RecipientResolved => pb::CaseStepKind::RecipientResolved,
        StepKind::ConsentObtained => pb::CaseStepKind::ConsentObtained,
        StepKind::ConsentRefused => pb::CaseStepKind::ConsentRefused,
        StepKind::ChecksPassed => pb::CaseStepKind::ChecksPassed,
        StepKind::Excluded => pb::CaseStepKind::Excluded,
        StepKind::SmsSent => pb::CaseStepKind::SmsSent,
        StepKind::NoPhone => pb::CaseStepKind::NoPhone,
        StepKind::AnswerReceived => pb::CaseStepKind::AnswerReceived,
        StepKind::AnswerTimeout => pb::CaseStepKind::AnswerTimeout,
        StepKind::PermitReissued => pb::CaseStepKind::PermitReissued,
        StepKind::CallFailed => pb::CaseStepKind::CallFailed,
        StepKind::Closed => pb::CaseStepKind::Closed,
    }
}

fn run_state_pb(s: RunState) -> pb::RunState {
    match s {
        RunState::Running => pb::RunState::Running,
        RunState::Waiting => pb::RunState::Waiting,
        RunState::Done => pb::RunState::Done,
        RunState::Failed => pb::RunState::Failed,
    }
}

fn name_pb(n: &SubjectName) -> pb::SubjectName {
    use shep_proto::shep::{FullName, LocalizedText};
    pb::SubjectName {
        name: Some(match n {
            SubjectName::Organization { ru, kk } => {
                pb::subject_name::Name::Organization(LocalizedText {
                    ru: ru.clone(),
                    kk: kk.clone(),
                })
            }
            SubjectName::Person {
                surname,
                name,
                patronymic,
            } => pb::subject_name::Name::Person(FullName {
                surname: surname.clone(),
                name: name.clone(),
                patronymic: patronymic.clone(),
            }),
        }),
    }
}

fn step_pb(h: &HistoryEntry) -> pb::CaseStep {
    pb::CaseStep {
        kind: step_kind_pb(h.kind) as i32,
        at: Some(to_proto_ts(h.at)),
        detail: h.detail.clone(),
        attempt: h.attempt,
    }
}

/// The proto case.
pub fn case_pb(c: &Case, steps: &[HistoryEntry], cursor: String) -> pb::Case {
    let (kind, bin, iin) = match c.subject {
        Subject::Organization(b) => (pb::SubjectKind::Organization, b.to_string(), String::new()),
        Subject::Individual(i) => (pb::SubjectKind::Individual, String::new(), i.to_string()),
    };
    pb::Case {
        case_id: c.id.0.clone(),
        run_id: c.run_id.0.clone(),
        pilot_id: c.pilot_id.clone(),
        date: Some(to_proto_date(c.date)),
        subject_kind: kind as i32,
        subject_bin: bin,
        subject_iin: iin,
        old_name: Some(name_pb(&c.old_name)),
        new_name: Some(name_pb(&c.new_name)),
        recipient_iin: c.recipient.map(|i| i.to_string()).unwrap_or_default(),
        permit_numbers: c.permit_numbers(),
        new_permit_numbers: if c.permits.iter().all(|p| p.new_number.is_some())
            && !c.permits.is_empty()
        {
            c.permits
                .iter()
                .filter_map(|p| p.new_number.clone())
                .collect()
        } else {
            vec![]
        },
        outcome: outcome_pb(c.state.outcome()) as i32,
        sms_attempts: c.sms_attempts,
        answer_deadline: match c.state {
            State::AwaitAnswer { deadline, .. } => Some(to_proto_ts(deadline)),
            _ => None,
        },
        opened_at: Some(to_proto_ts(c.opened_at)),
        closed_at: c.closed_at.map(to_proto_ts),
        steps: steps.iter().map(step_pb).collect(),
        cursor,
    }
}

/// The proto counts.
pub fn counts_pb(c: &FunnelCounts) -> pb::FunnelCounts {
    pb::FunnelCounts {
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
    }
}

fn report_pb(r: &FunnelReport) -> pb::FunnelReport {
    pb::FunnelReport {
        pilot_id: r.pilot_id.clone(),
        date: Some(to_proto_date(r.date)),
        run_id: r.run_id.0.clone(),
        counts: Some(counts_pb(&r.counts)),
        complete: r.complete,
        generated_at: Some(to_proto_ts(r.generated_at)),
        run_state: run_state_pb(r.run_state) as i32,
    }
}

fn run_pb(r: &RunRecord, counts: &FunnelCounts) -> pb::Run {
    pb::Run {
        run_id: r.id.0.clone(),
        pilot_id: r.pilot_id.clone(),
        date: Some(to_proto_date(r.date)),
        state: run_state_pb(r.state) as i32,
        counts: Some(counts_pb(counts)),
        started_at: Some(to_proto_ts(r.started_at)),
        finished_at: r.finished_at.map(to_proto_ts),
        error: r.error.clone().unwrap_or_default(),
    }
}

/// The proto event, with its cursor.
pub fn event_pb(e: &EventRecord) -> pb::Event {
    pb::Event {
        cursor: event_cursor(e.seq),
        at: Some(to_proto_ts(e.at)),
        pilot_id: e.pilot_id.clone(),
        run_id: e.run_id.0.clone(),
        case_id: e.case_id.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
        what: Some(match &e.what {
            EventWhat::Step(h) => pb::event::What::CaseStep(step_pb(h)),
            EventWhat::RunState(s) => pb::event::What::RunState(run_state_pb(*s) as i32),
        }),
    }
}

fn event_cursor(seq: u64) -> String {
    format!("e{seq}")
}

fn parse_event_cursor(s: &str) -> Option<u64> {
    if s.is_empty() {
        return Some(0);
    }
    s.strip_prefix('e')?.parse().ok()
}

fn case_cursor(id: &CaseId) -> String {
    format!("c{}", hex::encode(id.0.as_bytes()))
}

fn parse_case_cursor(s: &str) -> Option<Option<CaseId>> {
    if s.is_empty() {
        return Some(None);
    }
    let bytes = hex::decode(s.strip_prefix('c')?).ok()?;
    String::from_utf8(bytes).ok().map(|id| Some(CaseId(id)))
}

fn blocking<T>(r: Result<T, SduError>) -> Result<T, Status> {
    r.map_err(|e| e.to_status())
}

#[tonic::async_trait]
impl pb::proactive_service_server::ProactiveService for ProactiveApi {
    async fn run_daily(
        &self,
        req: Request<pb::RunDailyRequest>,
    ) -> Result<Response<pb::RunDailyResponse>, Status> {
        let r = req.into_inner();
        if r.pilot_id.trim().is_empty() {
            return Err(invalid_field("pilot_id", "required", "MISSING_FIELD"));
        }
        let Some(d) = r.date.as_ref() else {
            return Err(invalid_field("date", "required", "MISSING_FIELD"));
        };
        let date = from_proto_date(d)
            .ok_or_else(|| invalid_field("date", "not a real date", "INVALID_DATE"))?;
        let (run, created) = self.handle.start_run(&r.pilot_id, date).await?;
        Ok(Response::new(pb::RunDailyResponse {
            run_id: run.id.0,
            existing: !created,
            state: run_state_pb(run.state) as i32,
        }))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        let id = RunId(req.into_inner().run_id);
        let run = blocking(self.handle.run(&id))?;
        let counts = blocking(self.handle.report_of(&run))?.counts;
        Ok(Response::new(run_pb(&run, &counts)))
    }

    type ListCasesStream = BoxStream<pb::Case>;

    async fn list_cases(
        &self,
        req: Request<pb::ListCasesRequest>,
    ) -> Result<Response<Self::ListCasesStream>, Status> {
        let r = req.into_inner();
        let by_id = !r.run_id.is_empty();
        let by_pilot = !r.pilot_id.is_empty() || r.date.is_some();
        let run = match (by_id, by_pilot) {
            (true, false) => blocking(self.handle.run(&RunId(r.run_id.clone())))?,
            (false, true) => {
                let date = r.date.as_ref().and_then(from_proto_date).ok_or_else(|| {
                    invalid_field(
                        "date",
                        "required with pilot_id, and a real date",
                        "INVALID_DATE",
                    )
                })?;
                if r.pilot_id.is_empty() {
                    return Err(invalid_field(
                        "pilot_id",
                        "required with date",
                        "MISSING_FIELD",
                    ));
                }
                blocking(self.handle.run_for(&r.pilot_id, date))?
            }
            _ => {
                return Err(invalid_field(
                    "run_id",
                    "give either run_id, or pilot_id and date",
                    "AMBIGUOUS_RUN",
                ));
            }
        };
        let after = parse_case_cursor(&r.cursor).ok_or_else(|| {
            invalid_field(
                "cursor",
                "not a cursor this method returned",
                "INVALID_CURSOR",
            )
        })?;
        let filter = filter_of(r.outcome());
        let limit = if r.limit == 0 {
            usize::MAX
        } else {
            r.limit as usize
        };
        let (tx, rx) = mpsc::channel(64);
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut after = after;
            let mut sent = 0usize;
            while sent < limit {
                let page =
                    match handle.cases(&run.id, filter, after.as_ref(), (limit - sent).min(200)) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_status())).await;
                            return;
                        }
                    };
                let Some(last) = page.last().map(|c| c.id.clone()) else {
                    return;
                };
                for c in page {
                    let cur = case_cursor(&c.id);
                    if tx.send(Ok(case_pb(&c, &[], cur))).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
                after = Some(last);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_case(
        &self,
        req: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::Case>, Status> {
        let id = CaseId(req.into_inner().case_id);
        let (c, steps) = blocking(self.handle.case(&id))?;
        Ok(Response::new(case_pb(&c, &steps, String::new())))
    }

    async fn get_report(
        &self,
        req: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::FunnelReport>, Status> {
        let r = req.into_inner();
        let date = r
            .date
            .as_ref()
            .and_then(from_proto_date)
            .ok_or_else(|| invalid_field("date", "required, a real date", "INVALID_DATE"))?;
        let rep = blocking(self.handle.report(&r.pilot_id, date))?;
        Ok(Response::new(report_pb(&rep)))
    }

    type WatchEventsStream = BoxStream<pb::Event>;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let from = parse_event_cursor(&req.into_inner().cursor).ok_or_else(|| {
            invalid_field(
                "cursor",
                "not a cursor this method returned",
                "INVALID_CURSOR",
            )
        })?;
        let mut live = blocking(self.handle.subscribe())?;
        let (tx, rx) = mpsc::channel(256);
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut last = from;
            // Replays the stored events after `last`; false when the caller is gone.
            async fn replay(
                handle: &SduHandle,
                tx: &mpsc::Sender<Result<pb::Event, Status>>,
                last: &mut u64,
            ) -> bool {
                loop {
                    let page = match handle.events_after(*last, 500) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_status())).await;
                            return false;
                        }
                    };
                    let n = page.len();
                    for e in page {
                        *last = e.seq;
                        if tx.send(Ok(event_pb(&e))).await.is_err() {
                            return false;
                        }
                    }
                    if n < 500 {
                        return true;
                    }
                }
            }
            if !replay(&handle, &tx, &mut last).await {
                return;
            }
            loop {
                let got = tokio::select! {
                    _ = handle.stopped() => return,
                    _ = tx.closed() => return,
                    r = live.recv() => r,
                };
                match got {
                    Ok(e) if e.seq <= last => {}
                    Ok(e) => {
                        if e.seq != last + 1 {
                            // Published out of order or missed: the store is the order.
                            if !replay(&handle, &tx, &mut last).await {
                                return;
                            }
                        }
                        if e.seq > last {
                            last = e.seq;
                            if tx.send(Ok(event_pb(&e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !replay(&handle, &tx, &mut last).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_event_cursor(&event_cursor(42)), Some(42));
        assert_eq!(parse_event_cursor(""), Some(0));
        assert_eq!(parse_event_cursor("x1"), None);
        let id = CaseId("sez-000:2026-02-03:ul:123".into());
        assert_eq!(parse_case_cursor(&case_cursor(&id)), Some(Some(id)));
        assert_eq!(parse_case_cursor(""), Some(None));
        assert_eq!(parse_case_cursor("czz"), None);
        assert_eq!(parse_case_cursor("sez"), None);
    }

    #[test]
    fn every_outcome_maps_to_its_filter_and_back() {
        for o in Outcome::ALL {
            assert_eq!(filter_of(outcome_pb(Some(o))), CaseFilter::Outcome(o));
        }
        assert_eq!(filter_of(outcome_pb(None)), CaseFilter::Open);
    }
}
