//! The QueueFile actor: exists only while one queue item is being delivered. It runs the
//! outbound hooks, routes the item (get_mx, then DNS), hands it to a RemoteMx (or a Maildir),
//! and settles the outcome durably: delete when done, rewrite or rename for a retry, queue a
//! DSN for permanent failures. A panic inside is caught here and becomes a retry.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;

use super::queue_manager::{Enqueue, Finished, QueueManager};
use super::remote_mx::{BodySource, Deliver, MxKey, MxSettings, RemoteMx};
use super::resolver::{DnsFailure, MxAnswer, ResolveHost, ResolveMx, Resolver};
use crate::config::OutboundConfig;
use crate::hooks::state::now_ms;
use crate::hooks::{Delivery, HMail, HookResult, OutboundHook, Outcome};
use crate::metrics::{inc, metrics, MailboxTicket};
use crate::protocol::client::{DsnNotify, DsnRet, Envelope, EnvelopeRecipient, RcptOutcome};
use crate::protocol::command::xtext_decode;
use crate::protocol::dsn::{self, BounceTemplate, Diagnostic, DsnAction, RecipientReport};
use crate::queue::file::TodoAddress;
use crate::queue::item::{self, LoadError, QueueItem};
use crate::queue::route::{is_null_mx, order_mx, parse_targets, MxTarget, Transport};
use crate::queue::schedule::RetrySchedule;
use crate::queue::spool::{CommitRequest, MessageBody, Spool};

/// Everything deliveries share (one per delivery arbiter).
pub struct DeliveryCtx {
    pub dir: PathBuf,
    pub me: String,
    pub chain: super::connection::ChainCell,
    pub spool: Arc<Spool>,
    pub resolver: Addr<Resolver>,
    /// `outbound.ini`, swapped as a whole by a reload ([`DeliveryCtx::reload`]).
    outbound: RefCell<Rc<OutboundConfig>>,
    mx_settings: RefCell<Rc<MxSettings>>,
    /// `actors.ini`: mailbox capacities of the delivery side.
    pub actors: crate::config::ActorsConfig,
    pub bounce_template: Option<BounceTemplate>,
    pub local_ips: HashSet<IpAddr>,
    pub manager: RefCell<Option<Addr<QueueManager>>>,
    mx: RefCell<HashMap<MxKey, Addr<RemoteMx>>>,
    /// When `mx` was last cleared of stopped actors.
    mx_swept: Cell<Instant>,
}

impl DeliveryCtx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: PathBuf,
        me: String,
        chain: super::connection::ChainCell,
        spool: Arc<Spool>,
        resolver: Addr<Resolver>,
        outbound: OutboundConfig,
        bounce_template: Option<BounceTemplate>,
        actors: crate::config::ActorsConfig,
    ) -> Self {
        let mx_settings = RefCell::new(Rc::new(MxSettings {
            helo: me.clone(),
            outbound: outbound.clone(),
            tls: super::tls::opportunistic_client(),
            mailbox: actors.remote_mx_mailbox,
        }));
        DeliveryCtx {
            dir,
            me,
            chain,
            spool,
            resolver,
            outbound: RefCell::new(Rc::new(outbound)),
            mx_settings,
            actors,
            bounce_template,
            local_ips: local_addresses(),
            manager: RefCell::new(None),
            mx: RefCell::new(HashMap::new()),
            mx_swept: Cell::new(Instant::now()),
        }
    }

    /// The `outbound.ini` settings now (a delivery keeps the ones it started with).
    pub fn outbound(&self) -> Rc<OutboundConfig> {
        self.outbound.borrow().clone()
    }

    /// The retry schedule now (`outbound.ini temp_fail_intervals`).
    pub fn schedule(&self) -> RetrySchedule {
        self.outbound.borrow().schedule.clone()
    }

    /// A reloaded `outbound.ini`: deliveries started from now on use it. Remote MX actors are
    /// started afresh with the new pool and timeout settings; the old ones finish what they
    /// have and their idle connections time out.
    pub fn reload(&self, ob: OutboundConfig) {
        let tls = self.mx_settings.borrow().tls.clone();
        *self.mx_settings.borrow_mut() = Rc::new(MxSettings {
            helo: self.me.clone(),
            outbound: ob.clone(),
            tls,
            mailbox: self.actors.remote_mx_mailbox,
        });
        *self.outbound.borrow_mut() = Rc::new(ob);
        self.mx.borrow_mut().clear();
    }

    /// The RemoteMx actor for a destination, started on first use and again after an unused
    /// one stopped itself. Entries of stopped actors are dropped once a minute.
    fn remote(&self, t: &MxTarget) -> Addr<RemoteMx> {
        let key = MxKey {
            host: t.host.clone(),
            port: t.port,
            lmtp: t.transport == Transport::Lmtp,
            auth: t.auth.clone(),
        };
        let mut map = self.mx.borrow_mut();
        if self.mx_swept.get().elapsed() >= MX_SWEEP_EVERY {
            map.retain(|_, a| a.connected());
            self.mx_swept.set(Instant::now());
        }
        let addr = map
            .entry(key.clone())
            .or_insert_with(|| RemoteMx::new(key.clone(), self.mx_settings.borrow().clone()).start());
        if !addr.connected() {
            *addr = RemoteMx::new(key, self.mx_settings.borrow().clone()).start();
        }
        addr.clone()
    }
}

/// How often [`DeliveryCtx::remote`] drops the entries of stopped RemoteMx actors.
const MX_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The addresses of this host: delivery to them is refused unless `local_mx_ok` (mail loop).
fn local_addresses() -> HashSet<IpAddr> {
    let mut v: HashSet<IpAddr> = HashSet::new();
    v.insert(IpAddr::from([0, 0, 0, 0]));
    v.insert(IpAddr::from([0u16; 8]));
    v
}

fn is_local(cx: &DeliveryCtx, ip: &IpAddr) -> bool {
    let private = match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    private || cx.local_ips.contains(ip)
}

pub struct QueueFile {
    cx: Rc<DeliveryCtx>,
    name: String,
    report: Recipient<Finished>,
}

impl QueueFile {
    pub fn new(cx: Rc<DeliveryCtx>, name: String, report: Recipient<Finished>) -> Self {
        QueueFile { cx, name, report }
    }
}

impl Actor for QueueFile {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        inc(&metrics().queue_file.started);
        let fut = AssertUnwindSafe(deliver(self.cx.clone(), self.name.clone())).catch_unwind();
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            let finished = res.unwrap_or_else(|_| {
                inc(&metrics().queue_file.panics);
                let wait = act
                    .cx
                    .schedule()
                    .delay_after(1)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(60_000);
                tracing::error!(file = %act.name, retry_in_ms = wait, "delivery panicked; retrying later");
                Finished::new(act.name.clone(), Some((act.name.clone(), now_ms() + wait)))
            });
            act.report.do_send(finished);
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        inc(&metrics().queue_file.stopped);
    }
}

/// How one recipient ended this attempt.
#[derive(Debug, Clone)]
enum Fate {
    Delivered,
    Temp(Reason),
    Perm(Reason),
}

/// Why: a status code and diagnostic for DSNs and logs.
#[derive(Debug, Clone)]
struct Reason {
    status: String,
    diagnostic: Diagnostic,
    remote_mta: Option<String>,
}

impl Reason {
    fn local(status: &str, text: impl Into<String>) -> Self {
        Reason {
            status: status.to_string(),
            diagnostic: Diagnostic::Other(text.into()),
            remote_mta: None,
        }
    }
    fn text(&self) -> String {
        self.diagnostic.text()
    }
}

/// Facts about a successful hand-over, for the `delivered` hook.
#[derive(Debug, Clone, Default)]
struct HandOver {
    host: String,
    ip: String,
    response: String,
    port: u16,
    mode: &'static str,
    secured: bool,
    authenticated: bool,
    /// The next hop offered DSN: it reports success itself.
    next_hop_dsn: bool,
}

fn finished(name: &str, retry: Option<(String, u64)>) -> Finished {
    Finished::new(name.to_string(), retry)
}

async fn deliver(cx: Rc<DeliveryCtx>, name: String) -> Finished {
    let mut item = match item::load(&cx.dir, &name) {
        Ok(i) => i,
        Err(LoadError::Gone) => return finished(&name, None),
        Err(LoadError::Corrupt(e)) => {
            match item::quarantine(&cx.dir, &name) {
                Ok(p) => tracing::error!(file = %name, error = %e, moved_to = %p.display(), "corrupt queue file"),
                Err(io) => tracing::error!(file = %name, error = %e, %io, "corrupt queue file, cannot move it"),
            }
            return finished(&name, None);
        }
        Err(LoadError::Io(e)) => {
            tracing::error!(file = %name, error = %e, "cannot read queue file");
            return finished(&name, Some((name.clone(), now_ms() + 60_000)));
        }
    };
    if let Some(secs) = send_email_delay(&cx, &mut item).await {
        return retry_as_is(&cx, &item, item.parsed.attempts, secs);
    }
    let (fates, hand_over) = attempt(&cx, &mut item).await;
    settle(&cx, item, fates, hand_over).await
}

/// Run an outbound hook for this item; a panicking plugin counts as DENYSOFT.
async fn hook(cx: &DeliveryCtx, item: &mut QueueItem, h: OutboundHook) -> HookResult {
    let mut hmail = HMail {
        filename: &item.name,
        num_failures: item.parsed.attempts,
        todo: &mut item.todo,
    };
    let chain = cx.chain.read().unwrap_or_else(|p| p.into_inner()).clone();
    chain.run_outbound(&h, &mut hmail).await.unwrap_or_else(|p| {
        inc(&metrics().queue_file.panics);
        tracing::error!(error = %p, "plugin panic in outbound hook");
        HookResult::with_msg(Outcome::DenySoft, "plugin failure")
    })
}

/// `send_email`: `DELAY` with seconds defers the attempt.
async fn send_email_delay(cx: &DeliveryCtx, item: &mut QueueItem) -> Option<u64> {
    let r = hook(cx, item, OutboundHook::SendEmail).await;
    (r.outcome == Outcome::Delay).then(|| r.msg.and_then(|m| m.trim().parse().ok()).unwrap_or(60))
}

fn retry_as_is(cx: &DeliveryCtx, item: &QueueItem, attempts: u32, secs: u64) -> Finished {
    let due = now_ms() + secs * 1000;
    match item::rename_for_retry(&cx.dir, item, attempts, due) {
        Ok(new) => finished(&item.name, Some((new, due))),
        Err(_) => finished(&item.name, Some((item.name.clone(), due))),
    }
}

/// Where this item goes: `get_mx`, then DNS.
async fn route(cx: &DeliveryCtx, item: &mut QueueItem) -> Result<Vec<MxTarget>, Fate> {
    let domain = item.todo.domain.clone();
    let r = hook(cx, item, OutboundHook::GetMx { domain: domain.clone() }).await;
    match r.outcome {
        Outcome::Ok => parse_targets(r.msg.as_deref().unwrap_or("")).map_err(|e| Fate::Temp(Reason::local("4.3.5", e))),
        Outcome::Deny | Outcome::DenyDisconnect => {
            Err(Fate::Perm(Reason::local("5.1.2", format!("No MX for {domain}"))))
        }
        Outcome::DenySoft | Outcome::DenySoftDisconnect => Err(Fate::Temp(Reason::local(
            "4.1.2",
            r.msg.unwrap_or_else(|| format!("No MX for {domain}")),
        ))),
        _ => dns_route(cx, &domain).await,
    }
}

async fn dns_route(cx: &DeliveryCtx, domain: &str) -> Result<Vec<MxTarget>, Fate> {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return Ok(vec![MxTarget::smtp(ip, cx.outbound().mx_port, 0, true)]);
    }
    match cx.resolver.send(ResolveMx::new(domain.to_string())).await {
        Ok(Ok(MxAnswer::Records(mx))) if is_null_mx(&mx) => Err(Fate::Perm(Reason::local(
            "5.1.10",
            format!("Domain {domain} sends and receives no email (NULL MX)"),
        ))),
        Ok(Ok(MxAnswer::Records(mx))) => Ok(order_mx(mx, cx.outbound().mx_port)),
        Ok(Ok(MxAnswer::Implicit)) => Ok(vec![MxTarget::smtp(domain, cx.outbound().mx_port, 0, true)]),
        Ok(Err(DnsFailure::NxDomain)) => Err(Fate::Perm(Reason::local("5.1.2", "No Such Domain"))),
        Ok(Err(DnsFailure::Temporary(e))) => {
            Err(Fate::Temp(Reason::local("4.4.3", format!("DNS lookup failure: {e}"))))
        }
        Err(e) => Err(Fate::Temp(Reason::local("4.4.3", format!("resolver unavailable: {e}")))),
    }
}

/// One delivery attempt over the routes: a fate per recipient (todo order).
async fn attempt(cx: &DeliveryCtx, item: &mut QueueItem) -> (Vec<Fate>, Option<HandOver>) {
    let n = item.todo.rcpt_to.len();
    let targets = match route(cx, item).await {
        Ok(t) => t,
        Err(f) => return (vec![f; n], None),
    };
    let mut last = Reason::local("4.4.1", "Tried all MXs");
    for t in &targets {
        let result = match &t.transport {
            Transport::Maildir(root) => return maildir(item, root).await,
            _ => try_target(cx, item, t).await,
        };
        match result {
            Ok(x) => return x,
            Err(r) => last = r,
        }
    }
    (vec![Fate::Temp(last); n], None)
}

/// Addresses of a target that we may connect to.
async fn target_ips(cx: &DeliveryCtx, t: &MxTarget) -> Result<Vec<IpAddr>, Reason> {
    let ips = match cx
        .resolver
        .send(ResolveHost::new(t.host.clone(), cx.outbound().inet_prefer))
        .await
    {
        Ok(Ok(ips)) => ips,
        Ok(Err(e)) => return Err(Reason::local("4.4.3", format!("{}: {e}", t.host))),
        Err(e) => return Err(Reason::local("4.4.3", e.to_string())),
    };
    let allowed: Vec<IpAddr> = ips
        .into_iter()
        .filter(|ip| !t.from_dns || cx.outbound().local_mx_ok || !is_local(cx, ip))
        .collect();
    if allowed.is_empty() {
        return Err(Reason::local(
            "4.4.4",
            format!("MX {} is a local address (local_mx_ok is off)", t.host),
        ));
    }
    Ok(allowed)
}

/// posta sends with DATA only (no BDAT outbound). A `BODY=BINARYMIME` message whose content
/// is valid 8BITMIME anyway goes as such (an identity conversion); one with binary content
/// (NUL, bare CR/LF, lines over 998 octets) cannot be relayed and is returned with `5.6.3`
/// (RFC 3030 §3: convert or return). `None`: not BINARYMIME, send as usual.
async fn binary_content(item: &QueueItem) -> Result<Option<bool>, Reason> {
    if item.todo.extra.get("body").and_then(|v| v.as_str()) != Some("BINARYMIME") {
        return Ok(None);
    }
    let (path, offset, len) = (item.path.clone(), item.body_offset, item.body_len);
    let scan = actix_rt::task::spawn_blocking(move || -> std::io::Result<bool> {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(path)?;
        f.seek(std::io::SeekFrom::Start(offset))?;
        let mut check = dsn::EightBitCheck::new(true);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = f.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            check.feed(&buf[..n]);
            left -= n as u64;
        }
        Ok(!check.ok())
    })
    .await;
    match scan {
        Ok(Ok(binary)) => Ok(Some(binary)),
        Ok(Err(e)) => Err(Reason::local("4.3.0", format!("cannot read the queue file: {e}"))),
        Err(e) => Err(Reason::local("4.3.0", e.to_string())),
    }
}

async fn try_target(cx: &DeliveryCtx, item: &QueueItem, t: &MxTarget) -> Result<(Vec<Fate>, Option<HandOver>), Reason> {
    let mut env = envelope(item);
    match binary_content(item).await? {
        Some(true) => {
            let r = Reason::local(
                "5.6.3",
                "Binary content (BODY=BINARYMIME) cannot be relayed: posta does not send with BDAT",
            );
            return Ok((vec![Fate::Perm(r); item.todo.rcpt_to.len()], None));
        }
        Some(false) => env.eight_bit = true,
        None => {}
    }
    let ips = target_ips(cx, t).await?;
    let msg = Deliver {
        ticket: MailboxTicket::new(&metrics().remote_mx.mailbox),
        ips,
        envelope: env,
        body: BodySource {
            path: item.path.clone(),
            offset: item.body_offset,
            len: item.body_len,
        },
    };
    let d = match cx.remote(t).send(msg).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) if e.is_permanent() => {
            let r = e
                .reply()
                .map(reason_from)
                .unwrap_or_else(|| Reason::local("5.7.8", e.to_string()));
            return Ok((vec![Fate::Perm(r); item.todo.rcpt_to.len()], None));
        }
        Ok(Err(e)) => return Err(Reason::local("4.4.2", format!("{}: {e}", t.host))),
        Err(e) => return Err(Reason::local("4.4.2", e.to_string())),
    };
    let mut response = String::new();
    let fates = d
        .result
        .recipients
        .iter()
        .map(|r| {
            let mut reason = reason_from(&r.reply);
            if !r.remote {
                reason.diagnostic = Diagnostic::Other(r.reply.text());
            }
            reason.remote_mta = Some(t.host.clone());
            match r.outcome {
                RcptOutcome::Delivered => {
                    response = match r.reply.enhanced {
                        Some(e) => format!("{e} {}", r.reply.text()),
                        None => r.reply.text(),
                    };
                    Fate::Delivered
                }
                RcptOutcome::TempFail => Fate::Temp(reason),
                RcptOutcome::PermFail => Fate::Perm(reason),
            }
        })
        .collect();
    let hand_over = HandOver {
        host: t.host.clone(),
        ip: d.ip.to_string(),
        response,
        port: t.port,
        mode: t.mode(),
        secured: d.secured,
        authenticated: d.authenticated,
        next_hop_dsn: d.dsn,
    };
    Ok((fates, Some(hand_over)))
}

fn reason_from(reply: &crate::protocol::client::ClientReply) -> Reason {
    Reason {
        status: reply.status().to_string(),
        diagnostic: Diagnostic::Smtp {
            code: reply.code,
            text: reply.lines.join(" "),
        },
        remote_mta: None,
    }
}

/// The client envelope of a queue item (DSN values decoded from xtext).
fn envelope(item: &QueueItem) -> Envelope {
    let todo = &item.todo;
    let bare = |a: &TodoAddress| match (&a.user, &a.original_host) {
        (Some(u), Some(h)) if !u.is_empty() => Some(format!("{u}@{h}")),
        _ => None,
    };
    let recipients = todo
        .rcpt_to
        .iter()
        .map(|a| {
            let mut r = EnvelopeRecipient::new(bare(a).unwrap_or_else(|| a.original.trim_matches(['<', '>']).into()));
            r.notify = notify_of(a);
            r.orcpt = a
                .extra
                .get("dsn_orcpt")
                .and_then(|v| v.as_str())
                .and_then(|o| o.split_once(';'))
                .map(|(_, addr)| xtext_decode(addr));
            r
        })
        .collect();
    let extra = |k: &str| todo.extra.get(k).and_then(|v| v.as_str()).map(String::from);
    Envelope {
        mail_from: bare(&todo.mail_from),
        recipients,
        ret: match extra("dsn_ret").as_deref() {
            Some("FULL") => Some(DsnRet::Full),
            Some("HDRS") => Some(DsnRet::Hdrs),
            _ => None,
        },
        envid: extra("dsn_envid").map(|e| xtext_decode(&e)),
        size: item.body_len,
        smtputf8: todo.extra.get("smtputf8").and_then(|v| v.as_bool()).unwrap_or(false),
        eight_bit: extra("body").as_deref() == Some("8BITMIME"),
    }
}

fn notify_of(a: &TodoAddress) -> Vec<DsnNotify> {
    dsn::notify_keywords(a)
        .unwrap_or_default()
        .iter()
        .filter_map(|k| match k.as_str() {
            "NEVER" => Some(DsnNotify::Never),
            "SUCCESS" => Some(DsnNotify::Success),
            "FAILURE" => Some(DsnNotify::Failure),
            "DELAY" => Some(DsnNotify::Delay),
            _ => None,
        })
        .collect()
}

/// Local delivery for every recipient (blocking work on a blocking thread).
async fn maildir(item: &QueueItem, root: &std::path::Path) -> (Vec<Fate>, Option<HandOver>) {
    let item = item.clone();
    let root = root.to_path_buf();
    let n = item.todo.rcpt_to.len();
    let res = actix_rt::task::spawn_blocking(move || maildir_blocking(&item, &root)).await;
    match res {
        Ok(f) => f,
        Err(e) => (vec![Fate::Temp(Reason::local("4.3.0", e.to_string())); n], None),
    }
}

fn maildir_blocking(item: &QueueItem, root: &std::path::Path) -> (Vec<Fate>, Option<HandOver>) {
    use crate::queue::maildir::{deliver, mailbox_dir, MaildirError};
    let n = item.todo.rcpt_to.len();
    let stored = match item::read_body(item) {
        Ok(b) => b,
        Err(e) => return (vec![Fate::Temp(Reason::local("4.3.0", e.to_string())); n], None),
    };
    let from = item.todo.mail_from.original.trim_matches(['<', '>']).to_string();
    let fates = item
        .todo
        .rcpt_to
        .iter()
        .map(|a| {
            let (user, host) = (a.user.clone().unwrap_or_default(), a.host.clone().unwrap_or_default());
            let rcpt = a.original.trim_matches(['<', '>']);
            let result = mailbox_dir(root, &user, &host).and_then(|dir| deliver(&dir, &from, rcpt, &stored));
            match result {
                Ok(_) => Fate::Delivered,
                Err(MaildirError::BadMailbox) => Fate::Perm(Reason::local("5.1.3", "invalid mailbox name")),
                Err(MaildirError::Io(e)) => Fate::Temp(Reason::local("4.3.0", e)),
            }
        })
        .collect();
    let hand_over = HandOver {
        host: "localhost".into(),
        ip: String::new(),
        response: "delivered to maildir".into(),
        port: 0,
        mode: "maildir",
        ..Default::default()
    };
    (fates, Some(hand_over))
}

/// Apply the fates durably: hooks, DSN, delete/rewrite/rename.
async fn settle(cx: &DeliveryCtx, mut item: QueueItem, fates: Vec<Fate>, hand_over: Option<HandOver>) -> Finished {
    let mut delivered = Vec::new();
    let mut temp = Vec::new();
    let mut perm = Vec::new();
    for (addr, fate) in item.todo.rcpt_to.iter().cloned().zip(fates) {
        match fate {
            Fate::Delivered => delivered.push(addr),
            Fate::Temp(r) => temp.push((addr, r)),
            Fate::Perm(r) => perm.push((addr, r)),
        }
    }
    if !delivered.is_empty() {
        let h = hand_over.unwrap_or_default();
        let notices = success_reports(&item, &delivered, &h);
        delivered_hook(cx, &mut item, &delivered, h).await;
        if !notices.is_empty() && !queue_dsn(cx, &item, notices).await {
            tracing::error!(file = %item.name, "the success DSN could not be queued (the message itself was delivered)");
        }
    }
    let failures = item.parsed.attempts + 1;
    if !temp.is_empty() && cx.schedule().delay_after(failures).is_none() {
        for (a, r) in temp.drain(..) {
            let status = format!("5{}", r.status.get(1..).unwrap_or(".0.0"));
            let text = format!("Too many failures ({})", r.text());
            perm.push((
                a,
                Reason {
                    status,
                    diagnostic: Diagnostic::Other(text),
                    remote_mta: r.remote_mta,
                },
            ));
        }
    }
    if !perm.is_empty() && !bounce(cx, &mut item, &perm).await {
        // The DSN could not be queued: keep these recipients so the bounce is tried again.
        temp.append(&mut perm);
    }
    record_outcomes(delivered.len(), temp.len(), perm.len());
    if temp.is_empty() {
        if let Err(e) = cx.spool.recycle(&item.path) {
            tracing::error!(file = %item.name, error = %e, "cannot remove delivered queue file");
        }
        return finished(&item.name, None);
    }
    defer(cx, item, temp, failures).await
}

fn record_outcomes(ok: usize, temp: usize, perm: usize) {
    let m = metrics();
    m.deliveries_ok
        .fetch_add(ok as u64, std::sync::atomic::Ordering::Relaxed);
    m.deliveries_deferred
        .fetch_add(temp as u64, std::sync::atomic::Ordering::Relaxed);
    m.deliveries_bounced
        .fetch_add(perm as u64, std::sync::atomic::Ordering::Relaxed);
}

async fn delivered_hook(cx: &DeliveryCtx, item: &mut QueueItem, ok: &[TodoAddress], h: HandOver) {
    let delay = now_ms().saturating_sub(item.todo.queue_time) as f64 / 1000.0;
    crate::metrics::metrics().delivery_seconds.observe(delay);
    tracing::info!(uuid = %item.todo.uuid, file = %item.name, host = %h.host, ip = %h.ip, recipients = ok.len(), delay, mode = h.mode, response = %h.response, "delivered");
    let d = Delivery {
        host: h.host,
        ip: h.ip,
        response: h.response,
        delay,
        port: h.port,
        mode: h.mode,
        ok_recips: ok.to_vec(),
        secured: h.secured,
        authenticated: h.authenticated,
    };
    hook(cx, item, OutboundHook::Delivered(d)).await;
}

/// RFC 3461 success notices for the delivered recipients that asked for them (NOTIFY=SUCCESS):
/// `delivered` after a final delivery (Maildir; LMTP to a server without DSN), `relayed` after
/// handing the message to an SMTP next hop that did not offer DSN (no report can come from
/// further on). A next hop that offered DSN got the NOTIFY parameters and reports itself.
fn success_reports(item: &QueueItem, ok: &[TodoAddress], h: &HandOver) -> Vec<RecipientReport> {
    if dsn::is_null_sender(&item.todo.mail_from) {
        return Vec::new();
    }
    let action = match h.mode {
        "maildir" => DsnAction::Delivered,
        _ if h.next_hop_dsn => return Vec::new(),
        "lmtp" => DsnAction::Delivered,
        _ => DsnAction::Relayed,
    };
    let remote = h.mode != "maildir";
    ok.iter()
        .filter(|a| dsn::rcpt_should_notify(a, action))
        .map(|a| {
            let mut r = RecipientReport::from_todo_address(a, action);
            r.status = "2.0.0".into();
            r.remote_mta = remote.then(|| h.host.clone());
            r.diagnostic = (remote && !h.response.is_empty()).then(|| Diagnostic::Smtp {
                code: 250,
                text: h.response.clone(),
            });
            r.last_attempt = Some(now_ms());
            r
        })
        .collect()
}

/// Run the bounce hook and queue a DSN when asked for. False when the DSN could not be
/// queued (the original then stays).
async fn bounce(cx: &DeliveryCtx, item: &mut QueueItem, perm: &[(TodoAddress, Reason)]) -> bool {
    let err = perm.first().map(|(_, r)| r.text()).unwrap_or_default();
    tracing::warn!(uuid = %item.todo.uuid, file = %item.name, recipients = perm.len(), reason = %err, "bounced");
    let bounced: Vec<TodoAddress> = perm.iter().map(|(a, _)| a.clone()).collect();
    let r = hook(cx, item, OutboundHook::Bounce { err, bounced }).await;
    if r.outcome != Outcome::Cont || dsn::is_null_sender(&item.todo.mail_from) {
        return true; // suppressed by a plugin, or a double bounce: no DSN
    }
    let reports: Vec<RecipientReport> = perm
        .iter()
        .filter(|(a, _)| dsn::rcpt_should_notify(a, DsnAction::Failed))
        .map(|(a, r)| report(a, r))
        .collect();
    if reports.is_empty() {
        return true;
    }
    queue_dsn(cx, item, reports).await
}

fn report(a: &TodoAddress, r: &Reason) -> RecipientReport {
    let mut rep = RecipientReport::from_todo_address(a, DsnAction::Failed);
    rep.status = r.status.clone();
    rep.diagnostic = Some(r.diagnostic.clone());
    rep.remote_mta = r.remote_mta.clone();
    rep.last_attempt = Some(now_ms());
    rep
}

async fn queue_dsn(cx: &DeliveryCtx, item: &QueueItem, reports: Vec<RecipientReport>) -> bool {
    let item2 = item.clone();
    let me = cx.me.clone();
    // `outbound.bounce_message` is a failure text; other reports use the built-in ones.
    let template = match dsn::ReportKind::of(&reports) {
        dsn::ReportKind::Failure => cx.bounce_template.clone(),
        _ => None,
    };
    let spool = cx.spool.clone();
    let res = actix_rt::task::spawn_blocking(move || {
        let original = item::read_body(&item2).map_err(|e| e.to_string())?;
        let env = dsn::OriginalEnvelope::from_todo(&item2.todo);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let d = dsn::build_dsn(&dsn::DsnRequest {
            me: &me,
            envelope: &env,
            recipients: &reports,
            original: &original,
            template: template.as_ref(),
            reason: None,
            now_ms: now_ms(),
            report_id: &id,
            pid: std::process::id(),
        });
        let req = bounce_request(&item2, &id, d.eight_bit, d.utf8_headers)?;
        spool
            .commit(
                &req,
                &MessageBody {
                    spooled: None,
                    tail: d.message,
                },
            )
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    match res {
        Ok(Ok(names)) => {
            if let Some(m) = cx.manager.borrow().as_ref() {
                m.do_send(Enqueue::new(names));
            }
            true
        }
        Ok(Err(e)) => {
            tracing::error!(file = %item.name, error = %e, "cannot queue the DSN; the original stays queued");
            false
        }
        Err(e) => {
            tracing::error!(file = %item.name, error = %e, "DSN task failed; the original stays queued");
            false
        }
    }
}

/// The envelope of a DSN: from `<>` to the original sender.
fn bounce_request(item: &QueueItem, id: &str, eight_bit: bool, utf8: bool) -> Result<CommitRequest, String> {
    use crate::hooks::state::Recipient;
    use crate::protocol::address::Mailbox;
    let from = &item.todo.mail_from;
    let (Some(user), Some(host)) = (from.user.clone(), from.original_host.clone()) else {
        return Err("original sender has no address".into());
    };
    let params = crate::protocol::command::MailParams {
        smtputf8: utf8,
        body: eight_bit.then_some(crate::protocol::command::Body::EightBitMime),
        ..Default::default()
    };
    Ok(CommitRequest {
        uuid: format!("{}.dsn.{id}", item.todo.uuid),
        mail_from: None,
        mail_params: params,
        rcpt_to: vec![Recipient {
            mailbox: Mailbox {
                local: user,
                domain: host,
            },
            params: Default::default(),
        }],
        notes: [(
            crate::queue::spool::BOUNCE_NOTE.to_string(),
            serde_json::Value::Bool(true),
        )]
        .into_iter()
        .collect(),
        queue_time: now_ms(),
    })
}

/// Temporary failure: the `deferred` hook, then a durable rename or rewrite for the retry.
/// The queue file's mark that the sender got its delay warning.
const DELAY_WARNED: &str = "delay_warned";

/// `outbound.ini delay_warning`: once the item is that old, send its sender one `delayed` DSN
/// for the recipients still waiting (those whose NOTIFY asks for DELAY, or that gave no
/// NOTIFY, as Postfix does). True when one was queued now (the item must remember it).
async fn delay_warning(cx: &DeliveryCtx, item: &QueueItem, temp: &[(TodoAddress, Reason)]) -> bool {
    let after = cx.outbound().delay_warning;
    let age = now_ms().saturating_sub(item.todo.queue_time);
    let done = item.todo.extra.get(DELAY_WARNED).and_then(|v| v.as_bool()) == Some(true);
    if after.is_zero() || done || age < after.as_millis() as u64 || dsn::is_null_sender(&item.todo.mail_from) {
        return false;
    }
    let until = item.todo.queue_time + cx.schedule().total().as_millis() as u64;
    let reports: Vec<RecipientReport> = temp
        .iter()
        .filter(|(a, _)| match dsn::notify_keywords(a) {
            Some(k) if !k.is_empty() => dsn::should_notify(Some(&k), DsnAction::Delayed),
            _ => true,
        })
        .map(|(a, r)| {
            let mut rep = report(a, r);
            rep.action = DsnAction::Delayed;
            rep.will_retry_until = Some(until);
            rep
        })
        .collect();
    if reports.is_empty() {
        return false;
    }
    tracing::info!(uuid = %item.todo.uuid, file = %item.name, recipients = reports.len(), "delay warning");
    queue_dsn(cx, item, reports).await
}

async fn defer(cx: &DeliveryCtx, mut item: QueueItem, temp: Vec<(TodoAddress, Reason)>, failures: u32) -> Finished {
    let delay = cx
        .schedule()
        .delay_after(failures)
        .map(|d| d.as_secs())
        .unwrap_or(60)
        .max(1);
    let err = temp.first().map(|(_, r)| r.text()).unwrap_or_default();
    tracing::info!(uuid = %item.todo.uuid, file = %item.name, recipients = temp.len(), delay, reason = %err, "deferred");
    let r = hook(cx, &mut item, OutboundHook::Deferred { delay, err }).await;
    let delay = match r.outcome {
        Outcome::Ok => {
            let _ = cx.spool.recycle(&item.path);
            return finished(&item.name, None);
        }
        Outcome::DenySoft => r.msg.and_then(|m| m.trim().parse().ok()).unwrap_or(delay),
        _ => delay,
    };
    let due = now_ms() + delay * 1000;
    let warned = delay_warning(cx, &item, &temp).await;
    let all = temp.len() == item.todo.rcpt_to.len();
    if all && !warned {
        return retry_as_is(cx, &item, failures, delay);
    }
    let mut todo = item.todo.clone();
    if warned {
        todo.extra.insert(DELAY_WARNED.into(), serde_json::Value::Bool(true));
    }
    todo.rcpt_to = temp
        .into_iter()
        .map(|(mut a, r)| {
            a.extra.insert("reason".into(), r.text().into());
            a.extra.insert("dsn_status".into(), r.status.into());
            a
        })
        .collect();
    // The rewrite fsyncs: keep it off the delivery thread.
    let (dir, item2) = (cx.dir.clone(), item.clone());
    let res = actix_rt::task::spawn_blocking(move || item::rewrite(&dir, &item2, &todo, failures, due)).await;
    match res.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))) {
        Ok(new) => finished(&item.name, Some((new, due))),
        Err(e) => {
            tracing::error!(file = %item.name, error = %e, "cannot rewrite the queue file; all recipients will be retried");
            retry_as_is(cx, &item, failures, delay)
        }
    }
}
