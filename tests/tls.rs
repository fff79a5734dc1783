//! Inbound TLS: STARTTLS (RFC 3207) and implicit TLS on `smtps_port` (RFC 8314), against the
//! real daemon with a real rustls client and certificates made by rcgen for each test.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;

/// A self-signed certificate for `names`: (certificate PEM, key PEM, certificate DER).
fn cert(names: &[&str]) -> (String, String, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("certificate");
    (ck.cert.pem(), ck.signing_key.serialize_pem(), ck.cert.der().to_vec())
}

/// Turn on the `tls` plugin with a default certificate for `mx.example.test`; returns its DER.
fn enable_tls(dir: &Path) -> Vec<u8> {
    let (c, k, der) = cert(&["mx.example.test"]);
    std::fs::write(dir.join("tls_cert.pem"), c).unwrap();
    std::fs::write(dir.join("tls_key.pem"), k).unwrap();
    std::fs::write(dir.join("plugins"), "rcpt_to.in_host_list\ntls\n").unwrap();
    der
}

/// `enable_tls` with a 1 s inactivity timeout (tests of clients that stall).
fn enable_tls_short_timeout(dir: &Path) {
    enable_tls(dir);
    std::fs::write(
        dir.join("smtp.ini"),
        "[main]\nlisten=127.0.0.1:0\nnodes=1\ninactivity_timeout=1\n",
    )
    .unwrap();
}

/// A blocking SMTP client over TLS (certificates not verified: the tests look at them).
struct TlsClient {
    reader: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsClient {
    /// Handshake on `tcp` asking for `sni`.
    fn handshake(mut tcp: TcpStream, sni: &str) -> std::io::Result<TlsClient> {
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(posta::actors::tls::opportunistic_client(), name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(TlsClient {
            reader: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        })
    }

    /// Handshake with a client certificate, trusting `server` (the server's certificate).
    fn handshake_with_cert(mut tcp: TcpStream, server: &[u8], client: &ClientCert) -> std::io::Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.to_vec().into()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![client.der.clone().into()], client.key())
            .unwrap();
        let name = ServerName::try_from("mx.example.test").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(TlsClient {
            reader: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        })
    }

    /// STARTTLS on a plain client that has just had its reply to EHLO.
    fn starttls(mut c: Client, sni: &str) -> TlsClient {
        c.expect("STARTTLS", 220);
        assert!(c.reader.buffer().is_empty(), "bytes after 220 Go ahead");
        TlsClient::handshake(c.reader.into_inner(), sni).expect("handshake")
    }

    /// The certificate the server presented.
    fn peer_cert(&self) -> Vec<u8> {
        let conn = &self.reader.get_ref().conn;
        conn.peer_certificates().unwrap()[0].to_vec()
    }

    fn send(&mut self, b: &[u8]) {
        let s = self.reader.get_mut();
        s.write_all(b).unwrap();
        s.flush().unwrap();
    }

    fn reply(&mut self) -> Option<Reply> {
        read_reply(&mut self.reader)
    }

    fn expect(&mut self, line: &str, code: u16) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        let r = self.reply().unwrap_or_else(|| panic!("closed after {line:?}"));
        assert_eq!(r.code, code, "{line:?} -> {r:?}");
        r
    }

    fn send_mail(&mut self, from: &str, rcpt: &str, body: &[u8]) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        self.expect(&format!("RCPT TO:<{rcpt}>"), 250);
        self.expect("DATA", 354);
        self.send(body);
        self.send(b"\r\n.\r\n");
        self.reply().expect("reply after DATA")
    }
}

fn ehlo_offers_starttls(c: &mut Client) -> bool {
    c.expect("EHLO client.test", 250).lines.iter().any(|l| l == "STARTTLS")
}

/// The server closes the connection (a TLS alert may come first, never an SMTP reply).
fn assert_closes(mut c: Client) {
    let mut buf = Vec::new();
    let r = c.reader.read_to_end(&mut buf);
    if let Err(e) = &r {
        let timeout = matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
        assert!(!timeout, "connection still open");
    }
    assert!(
        !buf.starts_with(b"2") && !buf.starts_with(b"5"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

/// The one queue file's text.
fn queued(s: &TestServer) -> String {
    let files = s.queue_files();
    assert_eq!(files.len(), 1, "{files:?}");
    String::from_utf8_lossy(&std::fs::read(&files[0]).unwrap()).into_owned()
}

#[test]
fn starttls_then_a_message_is_received_with_esmtps() {
    let s = start(|d| {
        enable_tls(d);
    });
    let mut c = s.client();
    assert!(ehlo_offers_starttls(&mut c));
    let mut t = TlsClient::starttls(c, "mx.example.test");
    let ehlo = t.expect("EHLO client.test", 250);
    assert!(
        !ehlo.lines.iter().any(|l| l == "STARTTLS"),
        "offered again under TLS: {ehlo:?}"
    );
    let r = t.send_mail("a@remote.test", "u@example.test", b"Subject: tls\r\n\r\nhello");
    assert_eq!(r.code, 250, "{r:?}");
    t.expect("QUIT", 221);
    let q = queued(&s);
    assert!(q.contains("with ESMTPS (TLSv1.3 TLS_"), "{q}");
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let s = start(|d| {
        enable_tls(d);
    });
    let mut c = s.client();
    c.expect("EHLO client.test", 250);
    c.send(b"STARTTLS\r\nRSET\r\n");
    assert_eq!(c.reply().unwrap().code, 220);
    let mut t = TlsClient::handshake(c.reader.into_inner(), "mx.example.test").expect("handshake");
    // Had RSET been kept, its 250 would come first.
    t.expect("HELP", 214);
    // The EHLO before TLS is forgotten too.
    t.expect("MAIL FROM:<a@remote.test>", 503);
}

#[test]
fn starttls_with_arguments_twice_and_inside_a_transaction() {
    let s = start(|d| {
        enable_tls(d);
    });
    let mut c = s.client();
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS now", 501);
    // Inside a transaction: refused, the transaction stays.
    c.expect("MAIL FROM:<a@remote.test>", 250);
    c.expect("STARTTLS", 503);
    c.expect("RCPT TO:<u@example.test>", 250);
    c.expect("RSET", 250);
    let mut t = TlsClient::starttls(c, "mx.example.test");
    t.expect("EHLO client.test", 250);
    let r = t.expect("STARTTLS", 503);
    assert!(r.text().contains("Already using TLS"), "{r:?}");
}

#[test]
fn starttls_not_offered_without_the_plugin_or_to_no_tls_hosts() {
    let plain = start(|_| {});
    let mut c = plain.client();
    assert!(!ehlo_offers_starttls(&mut c));
    c.expect("STARTTLS", 500);
    let hidden = start(|d| {
        enable_tls(d);
        std::fs::write(d.join("tls.ini"), "[no_tls_hosts]\n127.0.0.0/8\n").unwrap();
    });
    let mut c = hidden.client();
    assert!(!ehlo_offers_starttls(&mut c));
    c.expect("STARTTLS", 500);
}

#[test]
fn no_starttls_ports_hides_starttls_on_that_port_only() {
    let port = common::process::free_port();
    let s = start(move |d| {
        enable_tls(d);
        std::fs::write(
            d.join("smtp.ini"),
            format!("[main]\nlisten=127.0.0.1:0,127.0.0.1:{port}\nnodes=1\n"),
        )
        .unwrap();
        std::fs::write(d.join("tls.ini"), format!("[main]\nno_starttls_ports[]={port}\n")).unwrap();
    });
    let addrs = &s.server.local_addrs;
    assert!(ehlo_offers_starttls(&mut Client::connect(addrs[0])));
    assert!(!ehlo_offers_starttls(&mut Client::connect(addrs[1])));
}

#[test]
fn garbage_instead_of_a_client_hello_closes_the_connection() {
    let s = start(|d| {
        enable_tls(d);
    });
    let mut c = s.client();
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 220);
    c.send(b"this is not a TLS ClientHello at all\r\n\r\n");
    assert_closes(c);
    // The daemon is still there.
    let mut c = s.client();
    c.expect("EHLO client.test", 250);
}

#[test]
fn a_client_that_never_handshakes_is_closed_at_the_timeout() {
    let s = start(|d| {
        enable_tls_short_timeout(d);
    });
    let mut c = s.client();
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 220);
    // The client's read timeout (20 s) is far above the server's (1 s).
    assert_closes(c);
    s.client().expect("NOOP", 250);
}

#[test]
fn sni_selects_the_certificate() {
    let (a_pem, a_key, a_der) = cert(&["a.example.test"]);
    let (w_pem, w_key, w_der) = cert(&["*.wild.test"]);
    let mut default = Vec::new();
    let s = start(|d| {
        default = enable_tls(d);
        std::fs::create_dir_all(d.join("tls/sub")).unwrap();
        std::fs::write(d.join("tls/a.pem"), format!("{a_key}{a_pem}")).unwrap();
        std::fs::write(d.join("tls/sub/wild.pem"), format!("{w_pem}{w_key}")).unwrap();
        std::fs::write(d.join("tls/README"), "not a bundle").unwrap();
    });
    for (sni, want) in [
        ("a.example.test", &a_der),
        ("A.Example.Test", &a_der),
        ("x.wild.test", &w_der),
        ("x.y.wild.test", &default),
        ("other.test", &default),
    ] {
        let mut c = s.client();
        c.expect("EHLO client.test", 250);
        let t = TlsClient::starttls(c, sni);
        assert!(&t.peer_cert() == want, "wrong certificate for {sni}");
    }
}

#[test]
fn implicit_tls_on_smtps_port() {
    let port = common::process::free_port();
    let s = start(move |d| {
        enable_tls(d);
        std::fs::write(
            d.join("smtp.ini"),
            format!("[main]\nlisten=127.0.0.1:0,127.0.0.1:{port}\nsmtps_port={port}\nnodes=1\n"),
        )
        .unwrap();
    });
    let smtps: SocketAddr = s.server.local_addrs[1];
    assert_eq!(smtps.port(), port);
    let tcp = TcpStream::connect(smtps).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut t = TlsClient::handshake(tcp, "mx.example.test").expect("handshake before the banner");
    assert_eq!(t.reply().expect("banner").code, 220);
    let ehlo = t.expect("EHLO client.test", 250);
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"));
    t.expect("STARTTLS", 503);
    assert_eq!(t.send_mail("a@remote.test", "u@example.test", b"hi").code, 250);
    assert!(queued(&s).contains("with ESMTPS"));
    // The plain listener still offers STARTTLS.
    assert!(ehlo_offers_starttls(&mut s.client()));
}

#[test]
fn plain_bytes_on_the_smtps_port_are_not_smtp() {
    let port = common::process::free_port();
    let s = start(move |d| {
        enable_tls(d);
        std::fs::write(
            d.join("smtp.ini"),
            format!("[main]\nlisten=127.0.0.1:{port}\nsmtps_port={port}\nnodes=1\n"),
        )
        .unwrap();
    });
    let mut tcp = TcpStream::connect(s.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(b"EHLO plain.test\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"220"), "plain SMTP answered on the TLS port");
}

#[test]
fn a_broken_certificate_fails_check_config_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("config");
    write_default_config(&dir);
    enable_tls(&dir);
    let check = |dir: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_posta"))
            .args(["check-config", "-c"])
            .arg(dir)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(check(&dir).0, "valid TLS config refused: {}", check(&dir).1);
    std::fs::write(dir.join("tls_cert.pem"), "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let (ok, err) = check(&dir);
    assert!(!ok);
    assert!(err.contains("tls_cert.pem"), "{err}");
    // A key that belongs to another certificate.
    let (c, _, _) = cert(&["mx.example.test"]);
    std::fs::write(dir.join("tls_cert.pem"), c).unwrap();
    let (ok, err) = check(&dir);
    assert!(!ok);
    assert!(err.contains("tls_key.pem") && err.contains("does not fit"), "{err}");
    // The server does not start either.
    let cfg = posta::config::Config::load(&dir).unwrap();
    assert!(posta::server::start(&cfg, &posta::hooks::PluginRegistry::builtin()).is_err());
}

#[test]
fn reload_applies_a_renewed_certificate_to_new_sessions_only() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("config");
    write_default_config(&dir);
    let old_der = enable_tls(&dir);
    let d = common::process::spawn_daemon(&dir, common::process::free_port());
    let mut c = Client::connect(d.addr);
    c.expect("EHLO client.test", 250);
    let mut old = TlsClient::starttls(c, "mx.example.test");
    assert_eq!(old.peer_cert(), old_der);
    old.expect("EHLO client.test", 250);
    old.expect("MAIL FROM:<a@remote.test>", 250);

    let (c, k, new_der) = cert(&["mx.example.test"]);
    std::fs::write(dir.join("tls_cert.pem"), c).unwrap();
    std::fs::write(dir.join("tls_key.pem"), k).unwrap();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let renewed = sink::eventually(Duration::from_secs(10), || {
        let mut c = Client::connect(d.addr);
        c.expect("EHLO client.test", 250);
        TlsClient::starttls(c, "mx.example.test").peer_cert() == new_der
    });
    assert!(renewed, "new sessions still get the old certificate");
    // The session from before the reload finishes its message.
    old.expect("RCPT TO:<u@example.test>", 250);
    old.expect("DATA", 354);
    old.send(b"Subject: before reload\r\n\r\nhi\r\n.\r\n");
    assert_eq!(old.reply().unwrap().code, 250);
}

#[test]
fn openssl_s_client_starttls() {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not on PATH; skipped");
        return;
    }
    let s = start(|d| {
        enable_tls(d);
    });
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-starttls", "smtp", "-crlf", "-quiet", "-connect"])
        .arg(s.addr().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"EHLO openssl.test\nNOOP\nQUIT\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("250 2.0.0 OK"),
        "stdout: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("221 "), "{text}");
}

#[test]
fn metrics_count_handshakes_and_discarded_bytes() {
    let s = start(|d| {
        enable_tls(d);
    });
    let m = posta::metrics::metrics();
    let before = m.starttls_discarded_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let mut c = s.client();
    c.expect("EHLO client.test", 250);
    c.send(b"STARTTLS\r\nNOOP\r\n");
    assert_eq!(c.reply().unwrap().code, 220);
    let mut t = TlsClient::handshake(c.reader.into_inner(), "mx.example.test").unwrap();
    t.expect("NOOP", 250);
    let after = m.starttls_discarded_bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(after >= before + 6, "{before} -> {after}");
}

/// A client certificate and its key, signed by a test CA.
struct ClientCert {
    ca_pem: String,
    der: Vec<u8>,
    key_der: Vec<u8>,
}

impl ClientCert {
    fn new() -> ClientCert {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "posta test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["client.test".to_string()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let der = leaf.signed_by(&key, &issuer).unwrap().der().to_vec();
        ClientCert {
            ca_pem,
            der,
            key_der: key.serialize_der(),
        }
    }

    fn key(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }
}

#[test]
fn require_authorized_port_needs_a_client_certificate() {
    let port = common::process::free_port();
    let client = ClientCert::new();
    let ca = client.ca_pem.clone();
    let mut server_der = Vec::new();
    let s = start(|d| {
        server_der = enable_tls(d);
        std::fs::write(d.join("ca.pem"), &ca).unwrap();
        std::fs::write(
            d.join("tls.ini"),
            format!("[main]\nca=ca.pem\nrequireAuthorized[]={port}\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("smtp.ini"),
            format!("[main]\nlisten=127.0.0.1:0,127.0.0.1:{port}\nnodes=1\n"),
        )
        .unwrap();
    });
    let (open, strict) = (s.server.local_addrs[0], s.server.local_addrs[1]);

    // Without a certificate: refused on the strict port (an alert, then the connection ends).
    let mut c = Client::connect(strict);
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 220);
    if let Ok(mut t) = TlsClient::handshake(c.reader.into_inner(), "mx.example.test") {
        let _ = t.reader.get_mut().write_all(b"EHLO client.test\r\n");
        assert!(t.reply().is_none(), "served without a client certificate");
    }
    // Without STARTTLS at all on the strict port: no mail, no AUTH.
    let mut c = Client::connect(strict);
    c.expect("EHLO client.test", 250);
    let r = c.expect("MAIL FROM:<a@remote.test>", 530);
    assert!(
        r.text().starts_with("5.7.0 Must issue a STARTTLS command first"),
        "{r:?}"
    );
    // Without one on the other port: fine.
    let mut c = Client::connect(open);
    c.expect("EHLO client.test", 250);
    TlsClient::starttls(c, "mx.example.test").expect("EHLO client.test", 250);
    // With one on the strict port: a message goes through.
    let mut c = Client::connect(strict);
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 220);
    let mut t = TlsClient::handshake_with_cert(c.reader.into_inner(), &server_der, &client).expect("handshake");
    t.expect("EHLO client.test", 250);
    assert_eq!(t.send_mail("a@remote.test", "u@example.test", b"hi").code, 250);
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// TLS plus `auth/flat_file` with `alice`; `auth.ini` as given.
fn tls_and_auth(dir: &Path, auth_ini: &str) {
    enable_tls(dir);
    std::fs::write(dir.join("plugins"), "tls\nauth/flat_file\nrcpt_to.in_host_list\n").unwrap();
    std::fs::write(dir.join("auth_flat_file.ini"), "[users]\nalice=s3cret\n").unwrap();
    std::fs::write(dir.join("auth.ini"), format!("[main]\nfailure_delay_ms=0\n{auth_ini}")).unwrap();
}

/// AUTH only under TLS (plaintext exemption off): not offered and refused in clear, offered
/// and working after STARTTLS; the authenticated client may relay.
#[test]
fn auth_is_offered_after_starttls_only() {
    let srv = start(|d| tls_and_auth(d, "plaintext_private=false\n"));
    let mut c = srv.client();
    let caps = c.expect("EHLO client.test", 250);
    assert!(caps.lines.iter().any(|l| l == "STARTTLS"), "{caps:?}");
    assert!(!caps.lines.iter().any(|l| l.starts_with("AUTH")), "{caps:?}");
    let plain = b64(b"\0alice\0s3cret");
    c.expect(&format!("AUTH PLAIN {plain}"), 538);
    let mut t = TlsClient::starttls(c, "mx.example.test");
    let caps = t.expect("EHLO client.test", 250);
    assert!(
        caps.lines.iter().any(|l| l.starts_with("AUTH ") && l.contains("PLAIN")),
        "{caps:?}"
    );
    assert!(!caps.lines.iter().any(|l| l == "STARTTLS"), "{caps:?}");
    t.expect(&format!("AUTH PLAIN {plain}"), 235);
    let r = t.send_mail(
        "alice@example.test",
        "someone@elsewhere.example",
        b"Subject: out\r\n\r\nrelayed",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let msg = queued(&srv);
    assert!(msg.contains(" with ESMTPSA (TLSv1.3 "), "{msg}");
}

/// Credentials given in clear cannot be wrapped in TLS afterwards: STARTTLS after AUTH is
/// refused, the session goes on.
#[test]
fn starttls_after_auth_is_refused() {
    let srv = start(|d| tls_and_auth(d, ""));
    let mut c = srv.client();
    let caps = c.expect("EHLO client.test", 250);
    assert!(
        caps.lines.iter().any(|l| l.starts_with("AUTH ")),
        "loopback may AUTH in clear: {caps:?}"
    );
    c.expect(&format!("AUTH PLAIN {}", b64(b"\0alice\0s3cret")), 235);
    let r = c.expect("STARTTLS", 503);
    assert!(r.text().contains("after AUTH"), "{r:?}");
    c.expect("NOOP", 250);
}

/// A TLS client that floods commands and never reads its replies: the flush times out, and
/// closing (TLS close_notify, which the peer never takes) is bounded too, so the connection
/// and its limit slot are given back.
#[test]
fn a_tls_client_that_never_reads_gives_its_slot_back() {
    let s = start(|d| {
        enable_tls_short_timeout(d);
        std::fs::write(
            d.join("connection.ini"),
            "[max]\nconnections_per_ip=1\nconnections_exempt=\nerrors=0\n",
        )
        .unwrap();
    });
    let mut c = s.client();
    c.expect("EHLO client.test", 250);
    let mut t = TlsClient::starttls(c, "mx.example.test");
    t.expect("EHLO client.test", 250);
    // Write (in another thread: our writes stop once the server stops reading) a few MB of
    // replies' worth of commands, and read nothing.
    let tcp = t.reader.get_ref().sock.try_clone().unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let flood = std::thread::spawn(move || {
        // About 200 bytes of reply per EHLO: some 20 MB, more than the socket buffers hold.
        let batch = "EHLO client.test\r\n".repeat(1000);
        for _ in 0..100 {
            if std::io::Write::write_all(t.reader.get_mut(), batch.as_bytes()).is_err() {
                break;
            }
        }
        t
    });
    // The slot is taken while the flood is stuck; it must come free (bounded wait).
    let freed = (0..400).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        s.client().greeting.code == 220
    });
    assert!(freed, "the stuck TLS connection kept its limit slot");
    drop(tcp);
    let _ = flood.join();
}
