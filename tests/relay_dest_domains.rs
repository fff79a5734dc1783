//! The `relay` plugin's destination domains (`relay.ini [main] dest_domains=true`,
//! `relay_dest_domains.ini [domains]`): accept, deny, continue, against the real daemon.

mod common;

use std::sync::{Arc, Mutex};

use common::{start_with, Client, TestServer};
use posta::hooks::{Hook, HookContext, HookName, HookResult, HookReturn, Plugin, PluginRegistry};
use posta::queue::decode;

/// Records which queue hook each message went through.
#[derive(Default)]
struct QueueLog(Mutex<Vec<&'static str>>);

struct Recorder(Arc<QueueLog>);

impl Plugin for Recorder {
    fn name(&self) -> &str {
        "test/queue_log"
    }
    fn hooks(&self) -> &[HookName] {
        &[HookName::Queue, HookName::QueueOutbound]
    }
    fn call<'a>(&'a self, hook: &'a Hook, _: &'a mut HookContext<'_>) -> HookReturn<'a> {
        let which = if matches!(hook, Hook::QueueOutbound) {
            "queue_outbound"
        } else {
            "queue"
        };
        self.0 .0.lock().unwrap().push(which);
        HookResult::CONT.into()
    }
}

const DOMAINS: &str = "[domains]
backup.example.net = { \"action\": \"accept\" }
blocked.example.test = { \"action\": \"deny\" }
maybe.example.org = { \"action\": \"continue\" }
example.test = { \"action\": \"continue\", \"nexthop\": \"127.0.0.1:2525\" }
";

/// host_list: example.test, blocked.example.test. `relay_ini` and `acl` as given.
fn server(relay_ini: &str, acl: &str) -> (TestServer, Arc<QueueLog>) {
    let log = Arc::new(QueueLog::default());
    let mut reg = PluginRegistry::builtin();
    let shared = log.clone();
    reg.register("test/queue_log", move |_| {
        Ok(Arc::new(Recorder(shared.clone())) as Arc<dyn Plugin>)
    });
    let (relay_ini, acl) = (relay_ini.to_string(), acl.to_string());
    let srv = start_with(
        move |dir| {
            std::fs::write(dir.join("host_list"), "example.test\nblocked.example.test\n").unwrap();
            std::fs::write(dir.join("plugins"), "relay\nrcpt_to.in_host_list\ntest/queue_log\n").unwrap();
            std::fs::write(dir.join("relay.ini"), relay_ini).unwrap();
            std::fs::write(dir.join("relay_acl_allow"), acl).unwrap();
            std::fs::write(dir.join("relay_dest_domains.ini"), DOMAINS).unwrap();
        },
        reg,
    );
    (srv, log)
}

fn with_dest_domains() -> (TestServer, Arc<QueueLog>) {
    server("[main]\ndest_domains=true\n", "")
}

fn begin(srv: &TestServer) -> Client {
    let mut c = srv.client();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@client.test>", 250);
    c
}

fn finish(c: &mut Client) {
    c.expect("DATA", 354);
    c.send(b"Subject: t\r\n\r\nt\r\n.\r\n");
    assert_eq!(c.reply().map(|r| r.code), Some(250));
}

/// The destination domains of every queue file.
fn queued_domains(srv: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = srv
        .queue_files()
        .iter()
        .map(|f| decode(&std::fs::read(f).unwrap()).unwrap().0.domain)
        .collect();
    v.sort();
    v
}

#[test]
fn accept_relays_that_domain_outbound() {
    let (srv, log) = with_dest_domains();
    let mut c = begin(&srv);
    c.expect("RCPT TO:<user@backup.example.net>", 250);
    c.expect("RCPT TO:<user@BACKUP.Example.NET>", 250);
    finish(&mut c);
    assert_eq!(*log.0.lock().unwrap(), ["queue_outbound"]);
    assert_eq!(queued_domains(&srv), ["backup.example.net"]);
}

#[test]
fn accept_does_not_open_the_relay_for_other_recipients() {
    let (srv, _) = with_dest_domains();
    let mut c = begin(&srv);
    c.expect("RCPT TO:<user@backup.example.net>", 250);
    // Haraka makes the rest of this transaction relay; posta does not.
    c.expect("RCPT TO:<user@other.org>", 550);
    c.expect("RCPT TO:<user%other.org@backup.example.net>", 550);
    c.expect("RCPT TO:<user@sub.backup.example.net>", 550);
    finish(&mut c);
    assert_eq!(queued_domains(&srv), ["backup.example.net"]);
}

#[test]
fn deny_refuses_even_a_local_domain() {
    let (srv, _) = with_dest_domains();
    let mut c = begin(&srv);
    let r = c.expect("RCPT TO:<user@blocked.example.test>", 550);
    assert!(r.text().contains("not accepted here"), "{r:?}");
    c.expect("RCPT TO:<user@example.test>", 250);
}

#[test]
fn continue_and_unlisted_leave_it_to_the_other_plugins() {
    let (srv, log) = with_dest_domains();
    let mut c = begin(&srv);
    // continue, not local: nobody accepts it.
    c.expect("RCPT TO:<user@maybe.example.org>", 550);
    // continue and unlisted local domains: rcpt_to.in_host_list accepts them, delivered locally.
    c.expect("RCPT TO:<user@example.test>", 250);
    finish(&mut c);
    assert_eq!(*log.0.lock().unwrap(), ["queue"]);
    assert_eq!(queued_domains(&srv), ["example.test"]);
}

#[test]
fn relaying_clients_skip_the_table() {
    let (srv, log) = server("[main]\ndest_domains=true\n", "127.0.0.0/8\n");
    let mut c = begin(&srv);
    c.expect("RCPT TO:<user@blocked.example.test>", 250);
    c.expect("RCPT TO:<user@other.org>", 250);
    finish(&mut c);
    assert_eq!(*log.0.lock().unwrap(), ["queue_outbound"]);
}

#[test]
fn the_table_is_off_unless_enabled() {
    let (srv, _) = server("", "");
    let mut c = begin(&srv);
    c.expect("RCPT TO:<user@backup.example.net>", 550);
    c.expect("RCPT TO:<user@blocked.example.test>", 250);
}

#[test]
fn a_bad_action_stops_start_up() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("config");
    common::write_default_config(&dir);
    std::fs::write(dir.join("plugins"), "relay\n").unwrap();
    std::fs::write(dir.join("relay.ini"), "[main]\ndest_domains=true\n").unwrap();
    std::fs::write(
        dir.join("relay_dest_domains.ini"),
        "[domains]\nx.example = { \"action\": \"relay\" }\n",
    )
    .unwrap();
    let cfg = posta::config::Config::load(&dir).unwrap();
    let e = PluginRegistry::builtin().build(&cfg).err().expect("refused");
    assert!(e.to_string().contains("x.example"), "{e}");
}
