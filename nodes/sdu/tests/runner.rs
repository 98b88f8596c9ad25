//! The SDU node against fake upstream services behind one mTLS "bus": every outcome of the
//! process, the gRPC service, and resumption after the runner is killed mid-way.

mod fakes;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use fakes::{Env, MapCountry, almaty, bin, date, eventually, iin, outcomes, permit, settled, url};
use futures::StreamExt;
use shep_proto::elicense::PermitStatus::{Active, Revoked};
use shep_proto::{gbdfl, sdu as pb, zags};
use shep_runtime::{NodeConfig, Shutdown, TlsConfig};
use shep_sdu::{RunState, SduHandle};
use tonic_types::StatusExt;

/// A gRPC client of the SDU node at `addr`, as the operator.
fn client(
    env: &Env,
    addr: std::net::SocketAddr,
) -> pb::proactive_service_client::ProactiveServiceClient<tonic::transport::Channel> {
    let tls = TlsConfig::from_pki_dir(&env.pki, "operator");
    pb::proactive_service_client::ProactiveServiceClient::new(
        shep_runtime::tls::channel(&tls, &url(addr)).unwrap(),
    )
}

const RUN_DATE: (i32, i32, i32) = (2026, 2, 3);

fn run_date() -> jiff::civil::Date {
    jiff::civil::date(RUN_DATE.0 as i16, RUN_DATE.1 as i8, RUN_DATE.2 as i8)
}

/// One organization per outcome, and individuals from ZAGS.
fn country() -> (MapCountry, HashMap<&'static str, String>) {
    let d = date(RUN_DATE.0, RUN_DATE.1, RUN_DATE.2);
    let mut c = MapCountry::default();
    let mut who = HashMap::new();
    let org = |c: &mut MapCountry,
               who: &mut HashMap<&'static str, String>,
               tag: &'static str,
               n: u32,
               permits: usize| {
        let b = bin(n);
        let h = iin(n);
        let ps = (0..permits)
            .map(|i| permit(&format!("SEO-{n}-{i}"), "SEZ-OBJ", &b, false, Active))
            .collect();
        c.rename(d, &b, Some(&h), ps);
        who.insert(tag, b);
        h
    };
    // Answers 1: both active SEZ permits re-issued; the MED-LIC and the revoked one are not offered.
    let h = org(&mut c, &mut who, "yes", 1, 2);
    c.permits
        .get_mut(&bin(1))
        .unwrap()
        .push(permit("MED-1", "MED-LIC", &bin(1), false, Active));
    c.permits.get_mut(&bin(1)).unwrap().push(permit(
        "SEO-1-old",
        "SEZ-OBJ",
        &bin(1),
        false,
        Revoked,
    ));
    c.answers.insert((h, 1), "1".into());
    let h = org(&mut c, &mut who, "no", 2, 1);
    c.answers.insert((h, 1), " 2 ".into());
    org(&mut c, &mut who, "silent", 3, 1);
    let h = org(&mut c, &mut who, "no_phone", 4, 1);
    c.no_phone.insert(h);
    let h = org(&mut c, &mut who, "no_consent", 5, 1);
    c.no_consent.insert(h);
    let h = org(&mut c, &mut who, "dead", 6, 1);
    c.persons.get_mut(&h).unwrap().life_status = gbdfl::LifeStatus::Dead as i32;
    let h = org(&mut c, &mut who, "abroad", 7, 1);
    let p = c.persons.get_mut(&h).unwrap();
    p.residence = Some(gbdfl::Residence {
        permanent_abroad: true,
        country: "DE".into(),
        since: None,
    });
    p.imprisonment = Some(gbdfl::Imprisonment {
        imprisoned: true,
        from: None,
        to: None,
    });
    let h = org(&mut c, &mut who, "incapable", 8, 1);
    let p = c.persons.get_mut(&h).unwrap();
    p.legal_capacity = gbdfl::LegalCapacity::Incapable as i32;
    p.imprisonment = Some(gbdfl::Imprisonment {
        imprisoned: true,
        from: None,
        to: None,
    });
    let h = org(&mut c, &mut who, "imprisoned", 9, 1);
    c.persons.get_mut(&h).unwrap().imprisonment = Some(gbdfl::Imprisonment {
        imprisoned: true,
        from: None,
        to: None,
    });
    org(&mut c, &mut who, "no_permits", 10, 0);
    let h = org(&mut c, &mut who, "bmg_down", 11, 1);
    c.notify_down.insert(h);
    let h = org(&mut c, &mut who, "second_sms", 12, 3);
    c.answers.insert((h.clone(), 1), "да".into());
    c.answers.insert((h.clone(), 2), "1".into());
    c.notify_flaky.insert(h);
    let h = org(&mut c, &mut who, "death_act", 13, 1);
    c.person_acts.insert(
        h.clone(),
        vec![zags::CivilAct {
            act_id: "d1".into(),
            kind: zags::ActKind::Death as i32,
            subject_iin: h,
            ..Default::default()
        }],
    );
    // An organization without a first head.
    let b = bin(14);
    c.rename(
        d,
        &b,
        None,
        vec![permit("SEO-14-0", "SEZ-OBJ", &b, false, Active)],
    );
    who.insert("headless", b);

    // Individuals.
    let p = iin(101);
    c.act(
        d,
        zags::ActKind::Marriage,
        &p,
        Some("Иванова"),
        Some("Петрова"),
        vec![permit("SEA-101", "SEZ-ACTIVITY", &p, true, Active)],
    );
    c.answers.insert((p.clone(), 1), "1".into());
    who.insert("person_yes", p);
    let p = iin(102);
    c.act(
        d,
        zags::ActKind::NameChange,
        &p,
        Some("Ким"),
        Some("Пак"),
        vec![permit("SEA-102", "SEZ-ACTIVITY", &p, true, Active)],
    );
    c.no_consent.insert(p.clone());
    who.insert("person_no_consent", p);
    let p = iin(103);
    c.act(
        d,
        zags::ActKind::Divorce,
        &p,
        Some("Ли"),
        Some("Цой"),
        vec![],
    );
    who.insert("person_no_permits", p);
    // Acts that change no name, or of another kind: not diffs.
    let p = iin(104);
    c.act(
        d,
        zags::ActKind::Marriage,
        &p,
        None,
        None,
        vec![permit("SEA-104", "SEZ-ACTIVITY", &p, true, Active)],
    );
    c.act(
        d,
        zags::ActKind::Birth,
        &iin(105),
        None,
        Some("Малыш"),
        vec![],
    );
    (c, who)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_through_the_bus_and_the_service() {
    let (country, who) = country();
    let env = Env::new(country, "2026-02-03T09:00:00", 0).await;
    let sdu = env.start_sdu(4).await.expect("sdu starts");
    assert!(
        sdu.services
            .iter()
            .any(|s| s == "kz.gov.sdu.v1.ProactiveService")
    );
    let h = sdu.handle.clone();

    // A second runner on the same database is refused.
    let e = env
        .start_sdu(4)
        .await
        .err()
        .expect("second runner refused")
        .to_string();
    assert!(e.contains("in use by another runner"), "{e}");

    let mut api = client(&env, sdu.addr);
    let rsp = api
        .run_daily(pb::RunDailyRequest {
            pilot_id: "sez-000".into(),
            date: Some(date(RUN_DATE.0, RUN_DATE.1, RUN_DATE.2)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!rsp.existing);
    let run = shep_sdu::RunId(rsp.run_id.clone());
    let again = api
        .run_daily(pb::RunDailyRequest {
            pilot_id: "sez-000".into(),
            date: Some(date(RUN_DATE.0, RUN_DATE.1, RUN_DATE.2)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing && again.run_id == rsp.run_id);

    // Day 0: everyone is checked and notified; the immediate answers are taken.
    settled(&h, &run).await;
    let expected_now = [
        ("yes", "REISSUED"),
        ("no", "REFUSED"),
        ("no_phone", "NO_PHONE"),
        ("no_consent", "NO_CONSENT"),
        ("dead", "EXCLUDED_DEAD_OR_MISSING"),
        ("abroad", "EXCLUDED_ABROAD"),
        ("incapable", "EXCLUDED_INCAPABLE"),
        ("imprisoned", "EXCLUDED_IMPRISONED"),
        ("bmg_down", "FAILED"),
        ("death_act", "EXCLUDED_DEAD_OR_MISSING"),
        ("headless", "FAILED"),
        ("person_yes", "REISSUED"),
        ("person_no_consent", "NO_CONSENT"),
        ("silent", "OPEN"),
        ("second_sms", "OPEN"),
    ];
    eventually("the immediate answers are taken", || {
        let o = outcomes(&h, "sez-000", run_date());
        expected_now
            .iter()
            .all(|(k, v)| o.get(&who[k]).map(String::as_str) == Some(*v))
    })
    .await;
    let o = outcomes(&h, "sez-000", run_date());
    assert_eq!(
        o.len(),
        expected_now.len(),
        "no case for subjects without permits: {o:?}"
    );
    assert!(!o.contains_key(&who["no_permits"]) && !o.contains_key(&who["person_no_permits"]));

    // Nothing moves before the deadline: three working days after Tue 3 Feb 09:00 is Fri 6 Feb 09:00.
    env.clock.set(almaty("2026-02-06T08:59:59"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        env.fakes.rec().sent.keys().filter(|(_, a)| *a == 2).count(),
        0
    );
    env.clock.set(almaty("2026-02-06T09:00:00"));
    // Right after the jump, a settled run has already fired the deadline: both second SMS
    // are out (wait_run_settled lets the timer loop catch up with the clock first).
    settled(&h, &run).await;
    assert_eq!(
        env.fakes.rec().sent.keys().filter(|(_, a)| *a == 2).count(),
        2,
        "settled right after a clock jump, the due re-sends have gone out"
    );
    eventually("the second SMS goes out and is answered", || {
        let o = outcomes(&h, "sez-000", run_date());
        o[&who["second_sms"]] == "REISSUED"
            && env.fakes.rec().sent.keys().filter(|(_, a)| *a == 2).count() == 2
    })
    .await;
    assert_eq!(outcomes(&h, "sez-000", run_date())[&who["silent"]], "OPEN");
    // SMS 2 went out Fri 6 Feb 09:00 → Mon, Tue, Wed 11 Feb 09:00.
    env.clock.set(almaty("2026-02-11T09:00:00"));
    eventually("no answer twice ends the case", || {
        outcomes(&h, "sez-000", run_date())[&who["silent"]] == "NO_ANSWER"
    })
    .await;
    let rec = settled(&h, &run).await;
    eventually("the run is done", || {
        h.run(&run).unwrap().state == RunState::Done
    })
    .await;
    assert!(rec.settled());

    // The funnel.
    let report = h.report("sez-000", run_date()).unwrap();
    let c = report.counts;
    assert!(report.complete);
    assert_eq!(
        c.diffs, 17,
        "14 renames + 3 ФИО changes (the act without a new name and the birth are no diffs)"
    );
    assert_eq!(c.with_permits, 14);
    assert_eq!(
        c.recipients, 13,
        "every case with permits but the headless organization's (a person without permits \
         is known but leaves the funnel before this line)"
    );
    assert_eq!(
        (
            c.excluded_dead_or_missing,
            c.excluded_abroad,
            c.excluded_incapable,
            c.excluded_imprisoned
        ),
        (2, 1, 1, 1)
    );
    assert_eq!((c.no_consent, c.no_phone, c.failed, c.open), (2, 1, 2, 0));
    assert_eq!(
        (c.sms_sent, c.sms_resent),
        (5, 2),
        "yes, no, silent, second_sms, person_yes"
    );
    assert_eq!(
        (c.answered_yes, c.answered_no, c.no_answer, c.reissued),
        (3, 1, 1, 3)
    );
    let text = report.render_text();
    assert!(
        text.contains("re-issued") && text.contains("complete"),
        "{text}"
    );

    // One SMS per case and attempt, and every active SEZ permit re-issued exactly once.
    let yes_case = h
        .cases_json("sez-000", run_date())
        .unwrap()
        .into_iter()
        .find(|r| r.subject_bin.as_deref() == Some(&who["yes"]))
        .unwrap();
    {
        let rec = env.fakes.rec();
        assert_eq!(
            rec.sent
                .keys()
                .filter(|(c, _)| *c == yes_case.case_id)
                .count(),
            1,
            "one SMS for several permits"
        );
        assert_eq!(rec.notify_replays, 0);
        assert_eq!(rec.reissue_replays, 0);
        let mut reissued: Vec<&String> = rec.reissued.values().map(|(o, _)| o).collect();
        reissued.sort();
        assert_eq!(
            reissued,
            [
                "SEA-101", "SEO-1-0", "SEO-1-1", "SEO-12-0", "SEO-12-1", "SEO-12-2"
            ]
        );
        assert!(
            rec.missing_tokens.is_empty(),
            "every personal-data call carried its token: {:?}",
            rec.missing_tokens
        );
        let sms = &rec.sent[&(yes_case.case_id.clone(), 1)].2;
        assert!(sms.contains("отправьте цифру 1"), "{sms}");
        // The failing BMG was tried max_attempts times, the flaky one retried.
        assert_eq!(rec.notify_by_iin[&iin(11)], 3);
    }

    // The case record: permits with their new numbers, steps with times.
    assert_eq!(
        yes_case
            .permits
            .iter()
            .map(|p| p.new_number.clone().unwrap())
            .collect::<Vec<_>>(),
        ["R-SEO-1-0", "R-SEO-1-1"]
    );
    let kinds: Vec<&str> = yes_case.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "OPENED",
            "RECIPIENT_RESOLVED",
            "CONSENT_OBTAINED",
            "CHECKS_PASSED",
            "SMS_SENT",
            "ANSWER_RECEIVED",
            "PERMIT_REISSUED",
            "PERMIT_REISSUED",
            "CLOSED"
        ]
    );
    let json = yes_case.to_json();
    assert_eq!(json["outcome"], "REISSUED");
    assert!(
        json["steps"][4]["at"]
            .as_str()
            .unwrap()
            .starts_with("2026-02-03T04:00:00")
    );
    let holder = h
        .holder(&shep_sdu::case::Subject::Organization(
            shep_domain::Bin::parse(&who["yes"]).unwrap(),
        ))
        .unwrap()
        .unwrap();
    assert_eq!(holder.permits.len(), 2);
    let second = h
        .cases_json("sez-000", run_date())
        .unwrap()
        .into_iter()
        .find(|r| r.subject_bin.as_deref() == Some(&who["second_sms"]))
        .unwrap();
    assert_eq!(second.sms_attempts, 2);
    assert!(
        second
            .steps
            .iter()
            .any(|s| s.kind.as_str() == "ANSWER_RECEIVED"
                && s.detail.contains("treated as no answer"))
    );
    assert!(
        second
            .steps
            .iter()
            .any(|s| s.kind.as_str() == "CALL_FAILED" && s.detail.contains("Unavailable"))
    );

    // The gRPC service.
    let run_pb = api
        .get_run(pb::GetRunRequest {
            run_id: rsp.run_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run_pb.state, pb::RunState::Done as i32);
    assert_eq!(run_pb.counts.unwrap().reissued, 3);
    let rep = api
        .get_report(pb::GetReportRequest {
            pilot_id: "sez-000".into(),
            date: Some(date(2026, 2, 3)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rep.complete);
    assert_eq!(rep.counts.unwrap().sms_resent, 2);
    let listed: Vec<pb::Case> = api
        .list_cases(pb::ListCasesRequest {
            run_id: rsp.run_id.clone(),
            outcome: pb::Outcome::Reissued as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|c| c.unwrap())
        .collect()
        .await;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|c| c.steps.is_empty()
        && !c.cursor.is_empty()
        && c.new_permit_numbers.len() == c.permit_numbers.len()));
    // Paging by cursor gives the same cases.
    let first: Vec<pb::Case> = api
        .list_cases(pb::ListCasesRequest {
            pilot_id: "sez-000".into(),
            date: Some(date(2026, 2, 3)),
            limit: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|c| c.unwrap())
        .collect()
        .await;
    let rest: Vec<pb::Case> = api
        .list_cases(pb::ListCasesRequest {
            run_id: rsp.run_id.clone(),
            cursor: first[3].cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|c| c.unwrap())
        .collect()
        .await;
    assert_eq!(first.len() + rest.len(), 15);
    let one = api
        .get_case(pb::GetCaseRequest {
            case_id: listed[0].case_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        one.steps.last().unwrap().kind,
        pb::CaseStepKind::Closed as i32
    );
    let e = api
        .get_case(pb::GetCaseRequest {
            case_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = api
        .list_cases(pb::ListCasesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = api
        .list_cases(pb::ListCasesRequest {
            run_id: rsp.run_id.clone(),
            cursor: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // The feed: every stored event from the start, in order, then live.
    let mut feed = api
        .watch_events(pb::WatchEventsRequest {
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = vec![];
    while let Some(ev) = feed.next().await {
        let ev = ev.unwrap();
        let done =
            matches!(ev.what, Some(pb::event::What::RunState(s)) if s == pb::RunState::Done as i32);
        seen.push(ev);
        if done {
            break;
        }
    }
    assert!(seen.iter().any(|e| matches!(&e.what, Some(pb::event::What::CaseStep(s)) if s.kind == pb::CaseStepKind::SmsSent as i32)));
    let n_steps = seen
        .iter()
        .filter(|e| e.case_id == yes_case.case_id)
        .count();
    assert_eq!(n_steps, yes_case.steps.len());
    // Resuming after a cursor gives what follows it.
    let mid = seen[seen.len() / 2].cursor.clone();
    let mut tail = api
        .watch_events(pb::WatchEventsRequest { cursor: mid })
        .await
        .unwrap()
        .into_inner();
    let next = tail.next().await.unwrap().unwrap();
    assert_eq!(next.cursor, seen[seen.len() / 2 + 1].cursor);

    // Errors with details.
    let e = api
        .run_daily(pb::RunDailyRequest {
            pilot_id: "nope".into(),
            date: Some(date(2026, 2, 3)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = api
        .run_daily(pb::RunDailyRequest {
            pilot_id: "eco-001".into(),
            date: Some(date(2026, 2, 3)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "PILOT_OUT_OF_FORCE");
    assert_eq!(info.metadata["in_force_from"], "2025-01-23");
    assert_eq!(info.metadata["in_force_to"], "2025-12-24");
    let e = api
        .run_daily(pb::RunDailyRequest {
            pilot_id: "sez-000".into(),
            date: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = api
        .run_daily(pb::RunDailyRequest {
            pilot_id: "sez-000".into(),
            date: Some(date(2026, 2, 30)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = api
        .get_report(pb::GetReportRequest {
            pilot_id: "sez-000".into(),
            date: Some(date(2026, 2, 4)),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    drop(tail);
    drop(feed);
    sdu.kill().await;
    env.bus_shutdown.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organizations_only_pilot_in_kazakh_ignores_zags() {
    let d = date(2025, 6, 10);
    let mut c = MapCountry::default();
    let b = bin(1);
    let h = iin(1);
    c.rename(
        d,
        &b,
        Some(&h),
        vec![
            permit("TSW-1", "TRUSTED-SW", &b, false, Active),
            permit("ECO-1", "ECO-I", &b, false, Active),
        ],
    );
    c.answers.insert((h.clone(), 1), "1".into());
    let p = iin(2);
    c.act(
        d,
        zags::ActKind::NameChange,
        &p,
        Some("А"),
        Some("Б"),
        vec![permit("TSW-2", "TRUSTED-SW", &p, true, Active)],
    );
    let env = Env::new(c, "2026-02-03T09:00:00", 0).await;
    let sdu = env.start_sdu(2).await.unwrap();
    let h = sdu.handle.clone();
    let day = jiff::civil::date(2025, 6, 10);
    let run = h.run_daily("trusted-sw-004", day).await.unwrap();
    settled(&h, &run).await;
    eventually("re-issued", || h.run(&run).unwrap().state == RunState::Done).await;
    let r = h.report("trusted-sw-004", day).unwrap();
    assert_eq!(
        (r.counts.diffs, r.counts.with_permits, r.counts.reissued),
        (1, 1, 1),
        "individuals are not covered"
    );
    {
        let rec = env.fakes.rec();
        let (_, _, text) = rec.sent.values().next().unwrap();
        assert!(
            text.contains("1 санын"),
            "the Kazakh SMS of order 004: {text}"
        );
        let olds: Vec<&String> = rec.reissued.values().map(|(o, _)| o).collect();
        assert_eq!(olds, ["TSW-1"], "only the pilot's service");
        assert_eq!(rec.diff_streams.len(), 1);
    }
    sdu.kill().await;
}

/// Many organizations; even ones answer "1", odd ones never answer.
fn crowd(n: u32) -> MapCountry {
    fakes::crowd(date(RUN_DATE.0, RUN_DATE.1, RUN_DATE.2), 1000, n)
}

async fn finish_crowd(env: &Env, h: &SduHandle, n: usize) -> HashMap<String, String> {
    let run = shep_sdu::RunId::of("sez-000", run_date());
    settled(h, &run).await;
    eventually("every answer taken", || {
        outcomes(h, "sez-000", run_date())
            .values()
            .filter(|o| *o == "REISSUED")
            .count()
            == n / 2
    })
    .await;
    env.clock.set(almaty("2026-02-06T09:00:00"));
    eventually("second SMS sent", || {
        h.cases_json("sez-000", run_date())
            .unwrap()
            .iter()
            .filter(|r| r.sms_attempts == 2)
            .count()
            == n / 2
    })
    .await;
    env.clock.set(almaty("2026-02-12T09:00:00"));
    eventually("done", || h.run(&run).unwrap().state == RunState::Done).await;
    outcomes(h, "sez-000", run_date())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_way_a_new_runner_resumes_without_a_second_sms_or_reissue() {
    const N: u32 = 40;
    let env = Env::new(crowd(N), "2026-02-03T09:00:00", 2).await;

    // The reference: the same country, run without a crash.
    let reference = {
        let env2 = Env::new(crowd(N), "2026-02-03T09:00:00", 0).await;
        let sdu = env2.start_sdu(4).await.unwrap();
        sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
        let o = finish_crowd(&env2, &sdu.handle, N as usize).await;
        sdu.kill().await;
        o
    };
    assert_eq!(
        reference.values().filter(|o| *o == "REISSUED").count(),
        N as usize / 2
    );
    assert_eq!(
        reference.values().filter(|o| *o == "NO_ANSWER").count(),
        N as usize / 2
    );

    // Hold every Notify after the 12th, so calls are in flight when the runner dies.
    env.fakes.notify_gate.send_replace(Some(12));
    let sdu = env.start_sdu(4).await.unwrap();
    let run = sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
    // Answers to calls beyond the 12th wait for the gate: once 14 SMS are sent, at least two
    // were sent but never acknowledged when the runner dies.
    eventually("calls held in flight", || env.fakes.rec().sent.len() >= 14).await;
    sdu.kill().await;
    let before = env.fakes.rec().notify_calls.len();
    let sent_before = env.fakes.rec().sent.len();
    assert!(
        sent_before < N as usize,
        "killed mid-way: {sent_before} SMS of {N}"
    );
    // SMS that PEP sent but whose answer never reached the runner.
    let unacked: Vec<(String, String)> = {
        let rec = env.fakes.rec();
        rec.sent
            .iter()
            .filter(|(k, _)| !rec.acked.contains(*k))
            .map(|((c, _), (_, iin, _))| (c.clone(), iin.clone()))
            .collect()
    };
    assert!(
        unacked.len() >= 2,
        "SMS sent but never acknowledged to the runner: {unacked:?}"
    );
    let answering: std::collections::HashSet<String> = (0..N)
        .filter(|i| i % 2 == 0)
        .map(|i| iin(1000 + i))
        .collect();
    let unacked_silent = unacked
        .iter()
        .filter(|(_, i)| !answering.contains(i))
        .count();

    // Restarted on the same database: it resumes the diff from its cursor and every case.
    env.fakes.notify_gate.send_replace(None);
    let sdu = env.start_sdu(4).await.unwrap();
    let h = sdu.handle.clone();
    let after = finish_crowd(&env, &h, N as usize).await;
    assert_eq!(after, reference, "the same outcomes as without the crash");
    assert!(h.run(&run).unwrap().closed == u64::from(N));

    {
        let rec = env.fakes.rec();
        // No SMS twice: one per case and attempt, attempt 2 only to the silent half.
        assert_eq!(rec.sent.len(), N as usize + N as usize / 2);
        // The calls in flight when the runner died (at most one per worker) were made again
        // and PEP answered them as replays: those SMS went out once.
        // (A case whose "1" arrived before the kill needs no repeat: it went on to re-issue.)
        let replays = rec.notify_replays as usize;
        // A silent case whose SMS was never acknowledged can only learn of it by asking again.
        assert!(
            replays >= unacked_silent,
            "replays {replays}, unacknowledged {unacked:?}"
        );
        assert!(
            replays <= 4,
            "at most one call in flight per worker: {replays}"
        );
        // Every call after the restart either sent a new SMS or was such a replay.
        assert_eq!(
            rec.notify_calls.len() - before,
            (N as usize + N as usize / 2) - sent_before + replays
        );
        // No permit re-issued twice, every one of the agreeing half re-issued.
        assert_eq!(rec.reissued.len(), N as usize);
        assert!(rec.reissue_replays <= 4);
        // The diff was resumed from its durable cursor, not re-read from the start.
        assert!(rec.diff_streams.len() <= 2, "{:?}", rec.diff_streams);
        assert!(
            rec.diff_streams.iter().skip(1).all(|c| !c.is_empty()),
            "{:?}",
            rec.diff_streams
        );
    }
    sdu.kill().await;
    assert!(Path::new(&env.db).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_diff_fails_the_run_and_asking_again_resumes_it() {
    let env = Env::new(crowd(6), "2026-02-03T09:00:00", 0).await;
    env.fakes
        .diff_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let sdu = env.start_sdu(2).await.unwrap();
    let h = sdu.handle.clone();
    let run = h.run_daily("sez-000", run_date()).await.unwrap();
    let rec = settled(&h, &run).await;
    assert_eq!(rec.state, RunState::Failed);
    assert!(
        rec.error
            .as_deref()
            .unwrap_or("")
            .contains("GBD UL is down"),
        "{rec:?}"
    );
    let report = h.report("sez-000", run_date()).unwrap();
    assert!(!report.complete);

    env.fakes
        .diff_down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (again, created) = h.start_run("sez-000", run_date()).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, run);
    settled(&h, &run).await;
    eventually("the answered half is re-issued", || {
        outcomes(&h, "sez-000", run_date())
            .values()
            .filter(|o| *o == "REISSUED")
            .count()
            == 3
    })
    .await;
    let rec = h.run(&run).unwrap();
    assert_eq!(
        (rec.state, rec.error.clone(), rec.diffs),
        (RunState::Waiting, None, 6)
    );
    sdu.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_refused_outside_the_calendar_and_settings_are_checked() {
    let env = Env::new(MapCountry::default(), "2028-03-01T09:00:00", 0).await;
    let sdu = env.start_sdu(2).await.unwrap();
    // 2028 has no calendar table: a working-day pilot cannot count its waits.
    assert!(
        sdu.handle
            .pilots()
            .unwrap()
            .iter()
            .any(|p| p.id == "sez-000")
    );
    let e = sdu
        .handle
        .run_daily("sez-000", jiff::civil::date(2026, 3, 2))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("2028"), "{e}");
    assert_eq!(
        e.to_status().get_details_error_info().unwrap().reason,
        "CALENDAR_NOT_COVERED"
    );
    // A plain-day pilot needs no calendar; an empty day gives a done run.
    let run = sdu
        .handle
        .run_daily("eco-001", jiff::civil::date(2025, 12, 1))
        .await
        .unwrap();
    let rec = settled(&sdu.handle, &run).await;
    assert_eq!((rec.state, rec.diffs), (RunState::Done, 0));
    sdu.kill().await;

    let mut s = env.settings(0);
    s.concurrency = 0;
    let node = NodeConfig::from_pki_dir("sdu", "127.0.0.1:0".parse().unwrap(), &env.pki);
    let e = shep_sdu::start(node, s, env.clock.clone(), Shutdown::new())
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("concurrency"), "{e}");
}

/// A busy day for the batched look-up: renamed organizations with two SEZ permits (the
/// crowd), without any, with only a revoked one or one of another service, and individuals
/// from ZAGS with and without permits.
fn mixed_day(orgs: u32) -> MapCountry {
    let d = date(RUN_DATE.0, RUN_DATE.1, RUN_DATE.2);
    let mut c = fakes::crowd(d, 1000, orgs / 2);
    for i in 0..orgs / 2 {
        let b = bin(5000 + i);
        let ps = match i % 3 {
            0 => vec![],
            1 => vec![permit(&format!("R-{i}"), "SEZ-OBJ", &b, false, Revoked)],
            _ => vec![permit(&format!("M-{i}"), "MED-LIC", &b, false, Active)],
        };
        c.rename(d, &b, None, ps);
    }
    for i in 0..6 {
        let p = iin(9000 + i);
        let ps = if i % 2 == 0 {
            vec![permit(&format!("P-{i}"), "SEZ-OBJ", &p, true, Active)]
        } else {
            vec![]
        };
        c.act(d, zags::ActKind::NameChange, &p, Some("Old"), Some("New"), ps);
    }
    c
}

/// Every case of a run as (subject, permits, outcome, state, SMS attempts), by subject.
fn cases(h: &SduHandle) -> std::collections::BTreeMap<String, (Vec<String>, String, String, u32)> {
    h.cases_json("sez-000", run_date())
        .unwrap()
        .into_iter()
        .map(|r| {
            let permits = r.permits.iter().map(|p| p.number.clone()).collect();
            (
                r.subject_bin.or(r.subject_iin).unwrap(),
                (permits, r.outcome, r.state, r.sms_attempts),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizations_are_looked_up_in_batches_with_the_same_outcomes() {
    const ORGS: u32 = 120;
    // The reference: one ListPermits per subject.
    let one_by_one = Env::new(mixed_day(ORGS), "2026-02-03T09:00:00", 0).await;
    let sdu = one_by_one
        .start_sdu_with(shep_sdu::SduSettings {
            lookup_batch: 1,
            ..one_by_one.settings(4)
        })
        .await
        .unwrap();
    let run = sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
    let reference_run = settled(&sdu.handle, &run).await;
    let reference = cases(&sdu.handle);
    sdu.kill().await;
    {
        let rec = one_by_one.fakes.rec();
        assert_eq!(rec.by_bins_calls, 0);
        assert_eq!(rec.list_permits_calls, u64::from(ORGS) + 6);
    }
    // The crowd's organizations and the individuals with a permit have cases, no one else.
    assert_eq!(reference.len(), ORGS as usize / 2 + 3, "{reference:?}");

    // Batched (the default, 256), the first call failing once: retried, not failed.
    let batched = Env::new(mixed_day(ORGS), "2026-02-03T09:00:00", 0).await;
    batched
        .fakes
        .by_bins_failures
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let settings = batched.settings(4);
    assert_eq!(settings.lookup_batch, 256);
    let sdu = batched.start_sdu_with(settings).await.unwrap();
    let run = sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
    let batched_run = settled(&sdu.handle, &run).await;
    assert_eq!(cases(&sdu.handle), reference, "the same cases as one by one");
    assert_eq!(
        (batched_run.diffs, batched_run.state),
        (reference_run.diffs, reference_run.state)
    );
    sdu.kill().await;
    let rec = batched.fakes.rec();
    // Individuals still one by one, with their token; organizations in a few calls.
    assert_eq!(rec.list_permits_calls, 6);
    assert!(rec.missing_tokens.is_empty(), "{:?}", rec.missing_tokens);
    assert!(
        rec.by_bins_calls >= 2 && rec.by_bins_calls * 4 <= u64::from(ORGS),
        "{} ListPermitsByBins calls for {ORGS} organizations",
        rec.by_bins_calls
    );
    assert!(rec.by_bins_asked >= u64::from(ORGS), "every BIN asked, the failed call's again");
}

/// Runs the day of `country` with `call_batch`; its cases, and the look-ups the fakes saw:
/// (single, batched, batch calls).
async fn day_with_call_batch(
    country: MapCountry,
    call_batch: usize,
    revoked: &[String],
) -> (std::collections::BTreeMap<String, (Vec<String>, String, String, u32)>, (u64, u64, u64, usize, usize)) {
    let env = Env::new(country, "2026-02-03T09:00:00", 0).await;
    env.fakes.revoked.lock().unwrap().extend(revoked.iter().cloned());
    // With revocations, long enough for the revoked subjects' calls to find others queued
    // behind the first batch whatever the load of the machine.
    let delay = if revoked.is_empty() { 10 } else { 100 };
    env.fakes
        .batch_delay_ms
        .store(delay, std::sync::atomic::Ordering::SeqCst);
    if !revoked.is_empty() {
        env.fakes
            .notify_batch_delay_ms
            .store(delay, std::sync::atomic::Ordering::SeqCst);
    }
    let sdu = env
        .start_sdu_with(shep_sdu::SduSettings {
            call_batch,
            ..env.settings(8)
        })
        .await
        .unwrap();
    let run = sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
    settled(&sdu.handle, &run).await;
    // The answers come at once but through PEP's stream: the cases as they stay once the
    // run has been settled and unchanged for a while.
    let mut cases = cases(&sdu.handle);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        settled(&sdu.handle, &run).await;
        let again = self::cases(&sdu.handle);
        if again == cases {
            break;
        }
        cases = again;
    }
    sdu.kill().await;
    let rec = env.fakes.rec();
    assert!(rec.missing_tokens.is_empty(), "{:?}", rec.missing_tokens);
    // Organizations' permits are re-issued in batches exactly when look-ups are.
    assert_eq!(rec.reissue_batches.is_empty(), call_batch == 1, "{:?}", rec.reissue_batches);
    // So are the SMS.
    assert_eq!(rec.notify_batches.is_empty(), call_batch == 1, "{:?}", rec.notify_batches);
    let most = rec.refused_batches.iter().copied().max().unwrap_or(0);
    // A batch refused as a whole for one subject is asked again one by one.
    assert!(most <= 1 || rec.single_lookups > 0, "{:?}", rec.refused_batches);
    let most_notify = rec.refused_notify_batches.iter().copied().max().unwrap_or(0);
    (cases, (rec.single_lookups, rec.batched_lookups, rec.batch_calls, most, most_notify))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_person_checks_go_in_batches_with_the_same_outcomes() {
    assert_eq!(shep_sdu::SduSettings::default().call_batch, 32);
    // Every road (consent refused, each exclusion, no phone, SMS): batched as one by one.
    let (alone, (singles, batched, calls, ..)) = day_with_call_batch(country().0, 1, &[]).await;
    assert_eq!((batched, calls), (0, 0), "one IssueToken, GetPerson, GetPersonActs each");
    let outcomes: std::collections::BTreeSet<&str> = alone.values().map(|c| c.1.as_str()).collect();
    assert!(outcomes.len() >= 6, "{outcomes:?}");
    let (together, (singles2, batched2, ..)) = day_with_call_batch(country().0, 32, &[]).await;
    assert_eq!(together, alone, "the same cases as one by one");
    assert_eq!((singles2, batched2), (0, singles), "each subject asked once, in batches");

    // A crowd: its look-ups go in far fewer calls.
    const ORGS: u32 = 120;
    let (alone, (singles, ..)) = day_with_call_batch(mixed_day(ORGS), 1, &[]).await;
    let (together, (singles2, batched2, calls, ..)) = day_with_call_batch(mixed_day(ORGS), 32, &[]).await;
    assert_eq!(together, alone, "the same cases as one by one");
    assert_eq!((singles2, batched2), (0, singles));
    assert!(calls * 2 < singles, "{calls} batch calls for {singles} look-ups");
}

/// The day of a crowd of organizations with the consent of five heads revoked (`revoked`
/// gives the entry of a head as the fakes take it: "IIN" or "IIN:scope"), one by one and
/// in batches: their cases end NO_CONSENT, everyone else's as without the revocation, the
/// same either way. Returns the largest look-up batch and the largest `NotifyMany` refused
/// as a whole.
async fn revoked_in_a_crowd(revoked: impl Fn(&str) -> String) -> (usize, usize) {
    const ORGS: u32 = 120;
    // Heads across the crowd: a batch call takes whoever waits when the one before ends, so
    // the first of each wave goes alone; with five, some share a batch with others.
    let heads: Vec<u32> = vec![1010, 1020, 1031, 1041, 1050];
    let entries: Vec<String> = heads.iter().map(|&h| revoked(&iin(h).to_string())).collect();
    let orgs: Vec<String> = heads.iter().map(|&h| bin(h)).collect();
    let (alone, _) = day_with_call_batch(mixed_day(ORGS), 1, &entries).await;
    for who in &orgs {
        assert_eq!(alone[who].1, "NO_CONSENT", "{who}: {alone:?}");
    }
    let (together, (_, _, _, refused, refused_notify)) = day_with_call_batch(mixed_day(ORGS), 32, &entries).await;
    assert_eq!(together, alone, "the same cases as one by one");
    let (untouched, _) = day_with_call_batch(mixed_day(ORGS), 32, &[]).await;
    let others = |m: &std::collections::BTreeMap<String, (Vec<String>, String, String, u32)>| {
        m.iter()
            .filter(|(k, _)| !orgs.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(others(&together), others(&untouched));
    (refused, refused_notify)
}

/// A consent revoked after the token was issued: the bus refuses a batch check that holds
/// the subject as a whole; asked again one by one, only that subject ends NO_CONSENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_revoked_before_the_check_refuses_that_subject_alone() {
    let (refused, _) = revoked_in_a_crowd(str::to_owned).await;
    assert!(refused > 1, "a batch of several was refused as a whole ({refused})");
}

/// A consent to being notified revoked after the checks: the bus refuses a `NotifyMany`
/// that holds the recipient as a whole; sent again one by one, only that case ends
/// NO_CONSENT, and nobody else's SMS is lost or sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_to_sms_revoked_refuses_that_recipient_alone() {
    let (_, refused) = revoked_in_a_crowd(|iin| format!("{iin}:pep.notify")).await;
    assert!(refused > 1, "a NotifyMany of several was refused as a whole ({refused})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_keeps_failing_fails_each_of_its_cases() {
    const ORGS: u32 = 20;
    let env = Env::new(mixed_day(ORGS), "2026-02-03T09:00:00", 0).await;
    env.fakes
        .by_bins_failures
        .store(u32::MAX, std::sync::atomic::Ordering::SeqCst);
    let settings = env.settings(2);
    let attempts = settings.max_attempts;
    let sdu = env.start_sdu_with(settings).await.unwrap();
    let run = sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
    let rec = settled(&sdu.handle, &run).await;
    assert_eq!(rec.diffs, u64::from(ORGS) + 6, "every diff committed");
    let cases = cases(&sdu.handle);
    let details: Vec<String> = sdu
        .handle
        .cases_json("sez-000", run_date())
        .unwrap()
        .into_iter()
        .filter(|r| r.subject_bin.is_some())
        .map(|r| r.steps.iter().map(|s| s.detail.clone()).collect::<Vec<_>>().join(" / "))
        .collect();
    sdu.kill().await;
    // Every organization's case opened FAILED, as after a failed single look-up (the
    // look-up could not tell which have permits); the individuals' cases are unaffected.
    let orgs: std::collections::HashSet<String> = (0..ORGS / 2)
        .map(|i| bin(1000 + i))
        .chain((0..ORGS / 2).map(|i| bin(5000 + i)))
        .collect();
    let failed: std::collections::HashSet<String> = cases
        .iter()
        .filter(|(_, (_, outcome, _, _))| outcome == "FAILED")
        .map(|(s, _)| s.clone())
        .collect();
    assert_eq!(failed, orgs, "{cases:?}");
    assert_eq!(cases.len(), ORGS as usize + 3, "{cases:?}");
    assert_eq!(details.len(), ORGS as usize);
    assert!(
        details
            .iter()
            .all(|d| d.contains("ListPermitsByBins") && d.contains("giving up")),
        "{details:?}"
    );
    let r = env.fakes.rec();
    assert_eq!(r.by_bins_asked, u64::from(ORGS) * u64::from(attempts), "each group tried {attempts} times");
    assert_eq!(r.by_bins_calls % u64::from(attempts), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_waiting_at_a_restart_are_taken_together_each_once() {
    const N: u32 = 40;
    let env = Env::new(crowd(N), "2026-02-03T09:00:00", 0).await;
    let sdu = env.start_sdu(4).await.unwrap();
    let run = sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
    // The answering half is re-issued; the silent half waits for its answer.
    eventually("the answering half re-issued", || {
        outcomes(&sdu.handle, "sez-000", run_date())
            .values()
            .filter(|o| *o == "REISSUED")
            .count()
            == N as usize / 2
    })
    .await;
    eventually("every first SMS sent", || env.fakes.rec().sent.len() == N as usize).await;
    sdu.kill().await;

    // While no runner is up, the silent half answers "1" (the first of them a second time,
    // "2"), and someone answers a case that is not SDU's: PEP holds them all at the restart,
    // so the new runner takes them in one batch.
    let silent: Vec<(String, String, String)> = {
        let rec = env.fakes.rec();
        let answered: std::collections::HashSet<&String> =
            rec.answers.iter().map(|(c, ..)| c).collect();
        let mut v: Vec<_> = rec
            .sent
            .iter()
            .filter(|((c, attempt), _)| *attempt == 1 && !answered.contains(c))
            .map(|((c, _), (sms, iin, _))| (c.clone(), sms.clone(), iin.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(silent.len(), N as usize / 2);
    for (case, sms, iin) in &silent {
        env.fakes.push_answer(case, 1, iin, "1", sms);
    }
    let (case, sms, who) = &silent[0];
    env.fakes.push_answer(case, 1, who, "2", sms);
    env.fakes.push_answer("no-such-case", 1, &iin(7), "1", "sms-of-someone-else");

    let sdu = env.start_sdu(4).await.unwrap();
    let h = sdu.handle.clone();
    eventually("every case re-issued", || {
        outcomes(&h, "sez-000", run_date())
            .values()
            .filter(|o| *o == "REISSUED")
            .count()
            == N as usize
    })
    .await;
    settled(&h, &run).await;
    let counts = h.report("sez-000", run_date()).unwrap().counts;
    assert_eq!((counts.answered_yes, counts.answered_no), (u64::from(N), 0));
    assert_eq!((counts.reissued, counts.open), (u64::from(N), 0));
    {
        let rec = env.fakes.rec();
        // Two permits a case, each re-issued once; one SMS a case.
        assert_eq!(rec.reissued.len(), 2 * N as usize);
        assert_eq!(rec.reissue_replays, 0);
        assert_eq!(rec.sent.len(), N as usize);
    }
    sdu.kill().await;
}
