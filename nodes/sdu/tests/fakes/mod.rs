//! Minimal fake upstream services standing in for "the bus": GBD UL, GBD FL, ZAGS,
//! e-license, PEP and KDP in one mTLS node. What they answer comes from a [`Country`];
//! what SDU did to them is kept in [`Records`] (raw calls, effective SMS and re-issues,
//! replays), so tests can check idempotency and resumption.
//!
//! Shared by the integration tests and the benchmark (`#[path]`-included there).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use shep_proto::{elicense, gbdfl, gbdul, kdp, pep, shep, zags};
use shep_runtime::{NodeBuilder, NodeConfig, RunningNode, Shutdown};
use shep_sdu::{Clock, ManualClock};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake registries know. Everything by value so that a synthetic country can
/// compute it on the fly.
pub trait Country: Send + Sync + 'static {
    /// The `idx`-th name change of a date, if any.
    fn name_change(&self, date: &shep::Date, idx: usize) -> Option<gbdul::NameChange>;
    /// The `idx`-th civil act of a date, if any (whatever its kind).
    fn act(&self, date: &shep::Date, idx: usize) -> Option<zags::CivilAct>;
    /// An organization.
    fn organization(&self, bin: &str) -> Option<gbdul::Organization>;
    /// A person.
    fn person(&self, iin: &str) -> Option<gbdfl::Person>;
    /// The acts naming a person.
    fn person_acts(&self, iin: &str) -> Vec<zags::CivilAct>;
    /// The permits of a holder (BIN or IIN), every status and service.
    fn permits(&self, holder: &str) -> Vec<elicense::Permit>;
    /// Whether the person consents to SDU for a scope.
    fn consents(&self, iin: &str, scope: &str) -> bool;
    /// Whether BMG has the person's phone.
    fn has_phone(&self, iin: &str) -> bool;
    /// What the recipient answers to SMS `attempt`, at once; `None`: silence.
    fn answer(&self, iin: &str, attempt: u32) -> Option<String>;
    /// A fault for PEP `Notify` of this recipient (`call_no` counts their calls from 1).
    fn notify_fault(&self, iin: &str, call_no: u32) -> Option<Status> {
        let _ = (iin, call_no);
        None
    }
}

/// What SDU did.
#[derive(Default, Debug)]
pub struct Records {
    /// Every Notify call: (case, attempt, iin).
    pub notify_calls: Vec<(String, u32, String)>,
    /// Notify calls (also when lean).
    pub notify_count: u64,
    /// ReissuePermit calls (also when lean).
    pub reissue_count: u64,
    /// Notify calls per recipient (for faults).
    pub notify_by_iin: HashMap<String, u32>,
    /// SMS actually sent: (case, attempt) → (sms id, iin, text).
    pub sent: HashMap<(String, u32), (String, String, String)>,
    /// Notify calls that repeated an SMS already sent.
    pub notify_replays: u32,
    /// SMS whose Notify answer went (or is going) back to the caller: (case, attempt).
    pub acked: HashSet<(String, u32)>,
    /// Every ReissuePermit call key.
    pub reissue_calls: Vec<String>,
    /// Re-issues actually done: key → (old permit, new permit).
    pub reissued: HashMap<String, (String, String)>,
    /// ReissuePermit calls that repeated one already done.
    pub reissue_replays: u32,
    /// Permits re-issued (old numbers): none twice.
    pub reissued_permits: HashSet<String>,
    /// The answers PEP holds: (case, attempt, iin, text, sms id).
    pub answers: Vec<(String, u32, String, String, String)>,
    /// StreamNameChanges calls with their start cursor.
    pub diff_streams: Vec<String>,
    /// e-license `ListPermits` calls.
    pub list_permits_calls: u64,
    /// e-license `ListPermitsByBins` calls (failed ones included), and the BINs they asked
    /// for in all.
    pub by_bins_calls: u64,
    pub by_bins_asked: u64,
    /// Personal-data calls without a valid token (should stay empty).
    pub missing_tokens: Vec<String>,
    /// Subjects asked for in single look-ups (`IssueToken`, `GetPerson`, `GetPersonActs`)
    /// and in batch ones (`IssueTokens`, `GetPersons`, `GetActsOfPersons`), and the batch
    /// calls.
    pub single_lookups: u64,
    pub batched_lookups: u64,
    pub batch_calls: u64,
    /// The sizes of the batch look-ups refused as a whole (a subject's consent revoked).
    pub refused_batches: Vec<usize>,
    /// The sizes of the `ReissueOrganizationPermits` calls.
    pub reissue_batches: Vec<usize>,
    /// The sizes of the PEP `NotifyMany` calls, and of those refused as a whole.
    pub notify_batches: Vec<usize>,
    pub refused_notify_batches: Vec<usize>,
}

/// The fakes' shared state.
pub struct Fakes {
    pub country: Arc<dyn Country>,
    pub clock: Arc<ManualClock>,
    pub records: Mutex<Records>,
    answers_tx: watch::Sender<usize>,
    /// While `Some(n)`, the answers to Notify calls beyond the n-th are held (after the SMS
    /// is sent), to keep calls in flight.
    pub notify_gate: watch::Sender<Option<usize>>,
    /// A pause before each Notify and ReissuePermit, in milliseconds.
    pub call_delay_ms: u64,
    /// Keep counters only, no per-call records (the benchmark, to measure SDU's memory).
    pub lean: bool,
    /// While set, GBD UL's `StreamNameChanges` answers UNAVAILABLE.
    pub diff_down: std::sync::atomic::AtomicBool,
    /// The next this many e-license `ListPermitsByBins` calls answer UNAVAILABLE.
    pub by_bins_failures: std::sync::atomic::AtomicU32,
    /// A pause, in milliseconds, before each batch look-up (`IssueTokens`, `GetPersons`,
    /// `GetActsOfPersons`): the time a real registry takes, during which the next batch fills.
    pub batch_delay_ms: std::sync::atomic::AtomicU64,
    /// The same before each `NotifyMany`.
    pub notify_batch_delay_ms: std::sync::atomic::AtomicU64,
    /// Subjects whose consent is revoked after their token was issued: a personal-data call
    /// about them is refused (`CONSENT_REVOKED`, as the bus refuses it), a batch as a whole.
    pub revoked: Mutex<HashSet<String>>,
}

impl Fakes {
    pub fn new(country: Arc<dyn Country>, clock: Arc<ManualClock>) -> Arc<Self> {
        Arc::new(Fakes {
            country,
            clock,
            records: Mutex::new(Records::default()),
            answers_tx: watch::channel(0).0,
            notify_gate: watch::channel(None).0,
            call_delay_ms: 0,
            lean: false,
            diff_down: Default::default(),
            by_bins_failures: Default::default(),
            batch_delay_ms: Default::default(),
            notify_batch_delay_ms: Default::default(),
            revoked: Default::default(),
        })
    }

    pub fn with_delay(
        country: Arc<dyn Country>,
        clock: Arc<ManualClock>,
        call_delay_ms: u64,
    ) -> Arc<Self> {
        Arc::new(Fakes {
            country,
            clock,
            records: Mutex::new(Records::default()),
            answers_tx: watch::channel(0).0,
            notify_gate: watch::channel(None).0,
            call_delay_ms,
            lean: false,
            diff_down: Default::default(),
            by_bins_failures: Default::default(),
            batch_delay_ms: Default::default(),
            notify_batch_delay_ms: Default::default(),
            revoked: Default::default(),
        })
    }

    /// For the benchmark: no delay, counters only.
    pub fn lean(country: Arc<dyn Country>, clock: Arc<ManualClock>) -> Arc<Self> {
        Arc::new(Fakes {
            country,
            clock,
            records: Mutex::new(Records::default()),
            answers_tx: watch::channel(0).0,
            notify_gate: watch::channel(None).0,
            call_delay_ms: 0,
            lean: true,
            diff_down: Default::default(),
            by_bins_failures: Default::default(),
            batch_delay_ms: Default::default(),
            notify_batch_delay_ms: Default::default(),
            revoked: Default::default(),
        })
    }

    pub fn rec(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap()
    }

    fn ts(&self) -> prost_types::Timestamp {
        let t = self.clock.now();
        prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        }
    }

    /// Adds an answer as if a citizen typed it.
    pub fn push_answer(&self, case_id: &str, attempt: u32, iin: &str, text: &str, sms_id: &str) {
        let n = {
            let mut r = self.rec();
            r.answers.push((
                case_id.into(),
                attempt,
                iin.into(),
                text.into(),
                sms_id.into(),
            ));
            r.answers.len()
        };
        self.answers_tx.send_replace(n);
    }

    fn check_token<T>(
        &self,
        req: &Request<T>,
        iin: &str,
        scope: &str,
        method: &str,
    ) -> Result<(), Status> {
        let revoked = self.revoked.lock().unwrap();
        if revoked.contains(iin) || revoked.contains(&format!("{iin}:{scope}")) {
            return Err(shep_runtime::status::error(
                tonic::Code::PermissionDenied,
                format!("the consent of {iin} was revoked"),
                "CONSENT_REVOKED",
                [],
            ));
        }
        // "tok:IIN:SCOPE SCOPE...": the subject matches and one of the scopes is this one;
        // a batch call carries one such token per subject.
        let ok = req
            .metadata()
            .get_all(shep_consent::METADATA_KEY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|t| t.strip_prefix("tok:"))
            .filter_map(|t| t.split_once(':'))
            .any(|(who, scopes)| who == iin && scopes.split(' ').any(|s| s == scope));
        if ok {
            Ok(())
        } else {
            self.rec()
                .missing_tokens
                .push(format!("{method} {iin} {scope}"));
            Err(shep_runtime::status::error(
                tonic::Code::PermissionDenied,
                "no consent token",
                "CONSENT_TOKEN_MISSING",
                [],
            ))
        }
    }

    /// A batch look-up of personal data, counted and paused; as the bus, a subject without
    /// its token refuses the whole call.
    async fn batch_look_up<T>(
        &self,
        req: &Request<T>,
        iins: &[String],
        scope: &str,
        method: &str,
    ) -> Result<(), Status> {
        {
            let mut r = self.rec();
            r.batch_calls += 1;
            r.batched_lookups += iins.len() as u64;
        }
        self.batch_pause().await;
        for iin in iins {
            self.check_token(req, iin, scope, method)
                .inspect_err(|_| self.rec().refused_batches.push(iins.len()))?;
        }
        Ok(())
    }

    async fn batch_pause(&self) {
        let ms = self.batch_delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    /// A token of the subject for the scopes (one or several separated by spaces: one
    /// token for all, as KDP issues it), or KDP's refusal.
    fn token(&self, subject: &str, scope: &str) -> Result<kdp::IssueTokenResponse, Status> {
        if let Some(s) = scope
            .split_whitespace()
            .find(|s| !self.country.consents(subject, s))
        {
            return Err(shep_runtime::status::error(
                tonic::Code::FailedPrecondition,
                format!("no consent of {subject} for {s}"),
                "NO_CONSENT",
                [("scope", s.to_owned())],
            ));
        }
        Ok(kdp::IssueTokenResponse {
            token: format!("tok:{subject}:{scope}"),
            claims: None,
        })
    }

    /// The permits of a holder of the given services (every service when none).
    fn permits_of(&self, holder: &str, codes: &[String]) -> Vec<elicense::Permit> {
        self.country
            .permits(holder)
            .into_iter()
            .filter(|p| codes.is_empty() || codes.contains(&p.service_code))
            .collect()
    }

    /// The bus stand-in: every fake service on one mTLS node as system "bus".
    pub async fn serve(self: &Arc<Self>, pki_dir: &Path, shutdown: Shutdown) -> RunningNode {
        let cfg = NodeConfig::from_pki_dir("bus", "127.0.0.1:0".parse().unwrap(), pki_dir);
        NodeBuilder::new(cfg)
            .add_service(
                gbdul::organization_registry_server::OrganizationRegistryServer::new(Svc(
                    self.clone()
                )),
            )
            .add_service(gbdfl::person_registry_server::PersonRegistryServer::new(
                Svc(self.clone()),
            ))
            .add_service(
                zags::civil_act_registry_server::CivilActRegistryServer::new(Svc(self.clone())),
            )
            .add_service(elicense::permit_registry_server::PermitRegistryServer::new(
                Svc(self.clone()),
            ))
            .add_service(pep::portal_server::PortalServer::new(Svc(self.clone())))
            .add_service(kdp::consent_service_server::ConsentServiceServer::new(Svc(
                self.clone(),
            )))
            .start(shutdown)
            .await
            .expect("fake bus starts")
    }
}

/// The URL of a node on loopback.
pub fn url(addr: SocketAddr) -> String {
    format!("https://127.0.0.1:{}", addr.port())
}

#[derive(Clone)]
pub struct Svc(pub Arc<Fakes>);

fn date_of(r: &Option<shep::DateRange>) -> Result<shep::Date, Status> {
    let r = r
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("range required"))?;
    let (f, t) = (
        r.from.ok_or_else(|| Status::invalid_argument("from"))?,
        r.to.ok_or_else(|| Status::invalid_argument("to"))?,
    );
    if f != t {
        return Err(Status::invalid_argument(
            "the fakes serve one day at a time",
        ));
    }
    Ok(f)
}

fn parse_cursor(c: &str) -> Result<usize, Status> {
    if c.is_empty() {
        return Ok(0);
    }
    c.parse::<usize>()
        .map(|n| n + 1)
        .map_err(|_| Status::invalid_argument("cursor"))
}

fn stream_by_index<T: Send + 'static>(
    start: usize,
    get: impl Fn(usize) -> Option<T> + Send + 'static,
) -> BoxStream<T> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut i = start;
        while let Some(item) = get(i) {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
            i += 1;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl gbdul::organization_registry_server::OrganizationRegistry for Svc {
    async fn get_organization(
        &self,
        req: Request<gbdul::GetOrganizationRequest>,
    ) -> Result<Response<gbdul::Organization>, Status> {
        let bin = req.into_inner().bin;
        self.0
            .country
            .organization(&bin)
            .map(Response::new)
            .ok_or_else(|| shep_runtime::status::not_found("organization", &bin))
    }

    type StreamNameChangesStream = BoxStream<gbdul::NameChange>;

    async fn stream_name_changes(
        &self,
        req: Request<gbdul::StreamNameChangesRequest>,
    ) -> Result<Response<Self::StreamNameChangesStream>, Status> {
        if self.0.diff_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Status::unavailable("GBD UL is down"));
        }
        let r = req.into_inner();
        let date = date_of(&r.range)?;
        let start = parse_cursor(&r.cursor)?;
        self.0.rec().diff_streams.push(r.cursor.clone());
        let country = self.0.country.clone();
        Ok(Response::new(stream_by_index(start, move |i| {
            country.name_change(&date, i).map(|mut c| {
                c.cursor = i.to_string();
                c
            })
        })))
    }
}

#[tonic::async_trait]
impl gbdfl::person_registry_server::PersonRegistry for Svc {
    async fn get_person(
        &self,
        req: Request<gbdfl::GetPersonRequest>,
    ) -> Result<Response<gbdfl::Person>, Status> {
        let iin = req.get_ref().iin.clone();
        self.0.rec().single_lookups += 1;
        self.0
            .check_token(&req, &iin, "gbdfl.person.read", "GetPerson")?;
        self.0
            .country
            .person(&iin)
            .map(Response::new)
            .ok_or_else(|| shep_runtime::status::not_found("person", &iin))
    }

    type GetPersonsStream = BoxStream<gbdfl::PersonResult>;

    async fn get_persons(
        &self,
        req: Request<gbdfl::GetPersonsRequest>,
    ) -> Result<Response<Self::GetPersonsStream>, Status> {
        let iins = req.get_ref().iins.clone();
        self.0
            .batch_look_up(&req, &iins, "gbdfl.person.read", "GetPersons")
            .await?;
        let mut out = vec![];
        for iin in iins {
            let result = match self.0.country.person(&iin) {
                Some(p) => gbdfl::person_result::Result::Person(p),
                None => gbdfl::person_result::Result::Error(gbdfl::PersonError {
                    code: tonic::Code::NotFound as i32,
                    message: format!("no person {iin}"),
                }),
            };
            out.push(Ok(gbdfl::PersonResult {
                iin,
                result: Some(result),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(out))))
    }
}

#[tonic::async_trait]
impl zags::civil_act_registry_server::CivilActRegistry for Svc {
    type StreamActsStream = BoxStream<zags::CivilAct>;

    async fn stream_acts(
        &self,
        req: Request<zags::StreamActsRequest>,
    ) -> Result<Response<Self::StreamActsStream>, Status> {
        let r = req.into_inner();
        let date = date_of(&r.range)?;
        let start = parse_cursor(&r.cursor)?;
        let kinds: HashSet<i32> = r.kinds.iter().copied().collect();
        let country = self.0.country.clone();
        // Acts of other kinds are skipped, keeping their index as the cursor.
        Ok(Response::new(stream_by_index(start, move |i| {
            let mut j = i;
            loop {
                let mut a = country.act(&date, j)?;
                if kinds.is_empty() || kinds.contains(&a.kind) {
                    a.cursor = j.to_string();
                    return Some(a);
                }
                j += 1;
            }
        })))
    }

    async fn get_person_acts(
        &self,
        req: Request<zags::GetPersonActsRequest>,
    ) -> Result<Response<zags::GetPersonActsResponse>, Status> {
        let iin = req.get_ref().iin.clone();
        self.0.rec().single_lookups += 1;
        self.0
            .check_token(&req, &iin, "zags.acts.read", "GetPersonActs")?;
        Ok(Response::new(zags::GetPersonActsResponse {
            acts: self.0.country.person_acts(&iin),
        }))
    }

    type GetActsOfPersonsStream = BoxStream<zags::PersonActsResult>;

    async fn get_acts_of_persons(
        &self,
        req: Request<zags::GetActsOfPersonsRequest>,
    ) -> Result<Response<Self::GetActsOfPersonsStream>, Status> {
        let iins = req.get_ref().iins.clone();
        self.0
            .batch_look_up(&req, &iins, "zags.acts.read", "GetActsOfPersons")
            .await?;
        let mut out = vec![];
        for iin in iins {
            let acts = zags::GetPersonActsResponse {
                acts: self.0.country.person_acts(&iin),
            };
            out.push(Ok(zags::PersonActsResult {
                iin,
                result: Some(zags::person_acts_result::Result::Acts(acts)),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(out))))
    }
}

fn holder_id(h: &Option<elicense::Holder>) -> Result<(String, bool), Status> {
    match h.as_ref().and_then(|h| h.id.clone()) {
        Some(elicense::holder::Id::Bin(b)) => Ok((b, false)),
        Some(elicense::holder::Id::Iin(i)) => Ok((i, true)),
        None => Err(Status::invalid_argument("holder required")),
    }
}

impl Svc {
    /// e-license's re-issue, once the caller is checked: idempotent by key.
    fn reissue(
        &self,
        holder: &str,
        r: elicense::ReissuePermitRequest,
    ) -> Result<elicense::ReissuePermitResponse, Status> {
        if r.idempotency_key.is_empty() || r.new_holder_name.is_none() {
            return Err(Status::invalid_argument("key and new name required"));
        }
        let Some(old) = self
            .0
            .country
            .permits(holder)
            .into_iter()
            .find(|p| p.number == r.permit_number)
        else {
            return Err(shep_runtime::status::not_found("permit", &r.permit_number));
        };
        let mut rec = self.0.rec();
        rec.reissue_count += 1;
        let (replayed, new_number) = if self.0.lean {
            (false, format!("R-{}", r.permit_number))
        } else {
            rec.reissue_calls.push(r.idempotency_key.clone());
            match rec.reissued.get(&r.idempotency_key) {
                Some((o, n)) if *o == r.permit_number => (true, n.clone()),
                Some(_) => return Err(Status::already_exists("key used for another permit")),
                None => {
                    if !rec.reissued_permits.insert(r.permit_number.clone()) {
                        return Err(Status::failed_precondition(
                            "permit is not ACTIVE (re-issued already)",
                        ));
                    }
                    let n = format!("R-{}", r.permit_number);
                    rec.reissued.insert(
                        r.idempotency_key.clone(),
                        (r.permit_number.clone(), n.clone()),
                    );
                    (false, n)
                }
            }
        };
        if replayed {
            rec.reissue_replays += 1;
        }
        drop(rec);
        let new_permit = elicense::Permit {
            number: new_number.clone(),
            service_code: old.service_code.clone(),
            holder: old.holder.clone(),
            status: elicense::PermitStatus::Active as i32,
            replaces: old.number.clone(),
            ..Default::default()
        };
        let old_permit = elicense::Permit {
            status: elicense::PermitStatus::Reissued as i32,
            replaced_by: new_number,
            ..old
        };
        Ok(elicense::ReissuePermitResponse {
            new_permit: Some(new_permit),
            old_permit: Some(old_permit),
            replayed,
        })
    }

}

#[tonic::async_trait]
impl elicense::permit_registry_server::PermitRegistry for Svc {
    async fn list_permits(
        &self,
        req: Request<elicense::ListPermitsRequest>,
    ) -> Result<Response<elicense::ListPermitsResponse>, Status> {
        let (holder, person) = holder_id(&req.get_ref().holder)?;
        if person {
            self.0
                .check_token(&req, &holder, "elicense.permits.read", "ListPermits")?;
        }
        self.0.rec().list_permits_calls += 1;
        let codes = &req.get_ref().service_codes;
        let permits = self.0.permits_of(&holder, codes);
        Ok(Response::new(elicense::ListPermitsResponse { permits }))
    }

    async fn list_permits_by_bins(
        &self,
        req: Request<elicense::ListPermitsByBinsRequest>,
    ) -> Result<Response<elicense::ListPermitsByBinsResponse>, Status> {
        let r = req.into_inner();
        {
            let mut rec = self.0.rec();
            rec.by_bins_calls += 1;
            rec.by_bins_asked += r.bins.len() as u64;
        }
        let fail = self
            .0
            .by_bins_failures
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if fail {
            return Err(Status::unavailable("e-license cannot be reached"));
        }
        if r.bins.len() > 1000 {
            return Err(shep_runtime::status::invalid_field(
                "bins",
                "at most 1000 BINs",
                "INVALID_BATCH_SIZE",
            ));
        }
        let holders = r
            .bins
            .into_iter()
            .map(|bin| elicense::HolderPermits {
                permits: self.0.permits_of(&bin, &r.service_codes),
                bin,
            })
            .collect();
        Ok(Response::new(elicense::ListPermitsByBinsResponse { holders }))
    }

    async fn get_permit(
        &self,
        _: Request<elicense::GetPermitRequest>,
    ) -> Result<Response<elicense::Permit>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn reissue_permit(
        &self,
        req: Request<elicense::ReissuePermitRequest>,
    ) -> Result<Response<elicense::ReissuePermitResponse>, Status> {
        let (holder, person) = holder_id(&req.get_ref().holder)?;
        if person {
            self.0
                .check_token(&req, &holder, "elicense.permits.reissue", "ReissuePermit")?;
        }
        if self.0.call_delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.0.call_delay_ms)).await;
        }
        self.reissue(&holder, req.into_inner()).map(Response::new)
    }

    async fn reissue_organization_permits(
        &self,
        req: Request<elicense::ReissueOrganizationPermitsRequest>,
    ) -> Result<Response<elicense::ReissueOrganizationPermitsResponse>, Status> {
        let items = req.into_inner().items;
        self.0.rec().reissue_batches.push(items.len());
        if self.0.call_delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.0.call_delay_ms)).await;
        }
        let results = items
            .into_iter()
            .map(|it| {
                let holder = it.holder_bin.clone();
                let r = elicense::ReissuePermitRequest {
                    permit_number: it.permit_number,
                    holder: Some(elicense::Holder {
                        id: Some(elicense::holder::Id::Bin(it.holder_bin)),
                    }),
                    new_holder_name: it.new_name.map(|n| elicense::HolderName {
                        name: Some(elicense::holder_name::Name::Organization(n)),
                    }),
                    idempotency_key: it.idempotency_key,
                    reason: it.reason,
                };
                let result = match self.reissue(&holder, r) {
                    Ok(x) => elicense::reissue_result::Result::Reissued(x),
                    Err(s) => elicense::reissue_result::Result::Error(elicense::ReissueError {
                        code: s.code() as i32,
                        message: s.message().to_owned(),
                        reason: String::new(),
                    }),
                };
                elicense::ReissueResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(elicense::ReissueOrganizationPermitsResponse { results }))
    }

    async fn list_cabinet_notifications(
        &self,
        _: Request<elicense::ListCabinetNotificationsRequest>,
    ) -> Result<Response<elicense::ListCabinetNotificationsResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

#[tonic::async_trait]
impl pep::portal_server::Portal for Svc {
    async fn notify(
        &self,
        req: Request<pep::NotifyRequest>,
    ) -> Result<Response<pep::NotifyResponse>, Status> {
        let iin = req.get_ref().iin.clone();
        self.0.check_token(&req, &iin, "pep.notify", "Notify")?;
        let r = req.into_inner();
        if r.case_id.is_empty() || r.text.is_empty() || r.attempt == 0 {
            return Err(Status::invalid_argument(
                "case_id, text and attempt required",
            ));
        }
        let (call_no, by_iin) = {
            let mut rec = self.0.rec();
            rec.notify_count += 1;
            if self.0.lean {
                (rec.notify_count as usize, 1)
            } else {
                rec.notify_calls
                    .push((r.case_id.clone(), r.attempt, iin.clone()));
                let n = {
                    let n = rec.notify_by_iin.entry(iin.clone()).or_default();
                    *n += 1;
                    *n
                };
                (rec.notify_calls.len(), n)
            }
        };
        if let Some(s) = self.0.country.notify_fault(&iin, by_iin) {
            return Err(s);
        }
        if self.0.call_delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.0.call_delay_ms)).await;
        }
        if !self.0.country.has_phone(&iin) {
            return Ok(Response::new(pep::NotifyResponse {
                outcome: pep::NotifyOutcome::NoPhone as i32,
                ..Default::default()
            }));
        }
        let key = (r.case_id.clone(), r.attempt);
        // Whether the answer goes back at once, or is held while the gate is closed for calls
        // beyond its number (a caller killed meanwhile never learns the SMS was sent).
        let passes = self.0.notify_gate.borrow().is_none_or(|n| call_no <= n);
        let (sms_id, replayed) = if self.0.lean {
            (format!("sms-{call_no}"), false)
        } else {
            let mut rec = self.0.rec();
            if passes {
                rec.acked.insert(key.clone());
            }
            match rec.sent.get(&key).cloned() {
                Some((id, who, text)) => {
                    if who != iin || text != r.text {
                        return Err(Status::already_exists(
                            "same case and attempt, different SMS",
                        ));
                    }
                    rec.notify_replays += 1;
                    (id.clone(), true)
                }
                None => {
                    let id = format!("sms-{}", rec.sent.len() + 1);
                    rec.sent
                        .insert(key, (id.clone(), iin.clone(), r.text.clone()));
                    (id, false)
                }
            }
        };
        if let Some(text) = self.0.country.answer(&iin, r.attempt).filter(|_| !replayed) {
            self.0
                .push_answer(&r.case_id, r.attempt, &iin, &text, &sms_id);
        }
        if !passes {
            let mut gate = self.0.notify_gate.subscribe();
            let _ = gate.wait_for(|g| g.is_none_or(|n| call_no <= n)).await;
            self.0.rec().acked.insert((r.case_id.clone(), r.attempt));
        }
        Ok(Response::new(pep::NotifyResponse {
            outcome: pep::NotifyOutcome::Sent as i32,
            sms_id,
            sent_at: Some(self.0.ts()),
            replayed,
        }))
    }

    async fn notify_many(
        &self,
        req: Request<pep::NotifyManyRequest>,
    ) -> Result<Response<pep::NotifyManyResponse>, Status> {
        // As the bus: a recipient without its token refuses the whole call.
        for it in &req.get_ref().items {
            self.0
                .check_token(&req, &it.iin, "pep.notify", "NotifyMany")
                .inspect_err(|_| self.0.rec().refused_notify_batches.push(req.get_ref().items.len()))?;
        }
        let (metadata, _, r) = req.into_parts();
        self.0.rec().notify_batches.push(r.items.len());
        let ms = self.0.notify_batch_delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        let each = r.items.into_iter().map(|it| {
            let (case_id, attempt) = (it.case_id.clone(), it.attempt);
            let one = Request::from_parts(metadata.clone(), Default::default(), it);
            async move {
                let result = match self.notify(one).await {
                    Ok(n) => pep::notify_result::Result::Notified(n.into_inner()),
                    Err(s) => pep::notify_result::Result::Error(pep::NotifyError {
                        code: s.code() as i32,
                        message: s.message().to_owned(),
                        reason: String::new(),
                    }),
                };
                pep::NotifyResult {
                    case_id,
                    attempt,
                    result: Some(result),
                }
            }
        });
        let results = futures::future::join_all(each).await;
        Ok(Response::new(pep::NotifyManyResponse { results }))
    }

    type StreamAnswersStream = BoxStream<pep::Answer>;

    async fn stream_answers(
        &self,
        req: Request<pep::StreamAnswersRequest>,
    ) -> Result<Response<Self::StreamAnswersStream>, Status> {
        let r = req.into_inner();
        let mut next = parse_cursor(&r.cursor)?;
        let fakes = self.0.clone();
        let (tx, rx) = mpsc::channel(64);
        let mut changed = self.0.answers_tx.subscribe();
        tokio::spawn(async move {
            loop {
                let batch: Vec<_> = fakes
                    .rec()
                    .answers
                    .iter()
                    .skip(next)
                    .take(256)
                    .cloned()
                    .collect();
                let more = batch.len() == 256;
                for (case_id, attempt, iin, text, sms_id) in batch {
                    let a = pep::Answer {
                        cursor: next.to_string(),
                        sms_id,
                        case_id,
                        attempt,
                        iin,
                        text,
                        received_at: Some(fakes.ts()),
                    };
                    if tx.send(Ok(a)).await.is_err() {
                        return;
                    }
                    next += 1;
                }
                if more {
                    continue;
                }
                if !r.follow {
                    return;
                }
                tokio::select! {
                    c = changed.changed() => if c.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ListOutboxStream = BoxStream<pep::OutboxSms>;

    async fn list_outbox(
        &self,
        _: Request<pep::ListOutboxRequest>,
    ) -> Result<Response<Self::ListOutboxStream>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

#[tonic::async_trait]
impl kdp::consent_service_server::ConsentService for Svc {
    async fn issue_token(
        &self,
        req: Request<kdp::IssueTokenRequest>,
    ) -> Result<Response<kdp::IssueTokenResponse>, Status> {
        let r = req.into_inner();
        self.0.rec().single_lookups += 1;
        if r.consumer != "sdu" {
            return Err(Status::invalid_argument("consumer must be sdu"));
        }
        self.0.token(&r.subject, &r.scope).map(Response::new)
    }

    async fn issue_tokens(
        &self,
        req: Request<kdp::IssueTokensRequest>,
    ) -> Result<Response<kdp::IssueTokensResponse>, Status> {
        let r = req.into_inner();
        {
            let mut rec = self.0.rec();
            rec.batch_calls += 1;
            rec.batched_lookups += r.subjects.len() as u64;
        }
        self.0.batch_pause().await;
        if r.consumer != "sdu" {
            return Err(Status::invalid_argument("consumer must be sdu"));
        }
        let results = r
            .subjects
            .into_iter()
            .map(|subject| {
                let result = match self.0.token(&subject, &r.scope) {
                    Ok(t) => kdp::token_result::Result::Token(t),
                    Err(s) => kdp::token_result::Result::Refusal(kdp::TokenRefusal {
                        code: s.code() as i32,
                        message: s.message().to_owned(),
                        scope: r
                            .scope
                            .split_whitespace()
                            .find(|x| !self.0.country.consents(&subject, x))
                            .unwrap_or_default()
                            .to_owned(),
                    }),
                };
                kdp::TokenResult {
                    subject,
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(kdp::IssueTokensResponse { results }))
    }

    async fn get_public_key(
        &self,
        _: Request<kdp::GetPublicKeyRequest>,
    ) -> Result<Response<kdp::GetPublicKeyResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn grant_consent(
        &self,
        _: Request<kdp::GrantConsentRequest>,
    ) -> Result<Response<kdp::GrantConsentResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn revoke_consent(
        &self,
        _: Request<kdp::RevokeConsentRequest>,
    ) -> Result<Response<kdp::RevokeConsentResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type StreamRevocationsStream = BoxStream<kdp::Revocation>;

    async fn stream_revocations(
        &self,
        _: Request<kdp::StreamRevocationsRequest>,
    ) -> Result<Response<Self::StreamRevocationsStream>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

// ---- helpers to build a country -------------------------------------------------------------

/// The `n`-th valid BIN of a synthetic range (distinct for distinct `n` below 10^8).
pub fn bin(n: u32) -> String {
    let month = 1 + n % 12;
    let rest = n / 12;
    let (serial, year) = (rest % 100_000, 2000 + (rest / 100_000) % 25);
    // The kind and attribute digits vary only to find a check digit; (year, month, serial)
    // already make the number unique.
    for kind in [4u8, 5, 6] {
        for attr in 0u8..4 {
            if let Some(b) = shep_domain::Bin::from_parts(year, month, kind, attr, serial) {
                return b.to_string();
            }
        }
    }
    unreachable!("no check digit for BIN {n}")
}

/// The `n`-th valid IIN of a synthetic range (distinct for distinct `n` below 10^8).
pub fn iin(n: u32) -> String {
    let day = jiff::civil::date(1950, 1, 1)
        .checked_add(jiff::Span::new().days(i64::from(n % 20_000)))
        .unwrap();
    let base = (n / 20_000) as u16;
    for serial in [
        base,
        base + 5000,
        base + 6000,
        base + 7000,
        base + 8000,
        base + 9000,
    ] {
        for sex in [shep_domain::Sex::Male, shep_domain::Sex::Female] {
            if let Some(i) = shep_domain::Iin::from_parts(
                day.year() as u32,
                day.month() as u32,
                day.day() as u32,
                sex,
                serial,
            ) {
                return i.to_string();
            }
        }
    }
    unreachable!("no check digit for IIN {n}")
}

/// A test world: a dev PKI, the fakes behind one mTLS "bus", a manual clock, and where the
/// SDU keeps its state (a SQLite file by default; a test may point `db` elsewhere).
pub struct Env {
    _dir: tempfile::TempDir,
    pub pki: std::path::PathBuf,
    pub db: std::path::PathBuf,
    pub clock: Arc<ManualClock>,
    pub fakes: Arc<Fakes>,
    pub bus_addr: SocketAddr,
    pub bus_shutdown: Shutdown,
}

impl Env {
    /// The fakes serving `country`, the clock at `start` (Almaty local time), each answer
    /// `delay_ms` late.
    pub async fn new(country: MapCountry, start: &str, delay_ms: u64) -> Env {
        shep_runtime::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        shep_pki::Pki::init(&pki, shep_pki::DEFAULT_SYSTEMS, false).unwrap();
        let clock = Arc::new(ManualClock::new(almaty(start)));
        let fakes = Fakes::with_delay(Arc::new(country), clock.clone(), delay_ms);
        let bus_shutdown = Shutdown::new();
        let bus = fakes.serve(&pki, bus_shutdown.clone()).await;
        let bus_addr = bus.addr;
        tokio::spawn(async move {
            let _ = bus.wait().await;
        });
        let db = dir.path().join("state").join("sdu.db");
        Env { _dir: dir, pki, db, clock, fakes, bus_addr, bus_shutdown }
    }

    /// Settings for tests: short retries and timer polls.
    pub fn settings(&self, concurrency: usize) -> shep_sdu::SduSettings {
        shep_sdu::SduSettings {
            bus_url: url(self.bus_addr),
            db: self.db.clone(),
            concurrency,
            max_attempts: 3,
            retry_base_ms: 5,
            retry_max_ms: 20,
            call_timeout_ms: 10_000,
            timer_poll_ms: 20,
            ..Default::default()
        }
    }

    /// Starts an SDU node on the world's database.
    pub async fn start_sdu(&self, concurrency: usize) -> Result<shep_sdu::RunningSdu, shep_sdu::SduError> {
        self.start_sdu_with(self.settings(concurrency)).await
    }

    /// Starts an SDU node with these settings.
    pub async fn start_sdu_with(
        &self,
        settings: shep_sdu::SduSettings,
    ) -> Result<shep_sdu::RunningSdu, shep_sdu::SduError> {
        let node = NodeConfig::from_pki_dir("sdu", "127.0.0.1:0".parse().unwrap(), &self.pki);
        shep_sdu::start(node, settings, self.clock.clone(), Shutdown::new()).await
    }
}

/// `wait_run_settled`, bounded: a run that never settles fails the test instead of hanging.
pub async fn settled(h: &shep_sdu::SduHandle, run: &shep_sdu::RunId) -> shep_sdu::RunRecord {
    tokio::time::timeout(std::time::Duration::from_secs(60), h.wait_run_settled(run))
        .await
        .expect("the run settles")
        .expect("wait_run_settled")
}

/// Waits (up to a generous minute: this is about reaching a state, not about speed) until
/// `check` holds; panics with `what` otherwise.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// The outcome of every case of a run, by subject (BIN or IIN).
pub fn outcomes(h: &shep_sdu::SduHandle, pilot: &str, d: jiff::civil::Date) -> HashMap<String, String> {
    h.cases_json(pilot, d)
        .unwrap()
        .into_iter()
        .map(|r| (r.subject_bin.or(r.subject_iin).unwrap(), r.outcome))
        .collect()
}

/// A local date and time ("2026-02-03T09:00:00") in Asia/Almaty, as an instant.
pub fn almaty(local: &str) -> jiff::Timestamp {
    local
        .parse::<jiff::civil::DateTime>()
        .unwrap()
        .to_zoned_datetime(shep_sdu::dates::almaty())
        .unwrap()
        .timestamp()
}

/// `n` organizations renamed on `on` (BINs and heads numbered from `first`), two SEZ
/// permits each; even ones answer "1", odd ones never answer.
pub fn crowd(on: shep::Date, first: u32, n: u32) -> MapCountry {
    let mut c = MapCountry::default();
    for i in 0..n {
        let b = bin(first + i);
        let h = iin(first + i);
        c.rename(
            on,
            &b,
            Some(&h),
            vec![
                permit(&format!("A-{i}"), "SEZ-OBJ", &b, false, elicense::PermitStatus::Active),
                permit(&format!("B-{i}"), "SEZ-PROJ", &b, false, elicense::PermitStatus::Active),
            ],
        );
        if i % 2 == 0 {
            c.answers.insert((h, 1), "1".into());
        }
    }
    c
}

pub fn date(y: i32, m: i32, d: i32) -> shep::Date {
    shep::Date {
        year: y,
        month: m,
        day: d,
    }
}

pub fn text(ru: &str) -> shep::LocalizedText {
    shep::LocalizedText {
        ru: ru.into(),
        kk: format!("{ru} (kk)"),
    }
}

pub fn full_name(s: &str, n: &str) -> shep::FullName {
    shep::FullName {
        surname: s.into(),
        name: n.into(),
        patronymic: String::new(),
    }
}

/// A permit.
pub fn permit(
    number: &str,
    service: &str,
    holder: &str,
    person: bool,
    status: elicense::PermitStatus,
) -> elicense::Permit {
    elicense::Permit {
        number: number.into(),
        service_code: service.into(),
        holder: Some(elicense::Holder {
            id: Some(if person {
                elicense::holder::Id::Iin(holder.into())
            } else {
                elicense::holder::Id::Bin(holder.into())
            }),
        }),
        status: status as i32,
        ..Default::default()
    }
}

/// A person alive, capable, at home, free.
pub fn person(iin: &str) -> gbdfl::Person {
    gbdfl::Person {
        iin: iin.into(),
        life_status: gbdfl::LifeStatus::Alive as i32,
        missing_status: gbdfl::MissingStatus::None as i32,
        legal_capacity: gbdfl::LegalCapacity::Capable as i32,
        residence: Some(gbdfl::Residence::default()),
        imprisonment: Some(gbdfl::Imprisonment::default()),
        ..Default::default()
    }
}

/// A country held in maps, for tests.
#[derive(Default)]
pub struct MapCountry {
    pub name_changes: HashMap<(i32, i32, i32), Vec<gbdul::NameChange>>,
    pub acts: HashMap<(i32, i32, i32), Vec<zags::CivilAct>>,
    pub orgs: HashMap<String, gbdul::Organization>,
    pub persons: HashMap<String, gbdfl::Person>,
    pub person_acts: HashMap<String, Vec<zags::CivilAct>>,
    pub permits: HashMap<String, Vec<elicense::Permit>>,
    pub no_consent: HashSet<String>,
    pub no_phone: HashSet<String>,
    pub answers: HashMap<(String, u32), String>,
    /// Recipients whose Notify always fails with UNAVAILABLE.
    pub notify_down: HashSet<String>,
    /// Recipients whose first Notify fails with UNAVAILABLE once.
    pub notify_flaky: HashSet<String>,
}

impl MapCountry {
    /// An organization renamed on `d`, with its head and permits.
    pub fn rename(
        &mut self,
        d: shep::Date,
        bin: &str,
        head: Option<&str>,
        permits: Vec<elicense::Permit>,
    ) {
        let name = format!("ТОО «{bin}»");
        self.name_changes
            .entry((d.year, d.month, d.day))
            .or_default()
            .push(gbdul::NameChange {
                bin: bin.into(),
                old_name: Some(text(&format!("{name} старое"))),
                new_name: Some(text(&name)),
                change_date: Some(d),
                head_iin: head.unwrap_or_default().into(),
                cursor: String::new(),
            });
        self.orgs.insert(
            bin.into(),
            gbdul::Organization {
                bin: bin.into(),
                name: Some(text(&name)),
                first_head: head.map(|h| gbdul::Head {
                    iin: h.into(),
                    full_name: Some(full_name("Head", h)),
                    since: None,
                }),
                ..Default::default()
            },
        );
        if let Some(h) = head {
            self.persons.entry(h.into()).or_insert_with(|| person(h));
        }
        self.permits.insert(bin.into(), permits);
    }

    /// A civil act on `d` changing (or not) a person's name.
    pub fn act(
        &mut self,
        d: shep::Date,
        kind: zags::ActKind,
        iin: &str,
        old: Option<&str>,
        new: Option<&str>,
        permits: Vec<elicense::Permit>,
    ) {
        let n = self.acts.get(&(d.year, d.month, d.day)).map_or(0, Vec::len);
        self.acts
            .entry((d.year, d.month, d.day))
            .or_default()
            .push(zags::CivilAct {
                act_id: format!("act-{n}"),
                kind: kind as i32,
                registration_date: Some(d),
                subject_iin: iin.into(),
                old_name: old.map(|s| full_name(s, "Анна")),
                new_name: new.map(|s| full_name(s, "Анна")),
                ..Default::default()
            });
        self.persons
            .entry(iin.into())
            .or_insert_with(|| person(iin));
        self.permits.insert(iin.into(), permits);
    }
}

fn key(d: &shep::Date) -> (i32, i32, i32) {
    (d.year, d.month, d.day)
}

impl Country for MapCountry {
    fn name_change(&self, date: &shep::Date, idx: usize) -> Option<gbdul::NameChange> {
        self.name_changes.get(&key(date))?.get(idx).cloned()
    }
    fn act(&self, date: &shep::Date, idx: usize) -> Option<zags::CivilAct> {
        self.acts.get(&key(date))?.get(idx).cloned()
    }
    fn organization(&self, bin: &str) -> Option<gbdul::Organization> {
        self.orgs.get(bin).cloned()
    }
    fn person(&self, iin: &str) -> Option<gbdfl::Person> {
        self.persons.get(iin).cloned()
    }
    fn person_acts(&self, iin: &str) -> Vec<zags::CivilAct> {
        self.person_acts.get(iin).cloned().unwrap_or_default()
    }
    fn permits(&self, holder: &str) -> Vec<elicense::Permit> {
        self.permits.get(holder).cloned().unwrap_or_default()
    }
    fn consents(&self, iin: &str, _scope: &str) -> bool {
        !self.no_consent.contains(iin)
    }
    fn has_phone(&self, iin: &str) -> bool {
        !self.no_phone.contains(iin)
    }
    fn answer(&self, iin: &str, attempt: u32) -> Option<String> {
        self.answers.get(&(iin.to_owned(), attempt)).cloned()
    }
    fn notify_fault(&self, iin: &str, call_no: u32) -> Option<Status> {
        if self.notify_down.contains(iin) || (self.notify_flaky.contains(iin) && call_no == 1) {
            Some(Status::unavailable("BMG cannot be reached"))
        } else {
            None
        }
    }
}
