//! The ShEP-style synchronous envelope: `kz.shep.v1.SyncChannel/SendMessage`.
//!
//! The envelope names the method in `request_info.service_id`
//! (`kz.gov.gbdfl.v1.PersonRegistry/GetPerson`, with or without a leading `/`) and carries
//! its request as an `Any`. The bus applies the same stages as to a native call — access
//! to the *named* method, limits, identifiers, consent (tokens in the properties
//! `kdp-token`), audit — then calls the method upstream (the `Any`'s value bytes are the
//! request body as is) and answers with response info: `SCSS001` and the response packed
//! as `Any` (`type.googleapis.com/<output type>`), or `SCSE001` and the upstream's status
//! when the upstream refused the request (a business failure). Bus refusals are gRPC
//! errors as for native calls; an unknown service id is `SCE004`, a malformed envelope
//! (missing info or payload, a payload of the wrong type, a streaming method) `SCE001`.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes};
use shep_proto::shep::{
    MessageData, StatusInfo, SyncMessageResponseInfo, SyncSendMessageRequest,
    SyncSendMessageResponse, sync_channel_server::SyncChannel,
};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::gate::{
    CALLER_HEADER, CORRELATION_ID_HEADER, Call, CallGuard, Core, MESSAGE_ID_HEADER, Refused,
    reason_of,
};
use crate::routing::MethodPath;

/// Status code of an envelope processed successfully.
pub const SCSS001: &str = "SCSS001";
/// Status code of an envelope whose processing failed (a business failure upstream).
pub const SCSE001: &str = "SCSE001";
/// The type URL prefix of packed responses.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// A codec that passes message bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }
    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The full name of the message type an `Any` type URL names (after the last '/').
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// The `SyncChannel` service.
pub struct Envelope {
    core: Arc<Core>,
}

impl Envelope {
    pub fn new(core: Arc<Core>) -> Self {
        Envelope { core }
    }
}

struct Checked {
    upstream: crate::routing::Upstream,
    policy: Arc<crate::policy::MethodPolicy>,
    payload: Bytes,
    tokens: Vec<String>,
}

impl Envelope {
    fn check(
        &self,
        guard: &mut CallGuard,
        caller: Option<&str>,
        req: &SyncSendMessageRequest,
    ) -> Result<Checked, Refused> {
        let core = &self.core;
        let caller = caller.ok_or_else(|| {
            Refused::new(
                Code::Unauthenticated,
                "the client certificate names no system",
                "NO_SYSTEM_IN_CERTIFICATE",
                [],
            )
        })?;
        let info = req
            .request_info
            .as_ref()
            .ok_or_else(|| Refused::bad_format("request_info is missing"))?;
        if info.service_id.trim().is_empty() {
            return Err(Refused::bad_format("request_info.service_id is empty"));
        }
        if let Some(sender) = &info.sender
            && !sender.sender_id.is_empty()
            && sender.sender_id != caller
        {
            return Err(Refused::new(
                Code::PermissionDenied,
                format!(
                    "sender_id {:?} is not the system of the client certificate ({caller})",
                    sender.sender_id
                ),
                "SENDER_MISMATCH",
                [("sender_id", sender.sender_id.clone())],
            ));
        }
        let sid = info.service_id.trim();
        let mp = MethodPath::parse(sid).ok_or_else(|| Refused::unknown_method(sid))?;
        let path = mp.path();
        let upstream = core
            .routes
            .lookup(mp.service)
            .cloned()
            .ok_or_else(|| Refused::unknown_method(&path))?;
        let policy = core
            .policies
            .method(&path)
            .ok_or_else(|| Refused::unknown_method(&path))?;
        if policy.client_streaming || policy.server_streaming {
            return Err(Refused::bad_format(format!(
                "{path} is a streaming method; the synchronous envelope carries unary calls only"
            )));
        }
        core.check_access(caller, &mp.qualified())?;
        guard.hold(core.check_limits(caller)?);
        let any = req
            .request_data
            .as_ref()
            .and_then(|d| d.data.as_ref())
            .ok_or_else(|| Refused::bad_format("request_data.data is missing"))?;
        let want = policy.input.full_name();
        if type_name(&any.type_url) != want {
            return Err(Refused::bad_format(format!(
                "request_data.data is a {:?}, {path} takes a {want}",
                any.type_url
            )));
        }
        let tokens: Vec<String> = info
            .properties
            .iter()
            .filter(|p| p.key == shep_consent::ENVELOPE_PROPERTY && !p.value.trim().is_empty())
            .map(|p| p.value.trim().to_owned())
            .collect();
        let msg = core.decode(&policy, false, None, &any.value)?;
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let (subjects, token_ids) = core.check_message(&policy, caller, &refs, &msg)?;
        let call = guard.call_mut();
        call.subjects = subjects;
        call.token_ids = token_ids;
        Ok(Checked {
            upstream,
            policy,
            payload: Bytes::from(any.value.clone()),
            tokens,
        })
    }
}

fn answer(
    req: &SyncSendMessageRequest,
    call: &Call,
    code: &str,
    message: String,
    data: Option<prost_types::Any>,
) -> SyncSendMessageResponse {
    let now = crate::gate::now_us();
    SyncSendMessageResponse {
        response_info: Some(SyncMessageResponseInfo {
            message_id: call.message_id.clone(),
            correlation_id: call.correlation_id.clone(),
            response_date: Some(prost_types::Timestamp {
                seconds: now.div_euclid(1_000_000),
                nanos: (now.rem_euclid(1_000_000) * 1000) as i32,
            }),
            status: Some(StatusInfo {
                code: code.to_owned(),
                message,
            }),
            session_id: req
                .request_info
                .as_ref()
                .map(|i| i.session_id.clone())
                .unwrap_or_default(),
        }),
        response_data: data.map(|d| MessageData { data: Some(d) }),
    }
}

#[tonic::async_trait]
impl SyncChannel for Envelope {
    async fn send_message(
        &self,
        request: tonic::Request<SyncSendMessageRequest>,
    ) -> Result<tonic::Response<SyncSendMessageResponse>, tonic::Status> {
        let core = self.core.clone();
        let caller = request
            .extensions()
            .get::<shep_runtime::Caller>()
            .map(|c| c.system.as_str().to_owned());
        let headers = request.metadata().clone().into_headers();
        let req = request.into_inner();
        let info = req.request_info.clone().unwrap_or_default();
        let method = MethodPath::parse(info.service_id.trim())
            .map(|m| m.path())
            .unwrap_or_else(|| info.service_id.trim().to_owned());
        let mut call = Call::new(&headers, caller.as_deref().unwrap_or(""), &method);
        if !info.message_id.is_empty() {
            call.message_id = info.message_id.chars().take(128).collect();
        }
        if !info.correlation_id.is_empty() {
            call.correlation_id = info.correlation_id.chars().take(128).collect();
        }
        let mut guard = CallGuard::new(core.clone(), call);
        let checked = match self.check(&mut guard, caller.as_deref(), &req) {
            Ok(c) => c,
            Err(r) => return Err(guard.refuse(r).await),
        };
        if let Err(st) = guard.admit("FORWARDED_ENVELOPE").await {
            guard.disarm();
            return Err(st);
        }
        let call = guard.call().clone();
        let Some(channel) = core.channel(&checked.upstream.system) else {
            return Err(guard
                .refuse(Refused::new(
                    Code::Unavailable,
                    "no channel",
                    "UPSTREAM_UNAVAILABLE",
                    [],
                ))
                .await);
        };
        let deadline = core.deadline(&headers, call.started, true);
        let mut up = tonic::Request::new(checked.payload.clone());
        guard.request_bytes.fetch_add(
            checked.payload.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        {
            let md = up.metadata_mut();
            let put = |md: &mut tonic::metadata::MetadataMap, k: &'static str, v: &str| {
                if let Ok(v) = v.parse() {
                    md.append(k, v);
                }
            };
            put(md, CALLER_HEADER, &call.caller);
            put(md, MESSAGE_ID_HEADER, &call.message_id);
            if !call.correlation_id.is_empty() {
                put(md, CORRELATION_ID_HEADER, &call.correlation_id);
            }
            put(md, "traceparent", &call.upstream_trace.header());
            for t in &checked.tokens {
                put(md, shep_consent::METADATA_KEY, t);
            }
        }
        if let Some(d) = deadline {
            up.set_timeout(d.saturating_duration_since(Instant::now()));
        }
        let max = core.settings.limits.max_message_bytes;
        let path: http::uri::PathAndQuery = checked.policy.path.parse().expect("a method path");
        let system = checked.upstream.system.clone();
        let endpoint = checked.upstream.endpoint.clone();
        let rpc = async move {
            let mut grpc = tonic::client::Grpc::new(channel)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
            grpc.unary(up, path, BytesCodec).await
        };
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), rpc).await {
                Ok(r) => r,
                Err(_) => {
                    let r = Refused::new(
                        Code::DeadlineExceeded,
                        format!(
                            "upstream {system} ({endpoint}) did not answer within the call's deadline"
                        ),
                        "UPSTREAM_TIMEOUT",
                        [("upstream", system.clone())],
                    );
                    return Err(guard.refuse(r).await);
                }
            },
            None => rpc.await,
        };
        match result {
            Ok(resp) => {
                let bytes = resp.into_inner();
                let n = bytes.len() as u64;
                let data = prost_types::Any {
                    type_url: format!("{TYPE_URL_PREFIX}{}", checked.policy.output.full_name()),
                    value: bytes.to_vec(),
                };
                guard.complete(0, "COMPLETED", n).await?;
                Ok(tonic::Response::new(answer(
                    &req,
                    &call,
                    SCSS001,
                    "processed successfully".into(),
                    Some(data),
                )))
            }
            Err(st) if std::error::Error::source(&st).is_some() => {
                // The transport failed: not the upstream's answer.
                let r = Refused::new(
                    Code::Unavailable,
                    format!(
                        "upstream {system} ({endpoint}) is unavailable: {}",
                        st.message()
                    ),
                    "UPSTREAM_UNAVAILABLE",
                    [("upstream", system.clone())],
                );
                Err(guard.refuse(r).await)
            }
            Err(st) => {
                // The upstream answered with an error: a business failure, SCSE001.
                let reason = reason_of(&st);
                guard.complete(st.code() as i32, SCSE001, 0).await?;
                let message = format!(
                    "{} ({}): {}",
                    crate::metrics::code_name(st.code() as i32),
                    reason,
                    st.message()
                );
                Ok(tonic::Response::new(answer(
                    &req, &call, SCSE001, message, None,
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_from_urls() {
        assert_eq!(
            type_name("type.googleapis.com/kz.gov.gbdfl.v1.GetPersonRequest"),
            "kz.gov.gbdfl.v1.GetPersonRequest"
        );
        assert_eq!(
            type_name("kz.gov.gbdfl.v1.GetPersonRequest"),
            "kz.gov.gbdfl.v1.GetPersonRequest"
        );
        assert_eq!(type_name("example.com/x/y.Z"), "y.Z");
    }
}
