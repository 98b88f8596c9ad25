//! Injected time: the only way SDU learns what time it is.
//!
//! Logic never reads the system clock; it is handed a [`Clock`]. In production that is
//! [`SystemClock`]; in demos and tests the CLI passes an adapter over the simulators'
//! manual clock, which jumps forward — the timer loop polls often enough to notice.

use std::sync::Mutex;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> jiff::Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A clock that moves only when told to; for tests and benchmarks.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<jiff::Timestamp>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: jiff::Timestamp) -> Self {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock to `to` (never backwards: an earlier instant is ignored).
    pub fn set(&self, to: jiff::Timestamp) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if to > *now {
            *now = to;
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: jiff::SignedDuration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(t) = now.checked_add(by) {
            *now = t;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> jiff::Timestamp {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}
