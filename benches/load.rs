//! SMTP load generator: a real SMTP client over loopback TCP (event-driven sessions on one
//! thread by default), in the spirit of Postfix's `smtp-source`.
//!
//! `cargo bench --bench load` (after `cargo build --release`: the daemon it starts is
//! `target/release/posta`). With no server answering on the target it starts its own posta
//! daemon from a temp dir (a copy of `config/` listening on a free loopback port, with its own
//! queue dir), measures the daemon's CPU from `/proc/PID/stat`, and stops it at the end.
//!
//! Settings, from the environment or as `--name value` arguments (`--msgs 20000`):
//!
//! | env | arg | default | meaning |
//! | --- | --- | --- | --- |
//! | `LOAD_TARGET` | `--target` | `127.0.0.1:2525` | server to load (loopback only) |
//! | `LOAD_MSGS` | `--msgs` | 10000 | messages to send (at most 1,000,000) |
//! | `LOAD_SIZE` | `--size` | 1024 | body bytes per message (headers add about 250) |
//! | `LOAD_SESSIONS` | `--sessions` | 50 | concurrent SMTP sessions (at most 2000) |
//! | `LOAD_PER_CONN` | `--per-conn` | 1 | messages per connection; 0 = as many as there are |
//! | `LOAD_RCPTS` | `--rcpts` | 1 | recipients per message |
//! | `LOAD_PIPELINING` | `--pipelining` | 0 | 1: send MAIL, RCPT and DATA in one write |
//! | `LOAD_THREADS` | `--threads` | 1 | event-loop threads the sessions are spread over |
//! | `LOAD_TIME_LIMIT` | `--time-limit` | 120 | seconds; no new message is started after it |
//! | `LOAD_FROM` / `LOAD_RCPT` | `--from` / `--rcpt` | `load@client.test` / `user@localhost` | envelope |
//! | `LOAD_SPAWN` | `--spawn` | `auto` | `auto`: start posta if nothing answers; `1`: always; `0`: never |
//! | `LOAD_DISCARD` | `--discard` | 0 | spawned daemon: plugins `rcpt_to.in_host_list` + `queue/discard` |
//! | `LOAD_QUEUE_ONLY` | `--queue-only` | 0 | spawned daemon: `outbound.ini disabled=true` (durable queue commit, no delivery) |
//! | `LOAD_DIR` | `--dir` | the system temp dir | where the spawned daemon's directory (config, queue, Maildirs) is made |
//! | `LOAD_KEEP` | `--keep` | 0 | 1: keep that directory at the end (prints its path) instead of deleting it |
//! | `POSTA_BIN` | `--bin` | `target/release/posta` | daemon binary to spawn |
//! | `POSTA_PID` | `--pid` | the spawned one | PID whose CPU time is measured |
//! | `LOAD_RESULTS` | `--results` | none | append the one-line result to this file |
//!
//! The binary does nothing unless `--bench` is among its arguments (cargo bench passes it), so
//! that `cargo test --all-targets` does not start a load run. To run it directly:
//! `target/release/deps/load-<hash> --bench --msgs 1000`.
//!
//! Every run is bounded: by the message count, by the time limit (plus a 30 s socket timeout
//! for messages in flight), and connections go to loopback addresses only.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_MSGS: u64 = 1_000_000;
const MAX_SESSIONS: usize = 2000;

#[derive(Debug, Clone)]
struct Opts {
    target: SocketAddr,
    target_given: bool,
    msgs: u64,
    size: usize,
    sessions: usize,
    per_conn: u64,
    rcpts: usize,
    pipelining: bool,
    threads: usize,
    time_limit: Duration,
    from: String,
    rcpt: String,
    spawn: String,
    discard: bool,
    queue_only: bool,
    dir: Option<PathBuf>,
    keep: bool,
    bin: PathBuf,
    pid: Option<u32>,
    results: Option<PathBuf>,
}

fn opts() -> Result<Opts, String> {
    // `--name value` arguments override the environment; cargo passes `--bench`, which is ignored.
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--bench" {
            continue;
        }
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (name.to_string(), it.next().ok_or(format!("--{name} needs a value"))?),
        };
        args.insert(name, value);
    }
    let get = |arg: &str, env: &str| args.get(arg).cloned().or_else(|| std::env::var(env).ok());
    let num = |arg: &str, env: &str, default: u64| -> Result<u64, String> {
        match get(arg, env) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| format!("{env}={v:?} is not a number")),
        }
    };
    let flag = |arg: &str, env: &str| get(arg, env).is_some_and(|v| v == "1" || v == "true" || v == "yes");
    let target_s = get("target", "LOAD_TARGET");
    let target: SocketAddr = target_s
        .clone()
        .unwrap_or_else(|| "127.0.0.1:2525".into())
        .parse()
        .map_err(|e| format!("LOAD_TARGET: {e}"))?;
    if !target.ip().is_loopback() {
        return Err(format!("LOAD_TARGET {target} is not a loopback address"));
    }
    let default_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/posta");
    let o = Opts {
        target,
        target_given: target_s.is_some(),
        msgs: num("msgs", "LOAD_MSGS", 10_000)?.min(MAX_MSGS),
        size: num("size", "LOAD_SIZE", 1024)?.min(50 << 20) as usize,
        sessions: (num("sessions", "LOAD_SESSIONS", 50)? as usize).clamp(1, MAX_SESSIONS),
        per_conn: num("per-conn", "LOAD_PER_CONN", 1)?,
        rcpts: (num("rcpts", "LOAD_RCPTS", 1)? as usize).clamp(1, 100),
        pipelining: flag("pipelining", "LOAD_PIPELINING"),
        threads: (num("threads", "LOAD_THREADS", 1)? as usize).clamp(1, 64),
        time_limit: Duration::from_secs(num("time-limit", "LOAD_TIME_LIMIT", 120)?.clamp(1, 3600)),
        from: get("from", "LOAD_FROM").unwrap_or_else(|| "load@client.test".into()),
        rcpt: get("rcpt", "LOAD_RCPT").unwrap_or_else(|| "user@localhost".into()),
        spawn: get("spawn", "LOAD_SPAWN").unwrap_or_else(|| "auto".into()),
        discard: flag("discard", "LOAD_DISCARD"),
        queue_only: flag("queue-only", "LOAD_QUEUE_ONLY"),
        dir: get("dir", "LOAD_DIR").map(PathBuf::from),
        keep: flag("keep", "LOAD_KEEP"),
        bin: get("bin", "POSTA_BIN").map(PathBuf::from).unwrap_or(default_bin),
        pid: get("pid", "POSTA_PID")
            .map(|p| p.parse().map_err(|_| format!("POSTA_PID={p:?}")))
            .transpose()?,
        results: get("results", "LOAD_RESULTS").map(PathBuf::from),
    };
    Ok(o)
}

// ----- the message ------------------------------------------------------------------------------

/// Headers plus a text body of `size` bytes in 78-octet lines, dot-stuffed, with the terminator.
fn message(o: &Opts) -> Vec<u8> {
    let mut m = format!(
        "From: Load Generator <{}>\r\nTo: <{}>\r\nSubject: posta load test\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <load.{}@client.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        o.from,
        o.rcpt,
        std::process::id()
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrst";
    let mut body = 0;
    let mut n = 0usize;
    while body < o.size {
        let take = (o.size - body).min(line.len() + 2);
        let text = &line[..take.saturating_sub(2)];
        // Every 20th line starts with a dot, so the server's unstuffing is exercised.
        if n % 20 == 19 && !text.is_empty() {
            m.extend_from_slice(b"..");
            m.extend_from_slice(&text[1..]);
        } else {
            m.extend_from_slice(text);
        }
        m.extend_from_slice(b"\r\n");
        body += take.max(2);
        n += 1;
    }
    m.extend_from_slice(b".\r\n");
    m
}

// ----- SMTP client --------------------------------------------------------------------------------

/// One SMTP connection, driven by an event loop (sessions share `LOAD_THREADS` threads, as
/// smtp-source runs every session in one process): no thread switch per reply, so the
/// generator takes less of the CPU it shares with the server.
struct Conn {
    r: BufReader<TcpStream>,
    line: String,
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let s = timed("connect", TcpStream::connect(addr)).await?;
        s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        Ok(Conn {
            r: BufReader::with_capacity(16 * 1024, s),
            line: String::new(),
        })
    }

    async fn send(&mut self, b: &[u8]) -> Result<(), String> {
        timed("write", self.r.get_mut().write_all(b)).await
    }

    /// Read one (possibly multi-line) reply; its code.
    async fn reply(&mut self) -> Result<u16, String> {
        for _ in 0..1000 {
            self.line.clear();
            let n = timed("read", self.r.read_line(&mut self.line)).await?;
            if n == 0 {
                return Err("connection closed by server".into());
            }
            let l = self.line.as_bytes();
            if l.len() < 4 || !l[..3].iter().all(u8::is_ascii_digit) {
                return Err(format!("bad reply line {:?}", self.line.trim_end()));
            }
            if l[3] != b'-' {
                return self.line[..3].parse().map_err(|_| "bad code".to_string());
            }
        }
        Err("reply with more than 1000 lines".into())
    }

    async fn expect(&mut self, want: u16, what: &str) -> Result<(), String> {
        let code = self.reply().await?;
        if code == want {
            Ok(())
        } else {
            Err(format!("{what}: got {code} ({})", self.line.trim_end()))
        }
    }
}

/// One transaction on an open connection. `Ok(())` when the message was accepted.
async fn transaction(c: &mut Conn, o: &Opts, msg: &[u8]) -> Result<(), String> {
    let mut cmds = format!("MAIL FROM:<{}>\r\n", o.from);
    for _ in 0..o.rcpts {
        cmds.push_str(&format!("RCPT TO:<{}>\r\n", o.rcpt));
    }
    cmds.push_str("DATA\r\n");
    if o.pipelining {
        c.send(cmds.as_bytes()).await?;
        c.expect(250, "MAIL").await?;
        for _ in 0..o.rcpts {
            c.expect(250, "RCPT").await?;
        }
        c.expect(354, "DATA").await?;
    } else {
        for (i, line) in cmds.split_inclusive("\r\n").enumerate() {
            c.send(line.as_bytes()).await?;
            let (want, what) = match i {
                0 => (250, "MAIL"),
                i if i <= o.rcpts => (250, "RCPT"),
                _ => (354, "DATA"),
            };
            c.expect(want, what).await?;
        }
    }
    c.send(msg).await?;
    c.expect(250, "end of data").await
}

/// A current-thread event loop for `f`.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Whether an SMTP server greets with 220 on `addr` (QUIT after).
async fn greets(addr: SocketAddr) -> bool {
    let Ok(mut c) = Conn::open(addr).await else {
        return false;
    };
    let ok = c.expect(220, "greeting").await.is_ok();
    let _ = c.send(b"QUIT\r\n").await;
    ok
}

#[derive(Default)]
struct Stats {
    ok: u64,
    failed: u64,
    connections: u64,
    latencies_us: Vec<u32>,
    errors: HashMap<String, u64>,
}

struct Shared {
    opts: Opts,
    target: SocketAddr,
    msg: Vec<u8>,
    claimed: AtomicU64,
    deadline: Instant,
    stop: AtomicBool,
}

impl Shared {
    /// Claim the next message to send, if any is left and there is time.
    fn claim(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return false;
        }
        self.claimed.fetch_add(1, Ordering::Relaxed) < self.opts.msgs
    }
}

fn note_error(st: &mut Stats, e: String) {
    // Group errors by their text without numbers, so that the report stays short.
    let key: String = e.chars().filter(|c| !c.is_ascii_digit()).take(80).collect();
    *st.errors.entry(key).or_default() += 1;
}

async fn worker(sh: Arc<Shared>) -> Stats {
    let o = &sh.opts;
    let mut st = Stats::default();
    let mut connect_failures = 0;
    let mut have_claim = false;
    loop {
        if !have_claim && !sh.claim() {
            break;
        }
        have_claim = true;
        let mut c = match Conn::open(sh.target).await {
            Ok(c) => c,
            Err(e) => {
                connect_failures += 1;
                note_error(&mut st, format!("connect: {e}"));
                if connect_failures >= 20 {
                    // The server is gone: give up this session (the message stays unsent).
                    st.failed += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        st.connections += 1;
        let greeting = async {
            c.expect(220, "greeting").await?;
            c.send(b"EHLO load.client.test\r\n").await?;
            c.expect(250, "EHLO").await
        }
        .await;
        if let Err(e) = greeting {
            note_error(&mut st, e);
            st.failed += 1;
            have_claim = false;
            continue;
        }
        connect_failures = 0;
        let mut on_conn = 0u64;
        let mut conn_ok = true;
        while have_claim {
            let t = Instant::now();
            match transaction(&mut c, o, &sh.msg).await {
                Ok(()) => {
                    st.ok += 1;
                    st.latencies_us
                        .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
                Err(e) => {
                    note_error(&mut st, e);
                    st.failed += 1;
                    conn_ok = false;
                }
            }
            have_claim = false;
            on_conn += 1;
            if !conn_ok || (o.per_conn > 0 && on_conn >= o.per_conn) {
                break;
            }
            have_claim = sh.claim();
        }
        if conn_ok {
            // A failed QUIT does not fail the message any more.
            if c.send(b"QUIT\r\n").await.is_ok() {
                let _ = c.expect(221, "QUIT").await;
            }
        }
    }
    st
}

// ----- the daemon ----------------------------------------------------------------------------------

struct Daemon {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

/// `smtp.ini` with `listen` replaced.
fn set_listen(ini: &str, listen: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    let mut had_main = false;
    for line in ini.lines() {
        let t = line.trim_start();
        if t.starts_with("listen") && t[6..].trim_start().starts_with('=') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t.eq_ignore_ascii_case("[main]") && !done {
            out.push_str(&format!("listen={listen}\n"));
            done = true;
            had_main = true;
        }
    }
    if !had_main {
        out = format!("listen={listen}\n{out}");
    }
    out
}

/// `connection.ini` with the per-address connection limit off: every load session comes from
/// 127.0.0.1, and more than `[max] connections_per_ip` (default 50) of them are normal here.
fn no_per_ip_limit(ini: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in ini.lines() {
        let t = line.trim_start();
        if t.starts_with("connections_per_ip") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t.eq_ignore_ascii_case("[max]") && !done {
            out.push_str("connections_per_ip=0\n");
            done = true;
        }
    }
    if !done {
        out.push_str("[max]\nconnections_per_ip=0\n");
    }
    out
}

fn spawn_daemon(o: &Opts) -> Result<Daemon, String> {
    if !o.bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first (or set POSTA_BIN)",
            o.bin.display()
        ));
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix("posta-load-");
    let dir = match &o.dir {
        Some(d) => builder.tempdir_in(d),
        None => builder.tempdir(),
    }
    .map_err(|e| e.to_string())?;
    let cfg = dir.path().join("config");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    copy_dir(&src, &cfg).map_err(|e| format!("copy {}: {e}", src.display()))?;
    let port = free_port().map_err(|e| e.to_string())?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ini = std::fs::read_to_string(cfg.join("smtp.ini")).unwrap_or_else(|_| "[main]\n".into());
    let write = |name: &str, text: &str| std::fs::write(cfg.join(name), text).map_err(|e| format!("{name}: {e}"));
    write("smtp.ini", &set_listen(&ini, &addr.to_string()))?;
    let conn = std::fs::read_to_string(cfg.join("connection.ini")).unwrap_or_default();
    write("connection.ini", &no_per_ip_limit(&conn))?;
    let queue = dir.path().join("queue");
    std::fs::create_dir_all(&queue).map_err(|e| e.to_string())?;
    write("queue_dir", &format!("{}\n", queue.display()))?;
    if o.discard {
        write("plugins", "rcpt_to.in_host_list\nqueue/discard\n")?;
    }
    if o.queue_only {
        write("outbound.ini", "[main]\ndisabled=true\n")?;
    }
    let log = std::fs::File::create(dir.path().join("posta.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&o.bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .current_dir(dir.path())
        .env(
            "POSTA_LOG",
            std::env::var("POSTA_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", o.bin.display()))?;
    let mut d = Daemon { child, addr, dir };
    // Wait for the greeting (bounded).
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            let log = std::fs::read_to_string(d.dir.path().join("posta.log")).unwrap_or_default();
            return Err(format!("posta exited with {status}:\n{log}"));
        }
        if block_on(greets(addr)) {
            return Ok(d);
        }
        if Instant::now() > until {
            stop_daemon(&mut d);
            return Err("posta did not answer within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM by PID (only our own child), then SIGKILL after 10 s.
fn stop_daemon(d: &mut Daemon) {
    let pid = d.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = d.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = d.child.kill();
    let _ = d.child.wait();
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).filter(|e| e.path().is_file()).count())
        .unwrap_or(0)
}

// ----- /proc ------------------------------------------------------------------------------------------

#[path = "support/proc_stat.rs"]
mod proc_stat;
use proc_stat::{clock_ticks, cpu_ms};

/// Peak resident set size in MB (`VmHWM`).
fn peak_rss_mb(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

// ----- main ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets` runs bench targets
    // without it, and a test run must not start a daemon and send thousands of messages.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load: skipped (not run by `cargo bench`; pass --bench to run the binary directly)");
        return ExitCode::SUCCESS;
    }
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answering = std::net::TcpStream::connect_timeout(&o.target, Duration::from_secs(1)).is_ok();
    let spawn = match o.spawn.as_str() {
        "1" | "always" | "yes" => true,
        "0" | "never" | "no" => false,
        _ => !answering,
    };
    if !spawn && !answering {
        eprintln!("load: nothing answers on {} and LOAD_SPAWN=0", o.target);
        return ExitCode::FAILURE;
    }
    let daemon = if spawn {
        match spawn_daemon(&o) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("load: cannot start posta: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let target = daemon.as_ref().map_or(o.target, |d| d.addr);
    let pid = o
        .pid
        .map(|p| p.to_string())
        .or_else(|| daemon.as_ref().map(|d| d.child.id().to_string()));
    let what = match (&daemon, o.discard) {
        (Some(_), true) => "spawned posta, queue/discard",
        (Some(_), false) if o.queue_only => "spawned posta, durable queue, delivery disabled",
        (Some(_), false) => "spawned posta, durable queue",
        (None, _) if o.target_given => "given target",
        (None, _) => "running server",
    };
    let msg = message(&o);
    println!(
        "load: {target} ({what}): {} msgs, body {} B (message {} B), {} sessions, {} per connection{}, \
         {} rcpt(s), time limit {} s",
        o.msgs,
        o.size,
        msg.len(),
        o.sessions,
        if o.per_conn == 0 {
            "all".to_string()
        } else {
            o.per_conn.to_string()
        },
        if o.pipelining { ", pipelining" } else { "" },
        o.rcpts,
        o.time_limit.as_secs()
    );

    let tck = clock_ticks();
    let cpu_before = pid.as_deref().and_then(|p| cpu_ms(p, tck));
    let self_before = cpu_ms("self", tck);
    let start = Instant::now();
    let sh = Arc::new(Shared {
        opts: o.clone(),
        target,
        msg,
        claimed: AtomicU64::new(0),
        deadline: start + o.time_limit,
        stop: AtomicBool::new(false),
    });
    // Sessions spread over `threads` event loops, each a thread of its own.
    let sessions = o.sessions.min(o.msgs.max(1) as usize);
    let threads: Vec<_> = (0..o.threads.min(sessions))
        .map(|t| {
            let sh = sh.clone();
            let mine = (t..sessions).step_by(o.threads).count();
            std::thread::Builder::new()
                .spawn(move || {
                    block_on(async move {
                        let tasks: Vec<_> = (0..mine).map(|_| tokio::spawn(worker(sh.clone()))).collect();
                        let mut all = Vec::new();
                        for t in tasks {
                            all.push(t.await.unwrap_or_default());
                        }
                        all
                    })
                })
                .expect("spawn load thread")
        })
        .collect();
    let mut total = Stats::default();
    for st in threads.into_iter().flat_map(|t| t.join().unwrap_or_default()) {
        total.ok += st.ok;
        total.failed += st.failed;
        total.connections += st.connections;
        total.latencies_us.extend(st.latencies_us);
        for (k, v) in st.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = pid.as_deref().and_then(|p| cpu_ms(p, tck));
    let self_after = cpu_ms("self", tck);
    total.latencies_us.sort_unstable();
    let rate = total.ok as f64 / secs;
    let timed_out = total.ok + total.failed < o.msgs;
    println!(
        "sent {} ok, {} failed{} in {:.2} s over {} connections: {:.0} msg/s, {:.1} MB/s of messages",
        total.ok,
        total.failed,
        if timed_out { " (time limit reached)" } else { "" },
        secs,
        total.connections,
        rate,
        rate * sh.msg.len() as f64 / 1e6
    );
    println!(
        "latency MAIL..250 after DATA: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&total.latencies_us, 0.5),
        percentile(&total.latencies_us, 0.9),
        percentile(&total.latencies_us, 0.99),
        percentile(&total.latencies_us, 1.0)
    );
    let mut cpu_per_msg = None;
    if let (Some(p), Some((u0, s0)), Some((u1, s1))) = (&pid, cpu_before, cpu_after) {
        let (u, s) = (u1.saturating_sub(u0), s1.saturating_sub(s0));
        let per = (u + s) as f64 / total.ok.max(1) as f64;
        cpu_per_msg = Some(per);
        println!(
            "daemon pid {p}: cpu {} ms (user {u}, sys {s}) = {per:.3} ms/msg = {:.0}% of one core; peak RSS {:.1} MB",
            u + s,
            (u + s) as f64 / 10.0 / secs,
            peak_rss_mb(p).unwrap_or(0.0)
        );
    } else {
        println!("daemon cpu: not measured (set POSTA_PID to the daemon's PID)");
    }
    if let (Some((u0, s0)), Some((u1, s1))) = (self_before, self_after) {
        println!("load generator cpu: {} ms", (u1 + s1).saturating_sub(u0 + s0));
    }
    let mut errs: Vec<_> = total.errors.iter().collect();
    errs.sort_by(|a, b| b.1.cmp(a.1));
    for (e, n) in errs.iter().take(5) {
        println!("  error x{n}: {e}");
    }
    if let Some(d) = &daemon {
        let q = d.dir.path().join("queue");
        println!("queue files left by the daemon: {}", count_files(&q));
    }
    let line = format!(
        "load target={} mode={} size={} sessions={} per_conn={} msgs={} ok={} failed={} secs={:.2} msgs_per_s={:.0} cpu_ms_per_msg={}",
        target,
        what.replace(", ", "+").replace(' ', "_"),
        o.size,
        o.sessions,
        o.per_conn,
        o.msgs,
        total.ok,
        total.failed,
        secs,
        rate,
        cpu_per_msg.map_or("-".into(), |c| format!("{c:.3}"))
    );
    println!("{line}");
    if let Some(path) = &o.results {
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
        if let Err(e) = res {
            eprintln!("load: cannot append to {}: {e}", path.display());
        }
    }
    if let Some(mut d) = daemon {
        stop_daemon(&mut d);
        if o.keep {
            // Deleting 20,000 files makes the next few minutes' file creations slower on
            // ext4 (benches/README.md): keep them for a later, separate clean-up.
            println!("kept the daemon's directory: {}", d.dir.keep().display());
        }
    }
    if total.failed > 0 || total.ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
