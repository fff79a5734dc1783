//! PROXY protocol v1/v2 over real TCP: headers from a listed proxy (`connection.ini
//! [haproxy] hosts[]`) make every hook, the relay ACL and the `Received:` header see the
//! client behind the proxy; anything else is refused with `421`. The last two tests put the
//! real HAProxy in front of posta.

mod common;

use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::haproxy::{Haproxy, Version};
use common::process;
use common::whoami::{field, registry};
use common::*;
use posta::queue::decode;

/// 127.0.0.1 (the test client) is a listed proxy; the header must come within 1 s.
fn behind_proxy(dir: &Path) {
    std::fs::write(
        dir.join("connection.ini"),
        "[haproxy]\nhosts[]=127.0.0.1\nhosts[]=10.1.0.0/16\ntimeout=1\n",
    )
    .unwrap();
    std::fs::write(dir.join("plugins"), "relay\ntest/whoami\nrcpt_to.in_host_list\n").unwrap();
    // The proxy itself may relay; the clients it speaks for may not (spoofing check).
    std::fs::write(dir.join("relay_acl_allow"), "127.0.0.1\n").unwrap();
}

fn server() -> TestServer {
    start_with(behind_proxy, registry())
}

/// Connect, send `first` before reading anything, then read the greeting.
fn connect_with(srv: &TestServer, first: &[u8]) -> Client {
    let mut s = TcpStream::connect(srv.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(first).unwrap();
    let mut reader = BufReader::new(s);
    let greeting = read_reply(&mut reader).expect("a reply before the close");
    Client { reader, greeting }
}

/// Send one message and return the queued message text.
fn queued_message(srv: &TestServer, c: &mut Client) -> String {
    c.expect("EHLO client.example", 250);
    let r = c.send_mail("a@remote.example", &["user@example.test"], b"Subject: t\r\n\r\nhi");
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221);
    let files = srv.queue_files();
    let bytes = std::fs::read(files.last().expect("a queued message")).unwrap();
    let (_, msg) = decode(&bytes).unwrap();
    String::from_utf8_lossy(msg).into_owned()
}

fn v2_header(command: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend(((addrs.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(addrs);
    h.extend_from_slice(tlvs);
    h
}

#[test]
fn v1_tcp4_header_gives_hooks_the_client() {
    let srv = server();
    let mut c = connect_with(&srv, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 2525\r\n");
    let banner = c.greeting.text();
    assert_eq!(c.greeting.code, 220, "{banner}");
    assert_eq!(field(&banner, "remote"), "192.0.2.7");
    assert_eq!(field(&banner, "port"), "40000");
    assert_eq!(field(&banner, "local"), "198.51.100.1:2525");
    let proxy: serde_json::Value = serde_json::from_str(&field(&banner, "proxy")).unwrap();
    assert_eq!(proxy["type"], "haproxy");
    assert_eq!(proxy["proto"], "TCP4");
    assert_eq!(proxy["src_ip"], "192.0.2.7");
    assert_eq!(proxy["dst_port"], 2525);
    assert_eq!(proxy["proxy_ip"], "127.0.0.1");
    let ehlo = c.expect("EHLO client.example", 250);
    assert!(ehlo.lines[0].contains("[192.0.2.7]"), "{ehlo:?}");
    let msg = queued_message(&srv, &mut c);
    assert!(msg.starts_with("Received: from client.example ([192.0.2.7])"), "{msg}");
}

#[test]
fn v1_tcp6_header() {
    let srv = server();
    let mut c = connect_with(&srv, b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n");
    assert_eq!(field(&c.greeting.text(), "remote"), "2001:db8::7");
    let msg = queued_message(&srv, &mut c);
    assert!(
        msg.starts_with("Received: from client.example ([2001:db8::7])"),
        "{msg}"
    );
}

#[test]
fn v2_ipv4_header_with_tlvs() {
    let srv = server();
    let addrs = [192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0, 25];
    // A NOOP TLV and an ALPN TLV: read and skipped.
    let tlvs = [0x04, 0, 2, 0, 0, 0x01, 0, 4, b's', b'm', b't', b'p'];
    let mut c = connect_with(&srv, &v2_header(1, 0x11, &addrs, &tlvs));
    let banner = c.greeting.text();
    assert_eq!(field(&banner, "remote"), "192.0.2.7");
    assert_eq!(field(&banner, "port"), "40000");
    let proxy: serde_json::Value = serde_json::from_str(&field(&banner, "proxy")).unwrap();
    assert_eq!(proxy["version"], 2);
    let msg = queued_message(&srv, &mut c);
    assert!(msg.starts_with("Received: from client.example ([192.0.2.7])"), "{msg}");
}

#[test]
fn v2_ipv6_header() {
    let srv = server();
    let mut addrs = Vec::new();
    addrs.extend("2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    addrs.extend("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    addrs.extend([0x9c, 0x40, 0, 25]);
    let c = connect_with(&srv, &v2_header(1, 0x21, &addrs, &[]));
    let banner = c.greeting.text();
    assert_eq!(field(&banner, "remote"), "2001:db8::7");
    assert_eq!(field(&banner, "local"), "[2001:db8::1]:25");
}

#[test]
fn v2_local_keeps_the_proxys_address() {
    let srv = server();
    let mut c = connect_with(&srv, &v2_header(0, 0x00, &[], &[]));
    let banner = c.greeting.text();
    assert_eq!(c.greeting.code, 220);
    assert_eq!(field(&banner, "remote"), "127.0.0.1");
    assert_eq!(field(&banner, "proxy"), "none");
    assert_eq!(field(&banner, "relaying"), "true", "the proxy's own connection");
    c.expect("QUIT", 221);
}

#[test]
fn relay_acl_sees_the_client_not_the_proxy() {
    let srv = server();
    let mut c = connect_with(&srv, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
    assert_eq!(field(&c.greeting.text(), "relaying"), "false");
    c.expect("EHLO client.example", 250);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    c.expect("RCPT TO:<someone@elsewhere.example>", 550);
}

#[test]
fn header_and_pipelined_smtp_in_one_packet() {
    let srv = server();
    let mut packet = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n".to_vec();
    packet.extend_from_slice(
        b"EHLO client.example\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n",
    );
    let mut c = connect_with(&srv, &packet);
    assert_eq!(field(&c.greeting.text(), "remote"), "192.0.2.7");
    for code in [250, 250, 250, 354] {
        assert_eq!(c.reply().unwrap().code, code);
    }
    c.send(b"Subject: t\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    assert_eq!(c.reply().unwrap().code, 250);
    assert_eq!(c.reply().unwrap().code, 221);
    let bytes = std::fs::read(&srv.queue_files()[0]).unwrap();
    let msg = String::from_utf8_lossy(decode(&bytes).unwrap().1).into_owned();
    assert!(msg.starts_with("Received: from client.example ([192.0.2.7])"), "{msg}");
}

#[test]
fn proxy_from_an_unlisted_peer_is_refused() {
    // Only 10.9.0.0/16 may send PROXY; the test client is 127.0.0.1.
    let srv = start_with(
        |dir| {
            std::fs::write(dir.join("connection.ini"), "[haproxy]\nhosts[]=10.9.0.0/16\n").unwrap();
        },
        registry(),
    );
    let mut c = connect_with(&srv, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
    assert_eq!(c.greeting.code, 220, "an ordinary client gets the banner");
    let r = c.reply().expect("421");
    assert_eq!(r.code, 421);
    assert_eq!(r.text(), "4.7.0 PROXY not allowed from 127.0.0.1");
    assert!(c.is_closed());

    // A v2 header from the same peer: also refused, not read as SMTP lines.
    let mut c = connect_with(
        &srv,
        &v2_header(1, 0x11, &[192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 25], &[]),
    );
    assert_eq!(c.greeting.code, 220);
    let r = c.reply().expect("421");
    assert_eq!(
        (r.code, r.text().as_str()),
        (421, "4.7.0 PROXY not allowed from 127.0.0.1")
    );
    assert!(c.is_closed());
}

#[test]
fn malformed_v1_is_refused() {
    let srv = server();
    for bad in [
        &b"PROXY TCP4 192.0.2.7 nonsense 1 25\r\n"[..],
        b"PROXY TCP4 2001:db8::7 198.51.100.1 1 25\r\n",
        b"PROXY UNKNOWN\r\n",
        b"EHLO client.example\r\n",
        &[b'P'; 200][..],
    ] {
        let mut c = connect_with(&srv, bad);
        assert_eq!(c.greeting.code, 421, "{bad:?}");
        assert_eq!(c.greeting.text(), "4.5.2 Invalid PROXY format");
        assert!(c.is_closed());
    }
    assert!(srv.queue_files().is_empty());
}

#[test]
fn truncated_v2_is_refused() {
    let srv = server();
    let full = v2_header(1, 0x11, &[192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 25], &[]);
    // Half a header, then silence: the header timeout ends it.
    let mut c = connect_with(&srv, &full[..20]);
    assert_eq!(
        (c.greeting.code, c.greeting.text().as_str()),
        (421, "4.4.2 PROXY timeout")
    );
    assert!(c.is_closed());
    // A length that cannot hold the addresses: refused at once.
    let mut short = full[..16].to_vec();
    short[15] = 4;
    short.extend([192, 0, 2, 7]);
    let mut c = connect_with(&srv, &short);
    assert_eq!(
        (c.greeting.code, c.greeting.text().as_str()),
        (421, "4.5.2 Invalid PROXY format")
    );
    assert!(c.is_closed());
    // Half a header, then the proxy closes: nothing to answer, the connection just ends.
    let mut s = TcpStream::connect(srv.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&full[..20]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reader = BufReader::new(s);
    assert!(read_reply(&mut reader).is_none());
}

#[test]
fn header_timeout() {
    let srv = server();
    let mut c = connect_with(&srv, b"");
    assert_eq!(c.greeting.code, 421);
    assert_eq!(c.greeting.text(), "4.4.2 PROXY timeout");
    assert!(c.is_closed());
}

// ----- the real HAProxy ------------------------------------------------------------------

/// Through HAProxy from 127.0.0.5: hooks and the `Received:` header see 127.0.0.5, while the
/// TCP peer of posta is HAProxy on 127.0.0.1.
fn through_haproxy(version: Version) {
    let srv = server();
    let proxy = Haproxy::start(srv.addr(), version);
    let client_ip: IpAddr = "127.0.0.5".parse().unwrap();
    let stream = connect_bound(client_ip, proxy.addr);
    let client_port = stream.local_addr().unwrap().port();
    let mut reader = BufReader::new(stream);
    let greeting = read_reply(&mut reader).expect("banner through haproxy");
    let mut c = Client { reader, greeting };
    let banner = c.greeting.text();
    assert_eq!(c.greeting.code, 220, "{banner}");
    assert_eq!(field(&banner, "remote"), "127.0.0.5");
    assert_eq!(field(&banner, "port"), client_port.to_string());
    assert_eq!(field(&banner, "local"), proxy.addr.to_string());
    assert_eq!(
        field(&banner, "relaying"),
        "false",
        "127.0.0.5 is not in relay_acl_allow"
    );
    let notes: serde_json::Value = serde_json::from_str(&field(&banner, "proxy")).unwrap();
    assert_eq!(notes["proxy_ip"], "127.0.0.1");
    let msg = queued_message(&srv, &mut c);
    assert!(msg.starts_with("Received: from client.example ([127.0.0.5])"), "{msg}");
}

#[test]
fn haproxy_send_proxy_v1() {
    through_haproxy(Version::V1);
}

#[test]
fn haproxy_send_proxy_v2() {
    through_haproxy(Version::V2);
}

// ----- the logs ----------------------------------------------------------------------------

/// The real binary's stderr: the connection's log span and disconnect line name the client
/// from the header; a refused header is logged with the proxy's address and the reason.
#[test]
fn logs_name_the_client_and_refusals() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("config");
    write_default_config(&cfg);
    behind_proxy(&cfg);
    std::fs::write(cfg.join("plugins"), "rcpt_to.in_host_list\n").unwrap();
    std::fs::write(cfg.join("queue_dir"), root.path().join("queue").display().to_string()).unwrap();
    let port = process::free_port();
    std::fs::write(
        cfg.join("smtp.ini"),
        format!("[main]\nlisten=127.0.0.1:{port}\nnodes=1\n"),
    )
    .unwrap();
    let (mut child, log) = process::spawn_captured("run", &cfg, Some("info"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut first = None;
    for _ in 0..400 {
        if let Ok(s) = TcpStream::connect(addr) {
            first = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut s = first.expect("posta listens");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nQUIT\r\n")
        .unwrap();
    let mut reader = BufReader::new(s);
    assert_eq!(read_reply(&mut reader).unwrap().code, 220);
    assert_eq!(read_reply(&mut reader).unwrap().code, 221);
    assert!(read_reply(&mut reader).is_none());

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.7 nonsense 1 25\r\n").unwrap();
    let mut reader = BufReader::new(s);
    assert_eq!(read_reply(&mut reader).unwrap().code, 421);
    assert!(read_reply(&mut reader).is_none());

    let _ = child.kill();
    let _ = child.wait();
    let log = log.join().unwrap();
    let disconnect = log
        .lines()
        .find(|l| l.contains("disconnect"))
        .unwrap_or_else(|| panic!("no disconnect line in:\n{log}"));
    assert!(disconnect.contains("ip=192.0.2.7"), "{disconnect}");
    let refused = log
        .lines()
        .find(|l| l.contains("PROXY header refused"))
        .unwrap_or_else(|| panic!("no refusal line in:\n{log}"));
    assert!(refused.contains("proxy=127.0.0.1"), "{refused}");
    assert!(refused.contains("malformed v1 header"), "{refused}");
}

/// Behind a listed proxy the per-address limit counts the client the header names, not the
/// proxy: two clients get in, the second connection of one of them is refused.
#[test]
fn per_address_limit_counts_the_proxied_client() {
    let srv = start(|d| {
        std::fs::write(
            d.join("connection.ini"),
            "[haproxy]\nhosts[]=127.0.0.1\ntimeout=5\n[max]\nconnections_per_ip=1\n",
        )
        .unwrap();
    });
    let header = |client: &str| format!("PROXY TCP4 {client} 198.51.100.1 40000 25\r\n");
    let first = connect_with(&srv, header("192.0.2.10").as_bytes());
    assert_eq!(first.greeting.code, 220, "{:?}", first.greeting);
    let other = connect_with(&srv, header("192.0.2.11").as_bytes());
    assert_eq!(other.greeting.code, 220, "{:?}", other.greeting);
    let again = connect_with(&srv, header("192.0.2.10").as_bytes());
    assert_eq!(again.greeting.code, 421, "{:?}", again.greeting);
    assert!(again.greeting.text().contains("4.7.0"), "{:?}", again.greeting);
    // The slot is given back when the first connection ends.
    let mut first = first;
    first.expect("QUIT", 221);
    drop(first);
    let ok = (0..200).any(|_| {
        let c = connect_with(&srv, header("192.0.2.10").as_bytes());
        if c.greeting.code == 220 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
        false
    });
    assert!(ok, "the proxied client's slot was not given back");
}

/// A port in `[haproxy] required_ports` takes connections from listed proxies only: a direct
/// client is refused before the banner; the proxy gets in.
#[test]
fn required_ports_refuse_direct_clients() {
    let port = common::process::free_port();
    let srv = start(|d| {
        std::fs::write(
            d.join("smtp.ini"),
            format!("[main]\nlisten=127.0.0.1:{port}\nnodes=1\ninactivity_timeout=30\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("connection.ini"),
            format!("[haproxy]\nhosts[]=127.0.0.9\ntimeout=5\nrequired_ports={port}\n"),
        )
        .unwrap();
    });
    // 127.0.0.1 is not the listed proxy.
    let c = srv.client();
    assert_eq!(c.greeting.code, 421, "{:?}", c.greeting);
    assert!(c.greeting.text().contains("through the proxy only"), "{:?}", c.greeting);
    // The proxy (127.0.0.9) with its header gets the banner.
    let mut s = common::connect_bound([127, 0, 0, 9].into(), srv.addr());
    s.write_all(b"PROXY TCP4 192.0.2.20 198.51.100.1 40000 25\r\n").unwrap();
    let mut reader = BufReader::new(s);
    let greeting = read_reply(&mut reader).expect("banner");
    assert_eq!(greeting.code, 220, "{greeting:?}");
}
