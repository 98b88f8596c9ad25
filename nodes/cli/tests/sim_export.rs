//! `shep sim export` from a running `shep up`: while nothing changed, the same bytes as the
//! offline export of the same seed; a change injected through the Scenario service is in the
//! next export; clear errors and exit codes; no half export left behind.

mod common;

use std::path::Path;
use std::process::Output;

use common::{Up, shep};

/// `shep sim export --dir DIR ARGS...` run in `cwd`.
fn export(cwd: &Path, dir: &str, args: &[&str]) -> Output {
    shep().current_dir(cwd).args(["sim", "export", "--dir", dir]).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The summary table printed: (file, lines) per file, and the digest.
fn summary(o: &Output) -> (Vec<(String, u64)>, String) {
    assert!(o.status.success(), "{}", stderr(o));
    let out = String::from_utf8_lossy(&o.stdout);
    let files = out
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|w| w.ends_with(".jsonl")))
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_owned(), w.next().unwrap().parse().unwrap())
        })
        .collect();
    let digest = out.lines().find_map(|l| l.strip_prefix("digest ")).expect("a digest line").to_owned();
    (files, digest)
}

/// The names of the files in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

#[test]
fn live_export_from_a_running_topology() {
    let up = Up::start();
    let root = up.dir.path();

    // Nothing changed yet: the live state is what the (default) seed generates.
    let offline = export(root, "offline", &[]);
    let (files, digest) = summary(&offline);
    let gbd_fl = format!("https://{}", up.addr("gbd-fl"));
    let live = export(root, "live", &["--addr", &gbd_fl]);
    assert!(String::from_utf8_lossy(&live.stdout).contains(&format!("exported the state of {gbd_fl}")));
    assert_eq!(summary(&live), (files.clone(), digest.clone()));
    let expected: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    assert_eq!(expected.len(), 7);
    for (f, lines) in &files {
        let bytes = std::fs::read(root.join("live").join(f)).unwrap();
        assert_eq!(bytes, std::fs::read(root.join("offline").join(f)).unwrap(), "{f}");
        assert_eq!(bytes.iter().filter(|b| **b == b'\n').count() as u64, *lines, "{f}");
    }

    // A rename injected through GBD UL is in the next export, taken through the bus (it
    // routes Scenario to a simulator; given as HOST:PORT), over the previous one.
    let first = std::fs::read_to_string(root.join("offline/gbd-ul.jsonl")).unwrap();
    let org: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let bin = org["bin"].as_str().unwrap();
    let req = format!(r#"{{"bin":"{bin}","new_name":{{"ru":"ТОО «Экспорт»","kk":"«Экспорт» ЖШС"}}}}"#);
    let (ok, _, err) =
        up.grpcurl("operator", &["-d", &req, &up.addr("gbd-ul"), "kz.shep.sim.v1.Scenario/InjectRename"]);
    assert!(ok, "{err}");
    let again = export(root, "live", &["--addr", &up.addr("bus")]);
    let (after, after_digest) = summary(&again);
    assert_ne!(after_digest, digest);
    assert_eq!(after, files, "a rename adds no line");
    let ul = std::fs::read_to_string(root.join("live/gbd-ul.jsonl")).unwrap();
    let renamed: serde_json::Value = serde_json::from_str(ul.lines().next().unwrap()).unwrap();
    assert_eq!((renamed["bin"].as_str(), renamed["name"]["ru"].as_str()), (Some(bin), Some("ТОО «Экспорт»")));
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(names(&root.join("live")), sorted, "the export's files and nothing else");
    for f in expected.iter().filter(|f| *f != "gbd-ul.jsonl") {
        assert_eq!(
            std::fs::read(root.join("live").join(f)).unwrap(),
            std::fs::read(root.join("offline").join(f)).unwrap(),
            "{f}"
        );
    }

    // Errors: the exit code scripts rely on, a message that says what to fix, no files.
    let o = export(root, "failed", &["--addr", &gbd_fl, "--pki", "nopki"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("nopki") && stderr(&o).contains("shep pki init"), "{}", stderr(&o));
    let o = export(root, "failed", &["--addr", &gbd_fl, "--identity", "sdu"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("PermissionDenied") && stderr(&o).contains("operator"), "{}", stderr(&o));
    let o = export(root, "failed", &["--addr", &up.addr("sdu")]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("must be a simulator node"), "{}", stderr(&o));
    let o = export(root, "failed", &["--addr", "https://127.0.0.1:9"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is the node running"), "{}", stderr(&o));
    let o = export(root, "failed", &["--addr", &gbd_fl, "--seed", "7"]);
    assert_eq!(o.status.code(), Some(2), "--seed makes no sense with --addr");
    assert!(names(&root.join("failed")).is_empty(), "{:?}", names(&root.join("failed")));

    assert!(up.terminate().success());
}
