//! Scenario control over real mutual-TLS sockets: injections seen by every node of the
//! simulation, faults and their reset, the manual clock.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, collect, reason, violations};
use shep_proto::bmg::GetMobileNumberRequest;
use shep_proto::bmg::mobile_registry_client::MobileRegistryClient;
use shep_proto::gbdfl::person_registry_client::PersonRegistryClient;
use shep_proto::gbdfl::{GetPersonRequest, GetPersonsRequest, LifeStatus};
use shep_proto::gbdul::organization_registry_client::OrganizationRegistryClient;
use shep_proto::gbdul::{GetOrganizationRequest, StreamNameChangesRequest};
use shep_proto::shep::{Date, DateRange, FullName, LocalizedText};
use shep_proto::sim::scenario_client::ScenarioClient;
use shep_proto::sim::*;
use shep_proto::zags::civil_act_registry_client::CivilActRegistryClient;
use shep_proto::zags::{ActKind, StreamActsRequest};
use shep_simulators::Registry;
use tonic::Code;
use tonic::transport::Channel;

fn scenario(h: &Harness, r: Registry) -> ScenarioClient<Channel> {
    ScenarioClient::new(h.channel(r, "operator"))
}

fn today(h: &Harness) -> Date {
    h.sim.country().today().to_proto()
}

#[tokio::test]
async fn injections_are_seen_by_every_node_and_applied_once() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let today_range = DateRange { from: Some(today(&h)), to: Some(today(&h)) };

    // A rename concerns GBD UL only.
    let org = c.orgs()[3];
    let new_name = LocalizedText { ru: "ТОО \"Сценарий\"".into(), kk: "\"Сценарий\" ЖШС".into() };
    let req = InjectRenameRequest { bin: org.bin.to_string(), new_name: Some(new_name.clone()), date: None };
    let r = scenario(&h, Registry::Zags).inject_rename(req.clone()).await.unwrap().into_inner();
    assert!(!r.applied);
    let r = scenario(&h, Registry::GbdUl).inject_rename(req.clone()).await.unwrap().into_inner();
    assert!(r.applied);
    assert_eq!(r.old_name, Some(org.name.to_proto()));
    let again = scenario(&h, Registry::GbdUl).inject_rename(req).await.unwrap().into_inner();
    assert_eq!(again.old_name, Some(org.name.to_proto()), "the same injection again changes nothing");
    let mut ul = OrganizationRegistryClient::new(h.channel(Registry::GbdUl, "sdu"));
    let got = ul.get_organization(GetOrganizationRequest { bin: org.bin.to_string() }).await.unwrap().into_inner();
    assert_eq!(got.name, Some(new_name.clone()));
    assert_eq!(got.name_history.last().unwrap().new_name, Some(new_name.clone()));
    let feed = collect(
        ul.stream_name_changes(StreamNameChangesRequest { range: Some(today_range), cursor: String::new(), limit: 0 })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let injected: Vec<_> = feed.iter().filter(|x| x.new_name.as_ref() == Some(&new_name)).collect();
    assert_eq!(injected.len(), 1);
    assert_eq!(injected[0].bin, org.bin.to_string());

    // A change of name concerns ZAGS and GBD FL: sent to both, recorded once.
    let p = c.persons()[c.persons().len() / 2];
    let new = FullName { surname: "Тестова".into(), name: "Айгүл".into(), patronymic: String::new() };
    let req = InjectNameChangeRequest {
        iin: p.iin.to_string(),
        new_name: Some(new.clone()),
        date: None,
        kind: ActKind::Marriage as i32,
    };
    let z = scenario(&h, Registry::Zags).inject_name_change(req.clone()).await.unwrap().into_inner();
    assert!(z.applied && z.act_id.starts_with("AZ"));
    let f = scenario(&h, Registry::GbdFl).inject_name_change(req).await.unwrap().into_inner();
    assert!(f.applied && f.act_id.is_empty());
    assert_eq!(f.old_name, z.old_name);
    let mut fl = PersonRegistryClient::new(h.channel(Registry::GbdFl, "sdu"));
    let person = fl.get_person(GetPersonRequest { iin: p.iin.to_string() }).await.unwrap().into_inner();
    assert_eq!(person.full_name, Some(new));
    let mut zags = CivilActRegistryClient::new(h.channel(Registry::Zags, "sdu"));
    let acts = collect(
        zags.stream_acts(StreamActsRequest {
            range: Some(DateRange { from: Some(today(&h)), to: Some(today(&h)) }),
            kinds: vec![ActKind::Marriage as i32],
            cursor: String::new(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert_eq!(acts.iter().filter(|a| a.subject_iin == p.iin.to_string()).count(), 1);
    assert_eq!(acts.iter().find(|a| a.act_id == z.act_id).unwrap().old_name, z.old_name);

    // Death, imprisonment, abroad.
    let q = c.persons()[c.persons().len() / 3];
    let d = scenario(&h, Registry::Zags)
        .inject_death(InjectDeathRequest { iin: q.iin.to_string(), date: None })
        .await
        .unwrap()
        .into_inner();
    assert!(d.applied && !d.act_id.is_empty());
    let person = fl.get_person(GetPersonRequest { iin: q.iin.to_string() }).await.unwrap().into_inner();
    assert_eq!(person.life_status, LifeStatus::Dead as i32);
    assert_eq!(person.death_date, Some(today(&h)));

    let w = c.persons()[c.persons().len() / 4];
    let r = scenario(&h, Registry::GbdFl)
        .inject_imprisonment(InjectImprisonmentRequest { iin: w.iin.to_string(), from: None, to: None })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    let r = scenario(&h, Registry::GbdFl)
        .inject_move_abroad(InjectMoveAbroadRequest { iin: w.iin.to_string(), country: "DE".into(), since: None })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    let person = fl.get_person(GetPersonRequest { iin: w.iin.to_string() }).await.unwrap().into_inner();
    assert!(person.imprisonment.unwrap().imprisoned);
    assert_eq!(person.residence.unwrap().country, "DE");

    let e = scenario(&h, Registry::GbdFl)
        .inject_move_abroad(InjectMoveAbroadRequest { iin: w.iin.to_string(), country: "KZ".into(), since: None })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["country".to_string()]);
    let later = Date { year: 2026, month: 1, day: 1 };
    let earlier = Date { year: 2025, month: 1, day: 1 };
    let e = scenario(&h, Registry::GbdFl)
        .inject_imprisonment(InjectImprisonmentRequest { iin: w.iin.to_string(), from: Some(later), to: Some(earlier) })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["to".to_string()]);
    let unknown = (0..100).find_map(|s| shep_domain::Iin::from_parts(1850, 1, 1, shep_domain::Sex::Male, s)).unwrap();
    let e = scenario(&h, Registry::GbdFl)
        .inject_death(InjectDeathRequest { iin: unknown.to_string(), date: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let r = scenario(&h, Registry::Bmg)
        .inject_death(InjectDeathRequest { iin: unknown.to_string(), date: None })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.applied);

    // Reset undoes it all.
    scenario(&h, Registry::Kdp).reset(ResetRequest {}).await.unwrap();
    let got = ul.get_organization(GetOrganizationRequest { bin: org.bin.to_string() }).await.unwrap().into_inner();
    assert_eq!(got.name, Some(org.name.to_proto()));
    let person = fl.get_person(GetPersonRequest { iin: q.iin.to_string() }).await.unwrap().into_inner();
    assert_ne!(person.life_status, LifeStatus::Dead as i32);
}

#[tokio::test]
async fn faults_apply_to_the_batched_permit_look_up() {
    use shep_proto::elicense::permit_registry_client::PermitRegistryClient;
    use shep_proto::elicense::{Holder, ListPermitsByBinsRequest, ListPermitsRequest, holder};
    let h = Harness::start().await;
    let bin = h.sim.country().orgs()[0].bin.to_string();
    let mut el = PermitRegistryClient::new(h.channel(Registry::ELicense, "sdu"));
    let mut sc = scenario(&h, Registry::ELicense);
    let by_bins = || ListPermitsByBinsRequest { bins: vec![bin.clone()], service_codes: vec![] };
    let one = || ListPermitsRequest { holder: Some(Holder { id: Some(holder::Id::Bin(bin.clone())) }), service_codes: vec![] };

    let r = sc
        .set_fault(SetFaultRequest {
            method: "/kz.gov.elicense.v1.PermitRegistry/ListPermitsByBins".into(),
            code: Code::Unavailable as i32,
            rate: 1.0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.methods, 1);
    let e = el.list_permits_by_bins(by_bins()).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::Unavailable, "SIMULATED_FAULT".to_string()));
    el.list_permits(one()).await.unwrap();
    // A fault that does nothing removes it.
    let off = SetFaultRequest { method: "/kz.gov.elicense.v1.PermitRegistry/ListPermitsByBins".into(), ..Default::default() };
    assert_eq!(sc.set_fault(off).await.unwrap().into_inner().methods, 0);
    el.list_permits_by_bins(by_bins()).await.unwrap();

    // "*" covers it too: latency on every method of e-license.
    let r = sc
        .set_fault(SetFaultRequest { method: "*".into(), latency_ms: 300, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.methods, 6);
    let t = Instant::now();
    el.list_permits_by_bins(by_bins()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn faults_apply_to_registry_methods_until_reset() {
    let h = Harness::start().await;
    let iin = h.sim.country().persons()[0].iin.to_string();
    let mut fl = PersonRegistryClient::new(h.channel(Registry::GbdFl, "sdu"));
    let mut sc = scenario(&h, Registry::GbdFl);
    let get_person = "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson";

    let r = sc
        .set_fault(SetFaultRequest {
            method: get_person.into(),
            code: Code::Unavailable as i32,
            rate: 1.0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.methods, 1);
    let e = fl.get_person(GetPersonRequest { iin: iin.clone() }).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::Unavailable, "SIMULATED_FAULT".to_string()));
    // Other methods, and Scenario itself, are not affected.
    collect(fl.get_persons(GetPersonsRequest { iins: vec![iin.clone()] }).await.unwrap().into_inner()).await;
    sc.get_clock(GetClockRequest {}).await.unwrap();

    // A fault on a method this node does not serve applies to nothing.
    let r = sc
        .set_fault(SetFaultRequest {
            method: "/kz.gov.bmg.v1.MobileRegistry/GetMobileNumber".into(),
            code: 14,
            rate: 1.0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.methods, 0);

    // Latency on every method.
    let r = sc
        .set_fault(SetFaultRequest { method: "*".into(), latency_ms: 300, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.methods, 2);
    let t = Instant::now();
    collect(fl.get_persons(GetPersonsRequest { iins: vec![iin.clone()] }).await.unwrap().into_inner()).await;
    assert!(t.elapsed() >= Duration::from_millis(300));

    // An outage window on the simulated clock.
    let now = h.sim.now();
    let mut bmg = MobileRegistryClient::new(h.channel(Registry::Bmg, "pep"));
    scenario(&h, Registry::Bmg)
        .set_fault(SetFaultRequest {
            method: "*".into(),
            outage_start: Some(prost_types::Timestamp { seconds: now, nanos: 0 }),
            outage_end: Some(prost_types::Timestamp { seconds: now + 60, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = bmg.get_mobile_number(GetMobileNumberRequest { iin: iin.clone() }).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::Unavailable, "SIMULATED_OUTAGE".to_string()));
    sc.advance_clock(AdvanceClockRequest { seconds: 60 }).await.unwrap();
    bmg.get_mobile_number(GetMobileNumberRequest { iin: iin.clone() }).await.unwrap();

    // Invalid faults.
    let e = sc
        .set_fault(SetFaultRequest { method: "*".into(), code: 14, rate: 2.0, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["rate".to_string()]);
    let e = sc
        .set_fault(SetFaultRequest { method: "*".into(), code: 17, rate: 0.5, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["code".to_string()]);
    let e = sc
        .set_fault(SetFaultRequest {
            method: "*".into(),
            outage_start: Some(prost_types::Timestamp { seconds: 100, nanos: 0 }),
            outage_end: Some(prost_types::Timestamp { seconds: 50, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["outage_end".to_string()]);

    // Reset clears the faults and the clock.
    let r = sc.reset(ResetRequest {}).await.unwrap().into_inner();
    assert_eq!(r.now.unwrap().seconds, now);
    fl.get_person(GetPersonRequest { iin }).await.unwrap();
}

#[tokio::test]
async fn the_manual_clock_starts_at_nine_in_almaty_and_only_moves_forward() {
    let h = Harness::start().await;
    let mut sc = scenario(&h, Registry::Pep);
    let start = sc.get_clock(GetClockRequest {}).await.unwrap().into_inner().now.unwrap().seconds;
    assert_eq!(start, h.sim.country().today().at_almaty(9, 0));
    let r = sc.advance_clock(AdvanceClockRequest { seconds: 86_400 }).await.unwrap().into_inner();
    assert_eq!(r.now.unwrap().seconds, start + 86_400);
    // Shared: another node sees the same time.
    let other = scenario(&h, Registry::Zags).get_clock(GetClockRequest {}).await.unwrap().into_inner();
    assert_eq!(other.now.unwrap().seconds, start + 86_400);
    let e = sc
        .set_clock(SetClockRequest { now: Some(prost_types::Timestamp { seconds: start, nanos: 0 }) })
        .await
        .unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::FailedPrecondition, "CLOCK_BACKWARDS".to_string()));
    let e = sc.set_clock(SetClockRequest { now: None }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["now".to_string()]);
    let to = start + 10 * 86_400;
    let r = sc
        .set_clock(SetClockRequest { now: Some(prost_types::Timestamp { seconds: to, nanos: 0 }) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.now.unwrap().seconds, to);
}

#[tokio::test]
async fn capacity_and_phone_are_set_where_they_belong() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let p = (0..c.persons().len() as u32)
        .find(|&i| c.extra(i).is_none() && c.phone_of(i).is_some())
        .map(|i| c.persons()[i as usize])
        .unwrap();
    let iin = p.iin.to_string();

    // A court decision concerns GBD FL only.
    let req = InjectIncapacityRequest {
        iin: iin.clone(),
        capacity: shep_proto::gbdfl::LegalCapacity::Incapable as i32,
        effective: None,
    };
    assert!(!scenario(&h, Registry::Bmg).inject_incapacity(req.clone()).await.unwrap().into_inner().applied);
    assert!(scenario(&h, Registry::GbdFl).inject_incapacity(req).await.unwrap().into_inner().applied);
    let mut fl = PersonRegistryClient::new(h.channel(Registry::GbdFl, "sdu"));
    let person = fl.get_person(GetPersonRequest { iin: iin.clone() }).await.unwrap().into_inner();
    assert_eq!(person.legal_capacity(), shep_proto::gbdfl::LegalCapacity::Incapable);
    assert_eq!(person.capacity_decision.unwrap().effective_date, Some(today(&h)));
    let bad = InjectIncapacityRequest { iin: iin.clone(), capacity: 1, effective: None };
    let e = scenario(&h, Registry::GbdFl).inject_incapacity(bad).await.unwrap_err();
    assert_eq!(violations(&e), vec!["capacity".to_string()]);

    // A number concerns BMG only: removed, then registered anew.
    let bmg = MobileRegistryClient::new(h.channel(Registry::Bmg, "pep"));
    let number = || {
        let mut bmg = bmg.clone();
        let iin = iin.clone();
        async move { bmg.get_mobile_number(GetMobileNumberRequest { iin }).await.unwrap().into_inner() }
    };
    assert!(number().await.registered);
    let remove = SetPhoneRequest { iin: iin.clone(), phone: String::new() };
    assert!(!scenario(&h, Registry::Pep).set_phone(remove.clone()).await.unwrap().into_inner().applied);
    assert!(scenario(&h, Registry::Bmg).set_phone(remove).await.unwrap().into_inner().applied);
    assert!(!number().await.registered);
    let set = SetPhoneRequest { iin: iin.clone(), phone: "+77010000001".into() };
    assert!(scenario(&h, Registry::Bmg).set_phone(set).await.unwrap().into_inner().applied);
    assert_eq!(number().await.phone, "+77010000001");
    let bad = SetPhoneRequest { iin: iin.clone(), phone: "8 701 000 00 01".into() };
    let e = scenario(&h, Registry::Bmg).set_phone(bad).await.unwrap_err();
    assert_eq!(violations(&e), vec!["phone".to_string()]);
}
