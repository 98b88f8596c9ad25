//! The bus over real sockets: mutual TLS with a generated PKI, test upstreams, the bus in
//! front. Each test starts its own world.

mod harness;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use harness::*;
use shep_bus::envelope::BytesCodec;
use shep_proto::gbdfl::person_registry_client::PersonRegistryClient;
use shep_proto::gbdul::organization_registry_client::OrganizationRegistryClient;
use shep_proto::shep::bus_admin_client::BusAdminClient;
use shep_proto::shep::sync_channel_client::SyncChannelClient;
use shep_proto::{gbdfl, gbdul, pep, shep};
use tonic::{Code, Request};
use tonic_types::StatusExt;

const READ: &str = "gbdfl.person.read";

async fn get_person(
    w: &World,
    system: &str,
    iin: &str,
    tokens: &[&str],
) -> Result<gbdfl::Person, tonic::Status> {
    let mut c = PersonRegistryClient::new(w.client(system));
    c.get_person(with_tokens(
        gbdfl::GetPersonRequest { iin: iin.into() },
        tokens,
    ))
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn unary_call_is_forwarded_with_the_callers_identity_deadline_and_trace() {
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    let subject = iin(1);
    let (_, tok) = w.token(&subject, "sdu", READ, 300);
    let mut c = PersonRegistryClient::new(w.client("sdu"));
    let mut req = with_tokens(
        gbdfl::GetPersonRequest {
            iin: subject.clone(),
        },
        &[&tok],
    );
    // A caller cannot pose as another system.
    req.metadata_mut()
        .insert("x-shep-caller", "gbd-ul".parse().unwrap());
    req.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    req.metadata_mut()
        .insert("x-message-id", "msg-42".parse().unwrap());
    req.metadata_mut()
        .insert("x-custom", "passes".parse().unwrap());
    req.set_timeout(Duration::from_secs(20));
    let resp = c.get_person(req).await.unwrap();
    assert_eq!(
        resp.metadata().get("x-upstream").unwrap(),
        "gbd-fl",
        "response metadata passes through"
    );
    assert_eq!(resp.get_ref().iin, subject);
    assert_eq!(
        resp.get_ref().full_name.as_ref().unwrap().surname,
        "Сейткали"
    );

    let h = w.gbdfl_seen.last();
    let callers: Vec<_> = h.get_all("x-shep-caller").iter().collect();
    assert_eq!(callers, vec!["sdu"]);
    assert_eq!(h.get("x-custom").unwrap(), "passes");
    assert_eq!(h.get("x-message-id").unwrap(), "msg-42");
    assert_eq!(h.get(shep_consent::METADATA_KEY).unwrap(), tok.as_str());
    let tp = h.get("traceparent").unwrap().to_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "the bus's hop is the parent: {tp}"
    );
    let timeout =
        shep_bus::wire::parse_timeout(h.get("grpc-timeout").unwrap().to_str().unwrap()).unwrap();
    assert!(
        timeout <= Duration::from_secs(20) && timeout > Duration::ZERO,
        "{timeout:?}"
    );

    // The audit has one record of the unary call (committed before its answer was
    // released), chained.
    let rep = shep_bus::audit::verify(&w.audit_path()).unwrap();
    assert!(rep.intact, "{rep:?}");
    let mine: Vec<_> = shep_bus::audit::query(&w.audit_path(), 0, Some("sdu"), 0)
        .unwrap()
        .into_iter()
        .filter(|r| r.message_id == "msg-42")
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(
        (mine[0].phase, mine[0].decision, mine[0].reason.as_str()),
        (
            shep_bus::audit::Phase::Call,
            shep_bus::audit::Decision::Allowed,
            "COMPLETED"
        )
    );
    let acc = shep_bus::audit::subject_accesses(&w.audit_path(), &subject).unwrap();
    assert_eq!(acc.len(), 1);
    let r = &acc[0];
    assert_eq!(
        (r.caller.as_str(), r.message_id.as_str(), r.grpc_status),
        ("sdu", "msg-42", 0)
    );
    assert_eq!(r.method, "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson");
    assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(!r.token_ids.is_empty() && r.request_bytes > 0 && r.response_bytes > 0);
    w.shutdown.trigger();
}

#[tokio::test]
async fn server_streams_pass_through_with_one_token_per_subject() {
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    let subjects = [iin(1), iin(20), iin(300)];
    let toks: Vec<String> = subjects
        .iter()
        .map(|s| w.token(s, "sdu", READ, 300).1)
        .collect();
    let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
    let mut c = PersonRegistryClient::new(w.client("sdu"));
    let req = with_tokens(
        gbdfl::GetPersonsRequest {
            iins: subjects.to_vec(),
        },
        &refs,
    );
    let got: Vec<_> = c
        .get_persons(req)
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().iin)
        .collect()
        .await;
    assert_eq!(got, subjects.to_vec());
    // Missing one subject's token: refused before anything is forwarded.
    let before = w.gbdfl_seen.count();
    let req = with_tokens(
        gbdfl::GetPersonsRequest {
            iins: subjects.to_vec(),
        },
        &refs[..2],
    );
    let st = c.get_persons(req).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::PermissionDenied, "CONSENT_SUBJECT_MISMATCH")
    );
    assert_eq!(w.gbdfl_seen.count(), before);

    // A stream without personal data, 100 messages.
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let req = gbdul::StreamNameChangesRequest {
        limit: 100,
        ..Default::default()
    };
    let got: Vec<_> = c
        .stream_name_changes(req)
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|r| r.is_ok()));
    w.shutdown.trigger();
}

async fn echo(
    w: &World,
    method: &'static str,
    msgs: Vec<gbdfl::GetPersonRequest>,
    server_streaming: bool,
) -> Result<Vec<gbdfl::Person>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(w.client("sdu"));
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    let codec = tonic_prost::ProstCodec::<gbdfl::GetPersonRequest, gbdfl::Person>::default();
    let req = Request::new(futures::stream::iter(msgs));
    if server_streaming {
        let mut s = grpc.streaming(req, path, codec).await?.into_inner();
        let mut out = vec![];
        while let Some(p) = s.message().await? {
            out.push(p);
        }
        Ok(out)
    } else {
        Ok(vec![
            grpc.client_streaming(req, path, codec).await?.into_inner(),
        ])
    }
}

#[tokio::test]
async fn client_streams_and_bidi_pass_through_with_every_message_checked() {
    let w = World::start(|_| {}).await;
    let req = |s: &str| gbdfl::GetPersonRequest { iin: s.to_owned() };
    let ids = [iin(1), iin(2), iin(3)];
    let got = echo(
        &w,
        "/shep.test.Echo/Collect",
        ids.iter().map(|s| req(s)).collect(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(got[0].iin, ids.join(","));
    let got = echo(
        &w,
        "/shep.test.Echo/Chat",
        ids.iter().map(|s| req(s)).collect(),
        true,
    )
    .await
    .unwrap();
    assert_eq!(
        got.iter().map(|p| p.iin.clone()).collect::<Vec<_>>(),
        ids.to_vec()
    );
    // A malformed IIN in the third message of the stream ends the call.
    let bad = vec![req(&ids[0]), req(&ids[1]), req("900515300019")];
    let st = echo(&w, "/shep.test.Echo/Chat", bad, true)
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::InvalidArgument, "SCE001"),
        "{st:?}"
    );
    let v = st
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations[0]
        .clone();
    assert_eq!(v.field, "iin");
    // The first message is checked before anything is forwarded.
    let st = echo(&w, "/shep.test.Echo/Collect", vec![req("123")], false)
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "SCE001");
    let rep = shep_bus::audit::verify(&w.audit_path()).unwrap();
    assert!(rep.intact);
    w.shutdown.trigger();
}

#[tokio::test]
async fn callers_without_a_valid_certificate_are_refused() {
    let w = World::start(|_| {}).await;
    let call = |ch: tonic::transport::Channel| async move {
        OrganizationRegistryClient::new(ch)
            .get_organization(gbdul::GetOrganizationRequest { bin: bin(1) })
            .await
    };
    assert!(call(w.client("expertiza")).await.is_ok());

    // No client certificate.
    let ca = std::fs::read(w.pki.ca_cert_path()).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("127.0.0.1");
    let ch = tonic::transport::Endpoint::from_shared(w.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    assert!(call(ch).await.is_err(), "no client certificate");

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    shep_pki::Pki::init(other.path(), &["sdu"], false).unwrap();
    let mut cfg = shep_runtime::TlsConfig::from_pki_dir(other.path(), "sdu");
    cfg.ca = w.pki.ca_cert_path();
    let ch = shep_runtime::tls::channel(&cfg, &w.url()).unwrap();
    assert!(call(ch).await.is_err(), "foreign CA");

    // A certificate revoked after the bus started: refused once the bus reloads its CRL.
    w.pki.revoke("expertiza").unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if call(w.client("expertiza")).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a revoked certificate is refused");

    // A valid certificate of a system the access matrix does not know.
    let st = call(w.client("stranger")).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::PermissionDenied, "ACCESS_DENIED")
    );
    w.shutdown.trigger();
}

#[tokio::test]
async fn access_matrix_refusals_name_the_rule() {
    let w = World::start(|s| {
        s.access.insert(
            0,
            shep_bus::config::AccessRule {
                caller: "sdu".into(),
                method: "kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization".into(),
                effect: shep_bus::config::Effect::Deny,
            },
        );
    })
    .await;
    let st = get_person(&w, "pep", &iin(1), &[]).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::PermissionDenied, "ACCESS_DENIED")
    );
    assert!(
        info_meta(&st)["rule"].starts_with("default"),
        "{:?}",
        info_meta(&st)
    );
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let st = c
        .get_organization(gbdul::GetOrganizationRequest { bin: bin(1) })
        .await
        .unwrap_err();
    assert!(
        info_meta(&st)["rule"].starts_with("access[0]: deny"),
        "{:?}",
        info_meta(&st)
    );
    // BusAdmin is the operator's.
    let st = BusAdminClient::new(w.client("sdu"))
        .verify_audit(shep::VerifyAuditRequest {})
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "ACCESS_DENIED");
    w.shutdown.trigger();
}

#[tokio::test]
async fn consent_refusals_carry_their_reason() {
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    let subject = iin(1);
    let st = get_person(&w, "sdu", &subject, &[]).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::Unauthenticated, "CONSENT_TOKEN_MISSING")
    );

    let forger = shep_consent::Signer::generate("kdp-test").unwrap();
    let (_, forged) = token_with(&forger, &subject, "sdu", READ, 300);
    let st = get_person(&w, "sdu", &subject, &[&forged])
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::PermissionDenied, "CONSENT_BAD_SIGNATURE")
    );

    let (_, expired) = w.token(&subject, "sdu", READ, -1);
    assert_eq!(
        reason(
            &get_person(&w, "sdu", &subject, &[&expired])
                .await
                .unwrap_err()
        ),
        "CONSENT_EXPIRED"
    );

    let (_, other) = w.token(&iin(2), "sdu", READ, 300);
    assert_eq!(
        reason(
            &get_person(&w, "sdu", &subject, &[&other])
                .await
                .unwrap_err()
        ),
        "CONSENT_SUBJECT_MISMATCH"
    );

    let (_, scope) = w.token(&subject, "sdu", "zags.acts.read", 300);
    assert_eq!(
        reason(
            &get_person(&w, "sdu", &subject, &[&scope])
                .await
                .unwrap_err()
        ),
        "CONSENT_SCOPE_NOT_COVERED"
    );

    // Nothing of the above reached the registry; every refusal is in the audit and metrics.
    assert_eq!(w.gbdfl_seen.count(), 0);
    let acc = shep_bus::audit::subject_accesses(&w.audit_path(), &subject).unwrap();
    let reasons: Vec<_> = acc.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(
        reasons,
        vec![
            "CONSENT_TOKEN_MISSING",
            "CONSENT_BAD_SIGNATURE",
            "CONSENT_EXPIRED",
            "CONSENT_SUBJECT_MISMATCH",
            "CONSENT_SCOPE_NOT_COVERED"
        ]
    );
    assert!(
        acc.iter()
            .all(|r| r.decision == shep_bus::audit::Decision::Refused)
    );
    let m = metrics(w.bus.metrics_addr).await;
    assert!(
        m.contains("shep_bus_consent_refusals_total{reason=\"CONSENT_EXPIRED\"} 1"),
        "{m}"
    );
    assert!(m.contains("shep_bus_calls_total{caller=\"sdu\",method=\"/kz.gov.gbdfl.v1.PersonRegistry/GetPerson\",code=\"PERMISSION_DENIED\"} 4"), "{m}");
    assert!(m.contains("shep_bus_audit_queue_depth 0"));
    w.shutdown.trigger();
}

#[tokio::test]
async fn a_revocation_published_by_kdp_refuses_the_token() {
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    let subject = iin(1);
    let (id, tok) = w.token(&subject, "sdu", READ, 300);
    get_person(&w, "sdu", &subject, &[&tok]).await.unwrap();
    // Published on KDP's revocation stream, which the bus holds open.
    w.kdp.revoke(&id, &subject, "sdu", READ);
    let mut last = None;
    for _ in 0..250 {
        match get_person(&w, "sdu", &subject, &[&tok]).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(st) => {
                last = Some(st);
                break;
            }
        }
    }
    let st = last.expect("the revoked token is refused");
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::PermissionDenied, "CONSENT_REVOKED")
    );
    // Another token of the same subject issued after the revocation passes.
    let (_, fresh) = {
        let now = jiff::Timestamp::now().as_second();
        let c = shep_consent::Claims {
            token_id: "fresh".into(),
            subject: subject.clone(),
            consumer: "sdu".into(),
            scope: READ.into(),
            issued_at: now + 2,
            expires_at: now + 300,
            key_id: String::new(),
        };
        ((), w.kdp.signer.sign(&c))
    };
    get_person(&w, "sdu", &subject, &[&fresh]).await.unwrap();
    w.shutdown.trigger();
}

#[tokio::test]
async fn revocations_are_kept_only_while_a_token_they_cover_can_live() {
    // Tokens may live at most 60 s on this bus.
    let w = World::start(|s| s.consent.max_token_lifetime_secs = 60).await;
    w.consent_ready().await;
    let subject = iin(3);
    let (_, long) = w.token(&subject, "sdu", READ, 300);
    let st = get_person(&w, "sdu", &subject, &[&long]).await.unwrap_err();
    assert_eq!(reason(&st), "CONSENT_TOKEN_MALFORMED", "{st:?}");
    assert!(
        st.message().contains("max_token_lifetime_secs"),
        "{}",
        st.message()
    );
    let (id, short) = w.token(&subject, "sdu", READ, 30);
    get_person(&w, "sdu", &subject, &[&short]).await.unwrap();

    let kept = || async {
        let m = metrics(w.bus.metrics_addr).await;
        m.lines()
            .find_map(|l| l.strip_prefix("shep_bus_consent_revocations "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .expect("the revocations gauge")
    };
    let now = jiff::Timestamp::now().as_second();
    // A revocation older than the longest lifetime covers only expired tokens: not kept.
    w.kdp.revoke_at("old", &iin(4), "sdu", READ, now - 120);
    // A current one is kept (its token id and its consent) and refuses the token.
    w.kdp.revoke(&id, &subject, "sdu", READ);
    let mut refused = None;
    for _ in 0..250 {
        match get_person(&w, "sdu", &subject, &[&short]).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(st) => {
                refused = Some(st);
                break;
            }
        }
    }
    assert_eq!(
        reason(&refused.expect("the revoked token is refused")),
        "CONSENT_REVOKED"
    );
    assert_eq!(kept().await, 2, "the old revocation was dropped on arrival");
    w.shutdown.trigger();
}

#[tokio::test]
async fn without_kdp_personal_data_calls_fail_closed() {
    // KDP unreachable from the start: the bus starts and refuses personal-data calls.
    let w = World::start_with(false, |_| {}).await;
    let (_, tok) = w.token(&iin(1), "sdu", READ, 300);
    let st = get_person(&w, "sdu", &iin(1), &[&tok]).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::Unavailable, "CONSENT_KEY_UNAVAILABLE")
    );
    // Calls without personal data go on.
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    c.get_organization(gbdul::GetOrganizationRequest { bin: bin(1) })
        .await
        .unwrap();
    w.shutdown.trigger();

    // KDP lost after start: past the bound, refused.
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    get_person(&w, "sdu", &iin(1), &[&w.token(&iin(1), "sdu", READ, 300).1])
        .await
        .unwrap();
    w.kdp.go_down();
    let mut last = None;
    for _ in 0..250 {
        let (_, tok) = w.token(&iin(1), "sdu", READ, 300);
        match get_person(&w, "sdu", &iin(1), &[&tok]).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(st) => {
                last = Some(st);
                break;
            }
        }
    }
    let st = last.expect("refused once the feed is stale");
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::Unavailable, "CONSENT_REVOCATIONS_STALE"),
        "{st:?}"
    );
    w.shutdown.trigger();
}

#[tokio::test]
async fn malformed_identifiers_are_refused_before_forwarding() {
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    for (bad, rule) in [
        ("900515300019", "check digit"),
        ("12345", "12 digits"),
        ("9005153000ab", "digits"),
    ] {
        let (_, tok) = w.token(bad, "sdu", READ, 300);
        let st = get_person(&w, "sdu", bad, &[&tok]).await.unwrap_err();
        assert_eq!(
            (st.code(), reason(&st).as_str()),
            (Code::InvalidArgument, "SCE001")
        );
        let v = st
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations[0]
            .clone();
        assert_eq!(v.field, "iin");
        assert!(v.description.contains(rule), "{}", v.description);
    }
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let st = c
        .get_organization(gbdul::GetOrganizationRequest {
            bin: "123456789012".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "SCE001");
    // Every BIN of a repeated field is checked: one bad BIN refuses the whole list.
    let good = (1..100)
        .find_map(|s| shep_domain::Bin::from_parts(2005, 3, 4, 0, s))
        .unwrap()
        .to_string();
    let mut el = shep_proto::elicense::permit_registry_client::PermitRegistryClient::new(
        w.client("sdu"),
    );
    let st = el
        .list_permits_by_bins(shep_proto::elicense::ListPermitsByBinsRequest {
            bins: vec![good.clone(), good, "12345678901a".into()],
            service_codes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::InvalidArgument, "SCE001")
    );
    let v = st.get_error_details().bad_request().unwrap().field_violations[0].clone();
    assert_eq!(v.field, "bins[2]");
    assert_eq!(w.gbdfl_seen.count(), 0);
    w.shutdown.trigger();
}

#[tokio::test]
async fn unknown_services_and_methods_are_unimplemented_sce004() {
    let w = World::start(|_| {}).await;
    for path in [
        "/kz.gov.nope.v1.Registry/Get",
        "/kz.gov.gbdfl.v1.PersonRegistry/DeletePerson",
        "/kz.shep.sim.v1.Scenario/Reset",
    ] {
        let mut grpc = tonic::client::Grpc::new(w.client("operator"));
        grpc.ready().await.unwrap();
        let st = grpc
            .unary(
                Request::new(Bytes::new()),
                http::uri::PathAndQuery::from_static(path),
                BytesCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(
            (st.code(), reason(&st).as_str()),
            (Code::Unimplemented, "SCE004"),
            "{path}"
        );
    }
    w.shutdown.trigger();
}

#[tokio::test]
async fn deadlines_are_passed_on_and_enforced() {
    // The bus's own deadline for unary calls without one: 300 ms.
    let w = World::start(|s| s.upstream.default_unary_timeout_ms = 300).await;
    w.consent_ready().await;
    let slow = slow_iin();
    let (_, tok) = w.token(&slow, "sdu", READ, 300);
    let st = get_person(&w, "sdu", &slow, &[&tok]).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::DeadlineExceeded, "UPSTREAM_TIMEOUT"),
        "{st:?}"
    );
    assert!(st.message().contains("gbd-fl"), "{}", st.message());
    let sent = shep_bus::wire::parse_timeout(
        w.gbdfl_seen
            .last()
            .get("grpc-timeout")
            .unwrap()
            .to_str()
            .unwrap(),
    )
    .unwrap();
    assert!(sent <= Duration::from_millis(300), "{sent:?}");

    // A stream cut by its deadline ends with DEADLINE_EXCEEDED in the trailers.
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let mut req = Request::new(gbdul::StreamNameChangesRequest::default());
    req.set_timeout(Duration::from_millis(400));
    let mut s = c.stream_name_changes(req).await.unwrap().into_inner();
    let mut got = 0;
    let end = loop {
        match s.message().await {
            Ok(Some(_)) => got += 1,
            Ok(None) => panic!("the endless stream ended without an error"),
            Err(st) => break st,
        }
    };
    assert!(got >= 1);
    assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
    let records = shep_bus::audit::query(&w.audit_path(), 0, Some("sdu"), 0).unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.grpc_status == Code::DeadlineExceeded as i32
                && r.method.ends_with("StreamNameChanges"))
    );
    w.shutdown.trigger();
}

#[tokio::test]
async fn cancelling_a_call_cancels_it_upstream() {
    let w = World::start(|_| {}).await;
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let mut s = c
        .stream_name_changes(gbdul::StreamNameChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    drop(s);
    drop(c);
    tokio::time::timeout(Duration::from_secs(20), w.gbdul_cancelled.notified())
        .await
        .expect("the upstream saw the cancellation");
    // The call is still recorded: a completion with CANCELLED.
    let mut recorded = false;
    for _ in 0..100 {
        let recs = shep_bus::audit::query(&w.audit_path(), 0, Some("sdu"), 0).unwrap();
        if recs
            .iter()
            .any(|r| r.grpc_status == Code::Cancelled as i32 && r.reason == "CLIENT_CANCELLED")
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorded, "the cancelled call has its completion record");
    w.shutdown.trigger();
}

#[tokio::test]
async fn an_upstream_dying_mid_stream_ends_the_stream_unavailable_and_recorded() {
    // GBD UL is reached through a relay; killing it is GBD UL's process dying.
    let mut relay = None;
    let w = World::start(|s| relay = Some(Relay::in_front_of(s, "gbd-ul").0)).await;
    let relay = relay.unwrap();
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let mut s = c
        .stream_name_changes(gbdul::StreamNameChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut got = vec![];
    for _ in 0..3 {
        got.push(s.message().await.unwrap().unwrap().cursor);
    }
    relay.kill();
    // The messages sent before the crash arrive, then the status: no hang (the bound only
    // turns a hang into a failure).
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match s.message().await {
                Ok(Some(m)) => got.push(m.cursor),
                Ok(None) => panic!("the stream ended as if the upstream had finished"),
                Err(st) => break st,
            }
        }
    })
    .await
    .expect("the caller got a status after the upstream died");
    let expected: Vec<String> = (1..=got.len()).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "every message before the crash, in order");
    assert_eq!(
        (end.code(), reason(&end).as_str()),
        (Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
        "{end:?}"
    );
    assert_eq!(info_meta(&end)["upstream"], "gbd-ul");
    assert!(end.message().contains("gbd-ul"), "{}", end.message());
    // The completion was committed before the status left the bus.
    let recs = shep_bus::audit::query(&w.audit_path(), 0, Some("sdu"), 0).unwrap();
    let done = recs
        .iter()
        .find(|r| {
            r.method.ends_with("/StreamNameChanges")
                && r.phase == shep_bus::audit::Phase::Completion
        })
        .expect("a completion record");
    assert_eq!(
        (done.grpc_status, done.reason.as_str()),
        (Code::Unavailable as i32, "UPSTREAM_UNAVAILABLE")
    );
    assert!(done.response_bytes > 0, "{done:?}");
    assert!(shep_bus::audit::verify(&w.audit_path()).unwrap().intact);
    w.shutdown.trigger();
}

#[tokio::test]
async fn a_rotated_bus_certificate_is_presented_to_upstreams_without_a_restart() {
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    let subject = iin(7);
    let (_, tok) = w.token(&subject, "sdu", READ, 300);
    get_person(&w, "sdu", &subject, &[&tok]).await.unwrap();
    let before = w.gbdfl_seen.last_serial();
    w.pki
        .issue("bus", shep_pki::Validity::days(1), true)
        .unwrap();
    // The bus's watcher checks every 100 ms; poll (bounded) until the upstream sees the
    // new certificate.
    let mut after = before.clone();
    for _ in 0..600 {
        get_person(&w, "sdu", &subject, &[&tok]).await.unwrap();
        after = w.gbdfl_seen.last_serial();
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(after, before, "the upstream still sees the old certificate");
    // Once rotated, every new call comes with the new certificate.
    for _ in 0..3 {
        get_person(&w, "sdu", &subject, &[&tok]).await.unwrap();
        assert_eq!(w.gbdfl_seen.last_serial(), after);
    }
    assert_eq!(
        w.gbdfl_seen.last().get(shep_bus::CALLER_HEADER).unwrap(),
        "sdu"
    );
    w.shutdown.trigger();
}

#[tokio::test]
async fn an_upstream_that_comes_back_is_called_again() {
    // GBD UL behind a relay: killing the relay is GBD UL going away, a new relay on the
    // same port is GBD UL back.
    let mut relayed = None;
    let w = World::start(|s| relayed = Some(Relay::in_front_of(s, "gbd-ul"))).await;
    let (relay, target) = relayed.unwrap();
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let ask = || gbdul::GetOrganizationRequest { bin: bin(1) };
    c.get_organization(ask()).await.unwrap();

    relay.kill();
    let st = c.get_organization(ask()).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
        "{st:?}"
    );
    assert_eq!(info_meta(&st)["upstream"], "gbd-ul");

    // Back on the same address: the bus connects again on a later call (the first may
    // still meet the closed connection), with no restart.
    let _back = Relay::start_on(relay.port, target);
    let mut ok = false;
    for _ in 0..50 {
        if c.get_organization(ask()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the bus did not reach GBD UL again once it was back");
    c.get_organization(ask()).await.unwrap();
    w.shutdown.trigger();
}

/// An upstream behind a dead path (nothing passes, nothing closes): the bus's pings go
/// unanswered, it drops the connection, and the next call connects again instead of
/// waiting on the dead one until its deadline.
#[tokio::test]
async fn an_upstream_behind_a_dead_path_is_dropped_by_keepalive_and_reached_again() {
    let mut relay = None;
    let w = World::start(|s| {
        s.upstream.keepalive_interval_ms = 100;
        s.upstream.keepalive_timeout_ms = 200;
        relay = Some(Relay::in_front_of(s, "gbd-ul").0);
    })
    .await;
    let relay = relay.unwrap();
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let ask = || {
        let mut r = tonic::Request::new(gbdul::GetOrganizationRequest { bin: bin(1) });
        r.set_timeout(Duration::from_secs(2));
        r
    };
    c.get_organization(ask()).await.unwrap();
    assert_eq!(relay.connections(), 1);

    relay.blackhole();
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.get_organization(ask()).await.unwrap();
    assert_eq!(relay.connections(), 2, "the bus connected again");
    w.shutdown.trigger();
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable_and_named() {
    let w = World::start(|_| {}).await;
    let mut c = pep::portal_client::PortalClient::new(w.client("operator"));
    let st = c
        .list_outbox(pep::ListOutboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::Unavailable, "UPSTREAM_UNAVAILABLE")
    );
    assert!(st.message().contains("pep"), "{}", st.message());
    assert_eq!(info_meta(&st)["upstream"], "pep");
    w.shutdown.trigger();
}

#[tokio::test]
async fn oversized_messages_and_rates_are_limited() {
    let w = World::start(|s| {
        s.limits.per_caller.insert(
            "expertiza".into(),
            shep_bus::config::CallerLimits {
                requests_per_second: 0.001,
                burst: 2,
                max_concurrent: 10,
            },
        );
    })
    .await;
    w.consent_ready().await;
    let huge = "1".repeat(100 * 1024);
    let st = get_person(&w, "sdu", &huge, &[]).await.unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::ResourceExhausted, "MESSAGE_TOO_LARGE")
    );
    // A method the bus does not decode: the size is checked on the wire.
    let mut c = OrganizationRegistryClient::new(w.client("sdu"));
    let st = c
        .stream_name_changes(gbdul::StreamNameChangesRequest {
            cursor: huge,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::ResourceExhausted, "MESSAGE_TOO_LARGE"),
        "{st:?}"
    );

    let mut c = OrganizationRegistryClient::new(w.client("expertiza"));
    for _ in 0..2 {
        c.get_organization(gbdul::GetOrganizationRequest { bin: bin(1) })
            .await
            .unwrap();
    }
    let st = c
        .get_organization(gbdul::GetOrganizationRequest { bin: bin(1) })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::ResourceExhausted, "RATE_LIMITED")
    );
    assert!(st.get_error_details().retry_info().is_some());
    w.shutdown.trigger();
}

#[tokio::test]
async fn the_audit_chain_is_verified_and_tampering_is_named() {
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    let subject = iin(7);
    let (_, tok) = w.token(&subject, "sdu", READ, 300);
    for _ in 0..3 {
        get_person(&w, "sdu", &subject, &[&tok]).await.unwrap();
    }
    get_person(&w, "sdu", &subject, &[]).await.unwrap_err();
    let mut admin = BusAdminClient::new(w.client("operator"));
    let v = admin
        .verify_audit(shep::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact, "{v:?}");
    let acc: Vec<_> = admin
        .subject_accesses(shep::SubjectAccessesRequest {
            iin: subject.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;
    // Three reads, one refusal, and this query (the operator looked at the person's log).
    assert_eq!(acc.len(), 5);
    assert_eq!(acc[4].method, "/kz.shep.v1.BusAdmin/SubjectAccesses");
    assert_eq!(acc[4].caller, "operator");
    assert_eq!(
        acc.iter()
            .filter(|r| r.decision == shep::Decision::Refused as i32)
            .count(),
        1
    );
    let routes = admin
        .list_routes(shep::ListRoutesRequest {})
        .await
        .unwrap()
        .into_inner()
        .routes;
    assert!(
        routes
            .iter()
            .any(|r| r.service == "kz.gov.gbdfl.v1.PersonRegistry" && r.system_id == "gbd-fl")
    );
    let all: Vec<_> = admin
        .query_audit(shep::QueryAuditRequest {
            cursor: "2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert!(all.first().unwrap().as_ref().unwrap().seq == 3);

    // Someone with the file edits a record (around the append-only triggers), once the
    // maintenance pass has moved it from the journal into the archive.
    let conn = rusqlite_open(&w.audit_path());
    for _ in 0..100 {
        let archived: i64 = conn.query_row("SELECT count(*) FROM audit", [], |r| r.get(0)).unwrap();
        if archived >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.execute_batch("DROP TRIGGER audit_no_update;").unwrap();
    conn.execute("UPDATE audit SET caller = 'mallory' WHERE seq = 3", [])
        .unwrap();
    let rep = shep_bus::audit::verify(&w.audit_path()).unwrap();
    assert!(!rep.intact);
    assert_eq!(rep.first_bad_seq, Some(3));
    let v = admin
        .verify_audit(shep::VerifyAuditRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v.intact, v.first_bad_seq), (false, 3));
    w.shutdown.trigger();
}

fn rusqlite_open(p: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(p).unwrap()
}

#[tokio::test]
async fn the_envelope_routes_by_service_id() {
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    let subject = iin(5);
    let (_, tok) = w.token(&subject, "sdu", READ, 300);
    let envelope = |service_id: &str, payload: Option<prost_types::Any>, token: Option<&str>| {
        shep::SyncSendMessageRequest {
            request_info: Some(shep::SyncMessageInfo {
                message_id: "env-1".into(),
                correlation_id: "corr-1".into(),
                service_id: service_id.into(),
                sender: Some(shep::SenderInfo {
                    sender_id: "sdu".into(),
                    password: String::new(),
                }),
                properties: token
                    .map(|t| {
                        vec![shep::Property {
                            key: "kdp-token".into(),
                            value: t.into(),
                        }]
                    })
                    .unwrap_or_default(),
                ..Default::default()
            }),
            request_data: Some(shep::MessageData { data: payload }),
        }
    };
    let any = |iin: &str| {
        Some(prost_types::Any {
            type_url: "type.googleapis.com/kz.gov.gbdfl.v1.GetPersonRequest".into(),
            value: prost::Message::encode_to_vec(&gbdfl::GetPersonRequest { iin: iin.into() }),
        })
    };
    let mut c = SyncChannelClient::new(w.client("sdu"));
    let r = c
        .send_message(envelope(
            "kz.gov.gbdfl.v1.PersonRegistry/GetPerson",
            any(&subject),
            Some(&tok),
        ))
        .await
        .unwrap()
        .into_inner();
    let info = r.response_info.unwrap();
    assert_eq!(info.status.as_ref().unwrap().code, "SCSS001");
    assert_eq!(
        (info.message_id.as_str(), info.correlation_id.as_str()),
        ("env-1", "corr-1")
    );
    let data = r.response_data.unwrap().data.unwrap();
    assert_eq!(data.type_url, "type.googleapis.com/kz.gov.gbdfl.v1.Person");
    let p: gbdfl::Person = prost::Message::decode(data.value.as_slice()).unwrap();
    assert_eq!(p.iin, subject);
    assert_eq!(w.gbdfl_seen.last().get("x-shep-caller").unwrap(), "sdu");

    // With a leading '/', a business failure upstream: SCSE001.
    let missing = missing_iin();
    let (_, tok2) = w.token(&missing, "sdu", READ, 300);
    let r = c
        .send_message(envelope(
            "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson",
            any(&missing),
            Some(&tok2),
        ))
        .await
        .unwrap()
        .into_inner();
    let st = r.response_info.unwrap().status.unwrap();
    assert_eq!(st.code, "SCSE001");
    assert!(st.message.contains("NOT_FOUND"), "{}", st.message);

    let e = c
        .send_message(envelope("kz.gov.nope.v1.X/Y", any(&subject), Some(&tok)))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Unimplemented, "SCE004")
    );
    let e = c
        .send_message(envelope(
            "kz.gov.gbdfl.v1.PersonRegistry/GetPerson",
            None,
            Some(&tok),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "SCE001")
    );
    let e = c
        .send_message(envelope(
            "kz.gov.gbdfl.v1.PersonRegistry/GetPerson",
            any(&subject),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "CONSENT_TOKEN_MISSING");
    let e = c
        .send_message(envelope(
            "kz.gov.gbdfl.v1.PersonRegistry/GetPersons",
            any(&subject),
            Some(&tok),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&e),
        "SCE001",
        "streaming methods are not for the envelope"
    );
    // Another system's name as sender.
    let mut env = envelope(
        "kz.gov.gbdfl.v1.PersonRegistry/GetPerson",
        any(&subject),
        Some(&tok),
    );
    env.request_info
        .as_mut()
        .unwrap()
        .sender
        .as_mut()
        .unwrap()
        .sender_id = "pep".into();
    assert_eq!(
        reason(&c.send_message(env).await.unwrap_err()),
        "SENDER_MISMATCH"
    );
    // The access matrix applies to the named method.
    let mut pep = SyncChannelClient::new(w.client("pep"));
    let mut env = envelope(
        "kz.gov.gbdfl.v1.PersonRegistry/GetPerson",
        any(&subject),
        Some(&tok),
    );
    env.request_info.as_mut().unwrap().sender = None;
    assert_eq!(
        reason(&pep.send_message(env).await.unwrap_err()),
        "ACCESS_DENIED"
    );

    let acc = shep_bus::audit::subject_accesses(&w.audit_path(), &subject).unwrap();
    assert!(
        acc.iter()
            .any(|r| r.message_id == "env-1" && r.grpc_status == 0)
    );
    w.shutdown.trigger();
}

#[tokio::test]
async fn reflection_health_and_metrics_describe_the_bus() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let w = World::start(|_| {}).await;
    let mut r = ServerReflectionClient::new(w.client("expertiza"));
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut s = r
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = s.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "kz.gov.gbdfl.v1.PersonRegistry",
        "kz.gov.kdp.v1.ConsentService",
        "kz.gov.pep.v1.Portal",
        "shep.test.Echo",
        "kz.shep.v1.SyncChannel",
        "kz.shep.v1.BusAdmin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    // Health per routed service follows the upstream's.
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut h = tonic_health::pb::health_client::HealthClient::new(w.client("expertiza"));
    let check = |svc: &str| tonic_health::pb::HealthCheckRequest {
        service: svc.into(),
    };
    let mut serving = false;
    for _ in 0..100 {
        let st = h
            .check(check("kz.gov.gbdfl.v1.PersonRegistry"))
            .await
            .unwrap()
            .into_inner()
            .status;
        if st == ServingStatus::Serving as i32 {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving, "GBD FL is up: SERVING");
    let st = h
        .check(check("kz.gov.pep.v1.Portal"))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(st, ServingStatus::NotServing as i32, "PEP is down");
    // Watch is a server stream on the bus itself.
    let mut watch = h
        .watch(check("kz.gov.gbdfl.v1.PersonRegistry"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    OrganizationRegistryClient::new(w.client("expertiza"))
        .get_organization(gbdul::GetOrganizationRequest { bin: bin(1) })
        .await
        .unwrap();
    let m = metrics(w.bus.metrics_addr).await;
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(
        m.contains("shep_bus_calls_total{caller=\"expertiza\",method=\"/kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization\",code=\"OK\"} 1"),
        "{m}"
    );
    assert!(m.contains("shep_bus_call_duration_seconds_count{method=\"/kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization\"} 1"));
    assert!(m.contains(
        "shep_bus_upstream_up{service=\"kz.gov.gbdfl.v1.PersonRegistry\",system=\"gbd-fl\"} 1"
    ));
    assert!(m.contains("shep_bus_upstream_up{service=\"kz.gov.pep.v1.Portal\",system=\"pep\"} 0"));
    w.shutdown.trigger();
}

#[tokio::test]
async fn gzip_requests_are_inspected_too() {
    use tonic::codec::CompressionEncoding;
    let w = World::start(|_| {}).await;
    w.consent_ready().await;
    let subject = iin(11);
    let (_, tok) = w.token(&subject, "sdu", READ, 300);
    let mut c =
        PersonRegistryClient::new(w.client("sdu")).send_compressed(CompressionEncoding::Gzip);
    let p = c
        .get_person(with_tokens(
            gbdfl::GetPersonRequest {
                iin: subject.clone(),
            },
            &[&tok],
        ))
        .await
        .unwrap();
    assert_eq!(p.get_ref().iin, subject);
    let st = c
        .get_person(with_tokens(
            gbdfl::GetPersonRequest {
                iin: "900515300019".into(),
            },
            &[&tok],
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&st), "SCE001");
    w.shutdown.trigger();
}

/// A small tmpfs, unmounted when dropped: a disk that can be filled.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: std::path::PathBuf) -> SmallDisk {
        std::fs::create_dir_all(&at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&at)
            .status()
            .expect("mount(8) runs");
        assert!(st.success(), "this test fills a disk under the audit: it needs to mount a 256 KiB tmpfs (root)");
        SmallDisk(at)
    }

    /// Writes a file until the disk is full; returns it.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        while f.write_all(&[0u8; 4096]).is_ok() {}
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn when_the_audit_cannot_be_written_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("disk"));
    let audit = disk.0.join("bus-audit.sqlite");
    let w = World::start(|s| s.audit.path = audit.clone()).await;
    let call = || async {
        OrganizationRegistryClient::new(w.client("sdu"))
            .get_organization(gbdul::GetOrganizationRequest { bin: bin(1) })
            .await
    };
    call().await.unwrap();
    // The disk fills up. A journal write that still fits the file's last page succeeds;
    // the first that needs a new one fails.
    let filler = disk.fill();
    let mut refused = None;
    for _ in 0..20 {
        if let Err(st) = call().await {
            refused = Some(st);
            break;
        }
    }
    // A unary call: forwarded, but its answer is withheld since its record cannot be written.
    let st = refused.expect("a call is refused once the disk is full");
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::Unavailable, "AUDIT_UNAVAILABLE")
    );
    // A stream: not forwarded, since its decision cannot be written.
    let st = OrganizationRegistryClient::new(w.client("sdu"))
        .stream_name_changes(gbdul::StreamNameChangesRequest {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (st.code(), reason(&st).as_str()),
        (Code::Unavailable, "AUDIT_UNAVAILABLE")
    );
    // Room again: calls go on, and the chain has no hole where the refused ones were.
    std::fs::remove_file(filler).unwrap();
    call().await.unwrap();
    let rep = shep_bus::audit::verify(&w.audit_path()).unwrap();
    assert!(rep.intact, "{rep:?}");
    w.shutdown.trigger();
}
