//! kill -9 during delivery, several times: every message that got a 250 reaches the sink in
//! the end (at-least-once), and duplicates only come from the window between the sink's 250
//! and the unlink of the queue file.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{free_port, spawn_daemon};
use common::sink::{eventually, Sink};
use common::*;

fn relay_config(cfg: &std::path::Path, sink_port: u16) {
    write_default_config(cfg);
    std::fs::write(cfg.join("plugins"), "relay\nrcpt_to.in_host_list\nqueue/smtp_forward\n").unwrap();
    std::fs::write(cfg.join("relay_acl_allow"), "127.0.0.0/8\n").unwrap();
    std::fs::write(
        cfg.join("smtp_forward.ini"),
        format!("[main]\nhost=127.0.0.1\nport={sink_port}\n"),
    )
    .unwrap();
    std::fs::write(
        cfg.join("outbound.ini"),
        "[main]\ntemp_fail_intervals=5s\nconnect_timeout=5\n",
    )
    .unwrap();
}

/// Send messages `first..first+count` on one connection until the daemon dies; the ids
/// that got a 250 go to `acked`.
fn submit(addr: SocketAddr, ids: std::ops::Range<usize>, acked: &Mutex<HashSet<String>>) {
    let Ok(stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = std::io::BufReader::new(stream);
    if read_reply(&mut r).is_none() {
        return;
    }
    let _ = r.get_mut().write_all(b"EHLO crash.test\r\n");
    if read_reply(&mut r).is_none() {
        return;
    }
    for i in ids {
        let id = format!("<m{i}@crash.test>");
        let txn = format!(
            "MAIL FROM:<s@crash.test>\r\nRCPT TO:<r{i}@remote.test>\r\nDATA\r\nMessage-ID: {id}\r\nSubject: {i}\r\n\r\nbody {i}\r\n.\r\n"
        );
        if r.get_mut().write_all(txn.as_bytes()).is_err() {
            return;
        }
        let codes: Vec<u16> = (0..4).map_while(|_| read_reply(&mut r).map(|x| x.code)).collect();
        if codes != [250, 250, 354, 250] {
            return;
        }
        acked.lock().unwrap().insert(id);
    }
}

fn message_id(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID: ").map(String::from))
}

#[test]
fn kill_during_delivery_loses_nothing_acknowledged() {
    let sink = Sink::start();
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    relay_config(&cfg, sink.port());
    let port = free_port();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut next = 0;
    // Kill points: after these many messages reached the sink (spread, deterministic).
    for kill_at in [15usize, 70, 140] {
        let mut d = spawn_daemon(&cfg, port);
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (acked, addr) = (acked.clone(), d.addr);
                let ids = next + w * 1000..next + w * 1000 + 60;
                std::thread::spawn(move || submit(addr, ids, &acked))
            })
            .collect();
        next += 4000;
        assert!(
            eventually(Duration::from_secs(60), || sink.message_count() >= kill_at),
            "deliveries did not reach {kill_at}"
        );
        d.kill9();
        for w in workers {
            w.join().unwrap();
        }
    }
    // Restart and let the queue drain.
    let _d = spawn_daemon(&cfg, port);
    let acked = acked.lock().unwrap().clone();
    let delivered = || -> HashSet<String> { sink.messages().iter().filter_map(|m| message_id(&m.body)).collect() };
    let drained = eventually(Duration::from_secs(90), || {
        acked.is_subset(&delivered()) && queue_files(&root.path().join("queue")).is_empty()
    });
    let got = delivered();
    let lost: Vec<_> = acked.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {} of {}: {lost:?}",
        lost.len(),
        acked.len()
    );
    assert!(drained, "queue did not drain");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in sink.messages() {
        if let Some(id) = message_id(&m.body) {
            *counts.entry(id).or_default() += 1;
        }
    }
    let dups: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "crash test: {} acknowledged, {} delivered ({} unique), {dups} duplicates from 3 kills",
        acked.len(),
        sink.message_count(),
        counts.len()
    );
    // Duplicates only come from messages in flight at a kill: at most the in-flight window.
    assert!(dups <= 3 * 100, "{dups} duplicates");
}
