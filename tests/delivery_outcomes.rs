//! Delivery outcomes, black-box: what the outbound hooks (`send_email`, `get_mx`, `deferred`,
//! `bounce`, `delivered`) see and what their answers do, retries and bounces, RFC 3464 DSNs
//! (NOTIFY rules, double bounces), DSN and SMTPUTF8 parameters towards the next hop, and
//! corrupt files in the queue dir.
//!
//! A test-only plugin (`test/outbound`) answers the outbound hooks from a script the test
//! fills in, and records every call. Routes come from its `get_mx` answers
//! (`smtp://127.0.0.1:<sink port>`), so no test depends on DNS; the in-test DNS server (empty
//! zone) only keeps the resolver off the host's configuration.
//!
//! Everything talks to 127.0.0.0/8 only; every wait is a bounded poll.

mod common;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::dns::{DnsServer, Zone};
use common::dsn::{assert_failure_dsn, Dsn};
use common::sink::{eventually, Sink};
use common::*;
use posta::hooks::{
    Delivery, HMail, Hook, HookContext, HookName, HookResult, HookReturn, OutboundHook, Outcome, Plugin, PluginRegistry,
};
use posta::protocol::address::Mailbox;
use posta::queue::{encode_header, QueueName, Todo, TodoAddress};

/// Upper bound for anything to happen (a delivery, a bounce, a retry).
const WAIT: Duration = Duration::from_secs(30);

const BODY: &[u8] = b"From: alice@sender.test\r\nTo: bob@remote.test\r\nSubject: outcomes\r\n\r\nhello there";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

// ----- the scriptable outbound plugin ------------------------------------------------------

/// What the plugin does when a hook reaches it.
#[derive(Debug, Clone)]
enum Act {
    /// Answer at once.
    Answer(HookResult),
    /// Panic inside `call_outbound`.
    Panic,
    /// Panic inside the returned future (`HookReturn::Later`).
    PanicLater,
}

fn answer(outcome: Outcome) -> Act {
    Act::Answer(HookResult::new(outcome))
}

fn answer_msg(outcome: Outcome, msg: &str) -> Act {
    Act::Answer(HookResult::with_msg(outcome, msg))
}

/// One outbound hook call as the plugin saw it.
#[derive(Debug, Clone)]
struct Seen {
    hook: OutboundHook,
    /// `hmail.filename`.
    file: String,
    /// `hmail.num_failures`.
    num_failures: u32,
    /// Wall clock (ms) when the call came.
    at_ms: u64,
}

/// The script and the log, shared by the test and the plugin.
#[derive(Default)]
struct Script {
    /// `get_mx` answers per (lower-case) domain.
    routes: Mutex<Vec<(String, Act)>>,
    /// One-shot answers, used first: (hook, only for this get_mx domain, act).
    once: Mutex<VecDeque<(HookName, Option<String>, Act)>>,
    log: Mutex<Vec<Seen>>,
}

impl Script {
    fn new() -> Arc<Script> {
        Arc::new(Script::default())
    }

    /// `get_mx` for `domain` answers OK with the sink on 127.0.0.1:`port`.
    fn route(&self, domain: &str, port: u16) {
        self.mx(domain, answer_msg(Outcome::Ok, &format!("smtp://127.0.0.1:{port}")));
    }

    /// `get_mx` for `domain` does `act` (every time).
    fn mx(&self, domain: &str, act: Act) {
        let mut r = self.routes.lock().unwrap();
        r.retain(|(d, _)| d != domain);
        r.push((domain.to_string(), act));
    }

    /// The next call of `hook` (for get_mx: of this domain, when given) does `act`.
    fn once(&self, hook: HookName, domain: Option<&str>, act: Act) {
        self.once
            .lock()
            .unwrap()
            .push_back((hook, domain.map(String::from), act));
    }

    fn pick(&self, name: HookName, domain: Option<&str>) -> Act {
        {
            let mut once = self.once.lock().unwrap();
            let hit = once
                .iter()
                .position(|(h, d, _)| *h == name && d.as_deref().is_none_or(|d| Some(d) == domain));
            if let Some(i) = hit {
                return once.remove(i).unwrap().2;
            }
        }
        if let Some(d) = domain {
            if let Some((_, act)) = self.routes.lock().unwrap().iter().find(|(r, _)| r == d) {
                return act.clone();
            }
        }
        Act::Answer(HookResult::CONT)
    }

    fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The calls of one hook, in order.
    fn calls(&self, name: HookName) -> Vec<Seen> {
        self.log().into_iter().filter(|s| s.hook.name() == name).collect()
    }

    fn delivered(&self) -> Vec<Delivery> {
        self.log()
            .into_iter()
            .filter_map(|s| match s.hook {
                OutboundHook::Delivered(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    /// `deferred` calls: (delay, err, the call).
    fn deferred(&self) -> Vec<(u64, String, Seen)> {
        self.log()
            .into_iter()
            .filter_map(|s| match &s.hook {
                OutboundHook::Deferred { delay, err } => Some((*delay, err.clone(), s.clone())),
                _ => None,
            })
            .collect()
    }

    /// `bounce` calls: (err, bounced recipients as `original`).
    fn bounces(&self) -> Vec<(String, Vec<String>)> {
        self.log()
            .into_iter()
            .filter_map(|s| match s.hook {
                OutboundHook::Bounce { err, bounced } => {
                    Some((err, bounced.iter().map(|a| a.original.clone()).collect()))
                }
                _ => None,
            })
            .collect()
    }
}

struct OutboundPlugin(Arc<Script>);

const OUTBOUND_HOOKS: [HookName; 5] = [
    HookName::SendEmail,
    HookName::GetMx,
    HookName::Deferred,
    HookName::Bounce,
    HookName::Delivered,
];

impl Plugin for OutboundPlugin {
    fn name(&self) -> &str {
        "test/outbound"
    }
    fn hooks(&self) -> &[HookName] {
        &OUTBOUND_HOOKS
    }
    fn call<'a>(&'a self, _hook: &'a Hook, _cx: &'a mut HookContext<'_>) -> HookReturn<'a> {
        HookResult::CONT.into()
    }
    fn call_outbound<'a>(&'a self, hook: &'a OutboundHook, item: &'a mut HMail<'_>) -> HookReturn<'a> {
        let s = &self.0;
        s.log.lock().unwrap().push(Seen {
            hook: hook.clone(),
            file: item.filename.to_string(),
            num_failures: item.num_failures,
            at_ms: now_ms(),
        });
        let domain = match hook {
            OutboundHook::GetMx { domain } => Some(domain.to_ascii_lowercase()),
            _ => None,
        };
        match s.pick(hook.name(), domain.as_deref()) {
            Act::Answer(r) => HookReturn::Done(r),
            Act::Panic => panic!("test/outbound panics in {} (on purpose)", hook.name().as_str()),
            Act::PanicLater => HookReturn::Later(Box::pin(async move {
                tokio::task::yield_now().await;
                panic!("test/outbound panics in an async {} (on purpose)", hook.name().as_str())
            })),
        }
    }
}

// ----- starting posta ----------------------------------------------------------------------

/// `outbound.ini`: the empty test DNS server, the given retry schedule.
fn outbound_ini(dns: &DnsServer, intervals: &str) -> String {
    format!(
        "[main]\nnameservers={}\ntemp_fail_intervals={intervals}\nconnect_timeout=5\nreply_timeout=30\n",
        dns.addr()
    )
}

/// posta with `relay` (127.0.0.0/8 relays), `rcpt_to.in_host_list` and the test plugin,
/// delivery enabled. `pre` may add files (e.g. to the queue dir) before start.
fn launch(script: &Arc<Script>, intervals: &str, pre: impl FnOnce(&Path)) -> (TestServer, DnsServer) {
    let dns = DnsServer::start(Zone::new());
    let mut registry = PluginRegistry::builtin();
    let s = script.clone();
    registry.register("test/outbound", move |_| {
        Ok(Arc::new(OutboundPlugin(s.clone())) as Arc<dyn Plugin>)
    });
    let ini = outbound_ini(&dns, intervals);
    let srv = start_with(
        |d| {
            std::fs::write(d.join("plugins"), "relay\nrcpt_to.in_host_list\ntest/outbound\n").unwrap();
            std::fs::write(d.join("relay_acl_allow"), "127.0.0.0/8\n").unwrap();
            std::fs::write(d.join("outbound.ini"), &ini).unwrap();
            pre(d);
        },
        registry,
    );
    (srv, dns)
}

/// Send one message and expect `250` for it.
fn submit(srv: &TestServer, from: &str, rcpts: &[&str], body: &[u8]) {
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    let r = c.send_mail(from, rcpts, body);
    assert_eq!(r.code, 250, "message not accepted: {r:?}");
    c.expect("QUIT", 221);
}

/// Send one message with raw MAIL and RCPT lines (parameters included); expect `250`.
fn submit_raw(srv: &TestServer, mail: &str, rcpts: &[&str], body: &[u8]) {
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    c.expect(mail, 250);
    for r in rcpts {
        c.expect(r, 250);
    }
    c.expect("DATA", 354);
    c.send(body);
    c.send(b"\r\n.\r\n");
    let r = c.reply().expect("reply after DATA");
    assert_eq!(r.code, 250, "message not accepted: {r:?}");
    c.expect("QUIT", 221);
}

/// The parsed names of the committed queue files.
fn queue_names(srv: &TestServer) -> Vec<QueueName> {
    srv.queue_files()
        .iter()
        .filter_map(|p| QueueName::parse(&p.file_name()?.to_string_lossy()))
        .collect()
}

/// Nothing queued: no committed file, nothing waiting or in flight.
fn queue_idle(srv: &TestServer) -> bool {
    srv.queue_files().is_empty()
        && srv
            .server
            .queue_counts()
            .is_some_and(|c| c.waiting == 0 && c.in_flight == 0)
}

/// Flush once the queue manager holds `n` waiting items and none in flight. (A file is
/// renamed for its retry just before the manager hears of it, and a flush only moves items
/// the manager already has waiting.)
fn flush_when_waiting(srv: &TestServer, n: usize) {
    let ready = eventually(WAIT, || {
        srv.server
            .queue_counts()
            .is_some_and(|c| c.waiting == n && c.in_flight == 0)
    });
    assert!(
        ready,
        "queue manager: {:?}, files {:?}",
        srv.server.queue_counts(),
        srv.queue_files()
    );
    srv.server.flush_queue();
}

/// Wait until exactly one queue file is left and it has been tried `attempts` times.
fn deferred_file(srv: &TestServer, attempts: u32) -> Option<QueueName> {
    let mut last = None;
    let ok = eventually(WAIT, || {
        let names = queue_names(srv);
        last = names.first().cloned();
        names.len() == 1 && names[0].attempts == attempts
    });
    ok.then(|| last.unwrap())
}

fn originals(addrs: &[TodoAddress]) -> Vec<String> {
    addrs.iter().map(|a| a.original.clone()).collect()
}

// ----- DSNs --------------------------------------------------------------------------------

// ----- 1. the delivered hook ---------------------------------------------------------------

#[test]
fn delivered_hook_reports_the_hand_over() {
    let plain = Sink::start();
    let tls = Sink::builder().starttls().start();
    let auth = Sink::builder().starttls().auth("relayuser", "s3cret").start();
    let script = Script::new();
    script.route("plain.test", plain.port());
    script.route("tls.test", tls.port());
    script.mx(
        "auth.test",
        answer_msg(
            Outcome::Ok,
            &format!("smtp://relayuser:s3cret@127.0.0.1:{}", auth.port()),
        ),
    );
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["bob@plain.test", "carol@plain.test"], BODY);
    submit(&srv, "alice@sender.test", &["bob@tls.test"], BODY);
    submit(&srv, "alice@sender.test", &["bob@auth.test"], BODY);
    for s in [&plain, &tls, &auth] {
        assert!(s.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", s.stats());
    }
    assert!(
        eventually(WAIT, || script.delivered().len() == 3),
        "delivered hook calls: {:?}",
        script.calls(HookName::Delivered)
    );
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );

    let by_domain = |domain: &str| {
        script
            .delivered()
            .into_iter()
            .find(|d| d.ok_recips.iter().any(|a| a.host.as_deref() == Some(domain)))
            .unwrap_or_else(|| panic!("no delivered hook for {domain}: {:?}", script.delivered()))
    };
    for (domain, sink, secured, authenticated) in [
        ("plain.test", &plain, false, false),
        ("tls.test", &tls, true, false),
        ("auth.test", &auth, true, true),
    ] {
        let d = by_domain(domain);
        assert_eq!(d.host, "127.0.0.1", "{d:?}");
        assert_eq!(d.ip, "127.0.0.1", "{d:?}");
        assert_eq!(d.port, sink.port(), "{d:?}");
        assert_eq!(d.mode, "smtp", "{d:?}");
        // The sink answers the dot with `250 2.0.0 queued as <conn>.<seq>`.
        assert!(d.response.contains("queued as 1.1"), "response {:?}", d.response);
        assert!(d.delay.is_finite() && d.delay >= 0.0, "delay {}", d.delay);
        assert_eq!(
            (d.secured, d.authenticated),
            (secured, authenticated),
            "{domain}: {d:?}"
        );
        let m = &sink.messages()[0];
        assert_eq!(m.tls, secured);
        assert_eq!(m.auth_user.is_some(), authenticated);
    }
    let d = by_domain("plain.test");
    assert_eq!(
        originals(&d.ok_recips),
        vec!["<bob@plain.test>".to_string(), "<carol@plain.test>".to_string()]
    );
    assert_eq!(plain.messages()[0].rcpts, vec!["bob@plain.test", "carol@plain.test"]);
}

// ----- 2. get_mx ---------------------------------------------------------------------------

#[test]
fn get_mx_ok_routes_to_the_given_target_without_dns() {
    let sink = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    let (srv, dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "nothing delivered; sink saw {:?}", sink.stats());
    let m = &sink.messages()[0];
    assert_eq!(m.mail_from, "alice@sender.test");
    assert_eq!(m.rcpts, vec!["bob@remote.test".to_string()]);
    assert!(m.text().ends_with("hello there\r\n"), "{}", m.text());
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    let mx_calls = script.calls(HookName::GetMx);
    assert_eq!(mx_calls.len(), 1, "{mx_calls:?}");
    assert_eq!(
        mx_calls[0].hook,
        OutboundHook::GetMx {
            domain: "remote.test".into()
        }
    );
    let q = dns.queries();
    assert!(
        !q.iter().any(|q| q.name.contains("remote.test")),
        "DNS was asked although get_mx answered: {q:?}"
    );
}

#[test]
fn get_mx_deny_bounces_with_5_1_2() {
    let sink = Sink::start();
    let mx = Sink::start(); // sender.test's MX: receives the DSN
    let script = Script::new();
    script.mx("remote.test", answer(Outcome::Deny));
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(mx.wait_for(1, WAIT), "no DSN; sender's MX saw {:?}", mx.stats());
    assert_failure_dsn(
        &mx.messages()[0],
        "alice@sender.test",
        "rfc822; bob@remote.test",
        "5.1.2",
    );
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    assert_eq!(sink.connections(), 0);
    let bounces = script.bounces();
    assert_eq!(bounces.len(), 1, "{bounces:?}");
    assert_eq!(bounces[0].1, vec!["<bob@remote.test>".to_string()]);
    assert!(script.deferred().is_empty(), "{:?}", script.deferred());
}

#[test]
fn get_mx_denysoft_defers_the_item() {
    let sink = Sink::start();
    let mx = Sink::start();
    let script = Script::new();
    script.mx(
        "remote.test",
        answer_msg(Outcome::DenySoft, "routing table is reloading"),
    );
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    let name = deferred_file(&srv, 1).unwrap_or_else(|| panic!("not deferred: queue {:?}", srv.queue_files()));
    assert!(name.next_attempt > name.arrival, "{name:?}");
    let deferred = script.deferred();
    assert_eq!(deferred.len(), 1, "{deferred:?}");
    assert_eq!(deferred[0].0, 3600, "the delay of temp_fail_intervals=1h");
    assert!(
        deferred[0].1.contains("routing table is reloading"),
        "err {:?}",
        deferred[0].1
    );
    assert!(script.bounces().is_empty(), "{:?}", script.bounces());
    assert_eq!(sink.connections(), 0);
    assert_eq!(mx.message_count(), 0, "a deferral produced mail: {:?}", mx.messages());
}

// ----- 3. a panicking plugin ---------------------------------------------------------------

#[test]
fn a_get_mx_panic_defers_the_item_and_the_daemon_keeps_going() {
    let sink = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("other.test", sink.port());
    script.once(HookName::GetMx, Some("remote.test"), Act::Panic);
    script.once(HookName::GetMx, Some("other.test"), Act::PanicLater);
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["first@remote.test"], BODY);
    submit(&srv, "alice@sender.test", &["second@other.test"], BODY);

    // Both items are deferred (not lost, not bounced).
    let both_deferred = eventually(WAIT, || {
        let names = queue_names(&srv);
        names.len() == 2 && names.iter().all(|n| n.attempts == 1)
    });
    assert!(both_deferred, "queue {:?}; hooks {:?}", srv.queue_files(), script.log());
    assert_eq!(sink.message_count(), 0);
    assert!(script.bounces().is_empty(), "{:?}", script.bounces());
    assert_eq!(script.deferred().len(), 2, "{:?}", script.deferred());

    // Meanwhile the daemon accepts and delivers new mail.
    submit(&srv, "alice@sender.test", &["third@remote.test"], BODY);
    assert!(sink.wait_for(1, WAIT), "sink saw {:?}", sink.stats());
    assert_eq!(sink.messages()[0].rcpts, vec!["third@remote.test".to_string()]);
    // (The third item's file goes once it is settled; the deferred two stay.)
    assert!(
        eventually(WAIT, || queue_names(&srv).len() == 2),
        "{:?}",
        srv.queue_files()
    );
    assert!(
        queue_names(&srv).iter().all(|n| n.attempts == 1),
        "{:?}",
        srv.queue_files()
    );

    // The next attempt delivers the deferred items.
    flush_when_waiting(&srv, 2);
    assert!(sink.wait_for(3, WAIT), "sink saw {:?}", sink.stats());
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    let mut rcpts: Vec<String> = sink.messages().iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec!["first@remote.test", "second@other.test", "third@remote.test"],
        "a message was lost or duplicated"
    );
    // The retries ran with the count of the failed attempt.
    let retried: Vec<u32> = script
        .calls(HookName::SendEmail)
        .iter()
        .filter(|s| QueueName::parse(&s.file).is_some_and(|n| n.attempts == 1))
        .map(|s| s.num_failures)
        .collect();
    assert_eq!(retried, vec![1, 1], "{:?}", script.calls(HookName::SendEmail));
}

// ----- 4. send_email DELAY -----------------------------------------------------------------

#[test]
fn send_email_delay_postpones_the_attempt() {
    let sink = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.once(HookName::SendEmail, None, answer_msg(Outcome::Delay, "1"));
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    // It comes back by itself about a second later and is delivered once.
    assert!(sink.wait_for(1, WAIT), "not delivered; sink saw {:?}", sink.stats());
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    assert_eq!(sink.message_count(), 1);

    let log = script.log();
    let sends: Vec<(usize, &Seen)> = log
        .iter()
        .enumerate()
        .filter(|(_, s)| s.hook == OutboundHook::SendEmail)
        .collect();
    assert_eq!(sends.len(), 2, "{log:?}");
    let first_mx = log.iter().position(|s| s.hook.name() == HookName::GetMx);
    assert!(
        first_mx.is_some_and(|i| i > sends[1].0),
        "routed before the delay was over: {log:?}"
    );
    // The second call saw the renamed file: same attempt count, next attempt >= 1 s later.
    let before = QueueName::parse(&sends[0].1.file).expect("queue name");
    let after = QueueName::parse(&sends[1].1.file).expect("queue name");
    assert_ne!(before, after);
    assert_eq!((before.attempts, after.attempts), (0, 0), "a DELAY is not a failure");
    assert_eq!(after.arrival, before.arrival);
    assert!(after.next_attempt >= after.arrival + 1000, "{after:?}");
    assert!(script.deferred().is_empty(), "{:?}", script.deferred());
}

#[test]
fn send_email_delay_renames_the_item_and_a_flush_delivers_it() {
    let sink = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.once(HookName::SendEmail, None, answer_msg(Outcome::Delay, "3600"));
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    let mut last = None;
    let renamed = eventually(WAIT, || {
        let names = queue_names(&srv);
        last = names.first().cloned();
        names.len() == 1 && names[0].next_attempt >= names[0].arrival + 3_600_000
    });
    assert!(renamed, "not renamed for a later attempt: {last:?}");
    let name = last.unwrap();
    assert_eq!(name.attempts, 0, "a DELAY is not a failure: {name:?}");
    assert!(script.calls(HookName::GetMx).is_empty(), "{:?}", script.log());
    assert_eq!(sink.connections(), 0);

    flush_when_waiting(&srv, 1);
    assert!(
        sink.wait_for(1, WAIT),
        "not delivered after the flush; sink saw {:?}",
        sink.stats()
    );
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    assert_eq!(sink.message_count(), 1);
}

// ----- 5. the deferred hook ----------------------------------------------------------------

#[test]
fn deferred_hook_ok_drops_the_item_silently() {
    let sink = Sink::builder().rcpt_reply("bob@", "450 4.2.0 mailbox busy").start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    script.once(HookName::Deferred, None, answer(Outcome::Ok));
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(
        eventually(WAIT, || script.deferred().len() == 1 && queue_idle(&srv)),
        "queue {:?}; hooks {:?}",
        srv.queue_files(),
        script.log()
    );
    let (delay, err, _) = &script.deferred()[0];
    assert_eq!(*delay, 3600);
    assert!(err.contains("450") && err.contains("mailbox busy"), "err {err:?}");
    assert!(script.bounces().is_empty(), "{:?}", script.bounces());
    assert_eq!(mx.message_count(), 0, "a DSN was sent: {:?}", mx.messages());
    assert_eq!(sink.message_count(), 0);
}

#[test]
fn deferred_hook_denysoft_sets_the_retry_delay() {
    let sink = Sink::builder().rcpt_reply("bob@", "450 4.2.0 mailbox busy").start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    script.once(HookName::Deferred, None, answer_msg(Outcome::DenySoft, "7"));
    let (srv, _dns) = launch(&script, "1h*3", |_| {});
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);

    // The retry comes about 7 s after the first failure (not the schedule's hour), and fails
    // again.
    assert!(
        eventually(WAIT, || script.deferred().len() >= 2),
        "no retry within {WAIT:?}: hooks {:?}",
        script.log()
    );
    let deferred = script.deferred();
    let (delay, err, first) = &deferred[0];
    assert_eq!(*delay, 3600, "the delay the schedule proposes");
    assert!(err.contains("mailbox busy"), "err {err:?}");
    let retry = script
        .calls(HookName::SendEmail)
        .into_iter()
        .nth(1)
        .expect("send_email of the retry");
    let name = QueueName::parse(&retry.file).expect("queue name");
    assert_eq!(name.attempts, 1, "{name:?}");
    let wait = name.next_attempt as i64 - first.at_ms as i64;
    assert!(
        (6_000..60_000).contains(&wait),
        "next attempt {wait} ms after the deferred hook, want about 7000 ({name:?})"
    );

    // Without an override the second deferral uses the schedule again.
    let (delay2, _, second) = &deferred[1];
    assert_eq!(*delay2, 3600);
    let name = deferred_file(&srv, 2).unwrap_or_else(|| panic!("queue {:?}", srv.queue_files()));
    assert!(
        name.next_attempt >= second.at_ms + 3_500_000,
        "{name:?} (deferred at {})",
        second.at_ms
    );
    assert_eq!(sink.refusals().len(), 2, "{:?}", sink.refusals());
    assert_eq!(mx.message_count(), 0, "{:?}", mx.messages());
}

// ----- 6. the bounce hook ------------------------------------------------------------------

#[test]
fn bounce_hook_sees_the_bounced_recipients_and_ok_suppresses_the_dsn() {
    let sink = Sink::builder().rcpt_reply("nouser@", "550 5.1.1 no such user").start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    script.once(HookName::Bounce, None, answer(Outcome::Ok));
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(
        &srv,
        "alice@sender.test",
        &["ok@remote.test", "nouser@remote.test"],
        BODY,
    );
    assert!(sink.wait_for(1, WAIT), "sink saw {:?}", sink.stats());
    assert!(
        eventually(WAIT, || script.bounces().len() == 1 && queue_idle(&srv)),
        "queue {:?}; hooks {:?}",
        srv.queue_files(),
        script.log()
    );
    let (err, bounced) = &script.bounces()[0];
    assert_eq!(bounced, &vec!["<nouser@remote.test>".to_string()]);
    assert!(err.contains("no such user"), "err {err:?}");
    assert_eq!(sink.messages()[0].rcpts, vec!["ok@remote.test".to_string()]);
    let delivered = script.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(originals(&delivered[0].ok_recips), vec!["<ok@remote.test>".to_string()]);
    assert_eq!(mx.connections(), 0, "a DSN was sent: {:?}", mx.messages());
}

// ----- 7. bounce after the last retry ------------------------------------------------------

#[test]
fn a_temporary_failure_without_retries_left_bounces_with_a_dsn() {
    let sink = Sink::builder().rcpt_reply("bob@", "450 4.2.0 mailbox busy").start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "none", |_| {});
    submit(&srv, "alice@sender.test", &["bob@remote.test"], BODY);
    assert!(mx.wait_for(1, WAIT), "no DSN; sender's MX saw {:?}", mx.stats());
    let m = &mx.messages()[0];
    let dsn = assert_failure_dsn(m, "alice@sender.test", "rfc822; bob@remote.test", "5.2.0");
    assert!(dsn.msg("Arrival-Date").is_some(), "{}", m.text());
    assert!(
        dsn.rcpt("Diagnostic-Code").is_some_and(|d| d.contains("mailbox busy")),
        "{}",
        m.text()
    );
    assert!(dsn.human.contains("bob@remote.test"), "human part:\n{}", dsn.human);
    assert!(dsn.human.contains("mailbox busy"), "human part:\n{}", dsn.human);
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    assert!(
        script.deferred().is_empty(),
        "retried with no retries left: {:?}",
        script.deferred()
    );
    let bounces = script.bounces();
    assert_eq!(bounces.len(), 1, "{bounces:?}");
    assert_eq!(bounces[0].1, vec!["<bob@remote.test>".to_string()]);
    assert_eq!(sink.message_count(), 0);
    assert_eq!(mx.message_count(), 1);
}

// ----- 8. who gets a DSN -------------------------------------------------------------------

#[test]
fn a_null_sender_bounce_produces_no_dsn() {
    let sink = Sink::builder().rcpt_reply("nouser@", "550 5.1.1 no such user").start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "", &["nouser@remote.test"], BODY);
    assert!(
        eventually(WAIT, || script.bounces().len() == 1 && queue_idle(&srv)),
        "queue {:?}; hooks {:?}",
        srv.queue_files(),
        script.log()
    );
    assert_eq!(sink.message_count(), 0, "{:?}", sink.messages());
    assert_eq!(mx.connections(), 0, "{:?}", mx.messages());
    // Nothing else was ever queued: only the original went through send_email.
    let files: Vec<String> = script.calls(HookName::SendEmail).into_iter().map(|s| s.file).collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn a_dsn_that_bounces_is_dropped_without_another_dsn() {
    // The sender's MX refuses the DSN: that is a double bounce, dropped, not reported.
    let sink = Sink::builder().rcpt_reply("nouser@", "550 5.1.1 no such user").start();
    let mx = Sink::builder().rcpt_reply("alice@", "550 5.1.1 alice left").start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit(&srv, "alice@sender.test", &["nouser@remote.test"], BODY);
    assert!(
        eventually(WAIT, || script.bounces().len() == 2 && queue_idle(&srv)),
        "queue {:?}; hooks {:?}",
        srv.queue_files(),
        script.log()
    );
    let bounces = script.bounces();
    assert_eq!(bounces[0].1, vec!["<nouser@remote.test>".to_string()]);
    assert_eq!(bounces[1].1, vec!["<alice@sender.test>".to_string()]);
    assert_eq!(mx.refusals().len(), 1, "{:?}", mx.refusals());
    assert_eq!(mx.message_count(), 0);
    assert_eq!(sink.message_count(), 0);
    // Two items were ever queued: the message and its DSN.
    let mut files: Vec<String> = script.calls(HookName::SendEmail).into_iter().map(|s| s.file).collect();
    files.dedup();
    assert_eq!(files.len(), 2, "{files:?}");
}

#[test]
fn notify_decides_which_failures_get_a_dsn() {
    let sink = Sink::builder()
        .rcpt_reply("@remote.test", "550 5.1.1 no such user")
        .start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    // One message (one queue file) per NOTIFY case.
    let cases = [
        ("never", " NOTIFY=NEVER"),
        ("both", " NOTIFY=SUCCESS,FAILURE"),
        ("success", " NOTIFY=SUCCESS"),
        ("delay", " NOTIFY=DELAY"),
        ("plain", ""),
    ];
    for (user, param) in cases {
        submit_raw(
            &srv,
            "MAIL FROM:<alice@sender.test>",
            &[&format!("RCPT TO:<{user}@remote.test>{param}")],
            BODY,
        );
    }
    assert!(mx.wait_for(2, WAIT), "sender's MX saw {:?}", mx.stats());
    assert!(
        eventually(WAIT, || script.bounces().len() == 5 && queue_idle(&srv)),
        "queue {:?}; bounces {:?}",
        srv.queue_files(),
        script.bounces()
    );
    let msgs = mx.messages();
    let mut reported: Vec<String> = msgs
        .iter()
        .map(|m| {
            let dsn = Dsn::parse(m);
            assert_eq!(dsn.rcpt("Action").as_deref(), Some("failed"), "{}", m.text());
            assert_eq!(dsn.rcpt("Status").as_deref(), Some("5.1.1"), "{}", m.text());
            dsn.final_recipients().join(", ")
        })
        .collect();
    reported.sort();
    assert_eq!(
        reported,
        vec!["rfc822; both@remote.test", "rfc822; plain@remote.test"],
        "NOTIFY=NEVER, SUCCESS and DELAY must not get a failure DSN"
    );
}

#[test]
fn one_dsn_lists_only_the_recipients_that_asked_for_it() {
    let sink = Sink::builder()
        .rcpt_reply("@remote.test", "550 5.1.1 no such user")
        .start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit_raw(
        &srv,
        "MAIL FROM:<alice@sender.test>",
        &[
            "RCPT TO:<never@remote.test> NOTIFY=NEVER",
            "RCPT TO:<both@remote.test> NOTIFY=SUCCESS,FAILURE",
            "RCPT TO:<plain@remote.test>",
        ],
        BODY,
    );
    assert!(mx.wait_for(1, WAIT), "no DSN; sender's MX saw {:?}", mx.stats());
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    assert_eq!(mx.message_count(), 1);
    let m = &mx.messages()[0];
    let dsn = Dsn::parse(m);
    assert_eq!(
        dsn.final_recipients(),
        vec!["rfc822; both@remote.test", "rfc822; plain@remote.test"],
        "{}",
        m.text()
    );
    // The bounce hook is told about every bounced recipient.
    let bounces = script.bounces();
    assert_eq!(bounces.len(), 1);
    assert_eq!(
        bounces[0].1,
        vec!["<never@remote.test>", "<both@remote.test>", "<plain@remote.test>"]
    );
}

#[test]
fn notify_never_suppresses_the_dsn_entirely() {
    let sink = Sink::builder().rcpt_reply("bob@", "550 5.1.1 no such user").start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit_raw(
        &srv,
        "MAIL FROM:<alice@sender.test>",
        &["RCPT TO:<bob@remote.test> NOTIFY=NEVER"],
        BODY,
    );
    assert!(
        eventually(WAIT, || script.bounces().len() == 1 && queue_idle(&srv)),
        "queue {:?}; hooks {:?}",
        srv.queue_files(),
        script.log()
    );
    assert_eq!(mx.connections(), 0, "{:?}", mx.messages());
}

// ----- 9. DSN parameters towards the next hop ----------------------------------------------

fn words(params: &str) -> Vec<&str> {
    params.split_whitespace().collect()
}

#[test]
fn dsn_parameters_go_only_to_a_next_hop_that_offers_dsn() {
    let dsn = Sink::builder().dsn(true).start();
    let nodsn = Sink::builder().dsn(false).start();
    let script = Script::new();
    script.route("dsn.test", dsn.port());
    script.route("nodsn.test", nodsn.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit_raw(
        &srv,
        "MAIL FROM:<alice@sender.test> RET=HDRS ENVID=QQ+2B314",
        &[
            "RCPT TO:<bob@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@dsn.test",
            "RCPT TO:<bob@nodsn.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@nodsn.test",
        ],
        BODY,
    );
    assert!(dsn.wait_for(1, WAIT), "sink saw {:?}", dsn.stats());
    assert!(nodsn.wait_for(1, WAIT), "sink saw {:?}", nodsn.stats());
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );

    let m = &dsn.messages()[0];
    let mail = words(&m.mail_params);
    assert!(mail.contains(&"RET=HDRS"), "MAIL params {:?}", m.mail_params);
    assert!(mail.contains(&"ENVID=QQ+2B314"), "MAIL params {:?}", m.mail_params);
    assert_eq!(m.rcpts, vec!["bob@dsn.test".to_string()]);
    let rcpt = words(&m.rcpt_params[0]);
    assert!(
        rcpt.contains(&"NOTIFY=SUCCESS,FAILURE"),
        "RCPT params {:?}",
        m.rcpt_params
    );
    assert!(
        rcpt.contains(&"ORCPT=rfc822;Bob@dsn.test"),
        "RCPT params {:?}",
        m.rcpt_params
    );

    let m = &nodsn.messages()[0];
    assert!(
        !m.mail_params.contains("RET=") && !m.mail_params.contains("ENVID="),
        "DSN parameters sent to a server without DSN: {:?}",
        m.mail_params
    );
    assert!(
        !m.rcpt_params[0].contains("NOTIFY=") && !m.rcpt_params[0].contains("ORCPT="),
        "DSN parameters sent to a server without DSN: {:?}",
        m.rcpt_params
    );
}

// ----- 10. SMTPUTF8 ------------------------------------------------------------------------

#[test]
fn smtputf8_mail_bounces_at_a_server_without_smtputf8_and_goes_to_one_with_it() {
    let ascii = Sink::builder().smtputf8(false).start();
    let utf8 = Sink::start();
    let mx = Sink::start();
    let script = Script::new();
    script.route("ascii.test", ascii.port());
    script.route("utf8.test", utf8.port());
    script.route("sender.test", mx.port());
    let (srv, _dns) = launch(&script, "1h", |_| {});
    submit_raw(
        &srv,
        "MAIL FROM:<alice@sender.test> SMTPUTF8",
        &["RCPT TO:<jöran@ascii.test>", "RCPT TO:<jöran@utf8.test>"],
        "From: alice@sender.test\r\nTo: jöran@utf8.test\r\nSubject: grüße\r\n\r\nhej".as_bytes(),
    );
    assert!(utf8.wait_for(1, WAIT), "sink saw {:?}", utf8.stats());
    let m = &utf8.messages()[0];
    assert_eq!(m.rcpts, vec!["jöran@utf8.test".to_string()]);
    assert!(
        words(&m.mail_params).contains(&"SMTPUTF8"),
        "MAIL params {:?}",
        m.mail_params
    );

    assert!(mx.wait_for(1, WAIT), "no DSN; sender's MX saw {:?}", mx.stats());
    let dsn = assert_failure_dsn(
        &mx.messages()[0],
        "alice@sender.test",
        "utf-8; j\\x{F6}ran@ascii.test",
        "5.6.7",
    );
    assert!(dsn.human.contains("SMTPUTF8"), "human part:\n{}", dsn.human);
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    assert_eq!(ascii.message_count(), 0, "{:?}", ascii.messages());
    let bounces = script.bounces();
    assert_eq!(bounces.len(), 1, "{bounces:?}");
    assert_eq!(bounces[0].1, vec!["<jöran@ascii.test>".to_string()]);
}

// ----- 11. corrupt and stray files in the queue dir ----------------------------------------

fn mailbox(addr: &str) -> Mailbox {
    let (local, domain) = addr.split_once('@').unwrap();
    Mailbox {
        local: local.into(),
        domain: domain.into(),
    }
}

/// Write a valid queue file (Haraka format) for one recipient.
fn write_queue_file(dir: &Path, name: &str, from: &str, rcpt: &str, body: &[u8]) {
    let to = mailbox(rcpt);
    let todo = Todo {
        queue_time: now_ms(),
        domain: to.host(),
        rcpt_to: vec![TodoAddress::from_mailbox(Some(&to))],
        mail_from: TodoAddress::from_mailbox(Some(&mailbox(from))),
        notes: Default::default(),
        uuid: format!("{}.1", name.replace('_', "-")),
        force_tls: false,
        extra: Default::default(),
    };
    let mut bytes = encode_header(&todo);
    bytes.extend_from_slice(body);
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Deterministic "random" bytes (xorshift).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

#[test]
fn corrupt_and_stray_queue_files_are_moved_aside_and_valid_ones_delivered() {
    let sink = Sink::start();
    let script = Script::new();
    script.route("remote.test", sink.port());
    let t = now_ms() - 1_000;
    let corrupt = format!("{t}_{t}_0_4242_corruptA_1_oldhost");
    let empty = format!("{t}_{t}_2_4242_emptyB_2_oldhost");
    let stray = "notes-from-the-admin.txt".to_string();
    let good1 = format!("{t}_{t}_0_4242_goodC_3_oldhost");
    let good2 = format!("{t}_{t}_1_4242_goodD_4_oldhost");
    let garbage = noise(600, 0x9e37_79b9_7f4a_7c15);
    let (srv, _dns) = launch(&script, "1h", |cfg| {
        let q = cfg.parent().unwrap().join("queue");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join(&corrupt), &garbage).unwrap();
        std::fs::write(q.join(&empty), b"").unwrap();
        std::fs::write(q.join(&stray), b"hello\n").unwrap();
        write_queue_file(&q, &good1, "alice@sender.test", "one@remote.test", BODY);
        write_queue_file(&q, &good2, "alice@sender.test", "two@remote.test", BODY);
    });
    let qdir = srv.queue_dir();
    let err_dir = qdir.join("error");

    assert!(
        sink.wait_for(2, WAIT),
        "valid files not delivered; sink saw {:?}",
        sink.stats()
    );
    let moved = eventually(WAIT, || {
        [&corrupt, &empty, &stray].iter().all(|n| err_dir.join(n).is_file()) && queue_idle(&srv)
    });
    assert!(
        moved,
        "queue dir {:?}, error dir {:?}",
        srv.queue_files(),
        queue_files(&err_dir)
    );
    let mut rcpts: Vec<String> = sink.messages().iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, vec!["one@remote.test", "two@remote.test"]);
    assert_eq!(
        std::fs::read(err_dir.join(&corrupt)).unwrap(),
        garbage,
        "content changed"
    );
    assert_eq!(std::fs::read(err_dir.join(&stray)).unwrap(), b"hello\n");

    // Not retried: a flush finds nothing to do, the files stay where they are.
    srv.server.flush_queue();
    assert!(
        eventually(WAIT, || queue_idle(&srv)),
        "queue keeps {:?}",
        srv.queue_files()
    );
    assert_eq!(queue_files(&err_dir).len(), 3, "{:?}", queue_files(&err_dir));
    assert_eq!(sink.message_count(), 2);
    let touched: Vec<String> = script
        .log()
        .into_iter()
        .map(|s| s.file)
        .filter(|f| f.contains("corruptA") || f.contains("emptyB"))
        .collect();
    assert!(touched.is_empty(), "hooks ran for corrupt files: {touched:?}");
}
