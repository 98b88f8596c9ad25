//! Per-caller limits: a token bucket for the rate, a counter for calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::CallerLimits;

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(limits: &CallerLimits, now: Instant) -> Self {
        TokenBucket {
            tokens: limits.burst.max(1) as f64,
            last: now,
        }
    }

    /// Takes a token at `now`, or says how long until one is available.
    pub fn take(&mut self, limits: &CallerLimits, now: Instant) -> Result<(), Duration> {
        if limits.requests_per_second <= 0.0 {
            return Ok(());
        }
        let cap = limits.burst.max(1) as f64;
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limits.requests_per_second).min(cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / limits.requests_per_second,
            ))
        }
    }
}

/// Why a call exceeded its caller's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// Over the sustained rate; retry after the delay.
    Rate {
        retry_after: Duration,
        limit: String,
    },
    /// Too many calls in flight.
    Concurrency { limit: u32 },
}

impl Exhausted {
    /// The ErrorInfo reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Exhausted::Rate { .. } => "RATE_LIMITED",
            Exhausted::Concurrency { .. } => "TOO_MANY_CONCURRENT_CALLS",
        }
    }

    /// How long the caller should wait (RetryInfo).
    pub fn retry_after(&self) -> Duration {
        match self {
            Exhausted::Rate { retry_after, .. } => (*retry_after).max(Duration::from_millis(1)),
            Exhausted::Concurrency { .. } => Duration::from_millis(100),
        }
    }

    pub fn message(&self, caller: &str) -> String {
        match self {
            Exhausted::Rate { limit, .. } => {
                format!("{caller} is over its rate of {limit} calls per second")
            }
            Exhausted::Concurrency { limit } => {
                format!("{caller} already has {limit} calls in flight")
            }
        }
    }
}

#[derive(Debug)]
struct CallerState {
    bucket: TokenBucket,
    in_flight: u32,
}

/// The limits of every caller.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    state: Arc<Mutex<HashMap<String, CallerState>>>,
}

/// A call in flight; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    state: Arc<Mutex<HashMap<String, CallerState>>>,
    caller: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut m) = self.state.lock()
            && let Some(s) = m.get_mut(&self.caller)
        {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}

impl Limiter {
    /// Admits one call of `caller` at `now`, or says which limit it exceeds. The
    /// concurrency check comes first, so a refused call does not spend a token.
    pub fn acquire(
        &self,
        caller: &str,
        limits: &CallerLimits,
        now: Instant,
    ) -> Result<Permit, Exhausted> {
        let mut m = self.state.lock().expect("limiter lock");
        let s = m.entry(caller.to_owned()).or_insert_with(|| CallerState {
            bucket: TokenBucket::full(limits, now),
            in_flight: 0,
        });
        if limits.max_concurrent > 0 && s.in_flight >= limits.max_concurrent {
            return Err(Exhausted::Concurrency {
                limit: limits.max_concurrent,
            });
        }
        s.bucket
            .take(limits, now)
            .map_err(|retry_after| Exhausted::Rate {
                retry_after,
                limit: format!("{}", limits.requests_per_second),
            })?;
        s.in_flight += 1;
        Ok(Permit {
            state: self.state.clone(),
            caller: caller.to_owned(),
        })
    }

    /// Calls of `caller` in flight now.
    pub fn in_flight(&self, caller: &str) -> u32 {
        self.state
            .lock()
            .expect("limiter lock")
            .get(caller)
            .map(|s| s.in_flight)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(rps: f64, burst: u32, conc: u32) -> CallerLimits {
        CallerLimits {
            requests_per_second: rps,
            burst,
            max_concurrent: conc,
        }
    }

    #[test]
    fn bucket_refills_at_the_rate() {
        let l = lim(10.0, 2, 0);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(&l, t0);
        assert!(b.take(&l, t0).is_ok());
        assert!(b.take(&l, t0).is_ok());
        let wait = b.take(&l, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(b.take(&l, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.take(&l, t0 + Duration::from_millis(100)).is_err());
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(60);
        assert!(
            b.take(&l, later).is_ok() && b.take(&l, later).is_ok() && b.take(&l, later).is_err()
        );
        // Zero rate: no limit.
        let free = lim(0.0, 0, 0);
        let mut b = TokenBucket::full(&free, t0);
        for _ in 0..1000 {
            assert!(b.take(&free, t0).is_ok());
        }
    }

    #[test]
    fn concurrency_is_per_caller_and_freed_on_drop() {
        let limiter = Limiter::default();
        let l = lim(0.0, 1, 2);
        let now = Instant::now();
        let a = limiter.acquire("sdu", &l, now).unwrap();
        let _b = limiter.acquire("sdu", &l, now).unwrap();
        let e = limiter.acquire("sdu", &l, now).unwrap_err();
        assert_eq!(e.reason(), "TOO_MANY_CONCURRENT_CALLS");
        assert!(limiter.acquire("pep", &l, now).is_ok());
        drop(a);
        assert_eq!(limiter.in_flight("sdu"), 1);
        assert!(limiter.acquire("sdu", &l, now).is_ok());
    }

    #[test]
    fn rate_refusal_says_when_to_retry() {
        let limiter = Limiter::default();
        let l = lim(1.0, 1, 0);
        let now = Instant::now();
        drop(limiter.acquire("sdu", &l, now).unwrap());
        let e = limiter.acquire("sdu", &l, now).unwrap_err();
        assert_eq!(e.reason(), "RATE_LIMITED");
        assert!(e.retry_after() > Duration::from_millis(900));
    }
}
