//! The SDU node on PostgreSQL, against the fake upstream services of `runner.rs`: a daily
//! run killed mid-way and resumed by a new runner on the same database, without a second
//! SMS or re-issue, ending with the same outcomes and funnel as the same run on SQLite
//! without a crash. Each run gets a fresh database (see `pgdb`).

mod fakes;
mod pgdb;

use std::collections::HashMap;
use std::path::PathBuf;

use fakes::{Env, MapCountry, almaty, date, eventually, settled};
use shep_sdu::{FunnelCounts, RunState, SduHandle};

const N: u32 = 16;

fn run_date() -> jiff::civil::Date {
    jiff::civil::date(2026, 2, 3)
}

/// Organizations renamed on the run date, two permits each; even ones answer "1", odd ones
/// never answer.
fn crowd() -> MapCountry {
    fakes::crowd(date(2026, 2, 3), 2000, N)
}

/// The world of `runner.rs` with the crowd; the SDU's state in PostgreSQL at `db` (a URL),
/// or in a SQLite file without one.
async fn env(db: Option<&str>, delay_ms: u64) -> Env {
    let mut env = Env::new(crowd(), "2026-02-03T09:00:00", delay_ms).await;
    if let Some(url) = db {
        env.db = PathBuf::from(url);
    }
    env
}

fn outcomes(h: &SduHandle) -> HashMap<String, String> {
    fakes::outcomes(h, "sez-000", run_date())
}

/// Takes the run to its end: the answers, the second SMS to the silent, their deadline.
async fn finish(env: &Env, h: &SduHandle) -> (HashMap<String, String>, FunnelCounts) {
    let run = shep_sdu::RunId::of("sez-000", run_date());
    settled(h, &run).await;
    let reissued = |h: &SduHandle| outcomes(h).values().filter(|o| *o == "REISSUED").count();
    eventually("every answer taken", || reissued(h) == N as usize / 2).await;
    env.clock.set(almaty("2026-02-06T09:00:00"));
    eventually("second SMS sent", || {
        h.cases_json("sez-000", run_date())
            .unwrap()
            .iter()
            .filter(|r| r.sms_attempts == 2)
            .count()
            == N as usize / 2
    })
    .await;
    env.clock.set(almaty("2026-02-12T09:00:00"));
    eventually("done", || h.run(&run).unwrap().state == RunState::Done).await;
    (outcomes(h), h.report("sez-000", run_date()).unwrap().counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_killed_runner_is_resumed_without_a_second_sms_or_reissue() {
    // The reference: the same country on SQLite, without a crash.
    let (reference, reference_funnel) = {
        let env = env(None, 0).await;
        let sdu = env.start_sdu(4).await.unwrap();
        sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
        let r = finish(&env, &sdu.handle).await;
        sdu.kill().await;
        r
    };
    assert_eq!(
        reference.values().filter(|o| *o == "NO_ANSWER").count(),
        N as usize / 2
    );

    let pg = pgdb::TestDb::new();
    let env = env(Some(&pg.url), 2).await;
    // Hold every Notify after the 6th, so calls are in flight when the runner dies.
    env.fakes.notify_gate.send_replace(Some(6));
    let sdu = env.start_sdu(4).await.expect("the SDU starts on PostgreSQL");
    // A second runner on the same database is refused, naming it without a password.
    let e = env
        .start_sdu(4)
        .await
        .err()
        .expect("a second runner is refused")
        .to_string();
    assert!(e.contains("another runner") && e.contains(&pg.url), "{e}");

    let run = sdu.handle.run_daily("sez-000", run_date()).await.unwrap();
    eventually("calls held in flight", || env.fakes.rec().sent.len() >= 8).await;
    sdu.kill().await;
    let sent_before = env.fakes.rec().sent.len();
    assert!(
        sent_before < N as usize,
        "killed mid-way: {sent_before} SMS of {N}"
    );

    // Restarted on the same database: it resumes the diff from its cursor and every case.
    env.fakes.notify_gate.send_replace(None);
    let sdu = env
        .start_sdu(4)
        .await
        .expect("a new runner takes the database");
    let h = sdu.handle.clone();
    let (after, funnel) = finish(&env, &h).await;
    assert_eq!(after, reference, "the same outcomes as without the crash");
    assert_eq!(funnel, reference_funnel, "the same funnel as on SQLite");
    assert_eq!(h.run(&run).unwrap().closed, u64::from(N));
    {
        let rec = env.fakes.rec();
        // No SMS twice: one per case and attempt, attempt 2 only to the silent half.
        assert_eq!(rec.sent.len(), N as usize + N as usize / 2);
        // No permit re-issued twice, every one of the agreeing half re-issued.
        assert_eq!(rec.reissued.len(), N as usize);
        // The diff was resumed from its durable cursor, not re-read from the start.
        assert!(rec.diff_streams.len() <= 2, "{:?}", rec.diff_streams);
        assert!(
            rec.diff_streams.iter().skip(1).all(|c| !c.is_empty()),
            "{:?}",
            rec.diff_streams
        );
    }
    sdu.kill().await;
}
