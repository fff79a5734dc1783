//! posta is not an open relay: every routing trick of reliability category E, sent by a client
//! that may not relay, to a daemon whose only local domain is `example.com`.
//!
//! Each recipient must be refused with a 5xx, or accepted only when it is provably delivered
//! locally: then the message is sent and its queue file must name `example.com` as its only
//! destination, with no routing left in the local part. With `nmap` available (installed by
//! `scripts/test-deps-nmap.sh` when missing), its `smtp-open-relay` script must agree.

mod common;

use std::path::Path;
use std::process::Command;

use common::{start, Client, TestServer};
use posta::queue::decode;

fn server() -> TestServer {
    server_named("mx.example.com")
}

/// The daemon, announcing itself as `me`.
fn server_named(me: &'static str) -> TestServer {
    start(move |dir| {
        std::fs::write(dir.join("host_list"), "example.com\n").unwrap();
        std::fs::write(dir.join("me"), format!("{me}\n")).unwrap();
        // The relay plugin is there, with an ACL that lets nobody relay.
        std::fs::write(dir.join("plugins"), "relay\nrcpt_to.in_host_list\n").unwrap();
        std::fs::write(dir.join("relay_acl_allow"), "192.0.2.0/24\n").unwrap();
    })
}

/// `RCPT TO` argument strings (everything after `RCPT`) that try to relay.
const TRICKS: &[&str] = &[
    // plain relaying, for reference
    " TO:<user@other.org>",
    " TO:<postmaster@other.org>",
    // %-hack
    " TO:<user%other.org@example.com>",
    " TO:<user%other.org>",
    " TO:<user%other.org%example.com@example.com>",
    " TO:<postmaster%other.org@example.com>",
    // !-paths (UUCP)
    " TO:<other.org!user@example.com>",
    " TO:<other.org!user>",
    " TO:<user@other.org!x>",
    " TO:<example.com!other.org!user@example.com>",
    // source routes
    " TO:<@example.com:user@other.org>",
    " TO:<@example.com,@mx.example.com:user@other.org>",
    " TO:<@[127.0.0.1]:user@other.org>",
    // trailing dots and look-alike domains
    " TO:<user@other.org.>",
    " TO:<user@example.com.other.org>",
    " TO:<user@other.org.example>",
    " TO:<user@example.com:other.org>",
    // IP literals and bare addresses
    " TO:<user@[192.0.2.1]>",
    " TO:<user@[127.0.0.1]>",
    " TO:<user@[IPv6:2001:db8::1]>",
    " TO:<user@[IPv6:::1]>",
    " TO:<user@127.0.0.1>",
    " TO:<user@[example.com]>",
    // quoting
    " TO:<\"user@other.org\"@example.com>",
    " TO:<\"user%other.org\"@example.com>",
    " TO:<\"other.org!user\"@example.com>",
    " TO:<\"user@other.org\">",
    " TO:<\"user\\@other.org\"@example.com>",
    // case
    " TO:<user@OTHER.ORG>",
    " TO:<user@Other.Org>",
    // several @ and escapes
    " TO:<user@other.org@example.com>",
    " TO:<user@example.com@other.org>",
    " TO:<user\\@other.org@example.com>",
    " TO:<user@other.org\\@example.com>",
    // extra spaces and missing brackets
    " TO: <user@other.org>",
    " TO:<user@other.org> ",
    "  TO:<user@other.org>",
    " TO:user@other.org",
    " TO:<user@other.org >",
    " TO:< user@other.org>",
    " TO:<user@ other.org>",
    " TO:<user @example.com>",
    // our own name is not a mailbox host (only postmaster@me is local)
    " TO:<user@mx.example.com>",
    " TO:<user@localhost>",
];

/// The same with SMTPUTF8 on MAIL: Unicode games.
const UTF8_TRICKS: &[&str] = &[
    " TO:<user@exаmple.com>",            // Cyrillic a
    " TO:<user@ｅxample.com>",           // fullwidth e
    " TO:<user@example.com＠other.org>", // fullwidth at sign
    " TO:<user＠other.org@example.com>",
    " TO:<üser%other.org@example.com>",
    " TO:<user@other.org>",
];

/// Variants a careful MTA may accept, because they are delivered to example.com itself.
const LOCAL: &[&str] = &[
    " TO:<user@example.com>",
    " TO:<user@EXAMPLE.COM>",
    // A source route is ignored (RFC 5321 4.1.1.3 / appendix C): the mailbox is local.
    " TO:<@other.org:user@example.com>",
    // ORCPT names another address, but only for DSNs.
    " TO:<user@example.com> ORCPT=rfc822;user@other.org",
];

/// Try one recipient on a fresh connection; on 2xx, send a message. Returns the RCPT code.
fn probe(srv: &TestServer, rcpt: &str, utf8: bool) -> u16 {
    let mut c: Client = srv.client();
    c.expect("EHLO client.test", 250);
    let mail = if utf8 {
        "MAIL FROM:<s@client.test> SMTPUTF8"
    } else {
        "MAIL FROM:<s@client.test>"
    };
    c.expect(mail, 250);
    let Some(code) = rcpt_code(&mut c, rcpt) else {
        return 421;
    };
    if (200..300).contains(&code) {
        c.expect("DATA", 354);
        c.send(b"Subject: relay probe\r\n\r\nprobe\r\n.\r\n");
        assert_eq!(c.reply().map(|r| r.code), Some(250), "message for {rcpt:?}");
    }
    let _ = c.cmd("QUIT");
    code
}

fn rcpt_code(c: &mut Client, rcpt: &str) -> Option<u16> {
    c.send(format!("RCPT{rcpt}\r\n").as_bytes());
    c.reply().map(|r| r.code)
}

/// Every queue file goes to example.com only, with no routing in any local part.
fn assert_all_local(files: &[std::path::PathBuf]) {
    for f in files {
        let (todo, _) = decode(&std::fs::read(f).unwrap()).unwrap();
        assert_eq!(todo.domain, "example.com", "{}", f.display());
        for r in &todo.rcpt_to {
            assert_eq!(r.host.as_deref(), Some("example.com"), "{r:?}");
            let user = r.user.as_deref().unwrap_or("");
            assert!(!user.contains(['%', '!', '@']), "routing left in {r:?}");
        }
    }
}

#[test]
fn no_routing_trick_makes_posta_relay() {
    let srv = server();
    let mut accepted = Vec::new();
    for (set, utf8) in [(TRICKS, false), (UTF8_TRICKS, true)] {
        for rcpt in set {
            let code = probe(&srv, rcpt, utf8);
            eprintln!("RCPT{rcpt} -> {code}");
            assert!(
                (500..600).contains(&code),
                "RCPT{rcpt} answered {code}, expected a 5xx refusal"
            );
            accepted.extend((code < 300).then_some(*rcpt));
        }
    }
    assert!(accepted.is_empty());
    assert!(srv.queue_files().is_empty(), "nothing queued from refused recipients");
    assert!(TRICKS.len() + UTF8_TRICKS.len() >= 30);
}

#[test]
fn local_variants_are_delivered_locally_only() {
    let srv = server();
    for rcpt in LOCAL {
        let code = probe(&srv, rcpt, false);
        assert_eq!(code, 250, "RCPT{rcpt}");
    }
    let files = srv.queue_files();
    assert_eq!(files.len(), LOCAL.len());
    assert_all_local(&files);
}

#[test]
fn spoofing_a_local_sender_does_not_open_the_relay() {
    let srv = server();
    for from in ["<user@example.com>", "<postmaster@mx.example.com>", "<>"] {
        let mut c = srv.client();
        c.expect("EHLO mx.example.com", 250);
        c.expect(&format!("MAIL FROM:{from}"), 250);
        let code = rcpt_code(&mut c, " TO:<user@other.org>").unwrap();
        assert!((500..600).contains(&code), "from {from}: {code}");
    }
    assert!(srv.queue_files().is_empty());
}

#[test]
fn a_refused_trick_does_not_poison_the_transaction() {
    // One local recipient first, then tricks: the tricks are still refused, the message goes to
    // example.com only.
    let srv = server();
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@client.test>", 250);
    c.expect("RCPT TO:<user@example.com>", 250);
    for rcpt in [
        " TO:<user@other.org>",
        " TO:<user%other.org@example.com>",
        " TO:<@example.com:x@other.org>",
    ] {
        let code = rcpt_code(&mut c, rcpt).unwrap();
        assert!((500..600).contains(&code), "RCPT{rcpt}: {code}");
    }
    c.expect("DATA", 354);
    c.send(b"Subject: t\r\n\r\nt\r\n.\r\n");
    assert_eq!(c.reply().map(|r| r.code), Some(250));
    assert_all_local(&srv.queue_files());
}

// ----- nmap smtp-open-relay -----------------------------------------------------------------

/// nmap, installed by `scripts/test-deps-nmap.sh` when missing. `None` when it cannot be had.
fn nmap() -> Option<&'static str> {
    let have = || {
        Command::new("nmap")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return Some("nmap");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-deps-nmap.sh");
    let ok = Command::new("sh").arg(&script).status().is_ok_and(|s| s.success());
    (ok && have()).then_some("nmap")
}

#[test]
fn nmap_smtp_open_relay_finds_no_relay() {
    let Some(nmap) = nmap() else {
        eprintln!("SKIPPED: nmap is not installed and scripts/test-deps-nmap.sh could not install it");
        return;
    };
    // nmap aims its tricks at the server name of the banner: make it the local domain, so that
    // `relaytest%other.org@example.com` and friends are among them. `domain` is the
    // destination nmap tries to relay to.
    let srv = server_named("example.com");
    let port = srv.addr().port().to_string();
    let out = Command::new(nmap)
        // `+` runs the script whatever nmap thinks the port's service is (ours is ephemeral).
        .args(["-Pn", "-n", "-p", &port, "--script", "+smtp-open-relay"])
        .args([
            "--script-args",
            "smtp-open-relay.domain=other.org,smtp-open-relay.ip=127.0.0.1",
        ])
        .arg("127.0.0.1")
        .output()
        .expect("nmap runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nmap failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("smtp-open-relay"), "the script did not run:\n{text}");
    assert!(
        text.contains("Server doesn't seem to be an open relay"),
        "nmap's verdict:\n{text}"
    );
    assert!(!text.contains("Server is an open relay"), "{text}");
    assert!(srv.queue_files().is_empty(), "nmap's probes queued nothing");
}
