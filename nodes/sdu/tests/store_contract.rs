//! The behaviour every `Store` backend promises, run on both: SQLite (a file in a temporary
//! directory) and PostgreSQL (a fresh database on the test server, see `pgdb`). Each test
//! below is one function of a backend; `contract!` makes a `#[test]` of it per backend.
//! Then what only one backend has (URLs, connection errors), and a scenario whose funnel,
//! cases and events must come out identical from both.

mod pgdb;

use jiff::Timestamp;
use jiff::civil::date;
use shep_domain::{Bin, Iin};
use shep_sdu::calendar::Calendar;
use shep_sdu::case::{
    self, Answer, Case, CaseId, Effect, Event, HistoryEntry, Opening, Outcome, PermitItem,
    PersonFacts, RetryPolicy, RunId, State, Subject, SubjectName, consent_scopes,
};
use shep_sdu::pilot::PilotCatalog;
use shep_sdu::store::{
    CaseCommit, CaseFilter, CommitResult, DiffCommit, DiffPhase, EventRecord, EventWhat,
    FunnelCounts, PgStore, RunState, SqliteStore, Store, StoreError,
};

/// A database of one backend, for one test.
trait Backend {
    /// Opens it for a runner.
    fn open(&self) -> Result<Box<dyn Store>, StoreError>;
    /// Runs SQL on it beside the store (to damage it).
    fn exec(&self, sql: &str);
}

struct Sqlite {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Sqlite {
    fn new() -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdu.db");
        Sqlite { _dir: dir, path }
    }
}

impl Backend for Sqlite {
    fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(SqliteStore::open(&self.path)?))
    }

    fn exec(&self, sql: &str) {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }
}

struct Postgres(pgdb::TestDb);

impl Postgres {
    fn new() -> Postgres {
        Postgres(pgdb::TestDb::new())
    }
}

impl Backend for Postgres {
    fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(PgStore::open(&self.0.url)?))
    }

    fn exec(&self, sql: &str) {
        self.0.exec(sql);
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::Sqlite::new());
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(&super::Postgres::new());
            })*
        }
    };
}

contract!(
    runs_are_created_once_per_pilot_and_date,
    a_case_round_trips_and_commits_are_compare_and_swap,
    a_batch_of_commits_applies_in_order_up_to_the_first_conflict,
    a_batch_of_diffs_is_recorded_as_one_by_one,
    concurrent_commits_each_get_their_own_result,
    listing_pages_by_case_id_and_filters,
    one_runner_per_database,
    a_newer_schema_is_refused,
    damaged_rows_are_errors_not_panics,
);

fn bin(n: u32) -> Bin {
    (n * 20..)
        .find_map(|s| Bin::from_parts(2015, 3, 4, 0, s))
        .unwrap()
}

fn iin(n: u16) -> Iin {
    (n * 20..)
        .find_map(|s| Iin::from_parts(1980, 5, 5, shep_domain::Sex::Female, s))
        .unwrap()
}

fn now() -> Timestamp {
    "2026-02-03T05:00:00Z".parse().unwrap()
}

fn opening(run: &RunId, subject: Subject, permits: usize) -> Opening {
    Opening {
        run_id: run.clone(),
        pilot_id: "sez-000".into(),
        date: date(2026, 2, 3),
        subject,
        head: None,
        old_name: SubjectName::Organization {
            ru: "ТОО «Старое»".into(),
            kk: "«Ескі» ЖШС".into(),
        },
        new_name: SubjectName::Organization {
            ru: "ТОО «Новое»".into(),
            kk: "«Жаңа» ЖШС".into(),
        },
        permits: (0..permits)
            .map(|i| PermitItem {
                number: format!("P-{i}"),
                service_code: "SEZ-OBJ".into(),
                new_number: None,
            })
            .collect(),
    }
}

fn history_of(fx: &[Effect]) -> Vec<HistoryEntry> {
    fx.iter()
        .filter_map(|e| {
            if let Effect::History(h) = e {
                Some(h.clone())
            } else {
                None
            }
        })
        .collect()
}

/// Steps a stored case through `event` and commits it.
fn apply(s: &dyn Store, id: &CaseId, ev: Event, cursor: Option<(&str, &str)>) -> CommitResult {
    let pilots = PilotCatalog::shipped().unwrap();
    let cal = Calendar::shipped().unwrap();
    let v = s.case(id).unwrap().unwrap();
    let (next, fx) = case::step(
        &v.value,
        ev,
        now(),
        pilots.get("sez-000").unwrap(),
        &cal,
        &RetryPolicy::default(),
    );
    let hist = history_of(&fx);
    let holder = fx.iter().find_map(|e| {
        if let Effect::SaveHolder(h) = e {
            Some(h.clone())
        } else {
            None
        }
    });
    s.commit_case(CaseCommit {
        case: &next,
        expected_version: v.version,
        history: &hist,
        holder: holder.as_ref(),
        cursor,
        at: now(),
    })
    .unwrap()
}

fn a_batch_of_commits_applies_in_order_up_to_the_first_conflict(b: &dyn Backend) {
    let store = b.open().unwrap();
    let s = store.as_ref();
    let (run, ..) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    let mut cases = vec![];
    for n in 1..=4 {
        let (case, fx) = case::open(opening(&run.id, Subject::Organization(bin(n)), 1), now());
        let hist = history_of(&fx);
        s.commit_diff(DiffCommit {
            run: &run.id,
            phase: DiffPhase::GbdUl,
            counted: true,
            cursor: "d",
            opened: Some((&case, &hist)),
            at: now(),
        })
        .unwrap();
        cases.push(case);
    }
    let resolved: Vec<(Case, Vec<HistoryEntry>)> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (next, fx) = case::step(
                c,
                Event::RecipientResolved { iin: iin(i as u16 + 1) },
                now(),
                PilotCatalog::shipped().unwrap().get("sez-000").unwrap(),
                &Calendar::shipped().unwrap(),
                &RetryPolicy::default(),
            );
            (next, history_of(&fx))
        })
        .collect();
    let cursors = ["a1", "a2", "a3", "a4"];
    let commit = |i: usize, version: u64| CaseCommit {
        case: &resolved[i].0,
        expected_version: version,
        history: &resolved[i].1,
        holder: None,
        cursor: Some(("answers", cursors[i])),
        at: now(),
    };
    // The third was read at a version it no longer has: the first two are committed, the
    // third conflicts, the fourth is not tried.
    let r = s
        .commit_cases(&[commit(0, 1), commit(1, 1), commit(2, 7), commit(3, 1)])
        .unwrap();
    assert_eq!(r.len(), 3);
    assert!(matches!(r[0], CommitResult::Committed(ref e) if !e.is_empty()));
    assert!(matches!(r[1], CommitResult::Committed(_)));
    assert_eq!(r[2], CommitResult::Conflict);
    assert_eq!(s.cursor("answers").unwrap().as_deref(), Some("a2"));
    let stored = |i: usize| s.case(&cases[i].id).unwrap().unwrap();
    assert_eq!((stored(0).value, stored(0).version), (resolved[0].0.clone(), 2));
    assert_eq!((stored(1).value, stored(1).version), (resolved[1].0.clone(), 2));
    assert_eq!((stored(2).value, stored(2).version), (cases[2].clone(), 1));
    assert_eq!((stored(3).value, stored(3).version), (cases[3].clone(), 1));
    assert_eq!(s.history(&cases[1].id).unwrap().len(), 1 + resolved[1].1.len());
    // The rest again, at the right versions: all committed.
    let r = s.commit_cases(&[commit(2, 1), commit(3, 1)]).unwrap();
    assert!(r.iter().all(|x| matches!(x, CommitResult::Committed(_))));
    assert_eq!(s.cursor("answers").unwrap().as_deref(), Some("a4"));
    assert_eq!(stored(3).value, resolved[3].0);
}

fn a_batch_of_diffs_is_recorded_as_one_by_one(b: &dyn Backend) {
    let store = b.open().unwrap();
    let s = store.as_ref();
    let (run, ..) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    let opened: Vec<(Case, Vec<HistoryEntry>)> = (1..=2)
        .map(|n| {
            let (case, fx) = case::open(opening(&run.id, Subject::Organization(bin(n)), 1), now());
            let hist = history_of(&fx);
            (case, hist)
        })
        .collect();
    let diff = |cursor: &'static str, counted: bool, o: Option<usize>| DiffCommit {
        run: &run.id,
        phase: DiffPhase::GbdUl,
        counted,
        cursor,
        opened: o.map(|i| (&opened[i].0, opened[i].1.as_slice())),
        at: now(),
    };
    // A case, a diff without permits, a skipped entry, a second case, the first one again.
    let r = s
        .commit_diffs(&[
            diff("c1", true, Some(0)),
            diff("c2", true, None),
            diff("c3", false, None),
            diff("c4", true, Some(1)),
            diff("c5", true, Some(0)),
        ])
        .unwrap();
    assert_eq!(
        r.iter().map(|x| x.opened).collect::<Vec<_>>(),
        vec![true, false, false, true, false]
    );
    assert!(!r[0].events.is_empty() && !r[3].events.is_empty());
    assert_eq!(
        s.cursor(&DiffPhase::GbdUl.cursor_name(&run.id)).unwrap().as_deref(),
        Some("c5")
    );
    let rec = s.run(&run.id).unwrap().unwrap();
    assert_eq!(rec.diffs, 4, "counted diffs");
    assert_eq!(s.case(&opened[0].0.id).unwrap().unwrap().value, opened[0].0);
    assert_eq!(s.case(&opened[1].0.id).unwrap().unwrap().value, opened[1].0);
    assert_eq!(s.funnel(&run.id).unwrap().with_permits, 2);
}

fn runs_are_created_once_per_pilot_and_date(b: &dyn Backend) {
    let store = b.open().unwrap();
    let s = store.as_ref();
    let (r, created, ev) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    assert!(created);
    assert_eq!(r.id.0, "sez-000:2026-02-03");
    assert_eq!((r.state, r.phase), (RunState::Running, DiffPhase::GbdUl));
    assert_eq!(ev.len(), 1);
    let (r2, created, _) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    assert!(!created);
    assert_eq!(r2, r);
    assert_eq!(s.runs_collecting().unwrap(), vec![r.clone()]);
    s.set_phase(&r.id, DiffPhase::Done, now()).unwrap();
    assert_eq!(
        s.run(&r.id).unwrap().unwrap().state,
        RunState::Done,
        "no case, diff read: done"
    );
    assert!(s.runs_collecting().unwrap().is_empty());
}

fn a_case_round_trips_and_commits_are_compare_and_swap(b: &dyn Backend) {
    let store = b.open().unwrap();
    let s = store.as_ref();
    let (run, ..) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    let (case, fx) = case::open(opening(&run.id, Subject::Organization(bin(1)), 2), now());
    let hist = history_of(&fx);
    let r = s
        .commit_diff(DiffCommit {
            run: &run.id,
            phase: DiffPhase::GbdUl,
            counted: true,
            cursor: "c1",
            opened: Some((&case, &hist)),
            at: now(),
        })
        .unwrap();
    assert!(r.opened);
    assert_eq!(r.events.len(), 1);
    // The same subject again: counted as a diff, no second case.
    let r = s
        .commit_diff(DiffCommit {
            run: &run.id,
            phase: DiffPhase::GbdUl,
            counted: true,
            cursor: "c2",
            opened: Some((&case, &hist)),
            at: now(),
        })
        .unwrap();
    assert!(!r.opened);
    s.commit_diff(DiffCommit {
        run: &run.id,
        phase: DiffPhase::GbdUl,
        counted: true,
        cursor: "c3",
        opened: None,
        at: now(),
    })
    .unwrap();
    assert_eq!(
        s.cursor(&DiffPhase::GbdUl.cursor_name(&run.id))
            .unwrap()
            .as_deref(),
        Some("c3")
    );

    let v = s.case(&case.id).unwrap().unwrap();
    assert_eq!(v.value, case);
    assert_eq!(v.version, 1);
    assert_eq!(s.actionable_cases(None, 10).unwrap(), vec![case.id.clone()]);

    assert!(matches!(
        apply(s, &case.id, Event::RecipientResolved { iin: iin(1) }, None),
        CommitResult::Committed(_)
    ));
    // A commit from a stale read conflicts and writes nothing.
    let stale = CaseCommit {
        case: &case,
        expected_version: 1,
        history: &[],
        holder: None,
        cursor: Some(("x", "y")),
        at: now(),
    };
    assert_eq!(s.commit_case(stale).unwrap(), CommitResult::Conflict);
    assert_eq!(s.cursor("x").unwrap(), None);

    apply(
        s,
        &case.id,
        Event::ConsentObtained {
            scopes: consent_scopes(shep_sdu::pilot::SubjectKind::Organization),
        },
        None,
    );
    apply(
        s,
        &case.id,
        Event::PersonChecked(PersonFacts::default()),
        None,
    );
    apply(
        s,
        &case.id,
        Event::Notified {
            attempt: 1,
            sms_id: "sms-1".into(),
            sent_at: now(),
        },
        None,
    );
    let v = s.case(&case.id).unwrap().unwrap();
    let State::AwaitAnswer {
        attempt: 1,
        deadline,
    } = v.value.state
    else {
        panic!("{:?}", v.value.state)
    };
    assert!(s.actionable_cases(None, 10).unwrap().is_empty());
    assert!(s.due_timers(now(), 10).unwrap().is_empty());
    assert_eq!(
        s.due_timers(deadline, 10).unwrap(),
        vec![(case.id.clone(), 1)]
    );
    let r = s.run(&run.id).unwrap().unwrap();
    assert_eq!((r.active, r.waiting, r.closed, r.diffs), (0, 1, 0, 3));

    // The answer and the PEP cursor land together.
    apply(
        s,
        &case.id,
        Event::Answer {
            attempt: 1,
            sms_id: "s".into(),
            text: "1".into(),
            received_at: now(),
        },
        Some(("pep", "a1")),
    );
    assert_eq!(s.cursor("pep").unwrap().as_deref(), Some("a1"));
    apply(
        s,
        &case.id,
        Event::Reissued {
            index: 0,
            new_number: "N-0".into(),
        },
        None,
    );
    apply(
        s,
        &case.id,
        Event::Reissued {
            index: 1,
            new_number: "N-1".into(),
        },
        None,
    );
    let v = s.case(&case.id).unwrap().unwrap();
    assert_eq!(v.value.state, State::Closed(Outcome::Reissued));
    assert_eq!(v.value.permits[1].new_number.as_deref(), Some("N-1"));
    assert_eq!(v.value.answer, Some(Answer::Agree));
    assert_eq!(v.value.sms_attempts, 1);
    let h = s.holder(&case.subject).unwrap().unwrap();
    assert_eq!(
        h.permits,
        vec![("P-0".into(), "N-0".into()), ("P-1".into(), "N-1".into())]
    );

    let kinds: Vec<&str> = s
        .history(&case.id)
        .unwrap()
        .iter()
        .map(|h| h.kind.as_str())
        .collect();
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
    // Diff read + every case closed: the run is done.
    s.set_phase(&run.id, DiffPhase::Done, now()).unwrap();
    let r = s.run(&run.id).unwrap().unwrap();
    assert_eq!((r.state, r.closed), (RunState::Done, 1));
    assert!(r.finished_at.is_some());

    let f = s.funnel(&run.id).unwrap();
    assert_eq!(
        (
            f.diffs,
            f.with_permits,
            f.recipients,
            f.sms_sent,
            f.sms_resent,
            f.answered_yes,
            f.reissued,
            f.open
        ),
        (3, 1, 1, 1, 0, 1, 1, 0)
    );
    // The feed holds every step and run state, in order.
    let ev = s.events_after(0, 1000).unwrap();
    assert!(ev.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        ev.first().unwrap().what,
        EventWhat::RunState(RunState::Running)
    );
    assert_eq!(ev.last().unwrap().what, EventWhat::RunState(RunState::Done));
    assert_eq!(s.events_after(ev[2].seq, 2).unwrap(), ev[3..5].to_vec());

    // Reopened: everything is still there.
    drop(store);
    let store = b.open().unwrap();
    let s = store.as_ref();
    assert_eq!(
        s.case(&case.id).unwrap().unwrap().value.state,
        State::Closed(Outcome::Reissued)
    );
    assert_eq!(
        s.cases(&run.id, CaseFilter::Outcome(Outcome::Reissued), None, 10)
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.cases(&run.id, CaseFilter::Open, None, 10)
            .unwrap()
            .is_empty()
    );
}

fn listing_pages_by_case_id_and_filters(b: &dyn Backend) {
    let store = b.open().unwrap();
    let s = store.as_ref();
    let (run, ..) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    let mut ids = vec![];
    for i in 0..5 {
        let (case, fx) = case::open(
            opening(&run.id, Subject::Organization(bin(i + 1)), 1),
            now(),
        );
        let hist = history_of(&fx);
        s.commit_diff(DiffCommit {
            run: &run.id,
            phase: DiffPhase::GbdUl,
            counted: true,
            cursor: "c",
            opened: Some((&case, &hist)),
            at: now(),
        })
        .unwrap();
        ids.push(case.id);
    }
    ids.sort();
    let p1 = s.cases(&run.id, CaseFilter::All, None, 2).unwrap();
    let p2 = s
        .cases(&run.id, CaseFilter::All, Some(&p1[1].id), 10)
        .unwrap();
    let all: Vec<CaseId> = p1.iter().chain(&p2).map(|c| c.id.clone()).collect();
    assert_eq!(all, ids);
    assert_eq!(
        s.actionable_cases(Some(&ids[2]), 10).unwrap(),
        ids[3..].to_vec()
    );
    apply(
        s,
        &ids[0],
        Event::CallFailed {
            call: case::CallKind::GetOrganization,
            error: "x".into(),
            retryable: false,
        },
        None,
    );
    assert_eq!(
        s.cases(&run.id, CaseFilter::Outcome(Outcome::Failed), None, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.cases(&run.id, CaseFilter::Open, None, 10).unwrap().len(),
        4
    );
    assert_eq!(s.funnel(&run.id).unwrap().failed, 1);
    s.fail_run(&run.id, "GBD UL unreachable", now()).unwrap();
    let r = s.run(&run.id).unwrap().unwrap();
    assert_eq!(
        (r.state, r.error.as_deref()),
        (RunState::Failed, Some("GBD UL unreachable"))
    );
    // Failed stays failed while its open cases move on.
    apply(s, &ids[1], Event::RecipientResolved { iin: iin(2) }, None);
    assert_eq!(s.run(&run.id).unwrap().unwrap().state, RunState::Failed);
}

fn one_runner_per_database(b: &dyn Backend) {
    let store = b.open().unwrap();
    let e = b.open().err().expect("a second open is refused");
    assert!(
        matches!(&e, StoreError::Locked { holder, .. } if holder.contains(&format!("pid {}", std::process::id()))),
        "{e}"
    );
    assert!(e.to_string().contains("another runner"));
    drop(store);
    b.open().expect("free again once the first is dropped");
}

fn a_newer_schema_is_refused(b: &dyn Backend) {
    drop(b.open().unwrap());
    b.exec("UPDATE schema_version SET version = 99");
    let e = b.open().err().expect("a second open is refused");
    assert!(
        matches!(e, StoreError::NewerSchema { found: 99, .. }),
        "{e}"
    );
}

fn damaged_rows_are_errors_not_panics(b: &dyn Backend) {
    let store = b.open().unwrap();
    let s = store.as_ref();
    let (run, ..) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    let (case, fx) = case::open(opening(&run.id, Subject::Organization(bin(1)), 1), now());
    s.commit_diff(DiffCommit {
        run: &run.id,
        phase: DiffPhase::GbdUl,
        counted: true,
        cursor: "c",
        opened: Some((&case, &history_of(&fx))),
        at: now(),
    })
    .unwrap();
    b.exec("UPDATE cases SET state = 'dancing'");
    assert!(matches!(s.case(&case.id), Err(StoreError::Corrupt(_))));
    b.exec("UPDATE cases SET state = 'closed', outcome = 'MAYBE'");
    assert!(matches!(s.case(&case.id), Err(StoreError::Corrupt(_))));
}

/// Cases down every road (re-issued, refused, no consent, no phone, failed, still
/// waiting), then what a reader sees: the funnel, the cases, the feed.
fn scenario(s: &dyn Store) -> (FunnelCounts, Vec<Case>, Vec<EventRecord>, Vec<HistoryEntry>) {
    let (run, ..) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    let mut ids = vec![];
    for i in 0..7 {
        let (case, fx) = case::open(
            opening(
                &run.id,
                Subject::Organization(bin(i + 1)),
                1 + (i % 2) as usize,
            ),
            now(),
        );
        s.commit_diff(DiffCommit {
            run: &run.id,
            phase: DiffPhase::GbdUl,
            counted: true,
            cursor: &format!("c{i}"),
            opened: Some((&case, &history_of(&fx))),
            at: now(),
        })
        .unwrap();
        ids.push(case.id);
    }
    s.set_phase(&run.id, DiffPhase::Done, now()).unwrap();
    let org = consent_scopes(shep_sdu::pilot::SubjectKind::Organization);
    for (n, id) in ids.iter().enumerate() {
        let v = s.case(id).unwrap().unwrap();
        if matches!(v.value.state, State::Closed(_)) {
            continue;
        }
        apply(
            s,
            id,
            Event::RecipientResolved {
                iin: iin(n as u16 + 1),
            },
            None,
        );
        if n == 1 {
            apply(
                s,
                id,
                Event::ConsentRefused {
                    scope: org[0].clone(),
                },
                None,
            );
            continue;
        }
        apply(
            s,
            id,
            Event::ConsentObtained {
                scopes: org.clone(),
            },
            None,
        );
        apply(s, id, Event::PersonChecked(PersonFacts::default()), None);
        if n == 2 {
            apply(s, id, Event::NoPhone { attempt: 1 }, None);
            continue;
        }
        apply(
            s,
            id,
            Event::Notified {
                attempt: 1,
                sms_id: format!("sms-{n}"),
                sent_at: now(),
            },
            None,
        );
        if n == 6 {
            continue; // still waiting for its answer
        }
        let text = if n == 4 { "2" } else { "1" };
        apply(
            s,
            id,
            Event::Answer {
                attempt: 1,
                sms_id: format!("sms-{n}"),
                text: text.into(),
                received_at: now(),
            },
            Some(("pep", &format!("a{n}"))),
        );
        if n == 5 {
            apply(
                s,
                id,
                Event::CallFailed {
                    call: case::CallKind::ReissuePermit,
                    error: "x".into(),
                    retryable: false,
                },
                None,
            );
            continue;
        }
        let permits = s.case(id).unwrap().unwrap().value.permits.len();
        for index in 0..permits {
            apply(
                s,
                id,
                Event::Reissued {
                    index,
                    new_number: format!("N-{n}-{index}"),
                },
                None,
            );
        }
    }
    let cases = s.cases(&run.id, CaseFilter::All, None, 100).unwrap();
    let history = ids.iter().flat_map(|id| s.history(id).unwrap()).collect();
    (
        s.funnel(&run.id).unwrap(),
        cases,
        s.events_after(0, 10_000).unwrap(),
        history,
    )
}

#[test]
fn both_backends_store_the_same_scenario_identically() {
    let lite = Sqlite::new();
    let pg = Postgres::new();
    let a = scenario(lite.open().unwrap().as_ref());
    let b = scenario(pg.open().unwrap().as_ref());
    // The scenario reaches every road it means to.
    let f = a.0;
    assert_eq!(
        (
            f.diffs,
            f.with_permits,
            f.no_consent,
            f.no_phone,
            f.answered_yes,
            f.answered_no
        ),
        (7, 7, 1, 1, 3, 1),
        "{f:?}"
    );
    assert_eq!((f.reissued, f.failed, f.open), (2, 1, 1), "{f:?}");
    assert_eq!(a.0, b.0, "funnel");
    assert_eq!(a.1, b.1, "cases");
    assert_eq!(a.2, b.2, "feed of events");
    assert_eq!(a.3, b.3, "histories");
}

#[test]
fn postgres_errors_name_the_url_without_its_password() {
    // Nothing listens on port 1.
    let e = PgStore::open("postgres://sdu:s3cr3t@127.0.0.1:1/shep").unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, StoreError::Io { .. }), "{m}");
    assert!(m.contains("postgres://sdu@127.0.0.1:1/shep"), "{m}");
    assert!(m.contains("cannot connect"), "{m}");
    assert!(!m.contains("s3cr3t"), "{m}");
    // A database that does not exist: the server says so.
    let missing = format!("{}/sdu_no_such_database", pgdb::server());
    let e = PgStore::open(&missing).unwrap_err().to_string();
    assert!(
        e.contains("sdu_no_such_database") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn the_backend_follows_the_db_setting() {
    let pg = pgdb::TestDb::new();
    let s = shep_sdu::store::open(std::path::Path::new(&pg.url)).unwrap();
    s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    drop(s);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdu.db");
    drop(shep_sdu::store::open(&path).unwrap());
    assert!(path.exists());
    // The run went to PostgreSQL: a PostgreSQL store opened on it finds it.
    let s = PgStore::open(&pg.url).unwrap();
    assert!(
        s.run(&RunId::of("sez-000", date(2026, 2, 3)))
            .unwrap()
            .is_some()
    );
}

#[test]
fn postgres_a_lost_session_frees_the_lock_and_the_old_store_fails_rather_than_writes() {
    let pg = Postgres::new();
    let old = pg.open().unwrap();
    let (run, ..) = old.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    // The server ends the runner's sessions, as when its process is killed.
    pg.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    // The lock goes with the session (once the server has ended it).
    let mut new = None;
    for _ in 0..1000 {
        match pg.open() {
            Ok(s) => {
                new = Some(s);
                break;
            }
            Err(StoreError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    let new = new.expect("the lock is free once its session ended");
    // The old store does not reconnect without its lock: its writes fail.
    let e = old
        .set_phase(&run.id, DiffPhase::Done, now())
        .expect_err("a store whose session ended writes nothing");
    assert!(matches!(e, StoreError::Backend(_)), "{e}");
    assert_eq!(new.run(&run.id).unwrap().unwrap().phase, DiffPhase::GbdUl);
}

/// SQLite keeps the funnel by triggers (migration 2). A database written before them gets
/// its counts from the cases when it is migrated, and they go on from there.
#[test]
fn sqlite_migration_2_counts_the_funnel_of_an_older_database() {
    let lite = Sqlite::new();
    let before = {
        let s = lite.open().unwrap();
        scenario(s.as_ref()).0
    };
    lite.exec(
        "DROP TRIGGER cases_funnel_insert; DROP TRIGGER cases_funnel_update; DROP TABLE run_funnel; \
         UPDATE schema_version SET version = 1;",
    );
    let s = lite.open().unwrap();
    let run = RunId::of("sez-000", date(2026, 2, 3));
    assert_eq!(s.funnel(&run).unwrap(), before, "backfilled from the cases");
    assert_eq!(before.open, 1, "{before:?}");
    // The waiting case answers and is re-issued: the counts move on from the backfill.
    let waiting = s.cases(&run, CaseFilter::All, None, 100).unwrap();
    let id = waiting
        .iter()
        .find(|c| matches!(c.state, State::AwaitAnswer { .. }))
        .map(|c| c.id.clone())
        .unwrap();
    apply(
        s.as_ref(),
        &id,
        Event::Answer {
            attempt: 1,
            sms_id: "sms-6".into(),
            text: "1".into(),
            received_at: now(),
        },
        None,
    );
    let permits = s.case(&id).unwrap().unwrap().value.permits.len();
    for index in 0..permits {
        apply(
            s.as_ref(),
            &id,
            Event::Reissued {
                index,
                new_number: format!("N-6-{index}"),
            },
            None,
        );
    }
    let after = s.funnel(&run).unwrap();
    assert_eq!(
        (after.open, after.answered_yes, after.reissued),
        (0, before.answered_yes + 1, before.reissued + 1),
        "{after:?}"
    );
}

/// Many threads commit at once (SQLite then commits them together): each gets the result of
/// its own change. Threads with their own case all commit; two threads changing one case
/// from the same version get one commit and one conflict.
fn concurrent_commits_each_get_their_own_result(b: &dyn Backend) {
    let store = b.open().unwrap();
    let s = store.as_ref();
    let (run, ..) = s.create_run("sez-000", date(2026, 2, 3), now()).unwrap();
    let ids: Vec<CaseId> = (1..=8)
        .map(|n| {
            let (case, fx) = case::open(opening(&run.id, Subject::Organization(bin(n)), 1), now());
            s.commit_diff(DiffCommit {
                run: &run.id,
                phase: DiffPhase::GbdUl,
                counted: true,
                cursor: "d",
                opened: Some((&case, &history_of(&fx))),
                at: now(),
            })
            .unwrap();
            case.id
        })
        .collect();
    let rounds = 20u16;
    let barrier = std::sync::Barrier::new(ids.len() + 2);
    let raced = std::sync::atomic::AtomicU32::new(0);
    let read = std::sync::Barrier::new(2);
    std::thread::scope(|t| {
        for (n, id) in ids.iter().enumerate().skip(1) {
            let barrier = &barrier;
            t.spawn(move || {
                barrier.wait();
                for r in 0..rounds {
                    let v = s.case(id).unwrap().unwrap();
                    let mut next = v.value.clone();
                    next.recipient = Some(iin(n as u16 * 30 + r));
                    let step = HistoryEntry {
                        kind: case::StepKind::RecipientResolved,
                        at: now(),
                        attempt: 0,
                        detail: format!("round {r}"),
                    };
                    let res = s
                        .commit_case(CaseCommit {
                            case: &next,
                            expected_version: v.version,
                            history: std::slice::from_ref(&step),
                            holder: None,
                            cursor: None,
                            at: now(),
                        })
                        .unwrap();
                    assert!(matches!(res, CommitResult::Committed(ref e) if e.len() == 1), "{res:?}");
                }
            });
        }
        // Two threads, one case: each round both commit from the version they both read.
        for who in 0..2u16 {
            let (barrier, read, raced, id) = (&barrier, &read, &raced, &ids[0]);
            t.spawn(move || {
                barrier.wait();
                for r in 0..rounds {
                    let v = s.case(id).unwrap().unwrap();
                    read.wait();
                    let mut next = v.value.clone();
                    next.recipient = Some(iin(300 + r * 2 + who));
                    let res = s
                        .commit_case(CaseCommit {
                            case: &next,
                            expected_version: v.version,
                            history: &[],
                            holder: None,
                            cursor: None,
                            at: now(),
                        })
                        .unwrap();
                    if matches!(res, CommitResult::Committed(_)) {
                        raced.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    read.wait();
                }
            });
        }
        barrier.wait();
    });
    assert_eq!(
        raced.load(std::sync::atomic::Ordering::SeqCst),
        u32::from(rounds),
        "one of the two commits of each round"
    );
    assert_eq!(s.case(&ids[0]).unwrap().unwrap().version, 1 + u64::from(rounds));
    for (n, id) in ids.iter().enumerate().skip(1) {
        let v = s.case(id).unwrap().unwrap();
        assert_eq!(v.version, 1 + u64::from(rounds), "case {n}");
        assert_eq!(v.value.recipient, Some(iin(n as u16 * 30 + rounds - 1)), "case {n}");
        assert_eq!(s.history(id).unwrap().len(), 1 + usize::from(rounds), "case {n}");
    }
}
