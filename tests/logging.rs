//! `log.ini` end to end: the real binary, its stderr, without `POSTA_LOG`.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A config dir listening on `port` with the given `log.ini`.
fn config_dir(port: u16, log_ini: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path();
    let smtp = format!("[main]\nlisten=127.0.0.1:{port}\nnodes=1\nforce_shutdown_timeout=5\n");
    std::fs::write(cfg.join("smtp.ini"), smtp).unwrap();
    std::fs::write(cfg.join("host_list"), "example.com\n").unwrap();
    std::fs::write(cfg.join("plugins"), "rcpt_to.in_host_list\n").unwrap();
    std::fs::write(cfg.join("outbound.ini"), "[main]\ndisabled=true\n").unwrap();
    std::fs::write(cfg.join("queue_dir"), cfg.join("queue").display().to_string()).unwrap();
    std::fs::write(cfg.join("log.ini"), log_ini).unwrap();
    dir
}

/// `posta <cmd> -c <cfg>` without `POSTA_LOG`, stderr captured by a reader thread.
fn spawn(cmd: &str, cfg: &Path) -> (Child, JoinHandle<String>) {
    common::process::spawn_captured(cmd, cfg, None)
}

/// Wait (bounded) for the child to exit; kill it and fail if it does not.
fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    common::process::wait_exit(child, within).unwrap_or_else(|| panic!("posta did not exit within {within:?}"))
}

/// Start the daemon, wait until it listens, SIGTERM it; its exit status and stderr.
fn run_and_stop(log_ini: &str) -> (ExitStatus, String, SocketAddr) {
    run_with(log_ini, |_| {})
}

/// As [`run_and_stop`], with `talk` run against the daemon before the SIGTERM.
fn run_with(log_ini: &str, talk: impl FnOnce(SocketAddr)) -> (ExitStatus, String, SocketAddr) {
    let port = free_port();
    let dir = config_dir(port, log_ini);
    let (mut child, reader) = spawn("run", dir.path());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("posta exited early ({status}): {}", reader.join().unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("posta did not listen on {addr}: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    talk(addr);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_exit(&mut child, Duration::from_secs(20));
    (status, reader.join().unwrap(), addr)
}

#[test]
fn json_format_every_line_is_json() {
    let (status, stderr, addr) = run_and_stop("[main]\nformat=json\nlevel=info\n");
    assert!(status.success(), "{status}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no log lines");
    let mut listening = false;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{stderr}"));
        assert!(v.get("level").is_some() && v.get("message").is_some(), "{line}");
        assert!(v.get("timestamp").is_none(), "timestamps are off by default: {line}");
        if v["message"] == "posta listening" {
            assert_eq!(v["listen"], addr.to_string(), "{line}");
            listening = true;
        }
    }
    assert!(listening, "no startup line naming {addr}:\n{stderr}");
}

#[test]
fn default_format_with_timestamps() {
    let (status, stderr, addr) = run_and_stop("[main]\nformat=default\ntimestamps=true\n");
    assert!(status.success(), "{status}: {stderr}");
    let start = stderr
        .lines()
        .find(|l| l.contains("posta listening"))
        .unwrap_or_else(|| panic!("no startup line:\n{stderr}"));
    assert!(start.contains(&addr.to_string()), "{start}");
    // RFC 3339 UTC: 2024-05-01T12:34:56.123456Z
    let ts = start.split_whitespace().next().unwrap();
    let b = ts.as_bytes();
    assert!(
        ts.ends_with('Z') && b.len() > 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':',
        "no leading timestamp: {start}"
    );
    assert!(stderr
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()));
}

#[test]
fn bad_level_stops_start_up() {
    let port = free_port();
    let dir = config_dir(port, "[main]\nlevel=loud\n");
    for cmd in ["run", "check-config"] {
        let (mut child, reader) = spawn(cmd, dir.path());
        let status = wait_exit(&mut child, Duration::from_secs(20));
        let stderr = reader.join().unwrap();
        assert!(!status.success(), "{cmd}: {status}: {stderr}");
        assert!(
            stderr.contains("log.ini") && stderr.contains("[main] level") && stderr.contains("loud"),
            "{cmd}: {stderr}"
        );
    }
    assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "port was bound");
}

/// One SMTP exchange: send `line` (if any), read one reply (multi-line aware); its code.
fn smtp(r: &mut impl std::io::BufRead, w: &mut TcpStream, line: &str) -> u16 {
    use std::io::Write;
    if !line.is_empty() {
        w.write_all(line.as_bytes()).unwrap();
    }
    loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).unwrap() > 0, "connection closed after {line:?}");
        if l.as_bytes().get(3) != Some(&b'-') {
            return l[..3].parse().unwrap();
        }
    }
}

#[test]
fn one_line_per_transaction_inside_the_connection_span() {
    let (status, stderr, _) = run_with("[main]\nformat=json\nlevel=info\n", |addr| {
        let mut w = TcpStream::connect(addr).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = std::io::BufReader::new(w.try_clone().unwrap());
        assert_eq!(smtp(&mut r, &mut w, ""), 220);
        assert_eq!(smtp(&mut r, &mut w, "EHLO log.example\r\n"), 250);
        assert_eq!(smtp(&mut r, &mut w, "MAIL FROM:<a@remote.example>\r\n"), 250);
        assert_eq!(smtp(&mut r, &mut w, "RCPT TO:<u@example.com>\r\n"), 250);
        assert_eq!(smtp(&mut r, &mut w, "DATA\r\n"), 354);
        assert_eq!(smtp(&mut r, &mut w, "Subject: t\r\n\r\nhello\r\n.\r\n"), 250);
        assert_eq!(smtp(&mut r, &mut w, "MAIL FROM:<>\r\n"), 250);
        assert_eq!(smtp(&mut r, &mut w, "RCPT TO:<v@example.com>\r\n"), 250);
        assert_eq!(smtp(&mut r, &mut w, "RCPT TO:<w@example.com>\r\n"), 250);
        assert_eq!(smtp(&mut r, &mut w, "RSET\r\n"), 250);
        assert_eq!(smtp(&mut r, &mut w, "QUIT\r\n"), 221);
    });
    assert!(status.success(), "{status}: {stderr}");
    let txns: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "transaction")
        .collect();
    assert_eq!(txns.len(), 2, "{stderr}");
    let conn_uuid = txns[0]["span"]["uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no span: {stderr}"));
    let (q, a) = (&txns[0], &txns[1]);
    assert_eq!(q["txn"], format!("{conn_uuid}.1"), "{stderr}");
    assert_eq!(q["outcome"], "queued");
    assert_eq!(q["from"], "<a@remote.example>");
    assert_eq!(q["rcpts"], 1);
    assert!(q["bytes"].as_u64().unwrap() > 10, "{q}");
    assert!(!q["queue_ids"].as_str().unwrap().is_empty(), "{q}");
    assert_eq!(a["txn"], format!("{conn_uuid}.2"));
    assert_eq!(a["outcome"], "not queued");
    assert_eq!(a["from"], "<>");
    assert_eq!(a["rcpts"], 2);
}
