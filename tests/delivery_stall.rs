//! A next hop that accepts the connection and then says nothing: posta gives up after
//! `reply_timeout`, keeps the message queued (deferred), and keeps serving. With STARTTLS
//! switched off for a host in `tls.ini [outbound] no_tls_hosts`, mail goes in plain text.

mod common;

use std::time::Duration;

use common::sink::{eventually, Sink};
use common::*;

fn forward_to(cfg: &std::path::Path, port: u16, outbound: &str) {
    std::fs::write(cfg.join("plugins"), "relay\nrcpt_to.in_host_list\nqueue/smtp_forward\n").unwrap();
    std::fs::write(cfg.join("relay_acl_allow"), "127.0.0.0/8\n").unwrap();
    std::fs::write(
        cfg.join("smtp_forward.ini"),
        format!("[main]\nhost=127.0.0.1\nport={port}\n"),
    )
    .unwrap();
    std::fs::write(cfg.join("outbound.ini"), outbound).unwrap();
}

#[test]
fn a_silent_next_hop_defers_after_the_reply_timeout() {
    // Accepts connections and never answers (bounded: the test drops it at the end).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().take(4).flatten() {
            held.push(s);
        }
        held
    });
    let srv = start(|cfg| {
        forward_to(
            cfg,
            port,
            "[main]\nreply_timeout=1\nconnect_timeout=2\ntemp_fail_intervals=1h\n",
        )
    });
    let mut c = srv.client();
    c.expect("EHLO stall.example", 250);
    let r = c.send_mail("a@client.test", &["b@stalled.test"], b"Subject: stall\r\n\r\nx");
    assert_eq!(r.code, 250);
    // Deferred: still queued, renamed with one attempt.
    let deferred = eventually(Duration::from_secs(30), || {
        srv.queue_files()
            .iter()
            .any(|p| p.file_name().unwrap().to_string_lossy().split('_').nth(2) == Some("1"))
    });
    assert!(deferred, "not deferred: {:?}", srv.queue_files());
    // The daemon still accepts mail meanwhile.
    let r = c.send_mail("a@client.test", &["c@stalled.test"], b"Subject: second\r\n\r\ny");
    assert_eq!(r.code, 250);
    drop(srv);
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    drop(holder);
}

#[test]
fn no_tls_hosts_keeps_starttls_off() {
    let sink = Sink::builder().starttls().start();
    let srv = start(|cfg| {
        forward_to(cfg, sink.port(), "[main]\ntemp_fail_intervals=1h\n");
        std::fs::write(cfg.join("tls.ini"), "[outbound]\nno_tls_hosts[]=127.0.0.1\n").unwrap();
    });
    let mut c = srv.client();
    c.expect("EHLO plain.example", 250);
    assert_eq!(
        c.send_mail("a@client.test", &["b@plain.test"], b"Subject: p\r\n\r\nz")
            .code,
        250
    );
    assert!(sink.wait_for(1, Duration::from_secs(30)));
    assert!(!sink.messages()[0].tls, "STARTTLS was used for a no_tls_hosts host");
}
