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
    let topo = start_topology(cfg).await;
    let t = Tester::connect(topo.pki.dir(), topo.nodes.iter().map(|n| (n.system.clone(), n.addr)));
    Env { topo, t, _dir: dir }
}

/// Starts a topology. Free ports are chosen before the nodes bind them, so topologies
/// starting side by side (the tests run in parallel) could pick the same one: starts are
/// taken one at a time, and a start that still loses a port to another process is tried
/// again on new ports.
async fn start_topology(mut cfg: TopologyConfig) -> Topology {
    static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = STARTING.lock().await;
    let mut tries = 0;
    loop {
        let shutdown = Shutdown::new();
        match Topology::start(cfg.clone(), shutdown.clone()).await {
            Ok(t) => return t,
            Err(e) if tries < 3 && format!("{e:#}").contains("Address already in use") => {
                shutdown.trigger();
                tries += 1;
                // A fresh state directory: the nodes of the failed start may still hold theirs.
                cfg.data_dir.set_file_name(format!("data-{tries}"));
            }
            Err(e) => panic!("the topology does not start: {e:#}"),
        }
    }
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
    t.rename(
        bare,
        shep_proto::shep::LocalizedText {
            ru: "ТОО «Без разрешений»".into(), kk: "«Рұқсатсыз» ЖШС".into()
        },
        day,
    )
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
    let reissued = t
        .wait_case(&t.case_of(&run, several.holder).await.case_id, "re-issued", |c| c.outcome() != Outcome::Open)
        .await;
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
    let answers = kind_steps(&other, CaseStepKind::AnswerReceived);
    assert_eq!(answers.len(), 2, "\"да\" to each SMS: {other:?}");
    assert!(answers.iter().all(|s| s.detail.contains("treated as no answer")), "{answers:?}");
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
    assert_eq!(
        (k.diffs, k.with_permits, k.recipients),
        (subjects.len() as u64 + 1, subjects.len() as u64, subjects.len() as u64)
    );
    assert_eq!(
        (k.excluded_dead_or_missing, k.excluded_abroad, k.excluded_incapable, k.excluded_imprisoned),
        (1, 1, 1, 1)
    );
    assert_eq!((k.no_consent, k.no_phone, k.sms_sent, k.sms_resent), (1, 1, 6, 3));
    assert_eq!((k.answered_yes, k.answered_no, k.no_answer, k.reissued, k.failed, k.open), (3, 1, 2, 3, 0, 0));
    env.stop().await;
}

/// The shipped 2026 table with one transfer added, as an operator adds a government decree
/// (`[sdu] calendar_file`, no rebuild). No decree of 2026 moves a day yet, and the one of
/// 2025 (3 ↔ 5 January) falls before any working-day pilot is in force, so the test decrees
/// one: Friday 10 April 2026 off, Saturday 4 April worked.
fn calendar_with_a_transfer() -> String {
    let shipped = include_str!("../../nodes/sdu/calendar/2026.toml");
    let with = shipped.replace(
        "transfers = []",
        "transfers = [\n    { day_off = \"2026-04-10\", working_day = \"2026-04-04\", basis = \"a decree of the test\" },\n]",
    );
    assert_ne!(with, shipped, "the shipped 2026 table has no `transfers = []` line any more");
    with
}

/// Waits that span Nauryz (working days for 000, plain days for 004), the Kazakh SMS of 004,
/// a government transfer of a working day, and a step that keeps failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nauryz_a_transfer_the_kazakh_sms_and_a_failing_step() {
    // Friday 20 March 2026, 09:00: the eve of Nauryz.
    let env = start(date(2026, 3, 20), |cfg, dir| {
        let file = dir.join("calendar-2026.toml");
        std::fs::write(&file, calendar_with_a_transfer()).expect("write the operator's calendar");
        cfg.sdu.calendar_file = Some(file);
    })
    .await;
    let t = &env.t;
    let day = date(2026, 3, 19);
    let mut pick = Picker::new(&env.topo.sim);
    let working = pick.org(&SEZ, 1);
    let plain = pick.org(&TRUSTED_SW, 1);
    t.prepare(&working, Behaviour::Silent, 1, day).await;
    t.prepare(&plain, Behaviour::Silent, 2, day).await;
    let run_000 = t.start_run("sez-000", day).await;
    let run_004 = t.start_run("trusted-sw-004", day).await;
    let runs = [run_000.as_str(), run_004.as_str()];
    t.settle(&runs).await;

    // Sent Friday 20 March 09:00.
    // 000, working days: Sat 21 and Sun 22 (weekend and Nauryz), Mon 23 (Nauryz); Nauryz of
    // the 21st and 22nd fell on a weekend and is carried over to Tue 24 and Wed 25; then
    // Thu 26 (1), Fri 27 (2), Mon 30 (3).
    // 004, plain days: Sat 21 (1), Sun 22 (2), Mon 23 (3).
    let w = t.case_of(&run_000, working.holder).await;
    let p = t.case_of(&run_004, plain.holder).await;
    assert_eq!(deadline(&w), "2026-03-30T09:00:00");
    assert_eq!(deadline(&p), "2026-03-23T09:00:00");

    // The SMS of 004 is the Kazakh text of its appendix; that of 000 the Russian one.
    let outbox = t.outbox().await;
    let by_case = sms_by_case(&outbox);
    let (sms_p, sms_w) = (by_case[&p.case_id][0], by_case[&w.case_id][0]);
    assert_eq!((sms_p.text.as_str(), sms_p.language()), (SMS_004, Language::Kk));
    assert_eq!((sms_w.text.as_str(), sms_w.language()), (SMS_000, Language::Ru));

    t.set_clock(almaty("2026-03-23T08:59:59")).await;
    t.settle(&runs).await;
    assert_eq!(t.case(&p.case_id).await.sms_attempts, 1);
    t.set_clock(almaty("2026-03-23T09:00")).await;
    t.settle(&runs).await;
    let p = t.case(&p.case_id).await;
    assert_eq!(p.sms_attempts, 2);
    // Re-sent Monday 23 March 09:00, plain days: Tue 24 (1), Wed 25 (2), Thu 26 (3).
    assert_eq!(deadline(&p), "2026-03-26T09:00:00");
    assert_eq!(t.case(&w.case_id).await.sms_attempts, 1, "000 still waits out Nauryz");
    t.set_clock(almaty("2026-03-26T09:00")).await;
    let p = t.wait_case(&p.case_id, "closed", |c| c.outcome() != Outcome::Open).await;
    assert_eq!(p.outcome(), Outcome::NoAnswer);
    assert_eq!(almaty_text(from_pb_ts(p.closed_at.as_ref())), "2026-03-26T09:00:00");
    t.settle(&runs).await;
    t.set_clock(almaty("2026-03-30T08:59:59")).await;
    t.settle(&runs).await;
    assert_eq!(t.case(&w.case_id).await.sms_attempts, 1);
    t.set_clock(almaty("2026-03-30T09:00")).await;
    t.settle(&runs).await;
    let w = t.case(&w.case_id).await;
    assert_eq!(w.sms_attempts, 2);
    // Re-sent Monday 30 March 09:00: Tue 31 (1), Wed 1 April (2), Thu 2 April (3).
    assert_eq!(deadline(&w), "2026-04-02T09:00:00");
    t.set_clock(almaty("2026-04-02T09:00")).await;
    let w = t.wait_case(&w.case_id, "closed", |c| c.outcome() != Outcome::Open).await;
    assert_eq!(w.outcome(), Outcome::NoAnswer);

    // The transfer, and a step that keeps failing: e-license refuses every re-issue.
    let day = date(2026, 4, 2);
    let silent = pick.org(&SEZ, 1);
    let doomed = pick.org(&SEZ, 1);
    t.prepare(&silent, Behaviour::Silent, 3, day).await;
    t.prepare(&doomed, Behaviour::Answers("1"), 4, day).await;
    let down = FaultSpec { code: tonic::Code::Unavailable as i32, rate: 1.0, ..Default::default() };
    // Both forms: one by one, and the batches the SDU sends organizations' permits in.
    t.fault("e-license", "/kz.gov.elicense.v1.PermitRegistry/ReissuePermit", down).await;
    t.fault("e-license", "/kz.gov.elicense.v1.PermitRegistry/ReissueOrganizationPermits", down).await;
    t.set_clock(almaty("2026-04-03T10:00")).await;
    let run = t.start_run("sez-000", day).await;
    t.settle(&[&run]).await;
    let s = t.case_of(&run, silent.holder).await;
    // Sent Friday 3 April 10:00: Sat 4 worked by the decree (1), Sun 5 off, Mon 6 (2),
    // Tue 7 (3). Without the decree: Mon 6, Tue 7, Wed 8.
    assert_eq!(deadline(&s), "2026-04-07T10:00:00");

    // "1" an hour later; every try to re-issue fails; after the bounded retries, FAILED.
    t.set_clock(almaty("2026-04-03T12:00")).await;
    let d = t.case_of(&run, doomed.holder).await;
    let d = t.wait_case(&d.case_id, "closed", |c| c.outcome() != Outcome::Open).await;
    assert_eq!(d.outcome(), Outcome::Failed, "{d:?}");
    let failures = kind_steps(&d, CaseStepKind::CallFailed);
    assert_eq!(failures.len(), 4, "max_attempts tries, each recorded: {d:?}");
    assert!(failures.iter().all(|f| f.detail.contains("elicense.ReissuePermit")), "{failures:?}");
    assert!(failures.last().is_some_and(|f| f.detail.contains("gave up after 4 tries")), "{failures:?}");
    for p in &doomed.permits {
        let permit = t.permit(p).await;
        assert_eq!((permit.status(), permit.replaced_by.as_str()), (PermitStatus::Active, ""), "nothing re-issued");
    }
    assert!(t.cabinet(doomed.holder).await.is_empty());
    t.fault("e-license", "/kz.gov.elicense.v1.PermitRegistry/ReissuePermit", FaultSpec::default()).await;
    t.fault("e-license", "/kz.gov.elicense.v1.PermitRegistry/ReissueOrganizationPermits", FaultSpec::default()).await;

    t.set_clock(almaty("2026-04-07T10:00")).await;
    t.settle(&[&run]).await;
    let s = t.case(&s.case_id).await;
    assert_eq!(s.sms_attempts, 2);
    // Re-sent Tuesday 7 April 10:00: Wed 8 (1), Thu 9 (2), Fri 10 off by the decree, Sat 11
    // and Sun 12 weekend, Mon 13 (3). Without the decree: Fri 10.
    assert_eq!(deadline(&s), "2026-04-13T10:00:00");
    t.set_clock(almaty("2026-04-13T10:00")).await;
    let s = t.wait_case(&s.case_id, "closed", |c| c.outcome() != Outcome::Open).await;
    assert_eq!(s.outcome(), Outcome::NoAnswer);
    let k = t.report("sez-000", day).await.counts.expect("counts");
    assert_eq!((k.failed, k.no_answer, k.reissued, k.open), (1, 1, 0, 0));
    env.stop().await;
}

/// Plain days for order 001 across a weekend and Independence Day, and the period of force
/// of each pilot: a date outside it is refused, and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_001_counts_plain_days_and_pilots_keep_their_periods_of_force() {
    // Friday 12 December 2025, 09:00.
    let env = start(date(2025, 12, 12), |_, _| {}).await;
    let t = &env.t;
    let day = date(2025, 12, 11);
    let mut pick = Picker::new(&env.topo.sim);
    let silent = pick.org(&ECO, 1);
    let agrees = pick.org(&ECO, 1);
    t.prepare(&silent, Behaviour::Silent, 1, day).await;
    t.prepare(&agrees, Behaviour::Answers("1"), 2, day).await;
    let run = t.start_run("eco-001", day).await;
    t.settle(&[&run]).await;
    let s = t.case_of(&run, silent.holder).await;
    // Sent Friday 12 December 09:00, plain days: Sat 13 (1), Sun 14 (2), Mon 15 (3). (Working
    // days would give Thu 18: Mon 15, Tue 16 Independence Day, Wed 17, Thu 18.)
    assert_eq!(deadline(&s), "2025-12-15T09:00:00");
    t.set_clock(almaty("2025-12-12T12:00")).await;
    let a = t.case_of(&run, agrees.holder).await;
    let a = t.wait_case(&a.case_id, "closed", |c| c.outcome() != Outcome::Open).await;
    assert_eq!(a.outcome(), Outcome::Reissued, "{a:?}");
    t.set_clock(almaty("2025-12-15T09:00")).await;
    t.settle(&[&run]).await;
    let s = t.case(&s.case_id).await;
    assert_eq!(s.sms_attempts, 2);
    // Re-sent Monday 15 December 09:00: Tue 16 (1, a holiday counts as a plain day), Wed 17
    // (2), Thu 18 (3). (Working days would give Fri 19.)
    assert_eq!(deadline(&s), "2025-12-18T09:00:00");
    t.set_clock(almaty("2025-12-18T09:00")).await;
    let s = t.wait_case(&s.case_id, "closed", |c| c.outcome() != Outcome::Open).await;
    assert_eq!(s.outcome(), Outcome::NoAnswer);
    assert_nothing_duplicated(t, &t.wait_closed(&run).await, &t.outbox().await).await;

    // Periods of force (nodes/sdu/pilots.toml derives them from the orders): the first and
    // last day are run, the days around them refused with FAILED_PRECONDITION and
    // PILOT_OUT_OF_FORCE, naming the period.
    let periods = [
        ("sez-000", date(2026, 1, 30), date(2027, 1, 30)),
        ("eco-001", date(2025, 1, 23), date(2025, 12, 24)),
        ("trusted-sw-004", date(2025, 5, 9), date(2026, 5, 8)),
    ];
    for (pilot, from, to) in periods {
        for outside in [from.yesterday().unwrap(), to.tomorrow().unwrap()] {
            let e = t.run_daily(pilot, outside).await.expect_err("a date out of force is refused");
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{pilot} {outside}: {e:?}");
            assert_eq!(e.get_details_error_info().map(|i| i.reason).as_deref(), Some("PILOT_OUT_OF_FORCE"));
            let m = e.message();
            assert!(m.contains(&format!("in force from {from} to {to}")) && m.contains(&outside.to_string()), "{m}");
        }
        for inside in [from, to] {
            let r = t.run_daily(pilot, inside).await.unwrap_or_else(|e| panic!("{pilot} {inside}: {e:?}"));
            assert!(!r.existing);
        }
    }
    env.stop().await;
}

/// With 5% UNAVAILABLE and added latency on every registry, the run of a busy day ends with
/// the same outcome for every subject as the same run without faults (two topologies of the
/// same seed, driven in step), and nothing is sent or re-issued twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_every_registry_change_no_outcome_and_duplicate_nothing() {
    let today = date(2026, 3, 5);
    let day = date(2026, 3, 4);
    let busy = |cfg: &mut TopologyConfig, _: &std::path::Path| {
        cfg.sim.renames_per_day = 25;
        cfg.sim.name_changes_per_day = 60;
        // Enough tries that 5% failures at each of the hops of a call never exhaust them.
        cfg.sdu.max_attempts = 10;
    };
    let (calm, faulty) = tokio::join!(start(today, busy), start(today, busy));
    let fault = FaultSpec { code: tonic::Code::Unavailable as i32, rate: 0.05, latency_ms: 15, jitter_ms: 15 };
    faulty.t.fault_everywhere(fault).await;

    // The same scripted subjects in both (the country is the same), on top of the generated diff.
    let mut scripted = vec![];
    for env in [&calm, &faulty] {
        let mut pick = Picker::new(&env.topo.sim);
        pick.avoid_history_of(day);
        let mut subjects: Vec<(Subject, Behaviour)> = vec![(pick.org(&SEZ, 2), Behaviour::Answers("1"))];
        for b in &Behaviour::EVERY_OUTCOME[1..] {
            subjects.push((pick.org(&SEZ, 1), *b));
        }
        subjects.push((pick.person(&SEZ, 1), Behaviour::Answers("1")));
        for (n, (s, b)) in subjects.iter().enumerate() {
            env.t.prepare(s, *b, n, day).await;
        }
        scripted.push(subjects);
    }
    let ids: Vec<_> = scripted[0].iter().map(|(s, _)| s.holder).collect();
    assert_eq!(ids, scripted[1].iter().map(|(s, _)| s.holder).collect::<Vec<_>>());
    let runs = [calm.t.start_run("sez-000", day).await, faulty.t.start_run("sez-000", day).await];
    let both = [(&calm.t, runs[0].as_str()), (&faulty.t, runs[1].as_str())];

    // In step: both settle before the clock moves, through the day of the SMS, the first
    // wait (deadline Wed 11 March 09:00, see the test of order 000), the repeat and the
    // second wait (Mon 16 March 09:00), then a day more.
    for at in [
        "2026-03-05T09:00",
        "2026-03-05T13:00",
        "2026-03-05T23:00",
        "2026-03-06T23:00",
        "2026-03-09T23:00",
        "2026-03-11T09:00",
        "2026-03-11T13:00",
        "2026-03-11T23:00",
        "2026-03-12T23:00",
        "2026-03-16T09:00",
        "2026-03-17T09:00",
    ] {
        for (t, run) in both {
            if t.now().await < almaty(at) {
                t.set_clock(almaty(at)).await;
            }
            t.settle(&[run]).await;
        }
    }
    let mut outcomes = vec![];
    for (t, run) in both {
        let cases = t.wait_closed(run).await;
        // The tester's own reads of PEP and e-license go to the registries directly.
        t.fault_everywhere(FaultSpec::default()).await;
        assert_nothing_duplicated(t, &cases, &t.outbox().await).await;
        outcomes.push(cases);
    }
    let by_holder = |cases: &[pb::Case]| -> HashMap<String, (Outcome, u32)> {
        cases.iter().map(|c| (format!("{}{}", c.subject_bin, c.subject_iin), (c.outcome(), c.sms_attempts))).collect()
    };
    let (mut a, mut b) = (by_holder(&outcomes[0]), by_holder(&outcomes[1]));
    // A recipient asked in two cases at once answers from one phone, and PEP credits the
    // answer to the SMS that went out last, an order faults may change: such cases are
    // compared only for being closed.
    let mut asked: HashMap<&str, Vec<String>> = HashMap::new();
    for c in outcomes[0].iter().filter(|c| !c.recipient_iin.is_empty()) {
        asked.entry(&c.recipient_iin).or_default().push(format!("{}{}", c.subject_bin, c.subject_iin));
    }
    for holders in asked.values().filter(|h| h.len() > 1) {
        for h in holders {
            a.remove(h);
            b.remove(h);
        }
    }
    assert!(a.len() > scripted[0].len(), "the generated diff adds cases: {a:?}");
    assert_eq!(a, b, "outcomes and SMS counts without faults (left) and with them (right)");
    for (s, want) in &scripted[1] {
        assert_eq!(b[&s.holder.id()].0, want.expected(), "{want:?} under faults");
    }
    let retried: usize = {
        let mut n = 0;
        for c in &outcomes[1] {
            n += kind_steps(&faulty.t.case(&c.case_id).await, CaseStepKind::CallFailed).len();
        }
        n
    };
    eprintln!("faulty run: {} cases, {retried} failed calls retried", outcomes[1].len());
    assert!(retried > 0, "the faults were injected: some calls failed and were retried");
    calm.stop().await;
    faulty.stop().await;
}

/// A KDP token that expires while a case uses it (e-license slow, the clock moved past the
/// token's hour) is asked for again, not taken for a refusal of consent: both permits of the
/// individual are re-issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_during_a_case_is_asked_for_again() {
    let env = start(date(2026, 3, 5), |_, _| {}).await;
    let t = &env.t;
    let day = date(2026, 3, 4);
    let person = Picker::new(&env.topo.sim).person(&SEZ, 2);
    t.prepare(&person, Behaviour::Answers("1"), 1, day).await;
    // Every re-issue takes 4 seconds; the first is under way when the clock jumps.
    let slow = FaultSpec { latency_ms: 4_000, ..Default::default() };
    t.fault("e-license", "/kz.gov.elicense.v1.PermitRegistry/ReissuePermit", slow).await;
    let run = t.start_run("sez-000", day).await;
    t.settle(&[&run]).await;
    let id = t.case_of(&run, person.holder).await.case_id;
    t.set_clock(almaty("2026-03-05T10:30")).await;
    // After the answer SDU asks KDP for the re-issue token (issued at 10:30, good for an
    // hour; the token of 09:00 has expired) and makes the re-issues with it, one at a time,
    // each taking 4 seconds. The clock jumps past the hour once that token exists, so the
    // bus sees it expired on a re-issue (the first or the second, whichever it checks after
    // the jump). KDP's own record tells when it was issued.
    let started = std::time::Instant::now();
    let half_past_ten = almaty("2026-03-05T10:30").as_second();
    let reissue_token = || {
        let st = env.topo.sim.state();
        st.consents.token_expiries(person.recipient, "sdu", "elicense.permits.reissue").iter().any(|e| *e > half_past_ten)
    };
    while !reissue_token() {
        assert!(started.elapsed() < shep_tests::scenario::PATIENCE, "SDU asked for no re-issue token");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    t.set_clock(almaty("2026-03-05T13:00")).await;
    let c = t.wait_case(&id, "closed", |c| c.outcome() != Outcome::Open).await;
    assert_eq!(c.outcome(), Outcome::Reissued, "{c:?}");
    let retried = kind_steps(&c, CaseStepKind::CallFailed);
    assert!(retried.iter().any(|s| s.detail.contains("CONSENT_EXPIRED")), "the expired token was refused: {c:?}");
    assert_eq!(c.new_permit_numbers.len(), person.permits.len());
    t.fault("e-license", "/kz.gov.elicense.v1.PermitRegistry/ReissuePermit", FaultSpec::default()).await;
    assert_nothing_duplicated(t, &t.cases(&run).await, &t.outbox().await).await;
    env.stop().await;
}
