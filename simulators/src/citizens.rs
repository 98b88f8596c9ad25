//! How simulated citizens answer an SMS: "1", "2", something else, or nothing, after a
//! delay, during the day (09:00-21:00 Almaty). Deterministic for (seed, case, attempt), so a
//! re-run of a scenario gets the same answers.

use rand::Rng;

use crate::rng::keyed;
use crate::settings::AnswerSettings;
use crate::time::{DAY_SECS, almaty_second_of_day};

/// Answers that are neither "1" nor "2", for format-logical control.
const OTHER_ANSWERS: [&str; 6] = ["да", "Да, согласен", "1 ", "3", "ok", "иә"];

/// The first and the last second of the day at which citizens answer (Almaty).
const DAY_FROM: i64 = 9 * 3600;
const DAY_TO: i64 = 21 * 3600;

/// A citizen's answer: the text and when it arrives (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub at: i64,
}

/// Moves an instant outside 09:00-21:00 Almaty to the next morning (plus `spread` seconds).
pub fn daytime(at: i64, spread: i64) -> i64 {
    let s = almaty_second_of_day(at);
    if s < DAY_FROM {
        at - s + DAY_FROM + spread
    } else if s >= DAY_TO {
        at - s + DAY_SECS + DAY_FROM + spread
    } else {
        at
    }
}

/// How the citizen answers the SMS of `case_id`, attempt `attempt`, sent at `sent_at`.
pub fn reply(seed: u64, a: &AnswerSettings, case_id: &str, attempt: u32, sent_at: i64) -> Option<Reply> {
    let mut rng = keyed(seed, format!("answer|{case_id}|{attempt}").as_bytes());
    let x = rng.random::<u32>() as f64 / 4_294_967_296.0;
    let text = if x < a.yes {
        "1".to_owned()
    } else if x < a.yes + a.no {
        "2".to_owned()
    } else if x < a.yes + a.no + a.other {
        OTHER_ANSWERS[rng.random_range(0..OTHER_ANSWERS.len() as u32) as usize].to_owned()
    } else {
        return None;
    };
    // Most answers come soon: the delay is the maximum times the cube of a uniform draw.
    let u = rng.random::<u32>() as f64 / 4_294_967_296.0;
    let max = a.max_delay_minutes.max(1) as f64;
    let minutes = 1 + ((max - 1.0) * u * u * u) as i64;
    let spread = rng.random_range(0..5400) as i64;
    Some(Reply { text, at: daytime(sent_at + minutes * 60, spread) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Day;

    #[test]
    fn replies_are_deterministic_daytime_and_follow_the_shares() {
        let a = AnswerSettings::default();
        let sent = Day::from_ymd(2026, 3, 2).unwrap().at_almaty(20, 30);
        let (mut yes, mut no, mut none) = (0, 0, 0);
        for i in 0..2_000 {
            let case = format!("case-{i}");
            let r = reply(7, &a, &case, 1, sent);
            assert_eq!(r, reply(7, &a, &case, 1, sent));
            match r {
                None => none += 1,
                Some(r) => {
                    let s = almaty_second_of_day(r.at);
                    assert!((DAY_FROM..DAY_TO + 5400).contains(&s), "answer at {s}s of the day");
                    assert!(r.at > sent);
                    match r.text.as_str() {
                        "1" => yes += 1,
                        "2" => no += 1,
                        _ => {}
                    }
                }
            }
        }
        assert!((1_100..1_300).contains(&yes), "{yes}");
        assert!((230..370).contains(&no), "{no}");
        assert!((320..480).contains(&none), "{none}");
        let never = AnswerSettings { yes: 0.0, no: 0.0, other: 0.0, ..a };
        assert!(reply(7, &never, "c", 1, sent).is_none());
    }

    #[test]
    fn night_moves_to_morning() {
        let day = Day::from_ymd(2026, 3, 2).unwrap();
        assert_eq!(daytime(day.at_almaty(3, 0), 0), day.at_almaty(9, 0));
        assert_eq!(daytime(day.at_almaty(22, 0), 60), day.plus(1).at_almaty(9, 1));
        assert_eq!(daytime(day.at_almaty(12, 0), 60), day.at_almaty(12, 0));
    }
}
