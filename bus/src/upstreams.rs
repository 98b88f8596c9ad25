//! The mutual-TLS channels to the upstream systems, following the bus's own TLS files.
//!
//! The bus presents its certificate to every upstream. When that certificate, its key or
//! the CA bundle change on disk (rotation), the watcher ([`Upstreams::spawn_watcher`])
//! builds new channels from the new files and swaps them in: calls started from then on
//! connect with the new identity, calls in flight finish on the old connections, which
//! close once their last call has ended. Files are read again only once they have stayed
//! unchanged for one check interval (a key and its certificate are written one after the
//! other); files that cannot be loaded leave the current channels in force.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{BusSettings, UpstreamSettings};
use crate::upstream_client::UpstreamClient;

/// The channels by system id; cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    current: Arc<ArcSwap<HashMap<String, UpstreamClient>>>,
    tls: shep_runtime::TlsConfig,
    /// (system, endpoint) of every system with an endpoint.
    endpoints: Arc<Vec<(String, String)>>,
    settings: UpstreamSettings,
}

impl Upstreams {
    /// Builds (lazily connecting) channels to every system of `settings` with an endpoint.
    pub fn connect(tls: &shep_runtime::TlsConfig, settings: &BusSettings) -> Result<Self, String> {
        let endpoints: Vec<(String, String)> = settings
            .systems
            .iter()
            .filter_map(|(id, s)| s.endpoint.clone().map(|ep| (id.clone(), ep)))
            .collect();
        let channels = build(tls, &endpoints, &settings.upstream)?;
        Ok(Upstreams {
            current: Arc::new(ArcSwap::from_pointee(channels)),
            tls: tls.clone(),
            endpoints: Arc::new(endpoints),
            settings: settings.upstream.clone(),
        })
    }

    /// The current channel to `system`.
    pub fn get(&self, system: &str) -> Option<UpstreamClient> {
        self.current.load().get(system).cloned()
    }

    /// Builds every channel again from the TLS files as they are now.
    pub fn rebuild(&self) -> Result<(), String> {
        let channels = build(&self.tls, &self.endpoints, &self.settings)?;
        self.current.store(Arc::new(channels));
        Ok(())
    }

    /// Checks the bus's TLS files every `tls.reload_interval_ms` and rebuilds the channels
    /// when they changed (and then stayed put for one interval), until `shutdown`.
    pub fn spawn_watcher(&self, shutdown: shep_runtime::Shutdown) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let every = Duration::from_millis(self.tls.reload_interval_ms.max(50));
        tokio::spawn(async move {
            let mut loaded = stamps(&this.tls);
            let mut seen = loaded.clone();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait() => return,
                }
                let now = stamps(&this.tls);
                let settled = now == seen;
                seen = now;
                if !settled || seen == loaded {
                    continue;
                }
                match this.rebuild() {
                    Ok(()) => {
                        tracing::info!(cert = %this.tls.cert.display(), "the bus's TLS files changed: new connections to upstreams use them");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the bus's TLS files changed but cannot be loaded; upstream connections keep the previous ones");
                    }
                }
                // Broken files are not retried until they change again.
                loaded = seen.clone();
            }
        })
    }
}

fn build(
    tls: &shep_runtime::TlsConfig,
    endpoints: &[(String, String)],
    settings: &UpstreamSettings,
) -> Result<HashMap<String, UpstreamClient>, String> {
    endpoints
        .iter()
        .map(|(id, ep)| {
            UpstreamClient::new(tls, ep, settings)
                .map(|ch| (id.clone(), ch))
                .map_err(|e| format!("bus.systems.{id}: {e}"))
        })
        .collect()
}

/// Modification time and length of the files the client identity is made of.
fn stamps(tls: &shep_runtime::TlsConfig) -> Vec<Option<(SystemTime, u64)>> {
    [&tls.ca, &tls.cert, &tls.key]
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}
