//! The RemoteMx actor: one per destination (host, port, transport, AUTH). It keeps a pool of
//! connected client sessions that are reused for further messages (RSET between them, up to
//! `max_deliveries_per_connection`, closed after `pool_idle_timeout`), and caps concurrent
//! sessions to this destination at `max_connections_per_mx`. An actor with no delivery in
//! flight, no pooled session and no message for `pool_idle_timeout` stops itself, so a
//! long-running daemon keeps actors only for destinations it talks to.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;

use crate::config::OutboundConfig;
use crate::metrics::{inc, metrics, MailboxTicket};
use crate::protocol::client::{
    BodyTail, ClientAction, ClientConfig, ClientError, ClientSession, CloseReason, Envelope, MessageResult,
};

/// What identifies a destination and its pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MxKey {
    pub host: String,
    pub port: u16,
    pub lmtp: bool,
    pub auth: Option<(String, String)>,
}

/// Where the message body is: the queue file from `offset` on.
#[derive(Debug, Clone)]
pub struct BodySource {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// Deliver one message to this destination over one of `ips`.
#[derive(Message)]
#[rtype(result = "Result<Delivered, ClientError>")]
pub struct Deliver {
    pub ips: Vec<IpAddr>,
    pub envelope: Envelope,
    pub body: BodySource,
    pub ticket: MailboxTicket,
}

/// The per-recipient result and how it went.
#[derive(Debug)]
pub struct Delivered {
    pub result: MessageResult,
    pub ip: IpAddr,
    pub secured: bool,
    pub authenticated: bool,
    pub reused: bool,
    /// The next hop offered DSN (so NOTIFY/ORCPT went on with the message).
    pub dsn: bool,
}

/// Settings shared by every RemoteMx.
pub struct MxSettings {
    pub helo: String,
    pub outbound: OutboundConfig,
    pub tls: Arc<rustls::ClientConfig>,
    /// `actors.ini [mailbox] remote_mx`.
    pub mailbox: usize,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl Stream {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(b).await,
            Stream::Tls(s) => s.write_all(b).await,
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
    async fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b).await,
            Stream::Tls(s) => s.read(b).await,
            Stream::Gone => Ok(0),
        }
    }
}

/// One connected client session.
struct Conn {
    stream: Stream,
    session: ClientSession,
    ip: IpAddr,
    deliveries: u32,
    idle_since: Instant,
}

pub struct RemoteMx {
    key: MxKey,
    settings: Rc<MxSettings>,
    idle: Rc<RefCell<VecDeque<Conn>>>,
    slots: Arc<Semaphore>,
    /// Deliveries handed to this actor and not finished.
    in_flight: Rc<Cell<usize>>,
    /// When the last message was handled.
    last_used: Instant,
}

impl RemoteMx {
    pub fn new(key: MxKey, settings: Rc<MxSettings>) -> Self {
        let n = settings.outbound.max_connections_per_mx;
        RemoteMx {
            key,
            settings,
            idle: Rc::new(RefCell::new(VecDeque::new())),
            slots: Arc::new(Semaphore::new(n)),
            in_flight: Rc::new(Cell::new(0)),
            last_used: Instant::now(),
        }
    }

    /// Nothing in flight, nothing pooled, nothing asked for a whole `pool_idle_timeout`.
    fn unused(&self) -> bool {
        self.in_flight.get() == 0
            && self.idle.borrow().is_empty()
            && self.last_used.elapsed() >= self.settings.outbound.pool_idle_timeout
    }
}

/// Counts a delivery in flight until dropped (also when its future is dropped unfinished).
struct InFlight(Rc<Cell<usize>>);

impl InFlight {
    fn new(n: &Rc<Cell<usize>>) -> Self {
        n.set(n.get() + 1);
        InFlight(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl Actor for RemoteMx {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        inc(&metrics().remote_mx.started);
        ctx.set_mailbox_capacity(self.settings.mailbox);
        let every = self.settings.outbound.pool_idle_timeout.max(Duration::from_secs(1));
        // The mailbox is drained before interval callbacks run, so a message sent to this
        // actor is handled (and `last_used` set) before it can decide to stop.
        ctx.run_interval(every, |act, ctx| {
            prune(&act.idle, act.settings.outbound.pool_idle_timeout);
            if act.unused() {
                tracing::debug!(mx = %act.key.host, port = act.key.port, "remote MX actor unused: stopping");
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        inc(&metrics().remote_mx.stopped);
    }
}

/// Close pooled sessions that have been idle too long (QUIT is best effort).
fn prune(idle: &Rc<RefCell<VecDeque<Conn>>>, limit: Duration) {
    let mut pool = idle.borrow_mut();
    let before = pool.len();
    pool.retain(|c| c.idle_since.elapsed() < limit);
    if pool.len() < before {
        tracing::debug!(closed = before - pool.len(), "idle outbound sessions closed");
    }
}

impl Handler<Deliver> for RemoteMx {
    type Result = ResponseFuture<Result<Delivered, ClientError>>;

    fn handle(&mut self, mut msg: Deliver, _: &mut Self::Context) -> Self::Result {
        msg.ticket.taken();
        self.last_used = Instant::now();
        let in_flight = InFlight::new(&self.in_flight);
        let job = Job {
            key: self.key.clone(),
            settings: self.settings.clone(),
            idle: self.idle.clone(),
        };
        let slots = self.slots.clone();
        let wait = self.settings.outbound.reply_timeout;
        let entered = Instant::now();
        inc(&metrics().remote_mx.messages);
        Box::pin(async move {
            // Waiting for a session slot is bounded too: a stuck MX must not hold every
            // delivery slot of the queue.
            let permit = tokio::time::timeout(wait, slots.acquire_owned()).await;
            let res = match permit {
                Ok(Ok(_permit)) => job.deliver(msg).await,
                _ => Err(ClientError::Timeout),
            };
            metrics().remote_mx.handler_seconds.observe_since(entered);
            if res.is_err() {
                metrics().per_mx(&job.mx_label(), |c| inc(&c.failures));
            }
            drop(in_flight);
            res
        })
    }
}

/// One delivery on this destination's pool.
struct Job {
    key: MxKey,
    settings: Rc<MxSettings>,
    idle: Rc<RefCell<VecDeque<Conn>>>,
}

impl Job {
    /// The `mx` label of the per-MX metrics: `host:port`.
    fn mx_label(&self) -> String {
        format!("{}:{}", self.key.host, self.key.port)
    }

    async fn deliver(&self, msg: Deliver) -> Result<Delivered, ClientError> {
        // A pooled session may have been closed by the server meanwhile: then use a new one.
        while let Some(conn) = self.take_idle() {
            inc(&metrics().connections_reused);
            metrics().per_mx(&self.mx_label(), |c| inc(&c.reused));
            match self.send_on(conn, &msg, true).await {
                Err(Retry::Fresh) => continue,
                Err(Retry::Fail(e)) => return Err(e),
                Ok(d) => return Ok(d),
            }
        }
        let conn = self.connect_any(&msg.ips).await?;
        match self.send_on(conn, &msg, false).await {
            Ok(d) => Ok(d),
            Err(Retry::Fail(e)) => Err(e),
            Err(Retry::Fresh) => Err(ClientError::PeerClosed),
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let limit = self.settings.outbound.pool_idle_timeout;
        let mut pool = self.idle.borrow_mut();
        while let Some(c) = pool.pop_back() {
            if c.idle_since.elapsed() < limit {
                return Some(c);
            }
        }
        None
    }

    async fn send_on(&self, mut conn: Conn, msg: &Deliver, reused: bool) -> Result<Delivered, Retry> {
        if conn.session.start_message(msg.envelope.clone()).is_err() {
            return Err(Retry::Fresh);
        }
        let result = match self.drive(&mut conn, Some(&msg.body)).await {
            Ok(Some(r)) => r,
            // Nothing was answered on a reused session: it was stale, try a fresh one.
            Err(_) | Ok(None) if reused && conn.deliveries > 0 && !conn.session.is_ready() => return Err(Retry::Fresh),
            Ok(None) => return Err(Retry::Fail(ClientError::Aborted)),
            Err(e) => return Err(Retry::Fail(e)),
        };
        conn.deliveries += 1;
        let done = Delivered {
            result,
            ip: conn.ip,
            secured: conn.session.is_tls(),
            authenticated: conn.session.is_authenticated(),
            dsn: conn.session.capabilities().dsn,
            reused,
        };
        self.park(conn);
        Ok(done)
    }

    /// Keep a session for reuse, or close it when it has done enough.
    fn park(&self, mut conn: Conn) {
        let max = self.settings.outbound.max_deliveries_per_connection;
        if conn.session.is_ready() && conn.deliveries < max {
            conn.idle_since = Instant::now();
            self.idle.borrow_mut().push_back(conn);
        } else {
            conn.session.quit();
            actix_rt::spawn(async move {
                if let ClientAction::Send(b) = conn.session.next_action() {
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn.stream.write_all(&b)).await;
                }
            });
        }
    }

    async fn connect_any(&self, ips: &[IpAddr]) -> Result<Conn, ClientError> {
        let mut last = ClientError::PeerClosed;
        for ip in ips {
            let ob = &self.settings.outbound;
            let no_tls = ob
                .no_tls_hosts
                .iter()
                .any(|h| *h == self.key.host || *h == ip.to_string());
            match self.connect(*ip, ob.enable_tls && !no_tls).await {
                Ok(c) => return Ok(c),
                Err(e) if e.retry_without_tls() => match self.connect(*ip, false).await {
                    Ok(c) => return Ok(c),
                    Err(e) => last = e,
                },
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn connect(&self, ip: IpAddr, tls: bool) -> Result<Conn, ClientError> {
        let addr = SocketAddr::new(ip, self.key.port);
        let tcp = match tokio::time::timeout(self.settings.outbound.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "connect failed");
                return Err(ClientError::PeerClosed);
            }
            Err(_) => return Err(ClientError::Timeout),
        };
        let _ = tcp.set_nodelay(true);
        inc(&metrics().connections_opened);
        metrics().per_mx(&self.mx_label(), |c| inc(&c.opened));
        let mut cfg = ClientConfig::new(self.settings.helo.clone());
        cfg.lmtp = self.key.lmtp;
        cfg.want_tls = tls;
        cfg.auth = self.key.auth.clone();
        let mut conn = Conn {
            stream: Stream::Plain(tcp),
            session: ClientSession::new(cfg),
            ip,
            deliveries: 0,
            idle_since: Instant::now(),
        };
        self.drive(&mut conn, None).await?;
        Ok(conn)
    }

    /// Run the client session until it is Ready (`None`) or a message is done.
    async fn drive(&self, conn: &mut Conn, body: Option<&BodySource>) -> Result<Option<MessageResult>, ClientError> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match conn.session.next_action() {
                ClientAction::Send(b) => {
                    let limit = self.settings.outbound.reply_timeout;
                    if !matches!(tokio::time::timeout(limit, conn.stream.write_all(&b)).await, Ok(Ok(()))) {
                        conn.session.peer_closed();
                    }
                }
                ClientAction::NeedInput => self.read(conn, &mut buf).await,
                ClientAction::StartTls => self.start_tls(conn).await,
                ClientAction::Ready => return Ok(None),
                ClientAction::SendBody => {
                    // A peer that stops reading (zero window) must not hold the delivery.
                    let limit = self.settings.outbound.reply_timeout;
                    let ok = match body {
                        Some(b) => matches!(
                            tokio::time::timeout(limit, send_body(&mut conn.stream, b)).await,
                            Ok(Ok(()))
                        ),
                        None => false,
                    };
                    if ok {
                        conn.session.body_sent();
                    } else {
                        conn.session.peer_closed();
                    }
                }
                ClientAction::MessageDone(r) => return Ok(Some(r)),
                ClientAction::Closed(CloseReason::Quit) => return Err(ClientError::PeerClosed),
                ClientAction::Closed(CloseReason::Failed(e)) => return Err(e),
            }
        }
    }

    async fn read(&self, conn: &mut Conn, buf: &mut [u8]) {
        match tokio::time::timeout(self.settings.outbound.reply_timeout, conn.stream.read(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => conn.session.peer_closed(),
            Ok(Ok(n)) => conn.session.receive(&buf[..n]),
            Err(_) => conn.session.timed_out(),
        }
    }

    async fn start_tls(&self, conn: &mut Conn) {
        let Stream::Plain(tcp) = std::mem::replace(&mut conn.stream, Stream::Gone) else {
            return conn.session.tls_done(false);
        };
        let connector = tokio_rustls::TlsConnector::from(self.settings.tls.clone());
        let name = super::tls::server_name(&self.key.host, conn.ip);
        let limit = self.settings.outbound.connect_timeout;
        match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => {
                conn.stream = Stream::Tls(Box::new(tls));
                conn.session.tls_done(true);
            }
            _ => conn.session.tls_done(false),
        }
    }
}

enum Retry {
    /// The pooled session was stale: use a new connection.
    Fresh,
    Fail(ClientError),
}

/// Stream the stored message (already dot-stuffed CRLF) and the end-of-data line.
async fn send_body(stream: &mut Stream, body: &BodySource) -> std::io::Result<()> {
    let mut f = tokio::fs::File::open(&body.path).await?;
    f.seek(std::io::SeekFrom::Start(body.offset)).await?;
    let mut tail = BodyTail::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = body.len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        tail.update(&buf[..n]);
        stream.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    stream.write_all(tail.terminator()).await
}
