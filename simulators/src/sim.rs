//! One simulation: the generated country, the state scenarios change, the clock, the
//! faults and KDP's key. Every simulator node of a process shares one `Arc<Simulation>`,
//! so an injection through any node is seen by all (and so is the clock: move it through
//! one node only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use shep_consent::Signer;
use tokio::sync::watch;

use crate::clock::{Clock, SimClock};
use crate::country::Country;
use crate::faults::Faults;
use crate::settings::{DEFAULT_TODAY, SettingsError, SimSettings};
use crate::state::State;
use crate::time::Day;

/// One async lock per (case id, attempt) of PEP notifications.
type NotifyLocks = HashMap<(String, u32), Arc<tokio::sync::Mutex<()>>>;

/// The simulation shared by the simulator nodes of a process.
pub struct Simulation {
    settings: SimSettings,
    country: Country,
    clock: SimClock,
    state: Mutex<State>,
    faults: Faults,
    signer: Signer,
    changes: Arc<watch::Sender<u64>>,
    closing: watch::Sender<bool>,
    notify_locks: Mutex<NotifyLocks>,
}

fn resolve_today(settings: &SimSettings, clock: Clock) -> Day {
    if let Some(d) = settings.today {
        return Day::from_civil(d);
    }
    match clock {
        Clock::System => Day::of_unix(jiff::Timestamp::now().as_second()),
        Clock::Manual(Some(t)) => Day::of_unix(t.as_second()),
        Clock::Manual(None) => {
            let (y, m, d) = DEFAULT_TODAY;
            Day::from_ymd(y, m, d).unwrap_or_default()
        }
    }
}

/// KDP's signing key, derived from the seed: tokens verify across restarts with one seed.
fn kdp_signer(seed: u64) -> Signer {
    let mut h = Sha256::new();
    h.update(b"shep-sim kdp signing key v1");
    h.update(seed.to_le_bytes());
    let key: [u8; 32] = h.finalize().into();
    let probe = Signer::from_seed(&key, "").expect("any 32 bytes are an Ed25519 seed");
    let id: String = Sha256::digest(probe.public_key())[..6].iter().map(|b| format!("{b:02x}")).collect();
    Signer::from_seed(&key, &format!("kdp-sim-{id}")).expect("any 32 bytes are an Ed25519 seed")
}

impl Simulation {
    /// Generates the country and starts the simulation. Settings out of range are brought
    /// into range (see [`SimSettings::sanitized`]); use [`Simulation::try_new`] to refuse them.
    pub fn new(settings: SimSettings, clock: Clock) -> Arc<Simulation> {
        if let Err(e) = settings.validate() {
            tracing::warn!(error = %e, "simulation settings out of range; clamping them");
        }
        Simulation::build(settings.sanitized(), clock)
    }

    /// Like [`Simulation::new`], but refuses settings out of range.
    pub fn try_new(settings: SimSettings, clock: Clock) -> Result<Arc<Simulation>, SettingsError> {
        settings.validate()?;
        Ok(Simulation::build(settings, clock))
    }

    fn build(settings: SimSettings, clock: Clock) -> Arc<Simulation> {
        let today = resolve_today(&settings, clock);
        let started = std::time::Instant::now();
        let country = Country::generate(&settings, today);
        tracing::info!(
            seed = settings.seed,
            individuals = country.persons().len(),
            organizations = country.orgs().len(),
            permits = country.permits().len(),
            renames = country.renames().len(),
            acts = country.acts().len(),
            %today,
            ms = started.elapsed().as_millis() as u64,
            "synthetic country generated"
        );
        let changes = Arc::new(watch::channel(0u64).0);
        let clock = match clock {
            Clock::System => SimClock::system(changes.clone()),
            Clock::Manual(Some(t)) => SimClock::manual(t.as_second(), changes.clone()),
            Clock::Manual(None) => SimClock::manual(today.at_almaty(9, 0), changes.clone()),
        };
        Arc::new(Simulation {
            faults: Faults::new(settings.seed),
            signer: kdp_signer(settings.seed),
            settings,
            country,
            clock,
            state: Mutex::new(State::default()),
            changes,
            closing: watch::channel(false).0,
            notify_locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &SimSettings {
        &self.settings
    }

    /// The generated country (before any scenario).
    pub fn country(&self) -> &Country {
        &self.country
    }

    /// The last day of the generated history.
    pub fn today(&self) -> Day {
        self.country.today()
    }

    /// The simulated time now (Unix seconds).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The Almaty date of the simulated time now.
    pub fn current_day(&self) -> Day {
        Day::of_unix(self.now())
    }

    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// KDP's signing key.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The mutable state, locked. Keep the guard short and never across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces a change to streams that follow (answers, revocations).
    pub fn announce(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Ends every following stream (answers, revocations), so that a node shutting down
    /// does not wait for its grace period on streams that would never end.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// True once [`Simulation::close_streams`] was called: long answers (an export) stop.
    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once [`Simulation::close_streams`] was called.
    pub async fn closed(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// A receiver of change announcements (state changes and clock moves).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The lock that serializes the notifications of one (case, attempt).
    pub(crate) fn notify_lock(&self, case_id: &str, attempt: u32) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.notify_locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry((case_id.to_owned(), attempt)).or_default().clone()
    }

    /// Back to the seed data: every injection, script, call effect and fault undone, the
    /// clock back to its start. Returns the time after the reset.
    pub fn reset(&self) -> i64 {
        *self.state() = State::default();
        self.notify_locks.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.faults.clear();
        let now = self.clock.reset();
        self.announce();
        now
    }
}
