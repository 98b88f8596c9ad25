//! What the tests of the `shep` binary share: the command, and a `shep up` on free ports in
//! a temporary directory that no failed test leaves running.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `shep` binary of this build.
pub fn shep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shep"))
}

/// A running `shep up --any-ports --clock manual` in its own temporary directory (the dev
/// PKI is generated under `var/pki` there). Killed on drop.
pub struct Up {
    pub dir: tempfile::TempDir,
    /// The table it printed, up to the "ready" line.
    pub table: Vec<String>,
    child: Child,
}

impl Up {
    /// Starts it and waits (up to a minute) for its table.
    pub fn start() -> Up {
        let dir = tempfile::tempdir().unwrap();
        let mut child = shep()
            .current_dir(dir.path())
            .args(["up", "--any-ports", "--clock", "manual"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // From here on, a failed assertion kills the child (Drop).
        let mut up = Up { dir, table: vec![], child };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line =
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("shep up prints its table");
            if line.starts_with("ready") {
                break;
            }
            up.table.push(line);
        }
        up
    }

    /// The address (HOST:PORT) of a system in the table.
    pub fn addr(&self, system: &str) -> String {
        self.table
            .iter()
            .find(|l| l.starts_with(&format!("{system} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("{system} address in the table:\n{}", self.table.join("\n")))
            .to_owned()
    }

    /// The directory of its dev PKI.
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("var/pki")
    }

    /// Runs the grpcurl binary (`make test` installs it) with the certificate of `identity`;
    /// `args` end with the address and, for a call, the method. Returns (success, stdout, stderr).
    pub fn grpcurl(&self, identity: &str, args: &[&str]) -> (bool, String, String) {
        let pki = self.pki();
        let out = Command::new(shep_tests::grpcurl())
            .arg("-cacert")
            .arg(pki.join("ca.pem"))
            .arg("-cert")
            .arg(pki.join(format!("{identity}.pem")))
            .arg("-key")
            .arg(pki.join(format!("{identity}.key")))
            .args(args)
            .output()
            .expect("run grpcurl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGTERM, then waits (up to 30 s) for it to stop.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "shep up did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    /// Kills the child when a failed assertion unwinds, so no `shep up` outlives its test.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
