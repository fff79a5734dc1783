//! Idle-connection memory: how much resident memory posta spends per open, idle SMTP session.
//!
//! `cargo build --release && cargo bench --bench idle` starts `target/release/posta` (or
//! `$POSTA_BIN`) from a temp config dir on a free loopback port, reads its `VmRSS` from
//! `/proc/PID/status`, opens `IDLE_CONNS` connections (default 10,000) and waits for every
//! banner, reads `VmRSS` again and prints the growth per connection. With all of them open it
//! also times 100 fresh clients (connect to banner) to show that accepting still works.
//!
//! | env | default | meaning |
//! | --- | --- | --- |
//! | `IDLE_CONNS` | 10000 | idle connections to hold (at most 50,000) |
//! | `IDLE_NODES` | one per core | `smtp.ini nodes` of the spawned daemon |
//! | `POSTA_BIN` | `$CARGO_TARGET_DIR/release/posta`, else `target/release/posta` | daemon binary |
//!
//! Open files: the bench and the daemon each need `IDLE_CONNS` + ~100 descriptors. The bench
//! raises its own soft `RLIMIT_NOFILE` (inherited by the daemon) with `prlimit` up to the hard
//! limit; above that, run it after `ulimit -n 20000` (as root, or with a higher hard limit).
//!
//! Does nothing without `--bench` (cargo bench passes it), so `cargo test --all-targets` does
//! not run it. Bounded: a fixed number of connections, 30 s socket timeouts, loopback only.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const MAX_CONNS: usize = 50_000;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const TARGET_KB: f64 = 24.0;

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let conns = env_usize("IDLE_CONNS", 10_000).clamp(1, MAX_CONNS);
    raise_nofile(conns as u64 + 256)?;
    let daemon = Daemon::spawn(std::env::var("IDLE_NODES").ok())?;
    let pid = daemon.child.id();
    settle();
    let before = rss_kb(pid)?;
    let start = Instant::now();
    let held = open_idle(daemon.addr, conns)?;
    let opened_in = start.elapsed();
    settle();
    let after = rss_kb(pid)?;
    let fresh = fresh_clients(daemon.addr, 100)?;
    let per_conn = (after.saturating_sub(before)) as f64 / conns as f64;
    println!(
        "idle connections:   {conns} (opened and greeted in {:.1} s)",
        opened_in.as_secs_f64()
    );
    println!("daemon RSS:         {before} KB before, {after} KB with them open");
    println!(
        "per idle connection: {per_conn:.1} KB (target <= {TARGET_KB} KB: {})",
        if per_conn <= TARGET_KB { "met" } else { "NOT met" }
    );
    println!(
        "fresh clients meanwhile: connect to banner p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&fresh, 50)),
        ms(percentile(&fresh, 99)),
        ms(percentile(&fresh, 100))
    );
    drop(held);
    Ok(())
}

/// Open `n` connections and read each banner; they stay open (idle) in the returned vector.
fn open_idle(addr: SocketAddr, n: usize) -> Result<Vec<BufReader<TcpStream>>, String> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(greeted(addr).map_err(|e| format!("connection {i}: {e}"))?);
    }
    Ok(held)
}

/// Connect and read the banner (a `220` reply, possibly multi-line).
fn greeted(addr: SocketAddr) -> Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(512, s);
    for _ in 0..64 {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| format!("banner: {e}"))?;
        if !line.starts_with("220") {
            return Err(format!("banner: {line:?}"));
        }
        if line.as_bytes().get(3) == Some(&b' ') {
            return Ok(r);
        }
    }
    Err("banner longer than 64 lines".into())
}

/// Connect-to-banner times of `n` fresh clients, sorted.
fn fresh_clients(addr: SocketAddr, n: usize) -> Result<Vec<Duration>, String> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        drop(greeted(addr)?);
        v.push(t.elapsed());
    }
    v.sort();
    Ok(v)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Let the daemon finish its bookkeeping before a reading.
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

/// `VmRSS` of `pid`, in KB.
fn rss_kb(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc status".into())
}

/// Make sure this process (and so the daemon it starts) may open `want` files.
fn raise_nofile(want: u64) -> Result<(), String> {
    let (soft, hard) = nofile()?;
    if soft >= want {
        return Ok(());
    }
    if hard < want {
        return Err(format!(
            "open files hard limit {hard} < {want}: run `ulimit -n {want}` as root first, or set IDLE_CONNS lower"
        ));
    }
    let pid = std::process::id().to_string();
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={want}:{hard}")])
        .status()
        .is_ok_and(|s| s.success());
    if ok && nofile()?.0 >= want {
        return Ok(());
    }
    Err(format!(
        "open files limit {soft} < {want} and prlimit could not raise it: run `ulimit -n {want}` first"
    ))
}

/// Soft and hard `Max open files` of this process.
fn nofile() -> Result<(u64, u64), String> {
    let limits = std::fs::read_to_string("/proc/self/limits").map_err(|e| e.to_string())?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or("no 'Max open files' in /proc/self/limits")?;
    let nums: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match nums.as_slice() {
        [soft, hard, ..] => Ok((*soft, *hard)),
        _ => Ok((u64::MAX, u64::MAX)), // "unlimited"
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The spawned daemon; killed when dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn spawn(nodes: Option<String>) -> Result<Daemon, String> {
        let bin = binary();
        if !bin.exists() {
            return Err(format!(
                "{} not found: run `cargo build --release` first (or set POSTA_BIN)",
                bin.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("posta-idle-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let cfg = dir.path().join("config");
        write_config(&cfg, addr, nodes.as_deref(), &dir.path().join("queue"))?;
        let log = std::fs::File::create(dir.path().join("posta.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("POSTA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut d = Daemon { child, addr, _dir: dir };
        d.wait_ready()?;
        Ok(d)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("posta exited with {status}"));
            }
            if greeted(self.addr).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("posta did not answer within 30 s".into())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    if let Some(b) = std::env::var_os("POSTA_BIN") {
        return b.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release").join("posta")
}

/// A minimal inbound config: every connection from 127.0.0.1, so no per-address limit.
fn write_config(
    cfg: &std::path::Path,
    addr: SocketAddr,
    nodes: Option<&str>,
    queue: &std::path::Path,
) -> Result<(), String> {
    std::fs::create_dir_all(cfg).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(queue).map_err(|e| e.to_string())?;
    let nodes = nodes.map(|n| format!("nodes={n}\n")).unwrap_or_default();
    let files = [
        (
            "smtp.ini",
            format!("[main]\nlisten={addr}\n{nodes}inactivity_timeout=600\n"),
        ),
        ("connection.ini", "[max]\nconnections_per_ip=0\n".to_string()),
        ("me", "idle.bench.test\n".to_string()),
        ("host_list", "example.test\n".to_string()),
        ("plugins", "rcpt_to.in_host_list\n".to_string()),
        ("outbound.ini", "[main]\ndisabled=true\n".to_string()),
        ("queue_dir", format!("{}\n", queue.display())),
    ];
    for (name, text) in files {
        std::fs::write(cfg.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}
