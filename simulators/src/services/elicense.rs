//! e-license: `PermitRegistry` — permits by holder (one, or many organizations at once) and
//! by number, re-issue to a new holder name (idempotent by key), and the holders' personal
//! cabinets.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use shep_proto::elicense::permit_registry_server::PermitRegistry;
use shep_proto::elicense::{
    CabinetNotification, GetPermitRequest, Holder, HolderName, HolderPermits, ListCabinetNotificationsRequest,
    ListCabinetNotificationsResponse, ListPermitsByBinsRequest, ListPermitsByBinsResponse, ListPermitsRequest,
    ListPermitsResponse, Permit, PermitStatus, ReissueError, ReissueOrganizationPermitsRequest,
    ReissueOrganizationPermitsResponse, ReissuePermitRequest, ReissuePermitResponse, ReissueResult, holder, holder_name,
    reissue_result,
};
use shep_runtime::status::{error, invalid_field, not_found, parse_bin, parse_iin, reason};
use tonic::{Code, Request, Response, Status};

use super::common::{each, required};
use crate::catalog::{self, SERVICES};
use crate::country::{Country, HolderRef};
use crate::sim::Simulation;
use crate::state::permits::Reissue;
use crate::time::ts;
use crate::views;

/// Most BINs in one `ListPermitsByBins` call.
pub const MAX_BINS: usize = 1000;

/// The e-license simulator.
pub struct ELicense {
    pub sim: Arc<Simulation>,
}

/// A holder of a request, validated: its record, when the country has it.
enum Parsed {
    Org(shep_domain::Bin, Option<u32>),
    Person(shep_domain::Iin, Option<u32>),
}

impl Parsed {
    fn holder_ref(&self) -> Option<HolderRef> {
        match self {
            Parsed::Org(_, o) => o.map(HolderRef::Org),
            Parsed::Person(_, p) => p.map(HolderRef::Person),
        }
    }

    fn key(&self) -> String {
        match self {
            Parsed::Org(b, _) => b.to_string(),
            Parsed::Person(i, _) => i.to_string(),
        }
    }
}

fn parse_holder(c: &Country, h: Option<&Holder>) -> Result<Parsed, Status> {
    match h.and_then(|h| h.id.as_ref()) {
        None => Err(invalid_field("holder", "required: a BIN or an IIN", "MISSING_FIELD")),
        Some(holder::Id::Bin(b)) => {
            let bin = parse_bin("holder.bin", b)?;
            Ok(Parsed::Org(bin, c.org_index(&bin)))
        }
        Some(holder::Id::Iin(i)) => {
            let iin = parse_iin("holder.iin", i)?;
            Ok(Parsed::Person(iin, c.person_index(&iin)))
        }
    }
}

fn check_new_name(holder: &Parsed, name: Option<&HolderName>) -> Result<HolderName, Status> {
    let field = "new_holder_name";
    let n = name.and_then(|n| n.name.as_ref()).ok_or_else(|| invalid_field(field, "required", "MISSING_FIELD"))?;
    match (holder, n) {
        (Parsed::Org(..), holder_name::Name::Organization(t)) => {
            if t.ru.trim().is_empty() || t.kk.trim().is_empty() {
                return Err(invalid_field(
                    &format!("{field}.organization"),
                    "both ru and kk are required",
                    "MISSING_FIELD",
                ));
            }
        }
        (Parsed::Person(..), holder_name::Name::Person(p)) => {
            if p.surname.trim().is_empty() || p.name.trim().is_empty() {
                return Err(invalid_field(
                    &format!("{field}.person"),
                    "surname and name are required",
                    "MISSING_FIELD",
                ));
            }
        }
        _ => {
            return Err(invalid_field(
                field,
                "the kind of name must match the holder: an organization's name for a BIN, a person's for an IIN",
                "HOLDER_KIND_MISMATCH",
            ));
        }
    }
    Ok(HolderName { name: Some(n.clone()) })
}

/// The permits of one holder of the services asked for (every service when none), oldest
/// issue first: what `ListPermits` and `ListPermitsByBins` answer.
fn permits_of(c: &Country, st: &crate::state::State, h: HolderRef, services: &[String]) -> Vec<Permit> {
    st.permits
        .of_holder(c, h)
        .into_iter()
        .filter_map(|i| views::permit(c, st, i))
        .filter(|p| services.is_empty() || services.contains(&p.service_code))
        .collect()
}

fn fingerprint(r: &ReissuePermitRequest) -> String {
    let d = Sha256::digest(format!("{r:?}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl ELicense {
    /// Re-issues a permit (`at` prefixes the request's field names in errors: "" or
    /// "items[3]."); the single and the batch method answer with it.
    fn reissue(&self, at: &str, r: &ReissuePermitRequest) -> Result<ReissuePermitResponse, Status> {
        required(&format!("{at}idempotency_key"), &r.idempotency_key)?;
        required(&format!("{at}permit_number"), &r.permit_number)?;
        let c = self.sim.country();
        let holder = parse_holder(c, r.holder.as_ref())?;
        let new_name = check_new_name(&holder, r.new_holder_name.as_ref())?;
        let fp = fingerprint(r);
        let now = self.sim.now();
        let today = self.sim.current_day();
        let mut st = self.sim.state();
        let respond = |st: &crate::state::State, old: u32, new: u32, replayed: bool| {
            ReissuePermitResponse {
                new_permit: views::permit(c, st, new),
                old_permit: views::permit(c, st, old),
                replayed,
            }
        };
        if let Some(k) = st.permits.key(&r.idempotency_key) {
            if k.fingerprint != fp {
                return Err(error(
                    Code::AlreadyExists,
                    "this idempotency key was used with a different request",
                    "IDEMPOTENCY_KEY_REUSED",
                    [("idempotency_key", r.idempotency_key.clone())],
                ));
            }
            let (old, new) = (k.old, k.new);
            return Ok(respond(&st, old, new, true));
        }
        let old = st.permits.find(c, &r.permit_number).ok_or_else(|| not_found("permit", &r.permit_number))?;
        let permit = st.permits.get(c, old).ok_or_else(|| not_found("permit", &r.permit_number))?;
        if holder.holder_ref() != Some(permit.holder) {
            return Err(error(
                Code::FailedPrecondition,
                format!("permit {} is not held by {}", r.permit_number, holder.key()),
                "NOT_THE_HOLDER",
                [("permit_number", r.permit_number.clone()), ("holder", holder.key())],
            ));
        }
        if permit.status != PermitStatus::Active {
            return Err(error(
                Code::FailedPrecondition,
                format!("permit {} is {}, not ACTIVE", r.permit_number, permit.status.as_str_name()),
                "PERMIT_NOT_ACTIVE",
                [("permit_number", r.permit_number.clone()), ("status", permit.status.as_str_name().to_owned())],
            ));
        }
        let service = SERVICES[permit.service as usize];
        let service_name = match service.lang {
            catalog::Lang::Ru => service.ru,
            catalog::Lang::Kk => service.kk,
        };
        let reissue =
            Reissue { old, holder_name: new_name, issued: today, key: &r.idempotency_key, fingerprint: fp, now };
        let new = st
            .permits
            .reissue(c, reissue, |o, n| catalog::reissue_notification(service.lang, o, n, service_name))
            .ok_or_else(|| not_found("permit", &r.permit_number))?;
        tracing::info!(old = %r.permit_number, key = %r.idempotency_key, reason = %r.reason, "permit re-issued");
        Ok(respond(&st, old, new, false))
    }
}

#[tonic::async_trait]
impl PermitRegistry for ELicense {
    async fn list_permits(&self, req: Request<ListPermitsRequest>) -> Result<Response<ListPermitsResponse>, Status> {
        let r = req.into_inner();
        let c = self.sim.country();
        let holder = parse_holder(c, r.holder.as_ref())?;
        let Some(h) = holder.holder_ref() else {
            return Ok(Response::new(ListPermitsResponse { permits: vec![] }));
        };
        let st = self.sim.state();
        let permits = permits_of(c, &st, h, &r.service_codes);
        Ok(Response::new(ListPermitsResponse { permits }))
    }

    async fn list_permits_by_bins(
        &self,
        req: Request<ListPermitsByBinsRequest>,
    ) -> Result<Response<ListPermitsByBinsResponse>, Status> {
        let r = req.into_inner();
        if r.bins.len() > MAX_BINS {
            return Err(invalid_field(
                "bins",
                format!("give at most {MAX_BINS} BINs, got {}", r.bins.len()),
                "INVALID_BATCH_SIZE",
            ));
        }
        let c = self.sim.country();
        // Every BIN is checked before any is looked up: a bad one fails the whole call.
        let orgs = r
            .bins
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let field = format!("bins[{i}]");
                if b.is_empty() {
                    return Err(invalid_field(&field, "required: a BIN", "MISSING_FIELD"));
                }
                parse_bin(&field, b).map(|bin| c.org_index(&bin))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let st = self.sim.state();
        let holders = r
            .bins
            .into_iter()
            .zip(orgs)
            .map(|(bin, org)| HolderPermits {
                permits: org.map(|o| permits_of(c, &st, HolderRef::Org(o), &r.service_codes)).unwrap_or_default(),
                bin,
            })
            .collect();
        Ok(Response::new(ListPermitsByBinsResponse { holders }))
    }

    async fn get_permit(&self, req: Request<GetPermitRequest>) -> Result<Response<Permit>, Status> {
        let number = &req.get_ref().permit_number;
        required("permit_number", number)?;
        let c = self.sim.country();
        let st = self.sim.state();
        let i = st.permits.find(c, number).ok_or_else(|| not_found("permit", number))?;
        views::permit(c, &st, i).map(Response::new).ok_or_else(|| not_found("permit", number))
    }

    async fn reissue_permit(
        &self,
        req: Request<ReissuePermitRequest>,
    ) -> Result<Response<ReissuePermitResponse>, Status> {
        self.reissue("", &req.into_inner()).map(Response::new)
    }

    async fn reissue_organization_permits(
        &self,
        req: Request<ReissueOrganizationPermitsRequest>,
    ) -> Result<Response<ReissueOrganizationPermitsResponse>, Status> {
        let results = each("items", req.into_inner().items, |f, it| {
            let single = ReissuePermitRequest {
                permit_number: it.permit_number.clone(),
                holder: Some(Holder { id: Some(holder::Id::Bin(it.holder_bin.clone())) }),
                new_holder_name: Some(HolderName { name: it.new_name.clone().map(holder_name::Name::Organization) }),
                idempotency_key: it.idempotency_key.clone(),
                reason: it.reason.clone(),
            };
            self.reissue(&format!("{f}."), &single)
        })?
        .into_iter()
        .map(|(_, r)| {
            let result = match r {
                Ok(r) => reissue_result::Result::Reissued(r),
                Err(s) => reissue_result::Result::Error(ReissueError {
                    code: s.code() as i32,
                    message: s.message().to_owned(),
                    reason: reason(&s),
                }),
            };
            ReissueResult { result: Some(result) }
        })
        .collect();
        Ok(Response::new(ReissueOrganizationPermitsResponse { results }))
    }

    async fn list_cabinet_notifications(
        &self,
        req: Request<ListCabinetNotificationsRequest>,
    ) -> Result<Response<ListCabinetNotificationsResponse>, Status> {
        let c = self.sim.country();
        let holder = parse_holder(c, req.get_ref().holder.as_ref())?;
        let Some(h) = holder.holder_ref() else {
            return Ok(Response::new(ListCabinetNotificationsResponse { notifications: vec![] }));
        };
        let st = self.sim.state();
        let notifications = st
            .permits
            .cabinet(h)
            .into_iter()
            .map(|n| CabinetNotification {
                id: n.id.clone(),
                created_at: Some(ts(n.created_at)),
                title: n.title.clone(),
                text: n.text.clone(),
                permit_number: n.permit_number.clone(),
            })
            .collect();
        Ok(Response::new(ListCabinetNotificationsResponse { notifications }))
    }
}
