//! XCLIENT over real TCP (Postfix's XCLIENT_README; Haraka's `xclient` plugin): advertised to
//! and accepted from `xclient.hosts` only; a success restarts the session as the named client
//! (new uuid, connect hooks again, new banner), and neither the proxy's relaying nor its
//! identity carries over.

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::whoami::{field, registry};
use common::*;
use posta::queue::decode;

/// `xclient` listed, `hosts` in `xclient.hosts`; the test client (127.0.0.1) may relay.
fn config(hosts: &'static str) -> impl FnOnce(&Path) {
    move |dir: &Path| {
        std::fs::write(
            dir.join("plugins"),
            "relay\nxclient\ntest/whoami\nrcpt_to.in_host_list\n",
        )
        .unwrap();
        std::fs::write(dir.join("xclient.hosts"), hosts).unwrap();
        std::fs::write(dir.join("relay_acl_allow"), "127.0.0.1\n192.0.2.50\n").unwrap();
    }
}

fn server(hosts: &'static str) -> TestServer {
    start_with(config(hosts), registry())
}

/// Send XCLIENT and return the new banner.
fn xclient(c: &mut Client, args: &str) -> Reply {
    let r = c.cmd(&format!("XCLIENT {args}"));
    assert_eq!(r.code, 220, "{r:?}");
    r
}

fn last_message(srv: &TestServer) -> String {
    let files = srv.queue_files();
    let bytes = std::fs::read(files.last().expect("a queued message")).unwrap();
    String::from_utf8_lossy(decode(&bytes).unwrap().1).into_owned()
}

#[test]
fn advertised_only_to_listed_hosts() {
    let srv = server("127.0.0.1\n");
    let mut c = srv.client();
    let ehlo = c.expect("EHLO proxy.example", 250);
    assert!(
        ehlo.lines
            .iter()
            .any(|l| l == "XCLIENT ADDR NAME PORT PROTO HELO LOGIN DESTADDR DESTPORT"),
        "{ehlo:?}"
    );

    // Loopback is not implicitly allowed (Haraka allows 127.0.0.1 and ::1 always).
    let srv = server("10.0.0.0/8\n");
    let mut c = srv.client();
    let ehlo = c.expect("EHLO proxy.example", 250);
    assert!(!ehlo.text().contains("XCLIENT"), "{ehlo:?}");
    let r = c.expect("XCLIENT ADDR=192.0.2.7", 550);
    assert_eq!(r.text(), "5.7.0 Not authorized");
    c.expect("NOOP", 250); // the session goes on
}

#[test]
fn without_the_plugin_xclient_is_unknown() {
    let srv = start(|_| {});
    let mut c = srv.client();
    let ehlo = c.expect("EHLO proxy.example", 250);
    assert!(!ehlo.text().contains("XCLIENT"));
    c.expect("XCLIENT ADDR=192.0.2.7", 500);
}

#[test]
fn success_restarts_the_session_as_the_client() {
    let srv = server("127.0.0.1\n");
    let mut c = srv.client();
    let first_uuid = field(&c.greeting.text(), "uuid");
    assert_eq!(field(&c.greeting.text(), "relaying"), "true", "the proxy relays");
    c.expect("EHLO proxy.example", 250);
    let banner = xclient(
        &mut c,
        "ADDR=192.0.2.7 PORT=40000 NAME=client.example DESTADDR=198.51.100.1 DESTPORT=25",
    )
    .text();
    assert_eq!(field(&banner, "remote"), "192.0.2.7");
    assert_eq!(field(&banner, "port"), "40000");
    assert_eq!(field(&banner, "host"), "client.example");
    assert_eq!(field(&banner, "local"), "198.51.100.1:25");
    assert_eq!(
        field(&banner, "relaying"),
        "false",
        "the proxy's relaying does not carry over"
    );
    assert_ne!(field(&banner, "uuid"), first_uuid, "a new connection uuid");

    c.expect("MAIL FROM:<a@remote.example>", 503); // HELO/EHLO needed again
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(ehlo.lines[0].contains("client.example [192.0.2.7]"), "{ehlo:?}");
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<x@elsewhere.example>", 550); // no relaying for the client
    c.expect("RSET", 250);
    let r = c.send_mail("a@remote.example", &["user@example.test"], b"Subject: t\r\n\r\nhi");
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        r.text().contains(&field(&banner, "uuid")),
        "txn ids follow the new uuid: {r:?}"
    );
    c.expect("QUIT", 221);
    let msg = last_message(&srv);
    assert!(
        msg.starts_with("Received: from client.example (client.example [192.0.2.7])"),
        "{msg}"
    );
}

#[test]
fn ipv6_helo_proto_and_unavailable_values() {
    let srv = server("127.0.0.1\n");
    let mut c = srv.client();
    c.expect("EHLO proxy.example", 250);
    let banner = xclient(
        &mut c,
        "ADDR=IPV6:2001:db8::7 NAME=[UNAVAILABLE] PORT=[TEMPUNAVAIL] HELO=client.example PROTO=ESMTP",
    )
    .text();
    assert_eq!(field(&banner, "remote"), "2001:db8::7");
    assert_eq!(field(&banner, "host"), "none");
    // HELO and PROTO stand in for the client's EHLO: MAIL with parameters works at once.
    c.expect("MAIL FROM:<a@remote.example> SIZE=100", 250);
    c.expect("RCPT TO:<user@example.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: t\r\n\r\nhi\r\n.\r\n");
    assert_eq!(c.reply().unwrap().code, 250);
    let msg = last_message(&srv);
    assert!(
        msg.starts_with("Received: from client.example ([2001:db8::7])"),
        "{msg}"
    );
}

#[test]
fn login_makes_the_client_authenticated() {
    let srv = server("127.0.0.1\n");
    let mut c = srv.client();
    c.expect("EHLO proxy.example", 250);
    let banner = xclient(&mut c, "ADDR=192.0.2.7 LOGIN=bob+40example.test").text();
    assert_eq!(field(&banner, "relaying"), "true");
    assert_eq!(field(&banner, "auth"), "bob@example.test");
    c.expect("EHLO client.example", 250);
    c.expect("MAIL FROM:<bob@example.test>", 250);
    c.expect("RCPT TO:<x@elsewhere.example>", 250);
}

#[test]
fn relay_acl_runs_again_for_the_new_address() {
    let srv = server("127.0.0.1\n");
    let mut c = srv.client();
    let banner = xclient(&mut c, "ADDR=192.0.2.50").text();
    assert_eq!(field(&banner, "relaying"), "true", "192.0.2.50 is in relay_acl_allow");
}

#[test]
fn refusals() {
    let srv = server("127.0.0.1\n");
    let mut c = srv.client();
    c.expect("EHLO proxy.example", 250);
    for (args, text) in [
        ("NAME=client.example", "5.5.4 No valid IP address found"),
        ("ADDR=[UNAVAILABLE]", "5.5.4 No valid IP address found"),
        ("ADDR=300.1.2.3", "5.5.4 No valid IP address found"),
        ("ADDR=192.0.2.7 PORT=99999", "5.5.4 Bad XCLIENT PORT value"),
        ("ADDR=192.0.2.7 COLOR=blue", "5.5.4 Bad XCLIENT attribute name: COLOR"),
    ] {
        let r = c.expect(&format!("XCLIENT {args}"), 501);
        assert_eq!(r.text(), text);
    }
    c.expect("MAIL FROM:<a@remote.example>", 250);
    let r = c.expect("XCLIENT ADDR=192.0.2.7", 503);
    assert_eq!(r.text(), "5.5.1 Mail transaction in progress");
    c.expect("RSET", 250);
    xclient(&mut c, "ADDR=192.0.2.7");
}

#[test]
fn commands_pipelined_after_xclient_wait_for_the_new_banner() {
    let srv = server("127.0.0.1\n");
    let mut c = srv.client();
    c.send(b"XCLIENT ADDR=192.0.2.7 HELO=client.example\r\nMAIL FROM:<a@remote.example>\r\n");
    let banner = c.reply().unwrap();
    assert_eq!(banner.code, 220);
    assert_eq!(field(&banner.text(), "remote"), "192.0.2.7");
    assert_eq!(c.reply().unwrap().code, 250);
}

#[test]
fn behind_a_proxy_the_proxied_client_is_checked() {
    // HAProxy-style header first; xclient.hosts lists the client the header names.
    let srv = start_with(
        |dir| {
            config("192.0.2.9\n")(dir);
            std::fs::write(dir.join("connection.ini"), "[haproxy]\nhosts[]=127.0.0.1\n").unwrap();
        },
        registry(),
    );
    let mut s = TcpStream::connect(srv.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.9 198.51.100.1 40000 25\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let greeting = read_reply(&mut reader).unwrap();
    let mut c = Client { reader, greeting };
    assert_eq!(field(&c.greeting.text(), "remote"), "192.0.2.9");
    let banner = xclient(&mut c, "ADDR=192.0.2.7").text();
    assert_eq!(field(&banner, "remote"), "192.0.2.7");
}

/// The per-address connection limit follows XCLIENT: the connection is counted under the
/// client it names, so a second session named as the same client is refused.
#[test]
fn connection_limits_count_the_named_client() {
    let srv = start_with(
        |dir: &Path| {
            config("127.0.0.1\n")(dir);
            std::fs::write(
                dir.join("connection.ini"),
                "[max]\nconnections_per_ip=1\nconnections_exempt=\n",
            )
            .unwrap();
        },
        registry(),
    );
    let mut first = srv.client();
    first.expect("EHLO proxy.example", 250);
    xclient(&mut first, "ADDR=192.0.2.50");
    // 127.0.0.1's place was given back when the first session became 192.0.2.50.
    let mut second = srv.client();
    assert_eq!(second.greeting.code, 220, "{:?}", second.greeting);
    second.expect("EHLO proxy.example", 250);
    let r = second.cmd("XCLIENT ADDR=192.0.2.50");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().contains("from your address"), "{r:?}");
    assert!(second.is_closed());
    // Another client through the same proxy is fine.
    let mut third = srv.client();
    third.expect("EHLO proxy.example", 250);
    xclient(&mut third, "ADDR=192.0.2.51");
    first.expect("NOOP", 250);
}
