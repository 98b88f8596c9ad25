//! Who is calling: the system named by the client certificate.
//!
//! The certificate is parsed once per connection, at the handshake (see
//! [`crate::incoming`]). [`PeerIdentityLayer`] then puts two extensions in every request:
//! tonic's `TlsConnectInfo` (so `Request::peer_certs()` works) and, when the certificate
//! names a system, a [`Caller`]. Handlers get it with [`Caller::of`].

use std::task::{Context, Poll};

use shep_domain::SystemId;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The system id from the certificate (SAN URI `urn:shep:system:ID`, else the CN).
    pub system: SystemId,
    /// The certificate's serial number, hex.
    pub serial: String,
}

impl Caller {
    /// Reads the caller from a DER certificate; `None` when it names no valid system.
    pub fn from_der(der: &[u8]) -> Option<Caller> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let from_san = cert.subject_alternative_name().ok().flatten().and_then(|san| {
            san.value.general_names.iter().find_map(|g| match g {
                GeneralName::URI(u) => SystemId::from_uri(u),
                _ => None,
            })
        });
        let system = from_san.or_else(|| {
            let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
            SystemId::parse(cn).ok()
        })?;
        Some(Caller { system, serial: cert.raw_serial_as_string() })
    }

    /// The caller of a request, or UNAUTHENTICATED.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<&Caller, tonic::Status> {
        req.extensions().get::<Caller>().ok_or_else(|| {
            crate::status::error(
                tonic::Code::Unauthenticated,
                "the client certificate names no system (expected a SAN URI urn:shep:system:ID)",
                "NO_SYSTEM_IN_CERTIFICATE",
                [],
            )
        })
    }
}

/// What the accept loop knows about a connection; tonic puts it in request extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub tls: TlsConnectInfo<TcpConnectInfo>,
    pub caller: Option<Caller>,
}

/// Tower layer that turns [`PeerInfo`] into the `TlsConnectInfo` and [`Caller`] extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIdentityLayer;

impl<S> tower::Layer<S> for PeerIdentityLayer {
    type Service = PeerIdentity<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PeerIdentity { inner }
    }
}

#[derive(Debug, Clone)]
pub struct PeerIdentity<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for PeerIdentity<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(peer) = req.extensions_mut().remove::<PeerInfo>() {
            req.extensions_mut().insert(peer.tls);
            if let Some(c) = peer.caller {
                req.extensions_mut().insert(c);
            }
        }
        self.inner.call(req)
    }
}

/// Tower layer that refuses callers not in a list (PERMISSION_DENIED, reason
/// `CALLER_NOT_ALLOWED`). An empty list allows every authenticated system. The registries
/// of a topology allow only the bus and the `operator` identity.
#[derive(Debug, Clone, Default)]
pub struct AllowCallersLayer {
    allowed: std::sync::Arc<Vec<String>>,
}

impl AllowCallersLayer {
    pub fn new(allowed: Vec<String>) -> Self {
        AllowCallersLayer { allowed: std::sync::Arc::new(allowed) }
    }
}

impl<S> tower::Layer<S> for AllowCallersLayer {
    type Service = AllowCallers<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AllowCallers { inner, allowed: self.allowed.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AllowCallers<S> {
    inner: S,
    allowed: std::sync::Arc<Vec<String>>,
}

impl<S, B> tower::Service<http::Request<B>> for AllowCallers<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<futures::future::Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if self.allowed.is_empty() {
            return futures::future::Either::Right(self.inner.call(req));
        }
        let caller = req.extensions().get::<Caller>().map(|c| c.system.as_str().to_owned());
        match caller {
            Some(c) if self.allowed.contains(&c) => futures::future::Either::Right(self.inner.call(req)),
            other => {
                let who = other.unwrap_or_else(|| "(no system in certificate)".into());
                let status = crate::status::error(
                    tonic::Code::PermissionDenied,
                    format!("{who} may not call this node directly; call it through the bus"),
                    "CALLER_NOT_ALLOWED",
                    [("caller", who.clone()), ("allowed", self.allowed.join(","))],
                );
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}
