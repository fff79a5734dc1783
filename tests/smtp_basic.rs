//! Happy paths over real TCP: one message, pipelined messages, BDAT, and what lands in the queue.

mod common;

use common::*;
use posta::queue::decode;

#[test]
fn accepts_and_queues_one_message() {
    let srv = start(|_| {});
    let mut c = srv.client();
    assert_eq!(c.greeting.code, 220);
    assert!(c.greeting.text().starts_with("mx.example.test ESMTP posta"));
    let ehlo = c.expect("EHLO client.example", 250);
    for cap in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE 26214400",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(ehlo.lines.iter().any(|l| l == cap), "missing {cap} in {ehlo:?}");
    }
    let r = c.send_mail(
        "sender@remote.example",
        &["user@example.test"],
        b"Subject: hi\r\n\r\nhello",
    );
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text().starts_with("2.0.0 Message Queued ("));
    c.expect("QUIT", 221);
    let files = srv.queue_files();
    assert_eq!(files.len(), 1);
    let bytes = std::fs::read(&files[0]).unwrap();
    let (todo, msg) = decode(&bytes).unwrap();
    assert_eq!(todo.domain, "example.test");
    assert_eq!(todo.mail_from.original, "<sender@remote.example>");
    assert_eq!(todo.rcpt_to[0].original, "<user@example.test>");
    let msg = String::from_utf8_lossy(msg);
    assert!(
        msg.starts_with("Received: from client.example ([127.0.0.1])\r\n\tby mx.example.test (posta/"),
        "{msg}"
    );
    assert!(msg.ends_with("Subject: hi\r\n\r\nhello\r\n"), "{msg}");
}

#[test]
fn pipelined_transactions_and_bdat() {
    let srv = start(|_| {});
    let mut c = srv.client();
    c.expect("EHLO client.example", 250);
    c.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@example.test>\r\nDATA\r\n");
    for code in [250, 250, 250, 354] {
        assert_eq!(c.reply().unwrap().code, code);
    }
    c.send(b"one\r\n.\r\nMAIL FROM:<b@remote.example>\r\nRCPT TO:<z@example.test>\r\nBDAT 5\r\ntwo\r\nBDAT 0 LAST\r\n");
    for code in [250, 250, 250, 250, 250] {
        assert_eq!(c.reply().unwrap().code, code);
    }
    c.expect("QUIT", 221);
    assert_eq!(srv.queue_files().len(), 2);
}

/// `actors.ini` at its smallest (one commit at a time, mailboxes of one): concurrent clients
/// are slowed by backpressure, never stuck or refused.
#[test]
fn smallest_actor_limits_still_accept_concurrent_mail() {
    let srv = start(|d| {
        std::fs::write(
            d.join("actors.ini"),
            "[mailbox]\ntransaction=1\nqueue_manager=1\ndelivery=1\nremote_mx=1\n[concurrency]\ncommits=1\nresolver=1\n",
        )
        .unwrap();
    });
    let addr = srv.addr();
    let clients: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.expect("EHLO limits.example", 250);
                for n in 0..5 {
                    let body = format!("Subject: {i}.{n}\r\n\r\n{}\r\n", "x".repeat(300_000));
                    let r = c.send_mail("a@remote.example", &["u@example.test"], body.as_bytes());
                    assert_eq!(r.code, 250, "{r:?}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(srv.queue_files().len(), 20);
}
