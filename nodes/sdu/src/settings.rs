//! The settings of the SDU node: the `[sdu]` section of a node's configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::case::RetryPolicy;
use crate::error::SduError;

/// The `[sdu]` section. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SduSettings {
    /// URL of the bus ("https://127.0.0.1:7000"). SDU talks to nothing else: every registry,
    /// PEP and KDP call goes through one mutual-TLS channel to it, as system "sdu".
    pub bus_url: String,
    /// Where the durable state lives: a SQLite file (created when missing, with
    /// `<db>.lock` beside it), or a PostgreSQL database named by a `postgres://` or
    /// `postgresql://` URL (`postgres://sdu:secret@127.0.0.1:5432/sdu`; the database must
    /// exist, its tables are created; no TLS, so a server on the same host or a TLS tunnel).
    /// One runner per database at a time.
    pub db: PathBuf,
    /// The bound on calls in flight: at most this many cases are driven at once (a case
    /// makes its calls one step at a time), and at most this many permit look-ups of a diff.
    /// At least 1.
    pub concurrency: usize,
    /// Organizations of a diff looked up in one e-license `ListPermitsByBins` call: the
    /// consecutive renamed organizations at hand (up to this many) are looked up together;
    /// 1 looks up each with its own `ListPermits`. Individuals are always looked up one by
    /// one (each needs its consent token). From 1 to 1000.
    pub lookup_batch: usize,
    /// Subjects in one batch look-up: consent tokens (KDP `IssueTokens`) and person checks
    /// (GBD FL `GetPersons` with ZAGS `GetActsOfPersons`) that cases ask for at the same time
    /// go together, each subject with its own token; 1 makes one call per subject
    /// (`IssueToken`, `GetPerson`, `GetPersonActs`). Organizations' permits are re-issued and
    /// SMS sent in batches of this size too (`ReissueOrganizationPermits`, PEP `NotifyMany`;
    /// 1: `ReissuePermit` and `Notify` each).
    /// From 1 to 32 (the tokens travel in the call's headers).
    pub call_batch: usize,
    /// An operator's pilot catalog (TOML, `[[pilot]]` tables) that replaces pilots of the
    /// same id and adds new ones; none: the shipped catalog only.
    pub pilots_file: Option<PathBuf>,
    /// An operator's working-day calendar (TOML, `[[year]]` tables) that replaces shipped
    /// years and adds new ones; none: the shipped years (2025–2027) only.
    pub calendar_file: Option<PathBuf>,
    /// Tries of one failing call before its case ends FAILED (at least 1).
    pub max_attempts: u32,
    /// The first retry delay, in milliseconds; doubled at each try.
    pub retry_base_ms: u64,
    /// The longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// Deadline of one call to the bus, in milliseconds.
    pub call_timeout_ms: u64,
    /// How often the timer loop compares the deadlines with the clock, in milliseconds (a
    /// manual clock that jumps is noticed within this).
    pub timer_poll_ms: u64,
    /// Log the progress of a run's diff every this many name changes.
    pub progress_every_cases: u64,
    /// Log the progress of running runs every this many seconds.
    pub progress_every_secs: u64,
}

impl Default for SduSettings {
    fn default() -> Self {
        SduSettings {
            bus_url: "https://127.0.0.1:7000".into(),
            db: PathBuf::from("sdu.db"),
            concurrency: 32,
            lookup_batch: 256,
            call_batch: 32,
            pilots_file: None,
            calendar_file: None,
            max_attempts: 5,
            retry_base_ms: 200,
            retry_max_ms: 30_000,
            call_timeout_ms: 30_000,
            timer_poll_ms: 50,
            progress_every_cases: 10_000,
            progress_every_secs: 10,
        }
    }
}

impl SduSettings {
    /// Checks the values that have a valid range.
    pub fn validate(&self) -> Result<(), SduError> {
        let bad = |m: String| Err(SduError::Settings(m));
        if self.concurrency == 0 || self.concurrency > 4096 {
            return bad(format!(
                "concurrency {} is not between 1 and 4096",
                self.concurrency
            ));
        }
        if self.lookup_batch == 0 || self.lookup_batch > crate::clients::MAX_BINS {
            return bad(format!(
                "lookup_batch {} is not between 1 and {}",
                self.lookup_batch,
                crate::clients::MAX_BINS
            ));
        }
        if self.call_batch == 0 || self.call_batch > crate::clients::MAX_CALL_BATCH {
            return bad(format!(
                "call_batch {} is not between 1 and {}",
                self.call_batch,
                crate::clients::MAX_CALL_BATCH
            ));
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        if self.timer_poll_ms == 0 || self.timer_poll_ms > 1000 {
            return bad(format!(
                "timer_poll_ms {} is not between 1 and 1000",
                self.timer_poll_ms
            ));
        }
        if self.call_timeout_ms == 0 {
            return bad("call_timeout_ms must be at least 1".into());
        }
        if !(self.bus_url.starts_with("https://")) {
            return bad(format!(
                "bus_url {:?} must be an https:// URL (mutual TLS)",
                self.bus_url
            ));
        }
        if self.db.as_os_str().is_empty() {
            return bad("db must name a file or a postgres:// URL".into());
        }
        Ok(())
    }

    /// The retry policy of calls.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            base: Duration::from_millis(self.retry_base_ms),
            max: Duration::from_millis(self.retry_max_ms.max(self.retry_base_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_unknown_fields_are_refused() {
        let s: SduSettings =
            toml::from_str("bus_url = \"https://bus:7000\"\nconcurrency = 8\n").unwrap();
        assert_eq!(s.concurrency, 8);
        assert_eq!(s.db, PathBuf::from("sdu.db"));
        s.validate().unwrap();
        let e = toml::from_str::<SduSettings>("concurency = 8\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurency"), "{e}");
        let e = SduSettings {
            concurrency: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("concurrency"), "{e}");
        let e = SduSettings {
            bus_url: "http://x".into(),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("https"), "{e}");
        assert_eq!(SduSettings::default().retry().max_attempts, 5);
        assert_eq!(SduSettings::default().lookup_batch, 256);
        for bad in [0, 1001] {
            let e = SduSettings {
                lookup_batch: bad,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(e.contains("lookup_batch"), "{e}");
        }
        let s: SduSettings = toml::from_str("lookup_batch = 1\n").unwrap();
        s.validate().unwrap();
        // A PostgreSQL URL in `db` is accepted as is; `store::open` picks the backend by it.
        let s: SduSettings = toml::from_str("db = \"postgres://sdu:pw@127.0.0.1/sdu\"\n").unwrap();
        s.validate().unwrap();
        assert_eq!(
            crate::store::describe(&s.db),
            "postgres://sdu@127.0.0.1/sdu"
        );
    }
}
