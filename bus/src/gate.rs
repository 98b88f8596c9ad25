//! What every path into the bus shares (the native forwarder, the envelope, the admin
//! service): the state, the stages as functions returning [`Refused`], and the audit of a
//! call from its decision to its completion ([`CallGuard`]).

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use prost_reflect::DynamicMessage;
use tonic::Code;
use crate::upstream_client::UpstreamClient;
use tonic_types::{ErrorDetails, StatusExt};

use crate::access::AccessMatrix;
use crate::audit::{AuditLog, Entry};
use crate::config::BusSettings;
use crate::consent::{ConsentRefusal, ConsentState};
use crate::limits::{Limiter, Permit};
use crate::metrics::Metrics;
use crate::policy::{MethodPolicy, PolicyBook, check_identifiers, subjects};
use crate::routing::RouteTable;
use crate::wire::TraceParent;

/// The metadata key by which the bus tells an upstream who the original caller is.
pub const CALLER_HEADER: &str = "x-shep-caller";
/// The metadata key of the caller's message id.
pub const MESSAGE_ID_HEADER: &str = "x-message-id";
/// The metadata key of the caller's correlation id.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// The bus's state, shared by every call.
pub struct Core {
    pub settings: BusSettings,
    pub routes: RouteTable,
    pub policies: PolicyBook,
    pub access: AccessMatrix,
    pub limiter: Limiter,
    pub consent: ConsentState,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// One mutual-TLS channel per upstream system (rebuilt on certificate rotation).
    pub upstreams: crate::upstreams::Upstreams,
    /// The clock consent tokens are judged by (expiry): the system's, or a simulation's,
    /// so that tokens issued on a manual clock are judged on the same clock.
    pub token_clock: TokenClock,
}

/// Unix seconds now, for judging token expiry.
pub type TokenClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock as a [`TokenClock`].
pub fn system_token_clock() -> TokenClock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0))
}

/// A call refused by a stage of the bus.
#[derive(Debug, Clone)]
pub struct Refused {
    /// What the caller receives.
    pub status: tonic::Status,
    /// The ErrorInfo reason, as recorded in the audit.
    pub reason: String,
    /// Refused by the consent check (counted apart in the metrics).
    pub consent: bool,
    /// The data subjects the refused request named, for the audit.
    pub subjects: Vec<String>,
}

impl Refused {
    /// A refusal with an ErrorInfo.
    pub fn new<'a>(
        code: Code,
        message: impl Into<String>,
        reason: &str,
        metadata: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Refused {
        Refused {
            status: shep_runtime::status::error(code, message, reason, metadata),
            reason: reason.to_owned(),
            consent: false,
            subjects: vec![],
        }
    }

    /// UNIMPLEMENTED, reason `SCE004`: no such service or method on the bus.
    pub fn unknown_method(path: &str) -> Refused {
        Refused::new(
            Code::Unimplemented,
            format!("the bus routes no method {path:?}"),
            "SCE004",
            [("method", path.to_owned())],
        )
    }

    /// INVALID_ARGUMENT, reason `SCE001`: the request is malformed.
    pub fn bad_format(message: impl Into<String>) -> Refused {
        Refused::new(Code::InvalidArgument, message, "SCE001", [])
    }

    /// A consent refusal.
    pub fn consent(r: &ConsentRefusal, subjects: &[String]) -> Refused {
        let mut x = Refused::new(
            r.code(),
            r.to_string(),
            r.reason(),
            [("subject", subjects.join(","))],
        );
        x.consent = true;
        x.subjects = subjects.to_vec();
        x
    }
}

/// The ErrorInfo reason of a status, or its code name.
pub fn reason_of(status: &tonic::Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|e| e.reason.clone())
        .unwrap_or_else(|| crate::metrics::code_name(status.code() as i32).to_owned())
}

/// UNAVAILABLE, reason `AUDIT_UNAVAILABLE`.
pub fn audit_unavailable(why: impl std::fmt::Display) -> tonic::Status {
    shep_runtime::status::error(
        Code::Unavailable,
        format!("the bus cannot write its audit log, so it answers no call: {why}"),
        "AUDIT_UNAVAILABLE",
        [],
    )
}

/// Unix microseconds now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One call, as the audit and the logs know it.
#[derive(Debug, Clone)]
pub struct Call {
    pub started: Instant,
    pub received_at_us: i64,
    pub message_id: String,
    pub correlation_id: String,
    pub caller: String,
    /// `/package.Service/Method` (what the caller asked for, even when unknown).
    pub method: String,
    pub subjects: Vec<String>,
    pub token_ids: Vec<String>,
    /// The caller's trace context (generated when it sent none).
    pub trace: TraceParent,
    /// The context sent upstream: same trace, the bus's hop as parent.
    pub upstream_trace: TraceParent,
    /// True when the caller sent a valid `traceparent`.
    pub trace_from_caller: bool,
}

fn header<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
    h.get(k)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// At most `max` characters of `s`.
fn clipped(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

impl Call {
    /// A call received now, with ids from the metadata (a UUIDv7 message id when none).
    pub fn new(headers: &HeaderMap, caller: &str, method: &str) -> Call {
        let incoming = header(headers, "traceparent").and_then(TraceParent::parse);
        let trace_from_caller = incoming.is_some();
        let trace = incoming.unwrap_or_else(TraceParent::generate);
        Call {
            started: Instant::now(),
            received_at_us: now_us(),
            message_id: header(headers, MESSAGE_ID_HEADER)
                .map(|s| clipped(s, 128))
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            correlation_id: header(headers, CORRELATION_ID_HEADER)
                .map(|s| clipped(s, 128))
                .unwrap_or_default(),
            caller: caller.to_owned(),
            method: clipped(method, 256),
            subjects: vec![],
            token_ids: vec![],
            upstream_trace: trace.child(),
            trace,
            trace_from_caller,
        }
    }

    fn entry(&self, allowed: bool, reason: &str, grpc_status: i32) -> Entry {
        Entry {
            call_seq: None,
            whole: false,
            message_id: self.message_id.clone(),
            correlation_id: self.correlation_id.clone(),
            caller: self.caller.clone(),
            method: self.method.clone(),
            subject: self.subjects.join(","),
            token_ids: self.token_ids.join(","),
            allowed,
            reason: reason.to_owned(),
            grpc_status,
            received_at_us: self.received_at_us,
            duration_us: self.started.elapsed().as_micros() as u64,
            request_bytes: 0,
            response_bytes: 0,
            trace_id: self.trace.trace_id.clone(),
        }
    }
}

impl Core {
    /// Records a refusal (and waits for its commit), then returns what to answer: the
    /// refusal, or AUDIT_UNAVAILABLE when it could not be recorded.
    pub async fn refuse(&self, call: &Call, r: Refused) -> tonic::Status {
        let code = r.status.code() as i32;
        let mut entry = call.entry(false, &r.reason, code);
        if entry.subject.is_empty() {
            entry.subject = r.subjects.join(",");
        }
        let written = self.audit.append(entry).await;
        self.metrics.refusal(&r.reason, r.consent);
        tracing::info!(
            trace_id = %call.trace.trace_id, parent_id = %call.trace.parent_id, message_id = %call.message_id,
            caller = %call.caller, method = %call.method, subject = %call.subjects.join(","),
            reason = %r.reason, code = crate::metrics::code_name(code), "refused"
        );
        match written {
            Ok(_) => {
                self.metrics
                    .call(&call.caller, &call.method, code, call.started.elapsed());
                r.status
            }
            Err(e) => {
                self.metrics.call(
                    &call.caller,
                    &call.method,
                    Code::Unavailable as i32,
                    call.started.elapsed(),
                );
                audit_unavailable(e)
            }
        }
    }

    /// Records the decision to forward (and waits for its commit); returns its `seq`.
    pub async fn admit(&self, call: &Call, reason: &str) -> Result<u64, tonic::Status> {
        match self.audit.append(call.entry(true, reason, -1)).await {
            Ok(seq) => Ok(seq),
            Err(e) => {
                self.metrics.refusal("AUDIT_UNAVAILABLE", false);
                self.metrics.call(
                    &call.caller,
                    &call.method,
                    Code::Unavailable as i32,
                    call.started.elapsed(),
                );
                Err(audit_unavailable(e))
            }
        }
    }

    /// Records the end of a forwarded call (and waits for its commit): its completion
    /// record after the decision record `decision_seq`, or, without one (a unary call), its
    /// single record.
    #[allow(clippy::too_many_arguments)]
    pub async fn complete(
        &self,
        call: &Call,
        decision_seq: Option<u64>,
        code: i32,
        reason: &str,
        extra: &Seen,
        request_bytes: u64,
        response_bytes: u64,
    ) -> Result<(), tonic::Status> {
        let mut e = call.entry(true, reason, code);
        e.call_seq = decision_seq;
        e.whole = decision_seq.is_none();
        e.request_bytes = request_bytes;
        e.response_bytes = response_bytes;
        let (more_subjects, more_tokens) = extra.take();
        let mut s = call.subjects.clone();
        for x in more_subjects {
            if !s.contains(&x) {
                s.push(x);
            }
        }
        let mut t = call.token_ids.clone();
        for x in more_tokens {
            if !t.contains(&x) {
                t.push(x);
            }
        }
        e.subject = s.join(",");
        e.token_ids = t.join(",");
        let elapsed = call.started.elapsed();
        let r = self.audit.append(e).await;
        tracing::info!(
            trace_id = %call.trace.trace_id, parent_id = %call.trace.parent_id, upstream_parent_id = %call.upstream_trace.parent_id,
            message_id = %call.message_id, caller = %call.caller, method = %call.method,
            code = crate::metrics::code_name(code), reason, duration_us = elapsed.as_micros() as u64,
            request_bytes, response_bytes, "call completed"
        );
        match r {
            Ok(_) => {
                self.metrics.call(&call.caller, &call.method, code, elapsed);
                Ok(())
            }
            Err(e) => {
                self.metrics.call(
                    &call.caller,
                    &call.method,
                    Code::Unavailable as i32,
                    elapsed,
                );
                Err(audit_unavailable(e))
            }
        }
    }

    /// The access matrix stage.
    pub fn check_access(&self, caller: &str, qualified: &str) -> Result<(), Refused> {
        self.access
            .decide(caller, qualified)
            .map(|_| ())
            .map_err(|d| {
                Refused::new(
                    Code::PermissionDenied,
                    format!("{caller} may not call {qualified} ({})", d.rule),
                    "ACCESS_DENIED",
                    [
                        ("rule", d.rule.clone()),
                        ("caller", caller.to_owned()),
                        ("method", qualified.to_owned()),
                    ],
                )
            })
    }

    /// The limits stage: a permit held until the call ends.
    pub fn check_limits(&self, caller: &str) -> Result<Permit, Refused> {
        let limits = self.settings.limits.for_caller(caller);
        self.limiter
            .acquire(caller, &limits, Instant::now())
            .map_err(|e| {
                let mut details = ErrorDetails::with_retry_info(Some(e.retry_after()));
                details.set_error_info(
                    e.reason(),
                    shep_runtime::status::DOMAIN,
                    HashMap::from([("caller".to_owned(), caller.to_owned())]),
                );
                Refused {
                    status: tonic::Status::with_error_details(
                        Code::ResourceExhausted,
                        e.message(caller),
                        details,
                    ),
                    reason: e.reason().to_owned(),
                    consent: false,
                    subjects: vec![],
                }
            })
    }

    /// RESOURCE_EXHAUSTED for a message over the limit.
    pub fn too_large(&self, len: u64, whose: &str) -> Refused {
        Refused::new(
            Code::ResourceExhausted,
            format!(
                "{whose} message of {len} bytes is over the bus's limit of {} bytes",
                self.settings.limits.max_message_bytes
            ),
            "MESSAGE_TOO_LARGE",
            [("limit", self.settings.limits.max_message_bytes.to_string())],
        )
    }

    /// Decodes one request message of `policy` (gunzipping it when flagged compressed).
    pub fn decode(
        &self,
        policy: &MethodPolicy,
        compressed: bool,
        encoding: Option<&str>,
        payload: &[u8],
    ) -> Result<DynamicMessage, Refused> {
        let max = self.settings.limits.max_message_bytes;
        let plain;
        let bytes = if compressed {
            if encoding != Some("gzip") {
                return Err(Refused::new(
                    Code::Unimplemented,
                    format!(
                        "the bus cannot inspect messages compressed with {:?}; use gzip or none",
                        encoding.unwrap_or("")
                    ),
                    "UNSUPPORTED_COMPRESSION",
                    [],
                ));
            }
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(payload)
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| {
                    Refused::bad_format(format!("the request message does not gunzip: {e}"))
                })?;
            if out.len() > max {
                return Err(self.too_large(out.len() as u64, "the decompressed request"));
            }
            plain = out;
            plain.as_slice()
        } else {
            payload
        };
        DynamicMessage::decode(policy.input.clone(), bytes).map_err(|e| {
            Refused::bad_format(format!(
                "the request is not a valid {}: {e}",
                policy.input.full_name()
            ))
        })
    }

    /// The field and consent stages for one decoded request message: identifiers first,
    /// then the subject's consent. Returns the subjects and the token ids used.
    pub fn check_message(
        &self,
        policy: &MethodPolicy,
        caller: &str,
        tokens: &[&str],
        msg: &DynamicMessage,
    ) -> Result<(Vec<String>, Vec<String>), Refused> {
        check_identifiers(msg, self.policies.ids()).map_err(|v| {
            let st = shep_runtime::status::invalid_field(&v.field, v.description.clone(), "SCE001");
            Refused {
                status: st,
                reason: "SCE001".into(),
                consent: false,
                subjects: vec![],
            }
        })?;
        let Some(pd) = &policy.personal_data else {
            return Ok((vec![], vec![]));
        };
        let subs = subjects(msg, pd);
        let now = (self.token_clock)();
        let used = self
            .consent
            .decide(&subs, tokens, caller, &pd.kdp_scope, now, Instant::now())
            .map_err(|r| Refused::consent(&r, &subs))?;
        Ok((subs, used))
    }

    /// The mutual-TLS client of an upstream system.
    pub fn channel(&self, system: &str) -> Option<UpstreamClient> {
        self.upstreams.get(system)
    }

    /// The deadline of a call: the caller's `grpc-timeout`, else for a unary call the
    /// configured default.
    pub fn deadline(&self, headers: &HeaderMap, started: Instant, unary: bool) -> Option<Instant> {
        match headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::wire::parse_timeout)
        {
            Some(d) => Some(started + d),
            None if unary => Some(
                started + Duration::from_millis(self.settings.upstream.default_unary_timeout_ms),
            ),
            None => None,
        }
    }
}

/// Subjects and tokens seen in request messages after the first (client streams).
#[derive(Debug, Default, Clone)]
pub struct Seen(Arc<Mutex<(Vec<String>, Vec<String>)>>);

impl Seen {
    pub fn add(&self, subjects: Vec<String>, tokens: Vec<String>) {
        let mut g = self.0.lock().expect("seen lock");
        g.0.extend(subjects);
        g.1.extend(tokens);
    }
    fn take(&self) -> (Vec<String>, Vec<String>) {
        std::mem::take(&mut *self.0.lock().expect("seen lock"))
    }
}

/// The audit obligation of a call in progress. Dropped before it was settled (the caller
/// went away), it still writes the call's record: a refusal `CLIENT_CANCELLED` when no
/// decision was recorded, else a completion with CANCELLED.
pub struct CallGuard {
    core: Arc<Core>,
    call: Option<Call>,
    seq: Option<u64>,
    /// Forwarded without a decision record: the call's single record is written at its end.
    deferred: bool,
    _permit: Option<Permit>,
    pub request_bytes: Arc<AtomicU64>,
    pub seen: Seen,
}

impl CallGuard {
    pub fn new(core: Arc<Core>, call: Call) -> CallGuard {
        CallGuard {
            core,
            call: Some(call),
            seq: None,
            deferred: false,
            _permit: None,
            request_bytes: Arc::new(AtomicU64::new(0)),
            seen: Seen::default(),
        }
    }

    pub fn call(&self) -> &Call {
        self.call.as_ref().expect("call settled")
    }

    pub fn call_mut(&mut self) -> &mut Call {
        self.call.as_mut().expect("call settled")
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Holds the caller's concurrency permit until the guard is settled or dropped.
    pub fn hold(&mut self, permit: Permit) {
        self._permit = Some(permit);
    }

    /// Settles the call as refused: records it and returns what to answer.
    pub async fn refuse(mut self, r: Refused) -> tonic::Status {
        let call = self.call.take().expect("call settled");
        match self.seq {
            None if !self.deferred => self.core.refuse(&call, r).await,
            seq => {
                // Refused after the decision (a later message of a stream, or the upstream
                // failed): the end of an allowed call.
                let code = r.status.code() as i32;
                self.core.metrics.refusal(&r.reason, r.consent);
                self.seen.add(r.subjects.clone(), vec![]);
                let bytes = self.request_bytes.load(Ordering::Relaxed);
                match self
                    .core
                    .complete(&call, seq, code, &r.reason, &self.seen, bytes, 0)
                    .await
                {
                    Ok(()) => r.status,
                    Err(st) => st,
                }
            }
        }
    }

    /// Gives up the call's record (only when the audit itself failed to write it).
    pub fn disarm(&mut self) {
        self.call = None;
    }

    /// Forwards without a decision record: the call's single record is written when it
    /// ends ([`CallGuard::complete`]), before any of its answer is released. Only for a call
    /// whose answer is held until then (unary).
    pub fn defer(&mut self) {
        self.deferred = true;
    }

    /// Records the decision to forward.
    pub async fn admit(&mut self, reason: &str) -> Result<(), tonic::Status> {
        let seq = self.core.admit(self.call(), reason).await?;
        self.seq = Some(seq);
        Ok(())
    }

    /// Settles an admitted call with its final status; `Err` (AUDIT_UNAVAILABLE) when the
    /// completion could not be recorded.
    pub async fn complete(
        mut self,
        code: i32,
        reason: &str,
        response_bytes: u64,
    ) -> Result<(), tonic::Status> {
        let call = self.call.take().expect("call settled");
        let seq = self.seq;
        debug_assert!(seq.is_some() || self.deferred, "admitted or deferred");
        let bytes = self.request_bytes.load(Ordering::Relaxed);
        self.core
            .complete(&call, seq, code, reason, &self.seen, bytes, response_bytes)
            .await
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let Some(call) = self.call.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let core = self.core.clone();
        let seq = self.seq;
        let deferred = self.deferred;
        let bytes = self.request_bytes.load(Ordering::Relaxed);
        let seen = self.seen.clone();
        rt.spawn(async move {
            match seq {
                None if !deferred => {
                    let r = Refused::new(
                        Code::Cancelled,
                        "the caller cancelled the call",
                        "CLIENT_CANCELLED",
                        [],
                    );
                    let _ = core.refuse(&call, r).await;
                }
                seq => {
                    let _ = core
                        .complete(
                            &call,
                            seq,
                            Code::Cancelled as i32,
                            "CLIENT_CANCELLED",
                            &seen,
                            bytes,
                            0,
                        )
                        .await;
                }
            }
        });
    }
}
