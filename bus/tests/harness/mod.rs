//! A small world for the bus's tests: a PKI in a temporary directory, test upstreams (GBD
//! FL with a test-only streaming service, GBD UL, KDP backed by a signer the test holds)
//! served with `shep_runtime::NodeBuilder`, and the bus in front of them. Everything on
//! 127.0.0.1 with ports picked by the system.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use shep_bus::BusSettings;
use shep_consent::{Claims, Signer};
use shep_pki::{Pki, Validity};
use shep_proto::{gbdfl, gbdul, kdp, shep};
use shep_runtime::{NodeBuilder, NodeConfig, Shutdown, TlsConfig};
use tokio::sync::{Notify, broadcast};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tonic_types::StatusExt;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A valid IIN (born 15 May 1990, male) with the first serial from `n` up that has a check
/// digit.
pub fn iin(n: u16) -> String {
    (n..)
        .find_map(|s| shep_domain::Iin::from_parts(1990, 5, 15, shep_domain::Sex::Male, s))
        .unwrap()
        .to_string()
}

/// A valid BIN.
pub fn bin(n: u32) -> String {
    (n..)
        .find_map(|s| shep_domain::Bin::from_parts(2005, 3, 4, 0, s))
        .unwrap()
        .to_string()
}

/// The IIN for which the test GBD FL never answers.
pub fn slow_iin() -> String {
    iin(9000)
}
/// The IIN GBD FL does not know (NOT_FOUND).
pub fn missing_iin() -> String {
    iin(9100)
}

/// What an upstream saw: how many calls, the metadata of the last one and the serial of
/// the client certificate it came with.
#[derive(Clone, Default)]
pub struct Seen {
    count: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<http::HeaderMap>>>,
    serial: Arc<Mutex<Option<String>>>,
}

impl Seen {
    fn push<T>(&self, req: &Request<T>) {
        self.count.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap() = Some(req.metadata().clone().into_headers());
        *self.serial.lock().unwrap() = req
            .extensions()
            .get::<shep_runtime::Caller>()
            .map(|c| c.serial.clone());
    }
    /// The serial of the client certificate of the last call.
    pub fn last_serial(&self) -> String {
        self.serial
            .lock()
            .unwrap()
            .clone()
            .expect("the upstream saw a call with a client certificate")
    }
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
    pub fn last(&self) -> http::HeaderMap {
        self.last
            .lock()
            .unwrap()
            .clone()
            .expect("the upstream saw a call")
    }
}

fn person(iin: &str) -> gbdfl::Person {
    gbdfl::Person {
        iin: iin.to_owned(),
        full_name: Some(shep::FullName {
            surname: "Сейткали".into(),
            name: "Айдар".into(),
            patronymic: String::new(),
        }),
        citizenship: "KZ".into(),
        ..Default::default()
    }
}

struct Gbdfl {
    seen: Seen,
}

#[tonic::async_trait]
impl gbdfl::person_registry_server::PersonRegistry for Gbdfl {
    async fn get_person(
        &self,
        req: Request<gbdfl::GetPersonRequest>,
    ) -> Result<Response<gbdfl::Person>, Status> {
        self.seen.push(&req);
        let iin = req.into_inner().iin;
        if iin == slow_iin() {
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        if iin == missing_iin() {
            return Err(shep_runtime::status::not_found("person", &iin));
        }
        let mut resp = Response::new(person(&iin));
        resp.metadata_mut()
            .insert("x-upstream", "gbd-fl".parse().unwrap());
        Ok(resp)
    }

    type GetPersonsStream = BoxStream<gbdfl::PersonResult>;

    async fn get_persons(
        &self,
        req: Request<gbdfl::GetPersonsRequest>,
    ) -> Result<Response<Self::GetPersonsStream>, Status> {
        self.seen.push(&req);
        let items: Vec<_> = req
            .into_inner()
            .iins
            .into_iter()
            .map(|i| {
                Ok(gbdfl::PersonResult {
                    iin: i.clone(),
                    result: Some(gbdfl::person_result::Result::Person(person(&i))),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
}

struct Gbdul {
    cancelled: Arc<Notify>,
}

#[tonic::async_trait]
impl gbdul::organization_registry_server::OrganizationRegistry for Gbdul {
    async fn get_organization(
        &self,
        req: Request<gbdul::GetOrganizationRequest>,
    ) -> Result<Response<gbdul::Organization>, Status> {
        let bin = req.into_inner().bin;
        Ok(Response::new(gbdul::Organization {
            bin,
            ..Default::default()
        }))
    }

    type StreamNameChangesStream = BoxStream<gbdul::NameChange>;

    /// `limit` > 0: that many changes at once. `limit` 0: one change every 50 ms until the
    /// caller goes away, which is then signalled on `cancelled`.
    async fn stream_name_changes(
        &self,
        req: Request<gbdul::StreamNameChangesRequest>,
    ) -> Result<Response<Self::StreamNameChangesStream>, Status> {
        let limit = req.into_inner().limit;
        let change = |i: u32| gbdul::NameChange {
            bin: bin(i),
            cursor: i.to_string(),
            ..Default::default()
        };
        if limit > 0 {
            let items: Vec<_> = (1..=limit).map(|i| Ok(change(i))).collect();
            return Ok(Response::new(Box::pin(futures::stream::iter(items))));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let cancelled = self.cancelled.clone();
        tokio::spawn(async move {
            let mut i = 1;
            loop {
                if tx.send(Ok(change(i))).await.is_err() {
                    break;
                }
                i += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = tx.closed() => break,
                }
            }
            cancelled.notify_one();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The test KDP: its key, and a revocation feed the test appends to.
#[derive(Clone)]
pub struct Kdp {
    pub signer: Arc<Signer>,
    log: Arc<Mutex<Vec<kdp::Revocation>>>,
    tx: broadcast::Sender<kdp::Revocation>,
    pub followers: Arc<AtomicUsize>,
    down: tokio::sync::watch::Sender<bool>,
}

impl Kdp {
    fn new() -> Kdp {
        Kdp {
            signer: Arc::new(Signer::generate("kdp-test").unwrap()),
            log: Default::default(),
            tx: broadcast::channel(64).0,
            followers: Default::default(),
            down: tokio::sync::watch::channel(false).0,
        }
    }

    /// KDP fails: open revocation streams end with UNAVAILABLE, new calls are refused.
    pub fn go_down(&self) {
        self.down.send_replace(true);
    }

    fn check_up(&self) -> Result<(), Status> {
        if *self.down.borrow() {
            Err(Status::unavailable("test KDP is down"))
        } else {
            Ok(())
        }
    }

    /// Publishes the revocation of one token.
    pub fn revoke(&self, token_id: &str, subject: &str, consumer: &str, scope: &str) {
        self.revoke_at(
            token_id,
            subject,
            consumer,
            scope,
            jiff::Timestamp::now().as_second(),
        );
    }

    /// Publishes a revocation made at `at` (unix seconds).
    pub fn revoke_at(&self, token_id: &str, subject: &str, consumer: &str, scope: &str, at: i64) {
        let mut log = self.log.lock().unwrap();
        let r = kdp::Revocation {
            cursor: (log.len() + 1).to_string(),
            token_ids: vec![token_id.to_owned()],
            subject: subject.to_owned(),
            consumer: consumer.to_owned(),
            scope: scope.to_owned(),
            revoked_at: Some(prost_types::Timestamp {
                seconds: at,
                nanos: 0,
            }),
        };
        log.push(r.clone());
        let _ = self.tx.send(r);
    }
}

#[tonic::async_trait]
impl kdp::consent_service_server::ConsentService for Kdp {
    async fn issue_token(
        &self,
        _: Request<kdp::IssueTokenRequest>,
    ) -> Result<Response<kdp::IssueTokenResponse>, Status> {
        Err(Status::unimplemented("test KDP"))
    }
    async fn issue_tokens(
        &self,
        _: Request<kdp::IssueTokensRequest>,
    ) -> Result<Response<kdp::IssueTokensResponse>, Status> {
        Err(Status::unimplemented("test KDP"))
    }
    async fn get_public_key(
        &self,
        _: Request<kdp::GetPublicKeyRequest>,
    ) -> Result<Response<kdp::GetPublicKeyResponse>, Status> {
        Ok(Response::new(kdp::GetPublicKeyResponse {
            algorithm: "Ed25519".into(),
            public_key: self.signer.public_key(),
            key_id: self.signer.key_id().to_owned(),
        }))
    }
    async fn grant_consent(
        &self,
        _: Request<kdp::GrantConsentRequest>,
    ) -> Result<Response<kdp::GrantConsentResponse>, Status> {
        Err(Status::unimplemented("test KDP"))
    }
    async fn revoke_consent(
        &self,
        _: Request<kdp::RevokeConsentRequest>,
    ) -> Result<Response<kdp::RevokeConsentResponse>, Status> {
        Err(Status::unimplemented("test KDP"))
    }

    type StreamRevocationsStream = BoxStream<kdp::Revocation>;

    async fn stream_revocations(
        &self,
        req: Request<kdp::StreamRevocationsRequest>,
    ) -> Result<Response<Self::StreamRevocationsStream>, Status> {
        self.check_up()?;
        let req = req.into_inner();
        let after: usize = if req.cursor.is_empty() {
            0
        } else {
            req.cursor
                .parse()
                .map_err(|_| Status::invalid_argument("bad cursor"))?
        };
        let rx = self.tx.subscribe();
        let history: Vec<_> = self
            .log
            .lock()
            .unwrap()
            .iter()
            .skip(after)
            .cloned()
            .collect();
        let last = after + history.len();
        let past = futures::stream::iter(history.into_iter().map(Ok));
        if !req.follow {
            return Ok(Response::new(Box::pin(past)));
        }
        self.followers.fetch_add(1, Ordering::SeqCst);
        let live =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| async move {
                match r {
                    Ok(r) if r.cursor.parse::<usize>().unwrap_or(0) > last => Some(Ok(r)),
                    _ => None,
                }
            });
        let mut down = self.down.subscribe();
        let cut = async move {
            let _ = down.wait_for(|d| *d).await;
        };
        let failed =
            futures::stream::once(async { Err(Status::unavailable("test KDP went down")) });
        Ok(Response::new(Box::pin(
            past.chain(live).take_until(cut).chain(failed),
        )))
    }
}

/// A test-only service with client-streaming and bidi methods, written against tonic's
/// generic server (no codegen): `shep.test.Echo/Chat` (bidi: one Person per request) and
/// `shep.test.Echo/Collect` (client stream: one Person whose iin lists every request's).
#[derive(Clone)]
pub struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "shep.test.Echo";
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<gbdfl::Person, gbdfl::GetPersonRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(match req.uri().path() {
                "/shep.test.Echo/Chat" => {
                    let svc = tower::service_fn(
                        |r: Request<Streaming<gbdfl::GetPersonRequest>>| async move {
                            let out = r.into_inner().map(|m| m.map(|q| person(&q.iin)));
                            Ok::<_, Status>(Response::new(out))
                        },
                    );
                    grpc.streaming(svc, req).await
                }
                "/shep.test.Echo/Collect" => {
                    let svc = tower::service_fn(
                        |r: Request<Streaming<gbdfl::GetPersonRequest>>| async move {
                            let mut s = r.into_inner();
                            let mut all = vec![];
                            while let Some(m) = s.message().await? {
                                all.push(m.iin);
                            }
                            Ok::<_, Status>(Response::new(person(&all.join(","))))
                        },
                    );
                    grpc.client_streaming(svc, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// The descriptor set of `shep.test.Echo`, which reuses GBD FL's messages (so the bus
/// checks the IIN of every message of the stream).
pub fn echo_descriptor_set() -> Vec<u8> {
    use prost_types::{
        FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
    };
    let method = |name: &str, server_streaming: bool| MethodDescriptorProto {
        name: Some(name.into()),
        input_type: Some(".kz.gov.gbdfl.v1.GetPersonRequest".into()),
        output_type: Some(".kz.gov.gbdfl.v1.Person".into()),
        client_streaming: Some(true),
        server_streaming: Some(server_streaming),
        ..Default::default()
    };
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("shep/test/echo.proto".into()),
            package: Some("shep.test".into()),
            dependency: vec!["kz/gov/gbdfl/v1/gbdfl.proto".into()],
            service: vec![ServiceDescriptorProto {
                name: Some("Echo".into()),
                method: vec![method("Chat", true), method("Collect", false)],
                ..Default::default()
            }],
            syntax: Some("proto3".into()),
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// A running world.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub bus: shep_bus::RunningBus,
    pub shutdown: Shutdown,
    pub kdp: Kdp,
    pub gbdfl_seen: Seen,
    pub gbdul_cancelled: Arc<Notify>,
    pub settings: BusSettings,
}

/// A port nothing listens on.
pub async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn node(dir: &std::path::Path, system: &str) -> NodeConfig {
    let mut c = NodeConfig::from_pki_dir(system, SocketAddr::from(([127, 0, 0, 1], 0)), dir);
    c.tls.reload_interval_ms = 100;
    c.limits.shutdown_grace_ms = 0;
    c
}

impl World {
    /// Starts the upstreams and the bus; `tweak` adjusts the bus settings.
    pub async fn start(tweak: impl FnOnce(&mut BusSettings)) -> World {
        Self::start_with(true, tweak).await
    }

    /// As [`World::start`]; without `with_kdp` the bus's KDP endpoint is a dead port.
    pub async fn start_with(with_kdp: bool, tweak: impl FnOnce(&mut BusSettings)) -> World {
        shep_runtime::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path(), shep_pki::DEFAULT_SYSTEMS, false).unwrap();
        for extra in ["expertiza", "stranger"] {
            pki.issue(extra, Validity::days(1), false).unwrap();
        }
        let shutdown = Shutdown::new();

        let gbdfl_seen = Seen::default();
        let gbdfl = NodeBuilder::new(node(dir.path(), "gbd-fl"))
            .add_service(
                gbdfl::person_registry_server::PersonRegistryServer::new(Gbdfl {
                    seen: gbdfl_seen.clone(),
                })
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .add_service(Echo)
            .descriptor_set(shep_proto::FILE_DESCRIPTOR_SET)
            .start(shutdown.clone())
            .await
            .unwrap();
        let gbdul_cancelled = Arc::new(Notify::new());
        let gbdul = NodeBuilder::new(node(dir.path(), "gbd-ul"))
            .add_service(
                gbdul::organization_registry_server::OrganizationRegistryServer::new(Gbdul {
                    cancelled: gbdul_cancelled.clone(),
                }),
            )
            .start(shutdown.clone())
            .await
            .unwrap();
        let kdp = Kdp::new();
        let kdp_port = if with_kdp {
            let k = NodeBuilder::new(node(dir.path(), "kdp"))
                .add_service(kdp::consent_service_server::ConsentServiceServer::new(
                    kdp.clone(),
                ))
                .start(shutdown.clone())
                .await
                .unwrap();
            k.addr.port()
        } else {
            dead_port().await
        };
        let dead = dead_port().await;
        let mut ports = BTreeMap::new();
        for s in ["zags", "e-license", "bmg", "pep", "sdu"] {
            ports.insert(s.to_string(), dead);
        }
        ports.insert("gbd-fl".into(), gbdfl.addr.port());
        ports.insert("gbd-ul".into(), gbdul.addr.port());
        ports.insert("kdp".into(), kdp_port);
        let mut settings = BusSettings::default_topology("127.0.0.1", &ports);
        settings.metrics_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        settings.audit.path = dir.path().join("audit").join("bus-audit.sqlite");
        settings.upstream.health_interval_ms = 200;
        settings.upstream.connect_timeout_ms = 1000;
        settings.consent.revocations_stale_after_ms = 500;
        settings.consent.retry_max_ms = 200;
        settings.limits.max_message_bytes = 64 * 1024;
        let echo = dir.path().join("echo.bin");
        std::fs::write(&echo, echo_descriptor_set()).unwrap();
        settings.descriptor_sets.push(echo);
        settings
            .systems
            .get_mut("gbd-fl")
            .unwrap()
            .services
            .push("shep.test.Echo".into());
        settings.access.push(shep_bus::config::AccessRule::allow(
            "sdu",
            "shep.test.Echo/*",
        ));
        tweak(&mut settings);
        let bus = shep_bus::start(node(dir.path(), "bus"), settings.clone(), shutdown.clone())
            .await
            .unwrap();
        // The upstream nodes keep running in the background until `shutdown`.
        tokio::spawn(gbdfl.wait());
        tokio::spawn(gbdul.wait());
        World {
            dir,
            pki,
            bus,
            shutdown,
            kdp,
            gbdfl_seen,
            gbdul_cancelled,
            settings,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.bus.addr.port())
    }

    /// A channel to the bus as `system`.
    pub fn client(&self, system: &str) -> Channel {
        shep_runtime::tls::channel(
            &TlsConfig::from_pki_dir(self.dir.path(), system),
            &self.url(),
        )
        .unwrap()
    }

    /// Waits (bounded) until the bus can verify consent.
    pub async fn consent_ready(&self) {
        for _ in 0..500 {
            if self.bus.consent_ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the bus never got KDP's key and revocation feed");
    }

    /// A token signed by the test KDP: (token id, compact token).
    pub fn token(
        &self,
        subject: &str,
        consumer: &str,
        scope: &str,
        ttl_secs: i64,
    ) -> (String, String) {
        token_with(&self.kdp.signer, subject, consumer, scope, ttl_secs)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.bus.audit_path().to_owned()
    }
}

pub fn token_with(
    signer: &Signer,
    subject: &str,
    consumer: &str,
    scope: &str,
    ttl_secs: i64,
) -> (String, String) {
    let now = jiff::Timestamp::now().as_second();
    let id = uuid::Uuid::new_v4().to_string();
    let c = Claims {
        token_id: id.clone(),
        subject: subject.into(),
        consumer: consumer.into(),
        scope: scope.into(),
        issued_at: now - 5,
        expires_at: now + ttl_secs,
        key_id: String::new(),
    };
    (id, signer.sign(&c))
}

/// A request with consent tokens in the metadata.
pub fn with_tokens<T>(msg: T, tokens: &[&str]) -> Request<T> {
    let mut r = Request::new(msg);
    for t in tokens {
        r.metadata_mut()
            .append(shep_consent::METADATA_KEY, t.parse().unwrap());
    }
    r
}

/// The ErrorInfo reason of a status.
pub fn reason(st: &Status) -> String {
    st.get_error_details()
        .error_info()
        .map(|e| e.reason.clone())
        .unwrap_or_default()
}

/// The ErrorInfo metadata of a status.
pub fn info_meta(st: &Status) -> std::collections::HashMap<String, String> {
    st.get_error_details()
        .error_info()
        .map(|e| e.metadata.clone())
        .unwrap_or_default()
}

/// GET /metrics, as text.
pub async fn metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bus\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A TCP relay in front of an upstream that can be killed like a crashed process: its
/// listener and every connection through it close at once, mid-stream or not.
pub struct Relay {
    pub port: u16,
    accept: tokio::task::AbortHandle,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// Told to stop passing bytes on the connections relayed so far.
    hole: Arc<tokio::sync::Notify>,
    /// The sockets of those connections, held open with nothing passing.
    _held: Arc<Mutex<Vec<(tokio::net::TcpStream, tokio::net::TcpStream)>>>,
}

impl Relay {
    /// Listens on a free loopback port and relays every connection to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        Relay::start_on(0, target)
    }

    /// Listens on `port` of loopback (0: a free one; a port a killed relay held is retried
    /// for up to five seconds, while its listener closes) and relays every connection to
    /// `target`.
    pub fn start_on(port: u16, target: SocketAddr) -> Relay {
        let mut tries = 0;
        let std_listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("cannot listen on 127.0.0.1:{port}: {e}"),
            }
        };
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let hole = Arc::new(tokio::sync::Notify::new());
        let held: Arc<Mutex<Vec<_>>> = Arc::default();
        let (t, h, k) = (conns.clone(), hole.clone(), held.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (h, k) = (h.clone(), k.clone());
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let holed = tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                            () = h.notified() => true,
                        };
                        if holed {
                            k.lock().unwrap().push((inbound, outbound));
                        }
                    }
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        Relay {
            port,
            accept: accept.abort_handle(),
            conns,
            hole,
            _held: held,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// A dead network path: the connections relayed so far stop passing bytes either way,
    /// their sockets left open (no FIN, no RST); new connections are relayed as before.
    pub fn blackhole(&self) {
        self.hole.notify_waiters();
    }

    /// Closes the listener and every relayed connection.
    pub fn kill(&self) {
        self.accept.abort();
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Puts a new relay in front of `system` in `s`: the bus reaches the system through it.
    /// Returns the relay and the system's own address.
    pub fn in_front_of(s: &mut BusSettings, system: &str) -> (Relay, SocketAddr) {
        let sys = s.systems.get_mut(system).unwrap();
        let target = SocketAddr::from((
            [127, 0, 0, 1],
            Relay::port_of(sys.endpoint.as_deref().unwrap()),
        ));
        let relay = Relay::start(target);
        sys.endpoint = Some(format!("https://127.0.0.1:{}", relay.port));
        (relay, target)
    }

    /// The port of an `https://host:port` endpoint.
    fn port_of(endpoint: &str) -> u16 {
        endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }
}
