//! What every shep node shares.
//!
//! - [`tls`]: the rustls server configuration with client certificates required, CRLs, and
//!   reload from disk without a restart; the client side for calls between nodes.
//! - [`incoming`]: the accept loop: handshakes in their own tasks with a timeout, feeding
//!   tonic's `serve_with_incoming`.
//! - [`identity`]: the caller's [`Caller`] (its system id, read from its certificate once
//!   per connection), put in every request's extensions by a tower layer.
//! - [`node`]: [`NodeBuilder`] — services, health, reflection (v1 and v1alpha), graceful
//!   shutdown — the one way a node is served.
//! - [`config`]: TOML configuration with environment overrides.
//! - [`logging`]: `tracing` set-up, human or JSON.
//! - [`status`]: gRPC statuses with rich details (ErrorInfo, BadRequest).

pub mod batch;
pub mod config;
pub mod identity;
pub mod incoming;
pub mod logging;
pub mod node;
pub mod status;
pub mod tls;

pub use config::{ConfigError, LogConfig, NodeConfig, TlsConfig};
pub use identity::{AllowCallersLayer, Caller, PeerIdentityLayer};
pub use node::{NodeBuilder, RunningNode, Shutdown};

/// Installs the one rustls crypto provider of the process (aws-lc-rs). Idempotent; call
/// it at the top of every binary and test harness.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
