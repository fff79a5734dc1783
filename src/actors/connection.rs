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
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::transaction::{Chunk, Commit, TransactionActor};
use crate::hooks::{Connection, HookContext, PluginChain};
use crate::metrics::{count_replies, inc, metrics};
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
    pub inactivity: Duration,
    /// Where committed messages are handed over for delivery.
    pub queue: std::sync::OnceLock<Addr<super::queue_manager::QueueManager>>,
    /// Set to true when the daemon shuts down gracefully.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// The current plugin chain and session settings.
    pub fn snapshot(&self) -> (Arc<PluginChain>, Arc<SessionConfig>) {
        let chain = self.chain.read().unwrap_or_else(|p| p.into_inner()).clone();
        let session = self.session.read().unwrap_or_else(|p| p.into_inner()).clone();
        (chain, session)
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
    pub fn new(stream: TcpStream, peer: SocketAddr, local: SocketAddr, shared: Arc<Shared>) -> Self {
        let conn = Connection::new(peer, local);
        let (chain, cfg) = shared.snapshot();
        let session = Session::new(cfg, conn);
        ConnectionActor {
            driver: Some(Driver {
                stream,
                session,
                chain,
                shared,
                txn: None,
                greeted: false,
                started: std::time::Instant::now(),
            }),
        }
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

thread_local! {
    /// One read buffer per worker thread: an idle connection holds no buffer of its own.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// The connection loop's state, moved into the actor's future.
struct Driver {
    stream: TcpStream,
    session: Session,
    chain: Arc<PluginChain>,
    shared: Arc<Shared>,
    txn: Option<Addr<TransactionActor>>,
    greeted: bool,
    started: std::time::Instant,
}

impl Driver {
    async fn run(mut self) {
        // A listed proxy's PROXY header comes first: it says who the client is.
        if !super::proxy::accept(&mut self.stream, &mut self.session).await {
            return;
        }
        let ip = self.session.conn().remote.ip;
        tracing::Span::current().record("ip", tracing::field::display(ip));
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
                Action::Close => return self.close().await,
            }
        }
    }

    /// Run the plugin chain; false when a plugin panicked (the connection is then closed).
    async fn hook(&mut self, hook: crate::hooks::Hook) -> bool {
        if hook == crate::hooks::Hook::ConnectInit {
            super::proxy::log_xclient(self.session.conn());
        }
        let chain = self.chain.clone();
        let (conn, txn) = self.session.states_mut();
        let mut cx = HookContext { conn, txn };
        match chain.run(&hook, &mut cx).await {
            Ok(r) => {
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

    async fn internal_error(&mut self, what: &str) {
        inc(&metrics().connection.panics);
        tracing::error!(uuid = %self.session.conn().uuid, what, "panic caught, closing connection");
        let mut out = Vec::new();
        Reply::ext(421, (4, 3, 0), "Internal error, closing connection").write_to(&mut out);
        if let Ok(Ok(())) = tokio::time::timeout(self.shared.inactivity, self.stream.write_all(&out)).await {
            count_replies(metrics(), &out);
        }
        let _ = self.stream.shutdown().await;
    }

    fn transaction(&mut self) -> Addr<TransactionActor> {
        if let Some(a) = &self.txn {
            return a.clone();
        }
        let uuid = self.session.txn().map(|t| t.uuid.clone()).unwrap_or_default();
        let actor = TransactionActor::new(self.shared.spool.clone(), self.shared.spool_after, uuid);
        let addr = actor.start();
        self.txn = Some(addr.clone());
        addr
    }

    /// Stream body bytes to the Transaction actor; `send` waits when its mailbox is full.
    async fn body(&mut self, bytes: Vec<u8>) {
        let addr = self.transaction();
        if addr.send(Chunk(bytes)).await.is_err() {
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
        let r = match addr.send(Commit(req)).await {
            Ok(r) => r,
            Err(e) => Err(CommitError::Temporary(e.to_string())),
        };
        if let (Ok(names), Some(q)) = (&r, self.shared.queue.get()) {
            // Bounded mailbox: hand over without waiting when there is room, else wait for
            // room rather than queue without limit.
            if let Err(actix::prelude::SendError::Full(m)) = q.try_send(super::queue_manager::Enqueue(names.clone())) {
                let _ = q.send(m).await;
            }
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
        tokio::select! {
            r = tokio::time::timeout(self.shared.inactivity, self.stream.readable()) => match r {
                Err(_) => self.session.timed_out(),
                Ok(Err(_)) => self.session.peer_closed(),
                Ok(Ok(())) => self.read_ready(),
            },
            // A graceful shutdown ends idle sessions; a message being received finishes first.
            _ = stop.changed(), if idle => self.session.shutting_down(),
        }
    }

    /// Input already waiting before the banner went out: an early talker.
    fn early_input(&mut self) {
        READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            if let Ok(n) = self.stream.try_read(&mut b) {
                if n == 0 {
                    self.session.peer_closed();
                } else {
                    self.session.receive_early(&b[..n]);
                }
            }
        });
    }

    fn read_ready(&mut self) {
        READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            match self.stream.try_read(&mut b) {
                Ok(0) => self.session.peer_closed(),
                Ok(n) => self.session.receive(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => self.session.peer_closed(),
            }
        });
    }

    async fn close(mut self) {
        self.txn = None;
        self.flush().await;
        let _ = self.stream.shutdown().await;
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
            early = c.early_talker,
            esmtp = c.esmtp(),
            tls = c.tls,
            pipe = c.pipelining,
            errors = c.errors,
            txns = c.tran_count,
            msgs = c.msgs_accepted,
            time_ms = self.started.elapsed().as_millis() as u64,
            "disconnect"
        );
    }
}
