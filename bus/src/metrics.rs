//! Prometheus metrics, in the text exposition format, on a plain-HTTP port of their own.
//!
//! - `shep_bus_calls_total{caller,method,code}`: calls by caller, method and final status;
//! - `shep_bus_call_duration_seconds{method}`: latency histogram;
//! - `shep_bus_consent_refusals_total{reason}`: consent refusals by reason;
//! - `shep_bus_refusals_total{reason}`: every refusal by the bus, by reason;
//! - `shep_bus_audit_queue_depth`: audit records waiting for their commit;
//! - `shep_bus_upstream_up{service,system}`: 1 when the upstream's health check says
//!   SERVING;
//! - `shep_bus_consent_feed_connected`: 1 while KDP's revocation feed is followed live;
//! - `shep_bus_consent_revocations`: revoked token ids and consents kept (bounded by the
//!   longest token lifetime).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

/// The canonical name of a gRPC code ("OK", "PERMISSION_DENIED").
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// caller → method → code → calls (nested so that a call allocates no key once seen).
    calls: BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, u64>>>,
    latency: BTreeMap<String, Histogram>,
    consent_refusals: BTreeMap<String, u64>,
    refusals: BTreeMap<String, u64>,
    upstream_up: BTreeMap<(String, String), bool>,
}

/// The bus's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// A call ended with `code` after `elapsed`.
    pub fn call(&self, caller: &str, method: &str, code: i32, elapsed: Duration) {
        let mut g = self.inner.lock().expect("metrics lock");
        let by_method = match g.calls.get_mut(caller) {
            Some(m) => m,
            None => g.calls.entry(caller.to_owned()).or_default(),
        };
        let by_code = match by_method.get_mut(method) {
            Some(c) => c,
            None => by_method.entry(method.to_owned()).or_default(),
        };
        *by_code.entry(code_name(code)).or_default() += 1;
        let h = match g.latency.get_mut(method) {
            Some(h) => h,
            None => g.latency.entry(method.to_owned()).or_default(),
        };
        h.observe(elapsed.as_secs_f64());
    }

    /// The bus refused a call for `reason`; `consent` when a consent check refused it.
    pub fn refusal(&self, reason: &str, consent: bool) {
        let mut g = self.inner.lock().expect("metrics lock");
        *g.refusals.entry(reason.to_owned()).or_default() += 1;
        if consent {
            *g.consent_refusals.entry(reason.to_owned()).or_default() += 1;
        }
    }

    /// The upstream health of a routed service.
    pub fn upstream(&self, service: &str, system: &str, up: bool) {
        self.inner
            .lock()
            .expect("metrics lock")
            .upstream_up
            .insert((service.to_owned(), system.to_owned()), up);
    }

    /// The text exposition, with the gauges read now.
    pub fn render(
        &self,
        audit_queue_depth: i64,
        feed_connected: bool,
        revocations: usize,
    ) -> String {
        let g = self.inner.lock().expect("metrics lock");
        let mut o = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        o.push_str("# HELP shep_bus_calls_total Calls through the bus by caller, method and final gRPC status.\n");
        o.push_str("# TYPE shep_bus_calls_total counter\n");
        let calls = g.calls.iter().flat_map(|(caller, m)| {
            m.iter().flat_map(move |(method, c)| {
                c.iter().map(move |(code, n)| ((caller, method, code), n))
            })
        });
        for ((caller, method, code), n) in calls {
            let _ = writeln!(
                o,
                "shep_bus_calls_total{{caller=\"{}\",method=\"{}\",code=\"{code}\"}} {n}",
                esc(caller),
                esc(method)
            );
        }
        o.push_str("# HELP shep_bus_call_duration_seconds Time from receipt to the final status, by method.\n");
        o.push_str("# TYPE shep_bus_call_duration_seconds histogram\n");
        for (method, h) in &g.latency {
            let m = esc(method);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "shep_bus_call_duration_seconds_bucket{{method=\"{m}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "shep_bus_call_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "shep_bus_call_duration_seconds_sum{{method=\"{m}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "shep_bus_call_duration_seconds_count{{method=\"{m}\"}} {}",
                h.count
            );
        }
        o.push_str("# HELP shep_bus_consent_refusals_total Personal-data calls refused by the consent check, by reason.\n");
        o.push_str("# TYPE shep_bus_consent_refusals_total counter\n");
        for (reason, n) in &g.consent_refusals {
            let _ = writeln!(
                o,
                "shep_bus_consent_refusals_total{{reason=\"{}\"}} {n}",
                esc(reason)
            );
        }
        o.push_str("# HELP shep_bus_refusals_total Calls refused by the bus, by reason.\n");
        o.push_str("# TYPE shep_bus_refusals_total counter\n");
        for (reason, n) in &g.refusals {
            let _ = writeln!(
                o,
                "shep_bus_refusals_total{{reason=\"{}\"}} {n}",
                esc(reason)
            );
        }
        o.push_str("# HELP shep_bus_audit_queue_depth Audit records waiting for their commit.\n");
        o.push_str("# TYPE shep_bus_audit_queue_depth gauge\n");
        let _ = writeln!(o, "shep_bus_audit_queue_depth {audit_queue_depth}");
        o.push_str(
            "# HELP shep_bus_upstream_up 1 when the upstream reports the service SERVING.\n",
        );
        o.push_str("# TYPE shep_bus_upstream_up gauge\n");
        for ((service, system), up) in &g.upstream_up {
            let _ = writeln!(
                o,
                "shep_bus_upstream_up{{service=\"{}\",system=\"{}\"}} {}",
                esc(service),
                esc(system),
                *up as u8
            );
        }
        o.push_str("# HELP shep_bus_consent_feed_connected 1 while KDP's revocation feed is followed live.\n");
        o.push_str("# TYPE shep_bus_consent_feed_connected gauge\n");
        let _ = writeln!(
            o,
            "shep_bus_consent_feed_connected {}",
            feed_connected as u8
        );
        o.push_str("# HELP shep_bus_consent_revocations Revoked token ids and consents kept.\n");
        o.push_str("# TYPE shep_bus_consent_revocations gauge\n");
        let _ = writeln!(o, "shep_bus_consent_revocations {revocations}");
        o
    }
}

/// Serves `GET /metrics` on `listen` until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    render: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: shep_runtime::Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(),
                )
            }
        }),
    );
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::default();
        m.call("sdu", "/a.B/C", 0, Duration::from_millis(3));
        m.call("sdu", "/a.B/C", 0, Duration::from_millis(30));
        m.call("pep", "/a.B/C", 7, Duration::from_millis(1));
        m.refusal("CONSENT_EXPIRED", true);
        m.refusal("ACCESS_DENIED", false);
        m.upstream("a.B", "gbd-fl", true);
        let t = m.render(3, true, 4);
        assert!(t.contains("shep_bus_consent_revocations 4"), "{t}");
        assert!(
            t.contains("shep_bus_calls_total{caller=\"sdu\",method=\"/a.B/C\",code=\"OK\"} 2"),
            "{t}"
        );
        assert!(t.contains(
            "shep_bus_calls_total{caller=\"pep\",method=\"/a.B/C\",code=\"PERMISSION_DENIED\"} 1"
        ));
        assert!(
            t.contains("shep_bus_call_duration_seconds_bucket{method=\"/a.B/C\",le=\"0.005\"} 2")
        );
        assert!(
            t.contains("shep_bus_call_duration_seconds_bucket{method=\"/a.B/C\",le=\"+Inf\"} 3")
        );
        assert!(t.contains("shep_bus_consent_refusals_total{reason=\"CONSENT_EXPIRED\"} 1"));
        assert!(!t.contains("shep_bus_consent_refusals_total{reason=\"ACCESS_DENIED\"}"));
        assert!(t.contains("shep_bus_audit_queue_depth 3"));
        assert!(t.contains("shep_bus_upstream_up{service=\"a.B\",system=\"gbd-fl\"} 1"));
    }
}
