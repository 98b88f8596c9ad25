//! The bus's HTTP/2 client toward one upstream: one mutual-TLS connection, made on first
//! use and made again when it has closed, with requests handed straight to hyper's HTTP/2
//! connection.
//!
//! It replaces tonic's `Channel` on the bus's hot path. A `Channel` puts every request
//! through a buffer (a queue and a worker task of its own) and a stack of tower layers
//! (reconnect, origin, user agent, timeout) before it reaches the same hyper connection;
//! the bus sets the origin and the deadline itself, so that hop was pure cost (about a
//! sixth of the bus's CPU per call, measured with `bus_vs_nginx`).
//!
//! A [`UpstreamClient`] is a `tower::Service` for `http::Request<tonic::body::Body>`, so
//! tonic's generated clients (health checks, the envelope's calls, KDP's feeds) use it as
//! they used a `Channel`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamSettings;

type Body = tonic::body::Body;

/// Why a request did not reach the upstream, or its answer did not come back.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {why}")]
    Connect { addr: String, why: String },
    #[error("connecting to {addr} took longer than {ms} ms")]
    ConnectTimeout { addr: String, ms: u64 },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// A lazily connecting HTTP/2 client to one upstream; cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host:port`, as connected to.
    addr: String,
    server_name: ServerName<'static>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    tls: TlsConnector,
    settings: UpstreamSettings,
    /// The open connection's sender, if any.
    current: Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting: one connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl UpstreamClient {
    /// A client of `endpoint` (`https://host:port`) presenting the identity of `tls`. Does not
    /// connect: the first request does.
    pub fn new(
        tls: &shep_runtime::TlsConfig,
        endpoint: &str,
        settings: &UpstreamSettings,
    ) -> Result<Self, String> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("bad endpoint {endpoint:?}: no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?;
        let config = shep_runtime::tls::client_config(tls).map_err(|e| e.to_string())?;
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(UpstreamClient {
            inner: Arc::new(Inner {
                addr,
                server_name,
                scheme: http::uri::Scheme::HTTPS,
                authority,
                tls: TlsConnector::from(config),
                settings: settings.clone(),
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Sends a request (its URI a path, or a full URI) and waits for the response headers.
    pub async fn send(
        &self,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.inner.scheme.clone());
        parts.authority = Some(self.inner.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = http::Uri::from_parts(parts).expect("scheme, authority and path");
        let mut sender = self.sender().await?;
        Ok(sender.send_request(req).await?)
    }

    /// The open connection's sender, connecting first when there is none.
    async fn sender(&self) -> Result<SendRequest<Body>, UpstreamError> {
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let ms = self.inner.settings.connect_timeout_ms;
        let s = tokio::time::timeout(Duration::from_millis(ms), self.connect())
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                addr: self.inner.addr.clone(),
                ms,
            })??;
        *self.inner.current.lock().expect("upstream sender") = Some(s.clone());
        Ok(s)
    }

    fn open(&self) -> Option<SendRequest<Body>> {
        let cur = self.inner.current.lock().expect("upstream sender");
        cur.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let i = &self.inner;
        let failed = |why: String| UpstreamError::Connect {
            addr: i.addr.clone(),
            why,
        };
        let tcp = tokio::net::TcpStream::connect(&i.addr)
            .await
            .map_err(|e| failed(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| failed(e.to_string()))?;
        let tls = i
            .tls
            .connect(i.server_name.clone(), tcp)
            .await
            .map_err(|e| failed(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            // Fixed windows, large enough for the largest message: no BDP probing (a PING
            // per round trip of data, as adaptive windows do, costs frames on every call).
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| failed(format!("HTTP/2: {e}")))?;
        let addr = i.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

impl tower::Service<http::Request<Body>> for UpstreamClient {
    type Response = http::Response<Incoming>;
    type Error = UpstreamError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}
