//! `kz.shep.sim.v1.Scenario`, served by every simulator node: injections (applied by the
//! nodes they concern, `applied` false elsewhere), consents, citizens' scripts, faults of
//! this node, reset, the clock, and the export of the current state.
//!
//! The nodes of a process share one simulation, so an injection applied through one node
//! is seen by all; injections are idempotent by effect, so sending the same one to every
//! node applies it once.

use std::sync::Arc;

use shep_proto::shep::FullName;
use shep_proto::sim::scenario_server::Scenario;
use shep_proto::sim::*;
use shep_proto::gbdfl::LegalCapacity;
use shep_proto::zags::ActKind;
use shep_runtime::status::{error, invalid_field, not_found, parse_bin, parse_iin};
use tonic::{Code, Request, Response, Status};

use super::common::{Feed, date, date_or, required};
use crate::clock::ClockError;
use crate::country::{CapacityKind, Court, Phone, Prison};
use crate::faults::{ALL_METHODS, Fault};
use crate::registry::Registry;
use crate::sim::Simulation;
use crate::state::sms::Script;
use crate::time::ts;
use crate::views;

/// The scenario control of one node.
pub struct ScenarioService {
    pub registry: Registry,
    pub sim: Arc<Simulation>,
}

impl ScenarioService {
    fn concerns(&self, registries: &[Registry]) -> bool {
        registries.contains(&self.registry)
    }

    fn person(&self, iin: &shep_domain::Iin) -> Result<u32, Status> {
        self.sim.country().person_index(iin).ok_or_else(|| not_found("person", &iin.to_string()))
    }

    fn act_id(&self, injected: usize) -> String {
        if self.registry == Registry::Zags {
            views::act_id((self.sim.country().acts().len() + injected + 1) as u32)
        } else {
            String::new()
        }
    }
}

fn check_full_name(field: &str, n: Option<&FullName>) -> Result<FullName, Status> {
    let n = n.ok_or_else(|| invalid_field(field, "required", "MISSING_FIELD"))?;
    if n.surname.trim().is_empty() || n.name.trim().is_empty() {
        return Err(invalid_field(field, "surname and name are required", "MISSING_FIELD"));
    }
    Ok(n.clone())
}

/// The fault of a request, validated.
fn fault(r: &SetFaultRequest) -> Result<Fault, Status> {
    if !(0..=16).contains(&r.code) {
        return Err(invalid_field("code", format!("{} is not a gRPC status code (0-16)", r.code), "INVALID_CODE"));
    }
    if !r.rate.is_finite() || !(0.0..=1.0).contains(&r.rate) {
        return Err(invalid_field("rate", format!("{} is not between 0 and 1", r.rate), "INVALID_RATE"));
    }
    let start = r.outage_start.map(|t| t.seconds);
    let end = r.outage_end.map(|t| t.seconds);
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        return Err(invalid_field("outage_end", "the outage ends before it starts", "INVALID_WINDOW"));
    }
    Ok(Fault {
        code: Code::from_i32(r.code),
        rate: r.rate,
        latency_ms: r.latency_ms,
        jitter_ms: r.latency_jitter_ms,
        outage: start.map(|s| (s, end)),
    })
}

#[tonic::async_trait]
impl Scenario for ScenarioService {
    type ExportStream = Feed<ExportChunk>;

    async fn inject_rename(&self, req: Request<InjectRenameRequest>) -> Result<Response<InjectRenameResponse>, Status> {
        let r = req.into_inner();
        let bin = parse_bin("bin", &r.bin)?;
        let new = r.new_name.ok_or_else(|| invalid_field("new_name", "required", "MISSING_FIELD"))?;
        if new.ru.trim().is_empty() || new.kk.trim().is_empty() {
            return Err(invalid_field("new_name", "both ru and kk are required", "MISSING_FIELD"));
        }
        let day = date_or("date", r.date.as_ref(), self.sim.current_day())?;
        if !self.concerns(&[Registry::GbdUl]) {
            return Ok(Response::new(InjectRenameResponse { applied: false, old_name: None }));
        }
        let c = self.sim.country();
        let o = c.org_index(&bin).ok_or_else(|| not_found("organization", &bin.to_string()))?;
        let old = self.sim.state().orgs.rename(c, o, new, day);
        self.sim.announce();
        Ok(Response::new(InjectRenameResponse { applied: true, old_name: Some(old) }))
    }

    async fn inject_name_change(
        &self,
        req: Request<InjectNameChangeRequest>,
    ) -> Result<Response<InjectNameChangeResponse>, Status> {
        let r = req.into_inner();
        let iin = parse_iin("iin", &r.iin)?;
        let new = check_full_name("new_name", r.new_name.as_ref())?;
        let kind = match ActKind::try_from(r.kind) {
            Ok(ActKind::Unspecified) => ActKind::NameChange,
            Ok(
                k @ (ActKind::NameChange
                | ActKind::Marriage
                | ActKind::Divorce
                | ActKind::Adoption
                | ActKind::Paternity),
            ) => k,
            _ => {
                return Err(invalid_field(
                    "kind",
                    "must be NAME_CHANGE, MARRIAGE, DIVORCE, ADOPTION or PATERNITY",
                    "INVALID_ACT_KIND",
                ));
            }
        };
        let day = date_or("date", r.date.as_ref(), self.sim.current_day())?;
        if !self.concerns(&[Registry::Zags, Registry::GbdFl]) {
            return Ok(Response::new(InjectNameChangeResponse {
                applied: false,
                act_id: String::new(),
                old_name: None,
            }));
        }
        let p = self.person(&iin)?;
        let rec = self.sim.state().people.change_name(self.sim.country(), p, new, kind, day);
        self.sim.announce();
        Ok(Response::new(InjectNameChangeResponse {
            applied: true,
            act_id: self.act_id(rec.act),
            old_name: rec.old_name,
        }))
    }

    async fn inject_death(&self, req: Request<InjectDeathRequest>) -> Result<Response<InjectDeathResponse>, Status> {
        let r = req.into_inner();
        let iin = parse_iin("iin", &r.iin)?;
        let day = date_or("date", r.date.as_ref(), self.sim.current_day())?;
        if !self.concerns(&[Registry::Zags, Registry::GbdFl]) {
            return Ok(Response::new(InjectDeathResponse { applied: false, act_id: String::new() }));
        }
        let p = self.person(&iin)?;
        let rec = self.sim.state().people.record_death(p, day);
        self.sim.announce();
        Ok(Response::new(InjectDeathResponse { applied: true, act_id: self.act_id(rec.act) }))
    }

    async fn inject_imprisonment(
        &self,
        req: Request<InjectImprisonmentRequest>,
    ) -> Result<Response<InjectImprisonmentResponse>, Status> {
        let r = req.into_inner();
        let iin = parse_iin("iin", &r.iin)?;
        let from = date_or("from", r.from.as_ref(), self.sim.current_day())?;
        let to = r.to.as_ref().map(|d| date("to", d)).transpose()?;
        if to.is_some_and(|t| t < from) {
            return Err(invalid_field("to", "the release is before the start of the sentence", "INVALID_RANGE"));
        }
        if !self.concerns(&[Registry::GbdFl]) {
            return Ok(Response::new(InjectImprisonmentResponse { applied: false }));
        }
        let p = self.person(&iin)?;
        self.sim.state().people.imprison(p, Prison { from, to });
        Ok(Response::new(InjectImprisonmentResponse { applied: true }))
    }

    async fn inject_move_abroad(
        &self,
        req: Request<InjectMoveAbroadRequest>,
    ) -> Result<Response<InjectMoveAbroadResponse>, Status> {
        let r = req.into_inner();
        let iin = parse_iin("iin", &r.iin)?;
        let cc = &r.country;
        if cc.len() != 2 || !cc.bytes().all(|b| b.is_ascii_uppercase()) || cc == "KZ" {
            return Err(invalid_field(
                "country",
                "an ISO 3166-1 alpha-2 code other than KZ (\"DE\")",
                "INVALID_COUNTRY",
            ));
        }
        let since = date_or("since", r.since.as_ref(), self.sim.current_day())?;
        if !self.concerns(&[Registry::GbdFl]) {
            return Ok(Response::new(InjectMoveAbroadResponse { applied: false }));
        }
        let p = self.person(&iin)?;
        self.sim.state().people.move_abroad(p, cc.clone(), since);
        Ok(Response::new(InjectMoveAbroadResponse { applied: true }))
    }

    async fn inject_incapacity(
        &self,
        req: Request<InjectIncapacityRequest>,
    ) -> Result<Response<InjectIncapacityResponse>, Status> {
        let r = req.into_inner();
        let iin = parse_iin("iin", &r.iin)?;
        let kind = match LegalCapacity::try_from(r.capacity) {
            Ok(LegalCapacity::Unspecified | LegalCapacity::Incapable) => CapacityKind::Incapable,
            Ok(LegalCapacity::Limited) => CapacityKind::Limited,
            _ => {
                return Err(invalid_field(
                    "capacity",
                    "must be LEGAL_CAPACITY_INCAPABLE or LEGAL_CAPACITY_LIMITED",
                    "INVALID_CAPACITY",
                ));
            }
        };
        let effective = date_or("effective", r.effective.as_ref(), self.sim.current_day())?;
        if !self.concerns(&[Registry::GbdFl]) {
            return Ok(Response::new(InjectIncapacityResponse { applied: false }));
        }
        let p = self.person(&iin)?;
        // The decision is dated the day it takes effect; its number is derived from the person.
        let court = Court { decision: effective, effective, number: 1 + p % 9999 };
        self.sim.state().people.set_capacity(p, kind, court);
        Ok(Response::new(InjectIncapacityResponse { applied: true }))
    }

    async fn set_phone(&self, req: Request<SetPhoneRequest>) -> Result<Response<SetPhoneResponse>, Status> {
        let r = req.into_inner();
        let iin = parse_iin("iin", &r.iin)?;
        let phone = r.phone.trim();
        let valid = phone.len() == 12 && phone.starts_with("+7") && phone[2..].bytes().all(|b| b.is_ascii_digit());
        if !phone.is_empty() && !valid {
            return Err(invalid_field("phone", "\"+7\" and ten digits (\"+77011234567\"), or empty", "INVALID_PHONE"));
        }
        if !self.concerns(&[Registry::Bmg]) {
            return Ok(Response::new(SetPhoneResponse { applied: false }));
        }
        let p = self.person(&iin)?;
        let now = self.sim.now();
        let phone = (!phone.is_empty()).then(|| Phone { number: phone.to_owned(), registered_at: now });
        self.sim.state().people.set_phone(p, phone);
        Ok(Response::new(SetPhoneResponse { applied: true }))
    }

    async fn set_consent(&self, req: Request<SetConsentRequest>) -> Result<Response<SetConsentResponse>, Status> {
        let r = req.into_inner();
        let subject = parse_iin("subject", &r.subject)?;
        required("consumer", &r.consumer)?;
        required("scope", &r.scope)?;
        if !self.concerns(&[Registry::Kdp]) {
            return Ok(Response::new(SetConsentResponse { applied: false }));
        }
        let now = self.sim.now();
        {
            let mut st = self.sim.state();
            if r.granted {
                st.consents.grant(subject, &r.consumer, &r.scope, now, None);
            } else {
                st.consents.revoke(self.sim.country(), subject, &r.consumer, &r.scope, now);
            }
        }
        self.sim.announce();
        Ok(Response::new(SetConsentResponse { applied: true }))
    }

    async fn set_citizen_answer(
        &self,
        req: Request<SetCitizenAnswerRequest>,
    ) -> Result<Response<SetCitizenAnswerResponse>, Status> {
        let r = req.into_inner();
        let iin = parse_iin("iin", &r.iin)?;
        if !self.concerns(&[Registry::Pep]) {
            return Ok(Response::new(SetCitizenAnswerResponse { applied: false }));
        }
        let script = Script { answer: (!r.no_answer).then_some(r.answer), delay_secs: r.delay_seconds };
        self.sim.state().sms.script(iin, script);
        Ok(Response::new(SetCitizenAnswerResponse { applied: true }))
    }

    async fn set_fault(&self, req: Request<SetFaultRequest>) -> Result<Response<SetFaultResponse>, Status> {
        let r = req.into_inner();
        required("method", &r.method)?;
        let f = fault(&r)?;
        let method = if r.method == ALL_METHODS { ALL_METHODS } else { r.method.as_str() };
        let methods = self.sim.faults().set(self.registry, method, f);
        tracing::info!(registry = %self.registry, method, methods, "fault set");
        Ok(Response::new(SetFaultResponse { methods }))
    }

    async fn reset(&self, _req: Request<ResetRequest>) -> Result<Response<ResetResponse>, Status> {
        let now = self.sim.reset();
        tracing::info!(registry = %self.registry, "simulation reset");
        Ok(Response::new(ResetResponse { now: Some(ts(now)) }))
    }

    async fn get_clock(&self, _req: Request<GetClockRequest>) -> Result<Response<GetClockResponse>, Status> {
        Ok(Response::new(GetClockResponse { now: Some(ts(self.sim.now())) }))
    }

    async fn advance_clock(&self, req: Request<AdvanceClockRequest>) -> Result<Response<AdvanceClockResponse>, Status> {
        let now = self.sim.clock().advance(req.get_ref().seconds);
        Ok(Response::new(AdvanceClockResponse { now: Some(ts(now)) }))
    }

    async fn export(&self, _req: Request<ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        tracing::info!(registry = %self.registry, "export started");
        Ok(Response::new(crate::export::stream(self.sim.clone())))
    }

    async fn set_clock(&self, req: Request<SetClockRequest>) -> Result<Response<SetClockResponse>, Status> {
        let to = req.get_ref().now.ok_or_else(|| invalid_field("now", "required", "MISSING_FIELD"))?;
        match self.sim.clock().set(to.seconds) {
            Ok(now) => Ok(Response::new(SetClockResponse { now: Some(ts(now)) })),
            Err(e @ ClockError::Backwards { now, .. }) => Err(error(
                Code::FailedPrecondition,
                e.to_string(),
                "CLOCK_BACKWARDS",
                [("now", crate::time::rfc3339(now))],
            )),
        }
    }
}
