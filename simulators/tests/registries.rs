//! GBD UL, GBD FL, ZAGS, e-license and BMG over real mutual-TLS sockets.

mod common;

use common::{Harness, collect, reason, violations};
use shep_domain::{Bin, Iin, Sex};
use shep_proto::bmg::{GetMobileNumberRequest, GetMobileNumbersRequest, mobile_number_result};
use shep_proto::bmg::mobile_registry_client::MobileRegistryClient;
use shep_proto::elicense::permit_registry_client::PermitRegistryClient;
use shep_proto::elicense::{
    GetPermitRequest, Holder, HolderName, ListCabinetNotificationsRequest, ListPermitsByBinsRequest,
    ListPermitsRequest, OrganizationReissue, PermitStatus, ReissueOrganizationPermitsRequest, ReissuePermitRequest,
    holder, holder_name, reissue_result,
};
use shep_proto::gbdfl::person_registry_client::PersonRegistryClient;
use shep_proto::gbdfl::{GetPersonRequest, GetPersonsRequest, person_result};
use shep_proto::gbdul::organization_registry_client::OrganizationRegistryClient;
use shep_proto::gbdul::{GetOrganizationRequest, StreamNameChangesRequest};
use shep_proto::shep::{DateRange, FullName, LocalizedText};
use shep_proto::zags::civil_act_registry_client::CivilActRegistryClient;
use shep_proto::zags::{ActKind, GetActsOfPersonsRequest, GetPersonActsRequest, StreamActsRequest, person_acts_result};
use shep_simulators::Registry;
use shep_simulators::country::HolderRef;
use tonic::Code;

/// A valid IIN no generated person has (born in 1850).
fn unknown_iin() -> String {
    (0..100).find_map(|s| Iin::from_parts(1850, 1, 1, Sex::Male, s)).unwrap().to_string()
}

fn whole_span(h: &Harness) -> DateRange {
    let c = h.sim.country();
    DateRange { from: Some(c.history_start().to_proto()), to: Some(c.today().to_proto()) }
}

#[tokio::test]
async fn gbd_fl_persons_not_found_and_invalid() {
    let h = Harness::start().await;
    let mut fl = PersonRegistryClient::new(h.channel(Registry::GbdFl, "sdu"));
    let p = h.sim.country().persons()[10];
    let got = fl.get_person(GetPersonRequest { iin: p.iin.to_string() }).await.unwrap().into_inner();
    assert_eq!(got.iin, p.iin.to_string());
    assert_eq!(got.birth_date, Some(p.birth().to_proto()));
    assert_eq!(got.citizenship, "KZ");
    assert!(!got.full_name.unwrap().surname.is_empty());

    let e = fl.get_person(GetPersonRequest { iin: unknown_iin() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(reason(&e), "NOT_FOUND");

    let e = fl.get_person(GetPersonRequest { iin: "12345".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violations(&e), vec!["iin".to_string()]);
    assert_eq!(reason(&e), "INVALID_IIN_LENGTH");

    let batch = GetPersonsRequest { iins: vec![p.iin.to_string(), "90051530123x".into(), unknown_iin()] };
    let results = collect(fl.get_persons(batch).await.unwrap().into_inner()).await;
    assert_eq!(results.len(), 3);
    assert!(matches!(results[0].result, Some(person_result::Result::Person(_))));
    let codes: Vec<i32> = results[1..]
        .iter()
        .map(|r| match &r.result {
            Some(person_result::Result::Error(e)) => e.code,
            other => panic!("expected an error, got {other:?}"),
        })
        .collect();
    assert_eq!(codes, vec![Code::InvalidArgument as i32, Code::NotFound as i32]);
    assert_eq!(results[1].iin, "90051530123x");

    let e = fl.get_persons(GetPersonsRequest { iins: vec![] }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["iins".to_string()]);
}

#[tokio::test]
async fn gbd_ul_organizations_and_resumable_name_changes() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut ul = OrganizationRegistryClient::new(h.channel(Registry::GbdUl, "sdu"));

    let r = c.renames()[0];
    let org = &c.orgs()[r.org as usize];
    let got = ul.get_organization(GetOrganizationRequest { bin: org.bin.to_string() }).await.unwrap().into_inner();
    assert_eq!(got.name, Some(org.name.to_proto()));
    assert!(!got.name_history.is_empty());
    assert_eq!(got.name_history[0].old_name, Some(r.old.to_proto()));
    let head = got.first_head.expect("a first head");
    assert_eq!(head.iin, c.persons()[org.head as usize].iin.to_string());

    let mut bad = org.bin.to_string();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    let e = ul.get_organization(GetOrganizationRequest { bin: bad }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violations(&e), vec!["bin".to_string()]);
    let unknown = (0..1000).find_map(|s| shep_domain::Bin::from_parts(1990, 1, 4, 0, s)).unwrap();
    let e = ul.get_organization(GetOrganizationRequest { bin: unknown.to_string() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let all_req = StreamNameChangesRequest { range: Some(whole_span(&h)), cursor: String::new(), limit: 0 };
    let all = collect(ul.stream_name_changes(all_req.clone()).await.unwrap().into_inner()).await;
    assert_eq!(all.len(), c.renames().len());
    let keys: Vec<(i32, i32, i32, String)> = all
        .iter()
        .map(|x| {
            let d = x.change_date.unwrap();
            (d.year, d.month, d.day, x.bin.clone())
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "ordered by date, then BIN");
    // The same request gives the same feed; resuming after the 5th gives the rest.
    let again = collect(ul.stream_name_changes(all_req).await.unwrap().into_inner()).await;
    assert_eq!(again, all);
    let first = collect(
        ul.stream_name_changes(StreamNameChangesRequest {
            range: Some(whole_span(&h)),
            cursor: String::new(),
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert_eq!(first, all[..5]);
    let rest = collect(
        ul.stream_name_changes(StreamNameChangesRequest {
            range: Some(whole_span(&h)),
            cursor: first[4].cursor.clone(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert_eq!(rest, all[5..]);

    let e = ul
        .stream_name_changes(StreamNameChangesRequest { range: Some(whole_span(&h)), cursor: "nope".into(), limit: 0 })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["cursor".to_string()]);
    let e = ul.stream_name_changes(StreamNameChangesRequest::default()).await.unwrap_err();
    assert_eq!(violations(&e), vec!["range".to_string()]);
    let backwards = DateRange { from: whole_span(&h).to, to: whole_span(&h).from };
    let e = ul
        .stream_name_changes(StreamNameChangesRequest { range: Some(backwards), cursor: String::new(), limit: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn zags_acts_by_date_kind_cursor_and_person() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut zags = CivilActRegistryClient::new(h.channel(Registry::Zags, "sdu"));
    let kinds = vec![ActKind::NameChange as i32, ActKind::Marriage as i32, ActKind::Divorce as i32];
    let req = StreamActsRequest { range: Some(whole_span(&h)), kinds: kinds.clone(), cursor: String::new(), limit: 0 };
    let acts = collect(zags.stream_acts(req).await.unwrap().into_inner()).await;
    let expected = c
        .acts()
        .iter()
        .filter(|a| matches!(a.kind, ActKind::NameChange | ActKind::Marriage | ActKind::Divorce))
        .count();
    assert_eq!(acts.len(), expected);
    assert!(acts.iter().all(|a| kinds.contains(&a.kind)));
    assert!(acts.windows(2).all(|w| w[0].act_id < w[1].act_id));
    let changed = acts.iter().find(|a| a.old_name.is_some()).expect("a change of name");
    assert_ne!(changed.old_name, changed.new_name);

    let resumed = collect(
        zags.stream_acts(StreamActsRequest {
            range: Some(whole_span(&h)),
            kinds,
            cursor: acts[9].cursor.clone(),
            limit: 3,
        })
        .await
        .unwrap()
        .into_inner(),
    )
    .await;
    assert_eq!(resumed, acts[10..13]);

    let mine =
        zags.get_person_acts(GetPersonActsRequest { iin: changed.subject_iin.clone() }).await.unwrap().into_inner();
    assert!(mine.acts.iter().any(|a| a.act_id == changed.act_id));
    // Several persons at once: each as alone; a malformed IIN is an error for that one.
    let batch = zags
        .get_acts_of_persons(GetActsOfPersonsRequest {
            iins: vec![changed.subject_iin.clone(), "abc".into(), unknown_iin()],
        })
        .await
        .unwrap()
        .into_inner();
    let results = collect(batch).await;
    assert_eq!(results.len(), 3);
    match &results[0].result {
        Some(person_acts_result::Result::Acts(a)) => assert_eq!(a, &mine),
        other => panic!("acts expected, got {other:?}"),
    }
    match &results[1].result {
        Some(person_acts_result::Result::Error(e)) => assert_eq!(e.code, Code::InvalidArgument as i32),
        other => panic!("an error expected, got {other:?}"),
    }
    assert!(matches!(&results[2].result, Some(person_acts_result::Result::Acts(a)) if a.acts.is_empty()));
    let e = zags.get_acts_of_persons(GetActsOfPersonsRequest { iins: vec![] }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["iins".to_string()]);
    let none = zags.get_person_acts(GetPersonActsRequest { iin: unknown_iin() }).await.unwrap().into_inner();
    assert!(none.acts.is_empty());
    let e = zags.get_person_acts(GetPersonActsRequest { iin: "abc".into() }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["iin".to_string()]);
    let e = zags
        .stream_acts(StreamActsRequest {
            range: Some(whole_span(&h)),
            kinds: vec![99],
            cursor: String::new(),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["kinds[0]".to_string()]);
}

fn org_holder(bin: &str) -> Holder {
    Holder { id: Some(holder::Id::Bin(bin.to_owned())) }
}

#[tokio::test]
async fn elicense_reissue_is_idempotent_and_fills_the_cabinet() {
    let h = Harness::start().await;
    let mut el = PermitRegistryClient::new(h.channel(Registry::ELicense, "sdu"));
    let (bin, number) = common::active_org_permit(&h);

    let listed = el
        .list_permits(ListPermitsRequest { holder: Some(org_holder(&bin)), service_codes: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.permits.iter().any(|p| p.number == number));
    let got = el.get_permit(GetPermitRequest { permit_number: number.clone() }).await.unwrap().into_inner();
    assert_eq!(got.status, PermitStatus::Active as i32);

    let new_name = HolderName {
        name: Some(holder_name::Name::Organization(LocalizedText {
            ru: "ТОО \"Новое Имя\"".into(),
            kk: "\"Жаңа Атау\" ЖШС".into(),
        })),
    };
    let req = ReissuePermitRequest {
        permit_number: number.clone(),
        holder: Some(org_holder(&bin)),
        new_holder_name: Some(new_name.clone()),
        idempotency_key: "case-1".into(),
        reason: "proactive: test".into(),
    };
    let first = el.reissue_permit(req.clone()).await.unwrap().into_inner();
    assert!(!first.replayed);
    let new = first.new_permit.unwrap();
    let old = first.old_permit.unwrap();
    assert_eq!(new.replaces, number);
    assert_eq!(new.holder_name, Some(new_name.clone()));
    assert_eq!(new.status, PermitStatus::Active as i32);
    assert_eq!(old.status, PermitStatus::Reissued as i32);
    assert_eq!(old.replaced_by, new.number);
    assert_ne!(new.number, number);

    let again = el.reissue_permit(req.clone()).await.unwrap().into_inner();
    assert!(again.replayed);
    assert_eq!(again.new_permit.unwrap().number, new.number);

    // The batch form: the same item replays the single call's re-issue (same key, same
    // request); a permit no one holds is an error of its own item, with its reason.
    let item = OrganizationReissue {
        permit_number: number.clone(),
        holder_bin: bin.clone(),
        new_name: match &new_name.name {
            Some(holder_name::Name::Organization(t)) => Some(t.clone()),
            _ => None,
        },
        idempotency_key: "case-1".into(),
        reason: "proactive: test".into(),
    };
    let batch = el
        .reissue_organization_permits(ReissueOrganizationPermitsRequest {
            items: vec![
                item.clone(),
                OrganizationReissue { permit_number: "NO-SUCH".into(), idempotency_key: "case-9".into(), ..item.clone() },
                OrganizationReissue { reason: "other".into(), ..item.clone() },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let out: Vec<_> = batch.results.into_iter().map(|r| r.result).collect();
    match &out[0] {
        Some(reissue_result::Result::Reissued(r)) => {
            assert!(r.replayed);
            assert_eq!(r.new_permit.as_ref().unwrap().number, new.number);
        }
        other => panic!("a replay expected, got {other:?}"),
    }
    match &out[1] {
        Some(reissue_result::Result::Error(e)) => assert_eq!(e.code, Code::NotFound as i32),
        other => panic!("an error expected, got {other:?}"),
    }
    match &out[2] {
        Some(reissue_result::Result::Error(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (Code::AlreadyExists as i32, "IDEMPOTENCY_KEY_REUSED"))
        }
        other => panic!("an error expected, got {other:?}"),
    }
    let e = el.reissue_organization_permits(ReissueOrganizationPermitsRequest { items: vec![] }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["items".to_string()]);
    let all = el
        .list_permits(ListPermitsRequest { holder: Some(org_holder(&bin)), service_codes: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.permits.iter().filter(|p| p.replaces == number).count(), 1, "never two");

    let e = el.reissue_permit(ReissuePermitRequest { reason: "other".into(), ..req.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e =
        el.reissue_permit(ReissuePermitRequest { idempotency_key: "case-2".into(), ..req.clone() }).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::FailedPrecondition, "PERMIT_NOT_ACTIVE".to_string()));
    let person_name = HolderName {
        name: Some(holder_name::Name::Person(FullName {
            surname: "А".into(),
            name: "Б".into(),
            patronymic: String::new(),
        })),
    };
    let e = el
        .reissue_permit(ReissuePermitRequest {
            idempotency_key: "case-3".into(),
            new_holder_name: Some(person_name),
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["new_holder_name".to_string()]);
    let e =
        el.reissue_permit(ReissuePermitRequest { idempotency_key: String::new(), ..req.clone() }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["idempotency_key".to_string()]);

    let cabinet = el
        .list_cabinet_notifications(ListCabinetNotificationsRequest { holder: Some(org_holder(&bin)) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cabinet.notifications.len(), 1);
    assert_eq!(cabinet.notifications[0].permit_number, new.number);
    assert!(cabinet.notifications[0].text.contains(&number));

    let e = el.get_permit(GetPermitRequest { permit_number: "KZ01SEO99999999".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = el.list_permits(ListPermitsRequest { holder: None, service_codes: vec![] }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["holder".to_string()]);
    let e = el
        .list_permits(ListPermitsRequest { holder: Some(org_holder("123")), service_codes: vec![] })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["holder.bin".to_string()]);
}

/// A valid BIN no generated organization has.
fn unknown_bin(h: &Harness) -> String {
    let c = h.sim.country();
    (0..10_000)
        .filter_map(|s| Bin::from_parts(1995, 1, 4, 0, s))
        .find(|b| c.org_index(b).is_none())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn elicense_permits_by_bins_are_those_of_list_permits() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut el = PermitRegistryClient::new(h.channel(Registry::ELicense, "sdu"));
    // Organizations with and without permits, one unknown to the register, one asked twice.
    let with: Vec<String> = c
        .orgs()
        .iter()
        .enumerate()
        .filter(|(i, _)| c.permits_of(HolderRef::Org(*i as u32)).next().is_some())
        .map(|(_, o)| o.bin.to_string())
        .take(5)
        .collect();
    let without: Vec<String> = c
        .orgs()
        .iter()
        .enumerate()
        .filter(|(i, _)| c.permits_of(HolderRef::Org(*i as u32)).next().is_none())
        .map(|(_, o)| o.bin.to_string())
        .take(3)
        .collect();
    assert_eq!((with.len(), without.len()), (5, 3), "the country has both kinds");
    let mut bins: Vec<String> = with.iter().zip(&without).flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
    bins.extend(with[3..].iter().cloned());
    bins.push(unknown_bin(&h));
    bins.push(with[0].clone());
    let service_code = el
        .list_permits(ListPermitsRequest { holder: Some(org_holder(&with[0])), service_codes: vec![] })
        .await
        .unwrap()
        .into_inner()
        .permits[0]
        .service_code
        .clone();
    for services in [vec![], vec![service_code.clone()], vec!["NO-SUCH-SERVICE".to_string()]] {
        let got = el
            .list_permits_by_bins(ListPermitsByBinsRequest { bins: bins.clone(), service_codes: services.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.holders.iter().map(|h| h.bin.clone()).collect::<Vec<_>>(), bins, "request order");
        let mut nonempty = 0;
        for hp in &got.holders {
            let one = el
                .list_permits(ListPermitsRequest { holder: Some(org_holder(&hp.bin)), service_codes: services.clone() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(hp.permits, one.permits, "{} with {services:?}", hp.bin);
            nonempty += usize::from(!hp.permits.is_empty());
        }
        match services.first().map(String::as_str) {
            None => assert_eq!(nonempty, 6, "the five with permits, one of them twice"),
            Some("NO-SUCH-SERVICE") => assert_eq!(nonempty, 0),
            Some(_) => assert!(nonempty >= 2, "{got:?}"),
        }
    }
    let empty = el.list_permits_by_bins(ListPermitsByBinsRequest::default()).await.unwrap().into_inner();
    assert!(empty.holders.is_empty());

    // Bad input: the whole call is refused, naming the field.
    let mut bad = bins.clone();
    bad[2] = "12345678901a".into();
    let e = el
        .list_permits_by_bins(ListPermitsByBinsRequest { bins: bad.clone(), service_codes: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violations(&e), vec!["bins[2]".to_string()]);
    bad[2] = String::new();
    let e = el.list_permits_by_bins(ListPermitsByBinsRequest { bins: bad, service_codes: vec![] }).await.unwrap_err();
    assert_eq!((violations(&e), reason(&e)), (vec!["bins[2]".to_string()], "MISSING_FIELD".to_string()));
    let at_most = ListPermitsByBinsRequest { bins: vec![with[0].clone(); 1000], service_codes: vec![] };
    assert_eq!(el.list_permits_by_bins(at_most).await.unwrap().into_inner().holders.len(), 1000);
    let too_many = ListPermitsByBinsRequest { bins: vec![with[0].clone(); 1001], service_codes: vec![] };
    let e = el.list_permits_by_bins(too_many).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!((violations(&e), reason(&e)), (vec!["bins".to_string()], "INVALID_BATCH_SIZE".to_string()));
}

#[tokio::test]
async fn elicense_wrong_holder_and_the_name_at_issue() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut el = PermitRegistryClient::new(h.channel(Registry::ELicense, "sdu"));
    // A permit issued before its holder's rename carries the old name.
    let (r, index) = c
        .renames()
        .iter()
        .find_map(|r| {
            c.permits_of(HolderRef::Org(r.org))
                .find(|&i| c.permits()[i as usize].issued < r.day && c.renames_of(r.org).count() == 1)
                .map(|i| (*r, i))
        })
        .expect("a permit issued before a rename");
    let p = c.permits()[index as usize];
    let number = shep_simulators::country::permit_number(p.region, p.service, index + 1);
    let got = el.get_permit(GetPermitRequest { permit_number: number.clone() }).await.unwrap().into_inner();
    assert_eq!(got.holder_name.unwrap().name, Some(holder_name::Name::Organization(r.old.to_proto())));

    let other = c.orgs().iter().enumerate().find(|(i, _)| *i as u32 != r.org).unwrap().1.bin.to_string();
    let e = el
        .reissue_permit(ReissuePermitRequest {
            permit_number: number,
            holder: Some(org_holder(&other)),
            new_holder_name: Some(HolderName { name: Some(holder_name::Name::Organization(r.new.to_proto())) }),
            idempotency_key: "k".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::FailedPrecondition, "NOT_THE_HOLDER".to_string()));
}

#[tokio::test]
async fn bmg_numbers() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut bmg = MobileRegistryClient::new(h.channel(Registry::Bmg, "pep"));
    let with = (0..c.persons().len() as u32).find(|&i| c.phone_of(i).is_some()).unwrap();
    let without = (0..c.persons().len() as u32).find(|&i| c.phone_of(i).is_none()).unwrap();
    let r = bmg
        .get_mobile_number(GetMobileNumberRequest { iin: c.persons()[with as usize].iin.to_string() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.registered && r.phone == c.phone_of(with).unwrap().number && r.registered_at.is_some());
    let r = bmg
        .get_mobile_number(GetMobileNumberRequest { iin: c.persons()[without as usize].iin.to_string() })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.registered && r.phone.is_empty());
    let r = bmg.get_mobile_number(GetMobileNumberRequest { iin: unknown_iin() }).await.unwrap().into_inner();
    assert!(!r.registered);
    let e = bmg.get_mobile_number(GetMobileNumberRequest { iin: "000000000000".into() }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["iin".to_string()]);

    // Several at once: each as alone, a malformed IIN an error of its own.
    let iins = vec![
        c.persons()[with as usize].iin.to_string(),
        "000000000000".into(),
        c.persons()[without as usize].iin.to_string(),
    ];
    let r = bmg.get_mobile_numbers(GetMobileNumbersRequest { iins: iins.clone() }).await.unwrap().into_inner();
    let got: Vec<_> = r.results.iter().map(|x| (x.iin.clone(), x.result.clone())).collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].0, iins[0]);
    match &got[0].1 {
        Some(mobile_number_result::Result::Number(n)) => {
            assert!(n.registered && n.phone == c.phone_of(with).unwrap().number)
        }
        other => panic!("a number expected, got {other:?}"),
    }
    assert!(matches!(&got[1].1, Some(mobile_number_result::Result::Error(e)) if e.code == Code::InvalidArgument as i32));
    assert!(matches!(&got[2].1, Some(mobile_number_result::Result::Number(n)) if !n.registered));
    let e = bmg.get_mobile_numbers(GetMobileNumbersRequest { iins: vec![] }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["iins".to_string()]);
}
