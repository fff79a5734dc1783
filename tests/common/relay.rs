//! Relaying through posta to an in-test sink, shared by the crash and shutdown tests.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::{read_reply, write_default_config};

pub fn relay_config(cfg: &std::path::Path, sink_port: u16) {
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
pub fn submit(addr: SocketAddr, ids: std::ops::Range<usize>, acked: &Mutex<HashSet<String>>) {
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

pub fn message_id(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .find_map(|l| l.strip_prefix("Message-ID: ").map(String::from))
}
