//! The node runtime over real sockets: mutual TLS with every kind of bad certificate,
//! certificate reload, caller identity, health, reflection, unknown methods, shutdown.

use std::time::Duration;

use shep_pki::{Pki, Validity};
use shep_tests::echo::who_am_i;
use shep_tests::{TestPki, echo_node};
use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

async fn health_ok(ch: tonic::transport::Channel, service: &str) -> Result<i32, tonic::Status> {
    let r = HealthClient::new(ch).check(HealthCheckRequest { service: service.into() }).await?;
    Ok(r.into_inner().status)
}

#[tokio::test]
async fn valid_client_certificate_is_served_and_identified() {
    let pki = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    let me = who_am_i(pki.channel("sdu", node.addr), 0).await.expect("call with a valid cert");
    assert_eq!(me.system, "sdu");
    let me = who_am_i(pki.channel("operator", node.addr), 0).await.unwrap();
    assert_eq!(me.system, "operator");
    assert_eq!(health_ok(pki.channel("sdu", node.addr), "").await.unwrap(), ServingStatus::Serving as i32);
    assert_eq!(
        health_ok(pki.channel("sdu", node.addr), "shep.test.Echo").await.unwrap(),
        ServingStatus::Serving as i32
    );
    node.stop().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let pki = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    let ca = std::fs::read(pki.pki.ca_cert_path()).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let ch = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", node.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    let err = who_am_i(ch, 0).await.expect_err("no client certificate must be refused");
    assert!(matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown), "{err:?}");
    node.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    // Client cert of another CA, but trusting our CA for the server.
    let mut tls = other.tls("sdu");
    tls.ca = pki.pki.ca_cert_path();
    let ch = shep_runtime::tls::channel(&tls, &format!("https://127.0.0.1:{}", node.addr.port())).unwrap();
    let err = who_am_i(ch, 0).await.expect_err("foreign CA must be refused");
    assert!(matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown), "{err:?}");
    node.stop().await;
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let pki = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity { not_before: now - time::Duration::days(30), not_after: now - time::Duration::days(1) };
    pki.pki.issue("old-system", validity, false).unwrap();
    let err = who_am_i(pki.channel("old-system", node.addr), 0).await.expect_err("expired must be refused");
    assert!(matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown), "{err:?}");
    // The same name with a valid certificate works.
    pki.pki.issue("old-system", Validity::days(1), true).unwrap();
    assert_eq!(who_am_i(pki.channel("old-system", node.addr), 0).await.unwrap().system, "old-system");
    node.stop().await;
}

#[tokio::test]
async fn revoked_certificate_is_refused_after_crl_reload() {
    let pki = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    who_am_i(pki.channel("pep", node.addr), 0).await.expect("pep works before revocation");
    pki.pki.revoke("pep").unwrap();
    // The node re-reads the CRL within its reload interval (100 ms in tests); a new
    // connection is refused from then on. Poll rather than sleep a fixed time.
    let mut refused = None;
    for _ in 0..50 {
        match who_am_i(pki.channel("pep", node.addr), 0).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let err = refused.expect("revoked certificate refused after reload");
    assert!(matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown), "{err:?}");
    // Others are still served.
    who_am_i(pki.channel("sdu", node.addr), 0).await.expect("sdu unaffected");
    node.stop().await;
}

/// The serial of the certificate a server presents to a new handshake.
async fn server_serial(pki: &TestPki, addr: std::net::SocketAddr) -> String {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(pki.pki.ca_cert_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let p = pki.pki.paths("sdu");
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(&p.cert).unwrap().map(|c| c.unwrap()).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&p.key).unwrap();
    let cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(certs, key).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial_as_string()
}

#[tokio::test]
async fn rotated_server_certificate_is_picked_up_without_restart() {
    let pki = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    let before = server_serial(&pki, node.addr).await;
    pki.pki.issue("gbd-fl", Validity::days(30), true).unwrap();
    let mut after = before.clone();
    for _ in 0..50 {
        after = server_serial(&pki, node.addr).await;
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(before, after, "a new handshake presents the rotated certificate");
    who_am_i(pki.channel("sdu", node.addr), 0).await.expect("served with the new certificate");
    node.stop().await;
}

#[tokio::test]
async fn broken_files_on_disk_keep_the_previous_configuration() {
    let pki = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    std::fs::write(pki.path().join("crl.pem"), "not a crl").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    who_am_i(pki.channel("sdu", node.addr), 0).await.expect("old configuration still in force");
    node.stop().await;
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    let pki = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    let mut grpc = tonic::client::Grpc::new(pki.channel("sdu", node.addr));
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<shep_tests::echo::WhoAmIRequest, shep_tests::echo::WhoAmIResponse, _>(
            tonic::Request::new(Default::default()),
            http::uri::PathAndQuery::from_static("/kz.nowhere.v1.Nothing/Nope"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    node.stop().await;
}

async fn list_services_v1(ch: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    match stream.next().await.unwrap().unwrap().message_response.unwrap() {
        MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn list_services_v1alpha(ch: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    match stream.next().await.unwrap().unwrap().message_response.unwrap() {
        MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn reflection_lists_the_node_services_in_v1_and_v1alpha() {
    let pki = TestPki::new();
    let b = shep_runtime::NodeBuilder::new(pki.node_config("kdp"))
        .add_service(shep_proto::kdp::consent_service_server::ConsentServiceServer::new(shep_tests::NoKdp))
        .descriptor_set(shep_proto::FILE_DESCRIPTOR_SET);
    let node = shep_tests::TestNode::start(b).await;
    for names in [
        list_services_v1(pki.channel("operator", node.addr)).await,
        list_services_v1alpha(pki.channel("operator", node.addr)).await,
    ] {
        assert!(names.contains(&"kz.gov.kdp.v1.ConsentService".to_string()), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
        assert!(names.contains(&"grpc.reflection.v1alpha.ServerReflection".to_string()), "{names:?}");
        // Only what this node serves, not every contract of the descriptor set.
        assert!(!names.iter().any(|n| n.contains("gbdfl")), "{names:?}");
    }
    node.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish() {
    let pki = TestPki::new();
    let node = echo_node(&pki, "gbd-fl").await;
    let ch = pki.channel("sdu", node.addr);
    let call = tokio::spawn(who_am_i(ch, 500));
    tokio::time::sleep(Duration::from_millis(150)).await;
    node.shutdown.trigger();
    let res = call.await.unwrap();
    assert_eq!(res.expect("in-flight call finishes during graceful shutdown").system, "sdu");
    node.stop().await;
}

#[tokio::test]
async fn missing_certificate_file_names_path_and_command() {
    let pki = TestPki::new();
    let mut cfg = pki.node_config("gbd-fl");
    cfg.tls.cert = pki.path().join("nope.pem");
    let err = shep_runtime::NodeBuilder::new(cfg).start(shep_runtime::Shutdown::new()).await.err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("nope.pem") && msg.contains("shep pki init"), "{msg}");
    let _ = Pki::open(pki.path()).unwrap();
}

#[tokio::test]
async fn callers_outside_the_allow_list_are_refused_with_details() {
    use tonic_types::StatusExt;
    let pki = TestPki::new();
    let mut cfg = pki.node_config("gbd-fl");
    cfg.allowed_callers = vec!["bus".into(), "operator".into()];
    let node = shep_tests::TestNode::start(
        shep_runtime::NodeBuilder::new(cfg).add_service(shep_tests::echo::EchoServer),
    )
    .await;
    assert_eq!(who_am_i(pki.channel("bus", node.addr), 0).await.unwrap().system, "bus");
    assert_eq!(who_am_i(pki.channel("operator", node.addr), 0).await.unwrap().system, "operator");
    let err = who_am_i(pki.channel("sdu", node.addr), 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "CALLER_NOT_ALLOWED");
    assert_eq!(info.domain, "shep.kz");
    assert_eq!(info.metadata.get("caller").map(String::as_str), Some("sdu"));
    node.stop().await;
}

#[tokio::test]
async fn streams_that_never_end_are_cut_after_the_grace_period() {
    let pki = TestPki::new();
    let mut cfg = pki.node_config("gbd-fl");
    cfg.limits.shutdown_grace_ms = 300;
    let node = shep_tests::TestNode::start(shep_runtime::NodeBuilder::new(cfg).add_service(shep_tests::echo::EchoServer)).await;
    // Health/Watch is a server stream that only ends when the server goes away.
    let mut watch = HealthClient::new(pki.channel("sdu", node.addr))
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    node.shutdown.trigger();
    // The node stops (within its grace period) and the stream ends, with NOT_SERVING or an
    // error, instead of keeping the node alive.
    let stop = tokio::time::timeout(Duration::from_secs(10), node.stop());
    let drain = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = watch.next().await {}
    });
    let (stopped, drained) = tokio::join!(stop, drain);
    stopped.expect("node stopped");
    drained.expect("the open stream ended");
}
