//! Serving a node: the one path by which every shep node listens.
//!
//! [`NodeBuilder`] takes the node's gRPC services and the descriptor sets of their
//! contracts, and adds what every node has: `grpc.health.v1.Health` with a status per
//! service, server reflection in both `grpc.reflection.v1` and `v1alpha`, the caller's
//! identity in every request, and UNIMPLEMENTED (HTTP 200, grpc-status 12) for unknown
//! methods. [`NodeBuilder::start`] binds, serves mutual TLS, and returns a [`RunningNode`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::NodeConfig;
use crate::identity::{AllowCallersLayer, PeerIdentityLayer};
use crate::incoming::tls_incoming;
use crate::tls::{ReloadingServerConfig, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{system}: cannot listen on {addr}: {source} (is another process using the port? change `listen` in the config)")]
    Bind { system: String, addr: SocketAddr, source: std::io::Error },
    #[error("{system}: {source}")]
    Tls { system: String, source: TlsError },
    #[error("{system}: reflection: {why}")]
    Reflection { system: String, why: String },
    #[error("{system}: server failed: {why}")]
    Serve { system: String, why: String },
}

/// A shutdown signal shared by the nodes of a process.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { tx: watch::channel(false).0 }
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown of everything that waits on this signal.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the shutdown was triggered.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Triggers on SIGINT or SIGTERM.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
            tracing::info!("shutdown requested: finishing in-flight calls");
            this.trigger();
        });
    }
}

/// Builds a node: its services, the descriptor sets for reflection, and the fallback.
pub struct NodeBuilder {
    config: NodeConfig,
    routes: RoutesBuilder,
    services: Vec<String>,
    descriptor_sets: Vec<&'static [u8]>,
}

impl NodeBuilder {
    pub fn new(config: NodeConfig) -> Self {
        NodeBuilder { config, routes: RoutesBuilder::default(), services: vec![], descriptor_sets: vec![] }
    }

    /// Adds a gRPC service; its health status starts SERVING.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME.to_owned());
        self.routes.add_service(svc);
        self
    }

    /// Registers an encoded `FileDescriptorSet` with the reflection service.
    pub fn descriptor_set(mut self, fds: &'static [u8]) -> Self {
        self.descriptor_sets.push(fds);
        self
    }

    /// Health status name of a service the node serves through a fallback (the bus).
    pub fn health_name(mut self, service: &str) -> Self {
        self.services.push(service.to_owned());
        self
    }

    /// Gives direct access to the routes (the bus installs its forwarding fallback here).
    pub fn routes_mut(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// Binds, starts serving, and returns once the node listens.
    pub async fn start(self, shutdown: Shutdown) -> Result<RunningNode, NodeError> {
        let NodeBuilder { config, mut routes, services, descriptor_sets } = self;
        let system = config.system.clone();
        let tls = ReloadingServerConfig::new(config.tls.clone())
            .map_err(|source| NodeError::Tls { system: system.clone(), source })?;
        let listener = TcpListener::bind(config.listen).await.map_err(|source| NodeError::Bind {
            system: system.clone(),
            addr: config.listen,
            source,
        })?;
        let addr = listener.local_addr().expect("bound socket has an address");

        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_service_status("", ServingStatus::Serving).await;
        for s in &services {
            health.set_service_status(s, ServingStatus::Serving).await;
        }
        routes.add_service(health_svc);

        let refl_err = |e: tonic_reflection::server::Error| NodeError::Reflection {
            system: system.clone(),
            why: e.to_string(),
        };
        let mut v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let mut v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for fds in &descriptor_sets {
            v1 = v1.register_encoded_file_descriptor_set(fds);
            v1alpha = v1alpha.register_encoded_file_descriptor_set(fds);
        }
        // Advertise what this node serves, not every service of the descriptor sets.
        let advertised = services.iter().map(String::as_str).chain([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]);
        for name in advertised {
            v1 = v1.with_service_name(name);
            v1alpha = v1alpha.with_service_name(name);
        }
        routes.add_service(v1.build_v1().map_err(refl_err)?);
        routes.add_service(v1alpha.build_v1alpha().map_err(refl_err)?);

        let watcher = tls.spawn_watcher();
        // Triggered when the grace period after the shutdown signal runs out: every
        // connection still open fails its next read or write.
        let cut = Shutdown::new();
        let (incoming, acceptor) = tls_incoming(
            listener,
            tls,
            Duration::from_millis(config.tls.handshake_timeout_ms),
            shutdown.clone(),
            cut.clone(),
        );
        let grace = Duration::from_millis(config.limits.shutdown_grace_ms);
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(PeerIdentityLayer)
            .layer(AllowCallersLayer::new(config.allowed_callers.clone()))
            .add_routes(routes.routes());

        let sd = shutdown.clone();
        let health_sd = health.clone();
        let services_sd = services.clone();
        let signal = async move {
            sd.wait().await;
            health_sd.set_service_status("", ServingStatus::NotServing).await;
            for s in &services_sd {
                health_sd.set_service_status(s, ServingStatus::NotServing).await;
            }
        };
        let sys = system.clone();
        let sd = shutdown.clone();
        let task = tokio::spawn(async move {
            let serve = server.serve_with_incoming_shutdown(incoming, signal);
            let cut_after_grace = async {
                sd.wait().await;
                tokio::time::sleep(grace).await;
            };
            let res = tokio::select! {
                r = serve => r.map_err(|e| NodeError::Serve { system: sys.clone(), why: e.to_string() }),
                _ = cut_after_grace => {
                    tracing::warn!(system = %sys, grace_ms = grace.as_millis() as u64, "in-flight calls did not finish within the grace period; cutting them");
                    Ok(())
                }
            };
            cut.trigger();
            watcher.abort();
            acceptor.abort();
            res
        });
        tracing::info!(%system, %addr, services = ?services, "listening (mutual TLS)");
        Ok(RunningNode { system, addr, health, services, task })
    }
}

/// A node that listens.
pub struct RunningNode {
    pub system: String,
    pub addr: SocketAddr,
    pub health: HealthReporter,
    pub services: Vec<String>,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// Waits until the node has stopped (after the shutdown signal).
    pub async fn wait(self) -> Result<(), NodeError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(NodeError::Serve { system: self.system, why: e.to_string() }),
        }
    }
}
