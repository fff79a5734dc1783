//! `posta queue …` against a running daemon (online mode): the tools talk to it over
//! `<queue>/.control` and it changes its own index, instead of files being renamed behind its
//! back.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{free_port, spawn_daemon};
use common::sink::eventually;
use common::{queue_files, start, write_default_config, Client};
use posta::hooks::state::now_ms;
use posta::queue::file::QueueName;
use serde_json::Value;

const HOUR: u64 = 3_600_000;
const HARAKA: &str = "1747300000123_1747300000123_0_4242_Xy7Qz1_3_haraka.example";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `posta queue <args> -c <cfg>`.
fn queue(cfg: &Path, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_posta"))
        .arg("queue")
        .args(args)
        .arg("-c")
        .arg(cfg)
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(cfg: &Path, args: &[&str]) -> String {
    let o = queue(cfg, args);
    assert_eq!(o.code, 0, "{args:?}: stdout {} stderr {}", o.stdout, o.stderr);
    o.stdout
}

fn names(dir: &Path) -> Vec<String> {
    queue_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The line of `list` output for `id`.
fn line_of<'a>(out: &'a str, id: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{out}"))
}

/// Rename `name` in `dir` so its next attempt is `next` (the daemon reads due times from names).
fn set_next(dir: &Path, name: &str, next: u64) -> String {
    let mut q = QueueName::parse(name).unwrap();
    q.next_attempt = next;
    let new = q.to_string();
    fs::rename(dir.join(name), dir.join(&new)).unwrap();
    new
}

/// Send one request line on the control socket; the answer as JSON.
fn raw(sock: &Path, req: &[u8]) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(req);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn list_stat_hold_release_delete_flush_through_a_running_daemon() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    let qdir: PathBuf = root.path().join("queue");
    write_default_config(&cfg);

    // First run: four messages over SMTP (delivery is disabled: they stay queued).
    let mut d = spawn_daemon(&cfg, free_port());
    let mut c = Client::connect(d.addr);
    c.expect("EHLO online.example", 250);
    for i in 0..4 {
        let r = c.send_mail(
            "sender@client.example",
            &[&format!("u{i}@example.test")],
            format!("Subject: m{i}\r\n\r\nbody {i}").as_bytes(),
        );
        assert_eq!(r.code, 250, "{r:?}");
    }
    drop(c);
    assert!(qdir.join(".control").exists());
    // Killed: the socket file stays behind (stale), and the next daemon replaces it.
    d.kill9();
    let mut items = names(&qdir);
    assert_eq!(items.len(), 4, "{items:?}");
    // One local item waits an hour; a Haraka item for example.net too.
    let later = now_ms() + HOUR;
    items[3] = set_next(&qdir, &items[3], later);
    fs::copy(format!("tests/fixtures/haraka-queue/{HARAKA}"), qdir.join(HARAKA)).unwrap();
    let haraka = set_next(&qdir, HARAKA, later);
    let [m0, m1, m2, m3] = [0, 1, 2, 3].map(|i| items[i].clone());

    let d = spawn_daemon(&cfg, free_port());
    let sock = qdir.join(".control");
    assert_eq!(fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    // list: the daemon's view, same format as offline.
    let out = ok(&cfg, &["list"]);
    assert!(out.starts_with("ID "), "{out}");
    assert!(out.trim_end().ends_with("-- 5 item(s)"), "{out}");
    for m in [&m0, &m1, &m2] {
        assert!(line_of(&out, m).contains(" now "), "{out}");
    }
    assert!(line_of(&out, &m3).contains(" in 59m"), "{out}");
    assert!(line_of(&out, &haraka).contains("<sender@haraka.example>"), "{out}");
    let j: Value = serde_json::from_str(&ok(&cfg, &["list", "--json"])).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 5);
    assert!(j.as_array().unwrap().iter().all(|e| e["in_flight"] == false));

    // stat: per domain, plus the daemon's counts.
    let out = ok(&cfg, &["stat"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("TOTAL") && l.split_whitespace().nth(1) == Some("5")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("example.test ") && l.split_whitespace().nth(1) == Some("4")),
        "{out}"
    );
    assert!(out.contains("daemon: 5 waiting, 0 in flight"), "{out}");

    // hold: out of the daemon's wheel, into hold/.
    assert_eq!(ok(&cfg, &["hold", &m0]).trim(), format!("held {m0}"));
    assert!(qdir.join("hold").join(&m0).is_file());
    assert!(!qdir.join(&m0).exists());
    let again = queue(&cfg, &["hold", &m0]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already held"), "{}", again.stderr);
    assert!(ok(&cfg, &["stat"]).contains("daemon: 4 waiting"));
    let held = ok(&cfg, &["list", "--held"]);
    assert!(line_of(&held, &m0).contains(" held "), "{held}");
    assert!(!ok(&cfg, &["list"]).contains(&m0));
    let refused = queue(&cfg, &["flush", &m0]);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("is held; release it first"),
        "{}",
        refused.stderr
    );

    // release: back in the queue and in the wheel.
    assert_eq!(ok(&cfg, &["release", &m0]).trim(), format!("released {m0}"));
    assert!(qdir.join(&m0).is_file());
    assert!(!qdir.join("hold").join(&m0).exists());
    assert!(ok(&cfg, &["stat"]).contains("daemon: 5 waiting"));

    // delete: out of the wheel, unlinked.
    assert_eq!(ok(&cfg, &["delete", &m1]).trim(), format!("deleted {m1}"));
    assert!(!qdir.join(&m1).exists());
    assert!(ok(&cfg, &["stat"]).contains("daemon: 4 waiting"));
    let gone = queue(&cfg, &["delete", &m1]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("no queue item"), "{}", gone.stderr);

    // flush --domain: only the example.net item is due now; the files keep their names.
    let out = ok(&cfg, &["flush", "--domain", "example.net"]);
    assert_eq!(out, format!("flushed {haraka}\n1 item(s) due now\n"));
    let out = ok(&cfg, &["list"]);
    assert!(line_of(&out, &haraka).contains(" now "), "{out}");
    assert!(line_of(&out, &m3).contains(" in 59m"), "{out}");
    assert!(qdir.join(&haraka).is_file() && qdir.join(&m3).is_file());
    assert_eq!(ok(&cfg, &["flush", &m2]).trim(), format!("{m2}: already due"));
    assert_eq!(ok(&cfg, &["flush", &m3]).trim(), format!("flushed {m3}"));
    assert!(line_of(&ok(&cfg, &["list"]), &m3).contains(" now "));
    assert_eq!(
        ok(&cfg, &["flush"]).trim(),
        "4 item(s) due now, 0 in flight (retried at once if deferred)"
    );

    // delete --all with a filter, through the daemon.
    let out = ok(&cfg, &["delete", "--all", "--domain", "example.net"]);
    assert_eq!(out, format!("deleted {haraka}\n1 item(s) deleted\n"));

    // bounce, through the daemon: the DSN is queued by the daemon's own spool and waits in its
    // wheel; the original leaves the queue.
    let out = ok(&cfg, &["bounce", &m2, "--reason", "mailbox retired"]);
    let prefix = format!("bounced {m2}: DSN to <sender@client.example> queued as ");
    let dsn = out
        .trim()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(!qdir.join(&m2).exists());
    assert!(qdir.join(&dsn).is_file(), "{dsn}");
    assert!(ok(&cfg, &["stat"]).contains("daemon: 3 waiting"));
    let shown = ok(&cfg, &["inspect", "--body", &dsn]);
    assert!(shown.contains("mailbox retired"), "{shown}");
    let gone = queue(&cfg, &["bounce", &m2, "--reason", "again"]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("no queue item"), "{}", gone.stderr);

    // The protocol itself: bad, oversized and unknown requests get an error line.
    let r = raw(&sock, b"not json\n");
    assert!(r["error"].as_str().unwrap().starts_with("bad request"), "{r}");
    let r = raw(&sock, &vec![b' '; 70 * 1024]);
    assert!(r["error"].as_str().unwrap().contains("larger than"), "{r}");
    let r = raw(&sock, b"{\"cmd\":\"flush\",\"domian\":\"x\"}\n");
    assert!(r["error"].as_str().is_some(), "{r}");
    let r = raw(&sock, b"{\"cmd\":\"delete\",\"ids\":[\"../../etc/passwd\"]}\n");
    assert!(r["results"][0]["error"].as_str().is_some(), "{r}");

    // A clean stop removes the socket; the tools then work offline on what is left.
    let pid = d.pid().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut d = d;
    assert!(eventually(Duration::from_secs(20), || matches!(
        d.child.try_wait(),
        Ok(Some(_))
    )));
    assert!(!sock.exists());
    let out = ok(&cfg, &["list"]);
    assert!(out.trim_end().ends_with("-- 3 item(s)"), "{out}");
    assert!(!out.contains(&m1) && !out.contains(&haraka), "{out}");
    let mut left = names(&qdir);
    left.sort();
    let mut want = vec![m0, dsn, m3];
    want.sort();
    assert_eq!(left, want);
}

fn forward_to(cfg: &Path, port: u16, outbound: &str) {
    fs::write(cfg.join("plugins"), "relay\nrcpt_to.in_host_list\nqueue/smtp_forward\n").unwrap();
    fs::write(cfg.join("relay_acl_allow"), "127.0.0.0/8\n").unwrap();
    fs::write(
        cfg.join("smtp_forward.ini"),
        format!("[main]\nhost=127.0.0.1\nport={port}\n"),
    )
    .unwrap();
    fs::write(cfg.join("outbound.ini"), outbound).unwrap();
}

#[test]
fn an_item_being_delivered_is_marked_and_cannot_be_deleted_or_held() {
    // A next hop that accepts and never answers: the attempt stays in flight.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || silent.incoming().take(2).flatten().collect::<Vec<_>>());
    let srv = start(|cfg| {
        forward_to(
            cfg,
            port,
            "[main]\nreply_timeout=60\nconnect_timeout=5\ntemp_fail_intervals=1h\n",
        )
    });
    let cfg = srv.config_dir();
    let mut c = srv.client();
    c.expect("EHLO busy.example", 250);
    assert_eq!(
        c.send_mail("a@client.test", &["b@busy.test"], b"Subject: busy\r\n\r\nx")
            .code,
        250
    );
    let id = names(&srv.queue_dir()).pop().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || {
            ok(&cfg, &["list"])
                .lines()
                .any(|l| l.starts_with(&id) && l.contains(" in flight "))
        }),
        "{}",
        ok(&cfg, &["list"])
    );
    let j: Value = serde_json::from_str(&ok(&cfg, &["list", "--json"])).unwrap();
    assert_eq!(j[0]["in_flight"], true);
    assert!(ok(&cfg, &["stat"]).contains("daemon: 0 waiting, 1 in flight"));
    for cmd in ["delete", "hold"] {
        let o = queue(&cfg, &[cmd, &id]);
        assert_eq!(o.code, 1, "{cmd}: {}", o.stdout);
        assert!(o.stderr.contains("is being delivered now"), "{cmd}: {}", o.stderr);
    }
    assert!(srv.queue_dir().join(&id).is_file());
    assert!(!srv.queue_dir().join("hold").join(&id).exists());
    assert!(ok(&cfg, &["flush", &id]).contains("being delivered now; retried at once if deferred"));
    drop(srv);
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    drop(holder);
}
