//! The live export (`Scenario/Export`) over real mutual-TLS sockets: the state changed
//! through the real RPCs is in the files, and the bytes are those of the offline export of
//! the same simulation; a broken stream leaves no file behind.

mod common;

use std::path::Path;

use common::{Harness, active_org_permit, person_where, reason};
use serde_json::Value;
use shep_proto::elicense::permit_registry_client::PermitRegistryClient;
use shep_proto::elicense::{Holder, HolderName, ReissuePermitRequest, holder, holder_name};
use shep_proto::pep::portal_client::PortalClient;
use shep_proto::pep::{NotifyOutcome, NotifyRequest};
use shep_proto::shep::LocalizedText;
use shep_proto::sim::export_chunk::Part;
use shep_proto::sim::scenario_client::ScenarioClient;
use shep_proto::sim::*;
use shep_simulators::export::{FILES, ReceiveError, receive};
use shep_simulators::{Registry, export_jsonl};
use tonic::Code;
use tonic::transport::Channel;

fn scenario(h: &Harness, r: Registry) -> ScenarioClient<Channel> {
    ScenarioClient::new(h.channel(r, "operator"))
}

/// The lines of an exported file, parsed.
fn lines(dir: &Path, file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn live_export_holds_the_changes_and_equals_the_offline_export() {
    let h = Harness::start().await;

    // A rename, through GBD UL's scenario control.
    let org = h.sim.country().orgs()[5];
    let new_name = LocalizedText { ru: "ТОО \"Экспорт\"".into(), kk: "\"Экспорт\" ЖШС".into() };
    let r = scenario(&h, Registry::GbdUl)
        .inject_rename(InjectRenameRequest { bin: org.bin.to_string(), new_name: Some(new_name.clone()), date: None })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);

    // A re-issue, through e-license.
    let (bin, number) = active_org_permit(&h);
    let reissued = PermitRegistryClient::new(h.channel(Registry::ELicense, "sdu"))
        .reissue_permit(ReissuePermitRequest {
            permit_number: number.clone(),
            holder: Some(Holder { id: Some(holder::Id::Bin(bin.clone())) }),
            new_holder_name: Some(HolderName { name: Some(holder_name::Name::Organization(new_name.clone())) }),
            idempotency_key: "export-case".into(),
            reason: "proactive: export test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let new_number = reissued.new_permit.unwrap().number;

    // An SMS from PEP and the citizen's answer an hour later, on the manual clock.
    let c = h.sim.country();
    let iin = person_where(&h, |p| c.phone_of(p).is_some() && c.base_consent(p, "pep", "bmg.phone.read").is_some());
    scenario(&h, Registry::Pep)
        .set_citizen_answer(SetCitizenAnswerRequest {
            iin: iin.clone(),
            answer: "1".into(),
            delay_seconds: 3600,
            no_answer: false,
        })
        .await
        .unwrap();
    let sent = PortalClient::new(h.channel(Registry::Pep, "sdu"))
        .notify(NotifyRequest {
            case_id: "export-case".into(),
            attempt: 1,
            iin: iin.clone(),
            pilot_id: "sez-000".into(),
            permit_numbers: vec![number.clone()],
            holder_bin: bin.clone(),
            holder_name: "ТОО \"Экспорт\"".into(),
            language: 0,
            text: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sent.outcome, NotifyOutcome::Sent as i32);
    scenario(&h, Registry::Pep).advance_clock(AdvanceClockRequest { seconds: 3600 }).await.unwrap();

    // A client that goes away after the first chunk does not stop the node from exporting.
    let mut abandoned = scenario(&h, Registry::Zags).export(ExportRequest {}).await.unwrap().into_inner();
    assert!(abandoned.message().await.unwrap().is_some());
    drop(abandoned);

    // Export from a node other than those changed: they share the simulation.
    let live = tempfile::tempdir().unwrap();
    let chunks = scenario(&h, Registry::Bmg).export(ExportRequest {}).await.unwrap().into_inner();
    let got = receive(chunks, live.path()).await.unwrap();
    let names_sent: Vec<&str> = got.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names_sent, FILES);
    assert_eq!(names(live.path()), {
        let mut v: Vec<String> = FILES.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    });

    // The same bytes as the offline export of the same simulation.
    let offline = tempfile::tempdir().unwrap();
    let want = export_jsonl(&h.sim, offline.path()).unwrap();
    assert_eq!(got.files, want.files);
    for f in FILES {
        assert_eq!(std::fs::read(live.path().join(f)).unwrap(), std::fs::read(offline.path().join(f)).unwrap(), "{f}");
    }

    // The changes are in the files.
    let ul = lines(live.path(), "gbd-ul.jsonl");
    let renamed = ul.iter().find(|o| o["bin"] == org.bin.to_string()).unwrap();
    assert_eq!(renamed["name"]["ru"], new_name.ru);
    assert_eq!(renamed["name_history"].as_array().unwrap().last().unwrap()["new"]["kk"], new_name.kk);

    let el = lines(live.path(), "e-license.jsonl");
    let old = el.iter().find(|p| p["type"] == "permit" && p["number"] == number).unwrap();
    assert_eq!(
        (old["status"].as_str(), old["replaced_by"].as_str()),
        (Some("PERMIT_STATUS_REISSUED"), Some(&*new_number))
    );
    let new = el.iter().find(|p| p["type"] == "permit" && p["number"] == new_number).unwrap();
    assert_eq!((new["replaces"].as_str(), new["holder_bin"].as_str()), (Some(&*number), Some(&*bin)));
    assert_eq!(new["holder_name"]["ru"], new_name.ru);
    let note = el.iter().find(|p| p["type"] == "cabinet_notification").unwrap();
    assert_eq!((note["permit_number"].as_str(), note["holder"].as_str()), (Some(&*new_number), Some(&*bin)));

    let sms = lines(live.path(), "sms.jsonl");
    assert_eq!(sms.len(), 2, "{sms:?}");
    let (s, a) = (&sms[0], &sms[1]);
    assert_eq!(
        (s["type"].as_str(), s["case_id"].as_str(), s["attempt"].as_u64()),
        (Some("sms"), Some("export-case"), Some(1))
    );
    assert_eq!((s["iin"].as_str(), s["sms_id"].as_str()), (Some(&*iin), Some(&*sent.sms_id)));
    let phone = h.sim.country().phone_of(h.sim.country().person_index(&iin.parse().unwrap()).unwrap()).unwrap();
    assert_eq!(s["phone"], phone.number);
    assert!(s["text"].as_str().unwrap().contains(&number));
    let sent_at = jiff::Timestamp::from_second(sent.sent_at.unwrap().seconds).unwrap();
    assert_eq!(s["sent_at"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap(), sent_at);
    assert_eq!(
        (a["type"].as_str(), a["sms_id"].as_str(), a["text"].as_str()),
        (Some("answer"), Some(&*sent.sms_id), Some("1"))
    );
    let received_at: jiff::Timestamp = a["received_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(received_at.as_second() - sent_at.as_second(), 3600);

    // A node shutting down ends the export with UNAVAILABLE, and nothing is committed.
    h.sim.close_streams();
    let cut = tempfile::tempdir().unwrap();
    let chunks = scenario(&h, Registry::Kdp).export(ExportRequest {}).await.unwrap().into_inner();
    match receive(chunks, cut.path()).await {
        Err(ReceiveError::Status(s)) => {
            assert_eq!((s.code(), reason(&s)), (Code::Unavailable, "NODE_SHUTTING_DOWN".to_string()))
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    assert!(names(cut.path()).is_empty(), "{:?}", names(cut.path()));
}

fn data(file: &str, bytes: &[u8]) -> Result<ExportChunk, tonic::Status> {
    Ok(ExportChunk { file: file.into(), part: Some(Part::Data(bytes.to_vec())) })
}

fn end(file: &str, lines: u64, bytes: u64, sha256: &str) -> Result<ExportChunk, tonic::Status> {
    Ok(ExportChunk { file: file.into(), part: Some(Part::End(ExportedFile { lines, bytes, sha256: sha256.into() })) })
}

#[tokio::test]
async fn a_broken_stream_leaves_the_directory_as_it_was() {
    use sha2::Digest;
    let line = b"{}\n";
    let sha: String = sha2::Sha256::digest(line).iter().map(|b| format!("{b:02x}")).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gbd-ul.jsonl"), "earlier\n").unwrap();
    let run = |chunks: Vec<Result<ExportChunk, tonic::Status>>| {
        let dir = dir.path().to_owned();
        async move { receive(futures::stream::iter(chunks), &dir).await }
    };

    // Well formed: written and committed.
    let ok = run(vec![data("gbd-ul.jsonl", line), end("gbd-ul.jsonl", 1, 3, &sha), end("sms.jsonl", 0, 0, EMPTY)])
        .await
        .unwrap();
    assert_eq!(ok.files.len(), 2);
    assert_eq!(std::fs::read(dir.path().join("gbd-ul.jsonl")).unwrap(), line);
    assert_eq!(std::fs::read(dir.path().join("sms.jsonl")).unwrap(), b"");
    std::fs::write(dir.path().join("gbd-ul.jsonl"), "earlier\n").unwrap();

    let broken: Vec<(Vec<Result<ExportChunk, tonic::Status>>, &str)> = vec![
        (vec![data("gbd-ul.jsonl", line), end("gbd-ul.jsonl", 1, 3, EMPTY)], "sha256"),
        (vec![data("gbd-ul.jsonl", line), end("gbd-ul.jsonl", 2, 3, &sha)], "2 lines"),
        (vec![data("gbd-ul.jsonl", line)], "ended inside gbd-ul.jsonl"),
        (vec![data("gbd-ul.jsonl", line), data("zags.jsonl", line)], "zags.jsonl began before gbd-ul.jsonl ended"),
        (vec![end("gbd-ul.jsonl", 1, 3, &sha)], "received 0 lines"),
        (vec![data("../x.jsonl", line)], "not an export file name"),
        (vec![], "without a file"),
        (
            vec![data("gbd-ul.jsonl", line), end("gbd-ul.jsonl", 1, 3, &sha), Err(tonic::Status::unavailable("gone"))],
            "gone",
        ),
    ];
    for (chunks, why) in broken {
        let e = run(chunks).await.unwrap_err();
        assert!(e.to_string().contains(why), "{e} (expected: {why})");
        assert_eq!(names(dir.path()), ["gbd-ul.jsonl", "sms.jsonl"], "{why}: no part file left");
        assert_eq!(std::fs::read(dir.path().join("gbd-ul.jsonl")).unwrap(), b"earlier\n", "{why}: untouched");
    }
    assert!(!dir.path().parent().unwrap().join("x.jsonl").exists());
}

/// SHA-256 of nothing.
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
