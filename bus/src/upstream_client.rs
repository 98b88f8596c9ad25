//! The bus's HTTP/2 client toward one upstream: one mutual-TLS connection, made on first
//! use and made again when it has closed, with requests handed straight to the `h2`
//! connection.
//!
//! It replaces tonic's `Channel` and hyper's HTTP/2 client on the bus's hot path. A
//! `Channel` puts every request through a buffer (a queue and a worker task of its own) and
//! a stack of tower layers before it reaches hyper; hyper's client then passes each request
//! to its connection task through a queue and spawns a task per request to wait for the
//! response. Here the calling task opens the stream itself, sends a request body that is
//! already at hand (a unary call's) without a task of its own, and is woken by the
//! connection task when the answer arrives: two task hand-offs fewer per call.
//!
//! A [`UpstreamClient`] is a `tower::Service` for `http::Request<tonic::body::Body>`, so
//! tonic's generated clients (health checks, the envelope's calls, KDP's feeds) use it as
//! they used a `Channel`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use h2::client::SendRequest;
use h2::{Ping, Reason, RecvStream, SendStream};
use http_body::{Body as HttpBody, Frame};
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
    Http2(#[from] h2::Error),
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
    /// The open connection, if any.
    current: Mutex<Option<Connection>>,
    /// Held while connecting: one connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

/// An open connection: its request handle, and whether its task has ended.
#[derive(Clone)]
struct Connection {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
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
    /// A request body already at hand is sent from the calling task; the rest of one still
    /// arriving (a client stream) is passed on by a task of its own, as fast as the
    /// upstream's flow control lets it.
    pub async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(self.inner.scheme.clone());
        uri.authority = Some(self.inner.authority.clone());
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = http::Uri::from_parts(uri).expect("scheme, authority and path");
        // Connection-specific headers are not HTTP/2's (h2 refuses them).
        for h in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host"] {
            parts.headers.remove(h);
        }
        let conn = self.connection().await?;
        let mut send = match conn.send.clone().ready().await {
            Ok(s) => s,
            // The connection went away (the upstream restarted, a GOAWAY) before this request
            // was on it: nothing was sent, so it goes on a new connection.
            Err(_) => {
                conn.closed.store(true, Ordering::Release);
                self.connection().await?.send.ready().await?
            }
        };
        let eos = body.is_end_stream();
        let (response, stream) = send.send_request(http::Request::from_parts(parts, ()), eos)?;
        if !eos {
            // The frames at hand go at once, without waiting for room in the window (the
            // stream is not even open until the connection task runs): h2 holds them, and
            // they are no more than the caller has sent. The rest waits for room.
            let mut pipe = Pipe { body, stream, ahead: None, wait_for_room: false };
            if (&mut pipe).now_or_never().is_none() {
                pipe.wait_for_room = true;
                tokio::spawn(pipe);
            }
        }
        let resp = response.await?;
        Ok(resp.map(|recv| UpstreamBody { recv, data_done: false, done: false }))
    }

    /// The open connection, connecting first when there is none.
    async fn connection(&self) -> Result<Connection, UpstreamError> {
        if let Some(c) = self.open() {
            return Ok(c);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(c) = self.open() {
            return Ok(c);
        }
        let ms = self.inner.settings.connect_timeout_ms;
        let c = tokio::time::timeout(Duration::from_millis(ms), self.connect())
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                addr: self.inner.addr.clone(),
                ms,
            })??;
        *self.inner.current.lock().expect("upstream connection") = Some(c.clone());
        Ok(c)
    }

    fn open(&self) -> Option<Connection> {
        let cur = self.inner.current.lock().expect("upstream connection");
        cur.as_ref()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .cloned()
    }

    async fn connect(&self) -> Result<Connection, UpstreamError> {
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
        let (send, mut conn) = h2::client::Builder::new()
            // Fixed windows, large enough for the largest message: no BDP probing (a PING
            // per round trip of data, as adaptive windows do, costs frames on every call).
            .initial_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| failed(format!("HTTP/2: {e}")))?;
        let closed = Arc::new(AtomicBool::new(false));
        let addr = i.addr.clone();
        let ping = conn.ping_pong();
        let every = Duration::from_millis(i.settings.keepalive_interval_ms);
        let patience = Duration::from_millis(i.settings.keepalive_timeout_ms);
        let done = closed.clone();
        tokio::spawn(async move {
            let keepalive = async move {
                let Some(mut ping) = ping else {
                    return std::future::pending().await;
                };
                loop {
                    tokio::time::sleep(every).await;
                    match tokio::time::timeout(patience, ping.ping(Ping::opaque())).await {
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                }
            };
            tokio::select! {
                r = &mut conn => {
                    if let Err(e) = r {
                        tracing::debug!(upstream = %addr, error = %e, "upstream connection ended");
                    }
                }
                () = keepalive => {
                    tracing::warn!(upstream = %addr, "upstream did not answer a ping in time; connection dropped");
                }
            }
            done.store(true, Ordering::Release);
        });
        Ok(Connection { send, closed })
    }
}

/// Passes a request body to its HTTP/2 stream: each frame once the stream has room (the
/// upstream's flow control), a data frame held back until the next poll says whether it is
/// the last (so a unary request ends with its message, not with an empty frame after it),
/// and a reset when the body fails (a check refused a later message of a client stream).
struct Pipe {
    body: Body,
    stream: SendStream<Bytes>,
    /// A data frame not sent yet: the next poll of the body says whether it ends the stream.
    ahead: Option<Bytes>,
    /// Whether a frame waits for room in the stream's window before the next is read.
    wait_for_room: bool,
}

impl Future for Pipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.wait_for_room {
                this.stream.reserve_capacity(this.ahead.as_ref().map_or(1, |d| d.len().max(1)));
                if this.stream.capacity() == 0 {
                    match ready!(this.stream.poll_capacity(cx)) {
                        Some(Ok(_)) => continue,
                        // The stream was reset or the connection closed.
                        Some(Err(_)) | None => return Poll::Ready(()),
                    }
                }
            }
            if this.stream.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => {
                    // Nothing more at hand: what is held goes now, not with the next frame.
                    if let Some(d) = this.ahead.take()
                        && this.stream.send_data(d, false).is_err()
                    {
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(f) => f,
            };
            let sent = match frame {
                None => {
                    let last = this.ahead.take().unwrap_or_default();
                    this.stream.send_data(last, true).map(|()| true)
                }
                Some(Err(_)) => {
                    this.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => match this.ahead.replace(d) {
                        Some(prev) => this.stream.send_data(prev, false).map(|()| false),
                        None => Ok(false),
                    },
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => {
                            let held = this.ahead.take();
                            held.map_or(Ok(()), |d| this.stream.send_data(d, false))
                                .and_then(|()| this.stream.send_trailers(trailers))
                                .map(|()| true)
                        }
                        Err(_) => Ok(false),
                    },
                },
            };
            match sent {
                Ok(false) => {}
                Ok(true) | Err(_) => return Poll::Ready(()),
            }
        }
    }
}

/// The body of an upstream's response: its data frames (their room in the window given
/// back as they are taken), then its trailers.
pub struct UpstreamBody {
    recv: RecvStream,
    data_done: bool,
    done: bool,
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(d)) => {
                    let _ = this.recv.flow_control().release_capacity(d.len());
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        this.done = true;
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }
}

impl tower::Service<http::Request<Body>> for UpstreamClient {
    type Response = http::Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<UpstreamBody>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.send(req).await })
    }
}
