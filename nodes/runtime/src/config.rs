//! Configuration: a TOML file, then environment overrides, then validation.
//!
//! Any setting can be overridden by an environment variable named `SHEP__` followed by
//! its path in upper case with `__` between the parts: `SHEP__TLS__CERT=/etc/shep/x.pem`
//! sets `tls.cert`, `SHEP__LISTEN=0.0.0.0:7002` sets `listen`. The value is read as a TOML
//! value when it parses as one (numbers, booleans, arrays), else as a string.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "SHEP__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment override {var} is invalid: {why}")]
    Env { var: String, why: String },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The settings every node has.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's system id; must be the one its certificate names.
    pub system: String,
    /// Address to listen on ("127.0.0.1:7002"; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Mutual TLS files.
    pub tls: TlsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Systems allowed to call this node (by certificate); empty allows every system whose
    /// certificate chains to the CA. Registries behind the bus allow `["bus", "operator"]`.
    #[serde(default)]
    pub allowed_callers: Vec<String>,
}

impl NodeConfig {
    /// A node of `system` listening on `listen`, with its files in a PKI directory made by
    /// `shep pki init` (and default logging and limits).
    pub fn from_pki_dir(system: &str, listen: SocketAddr, pki_dir: &Path) -> Self {
        NodeConfig {
            system: system.to_owned(),
            listen,
            tls: TlsConfig::from_pki_dir(pki_dir, system),
            log: LogConfig::default(),
            limits: Limits::default(),
            allowed_callers: vec![],
        }
    }
}

/// Mutual TLS: the node's own certificate and key, the CA that client certificates must
/// chain to, and optionally the CA's CRL. All four are re-read when they change on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA bundle trusted for client (and upstream server) certificates.
    pub ca: PathBuf,
    /// PEM file of this node's certificate (chain).
    pub cert: PathBuf,
    /// PEM file of this node's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM file of the CA's certificate revocation list; none means no revocation checks.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// How often the files are checked for changes, in milliseconds.
    #[serde(default = "default_reload_ms")]
    pub reload_interval_ms: u64,
    /// How long a client has to finish the TLS handshake, in milliseconds.
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_reload_ms() -> u64 {
    1000
}
fn default_handshake_ms() -> u64 {
    5000
}

impl TlsConfig {
    /// The files of `system` in a PKI directory made by `shep pki init`.
    pub fn from_pki_dir(dir: &Path, system: &str) -> Self {
        TlsConfig {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{system}.pem")),
            key: dir.join(format!("{system}.key")),
            crl: Some(dir.join("crl.pem")),
            reload_interval_ms: default_reload_ms(),
            handshake_timeout_ms: default_handshake_ms(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// "human" (default) or "json" (one JSON object per line).
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter ("info", "shep_bus=debug,info"); `RUST_LOG` wins when set.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, level: default_level() }
    }
}

fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Limits of the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest message accepted or sent, in bytes (gRPC RESOURCE_EXHAUSTED beyond it).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// How long in-flight calls may run after SIGINT/SIGTERM before they are cut, in ms.
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message_bytes: default_max_message(), shutdown_grace_ms: default_grace_ms() }
    }
}

fn default_max_message() -> usize {
    4 * 1024 * 1024
}
fn default_grace_ms() -> u64 {
    10_000
}

/// Reads `path` (when given), applies the `SHEP__` overrides from `env`, and deserializes.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax { path: p.to_owned(), message: e.to_string() })?
        }
        None => toml::Table::new(),
    };
    apply_env(&mut table, env)?;
    let origin = path.map(|p| p.display().to_string()).unwrap_or_else(|| "(environment)".into());
    T::deserialize(toml::Value::Table(table))
        .map_err(|e| ConfigError::Invalid { origin, message: e.to_string().trim().to_owned() })
}

/// Applies `SHEP__A__B=value` overrides to a TOML table.
pub fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some(path) = var.strip_prefix(ENV_PREFIX) else { continue };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(String::is_empty) {
            return Err(ConfigError::Env { var, why: "empty path segment".into() });
        }
        let value = parse_env_value(&raw);
        let (last, parents) = parts.split_last().expect("at least one part");
        let mut cur = &mut *table;
        for p in parents {
            let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env { var, why: format!("`{p}` is not a table") });
                }
            };
        }
        cur.insert(last.clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse as the right-hand side of a TOML key; a bare word stays a string.
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.toml");
        std::fs::write(
            &p,
            r#"
system = "gbd-fl"
listen = "127.0.0.1:7002"
[tls]
ca = "ca.pem"
cert = "gbd-fl.pem"
key = "gbd-fl.key"
"#,
        )
        .unwrap();
        let cfg: NodeConfig = load(
            Some(&p),
            env(&[
                ("SHEP__LISTEN", "0.0.0.0:9000"),
                ("SHEP__TLS__CRL", "/x/crl.pem"),
                ("SHEP__LIMITS__MAX_MESSAGE_BYTES", "1024"),
                ("SHEP__LOG__FORMAT", "json"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.tls.crl.as_deref(), Some(Path::new("/x/crl.pem")));
        assert_eq!(cfg.limits.max_message_bytes, 1024);
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(cfg.tls.reload_interval_ms, 1000);
    }

    #[test]
    fn errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "system = \n").unwrap();
        let e = load::<NodeConfig>(Some(&p), vec![]).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("not valid TOML"), "{e}");

        std::fs::write(&p, "system = \"x\"\nlisten = \"127.0.0.1:1\"\nlistne = 1\n[tls]\nca=\"a\"\ncert=\"b\"\nkey=\"c\"\n").unwrap();
        let e = load::<NodeConfig>(Some(&p), vec![]).unwrap_err().to_string();
        assert!(e.contains("listne"), "{e}");

        let e = load::<NodeConfig>(Some(&dir.path().join("missing.toml")), vec![]).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");

        let e = load::<NodeConfig>(None, env(&[("SHEP__LISTEN", "nowhere")])).unwrap_err().to_string();
        assert!(e.contains("missing field") || e.contains("invalid"), "{e}");
    }
}
