//! SMTP AUTH over real TCP against the real daemon: PLAIN, LOGIN, CRAM-MD5 with
//! auth/flat_file, auth/auth_proxy against the in-test sink, sequencing and syntax errors,
//! the brute-force limit, when AUTH is offered, submission ports, relaying after AUTH, and
//! that no secret ever reaches the log.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::process::free_port;
use common::sink::Sink;
use common::*;
use hmac::Mac;

const USER: &str = "alice";
const PASS: &str = "Tr0ub4dor&3-horse";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn plain(user: &str, pass: &str) -> String {
    b64(format!("\0{user}\0{pass}").as_bytes())
}

/// flat_file with alice, tiny failure delays, local domain example.test.
fn auth_config(dir: &Path, auth_ini: &str) {
    std::fs::write(dir.join("plugins"), "auth/flat_file\nrcpt_to.in_host_list\n").unwrap();
    std::fs::write(
        dir.join("auth_flat_file.ini"),
        format!("[core]\nmethods=PLAIN,LOGIN,CRAM-MD5\n[users]\n{USER}={PASS}\n"),
    )
    .unwrap();
    let ini = format!("[main]\nfailure_delay_ms=10\nfailure_delay_max_ms=50\n{auth_ini}");
    std::fs::write(dir.join("auth.ini"), ini).unwrap();
}

fn auth_server(auth_ini: &'static str) -> TestServer {
    start(|d| auth_config(d, auth_ini))
}

fn ehlo(srv: &TestServer) -> (Client, Reply) {
    let mut c = srv.client();
    let r = c.expect("EHLO client.test", 250);
    (c, r)
}

#[test]
fn plain_with_initial_response() {
    let srv = auth_server("");
    let (mut c, caps) = ehlo(&srv);
    assert!(caps.lines.iter().any(|l| l == "AUTH PLAIN LOGIN CRAM-MD5"), "{caps:?}");
    let r = c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 235);
    assert_eq!(r.text(), "2.7.0 Authentication successful");
}

#[test]
fn plain_with_separate_step() {
    let srv = auth_server("");
    let (mut c, _) = ehlo(&srv);
    let r = c.expect("AUTH PLAIN", 334);
    assert_eq!(r.text(), "");
    c.expect(&plain(USER, PASS), 235);
}

#[test]
fn login_two_prompts() {
    let srv = auth_server("");
    let (mut c, _) = ehlo(&srv);
    assert_eq!(c.expect("AUTH LOGIN", 334).text(), "VXNlcm5hbWU6");
    assert_eq!(c.expect(&b64(USER.as_bytes()), 334).text(), "UGFzc3dvcmQ6");
    c.expect(&b64(PASS.as_bytes()), 235);
}

#[test]
fn cram_md5() {
    let srv = auth_server("");
    let (mut c, _) = ehlo(&srv);
    let challenge = unb64(&c.expect("AUTH CRAM-MD5", 334).text());
    let challenge = String::from_utf8(challenge).unwrap();
    assert!(
        challenge.starts_with('<') && challenge.ends_with("@mx.example.test>"),
        "{challenge}"
    );
    let mut mac = hmac::Hmac::<md5::Md5>::new_from_slice(PASS.as_bytes()).unwrap();
    mac.update(challenge.as_bytes());
    let digest: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    c.expect(&b64(format!("{USER} {digest}").as_bytes()), 235);
}

#[test]
fn wrong_password_is_535() {
    let srv = auth_server("");
    let (mut c, _) = ehlo(&srv);
    let r = c.expect(&format!("AUTH PLAIN {}", plain(USER, "guess")), 535);
    assert_eq!(r.text(), "5.7.8 Authentication credentials invalid");
    // Unknown users fail the same way.
    c.expect(&format!("AUTH PLAIN {}", plain("mallory", PASS)), 535);
    // And the session goes on: a good login still works.
    c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 235);
}

#[test]
fn cancel_bad_base64_unknown_mechanism() {
    let srv = auth_server("");
    let (mut c, _) = ehlo(&srv);
    c.expect("AUTH LOGIN", 334);
    assert_eq!(c.expect("*", 501).text(), "5.0.0 Authentication cancelled");
    c.expect("AUTH PLAIN", 334);
    assert!(c.expect("not*base64!", 501).text().starts_with("5.5.2 "));
    assert!(c.expect("AUTH PLAIN @@@", 501).text().starts_with("5.5.2 "));
    assert!(c.expect("AUTH GSSAPI", 504).text().starts_with("5.5.4 "));
    c.expect("NOOP", 250);
}

#[test]
fn auth_twice_and_in_transaction_are_503() {
    let srv = auth_server("");
    let (mut c, _) = ehlo(&srv);
    c.expect("MAIL FROM:<a@remote.example>", 250);
    let r = c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 503);
    assert!(r.text().starts_with("5.5.1 "), "{r:?}");
    c.expect("RSET", 250);
    c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 235);
    c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 503);
    // Before EHLO too.
    let mut c = srv.client();
    c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 503);
}

#[test]
fn brute_force_slows_down_then_421() {
    let srv = start(|d| {
        auth_config(d, "");
        std::fs::write(
            d.join("auth.ini"),
            "[main]\nfailure_delay_ms=150\nfailure_delay_max_ms=5000\nmax_failures=3\n",
        )
        .unwrap();
    });
    let (mut c, _) = ehlo(&srv);
    let mut took = Vec::new();
    for code in [535, 535, 421] {
        let t = Instant::now();
        c.expect(&format!("AUTH PLAIN {}", plain(USER, "wrong")), code);
        took.push(t.elapsed());
    }
    assert!(took[0] >= Duration::from_millis(150), "{took:?}");
    assert!(took[1] >= Duration::from_millis(300), "{took:?}");
    assert!(took[2] >= Duration::from_millis(600), "{took:?}");
    assert!(c.is_closed(), "connection left open after 421");
}

/// A client from `source` (a loopback address), greeted.
fn client_from(source: &str, to: SocketAddr) -> Client {
    Client::connect_from(source.parse().unwrap(), to)
}

/// `lockout_failures` counts an address's failures over all its connections: once reached,
/// even the right password is not checked (454 4.7.0, closed); another address is unaffected,
/// and so is an address in `connections_exempt`.
#[test]
fn failures_over_many_connections_lock_the_address_out() {
    let srv = auth_server("max_failures=2\nlockout_failures=4\nlockout_window=600\n");
    let from = "127.0.0.3";
    for _ in 0..2 {
        let mut c = client_from(from, srv.addr());
        c.expect("EHLO client.test", 250);
        c.expect(&format!("AUTH PLAIN {}", plain(USER, "guess-1")), 535);
        c.expect(&format!("AUTH PLAIN {}", plain(USER, "guess-2")), 421);
    }
    let mut c = client_from(from, srv.addr());
    c.expect("EHLO client.test", 250);
    let r = c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 454);
    assert!(r.text().starts_with("4.7.0 ") && r.text().contains("Too many"), "{r:?}");
    assert!(c.is_closed(), "left open after the lockout reply");
    // Another address still logs in.
    let mut c = client_from("127.0.0.4", srv.addr());
    c.expect("EHLO client.test", 250);
    c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 235);
    // 127.0.0.1 is in connection.ini's default connections_exempt: never locked out.
    for _ in 0..3 {
        let (mut c, _) = ehlo(&srv);
        c.expect(&format!("AUTH PLAIN {}", plain(USER, "guess-1")), 535);
        c.expect(&format!("AUTH PLAIN {}", plain(USER, "guess-2")), 421);
    }
    let (mut c, _) = ehlo(&srv);
    c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 235);
}

#[test]
fn not_offered_when_plaintext_is_disallowed() {
    let srv = auth_server("plaintext_private=false\n");
    let (mut c, caps) = ehlo(&srv);
    assert!(!caps.lines.iter().any(|l| l.starts_with("AUTH")), "{caps:?}");
    let r = c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 538);
    assert!(r.text().starts_with("5.7.11 "), "{r:?}");
}

#[test]
fn submission_port_requires_auth() {
    let port = free_port();
    let srv = start(|d| {
        auth_config(d, &format!("submission_ports={port}\n"));
        let smtp = format!("[main]\nlisten=127.0.0.1:{port}\nnodes=1\ninactivity_timeout=30\n");
        std::fs::write(d.join("smtp.ini"), smtp).unwrap();
    });
    let (mut c, _) = ehlo(&srv);
    let r = c.expect("MAIL FROM:<alice@example.test>", 550);
    assert_eq!(r.text(), "5.7.0 Authentication required");
    c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 235);
    let r = c.send_mail("alice@example.test", &["bob@example.test"], b"Subject: s\r\n\r\nx");
    assert_eq!(r.code, 250, "{r:?}");
}

#[test]
fn authenticated_client_relays_others_do_not() {
    let srv = auth_server("");
    let (mut c, _) = ehlo(&srv);
    c.expect("MAIL FROM:<alice@example.test>", 250);
    c.expect("RCPT TO:<someone@far-away.example>", 550);
    c.expect("RSET", 250);
    c.expect(&format!("AUTH PLAIN {}", plain(USER, PASS)), 235);
    let r = c.send_mail(
        "alice@example.test",
        &["someone@far-away.example"],
        b"Subject: relay\r\n\r\nhi",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let files = srv.queue_files();
    assert_eq!(files.len(), 1);
    let (todo, _) = posta::queue::decode(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(todo.domain, "far-away.example");
}

// ----- auth/auth_proxy -------------------------------------------------------------

fn proxy_server(upstream: SocketAddr, tls: &str) -> TestServer {
    let tls = tls.to_string();
    start(move |d| {
        std::fs::write(d.join("plugins"), "auth/auth_proxy\nrcpt_to.in_host_list\n").unwrap();
        let ini = format!("[main]\ntimeout=5\ntls={tls}\n[domains]\nproxy.test={upstream}\n");
        std::fs::write(d.join("auth_proxy.ini"), ini).unwrap();
        std::fs::write(d.join("auth.ini"), "[main]\nfailure_delay_ms=10\n").unwrap();
    })
}

#[test]
fn auth_proxy_success_and_failure() {
    let sink = Sink::builder().auth("bob@proxy.test", "upstream-pw").start();
    let srv = proxy_server(sink.addr(), "opportunistic");
    let (mut c, caps) = ehlo(&srv);
    assert!(caps.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{caps:?}");
    c.expect(&format!("AUTH PLAIN {}", plain("bob@proxy.test", "bad-pw")), 535);
    assert_eq!(sink.refusals().len(), 1, "{:?}", sink.refusals());
    assert_eq!(sink.refusals()[0].stage, "AUTH");
    c.expect("AUTH LOGIN", 334);
    c.expect(&b64(b"bob@proxy.test"), 334);
    c.expect(&b64(b"upstream-pw"), 235);
    // A user of a domain not in [domains] is nobody's: 535.
    let (mut c, _) = ehlo(&srv);
    c.expect(
        &format!("AUTH PLAIN {}", plain("bob@elsewhere.test", "upstream-pw")),
        535,
    );
}

/// An upstream with STARTTLS whose certificate `auth_proxy.ini` is told to trust (`ca`) under
/// the name it has (`localhost`).
fn verified_proxy(sink: &Sink, host: &str, main: &str) -> TestServer {
    verified_proxy_with_ca(sink, host, main, sink.cert_pem())
}

/// The same, with `upstream-ca.pem` holding `ca_pem`.
fn verified_proxy_with_ca(sink: &Sink, host: &str, main: &str, ca_pem: &str) -> TestServer {
    let (pem, port, main) = (ca_pem.to_string(), sink.port(), main.to_string());
    let host = host.to_string();
    start(move |d| {
        std::fs::write(d.join("plugins"), "auth/auth_proxy\nrcpt_to.in_host_list\n").unwrap();
        std::fs::write(d.join("upstream-ca.pem"), &pem).unwrap();
        let ini = format!("[main]\ntimeout=5\n{main}\n[domains]\nproxy.test={host}:{port}\n");
        std::fs::write(d.join("auth_proxy.ini"), ini).unwrap();
        std::fs::write(d.join("auth.ini"), "[main]\nfailure_delay_ms=10\n").unwrap();
    })
}

fn tls_upstream(user: &str, pass: &str) -> Sink {
    // The sink offers AUTH only after STARTTLS.
    Sink::builder().starttls().auth_requires_tls().auth(user, pass).start()
}

#[test]
fn auth_proxy_uses_starttls_and_verifies_the_upstream() {
    let sink = tls_upstream("carol@proxy.test", "pw-over-tls");
    let srv = verified_proxy(&sink, "localhost", "ca=upstream-ca.pem");
    let (mut c, _) = ehlo(&srv);
    c.expect(&format!("AUTH PLAIN {}", plain("carol@proxy.test", "pw-over-tls")), 235);
    assert_eq!(sink.auth_commands(), 1);
}

/// The password never goes to an upstream whose certificate does not verify: not signed by a
/// trusted CA (`ca` holds another certificate), or not for the name posta connected to. That
/// host counts as unreachable: 454, and it never gets an AUTH command.
#[test]
fn auth_proxy_refuses_an_upstream_certificate_that_does_not_verify() {
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .unwrap()
        .cert
        .pem();
    for (host, trusted) in [("localhost", Some(other.as_str())), ("127.0.0.1", None)] {
        let sink = tls_upstream("carol@proxy.test", "pw-over-tls");
        let ca = trusted.unwrap_or(sink.cert_pem()).to_string();
        let srv = verified_proxy_with_ca(&sink, host, "ca=upstream-ca.pem", &ca);
        let (mut c, _) = ehlo(&srv);
        c.expect(&format!("AUTH PLAIN {}", plain("carol@proxy.test", "pw-over-tls")), 454);
        assert_eq!(sink.auth_commands(), 0, "{host}: the upstream got an AUTH command");
    }
}

/// `tls_verify=false`: Haraka's behaviour, any certificate.
#[test]
fn auth_proxy_tls_verify_false_accepts_any_certificate() {
    let sink = tls_upstream("carol@proxy.test", "pw-over-tls");
    let srv = verified_proxy(&sink, "127.0.0.1", "tls_verify=false");
    let (mut c, _) = ehlo(&srv);
    c.expect(&format!("AUTH PLAIN {}", plain("carol@proxy.test", "pw-over-tls")), 235);
}

/// By default the password is never sent to an upstream that does not offer STARTTLS: that
/// host counts as unreachable (454), and it never sees an AUTH command.
#[test]
fn auth_proxy_requires_tls_by_default() {
    let sink = Sink::builder().auth("bob@proxy.test", "upstream-pw").start();
    let srv = start(|d| {
        std::fs::write(d.join("plugins"), "auth/auth_proxy\nrcpt_to.in_host_list\n").unwrap();
        let ini = format!("[main]\ntimeout=5\n[domains]\nproxy.test={}\n", sink.addr());
        std::fs::write(d.join("auth_proxy.ini"), ini).unwrap();
        std::fs::write(d.join("auth.ini"), "[main]\nfailure_delay_ms=10\n").unwrap();
    });
    let (mut c, _) = ehlo(&srv);
    c.expect(&format!("AUTH PLAIN {}", plain("bob@proxy.test", "wrong-pw")), 454);
    assert!(
        !sink.refusals().iter().any(|r| r.stage == "AUTH"),
        "the password went to a host without TLS: {:?}",
        sink.refusals()
    );
}

#[test]
fn auth_proxy_unreachable_is_454() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let srv = proxy_server(dead, "required");
    let (mut c, _) = ehlo(&srv);
    let r = c.expect(&format!("AUTH PLAIN {}", plain("bob@proxy.test", "pw")), 454);
    assert!(r.text().starts_with("4.7.0 "), "{r:?}");
    // Not a failed login: not counted toward max_failures (only delayed); the client may retry.
    c.expect(&format!("AUTH PLAIN {}", plain("bob@proxy.test", "pw")), 454);
}

// ----- logs ----------------------------------------------------------------------------

/// Start the real binary at debug level with stderr captured.
fn spawn_logged(dir: &Path, port: u16) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let (child, reader) = common::process::spawn_captured("run", dir, Some("debug"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "posta did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, reader)
}

#[test]
fn secrets_never_logged() {
    // The upstream speaks TLS: the proxied password goes through the whole path.
    let sink = Sink::builder()
        .starttls()
        .auth("dave@proxy.test", "proxied-S3cret")
        .start();
    let port = free_port();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    write_default_config(dir);
    auth_config(dir, "");
    std::fs::write(
        dir.join("plugins"),
        "auth/flat_file\nauth/auth_proxy\nrcpt_to.in_host_list\n",
    )
    .unwrap();
    std::fs::write(dir.join("upstream-ca.pem"), sink.cert_pem()).unwrap();
    let proxy = format!(
        "[main]\nca=upstream-ca.pem\n[domains]\nproxy.test=localhost:{}\n",
        sink.port()
    );
    std::fs::write(dir.join("auth_proxy.ini"), proxy).unwrap();
    let smtp = format!("[main]\nlisten=127.0.0.1:{port}\nnodes=1\nforce_shutdown_timeout=5\n");
    std::fs::write(dir.join("smtp.ini"), smtp).unwrap();
    std::fs::write(dir.join("queue_dir"), dir.join("queue").display().to_string()).unwrap();
    let (mut child, reader) = spawn_logged(dir, port);

    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap());
    c.expect("EHLO client.test", 250);
    c.expect(&format!("AUTH PLAIN {}", plain(USER, "wrong-Guess-77")), 535);
    c.expect("AUTH LOGIN", 334);
    c.expect(&b64(USER.as_bytes()), 334);
    c.expect(&b64(PASS.as_bytes()), 235);
    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap());
    c.expect("EHLO client.test", 250);
    c.expect(
        &format!("AUTH PLAIN {}", plain("dave@proxy.test", "proxied-S3cret")),
        235,
    );
    c.expect("QUIT", 221);

    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = reader.join().unwrap();
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{log}");
    }
    assert!(
        log.contains("alice") && log.contains("dave@proxy.test"),
        "auth not logged:\n{log}"
    );
    assert!(log.contains("auth_user"), "no user in the disconnect line:\n{log}");
    for secret in [PASS, "wrong-Guess-77", "proxied-S3cret"] {
        for form in [
            secret.to_string(),
            b64(secret.as_bytes()),
            plain(USER, secret),
            plain("dave@proxy.test", secret),
        ] {
            assert!(!log.contains(&form), "{form:?} in the log:\n{log}");
        }
    }
}

/// A SASL response line is timed like a command line: a client trickling its password is
/// cut at `[deadline] command`, not kept for hours by the inactivity timeout.
#[test]
fn a_trickled_sasl_line_meets_the_command_deadline() {
    let srv = start(|d| {
        auth_config(d, "");
        std::fs::write(d.join("connection.ini"), "[deadline]\ncommand=1\n").unwrap();
    });
    let (mut c, _) = ehlo(&srv);
    c.send(b"AUTH LOGIN\r\n");
    assert_eq!(c.reply().map(|r| r.code), Some(334));
    // One byte of the user name every 200 ms, bounded; the deadline ends it first.
    let mut cut = None;
    for b in b"YWxpY2VhbGljZWFsaWNlYWxpY2VhbGljZWFsaWNlYWxpY2U".iter() {
        if std::io::Write::write_all(c.reader.get_mut(), &[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        c.reader.get_ref().set_nonblocking(true).unwrap();
        let waiting = std::io::BufRead::fill_buf(&mut c.reader)
            .map(|b| !b.is_empty())
            .unwrap_or(false);
        c.reader.get_ref().set_nonblocking(false).unwrap();
        if waiting {
            cut = c.reply();
            break;
        }
    }
    let r = cut.expect("no reply while trickling: the deadline did not apply");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().contains("4.4.2"), "{r:?}");
}
