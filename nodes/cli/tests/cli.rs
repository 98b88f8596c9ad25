//! The `shep` binary as a user runs it: help, exit codes, the PKI commands, `shep up`.

mod common;

use common::{Up, shep};

#[test]
fn help_on_every_command() {
    for args in [
        vec!["--help"],
        vec!["up", "--help"],
        vec!["node", "--help"],
        vec!["pki", "--help"],
        vec!["pki", "init", "--help"],
        vec!["pki", "issue", "--help"],
        vec!["pki", "revoke", "--help"],
        vec!["sim", "export", "--help"],
        vec!["audit", "verify", "--help"],
        vec!["audit", "subject", "--help"],
        vec!["example-config", "--help"],
    ] {
        let out = shep().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
    let out = shep().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn pki_init_issue_revoke_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("pki");
    let out = shep().args(["pki", "init", "--dir"]).arg(&d).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["ca.pem", "crl.pem", "bus.pem", "bus.key", "operator.pem", "sdu.key"] {
        assert!(d.join(f).exists(), "{f}");
    }
    // Refuses to overwrite the CA without --force, and says how.
    let out = shep().args(["pki", "init", "--dir"]).arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));

    let out = shep().args(["pki", "issue", "expertiza", "--dir"]).arg(&d).output().unwrap();
    assert!(out.status.success());
    assert!(d.join("expertiza.pem").exists());
    let out = shep().args(["pki", "issue", "Not Valid", "--dir"]).arg(&d).output().unwrap();
    assert_eq!(out.status.code(), Some(3));

    let out = shep().args(["pki", "revoke", "expertiza", "--dir"]).arg(&d).output().unwrap();
    assert!(out.status.success());
    let out = shep().args(["pki", "list", "--dir"]).arg(&d).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.lines().any(|l| l.starts_with("expertiza") && l.contains("at ")), "{list}");

    // A directory without a CA: exit 3 and the command that makes one.
    let out = shep().args(["pki", "revoke", "bus", "--dir"]).arg(dir.path().join("none")).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shep pki init"));
}

#[test]
fn node_with_a_malformed_or_missing_config_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("n.toml");
    std::fs::write(&cfg, "[node]\nsystem = \"gbd-fl\"\nlisten = \n").unwrap();
    let out = shep().args(["node", "gbd-fl", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("n.toml"));

    // A valid config whose certificate files do not exist.
    let text = String::from_utf8(
        shep().args(["example-config", "gbd-fl", "--pki"]).arg(dir.path().join("nopki")).output().unwrap().stdout,
    )
    .unwrap();
    std::fs::write(&cfg, text.replace("0.0.0.0:7002", "127.0.0.1:0")).unwrap();
    let out = shep().args(["node", "gbd-fl", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nopki") && err.contains("shep pki init"), "{err}");
}

#[test]
fn example_configs_load() {
    let dir = tempfile::tempdir().unwrap();
    let nopki = dir.path().join("nopki");
    for name in ["topology", "bus", "gbd-ul", "gbd-fl", "zags", "e-license", "bmg", "pep", "kdp", "sdu"] {
        let out = shep().args(["example-config", name, "--pki"]).arg(&nopki).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.parse::<toml::Table>().is_ok(), "{name} example is valid TOML:\n{text}");
        if name == "topology" {
            continue;
        }
        // The node accepts its example: it gets as far as the missing certificate files.
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text.as_bytes()).unwrap();
        // Run in the temp dir: relative paths of the example (the bus's audit log) land there.
        let out = shep().current_dir(dir.path()).args(["node", name, "--config"]).arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains("shep pki init"), "{name}: the config loads and the error names the fix: {err}");
    }
}

/// `shep up` on free ports: prints the table, answers grpcurl through the bus, stops on SIGTERM.
#[test]
fn up_prints_the_table_and_stops_on_sigterm() {
    let up = Up::start();
    let text = up.table.join("\n");
    for system in ["bus", "gbd-ul", "gbd-fl", "zags", "e-license", "bmg", "pep", "kdp"] {
        assert!(up.table.iter().any(|l| l.starts_with(&format!("{system} "))), "{system} missing:\n{text}");
    }
    assert!(up.pki().join("ca.pem").exists(), "dev PKI generated under ./var/pki");
    assert!(!up.addr("bus").ends_with(":7000"), "--any-ports: free ports, not the defaults:\n{text}");
    grpcurl_through_the_bus(&up);
    // SIGTERM: a graceful stop with exit 0.
    let status = up.terminate();
    assert!(status.success(), "{status:?}");
}

/// The grpcurl binary (`make test` installs it) against the bus of a running `shep up`.
fn grpcurl_through_the_bus(up: &Up) {
    let bus = up.addr("bus");
    let gbd_ul = up.addr("gbd-ul");
    let grpcurl = |identity: &str, args: &[&str]| up.grpcurl(identity, args);
    // The bus lists every routed registry.
    let (ok, out, err) = grpcurl("operator", &[&bus, "list"]);
    assert!(ok, "{err}");
    for s in ["kz.gov.gbdfl.v1.PersonRegistry", "kz.gov.gbdul.v1.OrganizationRegistry", "kz.shep.v1.SyncChannel", "grpc.health.v1.Health"] {
        assert!(out.lines().any(|l| l.trim() == s), "{s} not listed by the bus:\n{out}");
    }
    // Health of a routed service, through the bus.
    let (ok, out, err) = grpcurl("operator", &["-d", r#"{"service":"kz.gov.gbdul.v1.OrganizationRegistry"}"#, &bus, "grpc.health.v1.Health/Check"]);
    assert!(ok, "{err}");
    assert!(out.contains("SERVING"), "{out}");
    // A malformed BIN is refused by the bus with SCE001 and a field violation.
    let (ok, _, err) = grpcurl("operator", &["-d", r#"{"bin":"123"}"#, &bus, "kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization"]);
    assert!(!ok);
    // grpcurl 1.8 names the detail types (their values it prints raw).
    assert!(err.contains("InvalidArgument") && err.contains("not a valid BIN"), "{err}");
    assert!(err.contains("google.rpc.ErrorInfo") && err.contains("google.rpc.BadRequest"), "{err}");
    // A well-formed BIN nobody holds: the registry answers NOT_FOUND through the bus.
    let (ok, _, err) = grpcurl("operator", &["-d", r#"{"bin":"150340000014"}"#, &bus, "kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization"]);
    assert!(!ok);
    assert!(err.contains("NotFound") || err.contains("InvalidArgument"), "{err}");
    // Registries accept only the bus and the operator: the SDU's certificate is refused.
    let (ok, _, err) = grpcurl("sdu", &["-d", r#"{"bin":"150340000014"}"#, &gbd_ul, "kz.gov.gbdul.v1.OrganizationRegistry/GetOrganization"]);
    assert!(!ok);
    assert!(err.contains("PermissionDenied") && err.contains("through the bus"), "{err}");
}
