//! PEP's SMS gateway: the outbox, the record of each (case, attempt) notified, scripted
//! citizens, and the answers: scheduled, then delivered once the clock passes their time.

use std::collections::{BTreeMap, HashMap};

use shep_domain::Iin;
use shep_proto::pep::{Language, NotifyOutcome};

/// An SMS sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sms {
    pub id: String,
    pub case_id: String,
    pub attempt: u32,
    pub iin: Iin,
    pub phone: String,
    pub language: Language,
    pub text: String,
    pub sent_at: i64,
}

/// The first answer to a (case, attempt), kept to answer repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notified {
    pub iin: Iin,
    pub text: String,
    pub outcome: NotifyOutcome,
    /// Index into the outbox when sent.
    pub sms: Option<usize>,
    pub at: i64,
}

/// How a scripted citizen answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The text, or `None` for a citizen who never answers.
    pub answer: Option<String>,
    pub delay_secs: u32,
}

/// An answer received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Index into the outbox of the SMS answered.
    pub sms: usize,
    pub text: String,
    pub received_at: i64,
}

#[derive(Debug, Clone)]
struct Pending {
    phone: String,
    text: String,
}

/// The state of PEP.
#[derive(Debug, Clone, Default)]
pub struct SmsState {
    outbox: Vec<Sms>,
    by_phone: HashMap<String, Vec<usize>>,
    notified: HashMap<(String, u32), Notified>,
    scripts: HashMap<Iin, Script>,
    pending: BTreeMap<(i64, u64), Pending>,
    seq: u64,
    received: Vec<Received>,
}

impl SmsState {
    /// The record of a (case, attempt), if it was notified.
    pub fn notified(&self, case_id: &str, attempt: u32) -> Option<&Notified> {
        self.notified.get(&(case_id.to_owned(), attempt))
    }

    /// Records a notification that found no phone.
    pub fn record_no_phone(&mut self, case_id: &str, attempt: u32, iin: Iin, text: String, now: i64) -> Notified {
        let n = Notified { iin, text, outcome: NotifyOutcome::NoPhone, sms: None, at: now };
        self.notified.insert((case_id.to_owned(), attempt), n.clone());
        n
    }

    /// Sends an SMS (puts it in the outbox) and schedules the citizen's answer: the script
    /// for the IIN if one is set, else `reply`.
    pub fn send(&mut self, sms: Sms, reply: Option<(String, i64)>) -> Notified {
        let idx = self.outbox.len();
        let key = (sms.case_id.clone(), sms.attempt);
        let n = Notified {
            iin: sms.iin,
            text: sms.text.clone(),
            outcome: NotifyOutcome::Sent,
            sms: Some(idx),
            at: sms.sent_at,
        };
        let answer = match self.scripts.get(&sms.iin) {
            Some(Script { answer: Some(text), delay_secs }) => Some((text.clone(), sms.sent_at + *delay_secs as i64)),
            Some(Script { answer: None, .. }) => None,
            None => reply,
        };
        if let Some((text, at)) = answer {
            self.seq += 1;
            self.pending.insert((at, self.seq), Pending { phone: sms.phone.clone(), text });
        }
        self.by_phone.entry(sms.phone.clone()).or_default().push(idx);
        self.outbox.push(sms);
        self.notified.insert(key, n.clone());
        n
    }

    /// Scripts how a citizen answers SMS sent from now on.
    pub fn script(&mut self, iin: Iin, script: Script) {
        self.scripts.insert(iin, script);
    }

    /// Delivers the answers due at `now`, in order of time; each is attributed to the
    /// latest SMS sent to the answering phone at or before its time. Returns how many.
    pub fn deliver_due(&mut self, now: i64) -> usize {
        let mut n = 0;
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), p) = entry.remove_entry();
            let latest = self
                .by_phone
                .get(&p.phone)
                .and_then(|v| v.iter().rev().find(|&&i| self.outbox[i].sent_at <= at).copied());
            if let Some(sms) = latest {
                self.received.push(Received { sms, text: p.text, received_at: at });
                n += 1;
            }
        }
        n
    }

    /// When the next answer falls due, if any is scheduled.
    pub fn next_due(&self) -> Option<i64> {
        self.pending.keys().next().map(|k| k.0)
    }

    pub fn outbox(&self) -> &[Sms] {
        &self.outbox
    }

    pub fn received(&self) -> &[Received] {
        &self.received
    }

    /// A fresh SMS id.
    pub fn next_sms_id(&self) -> String {
        format!("SMS{:010}", self.outbox.len() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sms(st: &SmsState, case: &str, attempt: u32, phone: &str, at: i64) -> Sms {
        Sms {
            id: st.next_sms_id(),
            case_id: case.into(),
            attempt,
            iin: Iin::parse("900515301234").unwrap(),
            phone: phone.into(),
            language: Language::Ru,
            text: "t".into(),
            sent_at: at,
        }
    }

    #[test]
    fn answers_are_delivered_when_due_to_the_latest_sms() {
        let mut st = SmsState::default();
        let s = sms(&st, "c1", 1, "+77010000001", 100);
        st.send(s, Some(("1".into(), 500)));
        assert_eq!(st.deliver_due(499), 0);
        let s = sms(&st, "c1", 2, "+77010000001", 300);
        st.send(s, None);
        assert_eq!(st.next_due(), Some(500));
        assert_eq!(st.deliver_due(500), 1);
        // Sent for attempt 1, but attempt 2 went to the same phone before it arrived.
        assert_eq!(st.received()[0].sms, 1);
        assert_eq!(st.notified("c1", 2).unwrap().outcome, NotifyOutcome::Sent);
        assert!(st.notified("c1", 3).is_none());
    }

    #[test]
    fn scripts_override_the_simulated_citizen() {
        let mut st = SmsState::default();
        let iin = Iin::parse("900515301234").unwrap();
        st.script(iin, Script { answer: Some("2".into()), delay_secs: 10 });
        let s = sms(&st, "c", 1, "+77010000002", 100);
        st.send(s, Some(("1".into(), 5_000)));
        st.deliver_due(110);
        assert_eq!(st.received()[0].text, "2");
        st.script(iin, Script { answer: None, delay_secs: 0 });
        let s = sms(&st, "c", 2, "+77010000002", 200);
        st.send(s, Some(("1".into(), 300)));
        assert_eq!(st.deliver_due(i64::MAX), 0);
    }
}
