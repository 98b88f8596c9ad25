//! Driving a running topology as a tester does: scenario injections, scripted citizens,
//! faults and the clock over the simulators' `kz.shep.sim.v1.Scenario`, runs and cases over
//! the SDU's `ProactiveService`, and what came out read back from PEP's outbox and e-license —
//! all over mTLS gRPC as the `operator` identity, so the same helpers drive a topology in
//! this process or one started by `shep up` in another.
//!
//! Choosing subjects is the one thing gRPC has no call for ("an organization with two
//! permits of the pilot whose head has a phone"): [`Picker`] reads the generated country of
//! a [`Simulation`] with the same settings (the same seed gives the same country).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use jiff::civil::Date;
use shep_domain::{Bin, Iin};
use shep_proto::elicense::permit_registry_client::PermitRegistryClient;
use shep_proto::elicense::{self, CabinetNotification, Permit, PermitStatus, holder};
use shep_proto::pep::portal_client::PortalClient;
use shep_proto::pep::{ListOutboxRequest, OutboxSms, StreamAnswersRequest};
use shep_proto::sdu::proactive_service_client::ProactiveServiceClient;
use shep_proto::sdu::{self as pb, Outcome, RunState};
use shep_proto::shep::{self as common, FullName, LocalizedText};
use shep_proto::sim::scenario_client::ScenarioClient;
use shep_proto::sim::*;
use shep_runtime::TlsConfig;
use shep_simulators::Simulation;
use shep_simulators::catalog::SERVICES;
use shep_simulators::country::{HolderRef, NONE, permit_number};
use shep_simulators::time::Day;
use tonic::transport::Channel;

/// How long a helper waits for a condition before it fails the test (generous: the machine
/// may be loaded).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A date as the contracts carry it.
pub fn pb_date(d: Date) -> common::Date {
    common::Date { year: d.year() as i32, month: d.month() as i32, day: d.day() as i32 }
}

/// A timestamp as the contracts carry it.
pub fn pb_ts(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.as_second(), nanos: 0 }
}

/// A contract timestamp back; the Unix epoch for none.
pub fn from_pb_ts(t: Option<&prost_types::Timestamp>) -> Timestamp {
    t.and_then(|t| Timestamp::from_second(t.seconds).ok()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Asia/Almaty: UTC+5 all year since 1 March 2024 (the simulators use the same offset).
fn almaty_tz() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::fixed(jiff::tz::offset(5))
}

/// Local time in Asia/Almaty ("2026-03-20T14:30") as an instant.
pub fn almaty(local: &str) -> Timestamp {
    local
        .parse::<jiff::civil::DateTime>()
        .unwrap_or_else(|e| panic!("{local:?} is not a local date and time: {e}"))
        .to_zoned_datetime(almaty_tz())
        .expect("a time that exists in Almaty")
        .timestamp()
}

/// An instant as local Almaty time ("2026-03-20T14:30:00"), for messages.
pub fn almaty_text(t: Timestamp) -> String {
    t.to_zoned_datetime(almaty_tz()).datetime().to_string()
}

/// What a scripted recipient does with the SMS, or what makes the case end before one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Answers this text to every SMS, an hour after it.
    Answers(&'static str),
    /// Never answers.
    Silent,
    /// Has no phone in BMG.
    NoPhone,
    /// Has withdrawn every consent to SDU.
    NoConsent,
    /// Died the day before the run.
    Dead,
    /// Moved abroad for good.
    Abroad,
    /// Declared legally incapable by a court.
    Incapable,
    /// In prison.
    Imprisoned,
}

impl Behaviour {
    /// The outcome the process must reach for a recipient who behaves so.
    pub fn expected(self) -> Outcome {
        match self {
            Behaviour::Answers("1") => Outcome::Reissued,
            Behaviour::Answers("2") => Outcome::Refused,
            Behaviour::Answers(_) | Behaviour::Silent => Outcome::NoAnswer,
            Behaviour::NoPhone => Outcome::NoPhone,
            Behaviour::NoConsent => Outcome::NoConsent,
            Behaviour::Dead => Outcome::ExcludedDeadOrMissing,
            Behaviour::Abroad => Outcome::ExcludedAbroad,
            Behaviour::Incapable => Outcome::ExcludedIncapable,
            Behaviour::Imprisoned => Outcome::ExcludedImprisoned,
        }
    }

    /// One behaviour for every outcome a healthy run can reach, and an answer that is
    /// neither "1" nor "2".
    pub const EVERY_OUTCOME: [Behaviour; 10] = [
        Behaviour::Answers("1"),
        Behaviour::Answers("2"),
        Behaviour::Silent,
        Behaviour::Answers("да"),
        Behaviour::NoPhone,
        Behaviour::NoConsent,
        Behaviour::Dead,
        Behaviour::Abroad,
        Behaviour::Incapable,
        Behaviour::Imprisoned,
    ];
}

/// The delay of scripted answers, in simulated seconds.
pub const ANSWER_DELAY_SECS: u32 = 3600;

/// Whose name changed: an organization (the recipient is its first head) or an individual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    Org(Bin),
    Person(Iin),
}

impl Holder {
    fn to_pb(self) -> elicense::Holder {
        elicense::Holder {
            id: Some(match self {
                Holder::Org(b) => holder::Id::Bin(b.to_string()),
                Holder::Person(i) => holder::Id::Iin(i.to_string()),
            }),
        }
    }

    /// The BIN or IIN.
    pub fn id(&self) -> String {
        match self {
            Holder::Org(b) => b.to_string(),
            Holder::Person(i) => i.to_string(),
        }
    }
}

/// A subject chosen for a scenario: the holder, who is asked, and the holder's active
/// permits of the services asked for.
#[derive(Debug, Clone)]
pub struct Subject {
    pub holder: Holder,
    pub recipient: Iin,
    pub permits: Vec<String>,
}

/// Chooses subjects in a generated country: each holder and recipient once, recipients
/// without any status that would exclude them and with a phone in BMG, holders of active
/// permits of the services asked for.
pub struct Picker<'a> {
    sim: &'a Simulation,
    used_persons: HashSet<u32>,
    used_orgs: HashSet<u32>,
}

impl<'a> Picker<'a> {
    pub fn new(sim: &'a Simulation) -> Self {
        Picker { sim, used_persons: HashSet::new(), used_orgs: HashSet::new() }
    }

    /// Leaves out the organizations and persons whose names changed on `date` in the
    /// generated history (and the heads of those organizations), so that a scripted subject
    /// never shares a recipient with a case of the generated diff.
    pub fn avoid_history_of(&mut self, date: Date) {
        let c = self.sim.country();
        let day = Day::from_civil(date);
        for r in c.renames().iter().filter(|r| r.day == day) {
            self.used_orgs.insert(r.org);
            let head = c.orgs()[r.org as usize].head;
            if head != NONE {
                self.used_persons.insert(head);
            }
        }
        for a in c.acts().iter().filter(|a| a.day == day) {
            self.used_persons.insert(a.subject);
        }
    }

    fn clean(&self, p: u32) -> bool {
        let c = self.sim.country();
        let person = &c.persons()[p as usize];
        !self.used_persons.contains(&p)
            && c.extra(p).is_none()
            && person.birth().years_until(c.today()) >= 20
            && c.phone_of(p).is_some()
    }

    fn active_permits(&self, h: HolderRef, services: &[&str]) -> Vec<String> {
        let c = self.sim.country();
        c.permits_of(h)
            .filter_map(|i| {
                let p = &c.permits()[i as usize];
                let code = SERVICES[p.service as usize].code;
                (p.status == PermitStatus::Active && services.contains(&code))
                    .then(|| permit_number(p.region, p.service, i + 1))
            })
            .collect()
    }

    /// An organization with at least `min_permits` active permits of `services` whose first
    /// head is a clean recipient. Panics when the country has none left.
    pub fn org(&mut self, services: &[&str], min_permits: usize) -> Subject {
        let c = self.sim.country();
        let found = c.orgs().iter().enumerate().find_map(|(o, org)| {
            let o = o as u32;
            if self.used_orgs.contains(&o) || org.head == NONE || !self.clean(org.head) {
                return None;
            }
            let permits = self.active_permits(HolderRef::Org(o), services);
            (permits.len() >= min_permits).then_some((o, org.bin, org.head, permits))
        });
        let (o, bin, head, permits) = found.unwrap_or_else(|| {
            panic!("no organization left with {min_permits}+ active permits of {services:?} and a clean head")
        });
        self.used_orgs.insert(o);
        self.used_persons.insert(head);
        Subject { holder: Holder::Org(bin), recipient: c.persons()[head as usize].iin, permits }
    }

    /// An organization that holds no permit of `services` (its rename opens no case).
    pub fn org_without(&mut self, services: &[&str]) -> Bin {
        let c = self.sim.country();
        let o = (0..c.orgs().len() as u32)
            .find(|&o| !self.used_orgs.contains(&o) && self.active_permits(HolderRef::Org(o), services).is_empty())
            .expect("an organization without permits of the pilot");
        self.used_orgs.insert(o);
        c.orgs()[o as usize].bin
    }

    /// A clean individual with at least `min_permits` active permits of `services`.
    pub fn person(&mut self, services: &[&str], min_permits: usize) -> Subject {
        let c = self.sim.country();
        let found = (0..c.persons().len() as u32).find_map(|p| {
            if !self.clean(p) {
                return None;
            }
            let permits = self.active_permits(HolderRef::Person(p), services);
            (permits.len() >= min_permits).then_some((p, permits))
        });
        let (p, permits) = found.unwrap_or_else(|| {
            panic!("no individual left with {min_permits}+ active permits of {services:?} who is a clean recipient")
        });
        self.used_persons.insert(p);
        let iin = c.persons()[p as usize].iin;
        Subject { holder: Holder::Person(iin), recipient: iin, permits }
    }
}

/// A fault as `Scenario/SetFault` takes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultSpec {
    /// The gRPC code of failing calls (14 UNAVAILABLE).
    pub code: i32,
    /// The share of calls that fail.
    pub rate: f32,
    pub latency_ms: u32,
    pub jitter_ms: u32,
}

/// The registry systems of a topology, in the order of `Registry::ALL`.
pub const REGISTRIES: [&str; 7] = ["gbd-ul", "gbd-fl", "zags", "e-license", "bmg", "pep", "kdp"];

/// A tester connected to a running topology as `operator`: every registry node directly
/// (registries accept the operator), and the SDU node.
#[derive(Clone)]
pub struct Tester {
    nodes: HashMap<String, Channel>,
}

fn must<T>(what: &str, r: Result<tonic::Response<T>, tonic::Status>) -> T {
    match r {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("{what} failed: {:?}: {}", s.code(), s.message()),
    }
}

impl Tester {
    /// Channels to the nodes `(system, address)` of a topology, with the `operator`
    /// certificate of the PKI in `pki_dir`.
    pub fn connect(pki_dir: &Path, nodes: impl IntoIterator<Item = (String, SocketAddr)>) -> Tester {
        shep_runtime::install_crypto_provider();
        let tls = TlsConfig::from_pki_dir(pki_dir, "operator");
        let nodes = nodes
            .into_iter()
            .map(|(system, addr)| {
                let ch = shep_runtime::tls::channel(&tls, &format!("https://127.0.0.1:{}", addr.port()))
                    .expect("an operator channel");
                (system, ch)
            })
            .collect();
        Tester { nodes }
    }

    /// The channel to a node.
    pub fn channel(&self, system: &str) -> Channel {
        self.nodes.get(system).cloned().unwrap_or_else(|| panic!("no node {system:?} in the topology"))
    }

    fn scenario(&self, system: &str) -> ScenarioClient<Channel> {
        ScenarioClient::new(self.channel(system))
    }

    /// The SDU's `ProactiveService`.
    pub fn sdu(&self) -> ProactiveServiceClient<Channel> {
        ProactiveServiceClient::new(self.channel("sdu"))
    }

    // ---- injections ------------------------------------------------------------------------

    /// Renames an organization on `date` (GBD UL).
    pub async fn rename(&self, bin: Bin, new: LocalizedText, date: Date) {
        let r = self
            .scenario("gbd-ul")
            .inject_rename(InjectRenameRequest { bin: bin.to_string(), new_name: Some(new), date: Some(pb_date(date)) })
            .await;
        assert!(must("InjectRename", r).applied);
    }

    /// Changes a person's name on `date` (ZAGS records the act, GBD FL the new name).
    pub async fn change_name(&self, iin: Iin, new: FullName, date: Date) {
        let r = self
            .scenario("zags")
            .inject_name_change(InjectNameChangeRequest {
                iin: iin.to_string(),
                new_name: Some(new),
                date: Some(pb_date(date)),
                kind: 0,
            })
            .await;
        assert!(must("InjectNameChange", r).applied);
    }

    /// Gives a subject whose name changed on `date` its new name: a rename or an act.
    pub async fn change_subject_name(&self, s: &Subject, n: usize, date: Date) {
        match s.holder {
            Holder::Org(bin) => {
                let new = LocalizedText {
                    ru: format!("ТОО «Обновлённое имя {n}»"),
                    kk: format!("«Жаңартылған атау {n}» ЖШС"),
                };
                self.rename(bin, new, date).await
            }
            Holder::Person(iin) => {
                let new = FullName {
                    surname: format!("Жаңаева-{n}"),
                    name: "Айгерим".into(),
                    patronymic: "Серікқызы".into(),
                };
                self.change_name(iin, new, date).await
            }
        }
    }

    /// Registers a death (ZAGS and GBD FL).
    pub async fn death(&self, iin: Iin, date: Date) {
        let r = self
            .scenario("zags")
            .inject_death(InjectDeathRequest { iin: iin.to_string(), date: Some(pb_date(date)) })
            .await;
        assert!(must("InjectDeath", r).applied);
    }

    /// Records an imprisonment from `from`, without a fixed release (GBD FL).
    pub async fn imprison(&self, iin: Iin, from: Date) {
        let r = self
            .scenario("gbd-fl")
            .inject_imprisonment(InjectImprisonmentRequest {
                iin: iin.to_string(),
                from: Some(pb_date(from)),
                to: None,
            })
            .await;
        assert!(must("InjectImprisonment", r).applied);
    }

    /// Records a move abroad for good (GBD FL).
    pub async fn move_abroad(&self, iin: Iin, country: &str, since: Date) {
        let r = self
            .scenario("gbd-fl")
            .inject_move_abroad(InjectMoveAbroadRequest {
                iin: iin.to_string(),
                country: country.into(),
                since: Some(pb_date(since)),
            })
            .await;
        assert!(must("InjectMoveAbroad", r).applied);
    }

    /// Records a court decision declaring the person incapable (GBD FL).
    pub async fn incapable(&self, iin: Iin, effective: Date) {
        let r = self
            .scenario("gbd-fl")
            .inject_incapacity(InjectIncapacityRequest {
                iin: iin.to_string(),
                capacity: shep_proto::gbdfl::LegalCapacity::Incapable as i32,
                effective: Some(pb_date(effective)),
            })
            .await;
        assert!(must("InjectIncapacity", r).applied);
    }

    /// Registers a number in BMG, or removes the person's number (`None`).
    pub async fn set_phone(&self, iin: Iin, phone: Option<&str>) {
        let r = self
            .scenario("bmg")
            .set_phone(SetPhoneRequest { iin: iin.to_string(), phone: phone.unwrap_or_default().into() })
            .await;
        assert!(must("SetPhone", r).applied);
    }

    /// Grants or withdraws a consent (KDP); scope "*" for every scope.
    pub async fn consent(&self, iin: Iin, consumer: &str, scope: &str, granted: bool) {
        let r = self
            .scenario("kdp")
            .set_consent(SetConsentRequest {
                subject: iin.to_string(),
                consumer: consumer.into(),
                scope: scope.into(),
                granted,
            })
            .await;
        assert!(must("SetConsent", r).applied);
    }

    /// Scripts how a citizen answers every SMS from now on (PEP): `Some((text, delay))`, or
    /// never (`None`).
    pub async fn answer(&self, iin: Iin, answer: Option<(&str, u32)>) {
        let (text, delay) = answer.unwrap_or_default();
        let r = self
            .scenario("pep")
            .set_citizen_answer(SetCitizenAnswerRequest {
                iin: iin.to_string(),
                answer: text.into(),
                delay_seconds: delay,
                no_answer: answer.is_none(),
            })
            .await;
        assert!(must("SetCitizenAnswer", r).applied);
    }

    /// Prepares a subject for a run on `date`: its name changes on `date`; its recipient
    /// consents to SDU and PEP (so that the generated consents play no part), and then
    /// behaves as `b`. `n` makes the new name unique.
    pub async fn prepare(&self, s: &Subject, b: Behaviour, n: usize, date: Date) {
        let r = s.recipient;
        for consumer in ["sdu", "pep"] {
            self.consent(r, consumer, "*", true).await;
        }
        self.answer(r, None).await;
        let day_before = date.yesterday().expect("a date after year -9999");
        match b {
            Behaviour::Answers(text) => self.answer(r, Some((text, ANSWER_DELAY_SECS))).await,
            Behaviour::Silent => {}
            Behaviour::NoPhone => self.set_phone(r, None).await,
            Behaviour::NoConsent => self.consent(r, "sdu", "*", false).await,
            Behaviour::Dead => self.death(r, day_before).await,
            Behaviour::Abroad => self.move_abroad(r, "DE", day_before).await,
            Behaviour::Incapable => self.incapable(r, day_before).await,
            Behaviour::Imprisoned => self.imprison(r, day_before).await,
        }
        self.change_subject_name(s, n, date).await;
    }

    /// Injects `fault` on every method of every registry node (`Scenario` itself is never
    /// faulted); `FaultSpec::default()` removes the faults.
    pub async fn fault_everywhere(&self, fault: FaultSpec) {
        for system in REGISTRIES {
            self.fault(system, "*", fault).await;
        }
    }

    /// Injects `fault` on one method (or "*") of one registry node.
    pub async fn fault(&self, system: &str, method: &str, f: FaultSpec) {
        let r = self
            .scenario(system)
            .set_fault(SetFaultRequest {
                method: method.into(),
                code: f.code,
                rate: f.rate,
                latency_ms: f.latency_ms,
                latency_jitter_ms: f.jitter_ms,
                outage_start: None,
                outage_end: None,
            })
            .await;
        let methods = must("SetFault", r).methods;
        let removal = f.rate == 0.0 && f.latency_ms == 0 && f.jitter_ms == 0;
        assert!(removal || methods > 0, "{method} is not served by {system}");
    }

    // ---- the clock ---------------------------------------------------------------------------

    /// The simulated time.
    pub async fn now(&self) -> Timestamp {
        from_pb_ts(must("GetClock", self.scenario("gbd-ul").get_clock(GetClockRequest {}).await).now.as_ref())
    }

    /// Sets the simulated time (forward only).
    pub async fn set_clock(&self, t: Timestamp) {
        must("SetClock", self.scenario("gbd-ul").set_clock(SetClockRequest { now: Some(pb_ts(t)) }).await);
    }

    // ---- what came out -----------------------------------------------------------------------

    /// Every SMS in PEP's outbox, oldest first.
    pub async fn outbox(&self) -> Vec<OutboxSms> {
        let s =
            must("ListOutbox", PortalClient::new(self.channel("pep")).list_outbox(ListOutboxRequest::default()).await);
        s.map(|r| r.unwrap_or_else(|e| panic!("ListOutbox broke: {e}"))).collect().await
    }

    /// Every permit of a holder in e-license (any service, any status).
    pub async fn permits(&self, h: Holder) -> Vec<Permit> {
        let req = elicense::ListPermitsRequest { holder: Some(h.to_pb()), service_codes: vec![] };
        must("ListPermits", PermitRegistryClient::new(self.channel("e-license")).list_permits(req).await).permits
    }

    /// One permit by number.
    pub async fn permit(&self, number: &str) -> Permit {
        let req = elicense::GetPermitRequest { permit_number: number.into() };
        must("GetPermit", PermitRegistryClient::new(self.channel("e-license")).get_permit(req).await)
    }

    /// The notifications of a holder's personal cabinet in e-license, newest first.
    pub async fn cabinet(&self, h: Holder) -> Vec<CabinetNotification> {
        let req = elicense::ListCabinetNotificationsRequest { holder: Some(h.to_pb()) };
        must(
            "ListCabinetNotifications",
            PermitRegistryClient::new(self.channel("e-license")).list_cabinet_notifications(req).await,
        )
        .notifications
    }

    /// Every call the bus recorded about a person's data ("who looked at my data"), decided
    /// calls included while they are still under way.
    pub async fn subject_accesses(&self, iin: Iin) -> Vec<shep_proto::shep::AuditRecord> {
        let req = shep_proto::shep::SubjectAccessesRequest { iin: iin.to_string() };
        let mut admin = shep_proto::shep::bus_admin_client::BusAdminClient::new(self.channel("bus"));
        let s = must("SubjectAccesses", admin.subject_accesses(req).await);
        s.map(|r| r.unwrap_or_else(|e| panic!("SubjectAccesses broke: {e}"))).collect().await
    }

    // ---- the SDU -----------------------------------------------------------------------------

    /// `RunDaily`; the status is the caller's to check.
    pub async fn run_daily(&self, pilot: &str, date: Date) -> Result<pb::RunDailyResponse, tonic::Status> {
        self.sdu()
            .run_daily(pb::RunDailyRequest { pilot_id: pilot.into(), date: Some(pb_date(date)) })
            .await
            .map(|r| r.into_inner())
    }

    /// Starts a run that must start; returns its id.
    pub async fn start_run(&self, pilot: &str, date: Date) -> String {
        match self.run_daily(pilot, date).await {
            Ok(r) => r.run_id,
            Err(s) => panic!("RunDaily {pilot} {date} failed: {:?}: {}", s.code(), s.message()),
        }
    }

    /// One run.
    pub async fn run(&self, run_id: &str) -> pb::Run {
        must("GetRun", self.sdu().get_run(pb::GetRunRequest { run_id: run_id.into() }).await)
    }

    /// Every case of a run (without history), by case id.
    pub async fn cases(&self, run_id: &str) -> Vec<pb::Case> {
        let req = pb::ListCasesRequest { run_id: run_id.into(), ..Default::default() };
        let s = must("ListCases", self.sdu().list_cases(req).await);
        s.map(|r| r.unwrap_or_else(|e| panic!("ListCases broke: {e}"))).collect().await
    }

    /// One case with its history.
    pub async fn case(&self, case_id: &str) -> pb::Case {
        must("GetCase", self.sdu().get_case(pb::GetCaseRequest { case_id: case_id.into() }).await)
    }

    /// The case of a holder in a run, with its history.
    pub async fn case_of(&self, run_id: &str, h: Holder) -> pb::Case {
        let id = h.id();
        let found = self
            .cases(run_id)
            .await
            .into_iter()
            .find(|c| c.subject_bin == id || c.subject_iin == id)
            .unwrap_or_else(|| panic!("run {run_id} has no case of {id}"));
        self.case(&found.case_id).await
    }

    /// The funnel of a pilot for a date.
    pub async fn report(&self, pilot: &str, date: Date) -> pb::FunnelReport {
        let req = pb::GetReportRequest { pilot_id: pilot.into(), date: Some(pb_date(date)) };
        must("GetReport", self.sdu().get_report(req).await)
    }

    /// Waits until the runs have nothing to do before the clock moves again: each has read
    /// its diff, every answer PEP holds for their cases is in the case's history, and every
    /// open case waits for an answer whose deadline is still ahead.
    pub async fn settle(&self, run_ids: &[&str]) {
        let started = Instant::now();
        loop {
            let Some(why) = self.busy(run_ids).await else { return };
            assert!(started.elapsed() < PATIENCE, "not settled after {PATIENCE:?}: {why}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the runs still have to do now, if anything.
    async fn busy(&self, run_ids: &[&str]) -> Option<String> {
        let now = self.now().await;
        let mut cases = vec![];
        for id in run_ids {
            let run = self.run(id).await;
            if run.state() == RunState::Running || run.state() == RunState::Unspecified {
                return Some(format!("run {id} is {:?}", run.state()));
            }
            cases.extend(self.cases(id).await);
        }
        let due = |c: &pb::Case| c.answer_deadline.is_none_or(|d| d.seconds <= now.as_second());
        if let Some(c) = cases.iter().find(|c| c.outcome() == Outcome::Open && due(c)) {
            return Some(format!("case {} has a call or a deadline due", c.case_id));
        }
        // Answers PEP holds (reading them delivers those due) that SDU has not taken yet.
        let ids: HashSet<&str> = cases.iter().map(|c| c.case_id.as_str()).collect();
        let req = StreamAnswersRequest { cursor: String::new(), follow: false };
        let read = async {
            let s = PortalClient::new(self.channel("pep")).stream_answers(req).await?.into_inner();
            s.collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>()
        };
        let answers = match read.await {
            Ok(a) => a,
            // PEP may be faulted on purpose: read again at the next poll.
            Err(e) => return Some(format!("cannot read PEP's answers: {e}")),
        };
        let held = answers.iter().filter(|a| ids.contains(a.case_id.as_str())).count();
        let mut taken = 0;
        for c in cases.iter().filter(|c| c.sms_attempts > 0) {
            let steps = self.case(&c.case_id).await.steps;
            taken += steps.iter().filter(|s| s.kind() == pb::CaseStepKind::AnswerReceived).count();
        }
        (held != taken).then(|| format!("{held} answers at PEP, {taken} taken"))
    }

    /// Polls a case until `done` holds for it; returns it with its history.
    pub async fn wait_case(&self, case_id: &str, what: &str, done: impl Fn(&pb::Case) -> bool) -> pb::Case {
        let started = Instant::now();
        loop {
            let c = self.case(case_id).await;
            if done(&c) {
                return c;
            }
            assert!(started.elapsed() < PATIENCE, "case {case_id}: not {what} after {PATIENCE:?}: {c:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls until every case of the run is closed; returns the cases.
    pub async fn wait_closed(&self, run_id: &str) -> Vec<pb::Case> {
        let started = Instant::now();
        loop {
            let cases = self.cases(run_id).await;
            let open: Vec<&str> =
                cases.iter().filter(|c| c.outcome() == Outcome::Open).map(|c| c.case_id.as_str()).collect();
            if open.is_empty() {
                return cases;
            }
            assert!(started.elapsed() < PATIENCE, "run {run_id}: still open after {PATIENCE:?}: {open:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The SMS of PEP's outbox by case id.
pub fn sms_by_case(outbox: &[OutboxSms]) -> HashMap<String, Vec<&OutboxSms>> {
    let mut m: HashMap<String, Vec<&OutboxSms>> = HashMap::new();
    for s in outbox {
        m.entry(s.case_id.clone()).or_default().push(s);
    }
    m
}

/// Checks that nothing was done twice: PEP sent one SMS per (case, attempt), as many as the
/// case counts; e-license formed at most one new permit per old one, and the permits of a
/// re-issued case are each replaced exactly once. `cases` are every case of the runs whose
/// SMS are in `outbox`.
pub async fn assert_nothing_duplicated(t: &Tester, cases: &[pb::Case], outbox: &[OutboxSms]) {
    let mut seen = HashSet::new();
    for s in outbox {
        assert!(seen.insert((s.case_id.clone(), s.attempt)), "two SMS for {} attempt {}", s.case_id, s.attempt);
    }
    let by_case = sms_by_case(outbox);
    for c in cases {
        let sent = by_case.get(&c.case_id).map_or(0, Vec::len);
        assert_eq!(sent as u32, c.sms_attempts, "SMS in PEP's outbox for {}", c.case_id);
        let h = if c.subject_bin.is_empty() {
            Holder::Person(Iin::parse(&c.subject_iin).expect("the case's IIN"))
        } else {
            Holder::Org(Bin::parse(&c.subject_bin).expect("the case's BIN"))
        };
        let permits = t.permits(h).await;
        for old in &c.permit_numbers {
            let replacing: Vec<&Permit> = permits.iter().filter(|p| &p.replaces == old).collect();
            let want = usize::from(c.outcome() == Outcome::Reissued);
            if replacing.len() != want {
                let steps = t.case(&c.case_id).await.steps;
                panic!(
                    "{} new permits replace {old}, not {want} ({}, {:?}): {steps:#?}",
                    replacing.len(),
                    c.case_id,
                    c.outcome()
                );
            }
        }
    }
}
