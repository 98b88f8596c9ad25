//! The simulation's clock: the system clock, or a manual one that only moves when told.
//!
//! Both can be moved forward (`advance`, `set`): the system clock then runs with an offset.
//! Every change is announced on the simulation's change signal, so that streams that wait
//! for time to pass (answers falling due) wake up.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Which clock a simulation runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The system clock (Asia/Almaty dates), movable forward by an offset.
    System,
    /// A manual clock starting at the given instant, or when `None` at 09:00 Almaty on the
    /// settings' `today` (2026-03-02 when the settings name no date).
    Manual(Option<jiff::Timestamp>),
}

impl Clock {
    /// A manual clock starting at 09:00 Almaty on the settings' `today`.
    pub fn manual() -> Clock {
        Clock::Manual(None)
    }
}

/// Why the clock refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("the clock cannot go back: now is {now}, asked for {asked} (use Reset to go back)")]
    Backwards { now: i64, asked: i64 },
}

/// A running clock (Unix seconds).
#[derive(Debug)]
pub struct SimClock {
    manual: bool,
    /// Manual: the start instant. System: unused.
    start: i64,
    /// Manual: the current instant. System: the offset added to the system time.
    value: Mutex<i64>,
    changes: Arc<watch::Sender<u64>>,
}

fn system_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

impl SimClock {
    /// A system clock (offset 0).
    pub fn system(changes: Arc<watch::Sender<u64>>) -> SimClock {
        SimClock { manual: false, start: 0, value: Mutex::new(0), changes }
    }

    /// A manual clock standing at `start`.
    pub fn manual(start: i64, changes: Arc<watch::Sender<u64>>) -> SimClock {
        SimClock { manual: true, start, value: Mutex::new(start), changes }
    }

    pub fn is_manual(&self) -> bool {
        self.manual
    }

    fn value(&self) -> std::sync::MutexGuard<'_, i64> {
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> i64 {
        let v = *self.value();
        if self.manual { v } else { system_now() + v }
    }

    fn announce(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Moves forward by `secs`; returns the new time.
    pub fn advance(&self, secs: u64) -> i64 {
        let secs = secs.min(i64::MAX as u64 / 4) as i64;
        {
            let mut v = self.value();
            *v = v.saturating_add(secs);
        }
        self.announce();
        self.now()
    }

    /// Moves to `to`, which must not be before now; returns the new time.
    pub fn set(&self, to: i64) -> Result<i64, ClockError> {
        {
            let mut v = self.value();
            let now = if self.manual { *v } else { system_now() + *v };
            if to < now {
                return Err(ClockError::Backwards { now, asked: to });
            }
            *v = if self.manual { to } else { to - system_now() };
        }
        self.announce();
        Ok(self.now())
    }

    /// Back to the start (manual) or to the system time (system); returns the new time.
    pub fn reset(&self) -> i64 {
        *self.value() = if self.manual { self.start } else { 0 };
        self.announce();
        self.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward_and_resets() {
        let (tx, rx) = watch::channel(0);
        let c = SimClock::manual(1_000, Arc::new(tx));
        assert_eq!(c.now(), 1_000);
        assert_eq!(c.advance(60), 1_060);
        assert_eq!(c.set(2_000), Ok(2_000));
        assert_eq!(c.set(1_999), Err(ClockError::Backwards { now: 2_000, asked: 1_999 }));
        assert_eq!(c.reset(), 1_000);
        assert_eq!(*rx.borrow(), 3);
    }

    #[test]
    fn system_clock_runs_with_an_offset() {
        let (tx, _rx) = watch::channel(0);
        let c = SimClock::system(Arc::new(tx));
        let before = c.now();
        assert!(before > 1_700_000_000);
        let after = c.advance(86_400);
        assert!(after >= before + 86_400);
        assert!(c.set(before).is_err());
        assert!(c.reset() < after);
    }
}
