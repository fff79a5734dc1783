//! Inbound TLS handshake cost, with the server config posta builds from `tls.ini`.
//!
//! `cargo bench --bench tls` runs two measurements:
//!
//! 1. **server CPU per handshake**: full handshakes in memory (no sockets) between a rustls
//!    client and the `ServerConfig` that `config::tls` builds, counting only the thread CPU
//!    time of the server's calls (`/proc/thread-self/schedstat`, so other load on the machine
//!    does not inflate it), for TLS 1.3 and TLS 1.2.
//! 2. **STARTTLS sessions/s**: the real daemon in-process on loopback; client threads each
//!    run connect, banner, EHLO, STARTTLS, handshake, EHLO, QUIT. Client and server share the
//!    machine, so this is a rate for the whole exchange, not server CPU.
//!
//! Settings (environment): `TLS_HANDSHAKES` (default 2000) for part 1, `TLS_SESSIONS`
//! (default 1000) and `TLS_THREADS` (default 4) for part 2. The certificate is an ECDSA P-256
//! one made by rcgen (as most certificates issued today). The binary does nothing unless
//! `--bench` is among its arguments (cargo bench passes it).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A config dir with the `tls` plugin and a fresh certificate for `mx.bench.test`; returns the
/// certificate (DER) for the clients to trust.
fn config_dir(dir: &Path) -> Vec<u8> {
    let ck = rcgen::generate_simple_self_signed(vec!["mx.bench.test".to_string()]).unwrap();
    std::fs::write(dir.join("tls_cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("tls_key.pem"), ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("plugins"), "tls\n").unwrap();
    std::fs::write(dir.join("me"), "mx.bench.test\n").unwrap();
    std::fs::write(dir.join("smtp.ini"), "[main]\nlisten=127.0.0.1:0\nnodes=1\n").unwrap();
    std::fs::write(dir.join("outbound.ini"), "[main]\ndisabled=true\n").unwrap();
    std::fs::write(dir.join("queue_dir"), dir.join("queue").display().to_string()).unwrap();
    ck.cert.der().to_vec()
}

fn client_config(version: &'static rustls::SupportedProtocolVersion, cert: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.to_vec().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every handshake full: no resumption.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// CPU time of this thread so far (`/proc/thread-self/schedstat`, nanoseconds): unlike wall
/// time it does not count time the scheduler gave to other processes on a busy machine.
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Move TLS records from one side to the other; returns the CPU time of the server's calls.
fn pump(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) -> Duration {
    let mut buf = Vec::new();
    client.write_tls(&mut buf).unwrap();
    let t = thread_cpu();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        server.read_tls(&mut rd).unwrap();
    }
    server.process_new_packets().unwrap();
    let mut back = Vec::new();
    server.write_tls(&mut back).unwrap();
    let spent = thread_cpu().saturating_sub(t);
    let mut rd = &back[..];
    while !rd.is_empty() {
        client.read_tls(&mut rd).unwrap();
    }
    client.process_new_packets().unwrap();
    spent
}

/// Part 1: `n` in-memory handshakes; prints server CPU ms per handshake and handshakes/s.
fn in_memory(
    server_cfg: &Arc<rustls::ServerConfig>,
    client_cfg: Arc<rustls::ClientConfig>,
    version: &'static rustls::SupportedProtocolVersion,
    n: u64,
) {
    let mut server_time = Duration::ZERO;
    for _ in 0..n {
        let name = ServerName::try_from("mx.bench.test").unwrap();
        let mut c = rustls::ClientConnection::new(client_cfg.clone(), name).unwrap();
        let mut s = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            server_time += pump(&mut c, &mut s);
        }
    }
    let per = server_time.as_secs_f64() * 1000.0 / n as f64;
    println!(
        "tls handshake in-memory {:?}: {n} handshakes, server CPU {per:.3} ms/handshake = {:.0} handshakes/s per core",
        version.version,
        1000.0 / per
    );
}

fn line(r: &mut BufReader<TcpStream>) -> u16 {
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l.as_bytes().get(3) == Some(&b' ') {
            return l[..3].parse().unwrap();
        }
        assert!(!l.is_empty(), "connection closed");
    }
}

/// One STARTTLS session: banner, EHLO, STARTTLS, handshake, EHLO, QUIT.
fn session(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(tcp);
    assert_eq!(line(&mut r), 220);
    r.get_mut().write_all(b"EHLO bench.test\r\n").unwrap();
    assert_eq!(line(&mut r), 250);
    r.get_mut().write_all(b"STARTTLS\r\n").unwrap();
    assert_eq!(line(&mut r), 220);
    let name = ServerName::try_from("mx.bench.test").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, r.into_inner()));
    tls.get_mut().write_all(b"EHLO bench.test\r\n").unwrap();
    let mut l = String::new();
    while !l.starts_with("250 ") {
        l.clear();
        assert!(tls.read_line(&mut l).unwrap() > 0, "closed");
    }
    tls.get_mut().write_all(b"QUIT\r\n").unwrap();
    let _ = tls.read_line(&mut l);
}

/// Part 2: STARTTLS sessions against the real daemon.
fn sessions(dir: &Path, client: Arc<rustls::ClientConfig>, n: u64, threads: u64) {
    let cfg = posta::config::Config::load(dir).unwrap();
    let server = posta::server::start(&cfg, &posta::hooks::PluginRegistry::builtin()).unwrap();
    let addr = server.addr();
    let t = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let client = client.clone();
            let count = n / threads + u64::from(i < n % threads);
            std::thread::spawn(move || (0..count).for_each(|_| session(addr, &client)))
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    let secs = t.elapsed().as_secs_f64();
    println!(
        "tls starttls sessions: {n} sessions over {threads} client threads in {secs:.2} s = {:.0} sessions/s (TLS 1.3, client and daemon on the same machine)",
        n as f64 / secs
    );
    server.stop();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let cert = config_dir(&dir);
    let tls = posta::config::TlsIni::load(&dir).unwrap().server(&dir).unwrap();
    let server_cfg = tls.for_port(25);
    let n = env("TLS_HANDSHAKES", 2000);
    let tls13 = client_config(&rustls::version::TLS13, &cert);
    in_memory(&server_cfg, tls13.clone(), &rustls::version::TLS13, n);
    let tls12 = client_config(&rustls::version::TLS12, &cert);
    in_memory(&server_cfg, tls12, &rustls::version::TLS12, n);
    sessions(&dir, tls13, env("TLS_SESSIONS", 1000), env("TLS_THREADS", 4).max(1));
}
