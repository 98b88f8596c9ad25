//! The bus against a plain gRPC reverse proxy.
//!
//! One load — GBD FL `GetPerson` with a valid KDP consent token per call, at a fixed
//! concurrency over one mutual-TLS HTTP/2 connection — against three targets:
//!
//! - (a) **direct**: straight to a test GBD FL upstream;
//! - (b) **bus**: through the bus, with every check (identity, access, identifiers, consent
//!   with signature and revocations) and the audit log (one record per call, committed
//!   before the answer is released; group commit, `synchronous=FULL`);
//! - (b') the same bus with the audit at `synchronous=NORMAL` (no fsync per batch);
//! - (c) **nginx**: through nginx with `grpc_pass grpcs://` and `ssl_verify_client on`
//!   (installed with `apt-get install -y nginx` when missing, run as a child process with
//!   `-p`/`-c` and `daemon off`; reported as unavailable when it cannot be installed).
//!
//! Each target is measured twice: saturated, at a fixed number of calls in flight (the
//! throughput, and latency with queueing), then one call at a time (the latency a hop adds
//! when nothing queues: "p50 added" against (a)).
//!
//! Prints calls/s, p50, p99, CPU seconds per 10k calls (this process — client, upstream and
//! bus — from `/proc/self/stat`; nginx's master and workers from theirs) and the ratios to
//! (a) and (c). The targets are measured in turn, in `SHEP_BENCH_ROUNDS` rounds (3), and
//! each target's median round is reported (runs on a shared machine vary by a fifth). Takes
//! about two minutes. Knobs: `SHEP_BENCH_CONCURRENCY` (32), `SHEP_BENCH_SECONDS` (6),
//! `SHEP_BENCH_WARMUP` (1), `SHEP_BENCH_SERIAL_SECONDS` (4), `SHEP_BENCH_ONLY` (`a`, `b`, `b'`
//! or `c`: one target, for profiling), `SHEP_BENCH_SUBJECTS` (1000: distinct subjects and
//! tokens, cycled through).
//!
//! Run: `cargo bench -p shep-bus --bench bus_vs_nginx`.

// The allocator of the `shep` binary, so that the bus here costs what it costs there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shep_proto::gbdfl::{self, person_registry_client::PersonRegistryClient};
use tonic::transport::Channel;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// CPU seconds (user + system) of a process, from `/proc/PID/stat`.
fn cpu_of(stat_path: &Path) -> Option<f64> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clk_tck())
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn ppid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds of a process and its children (nginx's master and workers).
fn cpu_tree(pid: u32) -> f64 {
    let mut total = cpu_of(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0.0);
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && ppid_of(child) == Some(pid)
            {
                total += cpu_of(&e.path().join("stat")).unwrap_or(0.0);
            }
        }
    }
    total
}

fn cpu_self() -> f64 {
    cpu_of(Path::new("/proc/self/stat")).unwrap_or(0.0)
}

#[derive(Clone)]
struct Stats {
    calls: u64,
    errors: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
    cpu_self: f64,
    cpu_other: Option<f64>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }
    fn cpu_total_per_10k(&self) -> f64 {
        (self.cpu_self + self.cpu_other.unwrap_or(0.0)) * 10_000.0 / self.calls.max(1) as f64
    }
    fn cpu_self_per_10k(&self) -> f64 {
        self.cpu_self * 10_000.0 / self.calls.max(1) as f64
    }
}

/// Runs the load on `ch` and measures after the warm-up.
async fn load(
    ch: Channel,
    subjects: Arc<Vec<(String, String)>>,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    other_pid: Option<u32>,
) -> Result<Stats, String> {
    // One probe first: a target that refuses the load is reported, not measured.
    let (iin, tok) = &subjects[0];
    PersonRegistryClient::new(ch.clone())
        .get_person(harness::with_tokens(
            gbdfl::GetPersonRequest { iin: iin.clone() },
            &[tok],
        ))
        .await
        .map_err(|e| format!("probe call failed: {:?} {}", e.code(), e.message()))?;
    let start = Instant::now() + warmup;
    let end = start + measure;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for t in 0..concurrency {
        let ch = ch.clone();
        let subjects = subjects.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = PersonRegistryClient::new(ch);
            let mut lat = Vec::with_capacity(64 * 1024);
            let mut i = t;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let (iin, tok) = &subjects[i % subjects.len()];
                i += concurrency;
                let r = c
                    .get_person(harness::with_tokens(
                        gbdfl::GetPersonRequest { iin: iin.clone() },
                        &[tok],
                    ))
                    .await;
                let t1 = Instant::now();
                if t0 >= start && t1 <= end {
                    match r {
                        Ok(_) => lat.push((t1 - t0).as_micros() as u32),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let (s0, o0) = (cpu_self(), other_pid.map(cpu_tree));
    tokio::time::sleep_until(end.into()).await;
    let (s1, o1) = (cpu_self(), other_pid.map(cpu_tree));
    let mut lat = vec![];
    for t in tasks {
        lat.extend(t.await.map_err(|e| e.to_string())?);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        Duration::from_micros(
            lat.get(((lat.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(0) as u64,
        )
    };
    Ok(Stats {
        calls: lat.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        secs: measure.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_self: s1 - s0,
        cpu_other: o0.zip(o1).map(|(a, b)| b - a),
    })
}

/// The two loads of one target: saturated (`concurrency` calls in flight), then one call
/// at a time (the hop's own latency, without queueing).
struct Both {
    loaded: Result<Stats, String>,
    serial: Result<Stats, String>,
}

async fn both(
    ch: Channel,
    subjects: Arc<Vec<(String, String)>>,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    serial: Duration,
    other_pid: Option<u32>,
) -> Both {
    let loaded = load(ch.clone(), subjects.clone(), concurrency, warmup, measure, other_pid).await;
    let serial = match &loaded {
        Err(e) => Err(e.clone()),
        Ok(_) => load(ch, subjects, 1, Duration::from_millis(500), serial, other_pid).await,
    };
    Both { loaded, serial }
}

/// A target: its name, the channel to it, the subjects and tokens of the load, and the pid
/// of its own process (nginx) whose CPU counts.
type Target = (&'static str, Result<Channel, String>, Arc<Vec<(String, String)>>, Option<u32>);

/// The median round of a target: by throughput for the load, by p50 for one call at a time.
fn median(rounds: Vec<Both>) -> Both {
    fn mid(mut v: Vec<Stats>, key: impl Fn(&Stats) -> f64) -> Option<Stats> {
        v.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let n = v.len();
        (n > 0).then(|| v.swap_remove(n / 2))
    }
    let first_error = |f: fn(&Both) -> &Result<Stats, String>, rounds: &[Both]| {
        rounds.iter().find_map(|b| f(b).as_ref().err().cloned()).unwrap_or_else(|| "no round".into())
    };
    let loaded_err = first_error(|b| &b.loaded, &rounds);
    let serial_err = first_error(|b| &b.serial, &rounds);
    let loaded: Vec<Stats> = rounds.iter().filter_map(|b| b.loaded.as_ref().ok().cloned()).collect();
    let serial: Vec<Stats> = rounds.iter().filter_map(|b| b.serial.as_ref().ok().cloned()).collect();
    Both {
        loaded: mid(loaded, Stats::rate).ok_or(loaded_err),
        serial: mid(serial, |s| ms(s.p50)).ok_or(serial_err),
    }
}

fn nginx_binary() -> Option<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Finds nginx, installing it with apt-get when missing (the package's service is kept from
/// starting with a temporary `policy-rc.d`).
fn ensure_nginx() -> Result<PathBuf, String> {
    if let Some(p) = nginx_binary() {
        return Ok(p);
    }
    eprintln!("nginx is missing: apt-get install -y nginx ...");
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let placed = !policy.exists() && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok();
    if placed {
        let _ = Command::new("chmod").arg("755").arg(policy).status();
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let mut out = apt(&["install", "-y", "-q", "nginx"]);
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        let _ = apt(&["update", "-q"]);
        out = apt(&["install", "-y", "-q", "nginx"]);
    }
    if placed {
        let _ = std::fs::remove_file(policy);
    }
    match (out, nginx_binary()) {
        (_, Some(p)) => Ok(p),
        (Ok(o), None) => Err(format!(
            "apt-get install nginx failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        )),
        (Err(e), None) => Err(format!("cannot run apt-get: {e}")),
    }
}

struct Nginx {
    child: Child,
    bin: PathBuf,
    prefix: PathBuf,
    conf: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .arg(self.prefix.join("error.log"))
            .args(["-s", "quit"])
            .stderr(Stdio::null())
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nginx proxying gRPC to `upstream_port` with mutual TLS on both sides.
async fn start_nginx(pki: &Path, prefix: &Path, upstream_port: u16) -> Result<Nginx, String> {
    let bin = ensure_nginx()?;
    std::fs::create_dir_all(prefix.join("tmp")).map_err(|e| e.to_string())?;
    let port = harness::dead_port().await;
    let p = |n: &str| pki.join(n).display().to_string();
    let d = prefix.display();
    let conf = format!(
        r#"daemon off;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    upstream gbdfl {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_protocols TLSv1.3;
        ssl_certificate {bus_pem};
        ssl_certificate_key {bus_key};
        ssl_client_certificate {ca};
        ssl_crl {crl};
        ssl_verify_client on;
        http2_max_concurrent_streams 1024;
        location / {{
            grpc_pass grpcs://gbdfl;
            grpc_ssl_certificate {bus_pem};
            grpc_ssl_certificate_key {bus_key};
            grpc_ssl_trusted_certificate {ca};
            grpc_ssl_verify on;
            grpc_ssl_name localhost;
            grpc_ssl_protocols TLSv1.3;
            grpc_ssl_session_reuse on;
            grpc_set_header x-shep-caller $ssl_client_s_dn;
        }}
    }}
}}
"#,
        bus_pem = p("bus.pem"),
        bus_key = p("bus.key"),
        ca = p("ca.pem"),
        crl = p("crl.pem"),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let child = Command::new(&bin)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut ng = Nginx {
        child,
        bin,
        prefix: prefix.to_owned(),
        conf: conf_path,
        port,
    };
    for _ in 0..100 {
        if let Ok(Some(st)) = ng.child.try_wait() {
            let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
            return Err(format!(
                "nginx exited ({st}): {}",
                log.lines().last().unwrap_or("").trim()
            ));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(ng);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("nginx did not listen within 5 s".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The bus, its upstreams and KDP key, with the audit at `sync`, ready to take calls.
async fn world(sync: shep_bus::config::Synchronous) -> harness::World {
    let w = harness::World::start(move |s| {
        s.limits.default = shep_bus::config::CallerLimits {
            requests_per_second: 0.0,
            burst: 1,
            max_concurrent: 0,
        };
        s.upstream.health_interval_ms = 3000;
        s.audit.synchronous = sync;
    })
    .await;
    w.consent_ready().await;
    w
}

/// `SHEP_BENCH_SUBJECTS` (1000) people, each with a token of `w`'s KDP.
fn subjects_of(w: &harness::World) -> Vec<(String, String)> {
    (1u16..)
        .filter_map(|s| shep_domain::Iin::from_parts(1990, 5, 15, shep_domain::Sex::Male, s))
        .take(env_u64("SHEP_BENCH_SUBJECTS", 1000) as usize)
        .map(|i| {
            let i = i.to_string();
            let (_, tok) = w.token(&i, "sdu", "gbdfl.person.read", 3600);
            (i, tok)
        })
        .collect()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let concurrency = env_u64("SHEP_BENCH_CONCURRENCY", 32) as usize;
    let measure = Duration::from_secs(env_u64("SHEP_BENCH_SECONDS", 6));
    let warmup = Duration::from_secs(env_u64("SHEP_BENCH_WARMUP", 1));
    let serial = Duration::from_secs(env_u64("SHEP_BENCH_SERIAL_SECONDS", 4));
    let rounds = env_u64("SHEP_BENCH_ROUNDS", 3).max(1);
    let w = world(shep_bus::config::Synchronous::Full).await;
    let subjects = Arc::new(subjects_of(&w));
    let gbdfl_endpoint = w.settings.systems["gbd-fl"].endpoint.clone().unwrap();
    let gbdfl_port: u16 = gbdfl_endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let sdu_tls = shep_runtime::TlsConfig::from_pki_dir(w.dir.path(), "sdu");
    println!(
        "GBD FL GetPerson with a consent token per call; {concurrency} concurrent calls on one mTLS HTTP/2 connection; \
         warm-up {}s, measured {}s per target and round, {rounds} rounds (the median round reported)",
        warmup.as_secs(),
        measure.as_secs()
    );

    // SHEP_BENCH_ONLY=a|b|b'|c runs one target (for profiling).
    let only = std::env::var("SHEP_BENCH_ONLY").unwrap_or_default();
    let run_it = |t: &str| only.is_empty() || only == t;
    let skipped = || Err::<Channel, String>("skipped (SHEP_BENCH_ONLY)".into());
    // The same bus with the audit at synchronous=NORMAL (no fsync per batch; see
    // ARCHITECTURE.md for what a power cut can then lose), in a world of its own.
    let w2 = world(shep_bus::config::Synchronous::Normal).await;
    let subjects2 = Arc::new(subjects_of(&w2));
    let prefix = w.dir.path().join("nginx");
    let ng = if run_it("c") {
        start_nginx(w.dir.path(), &prefix, gbdfl_port).await
    } else {
        Err("skipped (SHEP_BENCH_ONLY)".into())
    };
    let targets: [Target; 4] = [
        (
            "(a) direct",
            if run_it("a") { Ok(shep_runtime::tls::channel(&sdu_tls, &gbdfl_endpoint).unwrap()) } else { skipped() },
            subjects.clone(),
            None,
        ),
        ("(b) bus", if run_it("b") { Ok(w.client("sdu")) } else { skipped() }, subjects.clone(), None),
        ("(b') bus", if run_it("b'") { Ok(w2.client("sdu")) } else { skipped() }, subjects2, None),
        (
            "(c) nginx",
            ng.as_ref().map(|ng| {
                shep_runtime::tls::channel(&sdu_tls, &format!("https://127.0.0.1:{}", ng.port)).unwrap()
            })
            .map_err(Clone::clone),
            subjects.clone(),
            ng.as_ref().ok().map(|ng| ng.child.id()),
        ),
    ];
    // Rounds, the targets taken in turn in each, so that a slow moment of the machine does
    // not fall on one target; each target's median round is reported.
    let mut results: [Vec<Both>; 4] = Default::default();
    for round in 1..=rounds {
        for (i, (name, ch, subjects, pid)) in targets.iter().enumerate() {
            let r = match ch {
                Err(e) => Both { loaded: Err(e.clone()), serial: Err(e.clone()) },
                Ok(ch) => {
                    eprintln!("round {round}/{rounds}: {name} ...");
                    both(ch.clone(), subjects.clone(), concurrency, warmup, measure, serial, *pid).await
                }
            };
            results[i].push(r);
        }
    }
    let v = shep_bus::audit::verify(&w2.audit_path()).unwrap();
    assert!(v.intact, "the NORMAL bus's audit chain verifies");
    w2.shutdown.trigger();
    drop(ng);
    for (i, (name, ..)) in targets.iter().enumerate() {
        let rates: Vec<String> = results[i]
            .iter()
            .filter_map(|b| b.loaded.as_ref().ok())
            .map(|s| format!("{:.0}", s.rate()))
            .collect();
        if !rates.is_empty() {
            eprintln!("{name}: calls/s by round: {}", rates.join(", "));
        }
        let alone: Vec<String> = results[i]
            .iter()
            .filter_map(|b| b.serial.as_ref().ok())
            .map(|s| format!("{:.3}", ms(s.p50)))
            .collect();
        if !alone.is_empty() {
            eprintln!("{name}: one call alone, p50 ms by round: {}", alone.join(", "));
        }
    }
    let [direct, bus, bus_normal, nginx] = results.map(median);

    let all = [
        ("(a) direct", &direct),
        ("(b) bus", &bus),
        ("(b') bus", &bus_normal),
        ("(c) nginx", &nginx),
    ];
    let rows = all.map(|(n, b)| (n, &b.loaded));
    let (direct, nginx) = (&direct.loaded, &nginx.loaded);
    println!();
    println!(
        "{:<11} {:>9} {:>8} {:>8} {:>14} {:>15}   {:<27} {:<27}",
        "target",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "CPU s/10k all",
        "CPU s/10k ours",
        "vs (a): thr p50 p99 CPU",
        "vs (c): thr p50 p99 CPU"
    );
    let ratio = |x: &Stats, base: &Result<Stats, String>| match base {
        Ok(b) => format!(
            "{:.2} {:.2} {:.2} {:.2}",
            x.rate() / b.rate(),
            ms(x.p50) / ms(b.p50).max(1e-9),
            ms(x.p99) / ms(b.p99).max(1e-9),
            x.cpu_total_per_10k() / b.cpu_total_per_10k().max(1e-9)
        ),
        Err(_) => "-".into(),
    };
    for (name, r) in rows {
        match r {
            Ok(s) => println!(
                "{:<11} {:>9.0} {:>8.2} {:>8.2} {:>14.3} {:>15.3}   {:<27} {:<27}{}",
                name,
                s.rate(),
                ms(s.p50),
                ms(s.p99),
                s.cpu_total_per_10k(),
                s.cpu_self_per_10k(),
                ratio(s, direct),
                ratio(s, nginx),
                if s.errors > 0 {
                    format!("  ({} errors)", s.errors)
                } else {
                    String::new()
                }
            ),
            Err(e) => println!("{name:<11} unavailable: {e}"),
        }
    }
    if let (Ok(a), Ok(b)) = (direct, &bus.loaded) {
        println!(
            "\nthe bus's own CPU per 10k calls (b − a, this process): {:.3} s",
            b.cpu_self_per_10k() - a.cpu_self_per_10k()
        );
    }
    if let (Ok(a), Ok(c)) = (direct, nginx) {
        println!(
            "nginx's CPU per 10k calls (its processes, plus this process's change vs (a)): {:.3} s",
            c.cpu_total_per_10k() - a.cpu_self_per_10k()
        );
    }
    println!(
        "\n\"CPU s/10k all\" counts this process (client, test upstreams and, in (b), the bus) plus, in (c), nginx's \
         master and workers. The bus row includes consent verification (Ed25519, cached per token), identifier checks \
         and the call's audit record, written to the journal before the answer is released (group commit): (b) with \
         synchronous=FULL (one fsync per group: a power cut loses nothing answered), (b') with synchronous=NORMAL \
         (no fsync per group: a bus crash loses nothing, a power cut the last ~200 ms of answered calls)."
    );
    println!(
        "\none call at a time ({}s per target): the latency a hop adds when nothing queues",
        serial.as_secs()
    );
    println!(
        "{:<11} {:>9} {:>8} {:>8} {:>14}",
        "target", "calls/s", "p50 ms", "p99 ms", "p50 added ms"
    );
    let base = all[0].1.serial.as_ref().ok().map(|s| ms(s.p50));
    for (name, b) in all {
        match &b.serial {
            Ok(s) => println!(
                "{:<11} {:>9.0} {:>8.3} {:>8.3} {:>14}",
                name,
                s.rate(),
                ms(s.p50),
                ms(s.p99),
                base.map_or("-".into(), |a| format!("{:.3}", ms(s.p50) - a))
            ),
            Err(e) => println!("{name:<11} unavailable: {e}"),
        }
    }
    let v = shep_bus::audit::verify(&w.audit_path()).unwrap();
    println!(
        "audit after the run: {} records, intact: {}",
        v.records, v.intact
    );
    w.shutdown.trigger();
}
