//! Starting the daemon: validate config, build the plugin chain, open the queue, bind the
//! listeners, and start one worker arbiter per `nodes` with its own listener.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::actors::connection::Shared;
use crate::actors::delivery_supervisor::{DeliverySupervisor, ReportTo};
use crate::actors::listener::Listener;
use crate::actors::queue_file::DeliveryCtx;
use crate::actors::queue_manager::{BounceCtx, QueueManager};
use crate::actors::resolver::Resolver;
use crate::config::{Config, ConfigError, IniFile};
use crate::hooks::PluginRegistry;
use crate::queue::Spool;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("queue directory {dir}: {source}")]
    Queue { dir: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Everything checked and bound, ready to run.
pub struct Prepared {
    shared: Arc<Shared>,
    cfg: Config,
    /// For each worker, its sockets (one per listen address), each with "implicit TLS".
    sockets: Vec<Vec<(std::net::TcpListener, bool)>>,
    pub local_addrs: Vec<SocketAddr>,
    /// The bound metrics endpoint (`metrics.ini [main] listen`), if configured.
    metrics: Option<std::net::TcpListener>,
    pub metrics_addr: Option<SocketAddr>,
}

/// Validate and bind (no threads started yet).
pub fn prepare(cfg: &Config, registry: &PluginRegistry) -> Result<Prepared, StartError> {
    let chain = registry.build(cfg)?;
    let tls = inbound_tls(cfg)?;
    let spool = Spool::open(&cfg.queue_dir, &cfg.me, cfg.no_fsync)
        .map_err(|source| StartError::Queue {
            dir: cfg.queue_dir.display().to_string(),
            source,
        })?
        .with_always_split(cfg.outbound.always_split);
    let shared = Arc::new(Shared {
        session: std::sync::RwLock::new(Arc::new(cfg.session_for(&chain))),
        chain: Arc::new(std::sync::RwLock::new(Arc::new(chain))),
        spool: Arc::new(spool),
        spool_after: cfg.spool_after,
        txn_limits: crate::actors::transaction::TxnLimits::new(&cfg.actors),
        inactivity: cfg.smtp.inactivity_timeout,
        queue: std::sync::OnceLock::new(),
        shutdown: tokio::sync::watch::channel(false).0,
        reload: std::sync::OnceLock::new(),
        tls: std::sync::RwLock::new(tls),
        limits: crate::limits::ConnLimits::new(cfg.limits.clone()),
        swap: std::sync::RwLock::new(()),
        auth_lockout: Default::default(),
        deadlines: std::sync::RwLock::new(cfg.deadlines.clone()),
    });
    let nodes = cfg.smtp.nodes.max(1);
    let mut sockets: Vec<Vec<(std::net::TcpListener, bool)>> = (0..nodes).map(|_| Vec::new()).collect();
    let mut local_addrs = Vec::new();
    for want in &cfg.smtp.listen {
        let implicit = want.port() == cfg.smtp.smtps_port;
        // Bind the first socket, then the others to the port it got (port 0 in tests).
        let first = bind(*want).map_err(|source| StartError::Listen { addr: *want, source })?;
        let addr = first
            .local_addr()
            .map_err(|source| StartError::Listen { addr: *want, source })?;
        sockets[0].push((first, implicit));
        for worker in sockets.iter_mut().skip(1) {
            worker.push((
                bind(addr).map_err(|source| StartError::Listen { addr, source })?,
                implicit,
            ));
        }
        local_addrs.push(addr);
    }
    let (metrics, metrics_addr) = match metrics_listen(&cfg.dir)? {
        Some(want) => {
            // Named after its config key: the SMTP listen errors look alike otherwise.
            let cannot = |e: std::io::Error| {
                ConfigError::new(
                    "metrics.ini",
                    Some("[main] listen".into()),
                    format!("cannot listen on {want}: {e}"),
                )
            };
            let l = bind_metrics(want).map_err(cannot)?;
            let addr = l.local_addr().map_err(cannot)?;
            (Some(l), Some(addr))
        }
        None => (None, None),
    };
    Ok(Prepared {
        shared,
        cfg: cfg.clone(),
        sockets,
        local_addrs,
        metrics,
        metrics_addr,
    })
}

/// The TLS server configs when the `tls` plugin is on. A listener on `smtps_port` without
/// them would speak plain SMTP where clients expect TLS: that is a config error.
pub fn inbound_tls(cfg: &Config) -> Result<Option<crate::config::tls::InboundTls>, ConfigError> {
    let tls = cfg.tls.as_ref().map(|t| t.server(&cfg.dir)).transpose()?;
    let smtps = cfg.smtp.listen.iter().any(|a| a.port() == cfg.smtp.smtps_port);
    if smtps && tls.is_none() {
        return Err(ConfigError::new(
            "smtp.ini",
            Some("[main] smtps_port".into()),
            format!(
                "a listener is on port {} (implicit TLS) but the tls plugin is not in config/plugins",
                cfg.smtp.smtps_port
            ),
        ));
    }
    Ok(tls)
}

/// `metrics.ini [main] listen`: where to serve `GET /metrics` (empty: nowhere). Loopback only
/// unless `[main] allow_remote=true`. `port` alone means `127.0.0.1:port`.
fn metrics_listen(dir: &std::path::Path) -> Result<Option<SocketAddr>, ConfigError> {
    let f = IniFile::load(dir, "metrics.ini")?;
    let allow_remote = f.bool("main", "allow_remote", false)?;
    let raw = f.string("main", "listen", "");
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let addr = if let Ok(port) = raw.parse::<u16>() {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else if let Some(port) = raw.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        raw.parse::<SocketAddr>().map_err(|_| {
            f.invalid(
                "main",
                "listen",
                format!("'{raw}' is not an address (expected ip:port, [ipv6]:port, localhost:port or port)"),
            )
        })?
    };
    if !addr.ip().to_canonical().is_loopback() && !allow_remote {
        return Err(f.invalid(
            "main",
            "listen",
            format!("{addr} is not a loopback address; set [main] allow_remote=true to expose metrics remotely"),
        ));
    }
    Ok(Some(addr))
}

/// The metrics socket: a plain bind (no `SO_REUSEPORT`, a second daemon must not share it).
fn bind_metrics(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

impl Prepared {
    /// Start the delivery arbiter (queue manager, supervisor, resolver, remote MXs), then
    /// the SMTP workers inside the current actix System.
    pub fn start_workers(self) -> Vec<Arbiter> {
        let delivery = Arbiter::new();
        let queue = start_delivery(&delivery, &self.cfg, &self.shared);
        let _ = self.shared.queue.set(queue.clone());
        let reload = self.shared.reload.get().cloned();
        crate::actors::control::start(&delivery, &self.cfg.queue_dir, queue.clone(), reload);
        if let Some(socket) = self.metrics {
            delivery.spawn(async move {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(l) => crate::actors::metrics_http::serve(l, Some(queue)).await,
                    Err(e) => tracing::error!(error = %e, "metrics endpoint: cannot use the socket"),
                }
            });
        }
        let mut arbiters = vec![delivery];
        for worker in self.sockets {
            let arbiter = Arbiter::new();
            let shared = self.shared.clone();
            arbiter.spawn_fn(move || {
                for (socket, implicit_tls) in worker {
                    Listener::new(socket, shared.clone(), implicit_tls).start();
                }
            });
            arbiters.push(arbiter);
        }
        arbiters
    }
}

/// Start the delivery side on its own arbiter; returns the QueueManager.
fn start_delivery(arbiter: &Arbiter, cfg: &Config, shared: &Arc<Shared>) -> Addr<QueueManager> {
    let cfg = cfg.clone();
    let chain = shared.chain.clone();
    let spool = shared.spool.clone();
    QueueManager::start_in_arbiter(&arbiter.handle(), move |ctx| {
        let ob = cfg.outbound.clone();
        let resolver = Resolver::new(&ob.nameservers)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "no usable DNS configuration; using 127.0.0.1:53");
                Resolver::new(&["127.0.0.1:53".parse().expect("literal address")])
                    .expect("resolver with a fixed server")
            })
            .with_concurrency(cfg.actors.resolver);
        let cx = std::rc::Rc::new(DeliveryCtx::new(
            cfg.queue_dir.clone(),
            cfg.me.clone(),
            chain,
            spool,
            resolver.start(),
            ob.clone(),
            cfg.bounce_template.clone(),
            cfg.actors.clone(),
        ));
        *cx.manager.borrow_mut() = Some(ctx.address());
        let sup_cx = cx.clone();
        let supervisor = actix::Supervisor::start(move |_| DeliverySupervisor::new(sup_cx));
        supervisor.do_send(ReportTo(ctx.address()));
        QueueManager::new(cfg.queue_dir.clone(), ob.concurrency_max, supervisor, ob.disabled)
            .with_bounce(BounceCtx {
                spool: cx.spool.clone(),
                me: cfg.me.clone(),
                template: cfg.bounce_template.clone(),
            })
            .with_delivery(cx)
    })
}

/// A daemon running on its own thread (tests and embedding).
pub struct RunningServer {
    pub local_addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    queue: Option<Addr<QueueManager>>,
    system: System,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The first listen address.
    pub fn addr(&self) -> SocketAddr {
        self.local_addrs[0]
    }

    /// Where `GET /metrics` is served, when `metrics.ini [main] listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Retry every queued item now (what SIGUSR1 does).
    pub fn flush_queue(&self) {
        if let Some(q) = &self.queue {
            q.do_send(crate::actors::queue_manager::Flush);
        }
    }

    /// Items waiting and in flight (blocks briefly on the delivery arbiter).
    pub fn queue_counts(&self) -> Option<crate::actors::queue_manager::QueueCounts> {
        let q = self.queue.clone()?;
        let (tx, rx) = std::sync::mpsc::channel();
        self.system.arbiter().spawn(async move {
            let _ = tx.send(q.send(crate::actors::queue_manager::Counts).await.ok());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).ok().flatten()
    }

    /// Stop every worker and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.system.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start the daemon on a background thread.
pub fn start(cfg: &Config, registry: &PluginRegistry) -> Result<RunningServer, StartError> {
    let prepared = prepare(cfg, registry)?;
    let local_addrs = prepared.local_addrs.clone();
    let metrics_addr = prepared.metrics_addr;
    let shared = prepared.shared.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let sys = System::new();
        sys.block_on(async move {
            let arbiters = prepared.start_workers();
            let _ = tx.send((System::current(), arbiters));
        });
        let _ = sys.run();
    });
    let (system, _arbiters) = rx.recv().expect("server thread started");
    Ok(RunningServer {
        local_addrs,
        metrics_addr,
        queue: shared.queue.get().cloned(),
        system,
        thread: Some(thread),
    })
}

/// Run the daemon on this thread until SIGINT or SIGTERM.
pub fn run(cfg: &Config, registry: &PluginRegistry) -> Result<(), StartError> {
    let prepared = prepare(cfg, registry)?;
    for a in &prepared.local_addrs {
        tracing::info!(listen = %a, workers = cfg.smtp.nodes, queue = %cfg.queue_dir.display(), "posta listening");
    }
    if let Some(a) = prepared.metrics_addr {
        tracing::info!(listen = %a, "metrics endpoint: GET /metrics");
    }
    let sys = System::new();
    let shared = prepared.shared.clone();
    let force_timeout = cfg.smtp.force_shutdown_timeout;
    let queue_dir = cfg.queue_dir.clone();
    let reloader = Reloader {
        running: cfg.clone(),
        registry: registry.clone(),
        outbound: std::cell::RefCell::new(cfg.outbound.clone()),
        metrics: metrics_listen(&cfg.dir).ok().flatten(),
    };
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(4);
    let _ = prepared.shared.reload.set(reload_tx);
    sys.block_on(async move {
        let _arbiters = prepared.start_workers();
        // One SIGTERM stream for the whole run, so a second signal is never missed.
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            tracing::error!("cannot install the SIGTERM handler");
            return;
        };
        wait_for_signal(shared.clone(), &mut term, &reloader, &mut reload_rx).await;
        tracing::info!("shutting down: no new connections, sessions finishing");
        graceful_stop(&shared, force_timeout, &mut term).await;
        // While the queue lock is still held: never a newer daemon's socket.
        crate::actors::control::remove_socket(&queue_dir);
        System::current().stop();
    });
    let _ = sys.run();
    log_summary();
    Ok(())
}

/// One line with what this run did, at exit.
fn log_summary() {
    use std::sync::atomic::Ordering::Relaxed;
    let m = crate::metrics::metrics();
    tracing::info!(
        connections = m.connection.started.load(Relaxed),
        queued = m.messages_queued.load(Relaxed),
        delivered = m.deliveries_ok.load(Relaxed),
        deferred = m.deliveries_deferred.load(Relaxed),
        bounced = m.deliveries_bounced.load(Relaxed),
        outbound_connections = m.connections_opened.load(Relaxed),
        outbound_reused = m.connections_reused.load(Relaxed),
        panics_caught = m.connection.panics.load(Relaxed) + m.queue_file.panics.load(Relaxed),
        "posta stopped"
    );
}

/// Graceful shutdown: stop accepting, let sessions finish (idle ones get `421 4.3.2`) and
/// deliveries in flight finish (none is started any more), up to `smtp.ini
/// force_shutdown_timeout`; a second signal stops at once. Nothing acknowledged is at risk
/// either way: queue files are only changed by a finished delivery. Letting deliveries finish
/// avoids sending a message again after the restart that the next hop already has.
async fn graceful_stop(shared: &Shared, limit: std::time::Duration, term: &mut Signal) {
    let _ = shared.shutdown.send(true);
    let queue = shared.queue.get().cloned();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let live = crate::metrics::metrics().connection.live();
        // Bounded like the rest: a busy queue manager must not hold up the deadline or a
        // second signal.
        let delivering = match &queue {
            Some(q) => tokio::select! {
                r = q.send(crate::actors::queue_manager::Drain) => r.unwrap_or(0),
                _ = tokio::time::sleep_until(deadline) => 1,
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
            },
            None => 0,
        };
        if (live == 0 && delivering == 0) || tokio::time::Instant::now() >= deadline {
            if live > 0 || delivering > 0 {
                tracing::warn!(
                    sessions = live,
                    deliveries = delivering,
                    "shutdown timeout: closing what is left"
                );
            }
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
        }
    }
}

/// SIGTERM/SIGINT stop; SIGUSR1 retries the whole queue now; SIGHUP or `posta reload` (over
/// the control socket) reloads the config.
async fn wait_for_signal(
    shared: Arc<Shared>,
    term: &mut Signal,
    reloader: &Reloader,
    asks: &mut tokio::sync::mpsc::Receiver<crate::actors::control::ReloadAsk>,
) {
    let (Ok(mut usr1), Ok(mut hup)) = (signal(SignalKind::user_defined1()), signal(SignalKind::hangup())) else {
        tracing::error!("cannot install the SIGUSR1/SIGHUP handlers; queue flush and reload by signal are off");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: retrying the whole queue now");
                if let Some(q) = shared.queue.get() {
                    q.do_send(crate::actors::queue_manager::Flush);
                }
            }
            _ = hup.recv() => {
                let _ = reloader.reload(&shared);
            }
            Some(ask) = asks.recv() => {
                let _ = ask.send(reloader.reload(&shared));
            }
        }
    }
}

/// SIGHUP: re-read the config dir; swap plugins and session settings atomically when the new
/// config is valid, keep the old one (with an error logged) when it is not.
struct Reloader {
    /// The config the daemon started with (settings read only at start are compared to it).
    running: Config,
    registry: PluginRegistry,
    /// `outbound.ini` as the delivery side has it now.
    outbound: std::cell::RefCell<crate::config::OutboundConfig>,
    /// `metrics.ini [main] listen` at start.
    metrics: Option<SocketAddr>,
}

impl Reloader {
    /// Ok: what was reloaded (and what needs a restart); Err: why the new config was refused.
    fn reload(&self, shared: &Shared) -> Result<String, String> {
        let dir = &self.running.dir;
        let built = Config::load(dir).and_then(|c| {
            let chain = self.registry.build(&c)?;
            let tls = inbound_tls(&c)?;
            Ok((c, chain, tls))
        });
        let (cfg, chain, tls) = match built {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: invalid config, the running config stays");
                return Err(format!("reload refused: {e}; the running config stays"));
            }
        };
        let session = cfg.session_for(&chain);
        {
            // All at once: a connection starting now sees the old settings or the new ones,
            // never a mix (see `Shared::swap`).
            let _all_at_once = shared.swap.write().unwrap_or_else(|p| p.into_inner());
            shared.replace(chain, session);
            // Certificates are read again: renewed ones apply to new sessions.
            shared.replace_tls(tls);
            // Connection limits apply to connections admitted from now on (the counts stay).
            shared.limits.set_config(cfg.limits.clone());
            *shared.deadlines.write().unwrap_or_else(|p| p.into_inner()) = cfg.deadlines.clone();
        }
        let outbound = self.reload_outbound(shared, &cfg);
        let restart = self.restart_needed(&cfg);
        for what in &restart {
            tracing::warn!(setting = what, "changed, but applies only after a restart");
        }
        tracing::info!(
            plugins = cfg.plugins.len(),
            "config reloaded: plugins, connection settings and TLS certificates"
        );
        let mut done = format!(
            "config reloaded from {}: {} plugin(s), connection settings, TLS certificates{}",
            dir.display(),
            cfg.plugins.len(),
            if outbound { ", outbound.ini" } else { "" }
        );
        if !restart.is_empty() {
            done.push_str(&format!("; changed but needing a restart: {}", restart.join(", ")));
        }
        Ok(done)
    }

    /// Settings that are read once at start.
    fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let old = &self.running;
        let mut v = Vec::new();
        if old.smtp.listen != new.smtp.listen {
            v.push("smtp.ini [main] listen");
        }
        if old.smtp.nodes != new.smtp.nodes {
            v.push("smtp.ini [main] nodes");
        }
        if old.smtp.smtps_port != new.smtp.smtps_port {
            v.push("smtp.ini [main] smtps_port");
        }
        if old.smtp.inactivity_timeout != new.smtp.inactivity_timeout {
            v.push("smtp.ini [main] inactivity_timeout");
        }
        if old.queue_dir != new.queue_dir {
            v.push("queue_dir");
        }
        if old.outbound.nameservers != new.outbound.nameservers {
            v.push("outbound.ini [main] nameservers");
        }
        if metrics_listen(&new.dir).ok() != Some(self.metrics) {
            v.push("metrics.ini [main] listen");
        }
        v
    }

    /// Hand a changed `outbound.ini` to the delivery side; true when it changed.
    fn reload_outbound(&self, shared: &Shared, new: &Config) -> bool {
        let mut current = self.outbound.borrow_mut();
        if format!("{:?}", *current) == format!("{:?}", new.outbound) {
            return false;
        }
        *current = new.outbound.clone();
        if let Some(q) = shared.queue.get() {
            q.do_send(crate::actors::queue_manager::ReloadOutbound(new.outbound.clone()));
        }
        true
    }
}
