//! `kz.shep.v1.BusAdmin`: systems, routes and the audit log, for the `operator` system.
//!
//! Access goes through the same access matrix as every other call (the default topology
//! grants `BusAdmin` to `operator` only), and every admin call is audited like any other
//! (a `SubjectAccesses` query records the person it was about).

use std::sync::Arc;

use shep_proto::shep::{
    self, ListRoutesRequest, ListRoutesResponse, ListSystemsRequest, ListSystemsResponse,
    QueryAuditRequest, SubjectAccessesRequest, SystemInfo, VerifyAuditRequest, VerifyAuditResponse,
    bus_admin_server::BusAdmin,
};
use tonic::Code;

use crate::audit::{self, AuditRecord, Decision, Phase};
use crate::gate::{Call, CallGuard, Core, Refused};

/// The `BusAdmin` service.
pub struct Admin {
    core: Arc<Core>,
}

impl Admin {
    pub fn new(core: Arc<Core>) -> Self {
        Admin { core }
    }

    async fn gate<T>(
        &self,
        req: &tonic::Request<T>,
        method: &str,
        subject: Option<&str>,
    ) -> Result<CallGuard, tonic::Status> {
        let caller = req
            .extensions()
            .get::<shep_runtime::Caller>()
            .map(|c| c.system.as_str().to_owned());
        let headers = req.metadata().clone().into_headers();
        let path = format!("/kz.shep.v1.BusAdmin/{method}");
        let mut call = Call::new(&headers, caller.as_deref().unwrap_or(""), &path);
        if let Some(s) = subject {
            call.subjects = vec![s.to_owned()];
        }
        let mut guard = CallGuard::new(self.core.clone(), call);
        let checked = (|| {
            let caller = caller.as_deref().ok_or_else(|| {
                Refused::new(
                    Code::Unauthenticated,
                    "the client certificate names no system",
                    "NO_SYSTEM_IN_CERTIFICATE",
                    [],
                )
            })?;
            self.core
                .check_access(caller, &format!("kz.shep.v1.BusAdmin/{method}"))?;
            self.core.check_limits(caller)
        })();
        match checked {
            Ok(permit) => guard.hold(permit),
            Err(r) => return Err(guard.refuse(r).await),
        }
        if let Err(st) = guard.admit("ADMIN").await {
            guard.disarm();
            return Err(st);
        }
        Ok(guard)
    }

    fn path(&self) -> std::path::PathBuf {
        self.core.audit.path().to_owned()
    }
}

/// An audit record as the contract's message.
pub fn to_proto(r: &AuditRecord) -> shep::AuditRecord {
    shep::AuditRecord {
        seq: r.seq,
        message_id: r.message_id.clone(),
        correlation_id: r.correlation_id.clone(),
        caller: r.caller.clone(),
        method: r.method.clone(),
        subject: r.subject.clone(),
        consent_token_id: r.token_ids.clone(),
        decision: match r.decision {
            Decision::Allowed => shep::Decision::Allowed as i32,
            Decision::Refused => shep::Decision::Refused as i32,
        },
        reason: match r.phase {
            Phase::Decision => r.reason.clone(),
            // The contract has no phase field: a completion's reason says it.
            Phase::Completion | Phase::Call if r.reason == "COMPLETED" => r.reason.clone(),
            Phase::Completion | Phase::Call => format!("COMPLETED:{}", r.reason),
        },
        grpc_status: r.grpc_status,
        received_at: Some(prost_types::Timestamp {
            seconds: r.received_at_us.div_euclid(1_000_000),
            nanos: (r.received_at_us.rem_euclid(1_000_000) * 1000) as i32,
        }),
        duration_us: r.duration_us,
        request_bytes: r.request_bytes,
        response_bytes: r.response_bytes,
        hash: r.hash.clone(),
    }
}

type RecordStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<shep::AuditRecord, tonic::Status>> + Send>>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, audit::AuditError> + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .map_err(|e| {
            shep_runtime::status::error(Code::Unavailable, e.to_string(), "AUDIT_UNAVAILABLE", [])
        })
}

async fn finish<T>(guard: CallGuard, r: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
    match r {
        Ok(v) => {
            guard.complete(0, "COMPLETED", 0).await?;
            Ok(v)
        }
        Err(st) => {
            let reason = crate::gate::reason_of(&st);
            guard.complete(st.code() as i32, &reason, 0).await?;
            Err(st)
        }
    }
}

#[tonic::async_trait]
impl BusAdmin for Admin {
    async fn list_systems(
        &self,
        request: tonic::Request<ListSystemsRequest>,
    ) -> Result<tonic::Response<ListSystemsResponse>, tonic::Status> {
        let guard = self.gate(&request, "ListSystems", None).await?;
        let systems = self
            .core
            .settings
            .systems
            .iter()
            .map(|(id, s)| SystemInfo {
                system_id: id.clone(),
                description: s.description.clone(),
                endpoint: s.endpoint.clone().unwrap_or_default(),
            })
            .collect();
        finish(
            guard,
            Ok(tonic::Response::new(ListSystemsResponse { systems })),
        )
        .await
    }

    async fn list_routes(
        &self,
        request: tonic::Request<ListRoutesRequest>,
    ) -> Result<tonic::Response<ListRoutesResponse>, tonic::Status> {
        let guard = self.gate(&request, "ListRoutes", None).await?;
        let routes = self
            .core
            .routes
            .iter()
            .map(|(svc, up)| shep::Route {
                service: svc.to_owned(),
                system_id: up.system.clone(),
            })
            .collect();
        finish(
            guard,
            Ok(tonic::Response::new(ListRoutesResponse { routes })),
        )
        .await
    }

    type QueryAuditStream = RecordStream;

    async fn query_audit(
        &self,
        request: tonic::Request<QueryAuditRequest>,
    ) -> Result<tonic::Response<Self::QueryAuditStream>, tonic::Status> {
        let guard = self.gate(&request, "QueryAudit", None).await?;
        let q = request.into_inner();
        let after = if q.cursor.is_empty() {
            Ok(0)
        } else {
            q.cursor.parse::<u64>().map_err(|_| {
                shep_runtime::status::invalid_field(
                    "cursor",
                    "not a cursor this method returned (a record's seq)",
                    "SCE001",
                )
            })
        };
        let r = match after {
            Ok(after) => {
                let path = self.path();
                let caller = (!q.caller.is_empty()).then_some(q.caller);
                blocking(move || audit::query(&path, after, caller.as_deref(), q.limit)).await
            }
            Err(e) => Err(e),
        };
        let recs = finish(guard, r).await?;
        let items: Vec<_> = recs.iter().map(|r| Ok(to_proto(r))).collect();
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(items))))
    }

    type SubjectAccessesStream = RecordStream;

    async fn subject_accesses(
        &self,
        request: tonic::Request<SubjectAccessesRequest>,
    ) -> Result<tonic::Response<Self::SubjectAccessesStream>, tonic::Status> {
        let iin = request.get_ref().iin.clone();
        let valid = shep_domain::Iin::parse(&iin).is_ok();
        let guard = self
            .gate(&request, "SubjectAccesses", valid.then_some(iin.as_str()))
            .await?;
        let r = match shep_domain::Iin::parse(&iin) {
            Err(e) => Err(shep_runtime::status::invalid_field(
                "iin",
                format!("not a valid IIN: {e}"),
                "SCE001",
            )),
            Ok(_) => {
                let path = self.path();
                let i = iin.clone();
                blocking(move || audit::subject_accesses(&path, &i)).await
            }
        };
        let recs = finish(guard, r).await?;
        let items: Vec<_> = recs.iter().map(|r| Ok(to_proto(r))).collect();
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn verify_audit(
        &self,
        request: tonic::Request<VerifyAuditRequest>,
    ) -> Result<tonic::Response<VerifyAuditResponse>, tonic::Status> {
        let guard = self.gate(&request, "VerifyAudit", None).await?;
        let path = self.path();
        let r = blocking(move || audit::verify(&path)).await.map(|rep| {
            tonic::Response::new(VerifyAuditResponse {
                intact: rep.intact,
                records: rep.records,
                first_bad_seq: rep.first_bad_seq.unwrap_or(0),
                problem: rep.problem.unwrap_or_default(),
            })
        });
        finish(guard, r).await
    }
}
