//! `posta_actor_mailbox_depth` does not drift: after a burst of mail has been received,
//! queued and delivered, every actor kind's mailbox gauge is back to 0. Its own test binary,
//! because the metrics are process-wide.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::*;

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn series<'a>(body: &'a str, prefix: &str) -> Vec<(&'a str, u64)> {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            let (s, v) = l.rsplit_once(' ').unwrap();
            (s, v.parse().unwrap())
        })
        .collect()
}

fn maildir_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("new")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn mailbox_gauges_return_to_zero_after_traffic() {
    let srv = start(|d| {
        std::fs::write(d.join("plugins"), "deliver/maildir\nrcpt_to.in_host_list\n").unwrap();
        std::fs::write(d.join("outbound.ini"), "[main]\nnameservers=127.0.0.1:9\n").unwrap();
        std::fs::write(d.join("metrics.ini"), "[main]\nlisten=127.0.0.1:0\n").unwrap();
    });
    let metrics = srv.server.metrics_addr().expect("metrics endpoint");
    const N: usize = 30;
    let mut c = srv.client();
    c.expect("EHLO gauge.example", 250);
    for i in 0..N {
        let r = c.send_mail(
            "a@remote.example",
            &["box@example.test"],
            format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.expect("QUIT", 221);
    let mailbox = srv.root.path().join("var/mail/example.test/box");
    let done = (0..1500).any(|_| {
        if maildir_count(&mailbox) == N && srv.queue_files().is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
        false
    });
    assert!(done, "delivered {} of {N}", maildir_count(&mailbox));
    // Delivered and removed from the queue; the queue manager's last message (Finished) may
    // still be on its way: wait (bounded) for the gauges to settle, then check all of them.
    let mut body = scrape(metrics);
    for _ in 0..250 {
        if series(&body, "posta_actor_mailbox_depth{").iter().all(|(_, v)| *v == 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        body = scrape(metrics);
    }
    let depth = series(&body, "posta_actor_mailbox_depth{");
    assert_eq!(depth.len(), 6, "{body}");
    for (s, v) in &depth {
        assert_eq!(*v, 0, "{s} after the traffic:\n{body}");
    }
    // The messages were counted on the way: every kind that carried them handled them.
    for kind in ["transaction", "queue_manager"] {
        let handled = series(&body, &format!("posta_actor_messages_total{{kind=\"{kind}\"}}"));
        assert!(handled[0].1 >= N as u64, "{kind}: {body}");
    }
}
