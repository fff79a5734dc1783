//! `posta top --once`: the real binary scrapes a running daemon's metrics endpoint and prints
//! one plain-text table; a closed port is a clear error and a non-zero exit.

mod common;

use common::*;
use std::process::{Command, Output};

fn posta_top(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_posta"))
        .arg("top")
        .args(args)
        .output()
        .expect("run posta top")
}

/// The numbers of the table row that starts with `label`.
fn row(table: &str, label: &str) -> Vec<u64> {
    table
        .lines()
        .find_map(|l| l.strip_prefix(label).filter(|r| r.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {label} row in:\n{table}"))
        .split_whitespace()
        .filter(|c| *c != "-")
        .map(|c| c.parse().unwrap_or_else(|_| panic!("{label}: {c:?} in:\n{table}")))
        .collect()
}

#[test]
fn once_shows_actors_and_queued_messages() {
    let srv = start(|cfg| std::fs::write(cfg.join("metrics.ini"), "[main]\nlisten=127.0.0.1:0\n").unwrap());
    let addr = srv.server.metrics_addr().expect("metrics endpoint bound");

    let mut c = srv.client();
    c.expect("EHLO top.example", 250);
    let r = c.send_mail(
        "a@remote.example",
        &["u@example.test"],
        b"Subject: top\r\n\r\nhello\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221);

    let out = posta_top(&["--once", "--addr", &addr.to_string()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.starts_with(&format!("posta top: http://{addr}/metrics\n")),
        "{stdout}"
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("KIND"))
        .expect("actor table header");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["KIND", "LIVE", "STARTED", "STOPPED", "PANICS", "MAILBOX"]
    );
    // Counters are process-wide, and other tests of this binary may add to them: at least.
    // (live, started and stopped are read at slightly different times: no equation between them.)
    let [_live, started, _stopped, panics, mailbox] = row(&stdout, "connection")[..] else {
        panic!("{stdout}")
    };
    assert!(started >= 1 && panics == 0 && mailbox == 0, "{stdout}");
    for kind in ["transaction", "queue_manager", "queue_file", "remote_mx", "resolver"] {
        assert_eq!(row(&stdout, kind).len(), 5, "{kind}: {stdout}");
    }
    assert!(row(&stdout, "messages queued")[0] >= 1, "{stdout}");
    // Delivery is disabled in the test config: the message waits in the queue.
    assert!(row(&stdout, "queue waiting")[0] >= 1, "{stdout}");
    for label in [
        "commit errors",
        "delivered",
        "deferred",
        "bounced",
        "outbound conns opened",
        "outbound conns reused",
        "queue in flight",
        "queue oldest (s)",
    ] {
        assert_eq!(row(&stdout, label).len(), 1, "{label}: {stdout}");
    }
    // One scrape: no rates yet.
    let queued_line = stdout.lines().find(|l| l.starts_with("messages queued")).unwrap();
    assert!(queued_line.ends_with(" -"), "{queued_line}");
}

#[test]
fn once_reads_the_config_dir() {
    // A fixed port is not known before binding: bind one, free it, and have the daemon take it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = start(|cfg| std::fs::write(cfg.join("metrics.ini"), format!("[main]\nlisten={port}\n")).unwrap());
    let cfg = srv.config_dir();
    let out = posta_top(&["--once", "-c", cfg.to_str().unwrap()]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("posta top: http://127.0.0.1:{port}/metrics\n")),
        "{stdout}"
    );
    assert_eq!(row(&stdout, "connection").len(), 5, "{stdout}");
}

#[test]
fn once_against_a_closed_port_fails_clearly() {
    // Bind and drop: nothing listens there any more.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = posta_top(&["--once", "--addr", &addr.to_string()]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("posta: cannot connect to the metrics endpoint {addr}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("metrics.ini [main] listen"), "{stderr}");
}

#[test]
fn config_without_listen_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = posta_top(&["--once", "-c", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("metrics.ini has no [main] listen"), "{stderr}");
    assert!(stderr.contains("--addr"), "{stderr}");
}

#[test]
fn live_view_needs_a_terminal() {
    // Output captured (not a terminal): a clear error, not a raw-mode mess.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = posta_top(&["--addr", &addr.to_string(), "--interval", "500ms"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a terminal: use --once"), "{stderr}");
}
