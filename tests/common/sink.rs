//! A scriptable SMTP/LMTP receiving server inside the test process (its own thread and tokio
//! runtime), on 127.0.0.1:<ephemeral port> or any given address.
//!
//! ```ignore
//! let sink = Sink::builder().starttls().rcpt_reply("nobody@", "550 5.1.1 no such user").start();
//! // ... make posta deliver to sink.addr() ...
//! assert!(sink.wait_for(1, Duration::from_secs(20)));
//! let m = &sink.messages()[0];
//! assert!(m.tls);
//! ```
//!
//! It records every accepted message ([`Received`]), every refused recipient or transaction
//! ([`Refusal`]), and counts connections and concurrent sessions. The only waiting it offers is
//! bounded polling ([`Sink::wait_for`], [`Sink::wait_until`], [`eventually`]).
#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest command or body line the sink accepts before it drops the connection.
const MAX_LINE: usize = 1 << 20;
/// A session idle this long is closed (the runtime also ends every session when dropped).
const IDLE: Duration = Duration::from_secs(120);

/// How the sink behaves. Defaults: SMTP, `127.0.0.1:0`, hostname `sink.test`, EHLO offers
/// PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, DSN and SMTPUTF8; no STARTTLS, no AUTH.
#[derive(Clone)]
pub struct SinkBuilder {
    addr: SocketAddr,
    hostname: String,
    lmtp: bool,
    pipelining: bool,
    size: Option<u64>,
    eight_bit: bool,
    dsn: bool,
    smtputf8: bool,
    starttls: bool,
    auth: Option<(String, String)>,
    auth_mechanisms: String,
    auth_requires_tls: bool,
    rcpt_rules: Vec<(String, String)>,
    data_rules: Vec<(String, String)>,
    fail_data: Option<(usize, String)>,
    drop_in_data: usize,
    reply_delay: Option<Duration>,
}

impl Default for SinkBuilder {
    fn default() -> Self {
        SinkBuilder {
            addr: "127.0.0.1:0".parse().unwrap(),
            hostname: "sink.test".into(),
            lmtp: false,
            pipelining: true,
            size: Some(50 << 20),
            eight_bit: true,
            dsn: true,
            smtputf8: true,
            starttls: false,
            auth: None,
            auth_mechanisms: "PLAIN LOGIN".into(),
            auth_requires_tls: false,
            rcpt_rules: Vec::new(),
            data_rules: Vec::new(),
            fail_data: None,
            drop_in_data: 0,
            reply_delay: None,
        }
    }
}

impl SinkBuilder {
    /// Listen on this address (port 0: ephemeral).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }
    /// Listen on this IP (e.g. 127.0.0.2) and `port` (0: ephemeral).
    pub fn ip_port(self, ip: impl Into<IpAddr>, port: u16) -> Self {
        self.bind(SocketAddr::new(ip.into(), port))
    }
    /// Name in the greeting and EHLO reply.
    pub fn hostname(mut self, h: &str) -> Self {
        self.hostname = h.into();
        self
    }
    /// Speak LMTP: LHLO instead of EHLO/HELO, one reply per accepted recipient after the dot.
    pub fn lmtp(mut self) -> Self {
        self.lmtp = true;
        self
    }
    /// Offer PIPELINING (default on).
    pub fn pipelining(mut self, on: bool) -> Self {
        self.pipelining = on;
        self
    }
    /// Offer `SIZE n` (default 50 MB); `None`: no SIZE.
    pub fn size(mut self, n: Option<u64>) -> Self {
        self.size = n;
        self
    }
    /// Offer 8BITMIME (default on).
    pub fn eight_bit_mime(mut self, on: bool) -> Self {
        self.eight_bit = on;
        self
    }
    /// Offer DSN (default on).
    pub fn dsn(mut self, on: bool) -> Self {
        self.dsn = on;
        self
    }
    /// Offer SMTPUTF8 (default on).
    pub fn smtputf8(mut self, on: bool) -> Self {
        self.smtputf8 = on;
        self
    }
    /// Offer STARTTLS with a fresh self-signed certificate (rcgen), served with tokio-rustls.
    pub fn starttls(mut self) -> Self {
        self.starttls = true;
        self
    }
    /// Offer `AUTH PLAIN LOGIN` and require it (with these credentials) before MAIL.
    pub fn auth(mut self, user: &str, pass: &str) -> Self {
        self.auth = Some((user.into(), pass.into()));
        self
    }
    /// The mechanisms announced with AUTH (default `PLAIN LOGIN`; the sink implements both).
    pub fn auth_mechanisms(mut self, m: &str) -> Self {
        self.auth_mechanisms = m.into();
        self
    }
    /// Announce and accept AUTH only after STARTTLS (as submission servers do); needs
    /// [`SinkBuilder::starttls`].
    pub fn auth_requires_tls(mut self) -> Self {
        self.auth_requires_tls = true;
        self
    }
    /// Answer `RCPT TO` with `reply` (e.g. `"450 4.2.0 try later"`) when the address contains
    /// `substr`. The first matching rule wins.
    pub fn rcpt_reply(mut self, substr: &str, reply: &str) -> Self {
        self.rcpt_rules.push((substr.into(), reply.into()));
        self
    }
    /// After the dot: LMTP answers this recipient with `reply` (its own line); SMTP answers the
    /// whole transaction with `reply` when any recipient matches.
    pub fn data_reply(mut self, substr: &str, reply: &str) -> Self {
        self.data_rules.push((substr.into(), reply.into()));
        self
    }
    /// Answer the first `n` complete DATA transactions (counted over all connections) with
    /// `reply` (e.g. `"451 4.3.0 try again"`; LMTP: for every recipient), then accept.
    pub fn fail_first_data(mut self, n: usize, reply: &str) -> Self {
        self.fail_data = Some((n, reply.into()));
        self
    }
    /// In the first `n` DATA transactions, answer 354, read the first body bytes, then close
    /// the connection without a reply.
    pub fn drop_in_data(mut self, n: usize) -> Self {
        self.drop_in_data = n;
        self
    }

    /// Wait this long after a message's final dot before answering it
    /// ([`Sink::replies_waiting`] counts the waits begun).
    pub fn reply_delay(mut self, d: Duration) -> Self {
        self.reply_delay = Some(d);
        self
    }

    /// Bind and start serving.
    pub fn try_start(self) -> io::Result<Sink> {
        Sink::spawn(self)
    }

    /// Bind and start serving; panics when the address cannot be bound.
    pub fn start(self) -> Sink {
        let addr = self.addr;
        self.try_start()
            .unwrap_or_else(|e| panic!("sink cannot listen on {addr}: {e}"))
    }
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    /// Connection number (1 for the first connection this sink accepted).
    pub conn_id: u64,
    /// The EHLO/HELO/LHLO argument.
    pub helo: String,
    /// The reverse path without brackets (`""` for the null sender).
    pub mail_from: String,
    /// MAIL FROM parameters as sent (`SIZE=123 BODY=8BITMIME`…).
    pub mail_params: String,
    /// Recipients the message was accepted for, without brackets.
    pub rcpts: Vec<String>,
    /// RCPT TO parameters as sent, one per entry of `rcpts`.
    pub rcpt_params: Vec<String>,
    /// The message as received, dot-unstuffed, without the terminating `.` line.
    pub body: Vec<u8>,
    /// The session was under TLS (STARTTLS) when the message came.
    pub tls: bool,
    /// The user that authenticated on this session.
    pub auth_user: Option<String>,
    /// The mechanism used (`PLAIN` or `LOGIN`).
    pub auth_mechanism: Option<String>,
    /// Received over LMTP.
    pub lmtp: bool,
    /// 1 for the first message on its connection, 2 for the next one (connection reuse)…
    pub seq_on_conn: u32,
}

impl Received {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A recipient or a transaction the sink refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub conn_id: u64,
    /// Where: `"RCPT"`, `"DATA"` (after the dot), `"DROP"` (connection dropped in DATA),
    /// `"AUTH"`, `"MAIL"`.
    pub stage: &'static str,
    /// The recipient concerned (after-dot SMTP refusals: all recipients, comma-separated).
    pub rcpt: String,
    /// The reply sent (empty for DROP).
    pub reply: String,
}

/// What the sink has seen so far.
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    pub messages: Vec<Received>,
    pub refusals: Vec<Refusal>,
    /// Connections accepted.
    pub connections: usize,
    /// Sessions open now.
    pub active: usize,
    /// Most sessions open at once.
    pub max_concurrent: usize,
}

struct Shared {
    stats: Mutex<SinkStats>,
    changed: Condvar,
    /// DATA transactions answered by `fail_first_data` / dropped by `drop_in_data` so far.
    data_failed: AtomicUsize,
    data_dropped: AtomicUsize,
    /// Replies held back by `reply_delay` so far.
    replies_delayed: AtomicUsize,
    /// AUTH commands received.
    auth_commands: AtomicUsize,
    next_conn: AtomicU64,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut SinkStats)) {
        f(&mut self.stats.lock().unwrap());
        self.changed.notify_all();
    }
}

/// A running sink; dropping it closes the listener and every session.
pub struct Sink {
    addr: SocketAddr,
    /// The STARTTLS certificate (PEM), self-signed for `sink.test` and `localhost`.
    cert_pem: Option<String>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    pub fn builder() -> SinkBuilder {
        SinkBuilder::default()
    }

    /// A plain SMTP sink on 127.0.0.1:<ephemeral>.
    pub fn start() -> Sink {
        Sink::builder().start()
    }

    fn spawn(cfg: SinkBuilder) -> io::Result<Sink> {
        let std_listener = std::net::TcpListener::bind(cfg.addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tls, cert_pem) = match cfg.starttls.then(tls_acceptor) {
            Some((acceptor, pem)) => (Some(acceptor), Some(pem)),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            stats: Mutex::new(SinkStats::default()),
            changed: Condvar::new(),
            data_failed: AtomicUsize::new(0),
            data_dropped: AtomicUsize::new(0),
            replies_delayed: AtomicUsize::new(0),
            auth_commands: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let cfg = Arc::new(cfg);
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-sink-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("sink runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, cfg, sh, tls) => {}
                    }
                });
                // Dropping the runtime here ends every session task.
            })?;
        Ok(Sink {
            addr,
            cert_pem,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The STARTTLS certificate in PEM (a sink built with `starttls()`).
    pub fn cert_pem(&self) -> &str {
        self.cert_pem.as_deref().expect("a sink with starttls()")
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// A copy of everything seen so far.
    pub fn stats(&self) -> SinkStats {
        self.shared.stats.lock().unwrap().clone()
    }
    /// Accepted messages, in order of acceptance.
    pub fn messages(&self) -> Vec<Received> {
        self.shared.stats.lock().unwrap().messages.clone()
    }
    /// AUTH commands received (any outcome).
    pub fn auth_commands(&self) -> usize {
        self.shared.auth_commands.load(Ordering::SeqCst)
    }

    /// Messages whose reply `reply_delay` has begun to hold back.
    pub fn replies_waiting(&self) -> usize {
        self.shared.replies_delayed.load(Ordering::SeqCst)
    }

    pub fn message_count(&self) -> usize {
        self.shared.stats.lock().unwrap().messages.len()
    }
    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared.stats.lock().unwrap().refusals.clone()
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.stats.lock().unwrap().connections
    }
    /// Most sessions that were open at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.shared.stats.lock().unwrap().max_concurrent
    }
    /// Sessions open now.
    pub fn active(&self) -> usize {
        self.shared.stats.lock().unwrap().active
    }

    /// Wait (at most `timeout`) until at least `n` messages were accepted; false on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.messages.len() >= n)
    }

    /// Wait (at most `timeout`) until `cond` holds for the stats; false on timeout.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&SinkStats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut stats = self.shared.stats.lock().unwrap();
        loop {
            if cond(&stats) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stats = self.shared.changed.wait_timeout(stats, deadline - now).unwrap().0;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; its last value.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that is free on every one of `ips` (for sinks that must share a port, as MX hosts
/// found in DNS all use `outbound.ini mx_port`). Bind the sinks right after.
pub fn free_port_on(ips: &[IpAddr]) -> u16 {
    'next: for _ in 0..100 {
        let first = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let mut held = vec![first];
        for ip in &ips[1..] {
            match std::net::TcpListener::bind((*ip, port)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'next,
            }
        }
        return port;
    }
    panic!("no port free on all of {ips:?}");
}

/// The acceptor and its certificate in PEM.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ck = rcgen::generate_simple_self_signed(vec!["sink.test".to_string(), "localhost".to_string()])
        .expect("self-signed certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server certificate");
    (tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), ck.cert.pem())
}

async fn accept_loop(
    listener: TcpListener,
    cfg: Arc<SinkBuilder>,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        shared.update(|s| {
            s.connections += 1;
            s.active += 1;
            s.max_concurrent = s.max_concurrent.max(s.active);
        });
        let (cfg, shared, tls) = (cfg.clone(), shared.clone(), tls.clone());
        tokio::spawn(async move {
            let _guard = ActiveGuard(shared.clone());
            let mut session = Session::new(id, cfg, shared, tls, tcp);
            let _ = tokio::time::timeout(IDLE * 10, session.run()).await;
        });
    }
}

/// Counts the session as closed however it ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.update(|s| s.active -= 1);
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Ok(0),
        }
    }
    async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(b).await,
            Stream::Tls(s) => {
                s.write_all(b).await?;
                s.flush().await
            }
            Stream::Gone => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// The transaction in progress.
#[derive(Default)]
struct Txn {
    mail_from: String,
    mail_params: String,
    rcpts: Vec<String>,
    rcpt_params: Vec<String>,
}

struct Session {
    id: u64,
    cfg: Arc<SinkBuilder>,
    shared: Arc<Shared>,
    tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    stream: Stream,
    input: Vec<u8>,
    helo: Option<String>,
    tls: bool,
    auth: Option<(String, String)>,
    txn: Option<Txn>,
    seq: u32,
}

/// Why a session ends.
enum End {
    Closed,
}

type Step = Result<(), End>;

impl Session {
    fn new(
        id: u64,
        cfg: Arc<SinkBuilder>,
        shared: Arc<Shared>,
        tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
        tcp: TcpStream,
    ) -> Session {
        Session {
            id,
            cfg,
            shared,
            tls_acceptor,
            stream: Stream::Plain(tcp),
            input: Vec::new(),
            helo: None,
            tls: false,
            auth: None,
            txn: None,
            seq: 0,
        }
    }

    async fn say(&mut self, line: &str) -> Step {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|_| End::Closed)
    }

    /// The next line, CRLF (or LF) included.
    async fn line(&mut self) -> Result<Vec<u8>, End> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.input[scanned..].iter().position(|&b| b == b'\n') {
                return Ok(self.input.drain(..scanned + i + 1).collect());
            }
            scanned = self.input.len();
            if scanned > MAX_LINE {
                return Err(End::Closed);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Step {
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout(IDLE, self.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.input.extend_from_slice(&buf[..n]);
                Ok(())
            }
            _ => Err(End::Closed),
        }
    }

    async fn run(&mut self) {
        let greeting = if self.cfg.lmtp { "LMTP" } else { "ESMTP" };
        let host = self.cfg.hostname.clone();
        if self
            .say(&format!("220 {host} {greeting} posta test sink"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let Ok(raw) = self.line().await else { return };
            let text = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string();
            let (verb, arg) = match text.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
                None => (text.to_ascii_uppercase(), String::new()),
            };
            let step = match verb.as_str() {
                "EHLO" | "HELO" if self.cfg.lmtp => self.say("500 5.5.1 this is LMTP: use LHLO").await,
                "LHLO" if !self.cfg.lmtp => self.say("500 5.5.1 this is SMTP: use EHLO").await,
                "EHLO" | "LHLO" => self.ehlo(&arg).await,
                "HELO" => {
                    self.helo = Some(arg);
                    self.txn = None;
                    self.say(&format!("250 {host}")).await
                }
                "STARTTLS" => self.starttls().await,
                "AUTH" => self.auth(&arg).await,
                "MAIL" => self.mail(&arg).await,
                "RCPT" => self.rcpt(&arg).await,
                "DATA" => self.data().await,
                "RSET" => {
                    self.txn = None;
                    self.say("250 2.0.0 OK").await
                }
                "NOOP" => self.say("250 2.0.0 OK").await,
                "VRFY" => self.say("252 2.5.0 cannot verify").await,
                "QUIT" => {
                    let _ = self.say("221 2.0.0 bye").await;
                    return;
                }
                _ => self.say("500 5.5.2 command not recognized").await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn ehlo(&mut self, arg: &str) -> Step {
        self.helo = Some(arg.to_string());
        self.txn = None;
        let c = self.cfg.clone();
        let mut lines = vec![format!("{} greets {arg}", c.hostname)];
        if c.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(n) = c.size {
            lines.push(format!("SIZE {n}"));
        }
        if c.eight_bit {
            lines.push("8BITMIME".into());
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        if c.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        if c.auth.is_some() && self.auth.is_none() && (self.tls || !c.auth_requires_tls) {
            lines.push(format!("AUTH {}", c.auth_mechanisms));
        }
        if c.dsn {
            lines.push("DSN".into());
        }
        if c.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        let n = lines.len();
        let mut out = String::new();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.push_str(&format!("250{sep}{l}\r\n"));
        }
        self.stream.write_all(out.as_bytes()).await.map_err(|_| End::Closed)
    }

    async fn starttls(&mut self) -> Step {
        let Some(acceptor) = self.tls_acceptor.clone().filter(|_| !self.tls) else {
            return self.say("502 5.5.1 STARTTLS not offered").await;
        };
        self.say("220 2.0.0 ready to start TLS").await?;
        // Bytes pipelined after STARTTLS are not part of the TLS session (RFC 3207 4.2).
        self.input.clear();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(End::Closed);
        };
        match tokio::time::timeout(IDLE, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                self.tls = true;
                self.helo = None;
                self.txn = None;
                Ok(())
            }
            _ => Err(End::Closed),
        }
    }

    async fn auth(&mut self, arg: &str) -> Step {
        self.shared.auth_commands.fetch_add(1, Ordering::SeqCst);
        let Some((user, pass)) = self.cfg.auth.clone() else {
            return self.say("502 5.5.1 AUTH not offered").await;
        };
        if self.cfg.auth_requires_tls && !self.tls {
            return self.say("538 5.7.11 encryption required for AUTH").await;
        }
        if self.auth.is_some() {
            return self.say("503 5.5.1 already authenticated").await;
        }
        let mut parts = arg.split_whitespace();
        let mech = parts.next().unwrap_or("").to_ascii_uppercase();
        let initial = parts.next().map(String::from);
        let creds = match mech.as_str() {
            "PLAIN" => {
                let token = match initial {
                    Some(t) => t,
                    None => {
                        self.say("334 ").await?;
                        self.response_line().await?
                    }
                };
                if token == "*" {
                    return self.say("501 5.7.0 authentication cancelled").await;
                }
                base64_decode(&token).and_then(|b| {
                    let mut f = b.split(|&c| c == 0);
                    let (_authz, u, p) = (f.next()?, f.next()?, f.next()?);
                    Some((
                        String::from_utf8_lossy(u).into_owned(),
                        String::from_utf8_lossy(p).into_owned(),
                    ))
                })
            }
            "LOGIN" => {
                let u = match initial {
                    Some(t) => t,
                    None => {
                        self.say("334 VXNlcm5hbWU6").await?;
                        self.response_line().await?
                    }
                };
                self.say("334 UGFzc3dvcmQ6").await?;
                let p = self.response_line().await?;
                match (base64_decode(&u), base64_decode(&p)) {
                    (Some(u), Some(p)) => Some((
                        String::from_utf8_lossy(&u).into_owned(),
                        String::from_utf8_lossy(&p).into_owned(),
                    )),
                    _ => None,
                }
            }
            _ => return self.say("504 5.5.4 mechanism not supported").await,
        };
        match creds {
            Some((u, p)) if u == user && p == pass => {
                self.auth = Some((u, mech));
                self.say("235 2.7.0 Authentication successful").await
            }
            other => {
                let reply = "535 5.7.8 Authentication credentials invalid";
                self.refuse("AUTH", other.map(|c| c.0).unwrap_or_default(), reply);
                self.say(reply).await
            }
        }
    }

    async fn response_line(&mut self) -> Result<String, End> {
        let raw = self.line().await?;
        Ok(String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string())
    }

    fn refuse(&self, stage: &'static str, rcpt: String, reply: &str) {
        let r = Refusal {
            conn_id: self.id,
            stage,
            rcpt,
            reply: reply.to_string(),
        };
        self.shared.update(|s| s.refusals.push(r));
    }

    async fn mail(&mut self, arg: &str) -> Step {
        if self.helo.is_none() {
            return self.say("503 5.5.1 say EHLO first").await;
        }
        if self.cfg.auth.is_some() && self.auth.is_none() {
            let reply = "530 5.7.0 Authentication required";
            self.refuse("MAIL", String::new(), reply);
            return self.say(reply).await;
        }
        if self.txn.is_some() {
            return self.say("503 5.5.1 nested MAIL").await;
        }
        let Some((addr, params)) = path_arg(arg, "FROM:") else {
            return self.say("501 5.5.4 syntax: MAIL FROM:<address>").await;
        };
        self.txn = Some(Txn {
            mail_from: addr,
            mail_params: params,
            ..Default::default()
        });
        self.say("250 2.1.0 sender OK").await
    }

    async fn rcpt(&mut self, arg: &str) -> Step {
        if self.txn.is_none() {
            return self.say("503 5.5.1 MAIL first").await;
        }
        let Some((addr, params)) = path_arg(arg, "TO:") else {
            return self.say("501 5.5.4 syntax: RCPT TO:<address>").await;
        };
        if let Some((_, reply)) = self.cfg.rcpt_rules.iter().find(|(s, _)| addr.contains(s.as_str())) {
            let reply = reply.clone();
            self.refuse("RCPT", addr, &reply);
            return self.say(&reply).await;
        }
        let txn = self.txn.as_mut().unwrap();
        txn.rcpts.push(addr);
        txn.rcpt_params.push(params);
        self.say("250 2.1.5 recipient OK").await
    }

    async fn data(&mut self) -> Step {
        match &self.txn {
            None => return self.say("503 5.5.1 MAIL first").await,
            Some(t) if t.rcpts.is_empty() => return self.say("554 5.5.1 no valid recipients").await,
            Some(_) => {}
        }
        let txn = self.txn.take().unwrap();
        if take_one(&self.shared.data_dropped, self.cfg.drop_in_data) {
            self.say("354 go ahead").await?;
            if self.input.is_empty() {
                let _ = self.fill().await;
            }
            self.refuse("DROP", txn.rcpts.join(","), "");
            return Err(End::Closed);
        }
        self.say("354 go ahead, end with <CRLF>.<CRLF>").await?;
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            if line == b".\r\n" {
                break;
            }
            match line.strip_prefix(b".") {
                Some(rest) => body.extend_from_slice(rest),
                None => body.extend_from_slice(&line),
            }
        }
        if let Some(d) = self.cfg.reply_delay {
            self.shared.replies_delayed.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(d).await;
        }
        let n = txn.rcpts.len();
        if let Some((count, reply)) = self.cfg.fail_data.clone() {
            if take_one(&self.shared.data_failed, count) {
                self.refuse("DATA", txn.rcpts.join(","), &reply);
                let times = if self.cfg.lmtp { n } else { 1 };
                for _ in 0..times {
                    self.say(&reply).await?;
                }
                return Ok(());
            }
        }
        let rule = |a: &str| {
            self.cfg
                .data_rules
                .iter()
                .find(|(s, _)| a.contains(s.as_str()))
                .map(|(_, r)| r.clone())
        };
        let mut accepted = Vec::new();
        let mut replies = Vec::new();
        if self.cfg.lmtp {
            for (i, a) in txn.rcpts.iter().enumerate() {
                match rule(a) {
                    Some(r) => {
                        self.refuse("DATA", a.clone(), &r);
                        replies.push(r);
                    }
                    None => {
                        accepted.push(i);
                        replies.push(format!("250 2.1.5 <{a}> delivered"));
                    }
                }
            }
        } else {
            match txn.rcpts.iter().find_map(|a| rule(a)) {
                Some(r) => {
                    self.refuse("DATA", txn.rcpts.join(","), &r);
                    replies.push(r);
                }
                None => {
                    accepted = (0..n).collect();
                    replies.push(format!("250 2.0.0 queued as {}.{}", self.id, self.seq + 1));
                }
            }
        }
        if !accepted.is_empty() {
            self.seq += 1;
            let m = Received {
                conn_id: self.id,
                helo: self.helo.clone().unwrap_or_default(),
                mail_from: txn.mail_from.clone(),
                mail_params: txn.mail_params.clone(),
                rcpts: accepted.iter().map(|&i| txn.rcpts[i].clone()).collect(),
                rcpt_params: accepted.iter().map(|&i| txn.rcpt_params[i].clone()).collect(),
                body,
                tls: self.tls,
                auth_user: self.auth.as_ref().map(|a| a.0.clone()),
                auth_mechanism: self.auth.as_ref().map(|a| a.1.clone()),
                lmtp: self.cfg.lmtp,
                seq_on_conn: self.seq,
            };
            self.shared.update(|s| s.messages.push(m));
        }
        let mut out = String::new();
        for r in replies {
            out.push_str(&r);
            out.push_str("\r\n");
        }
        self.stream.write_all(out.as_bytes()).await.map_err(|_| End::Closed)
    }
}

/// Take one unit of a shared budget of `limit`; false when it is used up.
fn take_one(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| (v < limit).then_some(v + 1))
        .is_ok()
}

/// `FROM:<addr> params` → (addr, params); the prefix is matched without case.
fn path_arg(arg: &str, prefix: &str) -> Option<(String, String)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((rest[..end].to_string(), rest[end + 1..].trim().to_string()))
}

/// Standard base64 (RFC 4648 4), padding optional; `None` on any other byte.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
