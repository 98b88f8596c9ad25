//! KDP (consents, tokens, revocations) and PEP (SMS through BMG with a KDP token, answers)
//! over real mutual-TLS sockets.

mod common;

use std::time::Duration;

use common::{Harness, collect, person_where, reason, violations};
use shep_consent::Verifier;
use shep_proto::kdp::consent_service_client::ConsentServiceClient;
use shep_proto::kdp::{
    GetPublicKeyRequest, GrantConsentRequest, IssueTokenRequest, IssueTokensRequest, RevokeConsentRequest,
    StreamRevocationsRequest, token_result,
};
use shep_proto::pep::portal_client::PortalClient;
use shep_proto::pep::{
    Language, ListOutboxRequest, NotifyManyRequest, NotifyOutcome, NotifyRequest, StreamAnswersRequest, notify_result,
};
use shep_proto::sim::scenario_client::ScenarioClient;
use shep_proto::sim::{AdvanceClockRequest, SetCitizenAnswerRequest, SetConsentRequest};
use shep_simulators::{Clock, Registry, Simulation};
use tonic::Code;

const SCOPE: &str = "gbdfl.person.read";

#[tokio::test]
async fn kdp_refuses_without_consent_and_signs_verifiable_tokens() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut kdp = ConsentServiceClient::new(h.channel(Registry::Kdp, "sdu"));
    let refuser = person_where(&h, |p| c.base_consent(p, "sdu", SCOPE).is_none());
    let e = kdp
        .issue_token(IssueTokenRequest { subject: refuser.clone(), consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::FailedPrecondition, "NO_CONSENT".to_string()));

    let consenting = person_where(&h, |p| c.base_consent(p, "sdu", SCOPE).is_some());
    let issued = kdp
        .issue_token(IssueTokenRequest { subject: consenting.clone(), consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap()
        .into_inner();
    let key = kdp.get_public_key(GetPublicKeyRequest {}).await.unwrap().into_inner();
    assert_eq!(key.algorithm, "Ed25519");
    let claims = Verifier::new(key.public_key.clone()).verify(&issued.token).expect("the token verifies");
    assert_eq!(claims.key_id, key.key_id);
    assert_eq!(claims.subject, consenting);
    let now = h.sim.now();
    assert_eq!(claims.check(&consenting, "sdu", SCOPE, now), Ok(()));
    assert_eq!(claims.expires_at - claims.issued_at, 3600);

    // Same seed, same key: tokens verify across restarts.
    let again = Simulation::try_new(common::small(), Clock::manual()).unwrap();
    assert_eq!(again.signer().public_key(), key.public_key);

    let e = kdp
        .issue_token(IssueTokenRequest { subject: "1".into(), consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["subject".to_string()]);
    let e = kdp
        .issue_token(IssueTokenRequest { subject: consenting, consumer: String::new(), scope: SCOPE.into() })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["consumer".to_string()]);
}

/// A batch of subjects: each gets what `IssueToken` gives it alone, a token or the refusal.
#[tokio::test]
async fn kdp_issues_tokens_in_batches_each_as_alone() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut kdp = ConsentServiceClient::new(h.channel(Registry::Kdp, "sdu"));
    let refuser = person_where(&h, |p| c.base_consent(p, "sdu", SCOPE).is_none());
    let consenting = person_where(&h, |p| c.base_consent(p, "sdu", SCOPE).is_some());
    let key = kdp.get_public_key(GetPublicKeyRequest {}).await.unwrap().into_inner();
    let r = kdp
        .issue_tokens(IssueTokensRequest {
            subjects: vec![consenting.clone(), refuser.clone(), "1".into(), consenting.clone()],
            consumer: "sdu".into(),
            scope: SCOPE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 4);
    let subjects: Vec<&str> = r.results.iter().map(|x| x.subject.as_str()).collect();
    assert_eq!(subjects, [consenting.as_str(), refuser.as_str(), "1", consenting.as_str()]);
    let mut ids = vec![];
    for i in [0, 3] {
        let Some(token_result::Result::Token(t)) = &r.results[i].result else {
            panic!("a token for {i}: {:?}", r.results[i]);
        };
        let claims = Verifier::new(key.public_key.clone()).verify(&t.token).expect("the token verifies");
        assert_eq!(claims.check(&consenting, "sdu", SCOPE, h.sim.now()), Ok(()));
        ids.push(claims.token_id);
    }
    assert_ne!(ids[0], ids[1], "a token per item");
    let Some(token_result::Result::Refusal(no)) = &r.results[1].result else { panic!("{:?}", r.results[1]) };
    assert_eq!((no.code, no.scope.as_str()), (Code::FailedPrecondition as i32, SCOPE));
    let Some(token_result::Result::Refusal(bad)) = &r.results[2].result else { panic!("{:?}", r.results[2]) };
    assert_eq!(bad.code, Code::InvalidArgument as i32);
    assert!(bad.message.contains("subjects[2]"), "{}", bad.message);

    let e = kdp
        .issue_tokens(IssueTokensRequest { subjects: vec![], consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["subjects".to_string()]);
    let e = kdp
        .issue_tokens(IssueTokensRequest { subjects: vec![consenting], consumer: "sdu".into(), scope: String::new() })
        .await
        .unwrap_err();
    assert_eq!(violations(&e), vec!["scope".to_string()]);
}

/// One token for several scopes: issued only when each is consented to, it covers each,
/// and withdrawing any one of them revokes it.
#[tokio::test]
async fn kdp_issues_one_token_for_several_scopes() {
    const ACTS: &str = "zags.acts.read";
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut kdp = ConsentServiceClient::new(h.channel(Registry::Kdp, "operator"));
    let subject = person_where(&h, |p| c.base_consent(p, "sdu", SCOPE).is_some() && c.base_consent(p, "sdu", ACTS).is_some());
    let both = format!("{SCOPE}  {ACTS}");
    let t = kdp
        .issue_token(IssueTokenRequest { subject: subject.clone(), consumer: "sdu".into(), scope: both.clone() })
        .await
        .unwrap()
        .into_inner();
    let key = kdp.get_public_key(GetPublicKeyRequest {}).await.unwrap().into_inner();
    let claims = Verifier::new(key.public_key).verify(&t.token).unwrap();
    assert_eq!(claims.scope, format!("{SCOPE} {ACTS}"), "normalised to single spaces");
    let now = h.sim.now();
    assert_eq!(claims.check(&subject, "sdu", SCOPE, now), Ok(()));
    assert_eq!(claims.check(&subject, "sdu", ACTS, now), Ok(()));
    assert!(claims.check(&subject, "sdu", "pep.notify", now).is_err());

    let mut follow = kdp
        .stream_revocations(StreamRevocationsRequest { cursor: String::new(), follow: true })
        .await
        .unwrap()
        .into_inner();
    kdp.revoke_consent(RevokeConsentRequest { subject: subject.clone(), consumer: "sdu".into(), scope: ACTS.into() })
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), follow.message()).await.expect("in time").unwrap().unwrap();
    assert_eq!(r.token_ids, vec![claims.token_id.clone()], "withdrawing one scope revokes the token");

    // Now one of the two has no consent: no token, and the refusal names that scope.
    let e = kdp
        .issue_token(IssueTokenRequest { subject, consumer: "sdu".into(), scope: both })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NO_CONSENT");
    let info = tonic_types::StatusExt::get_error_details(&e).error_info().cloned().unwrap();
    assert_eq!(info.metadata.get("scope").map(String::as_str), Some(ACTS));
}

#[tokio::test]
async fn kdp_revocations_stream_and_resume() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut kdp = ConsentServiceClient::new(h.channel(Registry::Kdp, "operator"));
    let subject = person_where(&h, |p| c.base_consent(p, "sdu", SCOPE).is_some());
    let token = kdp
        .issue_token(IssueTokenRequest { subject: subject.clone(), consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap()
        .into_inner();
    let token_id = token.claims.unwrap().token_id;

    let mut follow = kdp
        .stream_revocations(StreamRevocationsRequest { cursor: String::new(), follow: true })
        .await
        .unwrap()
        .into_inner();
    let revoked = kdp
        .revoke_consent(RevokeConsentRequest { subject: subject.clone(), consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked && revoked.revoked_at.is_some());
    let r = tokio::time::timeout(Duration::from_secs(10), follow.message()).await.expect("in time").unwrap().unwrap();
    assert_eq!(r.subject, subject);
    assert_eq!(r.token_ids, vec![token_id]);

    let again = kdp
        .revoke_consent(RevokeConsentRequest { subject: subject.clone(), consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.revoked);
    let e = kdp
        .issue_token(IssueTokenRequest { subject: subject.clone(), consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "NO_CONSENT");

    let rest = collect(
        kdp.stream_revocations(StreamRevocationsRequest { cursor: r.cursor.clone(), follow: false })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert!(rest.is_empty());
    let all = collect(
        kdp.stream_revocations(StreamRevocationsRequest { cursor: String::new(), follow: false })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(all, vec![r]);
    let e = kdp.stream_revocations(StreamRevocationsRequest { cursor: "x".into(), follow: false }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["cursor".to_string()]);

    // Granting again, with an end: tokens never outlive the consent.
    let until = prost_types::Timestamp { seconds: h.sim.now() + 600, nanos: 0 };
    kdp.grant_consent(GrantConsentRequest {
        subject: subject.clone(),
        consumer: "sdu".into(),
        scope: SCOPE.into(),
        valid_until: Some(until),
    })
    .await
    .unwrap();
    let t = kdp
        .issue_token(IssueTokenRequest { subject, consumer: "sdu".into(), scope: SCOPE.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.claims.unwrap().expires_at, Some(until));
}

/// The first SMS of `case` to `iin` under pilot sez-000, its text from the pilot's appendix.
fn notify(iin: &str, case: &str) -> NotifyRequest {
    NotifyRequest {
        case_id: case.into(),
        attempt: 1,
        iin: iin.into(),
        pilot_id: "sez-000".into(),
        permit_numbers: vec!["KZ02SEO00000001".into()],
        holder_name: "Ахметова Айгүл".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn pep_no_phone_sent_idempotent_and_answers_after_the_clock_moves() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut pep = PortalClient::new(h.channel(Registry::Pep, "sdu"));
    let mut scenario = ScenarioClient::new(h.channel(Registry::Pep, "operator"));
    let consents = |p: u32| c.base_consent(p, "pep", "bmg.phone.read").is_some();

    let phoneless = person_where(&h, |p| c.phone_of(p).is_none() && consents(p));
    let r = pep.notify(notify(&phoneless, "case-0")).await.unwrap().into_inner();
    assert_eq!(r.outcome, NotifyOutcome::NoPhone as i32);
    assert!(r.sms_id.is_empty());

    let with_phone = person_where(&h, |p| c.phone_of(p).is_some() && consents(p));
    let applied = scenario
        .set_citizen_answer(SetCitizenAnswerRequest {
            iin: with_phone.clone(),
            answer: "1".into(),
            delay_seconds: 3600,
            no_answer: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied);
    let mut follow =
        pep.stream_answers(StreamAnswersRequest { cursor: String::new(), follow: true }).await.unwrap().into_inner();

    let sent = pep.notify(notify(&with_phone, "case-1")).await.unwrap().into_inner();
    assert_eq!(sent.outcome, NotifyOutcome::Sent as i32);
    assert!(!sent.replayed && !sent.sms_id.is_empty());
    let replay = pep.notify(notify(&with_phone, "case-1")).await.unwrap().into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.sms_id, sent.sms_id);
    let outbox =
        collect(pep.list_outbox(ListOutboxRequest { cursor: String::new(), limit: 0 }).await.unwrap().into_inner())
            .await;
    assert_eq!(outbox.len(), 1, "sent once");
    assert!(outbox[0].text.contains("цифру 1") && outbox[0].text.contains("KZ02SEO00000001"));
    assert_eq!(outbox[0].language, Language::Ru as i32);
    let e =
        pep.notify(NotifyRequest { text: "другой текст".into(), ..notify(&with_phone, "case-1") }).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    let none = collect(
        pep.stream_answers(StreamAnswersRequest { cursor: String::new(), follow: false }).await.unwrap().into_inner(),
    )
    .await;
    assert!(none.is_empty(), "no answer before its time");
    scenario.advance_clock(AdvanceClockRequest { seconds: 3599 }).await.unwrap();
    let none = collect(
        pep.stream_answers(StreamAnswersRequest { cursor: String::new(), follow: false }).await.unwrap().into_inner(),
    )
    .await;
    assert!(none.is_empty());
    scenario.advance_clock(AdvanceClockRequest { seconds: 1 }).await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), follow.message()).await.expect("in time").unwrap().unwrap();
    assert_eq!(
        (a.case_id.as_str(), a.attempt, a.text.as_str(), a.sms_id.as_str()),
        ("case-1", 1, "1", sent.sms_id.as_str())
    );
    assert_eq!(a.received_at.unwrap().seconds - sent.sent_at.unwrap().seconds, 3600);
    let after = collect(
        pep.stream_answers(StreamAnswersRequest { cursor: a.cursor.clone(), follow: false })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert!(after.is_empty());

    // Kazakh text for the trusted-software pilot.
    let kk = pep
        .notify(NotifyRequest { pilot_id: "trusted-sw-004".into(), attempt: 2, ..notify(&with_phone, "case-1") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kk.outcome, NotifyOutcome::Sent as i32);
    let outbox = collect(
        pep.list_outbox(ListOutboxRequest { cursor: outbox[0].cursor.clone(), limit: 0 }).await.unwrap().into_inner(),
    )
    .await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].language, Language::Kk as i32);
    assert!(outbox[0].text.contains("1 санын"));

    let e = pep.notify(NotifyRequest { attempt: 0, ..notify(&with_phone, "case-2") }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["attempt".to_string()]);
    let e =
        pep.notify(NotifyRequest { pilot_id: "unknown".into(), ..notify(&with_phone, "case-2") }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["text".to_string()]);
}

#[tokio::test]
async fn pep_notify_many_answers_each_item_as_notify_would() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut pep = PortalClient::new(h.channel(Registry::Pep, "sdu"));
    let consents = |p: u32| c.base_consent(p, "pep", "bmg.phone.read").is_some();
    let phoneless = person_where(&h, |p| c.phone_of(p).is_none() && consents(p));
    let with_phone = person_where(&h, |p| c.phone_of(p).is_some() && consents(p));
    let first = pep.notify(notify(&with_phone, "case-1")).await.unwrap().into_inner();
    let batch = pep
        .notify_many(NotifyManyRequest {
            items: vec![
                notify(&with_phone, "case-1"),
                notify(&phoneless, "case-2"),
                notify(&with_phone, "case-3"),
                NotifyRequest { attempt: 0, ..notify(&with_phone, "case-4") },
                NotifyRequest { text: "другой текст".into(), ..notify(&with_phone, "case-1") },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = batch.results.iter().map(|r| (r.case_id.as_str(), r.attempt)).collect();
    assert_eq!(got, vec![("case-1", 1), ("case-2", 1), ("case-3", 1), ("case-4", 0), ("case-1", 1)]);
    let out: Vec<_> = batch.results.into_iter().map(|r| r.result.unwrap()).collect();
    match &out[0] {
        notify_result::Result::Notified(n) => assert!(n.replayed && n.sms_id == first.sms_id, "a replay: {n:?}"),
        other => panic!("a replay expected, got {other:?}"),
    }
    match &out[1] {
        notify_result::Result::Notified(n) => assert_eq!(n.outcome, NotifyOutcome::NoPhone as i32),
        other => panic!("no phone expected, got {other:?}"),
    }
    let third = match &out[2] {
        notify_result::Result::Notified(n) if n.outcome == NotifyOutcome::Sent as i32 && !n.replayed => n.clone(),
        other => panic!("a new SMS expected, got {other:?}"),
    };
    match &out[3] {
        notify_result::Result::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (Code::InvalidArgument as i32, "INVALID_ATTEMPT"));
            assert!(e.message.contains("attempt"), "{e:?}");
        }
        other => panic!("an error expected, got {other:?}"),
    }
    match &out[4] {
        notify_result::Result::Error(e) => {
            assert_eq!((e.code, e.reason.as_str()), (Code::AlreadyExists as i32, "NOTIFICATION_CONFLICT"))
        }
        other => panic!("a conflict expected, got {other:?}"),
    }
    let outbox =
        collect(pep.list_outbox(ListOutboxRequest { cursor: String::new(), limit: 0 }).await.unwrap().into_inner())
            .await;
    let ids: Vec<_> = outbox.iter().map(|s| s.sms_id.as_str()).collect();
    assert_eq!(ids, vec![first.sms_id.as_str(), third.sms_id.as_str()], "each SMS sent once");

    let e = pep.notify_many(NotifyManyRequest { items: vec![] }).await.unwrap_err();
    assert_eq!(violations(&e), vec!["items".to_string()]);
}

#[tokio::test]
async fn pep_needs_the_citizens_consent_for_reading_the_phone() {
    let h = Harness::start().await;
    let c = h.sim.country();
    let mut pep = PortalClient::new(h.channel(Registry::Pep, "sdu"));
    let iin = person_where(&h, |p| c.phone_of(p).is_some() && c.base_consent(p, "pep", "bmg.phone.read").is_some());
    let mut kdp_scenario = ScenarioClient::new(h.channel(Registry::Kdp, "operator"));
    let r = kdp_scenario
        .set_consent(SetConsentRequest {
            subject: iin.clone(),
            consumer: "pep".into(),
            scope: "*".into(),
            granted: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    let req = NotifyRequest { case_id: "c".into(), attempt: 1, iin, text: "Текст".into(), ..Default::default() };
    let e = pep.notify(req.clone()).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (Code::FailedPrecondition, "NO_CONSENT".to_string()));
    // A refusal is not recorded: once consent is given, the same call sends.
    kdp_scenario
        .set_consent(SetConsentRequest {
            subject: req.iin.clone(),
            consumer: "pep".into(),
            scope: "bmg.phone.read".into(),
            granted: true,
        })
        .await
        .unwrap();
    let r = pep.notify(req).await.unwrap().into_inner();
    assert_eq!(r.outcome, NotifyOutcome::Sent as i32);
    assert!(!r.replayed);
}
