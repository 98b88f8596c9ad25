//! Mutual TLS on rustls: a server configuration that requires client certificates chained
//! to the configured CA and not revoked by its CRL, kept in an [`ArcSwap`] and rebuilt when
//! any of its files changes on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}{hint}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error, hint: String },
    #[error("{what} {path} holds no usable PEM data: {why}")]
    Pem { what: &'static str, path: PathBuf, why: String },
    #[error("TLS configuration from {cert} is unusable: {why}")]
    Config { cert: PathBuf, why: String },
}

fn hint(path: &Path) -> String {
    // Name the command that makes the files of the dev PKI.
    let dir = path.parent().map(|d| d.display().to_string()).unwrap_or_else(|| ".".into());
    let dir = if dir.is_empty() { ".".into() } else { dir };
    format!(" (create a development PKI with `shep pki init --dir {dir}`, or fix the path in the config)")
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
        hint: hint(path),
    })
}

/// Reads every certificate of a PEM file.
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what, path: path.to_owned(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what, path: path.to_owned(), why: "no CERTIFICATE block".into() });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::Pem { what: "private key", path: path.to_owned(), why: e.to_string() })
}

/// Reads every CRL of a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read("CRL", path)?;
    CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { what: "CRL", path: path.to_owned(), why: e.to_string() })
}

fn roots(cfg: &TlsConfig) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs("CA bundle", &cfg.ca)? {
        roots.add(c).map_err(|e| TlsError::Pem {
            what: "CA bundle",
            path: cfg.ca.clone(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Builds the server configuration: TLS 1.3 only, client certificate required and
/// verified against the CA and the CRL, ALPN `h2`.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(roots(cfg)?);
    let mut verifier = WebPkiClientVerifier::builder(roots);
    if let Some(crl) = &cfg.crl {
        verifier = verifier.with_crls(load_crls(crl)?).only_check_end_entity_revocation();
    }
    let err = |why: String| TlsError::Config { cert: cfg.cert.clone(), why };
    let verifier = verifier.build().map_err(|e| err(e.to_string()))?;
    let certs = load_certs("certificate", &cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let mut sc = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| err(e.to_string()))?;
    sc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(sc))
}

/// Builds the client configuration of a node calling another: TLS 1.3 only, the server
/// verified against the CA bundle, our certificate as the client identity, ALPN `h2`.
pub fn client_config(cfg: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots(cfg)?;
    let certs = load_certs("certificate", &cfg.cert)?;
    let key = load_key(&cfg.key)?;
    let mut cc = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| TlsError::Config { cert: cfg.cert.clone(), why: e.to_string() })?;
    cc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cc))
}

/// A server configuration that follows its files on disk.
#[derive(Clone)]
pub struct ReloadingServerConfig {
    cfg: TlsConfig,
    current: Arc<ArcSwap<ServerConfig>>,
    stamp: Arc<std::sync::Mutex<Vec<Option<SystemTime>>>>,
}

impl ReloadingServerConfig {
    /// Loads the files once; fails when they are missing or unusable.
    pub fn new(cfg: TlsConfig) -> Result<Self, TlsError> {
        let sc = server_config(&cfg)?;
        let stamp = stamps(&cfg);
        Ok(ReloadingServerConfig {
            cfg,
            current: Arc::new(ArcSwap::new(sc)),
            stamp: Arc::new(std::sync::Mutex::new(stamp)),
        })
    }

    /// The configuration a new handshake uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Rebuilds now when a file changed since the last load. Returns whether it reloaded.
    /// On a broken file the old configuration stays in force and the error is returned.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.cfg);
        let mut last = self.stamp.lock().expect("stamp lock");
        if *last == now {
            return Ok(false);
        }
        let sc = server_config(&self.cfg)?;
        self.current.store(sc);
        *last = now;
        Ok(true)
    }

    /// Checks the files every `reload_interval_ms` until the returned task is aborted.
    pub fn spawn_watcher(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let every = Duration::from_millis(self.cfg.reload_interval_ms.max(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match this.reload_if_changed() {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(cert = %this.cfg.cert.display(), "TLS files changed: reloaded")
                    }
                    Ok(false) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(error = %e, "TLS files changed but cannot be loaded; keeping the previous configuration")
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

fn stamps(cfg: &TlsConfig) -> Vec<Option<SystemTime>> {
    [Some(&cfg.ca), Some(&cfg.cert), Some(&cfg.key), cfg.crl.as_ref()]
        .into_iter()
        .map(|p| p.and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()))
        .collect()
}

/// The TLS settings of a client of another node: tonic's client config with our
/// certificate as the client identity and the CA bundle as roots.
pub fn client_tls(cfg: &TlsConfig, server_name: &str) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let ca = read("CA bundle", &cfg.ca)?;
    let cert = read("certificate", &cfg.cert)?;
    let key = read("private key", &cfg.key)?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name(server_name.to_owned()))
}

/// A lazily connecting channel to `https://addr` with mutual TLS.
pub fn channel(cfg: &TlsConfig, url: &str) -> Result<tonic::transport::Channel, TlsError> {
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| TlsError::Config {
        cert: cfg.cert.clone(),
        why: format!("bad endpoint {url:?}: {e}"),
    })?;
    let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_owned();
    let endpoint = tonic::transport::Endpoint::from(uri)
        .tls_config(client_tls(cfg, &host)?)
        .map_err(|e| TlsError::Config { cert: cfg.cert.clone(), why: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A connection window well above the stream window: streams whose reader pauses (a
        // diff stream while its reader waits for a worker) hold at most their stream window
        // each, and leave room for the other calls on the connection.
        .initial_stream_window_size(Some(2 << 20))
        .initial_connection_window_size(Some(32 << 20));
    Ok(endpoint.connect_lazy())
}
