//! SIGHUP reloads the config dir: a valid change applies to new sessions, an invalid one is
//! refused and the running config stays.

mod common;

use std::time::Duration;

use common::process::free_port;
use common::*;

fn hup(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// RCPT code for `rcpt` on a new session.
fn rcpt_code(addr: std::net::SocketAddr, rcpt: &str) -> u16 {
    let mut c = Client::connect(addr);
    c.expect("EHLO reload.example", 250);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.cmd(&format!("RCPT TO:<{rcpt}>")).code
}

/// Poll (bounded) until `f` holds; the sync point with the daemon's signal handling.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    (0..500).any(|_| {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
        false
    })
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_when_broken() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    let log = root.path().join("posta.log");
    let d = spawn_logged(&cfg, free_port(), &log);
    assert_eq!(rcpt_code(d.addr, "u@other.test"), 550);

    // A session opened before the reload keeps its rules; new sessions get the new ones.
    let mut old = Client::connect(d.addr);
    old.expect("EHLO before.example", 250);
    std::fs::write(cfg.join("host_list"), "example.test\nother.test\n").unwrap();
    hup(d.pid());
    assert!(
        eventually(|| rcpt_code(d.addr, "u@other.test") == 250),
        "reload not applied"
    );
    old.expect("MAIL FROM:<a@remote.example>", 250);
    old.expect("RCPT TO:<u@other.test>", 550);

    // A broken config is refused: the running one stays.
    std::fs::write(cfg.join("plugins"), "rcpt_to.in_host_list\nno.such.plugin\n").unwrap();
    std::fs::write(cfg.join("host_list"), "example.test\n").unwrap();
    hup(d.pid());
    // Sync point: the daemon logs that it refused the reload.
    let refused = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("reload refused")
    };
    assert!(eventually(refused), "no 'reload refused' log line");
    assert!(std::fs::read_to_string(&log).unwrap().contains("no.such.plugin"));
    assert_eq!(rcpt_code(d.addr, "u@other.test"), 250, "broken config was applied");
}

/// Like `spawn_daemon`, with the log (info level) in a file.
fn spawn_logged(cfg: &std::path::Path, port: u16, log: &std::path::Path) -> common::process::Daemon {
    std::fs::write(
        cfg.join("smtp.ini"),
        format!("[main]\nlisten=127.0.0.1:{port}\nnodes=1\n"),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_posta"))
        .args(["run", "-c"])
        .arg(cfg)
        .env("POSTA_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        eventually(|| std::net::TcpStream::connect(addr).is_ok()),
        "posta did not start"
    );
    common::process::Daemon { child, addr }
}

/// `posta reload` through the control socket: it answers once the reload is done (no polling),
/// says what needs a restart, and reports a refused config with the reason and exit code 1.
#[test]
fn posta_reload_command_reports_what_it_did() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    let reload = || posta_reload(&cfg);
    // No daemon yet: a clear error, not a hang.
    let (ok, text) = reload();
    assert!(!ok && text.contains("no daemon is running"), "{text}");

    let log = root.path().join("posta.log");
    let port = free_port();
    let d = spawn_logged(&cfg, port, &log);
    assert!(
        eventually(|| cfg.join("../queue/.control").exists()),
        "no control socket"
    );
    assert_eq!(rcpt_code(d.addr, "u@other.test"), 550);

    std::fs::write(cfg.join("host_list"), "example.test\nother.test\n").unwrap();
    let (ok, text) = reload();
    assert!(ok && text.contains("config reloaded"), "{text}");
    assert!(!text.contains("restart"), "{text}");
    assert_eq!(
        rcpt_code(d.addr, "u@other.test"),
        250,
        "reload not applied when the command returned"
    );

    // A setting read only at start: applied later, and the answer says so.
    std::fs::write(
        cfg.join("smtp.ini"),
        format!("[main]\nlisten=127.0.0.1:{port}\nnodes=2\n"),
    )
    .unwrap();
    let (ok, text) = reload();
    assert!(
        ok && text.contains("needing a restart: smtp.ini [main] nodes"),
        "{text}"
    );

    std::fs::write(cfg.join("plugins"), "rcpt_to.in_host_list\nno.such.plugin\n").unwrap();
    std::fs::write(cfg.join("host_list"), "example.test\n").unwrap();
    let (ok, text) = reload();
    assert!(
        !ok && text.contains("reload refused") && text.contains("no.such.plugin"),
        "{text}"
    );
    assert_eq!(rcpt_code(d.addr, "u@other.test"), 250, "broken config was applied");
}

/// outbound.ini applies on reload: delivery switched on delivers what waited in the queue;
/// DNS servers and the metrics address still need a restart, and the answer says so.
#[test]
fn reload_applies_outbound_ini() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    std::fs::write(cfg.join("plugins"), "deliver/maildir\nrcpt_to.in_host_list\n").unwrap();
    let outbound = |disabled: bool, ns: &str| {
        std::fs::write(
            cfg.join("outbound.ini"),
            format!("[main]\ndisabled={disabled}\nnameservers={ns}\n"),
        )
        .unwrap()
    };
    outbound(true, "127.0.0.1:9");
    let d = spawn_logged(&cfg, free_port(), &root.path().join("posta.log"));
    assert!(
        eventually(|| cfg.join("../queue/.control").exists()),
        "no control socket"
    );
    let mut c = Client::connect(d.addr);
    c.expect("EHLO reload.example", 250);
    let r = c.send_mail(
        "a@remote.example",
        &["u@example.test"],
        b"Subject: held\r\n\r\nwaits\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let queue = root.path().join("queue");
    let mailbox = root.path().join("var/mail/example.test/u/new");
    let in_mailbox = || std::fs::read_dir(&mailbox).map(|d| d.count()).unwrap_or(0);
    assert_eq!(common::queue_files(&queue).len(), 1);
    assert_eq!(in_mailbox(), 0, "delivered while delivery was disabled");

    outbound(false, "127.0.0.1:9");
    let (ok, text) = posta_reload(&cfg);
    assert!(
        ok && text.contains("outbound.ini") && !text.contains("restart"),
        "{text}"
    );
    assert!(eventually(|| in_mailbox() == 1), "not delivered after the reload");
    assert!(eventually(|| common::queue_files(&queue).is_empty()));

    outbound(false, "127.0.0.1:53");
    std::fs::write(cfg.join("metrics.ini"), "[main]\nlisten=127.0.0.1:0\n").unwrap();
    let (ok, text) = posta_reload(&cfg);
    assert!(ok, "{text}");
    assert!(text.contains("outbound.ini [main] nameservers"), "{text}");
    assert!(text.contains("metrics.ini [main] listen"), "{text}");
}

fn posta_reload(cfg: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_posta"))
        .args(["reload", "-c"])
        .arg(cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Connection limits and deadlines apply on reload to connections made afterwards; the
/// connections already open stay counted.
#[test]
fn reload_applies_connection_limits() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    let d = spawn_logged(&cfg, free_port(), &root.path().join("posta.log"));
    assert!(
        eventually(|| cfg.join("../queue/.control").exists()),
        "no control socket"
    );
    let greet = || Client::connect(d.addr).greeting.code;
    let held = Client::connect(d.addr);
    assert_eq!(greet(), 220, "loopback is exempt by default");
    std::fs::write(
        cfg.join("connection.ini"),
        "[max]\nconnections_per_ip=1\nconnections_exempt=\n",
    )
    .unwrap();
    let (ok, text) = posta_reload(&cfg);
    assert!(ok && !text.contains("restart"), "{text}");
    // The connection admitted before the change was not counted per address: the first new
    // one gets in and fills the one slot, the next is refused.
    let first = Client::connect(d.addr);
    assert_eq!(first.greeting.code, 220);
    assert_eq!(greet(), 421, "the new per-address limit was not applied");
    drop((held, first));
}
