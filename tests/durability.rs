//! Crash safety of the queue commit, with the real binary and kill -9: exactly the messages
//! that got a 250 are in the queue after a restart, and no temp file is left.

mod common;

use common::process::{free_port, spawn_daemon};
use common::*;
use std::collections::HashSet;

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    let queue = root.path().join("queue");
    (root, cfg, queue)
}

fn ids_in_queue(queue: &std::path::Path) -> HashSet<String> {
    queue_files(queue)
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let (_, msg) = posta::queue::decode(&bytes).unwrap();
            let msg = String::from_utf8_lossy(msg);
            let line = msg.lines().find(|l| l.starts_with("Message-ID: ")).expect("message id");
            line["Message-ID: ".len()..].to_string()
        })
        .collect()
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "Message-ID: {id}\r\nSubject: crash test\r\n\r\n{}",
        "body line\r\n".repeat(50)
    )
    .into_bytes()
}

/// Wait (bounded) until `f` holds; the test's sync point with the daemon's progress.
fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn kill_during_data_keeps_only_acknowledged_messages() {
    let (_root, cfg, queue) = setup();
    // Spool every body byte to disk at once, so a temp file shows the DATA is in flight.
    std::fs::write(cfg.join("connection.ini"), "[main]\nspool_after=0\n").unwrap();
    let port = free_port();
    let mut d = spawn_daemon(&cfg, port);
    let mut c = Client::connect(d.addr);
    c.expect("EHLO crash.example", 250);
    for i in 0..3 {
        let r = c.send_mail(
            "a@remote.example",
            &["u@example.test"],
            &message(&format!("<ack{i}@t>")),
        );
        assert_eq!(r.code, 250);
    }
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<u@example.test>", 250);
    c.expect("DATA", 354);
    c.send(&message("<never@t>")[..200]);
    wait_until("the body to reach the spool", || !temp_files(&queue).is_empty());
    d.kill9();
    assert_eq!(queue_files(&queue).len(), 3);
    let _d2 = spawn_daemon(&cfg, port);
    let expected: HashSet<String> = (0..3).map(|i| format!("<ack{i}@t>")).collect();
    assert_eq!(ids_in_queue(&queue), expected);
    assert!(temp_files(&queue).is_empty(), "temp files left after restart");
}

#[test]
fn kill_right_after_the_250_keeps_the_message() {
    let (_root, cfg, queue) = setup();
    let port = free_port();
    let mut d = spawn_daemon(&cfg, port);
    let mut c = Client::connect(d.addr);
    c.expect("EHLO crash.example", 250);
    let r = c.send_mail("a@remote.example", &["u@example.test"], &message("<acked@t>"));
    assert_eq!(r.code, 250);
    d.kill9();
    let _d2 = spawn_daemon(&cfg, port);
    assert_eq!(ids_in_queue(&queue), HashSet::from(["<acked@t>".to_string()]));
    assert!(temp_files(&queue).is_empty());
}

/// Several clients send in parallel while the daemon is killed, three times over: every
/// acknowledged message survives, and nothing appears that was not sent.
#[test]
fn repeated_kills_under_load_lose_no_acknowledged_message() {
    use std::sync::{Arc, Mutex};
    let (_root, cfg, queue) = setup();
    let port = free_port();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut sent = HashSet::new();
    for round in 0..3 {
        let mut d = spawn_daemon(&cfg, port);
        let before = acked.lock().unwrap().len();
        let workers: Vec<_> = (0..6)
            .map(|w| {
                let acked = acked.clone();
                let addr = d.addr;
                std::thread::spawn(move || send_until_error(addr, round, w, &acked))
            })
            .collect();
        wait_until("some acknowledgements", || acked.lock().unwrap().len() >= before + 30);
        d.kill9();
        for w in workers {
            sent.extend(w.join().unwrap());
        }
    }
    let _d = spawn_daemon(&cfg, port);
    let in_queue = ids_in_queue(&queue);
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<_> = acked.difference(&in_queue).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(in_queue.is_subset(&sent), "queued messages that were never sent");
    assert!(temp_files(&queue).is_empty());
}

/// Send messages on one connection until the daemon dies (bounded); returns ids attempted.
fn send_until_error(
    addr: std::net::SocketAddr,
    round: usize,
    w: usize,
    acked: &std::sync::Mutex<HashSet<String>>,
) -> HashSet<String> {
    use std::io::Write;
    let mut sent = HashSet::new();
    let Ok(stream) = std::net::TcpStream::connect(addr) else {
        return sent;
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut r = std::io::BufReader::new(stream);
    if read_reply(&mut r).is_none() {
        return sent;
    }
    for i in 0..2000 {
        let id = format!("<r{round}w{w}m{i}@t>");
        sent.insert(id.clone());
        let mut txn = b"EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n".to_vec();
        if i > 0 {
            txn.drain(..8);
        }
        if r.get_mut().write_all(&txn).is_err() {
            break;
        }
        let need = if i == 0 { 4 } else { 3 };
        if (0..need).any(|_| read_reply(&mut r).is_none_or(|x| x.code >= 400)) {
            break;
        }
        let mut body = message(&id);
        body.extend_from_slice(b"\r\n.\r\n");
        if r.get_mut().write_all(&body).is_err() {
            break;
        }
        match read_reply(&mut r) {
            Some(x) if x.code == 250 => {
                acked.lock().unwrap().insert(id);
            }
            _ => break,
        }
    }
    sent
}

/// A second daemon on the same queue dir would delete the first one's temp files: it is
/// refused at start with a clear message.
#[test]
fn a_second_process_on_the_same_queue_is_refused() {
    let (_root, cfg, _queue) = setup();
    let port = free_port();
    let _d = spawn_daemon(&cfg, port);
    std::fs::write(
        cfg.join("smtp.ini"),
        format!("[main]\nlisten=127.0.0.1:{}\n", free_port()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_posta"))
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another posta process"), "{err}");
}
