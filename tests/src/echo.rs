//! A tiny gRPC service for testing the runtime without any registry: `WhoAmI` answers the
//! caller's system id as the runtime saw it in the client certificate, `Sleep` holds a
//! call open (for graceful shutdown).

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::uri::PathAndQuery;
use shep_runtime::Caller;
use tonic::body::Body;
use tonic::server::{NamedService, UnaryService};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoAmIRequest {
    /// Milliseconds to wait before answering.
    #[prost(uint64, tag = "1")]
    pub sleep_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WhoAmIResponse {
    #[prost(string, tag = "1")]
    pub system: String,
    #[prost(string, tag = "2")]
    pub serial: String,
}

#[derive(Clone, Debug, Default)]
pub struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "shep.test.Echo";
}

struct WhoAmI;

impl UnaryService<WhoAmIRequest> for WhoAmI {
    type Response = WhoAmIResponse;
    type Future = BoxFuture<'static, Result<tonic::Response<WhoAmIResponse>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<WhoAmIRequest>) -> Self::Future {
        let caller = Caller::of(&req).cloned();
        let sleep = req.get_ref().sleep_ms;
        Box::pin(async move {
            let caller = caller?;
            tokio::time::sleep(Duration::from_millis(sleep)).await;
            Ok(tonic::Response::new(WhoAmIResponse { system: caller.system.to_string(), serial: caller.serial }))
        })
    }
}

impl tower::Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match req.uri().path() {
            "/shep.test.Echo/WhoAmI" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::<WhoAmIResponse, WhoAmIRequest>::default());
                Ok(grpc.unary(WhoAmI, req).await)
            }),
            _ => Box::pin(async { Ok(tonic::Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Calls `WhoAmI` on a channel.
pub async fn who_am_i(
    channel: tonic::transport::Channel,
    sleep_ms: u64,
) -> Result<WhoAmIResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = ProstCodec::<WhoAmIRequest, WhoAmIResponse>::default();
    grpc.unary(
        tonic::Request::new(WhoAmIRequest { sleep_ms }),
        PathAndQuery::from_static("/shep.test.Echo/WhoAmI"),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}
