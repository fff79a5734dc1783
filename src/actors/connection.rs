//! The Connection actor: owns one client socket and its [`Session`], runs hooks, streams the
//! body to a Transaction actor and writes replies. It is a thin loop around the sans-IO
//! session: read → `session.next()` → act → write.
//!
//! Panics in plugins or in the session are caught here, counted, and answered with
//! `421 4.3.0`; the worker and every other connection keep running.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::transaction::{Chunk, Commit, TransactionActor};
use super::txn_log::TxnLog;
use crate::config::tls::InboundTls;
use crate::hooks::state::TlsInfo;
use crate::hooks::{Connection, HookContext, PluginChain};
use crate::limits::ConnSlot;
use crate::metrics::{count_replies, inc, metrics};
use crate::protocol::deadline::{Deadline, DeadlineConfig, Deadlines};
use crate::protocol::session::{Action, CommitError, Session, SessionConfig};
use crate::protocol::Reply;
use crate::queue::spool::{CommitRequest, Spool};

/// The plugin chain, swapped as a whole on reload; readers clone the `Arc`.
pub type ChainCell = Arc<std::sync::RwLock<Arc<PluginChain>>>;

/// What every connection of a worker shares.
pub struct Shared {
    /// Plugins and session settings: each connection takes a snapshot when it starts, so a
    /// reload never changes the rules in the middle of a session.
    pub chain: ChainCell,
    pub session: std::sync::RwLock<Arc<SessionConfig>>,
    pub spool: Arc<Spool>,
    pub spool_after: usize,
    /// `actors.ini`: transaction mailbox and commit concurrency.
    pub txn_limits: super::transaction::TxnLimits,
    pub inactivity: Duration,
    /// Where committed messages are handed over for delivery.
    pub queue: std::sync::OnceLock<Addr<super::queue_manager::QueueManager>>,
    /// Set to true when the daemon shuts down gracefully.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Where the control socket sends `posta reload` (set by `server::run`).
    pub reload: std::sync::OnceLock<tokio::sync::mpsc::Sender<super::control::ReloadAsk>>,
    /// Inbound TLS (the `tls` plugin), swapped on reload: new sessions get renewed certificates.
    pub tls: std::sync::RwLock<Option<InboundTls>>,
    /// Connection limits, checked by the listener (`connection.ini [max] connections*`).
    pub limits: Arc<crate::limits::ConnLimits>,
    /// AUTH failures per client address over all connections (`auth.ini lockout_*`).
    pub auth_lockout: crate::limits::AuthLockout,
    /// Held for writing while a reload swaps the plugins, session settings, TLS, limits and
    /// deadlines, and for reading while a new connection takes its copies of them: so a
    /// connection gets all old or all new settings. Always taken before those locks.
    pub swap: std::sync::RwLock<()>,
    /// Slow-client deadlines (`connection.ini [deadline]`), swapped on reload; a connection
    /// keeps the ones it started with.
    pub deadlines: std::sync::RwLock<DeadlineConfig>,
}

impl Shared {
    /// The current plugin chain and session settings.
    pub fn snapshot(&self) -> (Arc<PluginChain>, Arc<SessionConfig>) {
        let chain = self.chain.read().unwrap_or_else(|p| p.into_inner()).clone();
        let session = self.session.read().unwrap_or_else(|p| p.into_inner()).clone();
        (chain, session)
    }

    /// The current TLS server configs, if TLS is on.
    pub fn tls(&self) -> Option<InboundTls> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swap in new TLS server configs (reload).
    pub fn replace_tls(&self, tls: Option<InboundTls>) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// Swap in a new plugin chain and session settings (reload).
    pub fn replace(&self, chain: PluginChain, session: SessionConfig) {
        *self.chain.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(chain);
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(session);
    }
}

pub struct ConnectionActor {
    driver: Option<Driver>,
}

impl ConnectionActor {
    /// `implicit_tls`: the listener is on `smtps_port`, the handshake comes before the banner.
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        shared: Arc<Shared>,
        implicit_tls: bool,
    ) -> Self {
        let conn = Connection::new(peer, local);
        let (chain, cfg, tls, deadline_cfg) = {
            let _consistent = shared.swap.read().unwrap_or_else(|p| p.into_inner());
            let (chain, cfg) = shared.snapshot();
            let deadlines = shared.deadlines.read().unwrap_or_else(|p| p.into_inner()).clone();
            (chain, cfg, shared.tls(), deadlines)
        };
        let session = Session::new(cfg, conn);
        let started = std::time::Instant::now();
        ConnectionActor {
            driver: Some(Driver {
                stream: Stream::Plain(stream),
                session,
                chain,
                deadlines: Deadlines::new(deadline_cfg, started),
                shared,
                tls,
                implicit_tls,
                txn: None,
                greeted: false,
                started,
                txn_log: None,
                slot: None,
                client_ip: None,
                auth_failures_counted: 0,
            }),
        }
    }

    /// Hold `slot` for as long as this connection lives.
    pub fn with_slot(mut self, slot: ConnSlot) -> Self {
        if let Some(d) = &mut self.driver {
            d.slot = Some(slot);
        }
        self
    }
}

impl Actor for ConnectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        inc(&metrics().connection.started);
        if let Some(driver) = self.driver.take() {
            // Every log line of this connection carries its uuid (Haraka's connection uuid;
            // transactions are `<uuid>.<n>`), so one grep finds a whole session. `ip` is set
            // by the driver, once a PROXY header (if any) has named the client.
            let conn = driver.session.conn();
            let span = tracing::info_span!("conn", uuid = %conn.uuid, ip = tracing::field::Empty);
            let run = tracing::Instrument::instrument(driver.run(), span);
            // Everything the session does runs inside this boundary: a panic anywhere in it
            // ends this connection only (the session's own panics are answered 421 inside).
            let fut = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run));
            ctx.spawn(fut.into_actor(self).map(|res, _, ctx| {
                if res.is_err() {
                    inc(&metrics().connection.panics);
                    tracing::error!("panic in a connection, connection dropped");
                }
                ctx.stop()
            }));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        inc(&metrics().connection.stopped);
    }
}

/// How long closing a connection may wait for the peer (TLS close_notify).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

thread_local! {
    /// One read buffer per worker thread: an idle connection holds no buffer of its own.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Bytes a TLS connection reads at a time (its own buffer: rustls has one per connection too).
const TLS_READ_BUF: usize = 16 * 1024;

/// The client socket: plain TCP until a handshake, then TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, Vec<u8>),
    /// A failed handshake consumed the socket.
    Gone,
}

impl Stream {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(b).await,
            Stream::Tls(s, _) => {
                s.write_all(b).await?;
                s.flush().await
            }
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    /// Close our side. Bounded: a TLS close_notify waits for the peer to take the bytes
    /// still queued, and a peer that never reads must not keep the connection (and its limit
    /// slot) forever.
    async fn shutdown(&mut self) {
        let close = async {
            match self {
                Stream::Plain(s) => s.shutdown().await,
                Stream::Tls(s, _) => s.shutdown().await,
                Stream::Gone => Ok(()),
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, close).await;
    }

    /// Wait for input: `None` when a plain socket is readable (read it with `try_read`),
    /// `Some(n)` when `n` bytes were read into the TLS buffer.
    async fn ready(&mut self) -> std::io::Result<Option<usize>> {
        match self {
            Stream::Plain(s) => s.readable().await.map(|()| None),
            Stream::Tls(s, buf) => s.read(buf).await.map(Some),
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

/// The connection loop's state, moved into the actor's future.
struct Driver {
    stream: Stream,
    session: Session,
    chain: Arc<PluginChain>,
    shared: Arc<Shared>,
    /// TLS configs as they were when the connection started.
    tls: Option<InboundTls>,
    implicit_tls: bool,
    txn: Option<Addr<TransactionActor>>,
    greeted: bool,
    started: std::time::Instant,
    /// The transaction being followed for its log line.
    txn_log: Option<super::txn_log::TxnLog>,
    deadlines: Deadlines,
    /// This connection's place under the connection limits, given back when the driver is
    /// dropped: at the end of the session, or when a panic ends it. A PROXY/XCLIENT client
    /// address is counted with `slot.attach_ip`.
    slot: Option<ConnSlot>,
    /// The client the slot counts (XCLIENT may name another one).
    client_ip: Option<std::net::IpAddr>,
    /// The session's AUTH failure count already added to `shared.auth_lockout`.
    auth_failures_counted: u32,
}

impl Driver {
    async fn run(mut self) {
        // A listed proxy's PROXY header comes first: it says who the client is.
        if let Stream::Plain(tcp) = &mut self.stream {
            if !super::proxy::accept(tcp, &mut self.session).await {
                return;
            }
        }
        let ip = self.session.conn().remote.ip;
        tracing::Span::current().record("ip", tracing::field::display(ip));
        if !self.attach_slot().await {
            return;
        }
        self.client_ip = Some(ip);
        if self.implicit_tls {
            match self.handshake().await {
                Ok(info) => self.session.tls_started(info),
                Err(()) => return self.summary(),
            }
        }
        loop {
            let action = match std::panic::catch_unwind(AssertUnwindSafe(|| self.session.next_action())) {
                Ok(a) => a,
                Err(_) => return self.internal_error("session").await,
            };
            match action {
                Action::Hook(h) => {
                    if !self.hook(h).await {
                        return;
                    }
                }
                Action::Body(bytes) => self.body(bytes).await,
                Action::Commit => self.commit().await,
                Action::Discard => self.txn = None,
                Action::NeedInput => self.input().await,
                Action::StartTls { discarded } => self.start_tls(discarded).await,
                Action::Close => {
                    self.count_auth_failures();
                    return self.close().await;
                }
                Action::Pause(d) => tokio::time::sleep(d).await,
            }
            TxnLog::track(&mut self.txn_log, self.session.txn());
            self.count_auth_failures();
            self.follow_client();
        }
    }

    /// A connection from a listed proxy was admitted under the total limit only: count the
    /// client its PROXY header named under the per-address limits now. False: refused (421).
    async fn attach_slot(&mut self) -> bool {
        let ip = self.session.conn().remote.ip;
        let Some(slot) = self.slot.as_mut().filter(|s| !s.has_ip()) else {
            return true;
        };
        let Err(r) = slot.attach_ip(ip) else {
            return true;
        };
        metrics().limits.refused(r);
        tracing::info!(client = %ip, limit = r.label(), "connection refused by a limit (client named by PROXY)");
        if let Ok(Ok(())) = tokio::time::timeout(self.shared.inactivity, self.stream.write_all(r.reply())).await {
            count_replies(metrics(), r.reply());
        }
        self.stream.shutdown().await;
        false
    }

    /// XCLIENT named another client: count the connection under that address from now on
    /// (a limit it exceeds ends the session with the limit's `421`).
    fn follow_client(&mut self) {
        let ip = self.session.conn().remote.ip;
        if self.client_ip == Some(ip) {
            return;
        }
        self.client_ip = Some(ip);
        let Some(slot) = self.slot.as_mut() else {
            return;
        };
        if let Err(r) = slot.attach_ip(ip) {
            metrics().limits.refused(r);
            tracing::info!(client = %ip, limit = r.label(), "connection refused by a limit (client named by XCLIENT)");
            self.session.refuse_and_close(r.reply());
        }
    }

    /// Add the session's new AUTH failures (those outside a checked attempt: a SASL exchange
    /// the server refused itself) to its client address's count over all connections.
    fn count_auth_failures(&mut self) {
        let n = self.session.conn().auth_failures;
        if n > self.auth_failures_counted {
            let auth = &self.session.config().auth;
            let ip = self.session.conn().remote.ip;
            let (max, window) = (auth.lockout_failures, auth.lockout_window);
            if !self.auth_lockout_exempt(ip) {
                self.shared
                    .auth_lockout
                    .failed(ip, n - self.auth_failures_counted, max, window);
            }
        }
        self.auth_failures_counted = n;
    }

    /// `connection.ini [max] connections_exempt` also exempts from the AUTH lockout.
    fn auth_lockout_exempt(&self, ip: std::net::IpAddr) -> bool {
        let cfg = self.shared.limits.config();
        cfg.exempt.iter().any(|n| n.contains(&ip.to_canonical()))
    }

    /// Run the auth hook under `auth.ini lockout_*`: an address that reached the limit gets
    /// `454 4.7.0` and a close without its credentials being checked; otherwise the attempt
    /// holds a place while it is checked, and its outcome is counted.
    async fn auth_hook(&mut self, hook: crate::hooks::Hook, user: &str) -> bool {
        let auth = &self.session.config().auth;
        let (max, window) = (auth.lockout_failures, auth.lockout_window);
        let ip = self.session.conn().remote.ip;
        let guarded = max > 0 && !self.auth_lockout_exempt(ip);
        if guarded && !self.shared.auth_lockout.begin(ip, max, window) {
            metrics()
                .limits
                .auth_lockouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(client = %ip, user = %user, "auth refused: too many failures from this address");
            self.session.hook_done(crate::hooks::HookResult::with_msg(
                crate::hooks::Outcome::DenySoftDisconnect,
                "Too many authentication failures from your address, try again later",
            ));
            return true;
        }
        let ok = self.run_chain(hook).await;
        if guarded {
            let n = self.session.conn().auth_failures;
            let new = n.saturating_sub(self.auth_failures_counted);
            self.auth_failures_counted = n;
            self.shared.auth_lockout.end(ip, new, max, window);
        }
        ok
    }

    /// Run the plugin chain; false when a plugin panicked (the connection is then closed).
    async fn hook(&mut self, hook: crate::hooks::Hook) -> bool {
        if let crate::hooks::Hook::Auth(a) = &hook {
            let user = a.user.clone();
            return self.auth_hook(hook, &user).await;
        }
        self.run_chain(hook).await
    }

    async fn run_chain(&mut self, hook: crate::hooks::Hook) -> bool {
        if hook == crate::hooks::Hook::ConnectInit {
            super::proxy::log_xclient(self.session.conn());
        }
        let chain = self.chain.clone();
        let span = TxnLog::span(self.session.txn());
        let (conn, txn) = self.session.states_mut();
        let mut cx = HookContext { conn, txn };
        match tracing::Instrument::instrument(chain.run(&hook, &mut cx), span).await {
            Ok(r) => {
                if let crate::hooks::Hook::Auth(a) = &hook {
                    // User and mechanism only: the credential never reaches a log line.
                    tracing::info!(user = %a.user, mechanism = %a.mechanism, outcome = %r.outcome, "auth");
                }
                self.session.hook_done(r);
                true
            }
            Err(p) => {
                tracing::error!(uuid = %self.session.conn().uuid, error = %p, "plugin panic");
                self.internal_error(p.hook).await;
                false
            }
        }
    }

    /// STARTTLS accepted: `220 Go ahead` out, then the handshake (RFC 3207).
    async fn start_tls(&mut self, discarded: usize) {
        if discarded > 0 {
            metrics()
                .starttls_discarded_bytes
                .fetch_add(discarded as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(bytes = discarded, "input pipelined after STARTTLS discarded");
        }
        if !self.flush().await {
            return self.session.peer_closed();
        }
        match self.handshake().await {
            Ok(info) => self.session.tls_started(info),
            Err(()) => self.session.peer_closed(),
        }
    }

    /// The TLS handshake on the plain socket, within the inactivity timeout. Failures are
    /// logged and counted; the socket is gone afterwards.
    async fn handshake(&mut self) -> Result<TlsInfo, ()> {
        let stream = std::mem::replace(&mut self.stream, Stream::Gone);
        let (Stream::Plain(tcp), Some(tls)) = (stream, &self.tls) else {
            tracing::error!("TLS handshake asked for without TLS configured");
            return Err(());
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.for_port(self.session.conn().local.port()));
        let result = tokio::time::timeout(self.shared.inactivity, acceptor.accept(tcp)).await;
        let s = match result {
            Ok(Ok(s)) => s,
            Err(_) => return handshake_failed("timed out".into()),
            Ok(Err(e)) => return handshake_failed(e.to_string()),
        };
        inc(&metrics().tls_handshakes);
        let info = tls_info(s.get_ref().1);
        let sni = info.sni.as_deref().unwrap_or("");
        tracing::info!(version = %info.version, cipher = %info.cipher, sni, "TLS started");
        self.stream = Stream::Tls(Box::new(s), vec![0; TLS_READ_BUF]);
        Ok(info)
    }

    async fn internal_error(&mut self, what: &str) {
        inc(&metrics().connection.panics);
        tracing::error!(uuid = %self.session.conn().uuid, what, "panic caught, closing connection");
        let mut out = Vec::new();
        Reply::ext(421, (4, 3, 0), "Internal error, closing connection").write_to(&mut out);
        if let Ok(Ok(())) = tokio::time::timeout(self.shared.inactivity, self.stream.write_all(&out)).await {
            count_replies(metrics(), &out);
        }
        self.stream.shutdown().await;
    }

    fn transaction(&mut self) -> Addr<TransactionActor> {
        if let Some(a) = &self.txn {
            return a.clone();
        }
        let uuid = self.session.txn().map(|t| t.uuid.clone()).unwrap_or_default();
        let actor = TransactionActor::new(
            self.shared.spool.clone(),
            self.shared.spool_after,
            self.shared.txn_limits.clone(),
            uuid,
        );
        let addr = actor.start();
        self.txn = Some(addr.clone());
        addr
    }

    /// Stream body bytes to the Transaction actor; `send` waits when its mailbox is full.
    async fn body(&mut self, bytes: Vec<u8>) {
        let addr = self.transaction();
        if addr.send(Chunk::new(bytes)).await.is_err() {
            tracing::warn!(uuid = %self.session.conn().uuid, "transaction actor gone");
        }
    }

    async fn commit(&mut self) {
        self.flush().await;
        let Some(txn) = self.session.txn() else {
            return self
                .session
                .commit_done(Err(CommitError::Temporary("no transaction".into())));
        };
        let req = CommitRequest {
            uuid: txn.uuid.clone(),
            mail_from: txn.mail_from.clone(),
            mail_params: txn.mail_params.clone(),
            rcpt_to: txn.rcpt_to.clone(),
            notes: txn.notes.clone(),
            // Haraka's queue_time is when the queue file is built.
            queue_time: crate::hooks::state::now_ms(),
        };
        let addr = self.transaction();
        self.txn = None;
        let r = match addr.send(Commit::new(req)).await {
            Ok(r) => r,
            Err(e) => Err(CommitError::Temporary(e.to_string())),
        };
        if let (Ok(names), Some(q)) = (&r, self.shared.queue.get()) {
            // Bounded mailbox: hand over without waiting when there is room, else wait for
            // room rather than queue without limit.
            if let Err(actix::prelude::SendError::Full(m)) =
                q.try_send(super::queue_manager::Enqueue::new(names.clone()))
            {
                let _ = q.send(m).await;
            }
        }
        if let Ok(names) = &r {
            TxnLog::queued(&mut self.txn_log, &names.join(","));
        }
        self.session.commit_done(r.map(|names| names.join(",")));
    }

    /// Write pending replies; false when the client is gone or stuck.
    async fn flush(&mut self) -> bool {
        if !self.session.has_output() {
            return true;
        }
        let out = self.session.take_output();
        let sent = matches!(
            tokio::time::timeout(self.shared.inactivity, self.stream.write_all(&out)).await,
            Ok(Ok(()))
        );
        if sent {
            count_replies(metrics(), &out);
        }
        sent
    }

    async fn input(&mut self) {
        if !self.greeted {
            self.greeted = true;
            self.early_input();
        }
        if !self.flush().await {
            return self.session.peer_closed();
        }
        let mut stop = self.shared.shutdown.subscribe();
        let idle = self.session.is_between_messages();
        if idle && *stop.borrow_and_update() {
            return self.session.shutting_down();
        }
        let (until, deadline) = self.wait_until();
        tokio::select! {
            r = tokio::time::timeout_at(until, self.stream.ready()) => match (r, deadline) {
                (Err(_), Some(d)) => self.deadline_passed(d),
                (Err(_), None) => self.session.timed_out(),
                (Ok(Err(_)), _) | (Ok(Ok(Some(0))), _) => self.session.peer_closed(),
                (Ok(Ok(None)), _) => self.read_ready(),
                (Ok(Ok(Some(n))), _) => self.tls_read(n),
            },
            // A graceful shutdown ends idle sessions; a message being received finishes first.
            _ = stop.changed(), if idle => self.session.shutting_down(),
        }
    }

    /// `n` bytes arrived in the TLS buffer.
    fn tls_read(&mut self, n: usize) {
        if let Stream::Tls(_, buf) = &self.stream {
            self.deadlines.received(n);
            self.session.receive(&buf[..n.min(buf.len())]);
        }
    }

    /// How long to wait for input: the inactivity timeout, or the next slow-client deadline
    /// when it comes first (then also which one).
    fn wait_until(&mut self) -> (tokio::time::Instant, Option<Deadline>) {
        let now = std::time::Instant::now();
        let idle_until = now + self.shared.inactivity;
        let (until, deadline) = match self.deadlines.next(self.session.progress(), now) {
            Some((t, d)) if t < idle_until => (t, Some(d)),
            _ => (idle_until, None),
        };
        (tokio::time::Instant::from_std(until), deadline)
    }

    fn deadline_passed(&mut self, d: Deadline) {
        metrics().limits.deadline(d);
        tracing::info!(deadline = d.label(), "slow client: deadline passed, closing");
        self.session.deadline_passed(d);
    }

    /// Input already waiting before the banner went out: an early talker. (Plain only: on
    /// TLS nothing can be read without waiting.)
    fn early_input(&mut self) {
        let Stream::Plain(stream) = &self.stream else {
            return;
        };
        READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            if let Ok(n) = stream.try_read(&mut b) {
                if n == 0 {
                    self.session.peer_closed();
                } else {
                    self.session.receive_early(&b[..n]);
                }
            }
        });
    }

    fn read_ready(&mut self) {
        let Stream::Plain(stream) = &self.stream else {
            return;
        };
        READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            match stream.try_read(&mut b) {
                Ok(0) => self.session.peer_closed(),
                Ok(n) => {
                    self.deadlines.received(n);
                    self.session.receive(&b[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => self.session.peer_closed(),
            }
        });
    }

    async fn close(mut self) {
        TxnLog::end(&mut self.txn_log);
        self.txn = None;
        self.flush().await;
        self.stream.shutdown().await;
        self.summary();
    }

    /// One line per connection, with what Haraka's disconnect line carries.
    fn summary(&self) {
        let c = self.session.conn();
        metrics()
            .smtp_transactions
            .fetch_add(u64::from(c.tran_count), std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            helo = c.hello.as_ref().map(|h| h.host.as_str()).unwrap_or(""),
            relay = c.relaying,
            auth_user = c.auth_user.as_deref().unwrap_or(""),
            early = c.early_talker,
            esmtp = c.esmtp(),
            tls = c.tls,
            tls_version = c.tls_info.as_ref().map(|t| t.version.as_str()).unwrap_or(""),
            tls_cipher = c.tls_info.as_ref().map(|t| t.cipher.as_str()).unwrap_or(""),
            pipe = c.pipelining,
            errors = c.errors,
            txns = c.tran_count,
            msgs = c.msgs_accepted,
            time_ms = self.started.elapsed().as_millis() as u64,
            "disconnect"
        );
    }
}

/// A handshake that failed or timed out: logged (the client's problem, so at info) and counted.
fn handshake_failed(why: String) -> Result<TlsInfo, ()> {
    inc(&metrics().tls_handshake_failures);
    tracing::info!(error = %why, "TLS handshake failed, closing connection");
    Err(())
}

/// What a finished handshake settled.
fn tls_info(c: &rustls::ServerConnection) -> TlsInfo {
    let version = match c.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => String::new(),
    };
    TlsInfo {
        version,
        cipher: c
            .negotiated_cipher_suite()
            .map(crate::config::tls::suite_name)
            .unwrap_or_default(),
        sni: c.server_name().map(String::from),
        verified_client: c.peer_certificates().is_some_and(|p| !p.is_empty()),
    }
}
