//! The SDU end to end: the whole topology in this process (the seven simulators, the bus in
//! front of them, the SDU node; every hop mTLS on a free loopback port), a small synthetic
//! country on a manual clock, driven as a tester drives it: scenario injections, scripted
//! citizens and faults over `kz.shep.sim.v1.Scenario`, runs over the SDU's gRPC API, the
//! clock moved through the waits, and the results read back from the SDU (cases, histories,
//! the funnel), PEP's outbox and e-license.
//!
//! Each test starts its own topology and gives each scenario its own subject, so several
//! cases share one run. The expected deadlines are derived in comments from the calendar
//! data (`nodes/sdu/calendar/*.toml`) and the seed orders: a wait of 3 days ends at the time
//! of day the SMS was sent, on the 3rd working day (000) or plain day (001, 004) after the
//! day it was sent, Asia/Almaty.

use std::collections::HashMap;

use jiff::civil::{Date, date};
use shep_cli::topology::{ClockKind, Topology, TopologyConfig};
use shep_proto::elicense::PermitStatus;
use shep_proto::pep::Language;
use shep_proto::sdu::{self as pb, CaseStepKind, Outcome};
use shep_runtime::Shutdown;
use shep_tests::scenario::{
    Behaviour, FaultSpec, Holder, Picker, Subject, Tester, almaty, almaty_text, assert_nothing_duplicated, from_pb_ts,
    sms_by_case,
};
use tonic_types::StatusExt;

const SEZ: [&str; 4] = ["SEZ-OBJ", "SEZ-PROJ", "SEZ-PRODUCT", "SEZ-ACTIVITY"];
const ECO: [&str; 2] = ["ECO-I", "ECO-II"];
const TRUSTED_SW: [&str; 1] = ["TRUSTED-SW"];

/// The SMS of seed 000 (appendix to the Algorithm), its paragraphs one per line.
const SMS_000: &str = "Уважаемый услугополучатель!
Вы являетесь потенциальным услугополучателем по оказанию процесса переоформления разрешительных документов по государственной услуге в сфере санитарно-эпидемиологического благополучия населения Министерства здравоохранения Республики Казахстан в связи с изменением у организаций, наименования или физических лиц, фамилии, имени, отчества.
В случае согласия на изменение у организаций, наименования или физических лиц, фамилии, имени, отчества отправьте цифру 1, в случае отказа цифру 2.
По всем вопросам можете обратиться в Единый контакт-центр по бесплатному номеру 1414.";

/// The SMS of seed 004 (1-қосымша), in Kazakh, its paragraphs one per line (the seed's
/// markdown emphasis of the first line and the page break inside the second paragraph left out).
const SMS_004: &str = "Құрметті көрсетілетін қызметті алушы!
Сіз көрсетілетін қызметті алушының атауының өзгеруіне байланысты Қазақстан Республикасы Цифрлық даму, инновациялар және аэроғарыш өнеркәсібі министрлігінің \"Сенімді бағдарламалық қамтамасыз ету тізіліміне (тізілімінен) бағдарламалық қамтамасыз етуді және электронды өнеркәсіп өнімін енгізу (алып тастау)\" мемлекеттік көрсетілетін қызмет бойынша рұқсат беру құжаттарын қайта ресімдеу процесін көрсету жөніндегі әлеуетті көрсетілетін қызметті алушы болып табыласыз.
Көрсетілетін қызметті алушының атауын өзгертуге келіскен жағдайда 1 санын, келіспеген жағдайда 2 санын жіберіңіз.
Барлық сұрақтар бойынша 1414 тегін нөмірі бойынша Бірыңғай байланыс орталығына хабарласа аласыз.";

struct Env {
    topo: Topology,
    t: Tester,
    _dir: tempfile::TempDir,
}

/// A small country on a manual clock that starts at `today` 09:00 Almaty; no generated
/// renames or name changes unless `tweak` asks for them, so a run's diff is what the test
/// injects. Calls are retried quickly and the timers polled often.
async fn start(today: Date, tweak: impl FnOnce(&mut TopologyConfig, &std::path::Path)) -> Env {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cfg = TopologyConfig {
        pki_dir: dir.path().join("pki"),
        data_dir: dir.path().join("data"),
        clock: ClockKind::Manual,
        ..TopologyConfig::default()
    }
    .with_free_ports();
    cfg.log.level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    cfg.sim.seed = 7;
    cfg.sim.today = Some(today);
    cfg.sim.individuals = 8_000;
    cfg.sim.organizations = 1_500;
    cfg.sim.renames_per_day = 0;
    cfg.sim.name_changes_per_day = 0;
    cfg.sdu.concurrency = 8;
    cfg.sdu.max_attempts = 4;
    cfg.sdu.retry_base_ms = 10;
    cfg.sdu.retry_max_ms = 100;
    cfg.sdu.timer_poll_ms = 20;
    cfg.sdu.call_timeout_ms = 20_000;
    tweak(&mut cfg, dir.path());
    let topo = Topology::start(cfg, Shutdown::new()).await.expect("the topology starts");
    let t = Tester::connect(topo.pki.dir(), topo.nodes.iter().map(|n| (n.system.clone(), n.addr)));
    Env { topo, t, _dir: dir }
}

impl Env {
    async fn stop(self) {
        self.topo.stop().await.expect("the topology stops cleanly");
    }
}

fn kind_steps(c: &pb::Case, kind: CaseStepKind) -> Vec<&pb::CaseStep> {
    c.steps.iter().filter(|s| s.kind() == kind).collect()
}

/// Whether e-license's holder name is the name SDU recorded as new.
fn same_name(h: &Option<shep_proto::elicense::HolderName>, s: &Option<pb::SubjectName>) -> bool {
    use pb::subject_name::Name as S;
    use shep_proto::elicense::holder_name::Name as H;
    match (h.as_ref().and_then(|h| h.name.as_ref()), s.as_ref().and_then(|s| s.name.as_ref())) {
        (Some(H::Organization(a)), Some(S::Organization(b))) => a == b,
        (Some(H::Person(a)), Some(S::Person(b))) => a == b,
        _ => false,
    }
}

fn deadline(c: &pb::Case) -> String {
    c.answer_deadline.as_ref().map(|d| almaty_text(from_pb_ts(Some(d)))).unwrap_or_else(|| "none".into())
}

/// Every scripted outcome of order 000 in one run, organizations and individuals; the
/// permits of a subject with several are all re-issued after one SMS; an answer that is
/// neither 1 nor 2 counts as none; the waits skip a weekend and a carried-over holiday.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_of_order_000_through_the_bus() {
    // Thursday 5 March 2026, 09:00: the clock of the SMS. The run is for the 4th.
    let env = start(date(2026, 3, 5), |_, _| {}).await;
    let t = &env.t;
    let day = date(2026, 3, 4);
    let mut pick = Picker::new(&env.topo.sim);

    let several = pick.org(&SEZ, 2);
    let mut subjects: Vec<(Subject, Behaviour)> = vec![(several.clone(), Behaviour::Answers("1"))];
    for b in &Behaviour::EVERY_OUTCOME[1..] {
        subjects.push((pick.org(&SEZ, 1), *b));
    }
    let person = pick.person(&SEZ, 1);
    subjects.push((person.clone(), Behaviour::Answers("1")));
    // Answers "3" to the first SMS (no answer), then "1" to the repeat.
    let changed_mind = pick.org(&SEZ, 1);
    subjects.push((changed_mind.clone(), Behaviour::Answers("3")));
    for (n, (s, b)) in subjects.iter().enumerate() {
        t.prepare(s, *b, n, day).await;
    }
    // A rename without permits of the pilot: a diff, no case.
    let bare = pick.org_without(&SEZ);
    t.rename(bare, shep_proto::shep::LocalizedText { ru: "ТОО «Без разрешений»".into(), kk: "«Рұқсатсыз» ЖШС".into() }, day)
        .await;

    let run = t.start_run("sez-000", day).await;
    t.settle(&[&run]).await;
    let case_of = |h: Holder| t.case_of(&run, h);
    let silent = case_of(subjects[2].0.holder).await;
    // Sent Thursday 5 March 09:00. Working days after it: Fri 6 (1); Sat 7, Sun 8 weekend;
    // 8 March (a holiday) fell on Sunday and is carried over to Mon 9; Tue 10 (2), Wed 11 (3).
    assert_eq!(silent.sms_attempts, 1);
    assert_eq!(deadline(&silent), "2026-03-11T09:00:00", "first wait of {}", silent.case_id);

    // The answers come an hour after the SMS.
    t.set_clock(almaty("2026-03-05T12:00")).await;
    let reissued = t.wait_case(&t.case_of(&run, several.holder).await.case_id, "re-issued", |c| c.outcome() != Outcome::Open).await;
    assert_eq!(reissued.outcome(), Outcome::Reissued, "{reissued:?}");
    let cm = t
        .wait_case(&t.case_of(&run, changed_mind.holder).await.case_id, "answered", |c| {
            !kind_steps(c, CaseStepKind::AnswerReceived).is_empty()
        })
        .await;
    assert_eq!(cm.outcome(), Outcome::Open, "\"3\" is no answer: {cm:?}");
    assert!(kind_steps(&cm, CaseStepKind::AnswerReceived)[0].detail.contains("treated as no answer"), "{cm:?}");
    t.answer(changed_mind.recipient, Some(("1", 600))).await;
    t.settle(&[&run]).await;

    // One second before the deadline nothing is sent again; at the deadline the SMS is.
    t.set_clock(almaty("2026-03-11T08:59:59")).await;
    t.settle(&[&run]).await;
    assert_eq!(case_of(subjects[2].0.holder).await.sms_attempts, 1);
    t.set_clock(almaty("2026-03-11T09:00")).await;
    t.settle(&[&run]).await;
    let silent = case_of(subjects[2].0.holder).await;
    assert_eq!(silent.sms_attempts, 2, "{silent:?}");
    // Re-sent Wednesday 11 March 09:00: Thu 12 (1), Fri 13 (2), Mon 16 (3).
    assert_eq!(deadline(&silent), "2026-03-16T09:00:00");
    t.set_clock(almaty("2026-03-11T12:00")).await;
    t.settle(&[&run]).await;
    t.set_clock(almaty("2026-03-16T08:59:59")).await;
    t.settle(&[&run]).await;
    assert_eq!(case_of(subjects[2].0.holder).await.outcome(), Outcome::Open);
    t.set_clock(almaty("2026-03-16T09:00")).await;
    let cases = t.wait_closed(&run).await;
    assert_eq!(cases.len(), subjects.len(), "one case per subject with permits: {cases:?}");

    // Every outcome as scripted.
    for (s, b) in &subjects {
        let c = t.case_of(&run, s.holder).await;
        let want = if s.holder == changed_mind.holder { Outcome::Reissued } else { b.expected() };
        assert_eq!(c.outcome(), want, "{b:?}: {c:?}");
        assert_eq!(c.recipient_iin, s.recipient.to_string());
        assert_eq!(c.permit_numbers, s.permits, "the case offers the holder's active permits of the pilot");
    }
    let silent = case_of(subjects[2].0.holder).await;
    assert_eq!(almaty_text(from_pb_ts(silent.closed_at.as_ref())), "2026-03-16T09:00:00");
    assert_eq!(kind_steps(&silent, CaseStepKind::AnswerTimeout).len(), 2, "{silent:?}");
    let other = case_of(subjects[3].0.holder).await;
    assert_eq!(other.sms_attempts, 2);
    assert!(kind_steps(&other, CaseStepKind::AnswerReceived).iter().all(|s| s.detail.contains("treated as no answer")));
    assert_eq!(case_of(changed_mind.holder).await.sms_attempts, 2);

    // PEP's outbox: the Russian text of the order, one SMS per case and attempt, the repeat
    // at the deadline.
    let outbox = t.outbox().await;
    assert_nothing_duplicated(t, &cases, &outbox).await;
    for sms in &outbox {
        assert_eq!(sms.text, SMS_000, "{}", sms.case_id);
        assert_eq!(sms.language(), Language::Ru);
    }
    let sent: Vec<String> = sms_by_case(&outbox)[&silent.case_id]
        .iter()
        .map(|s| format!("{} {}", s.attempt, almaty_text(from_pb_ts(s.sent_at.as_ref()))))
        .collect();
    assert_eq!(sent, ["1 2026-03-05T09:00:00", "2 2026-03-11T09:00:00"]);
    assert_eq!(sms_by_case(&outbox)[&reissued.case_id].len(), 1, "one SMS for a holder of several permits");

    // e-license: every permit of each re-issued case replaced once, the new ones under the
    // new name, each announced in the holder's cabinet; the refused holder's untouched.
    for s in [&several, &person] {
        let c = t.case_of(&run, s.holder).await;
        assert_eq!(c.new_permit_numbers.len(), s.permits.len());
        let notes = t.cabinet(s.holder).await;
        for (old, new) in s.permits.iter().zip(&c.new_permit_numbers) {
            let o = t.permit(old).await;
            assert_eq!((o.status(), o.replaced_by.as_str()), (PermitStatus::Reissued, new.as_str()));
            let n = t.permit(new).await;
            assert_eq!((n.status(), n.replaces.as_str()), (PermitStatus::Active, old.as_str()));
            assert!(same_name(&n.holder_name, &c.new_name), "{n:?} is not under the new name {:?}", c.new_name);
            assert_eq!(notes.iter().filter(|x| &x.permit_number == new).count(), 1, "cabinet note for {new}");
        }
        assert_eq!(notes.len(), s.permits.len());
    }
    let refused = &subjects[1].0;
    for p in &refused.permits {
        assert_eq!(t.permit(p).await.status(), PermitStatus::Active);
    }
    assert!(t.cabinet(refused.holder).await.is_empty());

    // The funnel.
    let r = t.report("sez-000", day).await;
    let k = r.counts.expect("counts");
    assert_eq!((k.diffs, k.with_permits, k.recipients), (subjects.len() as u64 + 1, subjects.len() as u64, subjects.len() as u64));
    assert_eq!(
        (k.excluded_dead_or_missing, k.excluded_abroad, k.excluded_incapable, k.excluded_imprisoned),
        (1, 1, 1, 1)
    );
    assert_eq!((k.no_consent, k.no_phone, k.sms_sent, k.sms_resent), (1, 1, 6, 3));
    assert_eq!((k.answered_yes, k.answered_no, k.no_answer, k.reissued, k.failed, k.open), (3, 1, 2, 3, 0, 0));
    env.stop().await;
}
