//! Connection limits (`connection.ini [max] connections`, `connections_per_ip`,
//! `connection_rate`) and slow-client deadlines (`[deadline]`), against the real daemon over
//! loopback TCP. No assertion depends on timing: deadlines are small, waits are bounded.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{read_reply, start, start_with, Client, Reply, TestServer};
use posta::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Plugin, PluginRegistry};

fn limits_server(max: &str) -> TestServer {
    let max = max.to_string();
    start(move |dir| std::fs::write(dir.join("connection.ini"), format!("[max]\n{max}\n")).unwrap())
}

/// Connect from `source` (a loopback address) and read the first reply.
fn connect_from(source: IpAddr, to: SocketAddr) -> (TcpStream, Option<Reply>) {
    let stream = common::connect_bound(source, to);
    let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
    let reply = read_reply(&mut r);
    (stream, reply)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A refusal: `421 4.7.0 <text>`, then the connection is closed.
fn assert_refused(mut stream: TcpStream, reply: Option<Reply>, words: &str) {
    let r = reply.expect("a reply before the close");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().starts_with("4.7.0 "), "{r:?}");
    assert!(r.text().contains(words), "{r:?}");
    let mut buf = [0u8; 64];
    assert!(
        matches!(stream.read(&mut buf), Ok(0) | Err(_)),
        "still open after the 421"
    );
}

/// Connect until a greeting comes (the previous session's slot is released once its actor
/// has stopped, a moment after the client sees the close). Bounded.
fn connect_until_greeted(source: IpAddr, to: SocketAddr) -> TcpStream {
    for _ in 0..100 {
        let (s, r) = connect_from(source, to);
        if r.is_some_and(|r| r.code == 220) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no slot came free for {source}");
}

fn quit(stream: TcpStream) {
    let mut r = std::io::BufReader::new(stream);
    r.get_mut().write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_reply(&mut r).map(|r| r.code), Some(221));
    let mut buf = [0u8; 16];
    let _ = r.read(&mut buf);
}

#[test]
fn total_limit_refuses_with_421_and_frees_on_disconnect() {
    let srv = limits_server("connections=2\nconnections_per_ip=0");
    let before = posta::metrics::metrics().limits.refused_total.load(Ordering::Relaxed);
    let a = srv.client();
    let _b = srv.client();
    let (s, r) = connect_from(ip("127.0.0.1"), srv.addr());
    assert_refused(s, r, "Too many connections");
    assert!(posta::metrics::metrics().limits.refused_total.load(Ordering::Relaxed) > before);
    // One leaves: a newcomer gets in.
    let mut a = a;
    a.expect("QUIT", 221);
    assert!(a.is_closed());
    let c = connect_until_greeted(ip("127.0.0.1"), srv.addr());
    quit(c);
}

#[test]
fn per_ip_limit_counts_each_address_apart() {
    let srv = limits_server("connections_per_ip=2");
    let to = srv.addr();
    let (a1, r1) = connect_from(ip("127.0.0.2"), to);
    let (_a2, r2) = connect_from(ip("127.0.0.2"), to);
    assert_eq!((r1.map(|r| r.code), r2.map(|r| r.code)), (Some(220), Some(220)));
    let (s, r) = connect_from(ip("127.0.0.2"), to);
    assert_refused(s, r, "from your address");
    // Another address is not affected.
    let (b1, rb) = connect_from(ip("127.0.0.3"), to);
    assert_eq!(rb.map(|r| r.code), Some(220));
    quit(b1);
    // 127.0.0.2 gets a place back when one of its sessions ends.
    quit(a1);
    let again = connect_until_greeted(ip("127.0.0.2"), to);
    quit(again);
}

#[test]
fn connection_rate_per_address() {
    let srv = limits_server("connections_per_ip=0\nconnection_rate=2/1h");
    let to = srv.addr();
    for _ in 0..2 {
        let (s, r) = connect_from(ip("127.0.0.4"), to);
        assert_eq!(r.map(|r| r.code), Some(220));
        quit(s);
    }
    // Closed sessions still count toward the rate.
    let (s, r) = connect_from(ip("127.0.0.4"), to);
    assert_refused(s, r, "rate limit");
    let (s, r) = connect_from(ip("127.0.0.5"), to);
    assert_eq!(r.map(|r| r.code), Some(220));
    quit(s);
}

#[test]
fn default_per_ip_limit_is_50() {
    let srv = start(|_| {});
    let to = srv.addr();
    let held: Vec<_> = (0..50).map(|_| connect_from(ip("127.0.0.6"), to)).collect();
    assert!(held.iter().all(|(_, r)| r.as_ref().is_some_and(|r| r.code == 220)));
    let (s, r) = connect_from(ip("127.0.0.6"), to);
    assert_refused(s, r, "from your address");
}

/// A plugin that panics on `RCPT TO:<boom@...>`.
struct Boom;

impl Plugin for Boom {
    fn name(&self) -> &str {
        "test/boom"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Rcpt]
    }
    fn call<'a>(&'a self, hook: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        if let Hook::Rcpt(r) = hook {
            if r.mailbox.local == "boom" {
                panic!("test/boom panics (on purpose)");
            }
        }
        HookResult::CONT.into()
    }
}

#[test]
fn a_panicking_session_gives_its_slot_back() {
    let mut reg = PluginRegistry::builtin();
    reg.register("test/boom", |_| Ok(Arc::new(Boom) as Arc<dyn Plugin>));
    let srv = start_with(
        |dir| {
            std::fs::write(dir.join("plugins"), "test/boom\nrcpt_to.in_host_list\n").unwrap();
            std::fs::write(dir.join("connection.ini"), "[max]\nconnections_per_ip=1\n").unwrap();
        },
        reg,
    );
    // 127.0.0.7: not in the default exemption (127.0.0.1, ::1).
    let (stream, greeting) = connect_from(ip("127.0.0.7"), srv.addr());
    assert_eq!(greeting.map(|r| r.code), Some(220));
    let (second, r) = connect_from(ip("127.0.0.7"), srv.addr());
    assert_refused(second, r, "from your address");
    let mut c = Client {
        reader: std::io::BufReader::new(stream),
        greeting: Reply {
            code: 220,
            lines: vec![],
        },
    };
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@client.test>", 250);
    let r = c.cmd("RCPT TO:<boom@example.test>");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(c.is_closed());
    let again = connect_until_greeted(ip("127.0.0.7"), srv.addr());
    quit(again);
}

/// Local clients (127.0.0.1, ::1 by default) skip the per-address limit; an explicit empty
/// `connections_exempt` counts them too.
#[test]
fn loopback_is_exempt_by_default() {
    let srv = start(|d| std::fs::write(d.join("connection.ini"), "[max]\nconnections_per_ip=1\n").unwrap());
    let held: Vec<_> = (0..3).map(|_| connect_from(ip("127.0.0.1"), srv.addr())).collect();
    assert!(held.iter().all(|(_, r)| r.as_ref().is_some_and(|r| r.code == 220)));
    let srv = start(|d| {
        std::fs::write(
            d.join("connection.ini"),
            "[max]\nconnections_per_ip=1\nconnections_exempt=\n",
        )
        .unwrap()
    });
    let (_a, r) = connect_from(ip("127.0.0.1"), srv.addr());
    assert_eq!(r.map(|r| r.code), Some(220));
    let (s, r) = connect_from(ip("127.0.0.1"), srv.addr());
    assert_refused(s, r, "from your address");
}

// ----- slow-client deadlines ------------------------------------------------------------------

fn deadline_server(deadline: &str) -> TestServer {
    let d = deadline.to_string();
    start(move |dir| std::fs::write(dir.join("connection.ini"), format!("[deadline]\n{d}\n")).unwrap())
}

/// Send `bytes` one at a time, 100 ms apart, from another thread, until the server closes or
/// the bytes run out (bounded).
fn trickle(c: &Client, bytes: &'static [u8]) -> std::thread::JoinHandle<()> {
    let mut w = c.reader.get_ref().try_clone().unwrap();
    std::thread::spawn(move || {
        for b in bytes {
            if w.write_all(std::slice::from_ref(b)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// The next reply is `421 4.4.2 ...<words>...` and the connection is then closed.
fn assert_deadline(c: &mut Client, words: &str) {
    let r = c.reply().expect("a 421 before the close");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().starts_with("4.4.2 "), "{r:?}");
    assert!(r.text().contains(words), "{r:?}");
    assert!(c.is_closed());
}

const SLOW_BYTES: &[u8] = &[b'x'; 150]; // 15 s of trickling at most

#[test]
fn a_trickled_command_line_meets_its_deadline() {
    // The inactivity timeout (30 s) never fires: a byte comes every 100 ms.
    let srv = deadline_server("command=1");
    let before = posta::metrics::metrics()
        .limits
        .deadline_command
        .load(Ordering::Relaxed);
    let mut c = srv.client();
    let t = trickle(&c, SLOW_BYTES);
    assert_deadline(&mut c, "command line too slow");
    t.join().unwrap();
    assert!(
        posta::metrics::metrics()
            .limits
            .deadline_command
            .load(Ordering::Relaxed)
            > before
    );
}

#[test]
fn a_trickled_message_is_cut_by_the_minimum_rate() {
    let srv = deadline_server("data_min_rate=100000\ndata_grace=1");
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@client.test>", 250);
    c.expect("RCPT TO:<b@example.test>", 250);
    c.expect("DATA", 354);
    let t = trickle(&c, SLOW_BYTES);
    assert_deadline(&mut c, "message data too slow");
    t.join().unwrap();
    assert!(srv.queue_files().is_empty(), "nothing queued from a cut message");
}

#[test]
fn a_message_must_arrive_within_the_data_deadline() {
    let srv = deadline_server("data=1\ndata_min_rate=0");
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@client.test>", 250);
    c.expect("RCPT TO:<b@example.test>", 250);
    // BDAT: no reply comes until the chunk is complete, which it never is in time.
    c.send(b"BDAT 1000\r\n");
    let t = trickle(&c, SLOW_BYTES);
    assert_deadline(&mut c, "message data too slow");
    t.join().unwrap();
    assert!(srv.queue_files().is_empty());
}

#[test]
fn sessions_end_at_the_session_deadline_between_commands() {
    let srv = deadline_server("session=1");
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    // Well-formed, prompt commands: only the session deadline can end this.
    for _ in 0..150 {
        let r = c.cmd("NOOP");
        if r.code == 421 {
            assert!(
                r.text().starts_with("4.4.2 ") && r.text().contains("session too long"),
                "{r:?}"
            );
            assert!(c.is_closed());
            return;
        }
        assert_eq!(r.code, 250);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the session deadline never came");
}

#[test]
fn a_prompt_client_is_not_bothered_by_the_deadlines() {
    let srv = deadline_server("command=2\ndata=5\ndata_min_rate=1000\ndata_grace=1");
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    let r = c.send_mail("a@client.test", &["b@example.test"], b"Subject: hi\r\n\r\nhello\r\n");
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221);
}
