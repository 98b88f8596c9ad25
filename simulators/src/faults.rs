//! Fault injection: per registry and method, an error status at a rate, added latency
//! (fixed plus uniform jitter), and outage windows on the simulated clock.
//!
//! The one mechanism is [`Faulty`], a tower service wrapped around each registry's
//! generated server: it sees the gRPC path of every call, sleeps the latency, and answers
//! the injected status without calling the handler. `Scenario` is never wrapped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::registry::Registry;
use crate::rng::{Stream, stream};
use crate::sim::Simulation;

/// A fault on one method (or every method) of a registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The status of a failing call; `Ok` for latency only.
    pub code: tonic::Code,
    /// The share of calls that fail, 0 to 1.
    pub rate: f32,
    /// Added latency of every call.
    pub latency_ms: u32,
    /// Extra latency, uniform from 0 to this.
    pub jitter_ms: u32,
    /// An outage window (Unix seconds on the simulated clock): start, and end (exclusive)
    /// or none.
    pub outage: Option<(i64, Option<i64>)>,
}

impl Fault {
    /// Whether the fault does nothing (a request to remove it).
    pub fn is_noop(&self) -> bool {
        (self.rate <= 0.0 || self.code == tonic::Code::Ok)
            && self.latency_ms == 0
            && self.jitter_ms == 0
            && self.outage.is_none()
    }
}

/// What to do with one call.
#[derive(Debug, Default)]
pub struct Decision {
    pub delay: Duration,
    pub fail: Option<tonic::Status>,
}

/// The faults of every registry of a simulation.
pub struct Faults {
    table: Mutex<BTreeMap<(Registry, String), Fault>>,
    rng: Mutex<ChaCha8Rng>,
}

/// The key of a fault on every method.
pub const ALL_METHODS: &str = "*";

impl Faults {
    pub fn new(seed: u64) -> Faults {
        Faults { table: Mutex::new(BTreeMap::new()), rng: Mutex::new(stream(seed, Stream::Faults)) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Registry, String), Fault>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or, for a no-op fault, removes) the fault of `method` ("/pkg.Service/Method"
    /// or "*") on `registry`. Returns how many methods it now applies to: 0 when the
    /// method is not served by the registry or the fault was removed.
    pub fn set(&self, registry: Registry, method: &str, fault: Fault) -> u32 {
        let count = if method == ALL_METHODS {
            registry.methods().len() as u32
        } else if registry.method_paths().iter().any(|m| m == method) {
            1
        } else {
            return 0;
        };
        let key = (registry, method.to_owned());
        let mut t = self.table();
        if fault.is_noop() {
            t.remove(&key);
            0
        } else {
            t.insert(key, fault);
            count
        }
    }

    /// Removes every fault.
    pub fn clear(&self) {
        self.table().clear();
    }

    /// The fault in force for a call: the method's own, else the registry's "*".
    pub fn get(&self, registry: Registry, path: &str) -> Option<Fault> {
        let t = self.table();
        t.get(&(registry, path.to_owned())).or_else(|| t.get(&(registry, ALL_METHODS.to_owned()))).cloned()
    }

    /// Decides the fate of one call at simulated time `now`.
    pub fn decide(&self, registry: Registry, path: &str, now: i64) -> Decision {
        let Some(f) = self.get(registry, path) else { return Decision::default() };
        let (draw, jitter) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            let draw = rng.random::<u32>();
            let jitter = if f.jitter_ms > 0 { rng.random_range(0..=f.jitter_ms) } else { 0 };
            (draw, jitter)
        };
        let delay = Duration::from_millis(f.latency_ms as u64 + jitter as u64);
        let in_outage = f.outage.is_some_and(|(start, end)| now >= start && end.is_none_or(|e| now < e));
        let fail = if in_outage {
            Some(shep_runtime::status::error(
                tonic::Code::Unavailable,
                format!("{registry} is in a simulated outage"),
                "SIMULATED_OUTAGE",
                [("method", path.to_owned())],
            ))
        } else if f.code != tonic::Code::Ok && (draw as f64) < f.rate as f64 * 4_294_967_296.0 {
            Some(shep_runtime::status::error(
                f.code,
                format!("simulated fault on {path}"),
                "SIMULATED_FAULT",
                [("method", path.to_owned())],
            ))
        } else {
            None
        };
        Decision { delay, fail }
    }
}

/// A registry's server with the simulation's faults applied before its handlers.
#[derive(Clone)]
pub struct Faulty<S> {
    inner: S,
    registry: Registry,
    sim: Arc<Simulation>,
}

impl<S> Faulty<S> {
    pub fn new(inner: S, registry: Registry, sim: Arc<Simulation>) -> Self {
        Faulty { inner, registry, sim }
    }
}

impl<S: NamedService> NamedService for Faulty<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Faulty<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone is ready because the generated servers always are; keep the polled one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let decision = self.sim.faults().decide(self.registry, req.uri().path(), self.sim.now());
        Box::pin(async move {
            if !decision.delay.is_zero() {
                tokio::time::sleep(decision.delay).await;
            }
            if let Some(status) = decision.fail {
                return Ok(status.into_http());
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(code: tonic::Code, rate: f32) -> Fault {
        Fault { code, rate, latency_ms: 0, jitter_ms: 0, outage: None }
    }

    #[test]
    fn set_counts_methods_and_removes_noops() {
        let f = Faults::new(1);
        assert_eq!(f.set(Registry::GbdFl, "*", fault(tonic::Code::Unavailable, 1.0)), 2);
        assert_eq!(
            f.set(Registry::GbdFl, "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson", fault(tonic::Code::Internal, 1.0)),
            1
        );
        assert_eq!(
            f.set(Registry::GbdFl, "/kz.gov.bmg.v1.MobileRegistry/GetMobileNumber", fault(tonic::Code::Internal, 1.0)),
            0
        );
        let d = f.decide(Registry::GbdFl, "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson", 0);
        assert_eq!(d.fail.unwrap().code(), tonic::Code::Internal);
        let d = f.decide(Registry::GbdFl, "/kz.gov.gbdfl.v1.PersonRegistry/GetPersons", 0);
        assert_eq!(d.fail.unwrap().code(), tonic::Code::Unavailable);
        assert!(f.decide(Registry::Bmg, "/kz.gov.bmg.v1.MobileRegistry/GetMobileNumber", 0).fail.is_none());
        assert_eq!(f.set(Registry::GbdFl, "*", fault(tonic::Code::Unavailable, 0.0)), 0);
        f.clear();
        assert!(f.get(Registry::GbdFl, "/kz.gov.gbdfl.v1.PersonRegistry/GetPerson").is_none());
    }

    #[test]
    fn rates_latency_and_outages() {
        let f = Faults::new(2);
        f.set(Registry::Bmg, "*", fault(tonic::Code::Unavailable, 0.3));
        let fails = (0..2_000)
            .filter(|_| f.decide(Registry::Bmg, "/kz.gov.bmg.v1.MobileRegistry/GetMobileNumber", 0).fail.is_some())
            .count();
        assert!((450..750).contains(&fails), "{fails}");
        f.set(Registry::Bmg, "*", Fault { latency_ms: 5, jitter_ms: 10, ..fault(tonic::Code::Ok, 0.0) });
        for _ in 0..50 {
            let d = f.decide(Registry::Bmg, "/x", 0);
            assert!(d.fail.is_none());
            assert!((5..=15).contains(&(d.delay.as_millis() as u64)));
        }
        f.set(Registry::Bmg, "*", Fault { outage: Some((100, Some(200))), ..fault(tonic::Code::Ok, 0.0) });
        assert!(f.decide(Registry::Bmg, "/x", 99).fail.is_none());
        assert_eq!(f.decide(Registry::Bmg, "/x", 100).fail.unwrap().code(), tonic::Code::Unavailable);
        assert!(f.decide(Registry::Bmg, "/x", 200).fail.is_none());
        f.set(Registry::Bmg, "*", Fault { outage: Some((100, None)), ..fault(tonic::Code::Ok, 0.0) });
        assert!(f.decide(Registry::Bmg, "/x", i64::MAX).fail.is_some());
    }
}
