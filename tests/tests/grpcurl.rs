//! The real grpcurl binary (1.8, reflection v1alpha only) against a running node over
//! mutual TLS: what a person diagnosing a node does.

use shep_tests::{TestPki, no_kdp_node, run_grpcurl};

#[tokio::test]
async fn grpcurl_lists_describes_and_checks_health() {
    let pki = TestPki::new();
    let node = no_kdp_node(&pki).await;
    let addr = format!("127.0.0.1:{}", node.addr.port());
    let (ok, out, err) = run_grpcurl(&pki, "operator", &[&addr, "list"]).await;
    assert!(ok, "grpcurl list failed: {err}");
    for s in ["kz.gov.kdp.v1.ConsentService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"] {
        assert!(out.lines().any(|l| l.trim() == s), "{s} not listed:\n{out}");
    }

    let (ok, out, err) = run_grpcurl(&pki, "operator", &[&addr, "describe", "kz.gov.kdp.v1.ConsentService"]).await;
    assert!(ok, "describe failed: {err}");
    assert!(out.contains("rpc IssueToken"), "{out}");
    assert!(out.contains("// Issues a token"), "comments from the contracts are shown:\n{out}");

    let (ok, out, err) = run_grpcurl(&pki, "operator", &["-d", "{}", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(ok, "health check failed: {err}");
    assert!(out.contains("\"status\": \"SERVING\""), "{out}");

    // A call refused by the service shows its status code.
    let (ok, _, err) = run_grpcurl(
        &pki,
        "operator",
        &["-d", r#"{"subject":"900515301234","consumer":"sdu","scope":"x"}"#, &addr, "kz.gov.kdp.v1.ConsentService/IssueToken"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("FailedPrecondition"), "{err}");
    // Its details are decoded, not raw bytes: reflection serves google/rpc/error_details.proto.
    assert!(
        err.contains(r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"shep.kz","reason":"NO_CONSENT"}"#),
        "{err}"
    );

    // Without a client certificate grpcurl gets nothing.
    let out = tokio::process::Command::new(shep_tests::grpcurl())
        .arg("-cacert")
        .arg(pki.pki.ca_cert_path())
        .args(["-connect-timeout", "2", addr.as_str(), "list"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "a call without a client certificate must fail");
    node.stop().await;
}
