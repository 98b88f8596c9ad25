//! The forwarder: the fallback service that receives every call to a routed service,
//! runs the stages, and forwards the HTTP/2 request as is — no codec, streaming both
//! ways, trailers included — over a mutual-TLS channel to the upstream.
//!
//! Stages, in order (each refusal is recorded before it is answered):
//! 1. identity: the caller's system from its certificate (UNAUTHENTICATED without);
//! 2. route: the service must be routed and the method described (UNIMPLEMENTED `SCE004`);
//! 3. access matrix (PERMISSION_DENIED `ACCESS_DENIED`, naming the rule);
//! 4. limits: rate and concurrency of the caller (RESOURCE_EXHAUSTED with RetryInfo);
//! 5. for methods whose request has identifier fields or a subject: the first request
//!    message is read and decoded; identifiers are checked (INVALID_ARGUMENT `SCE001`),
//!    then consent (see [`crate::consent`]); later messages of a client stream get the same
//!    checks as they pass, and a failure ends the call (the upstream sees a reset);
//! 6. audit: for a stream, the decision is committed (a unary call has a single record,
//!    written at its end);
//! 7. forward with `x-shep-caller`, the remaining `grpc-timeout` and `traceparent`; every
//!    message size checked both ways; a stream's answer streamed back, its completion
//!    committed before the final status (trailers) reaches the caller; a unary answer held
//!    until the call's record is committed, then released (or replaced by
//!    `AUDIT_UNAVAILABLE`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Version};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use shep_runtime::Caller;
use tokio::time::Sleep;
use tonic::Code;

use crate::gate::{CALLER_HEADER, CallGuard, Core, MESSAGE_ID_HEADER, Refused, Seen, reason_of};
use crate::policy::MethodPolicy;
use crate::routing::{MethodPath, Upstream};
use crate::wire::{self, Assembler, FrameScanner, TooLarge};

/// The fallback service of the bus's router.
#[derive(Clone)]
pub struct Gateway {
    core: Arc<Core>,
}

impl Gateway {
    pub fn new(core: Arc<Core>) -> Self {
        Gateway { core }
    }
}

impl tower::Service<http::Request<axum::body::Body>> for Gateway {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<axum::body::Body>) -> Self::Future {
        let core = self.core.clone();
        Box::pin(async move { Ok(handle(core, req).await) })
    }
}

/// What the checks established before forwarding.
struct Prepared {
    upstream: Upstream,
    policy: Arc<MethodPolicy>,
    deadline: Option<Instant>,
    prefix: VecDeque<Frame<Bytes>>,
    rest: Option<axum::body::Body>,
    check: Check,
    slot: Arc<Mutex<Option<Refused>>>,
}

/// How the rest of the request stream is checked as it passes.
enum Check {
    /// Each whole message decoded and checked (identifiers, consent).
    Inspect(Box<Inspector>),
    /// Only the size of each message.
    Scan(FrameScanner),
}

async fn handle(
    core: Arc<Core>,
    req: http::Request<axum::body::Body>,
) -> http::Response<tonic::body::Body> {
    let (parts, body) = req.into_parts();
    let caller = parts
        .extensions
        .get::<Caller>()
        .map(|c| c.system.as_str().to_owned());
    let path = parts.uri.path().to_owned();
    let call = crate::gate::Call::new(&parts.headers, caller.as_deref().unwrap_or(""), &path);
    let mut guard = CallGuard::new(core.clone(), call);
    match prepare(&core, &mut guard, &parts, caller, body).await {
        Err(r) => wire::status_response(guard.refuse(r).await),
        Ok(p) => forward(guard, &parts.headers, p).await,
    }
}

async fn prepare(
    core: &Arc<Core>,
    guard: &mut CallGuard,
    parts: &http::request::Parts,
    caller: Option<String>,
    body: axum::body::Body,
) -> Result<Prepared, Refused> {
    let Some(caller) = caller else {
        return Err(Refused::new(
            Code::Unauthenticated,
            "the client certificate names no system (expected a SAN URI urn:shep:system:ID)",
            "NO_SYSTEM_IN_CERTIFICATE",
            [],
        ));
    };
    let path = parts.uri.path();
    let mp = MethodPath::parse(path).ok_or_else(|| Refused::unknown_method(path))?;
    let upstream = core
        .routes
        .lookup(mp.service)
        .cloned()
        .ok_or_else(|| Refused::unknown_method(path))?;
    let policy = core
        .policies
        .method(path)
        .ok_or_else(|| Refused::unknown_method(path))?;
    core.check_access(&caller, &mp.qualified())?;
    guard.hold(core.check_limits(&caller)?);

    let started = guard.call().started;
    let unary = !policy.client_streaming && !policy.server_streaming;
    let deadline = core.deadline(&parts.headers, started, unary);
    let max = core.settings.limits.max_message_bytes;
    let slot = Arc::new(Mutex::new(None));
    let mut prefix = VecDeque::new();
    let mut rest = Some(body);
    let check = if policy.inspect {
        let tokens: Vec<String> = parts
            .headers
            .get_all(shep_consent::METADATA_KEY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|t| t.trim().to_owned()))
            .filter(|t| !t.is_empty())
            .collect();
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut insp = Inspector {
            core: core.clone(),
            policy: policy.clone(),
            caller: caller.clone(),
            tokens,
            encoding,
            asm: Assembler::default(),
            max,
            first_done: false,
            seen: guard.seen.clone(),
        };
        let read = read_first(&mut insp, &mut rest, &mut prefix, guard);
        let first = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), read)
                .await
                .map_err(|_| {
                    Refused::new(
                        Code::DeadlineExceeded,
                        "the deadline passed before the first request message arrived",
                        "DEADLINE_EXCEEDED",
                        [],
                    )
                })??,
            None => read.await?,
        };
        if let Some((subjects, tokens)) = first {
            let call = guard.call_mut();
            call.subjects = subjects;
            call.token_ids = tokens;
        }
        Check::Inspect(Box::new(insp))
    } else {
        Check::Scan(FrameScanner::default())
    };
    if deadline.is_some_and(|d| d <= Instant::now()) {
        return Err(Refused::new(
            Code::DeadlineExceeded,
            "the deadline passed before the call was forwarded",
            "DEADLINE_EXCEEDED",
            [],
        ));
    }
    Ok(Prepared {
        upstream,
        policy,
        deadline,
        prefix,
        rest,
        check,
        slot,
    })
}

/// Reads the request stream until its first message is whole (or the stream ends),
/// keeping what was read for forwarding. Returns the first message's subjects and tokens.
async fn read_first(
    insp: &mut Inspector,
    rest: &mut Option<axum::body::Body>,
    prefix: &mut VecDeque<Frame<Bytes>>,
    guard: &CallGuard,
) -> Result<FirstMessage, Refused> {
    loop {
        let Some(body) = rest.as_mut() else {
            return Ok(None);
        };
        match body.frame().await {
            None => {
                *rest = None;
                return Ok(None);
            }
            Some(Err(e)) => {
                return Err(Refused::new(
                    Code::Cancelled,
                    format!("the request stream failed: {e}"),
                    "CLIENT_CANCELLED",
                    [],
                ));
            }
            Some(Ok(frame)) => {
                let mut first = None;
                if let Some(d) = frame.data_ref() {
                    guard
                        .request_bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                    first = insp.feed(d)?;
                }
                if !frame.data_ref().is_some_and(|d| d.is_empty()) {
                    prefix.push_back(frame);
                }
                if first.is_some() {
                    return Ok(first);
                }
            }
        }
    }
}

/// The subjects and token ids of the first request message, once it was whole.
type FirstMessage = Option<(Vec<String>, Vec<String>)>;

/// Checks whole request messages as they pass.
struct Inspector {
    core: Arc<Core>,
    policy: Arc<MethodPolicy>,
    caller: String,
    tokens: Vec<String>,
    encoding: Option<String>,
    asm: Assembler,
    max: usize,
    first_done: bool,
    seen: Seen,
}

impl Inspector {
    /// Feeds a chunk and checks every message it completes. Returns the first message's
    /// subjects and tokens when this chunk completed it.
    fn feed(&mut self, chunk: &[u8]) -> Result<FirstMessage, Refused> {
        self.asm.push(chunk);
        let mut first = None;
        loop {
            let m = match self.asm.next(self.max) {
                Err(TooLarge(n)) => return Err(self.core.too_large(n as u64, "a request")),
                Ok(None) => break,
                Ok(Some(m)) => m,
            };
            let msg = self.core.decode(
                &self.policy,
                m.compressed,
                self.encoding.as_deref(),
                &m.payload,
            )?;
            let tokens: Vec<&str> = self.tokens.iter().map(String::as_str).collect();
            let (s, t) = self
                .core
                .check_message(&self.policy, &self.caller, &tokens, &msg)?;
            if self.first_done {
                self.seen.add(s, t);
            } else {
                self.first_done = true;
                first = Some((s, t));
            }
        }
        Ok(first)
    }
}

/// Why the request stream to the upstream was cut.
#[derive(Debug)]
struct Cut(String);
impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Cut {}

/// The request body sent upstream: what was read for the checks, then the rest of the
/// caller's stream, checked as it passes.
struct ForwardBody {
    prefix: VecDeque<Frame<Bytes>>,
    rest: Option<axum::body::Body>,
    check: Check,
    core: Arc<Core>,
    max: usize,
    slot: Arc<Mutex<Option<Refused>>>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl HttpBody for ForwardBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = &mut *self;
        if let Some(f) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        loop {
            let Some(rest) = this.rest.as_mut() else {
                return Poll::Ready(None);
            };
            return match Pin::new(rest).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    this.rest = None;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    this.rest = None;
                    Poll::Ready(Some(Err(Cut(format!(
                        "the caller's request stream failed: {e}"
                    )))))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // An empty DATA frame (the caller's end of stream) is not passed on: the
                    // end of the body is; upstreams count empty frames as abuse.
                    if frame.data_ref().is_some_and(|d| d.is_empty()) {
                        continue;
                    }
                    if let Some(d) = frame.data_ref() {
                        this.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                        let verdict = match &mut this.check {
                            Check::Inspect(i) => i.feed(d).map(|_| ()),
                            Check::Scan(s) => {
                                let max = this.max;
                                let core = &this.core;
                                s.feed(d, |_, len| {
                                    if len as usize > max {
                                        Err(core.too_large(len as u64, "a request"))
                                    } else {
                                        Ok(())
                                    }
                                })
                            }
                        };
                        if let Err(r) = verdict {
                            let why = r.status.message().to_owned();
                            *this.slot.lock().expect("slot") = Some(r);
                            this.rest = None;
                            return Poll::Ready(Some(Err(Cut(why))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_none()
    }
}

/// Request headers not passed upstream as they are.
fn skip_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "te"
            | "grpc-timeout"
            | "traceparent"
            | CALLER_HEADER
    )
}

/// The headers sent upstream: the caller's, less hop-by-hop ones and any `x-shep-caller`
/// it sent, plus the bus's `x-shep-caller`, the message id, `te: trailers`, the remaining
/// deadline and the trace context of the bus's hop.
pub fn upstream_headers(
    incoming: &HeaderMap,
    call: &crate::gate::Call,
    deadline: Option<Instant>,
    now: Instant,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(incoming.len() + 4);
    for (k, v) in incoming {
        if !skip_header(k.as_str()) {
            h.append(k.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&call.caller) {
        h.insert(CALLER_HEADER, v);
    }
    if !h.contains_key(MESSAGE_ID_HEADER)
        && let Ok(v) = HeaderValue::from_str(&call.message_id)
    {
        h.insert(MESSAGE_ID_HEADER, v);
    }
    h.insert("te", HeaderValue::from_static("trailers"));
    if let Some(d) = deadline {
        let left = d
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        if let Ok(v) = HeaderValue::from_str(&wire::format_timeout(left)) {
            h.insert("grpc-timeout", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&call.upstream_trace.header()) {
        h.insert("traceparent", v);
    }
    h
}

/// The gRPC code for an upstream's non-200 HTTP status (gRPC's HTTP-to-gRPC mapping).
pub fn http_to_grpc(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn upstream_unavailable(up: &Upstream, why: &str) -> Refused {
    Refused::new(
        Code::Unavailable,
        format!(
            "upstream {} ({}) is unavailable: {why}",
            up.system, up.endpoint
        ),
        "UPSTREAM_UNAVAILABLE",
        [("upstream", up.system.clone())],
    )
}

fn upstream_timeout(up: &Upstream, what: &str) -> Refused {
    Refused::new(
        Code::DeadlineExceeded,
        format!(
            "upstream {} ({}) did not answer {what}",
            up.system, up.endpoint
        ),
        "UPSTREAM_TIMEOUT",
        [("upstream", up.system.clone())],
    )
}

async fn forward(
    mut guard: CallGuard,
    headers: &HeaderMap,
    p: Prepared,
) -> http::Response<tonic::body::Body> {
    let core = guard.core().clone();
    let Some(channel) = core.channel(&p.upstream.system) else {
        let r = upstream_unavailable(&p.upstream, "no channel");
        return wire::status_response(guard.refuse(r).await);
    };
    // A unary answer is held until the call's single record is committed; a stream's
    // cannot be, so its decision is committed first.
    let unary = !p.policy.client_streaming && !p.policy.server_streaming;
    if unary {
        guard.defer();
    } else if let Err(st) = guard.admit("FORWARDED").await {
        // The audit is down: the one answer that cannot be recorded is this refusal.
        guard.disarm();
        return wire::status_response(st);
    }
    let call = guard.call().clone();
    let now = Instant::now();
    let max = core.settings.limits.max_message_bytes;
    let body = ForwardBody {
        prefix: p.prefix,
        rest: p.rest,
        check: p.check,
        core: core.clone(),
        max,
        slot: p.slot.clone(),
        bytes: guard.request_bytes.clone(),
    };
    let mut req = http::Request::new(tonic::body::Body::new(body));
    *req.method_mut() = Method::POST;
    *req.version_mut() = Version::HTTP_2;
    *req.uri_mut() =
        http::Uri::try_from(p.policy.path.as_str()).expect("a method path is a valid URI");
    *req.headers_mut() = upstream_headers(headers, &call, p.deadline, now);

    // How long the upstream may take to start answering.
    let headers_limit = (!p.policy.client_streaming).then(|| {
        call.started + Duration::from_millis(core.settings.upstream.response_headers_timeout_ms)
    });
    let wait_until = match (p.deadline, headers_limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let fut = channel.send(req);
    let res = match wait_until {
        Some(t) => match tokio::time::timeout_at(t.into(), fut).await {
            Ok(r) => r,
            Err(_) => {
                let what = if p.deadline == Some(t) {
                    "within the call's deadline"
                } else {
                    "in time (no response headers)"
                };
                let r = taken(&p.slot).unwrap_or_else(|| upstream_timeout(&p.upstream, what));
                return wire::status_response(guard.refuse(r).await);
            }
        },
        None => fut.await,
    };
    let resp = match res {
        Ok(r) => r,
        Err(e) => {
            // The deadline is the `timeout_at` above: an error here is the transport's.
            let r = taken(&p.slot)
                .unwrap_or_else(|| upstream_unavailable(&p.upstream, &error_chain(&e)));
            return wire::status_response(guard.refuse(r).await);
        }
    };
    if resp.status() != http::StatusCode::OK {
        let code = http_to_grpc(resp.status());
        let r = Refused::new(
            code,
            format!(
                "upstream {} answered HTTP {} instead of gRPC",
                p.upstream.system,
                resp.status()
            ),
            "UPSTREAM_HTTP_ERROR",
            [("upstream", p.upstream.system.clone())],
        );
        return wire::status_response(guard.refuse(r).await);
    }
    if let Some(code) = wire::grpc_status(resp.headers()) {
        // Trailers-only: the status is in the headers; record it before they leave.
        let reason = if code == 0 {
            "COMPLETED".to_owned()
        } else {
            tonic::Status::from_header_map(resp.headers())
                .map(|s| reason_of(&s))
                .unwrap_or_default()
        };
        return match guard.complete(code, &reason, 0).await {
            Ok(()) => resp.map(tonic::body::Body::new),
            Err(st) => wire::status_response(st),
        };
    }
    let deadline = p
        .deadline
        .map(|d| Box::pin(tokio::time::sleep_until(d.into())));
    let (parts, inner) = resp.into_parts();
    let mut body = ResponseBody {
        inner: Some(inner),
        upstream: p.upstream,
        deadline,
        scan: FrameScanner::default(),
        max,
        bytes: 0,
        slot: p.slot,
        guard: Some(guard),
        core,
        finishing: None,
        held: unary.then(VecDeque::new),
        trailers: None,
        done: false,
    };
    if !unary {
        return http::Response::from_parts(parts, tonic::body::Body::new(body));
    }
    // A unary answer is held until its record is committed: its headers too, so that the
    // whole answer (headers, message, trailers) leaves at once, in one write to the caller.
    let mut frames = VecDeque::new();
    while let Some(Ok(f)) = body.frame().await {
        frames.push_back(f);
    }
    http::Response::from_parts(parts, tonic::body::Body::new(Frames(frames)))
}

/// A body whose frames are all at hand.
struct Frames(VecDeque<Frame<Bytes>>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn taken(slot: &Arc<Mutex<Option<Refused>>>) -> Option<Refused> {
    slot.lock().expect("slot").take()
}

/// The trailers to send, and whether the call's record was committed.
type Finishing = Pin<Box<dyn Future<Output = (HeaderMap, bool)> + Send>>;

/// The response body from the upstream, passed on frame by frame; its end (the upstream's
/// trailers, or the bus's status when the stream broke, the deadline passed or a message
/// was too large) waits for the completion record.
struct ResponseBody {
    inner: Option<crate::upstream_client::UpstreamBody>,
    upstream: Upstream,
    deadline: Option<Pin<Box<Sleep>>>,
    scan: FrameScanner,
    max: usize,
    bytes: u64,
    slot: Arc<Mutex<Option<Refused>>>,
    guard: Option<CallGuard>,
    core: Arc<Core>,
    finishing: Option<Finishing>,
    /// A unary call's answer, held until its record is committed (then released, when the
    /// upstream answered OK, or dropped).
    held: Option<VecDeque<Bytes>>,
    /// The trailers, once the record is committed, sent after the held answer.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl ResponseBody {
    fn finish(&mut self, trailers: HeaderMap, code: i32, reason: String) {
        self.inner = None;
        self.deadline = None;
        if code != 0
            && let Some(h) = self.held.as_mut()
        {
            h.clear();
        }
        let bytes = self.bytes;
        let guard = self.guard.take();
        self.finishing = Some(Box::pin(async move {
            match guard {
                Some(g) => match g.complete(code, &reason, bytes).await {
                    Ok(()) => (trailers, true),
                    Err(st) => (wire::status_headers(&st), false),
                },
                None => (trailers, true),
            }
        }));
    }

    fn finish_with(&mut self, r: Refused) {
        if r.consent {
            self.core.metrics.refusal(&r.reason, true);
        }
        let code = r.status.code() as i32;
        self.finish(wire::status_headers(&r.status), code, r.reason);
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        loop {
            if let Some(f) = this.finishing.as_mut() {
                match f.as_mut().poll(cx) {
                    Poll::Ready((trailers, recorded)) => {
                        this.finishing = None;
                        this.done = true;
                        if !recorded && let Some(h) = this.held.as_mut() {
                            h.clear();
                        }
                        this.trailers = Some(trailers);
                    }
                    Poll::Pending => return Poll::Pending,
                };
            }
            if let Some(t) = this.trailers.take() {
                if let Some(d) = this.held.as_mut().and_then(VecDeque::pop_front) {
                    this.trailers = Some(t);
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(d) = this.deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                let r = Refused::new(
                    Code::DeadlineExceeded,
                    format!(
                        "the call's deadline passed while upstream {} was answering",
                        this.upstream.system
                    ),
                    "DEADLINE_EXCEEDED",
                    [("upstream", this.upstream.system.clone())],
                );
                this.finish_with(r);
                continue;
            }
            let Some(inner) = this.inner.as_mut() else {
                this.done = true;
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        if d.is_empty() {
                            continue;
                        }
                        let max = this.max;
                        let mut over = None;
                        let _ = this.scan.feed::<()>(d, |_, len| {
                            if len as usize > max {
                                over = Some(len);
                                Err(())
                            } else {
                                Ok(())
                            }
                        });
                        if let Some(len) = over {
                            let r = this.core.too_large(
                                len as u64,
                                &format!("upstream {}'s response", this.upstream.system),
                            );
                            this.finish_with(r);
                            continue;
                        }
                        this.bytes += d.len() as u64;
                        if let Some(h) = this.held.as_mut() {
                            // At most one message (and its header) in a unary answer.
                            if this.bytes > max as u64 + 5 {
                                let r = this.core.too_large(
                                    this.bytes,
                                    &format!("upstream {}'s response", this.upstream.system),
                                );
                                this.finish_with(r);
                                continue;
                            }
                            if let Ok(d) = frame.into_data() {
                                h.push_back(d);
                            }
                            continue;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    match frame.into_trailers() {
                        Ok(trailers) => {
                            let code = wire::grpc_status(&trailers).unwrap_or(Code::Unknown as i32);
                            let reason = if code == 0 {
                                "COMPLETED".to_owned()
                            } else {
                                tonic::Status::from_header_map(&trailers)
                                    .map(|s| reason_of(&s))
                                    .unwrap_or_default()
                            };
                            this.finish(trailers, code, reason);
                        }
                        Err(_) => continue,
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    let r = taken(&this.slot).unwrap_or_else(|| {
                        upstream_unavailable(
                            &this.upstream,
                            &format!("the response stream broke: {}", error_chain(&status)),
                        )
                    });
                    this.finish_with(r);
                }
                Poll::Ready(None) => {
                    let r = taken(&this.slot).unwrap_or_else(|| {
                        Refused::new(
                            Code::Internal,
                            format!(
                                "upstream {} ended its response without a gRPC status",
                                this.upstream.system
                            ),
                            "UPSTREAM_PROTOCOL",
                            [("upstream", this.upstream.system.clone())],
                        )
                    });
                    this.finish_with(r);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.finishing.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_headers_replace_identity_deadline_and_trace() {
        let mut h = HeaderMap::new();
        h.insert(CALLER_HEADER, HeaderValue::from_static("gbd-fl"));
        h.append(CALLER_HEADER, HeaderValue::from_static("kdp"));
        h.insert("grpc-timeout", HeaderValue::from_static("5S"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("x-kdp-token", HeaderValue::from_static("tok"));
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let call = crate::gate::Call::new(&h, "sdu", "/a.B/C");
        let now = Instant::now();
        let out = upstream_headers(&h, &call, Some(now + Duration::from_millis(1500)), now);
        let all: Vec<_> = out.get_all(CALLER_HEADER).iter().collect();
        assert_eq!(all, vec!["sdu"]);
        assert_eq!(out.get("grpc-timeout").unwrap(), "1500000u");
        assert_eq!(out.get("te").unwrap(), "trailers");
        assert!(out.get("connection").is_none());
        assert_eq!(out.get("x-kdp-token").unwrap(), "tok");
        assert_eq!(
            out.get(MESSAGE_ID_HEADER).unwrap().to_str().unwrap(),
            call.message_id
        );
        let tp =
            wire::TraceParent::parse(out.get("traceparent").unwrap().to_str().unwrap()).unwrap();
        assert_eq!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(tp.parent_id, "00f067aa0ba902b7");
        // No deadline: none sent.
        assert!(
            upstream_headers(&h, &call, None, now)
                .get("grpc-timeout")
                .is_none()
        );
    }

    #[test]
    fn http_errors_map_to_grpc_codes() {
        assert_eq!(
            http_to_grpc(http::StatusCode::NOT_FOUND),
            Code::Unimplemented
        );
        assert_eq!(
            http_to_grpc(http::StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(http_to_grpc(http::StatusCode::IM_A_TEAPOT), Code::Unknown);
    }
}
