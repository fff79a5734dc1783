//! Delivery and routing, black-box: posta accepts a message over SMTP, then finds its way by a
//! real DNS server in the test ([`common::dns`]) or a route plugin, and hands it to a real
//! SMTP/LMTP sink in the test ([`common::sink`]), or to a Maildir. Permanent failures come
//! back as RFC 3464 DSNs delivered to the sender's own MX; temporary ones stay queued.
//!
//! Everything talks to 127.0.0.0/8 only; every wait is a bounded poll.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dns::{DnsServer, Zone};
use common::dsn::assert_failure_dsn;
use common::sink::{eventually, free_port_on, Sink};
use common::*;
use posta::queue::QueueName;

/// Upper bound for anything to happen (a delivery, a bounce, a retry).
const WAIT: Duration = Duration::from_secs(30);

const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

/// `outbound.ini` pointing at the test DNS server; MX hosts found in DNS use `mx_port`.
/// Retries are an hour away, so a deferred item stays put for the test to look at.
fn outbound_ini(dns: &DnsServer, mx_port: u16, local_mx_ok: bool) -> String {
    format!(
        "[main]\nnameservers={}\nmx_port={mx_port}\nlocal_mx_ok={local_mx_ok}\n\
         temp_fail_intervals=1h\nconnect_timeout=5\nreply_timeout=30\n",
        dns.addr()
    )
}

/// DNS where `remote.test`'s MX is `mx.remote.test` on loopback (the sink's address).
fn remote_test_dns() -> DnsServer {
    DnsServer::start(
        Zone::new()
            .mx("remote.test", 10, "mx.remote.test")
            .a("mx.remote.test", LOOPBACK),
    )
}

/// Plugins `relay` (127.0.0.0/8 may relay) and `rcpt_to.in_host_list`, delivery enabled.
fn relay_config(dir: &Path, outbound: &str) {
    std::fs::write(dir.join("plugins"), "relay\nrcpt_to.in_host_list\n").unwrap();
    std::fs::write(dir.join("relay_acl_allow"), "127.0.0.0/8\n").unwrap();
    std::fs::write(dir.join("outbound.ini"), outbound).unwrap();
}

/// Send one message and expect `250` for it.
fn submit(srv: &TestServer, from: &str, rcpts: &[&str], body: &[u8]) {
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    let r = c.send_mail(from, rcpts, body);
    assert_eq!(r.code, 250, "message not accepted: {r:?}");
    c.expect("QUIT", 221);
}

/// Wait until the queue dir holds no committed file.
fn queue_drains(srv: &TestServer) -> bool {
    eventually(WAIT, || srv.queue_files().is_empty())
}

/// The parsed names of the committed queue files.
fn queue_names(srv: &TestServer) -> Vec<QueueName> {
    srv.queue_files()
        .iter()
        .filter_map(|p| QueueName::parse(&p.file_name()?.to_string_lossy()))
        .collect()
}

/// Wait until exactly one queue file is left and it has been tried `attempts` times.
fn deferred_once(srv: &TestServer) -> Option<QueueName> {
    let mut last = None;
    let ok = eventually(WAIT, || {
        let names = queue_names(srv);
        last = names.first().cloned();
        names.len() == 1 && names[0].attempts == 1
    });
    ok.then(|| last.unwrap())
}

const BODY: &[u8] = b"From: alice@sender.test\r\nTo: bob@remote.test\r\nSubject: routing\r\n\r\nhello over there";

// ----- MX routing ---------------------------------------------------------------------

#[test]
fn delivers_to_the_mx_found_in_dns() {
    let sink = Sink::start();
    let dns = remote_test_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    let m = &sink.messages()[0];
    assert_eq!(m.mail_from, "alice@sender.test");
    assert_eq!(m.rcpts, vec!["bob@remote.test".to_string()]);
    assert_eq!(m.helo, "mx.example.test");
    assert!(m.text().ends_with("\r\n\r\nhello over there\r\n"), "{}", m.text());
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    let q = dns.queries();
    assert!(
        q.iter().any(|q| q.name == "remote.test." && q.rtype == "MX"),
        "no MX query in {q:?}"
    );
}

#[test]
fn implicit_mx_uses_the_domains_own_address() {
    let sink = Sink::start();
    let dns = DnsServer::start(Zone::new().a("implicit.test", LOOPBACK));
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(&srv, "alice@sender.test", &["bob@implicit.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    assert_eq!(sink.messages()[0].rcpts, vec!["bob@implicit.test".to_string()]);
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

#[test]
fn an_address_that_refuses_is_followed_by_the_next_address_of_the_mx() {
    // The MX has an IPv6 address where nothing listens (tried first: inet_prefer=default)
    // and an IPv4 address with the sink.
    let sink = Sink::start();
    let dns = DnsServer::start(
        Zone::new()
            .mx("remote.test", 10, "mx.remote.test")
            .aaaa("mx.remote.test", std::net::Ipv6Addr::LOCALHOST)
            .a("mx.remote.test", LOOPBACK),
    );
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    let q = dns.queries();
    assert!(
        q.iter().any(|q| q.name == "mx.remote.test." && q.rtype == "AAAA"),
        "{q:?}"
    );
}

#[test]
fn the_most_preferred_mx_that_answers_gets_the_message() {
    // mx1 (preference 10) is 127.0.0.2 where nothing listens; mx2 (20) is 127.0.0.3.
    let (down, up) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let port = free_port_on(&[IpAddr::V4(down), IpAddr::V4(up)]);
    let sink = Sink::builder().ip_port(up, port).start();
    let dns = DnsServer::start(
        Zone::new()
            .mx("pref.test", 20, "mx2.pref.test")
            .mx("pref.test", 10, "mx1.pref.test")
            .a("mx1.pref.test", down)
            .a("mx2.pref.test", up),
    );
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, port, true)));
    submit(&srv, "alice@sender.test", &["bob@pref.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    assert_eq!(sink.messages()[0].rcpts, vec!["bob@pref.test".to_string()]);
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

#[test]
fn lower_preference_value_wins_when_every_mx_is_up() {
    // Preference 10 is 127.0.0.3 and 20 is 127.0.0.2, so address order cannot fake the result.
    let (best, backup) = (Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 2));
    let port = free_port_on(&[IpAddr::V4(best), IpAddr::V4(backup)]);
    let best_sink = Sink::builder().ip_port(best, port).start();
    let backup_sink = Sink::builder().ip_port(backup, port).start();
    let dns = DnsServer::start(
        Zone::new()
            .mx("pref.test", 20, "backup.pref.test")
            .mx("pref.test", 10, "best.pref.test")
            .a("best.pref.test", best)
            .a("backup.pref.test", backup),
    );
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, port, true)));
    for i in 0..3 {
        submit(&srv, "alice@sender.test", &[&format!("u{i}@pref.test")], BODY);
    }
    assert!(best_sink.wait_for(3, WAIT), "best MX got {:?}", best_sink.stats());
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    assert_eq!(backup_sink.connections(), 0, "the backup MX was used");
}

// ----- DNS answers that stop delivery ------------------------------------------------

#[test]
fn null_mx_bounces_with_5_1_10() {
    let sink = Sink::start(); // the sender's MX, receives the DSN
    let dns = DnsServer::start(
        Zone::new()
            .null_mx("nullmx.test")
            .a("nullmx.test", LOOPBACK) // must not be used as an implicit MX
            .mx("sender.test", 10, "mx.sender.test")
            .a("mx.sender.test", LOOPBACK),
    );
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(&srv, "alice@sender.test", &["bob@nullmx.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "no DSN; sink saw {:?}", sink.stats());
    let m = &sink.messages()[0];
    let dsn = assert_failure_dsn(m, "alice@sender.test", "rfc822; bob@nullmx.test", "5.1.10");
    assert!(dsn.msg("Arrival-Date").is_some(), "{}", m.text());
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    assert_eq!(
        sink.message_count(),
        1,
        "the message itself went to the null-MX domain's A record"
    );
}

#[test]
fn nxdomain_bounces_with_5_1_2() {
    let sink = Sink::start();
    let dns = DnsServer::start(
        Zone::new()
            .mx("sender.test", 10, "mx.sender.test")
            .a("mx.sender.test", LOOPBACK),
    );
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(&srv, "alice@sender.test", &["bob@nowhere.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "no DSN; sink saw {:?}", sink.stats());
    assert_failure_dsn(
        &sink.messages()[0],
        "alice@sender.test",
        "rfc822; bob@nowhere.test",
        "5.1.2",
    );
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

#[test]
fn servfail_defers_and_keeps_the_item() {
    let sink = Sink::start();
    let dns = DnsServer::start(
        Zone::new()
            .servfail("broken.test")
            .mx("sender.test", 10, "mx.sender.test")
            .a("mx.sender.test", LOOPBACK),
    );
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(&srv, "alice@sender.test", &["bob@broken.test"], BODY);
    let name = deferred_once(&srv).unwrap_or_else(|| panic!("not deferred: queue {:?}", srv.queue_files()));
    assert!(name.next_attempt > name.arrival, "{name:?}");
    assert_eq!(
        sink.message_count(),
        0,
        "a temporary DNS failure produced mail: {:?}",
        sink.messages()
    );
}

#[test]
fn servfail_on_the_mx_lookup_is_not_a_missing_mx() {
    // The MX query fails temporarily while the domain has an address: RFC 5321 5.1 says to
    // retry later, not to fall back to the implicit MX (which may not be the domain's MX).
    let sink = Sink::start();
    let dns = DnsServer::start(Zone::new().servfail_type("flaky.test", "MX").a("flaky.test", LOOPBACK));
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(&srv, "alice@sender.test", &["bob@flaky.test"], BODY);
    let settled = eventually(WAIT, || {
        sink.message_count() > 0 || queue_names(&srv).first().is_some_and(|n| n.attempts == 1)
    });
    assert_eq!(
        sink.messages().iter().map(|m| m.rcpts.clone()).collect::<Vec<_>>(),
        Vec::<Vec<String>>::new(),
        "delivered to the implicit MX although the MX lookup failed (SERVFAIL)"
    );
    assert!(settled, "not deferred: queue {:?}", srv.queue_files());
}

#[test]
fn loopback_mx_is_refused_without_local_mx_ok() {
    let sink = Sink::start();
    let dns = remote_test_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), false)));
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    let name = deferred_once(&srv).unwrap_or_else(|| panic!("not deferred: queue {:?}", srv.queue_files()));
    assert!(name.next_attempt > name.arrival, "{name:?}");
    assert_eq!(
        sink.connections(),
        0,
        "posta connected to a loopback MX with local_mx_ok=false"
    );
}

// ----- routes chosen by plugins --------------------------------------------------------

fn smtp_forward_config(dir: &Path, dns: &DnsServer, port: u16, user: &str, pass: &str) {
    std::fs::write(dir.join("plugins"), "queue/smtp_forward\nrcpt_to.in_host_list\n").unwrap();
    std::fs::write(
        dir.join("smtp_forward.ini"),
        format!("[main]\nhost=127.0.0.1\nport={port}\nauth_user={user}\nauth_pass={pass}\n"),
    )
    .unwrap();
    // The smart host is on loopback: allowed, because it is configured rather than found in DNS.
    std::fs::write(dir.join("outbound.ini"), outbound_ini(dns, 25, false)).unwrap();
}

#[test]
fn smtp_forward_authenticates_with_plain() {
    let sink = Sink::builder()
        .auth("relayuser", "s3cret")
        .auth_mechanisms("PLAIN")
        .start();
    let dns = DnsServer::start(Zone::new());
    let srv = start(|d| smtp_forward_config(d, &dns, sink.port(), "relayuser", "s3cret"));
    submit(&srv, "alice@sender.test", &["user@example.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    let m = &sink.messages()[0];
    assert_eq!(m.auth_user.as_deref(), Some("relayuser"));
    assert_eq!(m.auth_mechanism.as_deref(), Some("PLAIN"));
    assert_eq!(m.rcpts, vec!["user@example.test".to_string()]);
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

#[test]
fn smtp_forward_authenticates_with_login() {
    let sink = Sink::builder()
        .auth("relay@user", "p:ss w%rd")
        .auth_mechanisms("LOGIN")
        .start();
    let dns = DnsServer::start(Zone::new());
    let srv = start(|d| smtp_forward_config(d, &dns, sink.port(), "relay@user", "p:ss w%rd"));
    submit(&srv, "alice@sender.test", &["user@example.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    let m = &sink.messages()[0];
    assert_eq!(m.auth_user.as_deref(), Some("relay@user"));
    assert_eq!(m.auth_mechanism.as_deref(), Some("LOGIN"));
}

#[test]
fn smtp_forward_authenticates_after_starttls() {
    // AUTH is announced only inside TLS, as a submission server does.
    let sink = Sink::builder()
        .starttls()
        .auth("relayuser", "s3cret")
        .auth_requires_tls()
        .start();
    let dns = DnsServer::start(Zone::new());
    let srv = start(|d| smtp_forward_config(d, &dns, sink.port(), "relayuser", "s3cret"));
    submit(&srv, "alice@sender.test", &["user@example.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    let m = &sink.messages()[0];
    assert!(m.tls);
    assert_eq!(m.auth_user.as_deref(), Some("relayuser"));
}

#[test]
fn starttls_is_used_when_offered() {
    let sink = Sink::builder().starttls().start();
    let dns = remote_test_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    let m = &sink.messages()[0];
    assert!(m.tls, "delivered in clear although STARTTLS was offered");
    assert!(m.text().ends_with("hello over there\r\n"), "{}", m.text());
}

fn lmtp_config(dir: &Path, dns: &DnsServer, lmtp_port: u16, mx_port: u16) {
    std::fs::write(dir.join("plugins"), "queue/lmtp\nrcpt_to.in_host_list\n").unwrap();
    std::fs::write(
        dir.join("lmtp.ini"),
        format!("[main]\nhost=127.0.0.1\nport={lmtp_port}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("outbound.ini"), outbound_ini(dns, mx_port, true)).unwrap();
}

#[test]
fn lmtp_route_delivers_local_mail() {
    let lmtp = Sink::builder().lmtp().start();
    let dns = DnsServer::start(Zone::new());
    let srv = start(|d| lmtp_config(d, &dns, lmtp.port(), 25));
    submit(
        &srv,
        "alice@sender.test",
        &["user@example.test", "other@example.test"],
        BODY,
    );
    assert!(lmtp.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", lmtp.stats());
    let m = &lmtp.messages()[0];
    assert!(m.lmtp);
    assert_eq!(
        m.rcpts,
        vec!["user@example.test".to_string(), "other@example.test".to_string()]
    );
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

#[test]
fn lmtp_per_recipient_failure_bounces_only_that_recipient() {
    let lmtp = Sink::builder()
        .lmtp()
        .data_reply("bad@", "550 5.1.1 no such user")
        .start();
    let mx = Sink::start(); // sender.test's MX, receives the DSN
    let dns = DnsServer::start(
        Zone::new()
            .mx("sender.test", 10, "mx.sender.test")
            .a("mx.sender.test", LOOPBACK),
    );
    let srv = start(|d| lmtp_config(d, &dns, lmtp.port(), mx.port()));
    submit(
        &srv,
        "alice@sender.test",
        &["good@example.test", "bad@example.test"],
        BODY,
    );
    assert!(lmtp.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", lmtp.stats());
    assert!(mx.wait_for(1, WAIT), "no DSN; sender's MX saw {:?}", mx.stats());
    assert_eq!(lmtp.messages()[0].rcpts, vec!["good@example.test".to_string()]);
    let dsn = assert_failure_dsn(
        &mx.messages()[0],
        "alice@sender.test",
        "rfc822; bad@example.test",
        "5.1.1",
    );
    let diag = dsn.rcpt("Diagnostic-Code").unwrap_or_default();
    assert!(
        diag.contains("550") && diag.contains("no such user"),
        "Diagnostic-Code {diag:?}"
    );
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    // The delivered recipient is not delivered again and the DSN names only the failed one.
    assert_eq!(lmtp.message_count(), 1);
    assert!(!mx.messages()[0].text().contains("Final-Recipient: rfc822; good@"));
}

/// Files in `dir/new`.
fn maildir_new(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("new"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn maildir_delivers_host_list_domains_locally() {
    let dns = DnsServer::start(Zone::new());
    let srv = start(|d| {
        std::fs::write(d.join("plugins"), "deliver/maildir\nrcpt_to.in_host_list\n").unwrap();
        std::fs::write(d.join("outbound.ini"), outbound_ini(&dns, 25, false)).unwrap();
    });
    let body: &[u8] = b"Subject: local\r\n\r\n.a line that starts with a dot\r\nbye";
    submit(&srv, "alice@sender.test", &["User@example.test"], &stuff(body));
    let mailbox = srv.root.path().join("var/mail/example.test/user");
    assert!(
        eventually(WAIT, || maildir_new(&mailbox).len() == 1),
        "no mail in {}; queue {:?}",
        mailbox.display(),
        srv.queue_files()
    );
    let got = std::fs::read(&maildir_new(&mailbox)[0]).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("Return-Path: <alice@sender.test>\r\n"), "{text}");
    assert!(text.contains("\r\nReceived: "), "{text}");
    assert!(
        text.ends_with("Subject: local\r\n\r\n.a line that starts with a dot\r\nbye\r\n"),
        "{text}"
    );
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

// ----- the message itself ----------------------------------------------------------------

/// Dot-stuff a message for the wire (RFC 5321 4.5.2).
fn stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 64);
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

/// The sink got `original` behind exactly one added header, posta's `Received:`.
fn assert_only_received_added(got: &[u8], original: &[u8]) {
    assert!(
        got.ends_with(original),
        "body changed in transit:\n--- got ---\n{}\n--- sent ---\n{}",
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(original)
    );
    let added = String::from_utf8_lossy(&got[..got.len() - original.len()]).into_owned();
    assert!(added.starts_with("Received: "), "added {added:?}");
    assert!(added.ends_with("\r\n"), "added {added:?}");
    let header_starts = added
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
        .count();
    assert_eq!(header_starts, 1, "more than the Received header was added: {added:?}");
}

#[test]
fn body_arrives_unstuffed_and_byte_identical() {
    let sink = Sink::start();
    let dns = remote_test_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));

    // Short message with the awkward lines, and one far longer than the 64 KiB read chunks,
    // with dot lines all along (so some sit at chunk boundaries), ending with a "." line.
    let mut short = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n \r\n. \r\nend\r\n".to_vec();
    short.extend_from_slice("8bit: caf\u{e9}\r\n".as_bytes());
    let mut long = b"Subject: long dots\r\n\r\n".to_vec();
    for i in 0..6000 {
        long.extend_from_slice(format!(".{i:05} line starting with a dot and some padding text\r\n").as_bytes());
        if i % 7 == 0 {
            long.extend_from_slice(b".\r\n");
        }
    }
    long.extend_from_slice(b".\r\n");
    assert!(long.len() > 3 * 65536);

    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    for (i, original) in [&short, &long].into_iter().enumerate() {
        c.expect("MAIL FROM:<alice@sender.test> BODY=8BITMIME", 250);
        c.expect(&format!("RCPT TO:<bob{i}@remote.test>"), 250);
        c.expect("DATA", 354);
        c.send(&stuff(original));
        c.send(b".\r\n");
        let r = c.reply().expect("reply after DATA");
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.expect("QUIT", 221);

    assert!(sink.wait_for(2, WAIT), "sink saw {:?}", sink.stats());
    for (i, original) in [&short, &long].into_iter().enumerate() {
        let rcpt = format!("bob{i}@remote.test");
        let m = sink
            .messages()
            .into_iter()
            .find(|m| m.rcpts == vec![rcpt.clone()])
            .unwrap_or_else(|| panic!("nothing for {rcpt}"));
        assert_only_received_added(&m.body, original);
    }
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

// ----- remote answers ------------------------------------------------------------------

#[test]
fn per_recipient_smtp_replies_bounce_one_and_defer_the_other() {
    let sink = Sink::builder()
        .rcpt_reply("later@", "450 4.2.0 try later")
        .rcpt_reply("nouser@", "550 5.1.1 no such user")
        .start();
    let dns = DnsServer::start(
        Zone::new()
            .mx("remote.test", 10, "mx.remote.test")
            .mx("sender.test", 10, "mx.remote.test")
            .a("mx.remote.test", LOOPBACK),
    );
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit(
        &srv,
        "alice@sender.test",
        &["ok@remote.test", "later@remote.test", "nouser@remote.test"],
        BODY,
    );
    // The message for ok@ and the DSN for nouser@ arrive; later@ stays queued, alone.
    assert!(sink.wait_for(2, WAIT), "sink saw {:?}", sink.stats());
    let msgs = sink.messages();
    let delivered = msgs
        .iter()
        .find(|m| m.mail_from == "alice@sender.test")
        .expect("the message");
    assert_eq!(delivered.rcpts, vec!["ok@remote.test".to_string()]);
    let bounce = msgs.iter().find(|m| m.mail_from.is_empty()).expect("the DSN");
    assert_failure_dsn(bounce, "alice@sender.test", "rfc822; nouser@remote.test", "5.1.1");
    let name = deferred_once(&srv).unwrap_or_else(|| panic!("not deferred: queue {:?}", srv.queue_files()));
    let todo = posta::queue::decode(&std::fs::read(srv.queue_dir().join(name.to_string())).unwrap())
        .unwrap()
        .0;
    let left: Vec<&str> = todo.rcpt_to.iter().map(|a| a.original.as_str()).collect();
    assert_eq!(left, vec!["<later@remote.test>"]);
}

#[test]
fn temporary_data_failure_is_retried_then_delivered_once() {
    let sink = Sink::builder().fail_first_data(1, "451 4.3.0 try again").start();
    let dns = remote_test_dns();
    let outbound = outbound_ini(&dns, sink.port(), true).replace("temp_fail_intervals=1h", "temp_fail_intervals=5s");
    let srv = start(|d| relay_config(d, &outbound));
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(
        sink.wait_for(1, WAIT),
        "not delivered after the 451; sink saw {:?}",
        sink.stats()
    );
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    let s = sink.stats();
    assert_eq!(s.messages.len(), 1);
    assert_eq!(s.refusals.iter().filter(|r| r.stage == "DATA").count(), 1, "{s:?}");
}

#[test]
fn connection_dropped_in_data_is_retried_then_delivered_once() {
    let sink = Sink::builder().drop_in_data(1).start();
    let dns = remote_test_dns();
    let outbound = outbound_ini(&dns, sink.port(), true).replace("temp_fail_intervals=1h", "temp_fail_intervals=5s");
    let srv = start(|d| relay_config(d, &outbound));
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(
        sink.wait_for(1, WAIT),
        "not delivered after the drop; sink saw {:?}",
        sink.stats()
    );
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    let s = sink.stats();
    assert_eq!(s.messages.len(), 1);
    assert!(s.connections >= 2, "{s:?}");
    assert!(s.messages[0].text().ends_with("hello over there\r\n"));
}

// ----- connections ---------------------------------------------------------------------

#[test]
fn the_next_message_reuses_the_pooled_connection() {
    let sink = Sink::start();
    let dns = remote_test_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    for i in 1..=3 {
        submit(&srv, "alice@sender.test", &[&format!("bob{i}@remote.test")], BODY);
        assert!(sink.wait_for(i, WAIT), "sink saw {:?}", sink.stats());
        // Once the item is settled its session is back in the pool.
        assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    }
    let s = sink.stats();
    assert_eq!(s.connections, 1, "{s:?}");
    let seqs: Vec<u32> = s.messages.iter().map(|m| m.seq_on_conn).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[test]
fn sessions_per_mx_stay_within_max_connections_per_mx() {
    let sink = Sink::start();
    let dns = remote_test_dns();
    let outbound = format!("{}max_connections_per_mx=2\n", outbound_ini(&dns, sink.port(), true));
    let srv = start(|d| relay_config(d, &outbound));
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    for i in 0..12 {
        let r = c.send_mail("alice@sender.test", &[&format!("bob{i}@remote.test")], BODY);
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.expect("QUIT", 221);
    assert!(sink.wait_for(12, WAIT), "sink saw {:?}", sink.stats());
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    let s = sink.stats();
    assert!(s.max_concurrent <= 2, "{} sessions at once", s.max_concurrent);
    let mut rcpts: Vec<String> = s.messages.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), 12, "a message was lost or duplicated: {rcpts:?}");
}

// ----- success notices (RFC 3461 NOTIFY=SUCCESS) ------------------------------------------------

/// Submit one message from alice@sender.test with `RCPT TO:<rcpt> NOTIFY=...`.
fn submit_notify(srv: &TestServer, rcpt: &str, notify: &str) {
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<alice@sender.test>", 250);
    c.expect(&format!("RCPT TO:<{rcpt}> NOTIFY={notify}"), 250);
    c.expect("DATA", 354);
    c.send(b"Subject: notify me\r\n\r\nhello\r\n.\r\n");
    assert_eq!(c.reply().map(|r| r.code), Some(250));
    c.expect("QUIT", 221);
}

/// DNS where both `remote.test` and `sender.test` have their MX on loopback.
fn remote_and_sender_dns() -> DnsServer {
    DnsServer::start(
        Zone::new()
            .mx("remote.test", 10, "mx.remote.test")
            .a("mx.remote.test", LOOPBACK)
            .mx("sender.test", 10, "mx.sender.test")
            .a("mx.sender.test", LOOPBACK),
    )
}

/// The DSN among the sink's messages (from the null sender), parsed.
fn success_dsn(sink: &Sink) -> common::dsn::Dsn {
    let msgs = sink.messages();
    let m = msgs
        .iter()
        .find(|m| m.mail_from.is_empty())
        .unwrap_or_else(|| panic!("no DSN among {} messages", msgs.len()));
    assert_eq!(m.rcpts, vec!["alice@sender.test".to_string()]);
    common::dsn::Dsn::parse(m)
}

#[test]
fn notify_success_through_a_next_hop_without_dsn_gives_a_relayed_notice() {
    let sink = Sink::builder().dsn(false).start(); // next hop and the sender's MX
    let dns = remote_and_sender_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit_notify(&srv, "bob@remote.test", "SUCCESS,FAILURE");
    assert!(sink.wait_for(2, WAIT), "sink saw {:?}", sink.stats());
    let original = sink.messages().into_iter().find(|m| !m.mail_from.is_empty()).unwrap();
    assert_eq!(original.rcpts, vec!["bob@remote.test".to_string()]);
    assert_eq!(
        original.rcpt_params,
        vec![String::new()],
        "DSN parameters to a server without DSN"
    );
    let dsn = success_dsn(&sink);
    assert_eq!(dsn.rcpt("Action").as_deref(), Some("relayed"));
    assert_eq!(dsn.rcpt("Status").as_deref(), Some("2.0.0"));
    assert_eq!(dsn.rcpt("Final-Recipient").as_deref(), Some("rfc822; bob@remote.test"));
    assert_eq!(dsn.rcpt("Remote-MTA").as_deref(), Some("dns; mx.remote.test"));
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

#[test]
fn notify_success_through_a_next_hop_with_dsn_is_passed_on_not_answered() {
    let sink = Sink::start(); // offers DSN
    let dns = remote_and_sender_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit_notify(&srv, "bob@remote.test", "SUCCESS");
    assert!(sink.wait_for(1, WAIT), "sink saw {:?}", sink.stats());
    // A notice would be queued before the original's file goes: once the queue is empty,
    // anything posta meant to send has been sent.
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    let msgs = sink.messages();
    assert_eq!(
        msgs.len(),
        1,
        "posta sent a notice itself: {:?}",
        msgs.iter().map(|m| &m.mail_from).collect::<Vec<_>>()
    );
    assert!(
        msgs[0].rcpt_params[0].contains("NOTIFY=SUCCESS"),
        "{:?}",
        msgs[0].rcpt_params
    );
}

#[test]
fn notify_success_on_a_maildir_delivery_gives_a_delivered_notice_and_failure_only_none() {
    let sink = Sink::start(); // the sender's MX
    let dns = remote_and_sender_dns();
    let srv = start(|d| {
        std::fs::write(d.join("plugins"), "deliver/maildir\nrcpt_to.in_host_list\n").unwrap();
        std::fs::write(d.join("outbound.ini"), outbound_ini(&dns, sink.port(), true)).unwrap();
    });
    submit_notify(&srv, "quiet@example.test", "FAILURE");
    submit_notify(&srv, "carol@example.test", "SUCCESS");
    assert!(sink.wait_for(1, WAIT), "no notice; sink saw {:?}", sink.stats());
    let dsn = success_dsn(&sink);
    assert_eq!(dsn.rcpt("Action").as_deref(), Some("delivered"));
    assert_eq!(dsn.rcpt("Status").as_deref(), Some("2.0.0"));
    assert_eq!(
        dsn.rcpt("Final-Recipient").as_deref(),
        Some("rfc822; carol@example.test")
    );
    assert!(dsn.human.to_ascii_lowercase().contains("deliver"), "{}", dsn.human);
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    assert_eq!(sink.message_count(), 1, "a notice for NOTIFY=FAILURE");
    for user in ["quiet", "carol"] {
        assert_eq!(
            maildir_new(&srv.root.path().join(format!("var/mail/example.test/{user}"))).len(),
            1
        );
    }
}

// ----- BODY=BINARYMIME (posta sends with DATA only) ----------------------------------------------

/// Submit `body` with `BODY=BINARYMIME` in one `BDAT ... LAST` chunk.
fn submit_binarymime(srv: &TestServer, rcpt: &str, body: &[u8]) {
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<alice@sender.test> BODY=BINARYMIME", 250);
    c.expect(&format!("RCPT TO:<{rcpt}>"), 250);
    c.send(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
    c.send(body);
    assert_eq!(c.reply().map(|r| r.code), Some(250));
    c.expect("QUIT", 221);
}

#[test]
fn binarymime_that_is_8bit_clean_is_relayed_as_8bitmime() {
    let sink = Sink::start();
    let dns = remote_and_sender_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit_binarymime(
        &srv,
        "bob@remote.test",
        "Subject: clean\r\n\r\nGr\u{fc}\u{df}e\r\n.dot\r\n".as_bytes(),
    );
    assert!(sink.wait_for(1, WAIT), "sink saw {:?}", sink.stats());
    let m = &sink.messages()[0];
    assert_eq!(m.rcpts, vec!["bob@remote.test".to_string()]);
    assert!(m.mail_params.contains("BODY=8BITMIME"), "{:?}", m.mail_params);
    assert!(
        m.body.ends_with("Gr\u{fc}\u{df}e\r\n.dot\r\n".as_bytes()),
        "{}",
        m.text()
    );
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
}

#[test]
fn binarymime_with_binary_content_is_returned_with_5_6_3() {
    let sink = Sink::start(); // the next hop and the sender's MX
    let dns = remote_and_sender_dns();
    let srv = start(|d| relay_config(d, &outbound_ini(&dns, sink.port(), true)));
    submit_binarymime(
        &srv,
        "bob@remote.test",
        b"Subject: binary\r\n\r\nbare\nline feed and a \0 byte\r\n",
    );
    assert!(sink.wait_for(1, WAIT), "no DSN; sink saw {:?}", sink.stats());
    assert!(queue_drains(&srv), "queue keeps {:?}", srv.queue_files());
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 1, "the binary message itself went out");
    assert_failure_dsn(&msgs[0], "alice@sender.test", "rfc822; bob@remote.test", "5.6.3");
}

// ----- delay warnings (outbound.ini delay_warning) ------------------------------------------------

/// Flush once the queue manager holds one waiting item and none in flight (a flush only moves
/// items the manager already has waiting).
fn flush_when_waiting(srv: &TestServer) {
    let ready = eventually(WAIT, || {
        srv.server
            .queue_counts()
            .is_some_and(|c| c.waiting == 1 && c.in_flight == 0)
    });
    assert!(ready, "queue manager: {:?}", srv.server.queue_counts());
    srv.server.flush_queue();
}

#[test]
fn a_delayed_message_gives_its_sender_one_delay_warning() {
    // The next hop keeps answering 451 for bob; it is also the sender's MX.
    let sink = Sink::builder().rcpt_reply("bob@", "451 4.2.0 mailbox busy").start();
    let dns = remote_and_sender_dns();
    let outbound = format!(
        "[main]\nnameservers={}\nmx_port={}\nlocal_mx_ok=true\ntemp_fail_intervals=1h*20\n\
         connect_timeout=5\nreply_timeout=30\ndelay_warning=1\n",
        dns.addr(),
        sink.port()
    );
    let srv = start(|d| relay_config(d, &outbound));
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    let refused = |n: usize| eventually(WAIT, || sink.refusals().len() >= n);
    assert!(refused(1), "first attempt: {:?}", sink.stats());
    // Younger than delay_warning at its first deferral: no warning yet.
    std::thread::sleep(Duration::from_millis(1100));
    flush_when_waiting(&srv);
    assert!(refused(2), "second attempt: {:?}", sink.stats());
    assert!(sink.wait_for(1, WAIT), "no delay warning; sink saw {:?}", sink.stats());
    let warnings = || sink.messages().into_iter().filter(|m| m.mail_from.is_empty()).count();
    let m = sink
        .messages()
        .into_iter()
        .find(|m| m.mail_from.is_empty())
        .expect("a DSN");
    assert_eq!(m.rcpts, vec!["alice@sender.test".to_string()]);
    let dsn = common::dsn::Dsn::parse(&m);
    assert_eq!(dsn.rcpt("Action").as_deref(), Some("delayed"), "{}", m.text());
    assert!(dsn.rcpt("Status").is_some_and(|s| s.starts_with("4.")), "{}", m.text());
    assert!(dsn.rcpt("Will-Retry-Until").is_some(), "{}", m.text());
    // A third attempt, refused again: still one warning, the item still queued.
    flush_when_waiting(&srv);
    assert!(refused(3), "third attempt: {:?}", sink.stats());
    flush_when_waiting(&srv);
    assert_eq!(warnings(), 1, "warned more than once");
    assert_eq!(srv.queue_files().len(), 1, "{:?}", srv.queue_files());
}
