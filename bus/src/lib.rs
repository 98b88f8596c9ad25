//! The integration bus (ShEP): every call between nodes goes through it.
//!
//! A caller connects with mutual TLS; the bus reads the caller's system from its
//! certificate, finds the upstream serving the called gRPC service in its routing table,
//! checks the access matrix, the caller's limits, the identifiers in the request and the
//! data subject's KDP consent, and forwards the HTTP/2 request as is to the upstream with
//! its own certificate, telling the upstream the original caller in `x-shep-caller`. A
//! unary answer is held until the call's audit record is committed; a stream's decision is
//! committed before it is forwarded and its completion before its final status reaches the
//! caller. See [`forward`] for the stages.
//!
//! Modules, one decision each (pure functions where possible):
//! - [`config`]: [`BusSettings`], section `[bus]` of the bus node's TOML;
//! - [`routing`]: service → upstream; [`policy`]: what the contracts' options say of each
//!   method (subject field, KDP scope, identifier fields) and the checks on a request;
//! - [`access`]: the access matrix; [`limits`]: rate and concurrency per caller;
//! - [`consent`]: the token decision and the KDP key and revocation feed;
//! - [`audit`]: the hash-chained log (journal files with group commit, moved into a SQLite
//!   archive off the commit path), [`audit::verify`],
//!   [`audit::subject_accesses`];
//! - [`gate`]: the stages shared by every path in and the audit of a call; [`forward`]: the
//!   forwarder; [`envelope`]: `SyncChannel/SendMessage`; [`admin`]:
//!   `BusAdmin`; [`health`]: upstream health; [`upstreams`]: the channels to upstreams,
//!   rebuilt when the bus's certificate is rotated; [`metrics`]: Prometheus; [`wire`]: framing,
//!   `grpc-timeout`, `traceparent`.
//!
//! Refusals are gRPC statuses with an ErrorInfo (domain `shep.kz`): `SCE004` unknown
//! service or method (UNIMPLEMENTED), `ACCESS_DENIED` (PERMISSION_DENIED, the refusing
//! rule in the metadata), `RATE_LIMITED` / `TOO_MANY_CONCURRENT_CALLS` (RESOURCE_EXHAUSTED
//! with RetryInfo), `MESSAGE_TOO_LARGE` (RESOURCE_EXHAUSTED), `SCE001` malformed request or
//! identifier (INVALID_ARGUMENT with a BadRequest field violation), the consent reasons of
//! [`shep_consent::Refusal::reason`] (UNAUTHENTICATED for a missing token,
//! PERMISSION_DENIED otherwise), `CONSENT_KEY_UNAVAILABLE` / `CONSENT_REVOCATIONS_STALE`
//! (UNAVAILABLE: the bus cannot verify consent, fail closed), `UPSTREAM_UNAVAILABLE`
//! (UNAVAILABLE) and `UPSTREAM_TIMEOUT` / `DEADLINE_EXCEEDED` (DEADLINE_EXCEEDED) naming the
//! upstream, `AUDIT_UNAVAILABLE` (UNAVAILABLE).

pub use gate::TokenClock;

pub mod access;
pub mod admin;
pub mod audit;
pub mod config;
pub mod consent;
pub mod envelope;
pub mod forward;
pub mod gate;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod routing;
pub mod upstream_client;
pub mod upstreams;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use audit::{AuditError, AuditRecord, VerifyReport};
pub use config::BusSettings;
pub use gate::CALLER_HEADER;

use shep_proto::shep::bus_admin_server::BusAdminServer;
use shep_proto::shep::sync_channel_server::SyncChannelServer;
use shep_runtime::{NodeBuilder, NodeConfig, RunningNode, Shutdown};

/// Why the bus could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Node(#[from] shep_runtime::node::NodeError),
    #[error("bus metrics endpoint on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bus that listens.
pub struct RunningBus {
    /// The gRPC (mutual TLS) address.
    pub addr: SocketAddr,
    /// The Prometheus endpoint (`http://ADDR/metrics`).
    pub metrics_addr: SocketAddr,
    node: RunningNode,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    core: Arc<gate::Core>,
}

impl RunningBus {
    /// Waits until the bus has stopped (after the shutdown signal).
    pub async fn wait(self) -> Result<(), BusError> {
        let r = self.node.wait().await;
        for t in &self.tasks {
            t.abort();
        }
        drop(self.core);
        r.map_err(BusError::from)
    }

    /// True once KDP's key is known and its revocation feed is followed live: from then
    /// on personal-data calls can be allowed.
    pub fn consent_ready(&self) -> bool {
        self.core.consent.has_key() && self.core.consent.feed_connected()
    }

    /// The audit log's file.
    pub fn audit_path(&self) -> &std::path::Path {
        self.core.audit.path()
    }

    /// The routed services, sorted.
    pub fn services(&self) -> Vec<String> {
        self.core.routes.services()
    }
}

/// Starts the bus: reads the descriptors, opens the audit log, connects (lazily) to the
/// upstreams, starts fetching KDP's key and following its revocations in the background
/// (personal-data calls are refused until both are current), and listens.
pub async fn start(
    node: NodeConfig,
    settings: BusSettings,
    shutdown: Shutdown,
) -> Result<RunningBus, BusError> {
    start_with_token_clock(node, settings, shutdown, gate::system_token_clock()).await
}

/// As [`start`], judging consent tokens' expiry by `token_clock` (unix seconds): a
/// topology on a simulation's manual clock passes that clock, since KDP issues tokens on it.
pub async fn start_with_token_clock(
    node: NodeConfig,
    settings: BusSettings,
    shutdown: Shutdown,
    token_clock: gate::TokenClock,
) -> Result<RunningBus, BusError> {
    settings.validate().map_err(BusError::Config)?;
    let mut extra = vec![];
    for p in &settings.descriptor_sets {
        let bytes = std::fs::read(p).map_err(|e| {
            BusError::Config(format!(
                "bus.descriptor_sets: cannot read {}: {e}",
                p.display()
            ))
        })?;
        extra.push(bytes);
    }
    let pool = policy::pool(&extra).map_err(BusError::Config)?;
    let routes = routing::RouteTable::from_settings(&settings);
    let policies = policy::PolicyBook::new(pool, &routes.services()).map_err(BusError::Config)?;
    let audit = audit::AuditLog::open(&settings.audit)?;

    let upstreams =
        upstreams::Upstreams::connect(&node.tls, &settings).map_err(BusError::Config)?;
    let consent = consent::ConsentState::new(
        Duration::from_millis(settings.consent.revocations_stale_after_ms),
        settings.consent.max_token_lifetime_secs,
        token_clock.clone(),
    );
    let mut tasks = consent::spawn_kdp_tasks(
        upstreams.clone(),
        settings.consent.kdp_system.clone(),
        consent.clone(),
        Duration::from_millis(settings.consent.key_refresh_ms),
        Duration::from_millis(settings.consent.retry_max_ms),
        shutdown.clone(),
    );
    tasks.push(upstreams.spawn_watcher(shutdown.clone()));
    let max = settings.limits.max_message_bytes;
    let metrics_listen = settings.metrics_listen;
    let health_interval = Duration::from_millis(settings.upstream.health_interval_ms);
    let core = Arc::new(gate::Core {
        access: access::AccessMatrix::new(settings.access.clone()),
        settings,
        routes,
        policies,
        limiter: limits::Limiter::default(),
        consent,
        audit,
        metrics: metrics::Metrics::default(),
        upstreams,
        token_clock,
    });

    let mut builder = NodeBuilder::new(node)
        .add_service(
            SyncChannelServer::new(envelope::Envelope::new(core.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            BusAdminServer::new(admin::Admin::new(core.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .descriptor_set(shep_proto::FILE_DESCRIPTOR_SET);
    for bytes in extra {
        builder = builder.descriptor_set(Box::leak(bytes.into_boxed_slice()));
    }
    for svc in core.routes.services() {
        builder = builder.health_name(&svc);
    }
    let routes = std::mem::take(builder.routes_mut());
    let router = routes
        .routes()
        .into_axum_router()
        .fallback_service(forward::Gateway::new(core.clone()));
    *builder.routes_mut() = tonic::service::RoutesBuilder::from(router);
    let running = builder.start(shutdown.clone()).await?;
    // Until the first poll, a routed service is as healthy as its upstream is known to be.
    for svc in core.routes.services() {
        running
            .health
            .set_service_status(&svc, tonic_health::ServingStatus::NotServing)
            .await;
    }
    tasks.push(health::spawn_poller(
        core.clone(),
        running.health.clone(),
        health_interval,
        shutdown.clone(),
    ));

    let c = core.clone();
    let render = move || {
        c.metrics
            .render(
                c.audit.queue_depth(),
                c.consent.feed_connected(),
                c.consent.revocations_kept(),
            )
    };
    let (metrics_addr, mtask) = metrics::serve(metrics_listen, render, shutdown.clone())
        .await
        .map_err(|source| BusError::Metrics {
            addr: metrics_listen,
            source,
        })?;
    tasks.push(mtask);
    tracing::info!(addr = %running.addr, %metrics_addr, routes = core.routes.services().len(), audit = %core.audit.path().display(), "bus listening");
    Ok(RunningBus {
        addr: running.addr,
        metrics_addr,
        node: running,
        tasks,
        core,
    })
}
